//! Quickstart: a provider node serving the identity contract and a consumer
//! node calling it through the pool, over mutual TLS with certificates
//! generated on the fly.
//!
//! `cargo run --example quickstart`

use std::time::Duration;

use aegis::services::identity::ValidateSessionRequest;
use aegis::services::identity::identity_service_client::IdentityServiceClient;
use aegis::services::identity::identity_service_server::IdentityServiceServer;
use aegis::{Node, ServiceClient, ServiceInfo};
use aegis_examples::ToyIdentity;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let certs = std::env::temp_dir().join(format!("aegis-quickstart-{}", std::process::id()));
    let result = run(&certs).await;
    let _ = std::fs::remove_dir_all(&certs);
    result
}

async fn run(certs: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let identity = ToyIdentity::new("identity-1");
    let service = identity.clone();
    let provider = Node::builder()
        .with_id("identity-1")
        .with_name("identity")
        .with_address("127.0.0.1:0")
        .with_cert_dir(certs)
        .with_services([ServiceInfo::new("identity", "v1")])
        .with_service_registration(move |routes| {
            routes.add_service(IdentityServiceServer::new(service.clone()));
        })
        .build()?;
    let provider_addr = provider.start_server().await?;
    println!("provider identity-1 listening on {provider_addr}");

    let consumer = Node::builder()
        .with_id("web-1")
        .with_name("web")
        .with_address("127.0.0.1:0")
        .with_cert_dir(certs)
        .build()?;
    let consumer_addr = consumer.start_server().await?;
    println!("consumer web-1 listening on {consumer_addr}");

    // One seed peer; one sync and the consumer knows who offers identity v1.
    consumer.add_peer(aegis::PeerInfo::new(
        "identity-1",
        provider_addr.to_string(),
    )?)?;
    consumer.sync_topology("identity-1").await?;

    let pool = consumer.client_pool();
    let client = ServiceClient::new(&pool, "identity", "v1", IdentityServiceClient::new);
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        client
            .get()
            .await?
            .validate_session(ValidateSessionRequest {
                token: "token-alice".into(),
            }),
    )
    .await??
    .into_inner();
    println!(
        "ValidateSession(token-alice): valid={} user_id={} expires_at={}",
        answer.valid, answer.user_id, answer.expires_at
    );
    let seen = identity
        .last_caller
        .lock()
        .map(|c| c.clone())
        .unwrap_or_default();
    println!(
        "the provider saw caller {}",
        seen.as_deref().unwrap_or("(none)")
    );

    consumer.shutdown().await?;
    provider.shutdown().await?;
    if !answer.valid || seen.as_deref() != Some("web-1") {
        return Err("unexpected answer".into());
    }
    println!("done");
    Ok(())
}
