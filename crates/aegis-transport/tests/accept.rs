//! The accept path against misbehaving clients, over real sockets and
//! real handshakes.

use std::time::{Duration, Instant};

use aegis_tls::TlsConfig;
use aegis_transport::{Credentials, ServerConfig, ServerHandle, serve_routes};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

const DEADLINE: Duration = Duration::from_secs(20);

fn pair() -> (tempfile::TempDir, TlsConfig, TlsConfig) {
    let tmp = tempfile::tempdir().unwrap();
    let server = aegis_tls::load_or_generate_tls("server", tmp.path()).unwrap();
    let client = aegis_tls::load_or_generate_tls("client", tmp.path()).unwrap();
    (tmp, server, client)
}

async fn serve(tls: &TlsConfig, config: ServerConfig) -> ServerHandle {
    serve_routes(
        tls,
        "127.0.0.1:0",
        tonic::service::Routes::default(),
        config,
    )
    .await
    .unwrap()
}

/// A TLS connection that completes its handshake and then says nothing.
async fn handshake_only(client: &TlsConfig, server: &ServerHandle) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(server.local_addr()).await.unwrap();
    let name = aegis_tls::server_name("server").unwrap();
    TlsConnector::from(client.client_config())
        .connect(name, tcp)
        .await
        .unwrap()
}

/// Whether the server closed `stream` (end of stream or an error) within
/// `wait`.
async fn closed_within(stream: &mut TlsStream<TcpStream>, wait: Duration) -> bool {
    let mut buf = [0u8; 64];
    let end = Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(end.into(), stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // The server's HTTP/2 settings: not a close, read on.
            Ok(Ok(_)) => continue,
        }
    }
}

async fn wait_for(mut check: impl FnMut() -> bool) {
    let end = Instant::now() + DEADLINE;
    while !check() {
        assert!(
            Instant::now() < end,
            "condition not reached within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A client that completes the TLS handshake but never speaks HTTP/2 is
/// closed after `preface_timeout` (it used to stay open indefinitely).
#[tokio::test]
async fn a_connection_that_never_speaks_http2_is_closed() {
    let (_tmp, server_tls, client) = pair();
    let server = serve(
        &server_tls,
        ServerConfig {
            preface_timeout: Duration::from_millis(300),
            ..ServerConfig::default()
        },
    )
    .await;
    let mut silent = handshake_only(&client, &server).await;
    wait_for(|| server.open_connections() == 1).await;
    assert!(
        closed_within(&mut silent, DEADLINE).await,
        "the silent connection stayed open"
    );
    wait_for(|| server.open_connections() == 0).await;
}

/// One node cannot hold more than `max_connections_per_caller`
/// connections: the next one is closed after its handshake, and the
/// earlier ones are untouched.
#[tokio::test]
async fn one_node_cannot_open_connections_without_end() {
    let (_tmp, server_tls, client) = pair();
    let server = serve(
        &server_tls,
        ServerConfig {
            max_connections_per_caller: 3,
            ..ServerConfig::default()
        },
    )
    .await;
    let mut kept = Vec::new();
    for _ in 0..3 {
        kept.push(handshake_only(&client, &server).await);
    }
    wait_for(|| server.open_connections() == 3).await;
    let mut fourth = handshake_only(&client, &server).await;
    assert!(
        closed_within(&mut fourth, DEADLINE).await,
        "the fourth connection was kept"
    );
    assert_eq!(server.open_connections(), 3);
    for stream in &mut kept {
        assert!(!closed_within(stream, Duration::from_millis(50)).await);
    }
}

/// Credentials accept a `TlsConfig` or a reference to one, so a server can
/// be started with either.
#[tokio::test]
async fn servers_take_fixed_or_changing_credentials() {
    let (_tmp, server_tls, _client) = pair();
    let a = serve(&server_tls, ServerConfig::default()).await;
    let b = serve_routes(
        Credentials::new(server_tls.clone()),
        "127.0.0.1:0",
        tonic::service::Routes::default(),
        ServerConfig::default(),
    )
    .await
    .unwrap();
    assert_ne!(a.local_addr(), b.local_addr());
}

/// A call whose request body never comes is ended by `request_timeout`
/// (such calls used to stay open for good, holding their memory).
#[tokio::test]
async fn a_request_body_that_never_comes_is_timed_out() {
    use tower::ServiceExt;
    let (_tmp, server_tls, client) = pair();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let mut routes = tonic::service::RoutesBuilder::default();
    routes.add_service(health);
    let server = serve_routes(
        &server_tls,
        "127.0.0.1:0",
        routes.routes(),
        ServerConfig {
            request_timeout: Some(Duration::from_millis(300)),
            ..ServerConfig::default()
        },
    )
    .await
    .unwrap();
    let channel = aegis_transport::mtls_channel(
        &client,
        &aegis_tls::NodeId::new("server").unwrap(),
        &server.local_addr().to_string(),
        &aegis_transport::ChannelOptions::default(),
    )
    .unwrap();
    // Headers of a unary call, then a body that never sends a byte.
    let never = tokio_stream::pending::<Result<http_body::Frame<bytes::Bytes>, std::io::Error>>();
    let request = http::Request::builder()
        .method("POST")
        .uri(format!(
            "http://{}/grpc.health.v1.Health/Check",
            server.local_addr()
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(http_body_util::StreamBody::new(
            never,
        )))
        .unwrap();
    let response = tokio::time::timeout(DEADLINE, channel.oneshot(request))
        .await
        .expect("the server ended the call")
        .unwrap();
    let status = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("0")
        .to_owned();
    assert_ne!(status, "0", "the call was answered as if it had succeeded");
}

/// Beyond `max_connections` open connections, new ones are closed at once
/// (before their handshake); the open ones are untouched.
#[tokio::test]
async fn the_total_connection_cap_holds() {
    let (_tmp, server_tls, client) = pair();
    let server = serve(
        &server_tls,
        ServerConfig {
            max_connections: 2,
            ..ServerConfig::default()
        },
    )
    .await;
    let mut kept = vec![
        handshake_only(&client, &server).await,
        handshake_only(&client, &server).await,
    ];
    wait_for(|| server.open_connections() == 2).await;
    let tcp = TcpStream::connect(server.local_addr()).await.unwrap();
    let name = aegis_tls::server_name("server").unwrap();
    let third = TlsConnector::from(client.client_config())
        .connect(name, tcp)
        .await;
    assert!(third.is_err(), "the third connection got a handshake");
    assert_eq!(server.open_connections(), 2);
    for stream in &mut kept {
        assert!(!closed_within(stream, Duration::from_millis(50)).await);
    }
}
