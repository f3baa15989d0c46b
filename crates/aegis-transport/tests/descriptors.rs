//! Descriptors per connection, alone in its test binary so that no other
//! test opens sockets while it counts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aegis_transport::{ServerConfig, serve_routes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const DEADLINE: Duration = Duration::from_secs(20);

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

/// Each accepted connection costs the server one descriptor (its socket);
/// it used to cost two (a duplicate kept to close it at shutdown). A
/// shutdown whose grace runs out still closes them.
#[tokio::test]
async fn a_connection_costs_one_descriptor_and_shutdown_still_closes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let server_tls = aegis_tls::load_or_generate_tls("server", tmp.path()).unwrap();
    let client = aegis_tls::load_or_generate_tls("client", tmp.path()).unwrap();
    let server = serve_routes(
        &server_tls,
        "127.0.0.1:0",
        tonic::service::Routes::default(),
        ServerConfig::default(),
    )
    .await
    .unwrap();
    let before = open_descriptors();
    let mut streams = Vec::new();
    for _ in 0..20 {
        // Each speaks HTTP/2 so that the preface deadline does not apply.
        let tcp = TcpStream::connect(server.local_addr()).await.unwrap();
        let name = aegis_tls::server_name("server").unwrap();
        let mut s = TlsConnector::from(client.client_config())
            .connect(name, tcp)
            .await
            .unwrap();
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        // An empty SETTINGS frame.
        s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
        streams.push(s);
    }
    let end = Instant::now() + DEADLINE;
    while server.open_connections() < 20 {
        assert!(
            Instant::now() < end,
            "{} connections open",
            server.open_connections()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let used = open_descriptors() - before;
    // 20 client sockets, 20 server sockets.
    assert!(used <= 40 + 2, "{used} descriptors for 20 connections");

    let server = Arc::new(tokio::sync::Mutex::new(Some(server)));
    let stopping = Arc::clone(&server);
    let stop = tokio::spawn(async move {
        let s = stopping.lock().await.take().unwrap();
        s.shutdown(Duration::from_millis(100)).await.unwrap();
    });
    for stream in &mut streams {
        let mut buf = [0u8; 64];
        let closed = async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        assert!(
            tokio::time::timeout(DEADLINE, closed).await.is_ok(),
            "a connection outlived the shutdown"
        );
    }
    stop.await.unwrap();
}
