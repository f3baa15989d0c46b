//! Membership events and waiting for providers, on real nodes.

mod support;
use support::builder;

use std::time::Duration;

use aegis::{Error, HealthStatus, MemberEvent, MeshConfig, PeerInfo, ServiceInfo};
use tokio::sync::broadcast::Receiver;

/// The next event about `id`, within a deadline.
async fn next_about(rx: &mut Receiver<MemberEvent>, id: &str) -> MemberEvent {
    let wait = async {
        loop {
            let event = rx.recv().await.expect("the node is alive");
            if event.member().id().as_str() == id {
                return event;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), wait)
        .await
        .unwrap_or_else(|_| panic!("no event about {id}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_sees_a_member_come_change_and_leave() {
    let tmp = tempfile::tempdir().unwrap();
    let a = builder(tmp.path(), "a")
        .with_mesh_loop(MeshConfig::disabled())
        .build()
        .unwrap();
    a.start_server().await.unwrap();
    let mut events = a.subscribe();
    let b = builder(tmp.path(), "b")
        .with_mesh_loop(MeshConfig::disabled())
        .build()
        .unwrap();
    b.start_server().await.unwrap();
    b.add_peer(PeerInfo::new("a", a.address()).unwrap())
        .unwrap();
    b.sync_topology("a").await.unwrap();
    assert!(matches!(
        next_about(&mut events, "b").await,
        MemberEvent::Up(_)
    ));
    assert!(a.members().borrow().iter().any(|m| m.id().as_str() == "b"));

    b.set_health(HealthStatus::Unhealthy, "draining", None);
    b.sync_topology("a").await.unwrap();
    match next_about(&mut events, "b").await {
        MemberEvent::Updated(m) => assert_eq!(m.info.health, HealthStatus::Unhealthy),
        other => panic!("{other:?}"),
    }
    b.shutdown().await.unwrap();
    assert!(matches!(
        next_about(&mut events, "b").await,
        MemberEvent::Left(_)
    ));
    a.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_providers_returns_once_enough_are_known() {
    let tmp = tempfile::tempdir().unwrap();
    let consumer = builder(tmp.path(), "consumer").build().unwrap();
    consumer.start_server().await.unwrap();
    let seed = consumer.address();
    let start_provider = |id: &'static str| {
        let dir = tmp.path().to_owned();
        let seed = seed.clone();
        async move {
            let p = builder(&dir, id)
                .with_services([ServiceInfo::new("greeter", "v1")])
                .build()
                .unwrap();
            p.start_server().await.unwrap();
            p.add_peer(PeerInfo::new("consumer", seed).unwrap())
                .unwrap();
            p
        }
    };
    let waiting = {
        let consumer = consumer.clone();
        tokio::spawn(async move {
            consumer
                .wait_for_providers("greeter", "v1", 2, Duration::from_secs(10))
                .await
        })
    };
    let p1 = start_provider("p1").await;
    let p2 = start_provider("p2").await;
    let providers = waiting.await.unwrap().unwrap();
    assert_eq!(providers.len(), 2);

    let err = consumer
        .wait_for_providers("greeter", "v1", 3, Duration::from_millis(300))
        .await
        .unwrap_err();
    match &err {
        Error::NotEnoughProviders { wanted, found, .. } => {
            assert_eq!((*wanted, *found), (3, 2));
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("greeter v1"), "{err}");
    for n in [p1, p2, consumer] {
        n.shutdown().await.unwrap();
    }
}
