//! Placeholder until the topology benches land.
fn main() {}
