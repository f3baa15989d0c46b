//! Compiles the service's own proto, with no `protoc` on the machine.

fn main() -> Result<(), aegis_build::Error> {
    aegis_build::compile_protos(&["proto/greeter/v1/greeter.proto"], &["proto"])
}
