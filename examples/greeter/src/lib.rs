//! A greeting service of its own on aegis: the generated code (from
//! `proto/greeter/v1/greeter.proto`, compiled by `aegis-build` in
//! `build.rs`) and its handler. The binary (`src/main.rs`) runs providers
//! and a consumer.

/// The protobuf package `greeter.v1`: messages, `greeter_client`,
/// `greeter_server`.
pub mod pb {
    aegis::include_proto!("greeter.v1");
}

use aegis::tonic::{Request, Response, Status};
use pb::greeter_server::{Greeter, GreeterServer};
use pb::{HelloReply, HelloRequest};

/// The handler: greets the caller, naming this provider and the caller's
/// node ID (from its mTLS certificate).
#[derive(Debug, Clone)]
pub struct Greetings {
    provider_id: String,
}

impl Greetings {
    /// The handler of the provider `provider_id`.
    pub fn new(provider_id: impl Into<String>) -> Self {
        Self {
            provider_id: provider_id.into(),
        }
    }

    /// As a tonic service, for `NodeBuilder::with_grpc_service`.
    pub fn server(self) -> GreeterServer<Self> {
        GreeterServer::new(self)
    }
}

#[aegis::tonic::async_trait]
impl Greeter for Greetings {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        // Who calls: the node ID in the caller's certificate.
        let caller = aegis::caller_from_request(&request)
            .map(|c| c.node_id.to_string())
            .map_err(|e| Status::unauthenticated(e.to_string()))?;
        let name = &request.get_ref().name;
        Ok(Response::new(HelloReply {
            message: format!("hello, {name}"),
            provider_id: self.provider_id.clone(),
            caller_id: caller,
        }))
    }
}
