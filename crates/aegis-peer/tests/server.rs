//! The server's edges: binding, graceful stop, and bad clients.

mod support;

use std::time::{Duration, Instant};

use aegis_peer::proto::testing::SlowRequest;
use aegis_peer::{Health, MeshServer, MeshServerConfig, PeerError};
use aegis_topology::Topology;
use support::{Mesh, echo_client, start_node, start_node_with};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn port_zero_reports_the_bound_port_and_bad_addresses_are_named() {
    let mesh = Mesh::new();
    let tls = mesh.tls("node-a");
    let server = MeshServer::new(tls.clone(), Topology::new(), Health::new())
        .serve("127.0.0.1:0")
        .await
        .unwrap();
    let addr = server.local_addr();
    assert_ne!(addr.port(), 0);

    let taken = MeshServer::new(tls.clone(), Topology::new(), Health::new())
        .serve(&addr.to_string())
        .await
        .unwrap_err();
    assert!(matches!(taken, PeerError::Bind { .. }), "{taken}");
    assert!(taken.to_string().contains(&addr.to_string()), "{taken}");

    for bad in ["nonsense", "127.0.0.1:http", "127.0.0.1:70000", ":80"] {
        let err = MeshServer::new(tls.clone(), Topology::new(), Health::new())
            .serve(bad)
            .await
            .unwrap_err();
        assert!(
            matches!(err, PeerError::InvalidAddress { .. }),
            "{bad}: {err}"
        );
        assert!(err.to_string().contains(bad), "{err}");
    }
}

#[tokio::test]
async fn graceful_stop_finishes_in_flight_calls_and_frees_the_port() {
    let mesh = Mesh::new();
    let node = start_node(&mesh, "node-a").await;
    let addr = node.server.local_addr();
    let client_tls = mesh.tls("node-b");
    let mut echo = echo_client(&client_tls, "node-a", &addr.to_string());
    // Open the connection first, so the call is in flight when the stop comes.
    echo.who_am_i(aegis_peer::proto::testing::WhoAmIRequest {})
        .await
        .unwrap();
    let call = tokio::spawn(async move { echo.slow(SlowRequest { millis: 400 }).await });
    // Give the call time to reach the handler before stopping.
    let mut client2 = echo_client(&client_tls, "node-a", &addr.to_string());
    client2
        .who_am_i(aegis_peer::proto::testing::WhoAmIRequest {})
        .await
        .unwrap();

    let start = Instant::now();
    node.server.shutdown(Duration::from_secs(5)).await.unwrap();
    let answer = call.await.unwrap().expect("the in-flight call finished");
    assert_eq!(answer.into_inner().caller_id, "node-b");
    assert!(start.elapsed() < Duration::from_secs(5));

    // The port is free at once.
    let again = MeshServer::new(mesh.tls("node-a"), Topology::new(), Health::new())
        .serve(&addr.to_string())
        .await
        .unwrap();
    assert_eq!(again.local_addr(), addr);
}

#[tokio::test]
async fn a_grace_period_bounds_the_stop() {
    let mesh = Mesh::new();
    let node = start_node(&mesh, "node-a").await;
    let addr = node.server.local_addr().to_string();
    let client_tls = mesh.tls("node-b");
    let mut echo = echo_client(&client_tls, "node-a", &addr);
    echo.who_am_i(aegis_peer::proto::testing::WhoAmIRequest {})
        .await
        .unwrap();
    let call = tokio::spawn(async move { echo.slow(SlowRequest { millis: 30_000 }).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let start = Instant::now();
    node.server
        .shutdown(Duration::from_millis(200))
        .await
        .unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert!(
        call.await.unwrap().is_err(),
        "the call was cut at the end of the grace period"
    );
}

#[tokio::test]
async fn silent_and_garbage_clients_cost_nothing_lasting() {
    let mesh = Mesh::new();
    let node = start_node_with(&mesh, "node-a", |s| {
        let mut config = MeshServerConfig::default();
        config.transport.handshake_timeout = Duration::from_millis(300);
        s.with_config(config)
    })
    .await;
    let addr = node.server.local_addr();

    // Connects and says nothing.
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    // Connects and sends garbage.
    let mut garbage = tokio::net::TcpStream::connect(addr).await.unwrap();
    garbage
        .write_all(b"GET / HTTP/1.0\r\n\r\n\x00\xff\xfe garbage")
        .await
        .unwrap();

    // Meanwhile a real peer is served.
    let b = start_node(&mesh, "node-b").await;
    b.add_peer(&node);
    b.peers.ping_peer("node-a").await.unwrap();

    // Both bad connections are closed by the server: the silent one when
    // the handshake timeout runs out.
    let start = Instant::now();
    let mut buf = [0u8; 256];
    let closed = |r: std::io::Result<usize>| matches!(r, Ok(0) | Err(_));
    loop {
        let r = tokio::time::timeout(Duration::from_secs(5), garbage.read(&mut buf))
            .await
            .expect("garbage connection closed within 5 s");
        if closed(r) {
            break;
        }
    }
    let r = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf))
        .await
        .expect("silent connection closed within 5 s");
    assert!(closed(r));
    assert!(start.elapsed() < Duration::from_secs(5));
    b.peers.ping_peer("node-a").await.unwrap();
}

/// Found by attacking a live node: silent TCP connections, without any
/// certificate, filled the shared pool of pending handshakes (each held up
/// to the handshake timeout), and legitimate new connections were refused.
/// Now one source address holds at most a few pending handshakes, so 400
/// silent connections from 127.0.0.2 leave 127.0.0.1 unaffected.
#[tokio::test]
async fn silent_connections_from_one_source_do_not_lock_out_others() {
    let mesh = Mesh::new();
    let node = start_node(&mesh, "node-a").await;
    let addr = node.server.local_addr();
    let mut silent = Vec::new();
    for _ in 0..400 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        if let Ok(s) = socket.connect(addr).await {
            silent.push(s);
        }
    }
    assert!(silent.len() >= 300, "{} silent connections", silent.len());
    // A legitimate client, from another address, on fresh connections.
    let started = Instant::now();
    for _ in 0..10 {
        let mut client = echo_client(&mesh.tls("node-b"), "node-a", &addr.to_string());
        tokio::time::timeout(
            Duration::from_secs(2),
            client.who_am_i(aegis_peer::proto::testing::WhoAmIRequest {}),
        )
        .await
        .expect("a legitimate call within 2 s")
        .expect("answered");
    }
    println!(
        "10 fresh connections during 400 silent ones: {:?}",
        started.elapsed()
    );
    drop(silent);
}
