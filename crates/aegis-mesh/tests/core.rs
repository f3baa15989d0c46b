//! The core's decisions, one at a time, with no network.

use aegis_mesh::{
    Step, SyncConfig, SyncError, SyncMode, SyncRequest, SyncResponse, SyncSession, respond,
};
use aegis_topology::{
    Entry, Limits, NodeId, NodeInfo, NodeState, ServiceInfo, Stamp, Topology, TopologyConfig,
};

const NOW: u64 = 1_700_000_000_000;

fn owned(id: &str, limits: Limits) -> Topology {
    let t = Topology::with_config(TopologyConfig {
        local_id: Some(NodeId::new(id).unwrap()),
        generation: NOW,
        limits,
        ..TopologyConfig::default()
    });
    t.add_node(NodeInfo::new(id, id, "127.0.0.1:1").unwrap())
        .unwrap();
    t
}

/// An alive entry of member `id` at the first stamp of `NOW`.
fn alive(id: &str) -> Entry {
    Entry::new(
        NodeInfo::new(id, "m", "127.0.0.1:9").unwrap(),
        Stamp::new(NOW, 1),
        NodeState::Alive,
    )
}

fn big_entry(i: usize, services: usize) -> Entry {
    let info = NodeInfo::new(format!("m{i}"), "x".repeat(1000), "127.0.0.1:2")
        .unwrap()
        .with_services(
            (0..services).map(|s| ServiceInfo::new(format!("{s:0>1000}"), "v".repeat(1000))),
        );
    Entry::new(info, Stamp::new(NOW, 1), NodeState::Alive)
}

/// Runs a whole session of `a` against `b`; returns the outcome and the
/// largest message (approximate bytes) either side sent.
fn sync(a: &Topology, b: &Topology, config: SyncConfig) -> (aegis_mesh::SyncOutcome, usize) {
    let (mut session, mut request) = SyncSession::start(a, config);
    let mut largest = 0;
    loop {
        largest = largest.max(request.encoded_len());
        let answer = respond(b, request, &config, NOW).unwrap().response;
        largest = largest.max(answer.encoded_len());
        match session.on_response(a, answer, NOW).unwrap() {
            Step::Send(next) => request = next,
            Step::Done(outcome) => return (outcome, largest),
        }
    }
}

#[test]
fn large_entries_are_paged_so_no_message_passes_the_budget() {
    // Forty legal entries of about 0.5 MB (21 MB in all): v1 sent them in
    // one message, over the 16 MiB a server accepts.
    let b = owned("b", Limits::default());
    b.apply((0..40).map(|i| big_entry(i, 256)).collect())
        .unwrap();
    let a = owned("a", Limits::default());
    let config = SyncConfig::default();
    let (outcome, largest) = sync(&a, &b, config);
    assert!(outcome.complete, "{outcome:?}");
    assert_eq!(outcome.received, 41);
    assert!(outcome.requests > 3, "{outcome:?}");
    assert!(
        largest <= config.max_message_bytes + 600 * 1024,
        "largest message {largest} bytes"
    );
    assert_eq!(a.digest(), b.digest());

    // The answer to a reference node is bounded too.
    let full = respond(&b, SyncRequest::Full, &config, NOW)
        .unwrap()
        .response;
    assert!(full.encoded_len() <= config.max_full_bytes + 600 * 1024);
    let SyncResponse::Full(entries) = full else {
        panic!("not a full answer")
    };
    assert_eq!(entries[0].id().as_str(), "b", "its own entry comes first");
}

#[test]
fn a_topology_past_the_want_limit_is_paged_not_refused() {
    // v1: past `max_delta_entries` IDs, one `want` was refused for ever.
    let limits = Limits {
        max_delta_entries: 100,
        ..Limits::default()
    };
    let b = owned("b", limits);
    let entries: Vec<Entry> = (0..2500).map(|i| alive(&format!("n{i}"))).collect();
    for chunk in entries.chunks(100) {
        b.apply(chunk.to_vec()).unwrap();
    }
    let a = owned("a", limits);
    let config = SyncConfig {
        max_entries_per_message: 100,
        ..SyncConfig::default()
    };
    let (outcome, _) = sync(&a, &b, config);
    assert!(outcome.complete, "{outcome:?}");
    assert_eq!(a.digest(), b.digest());
    assert!(outcome.requests >= 25, "{outcome:?}");

    // A session stops at its request bound; the next one goes on.
    let c = owned("c", limits);
    let short = SyncConfig {
        max_requests: 5,
        ..config
    };
    let (first, _) = sync(&c, &b, short);
    assert!(!first.complete);
    let mut sessions = 1;
    while c.digest() != b.digest() {
        sessions += 1;
        assert!(sessions < 40, "no progress");
        sync(&c, &b, short);
    }
}

#[test]
fn a_refused_push_changes_nothing() {
    let b = owned("b", Limits::default());
    let before = b.digest();
    let good = Entry::new(
        NodeInfo::new("fine", "f", "127.0.0.1:4").unwrap(),
        Stamp::new(NOW, 1),
        NodeState::Alive,
    );
    let forged = Entry::new(
        NodeInfo::new("late", "l", "127.0.0.1:5").unwrap(),
        Stamp::new(u64::MAX, u64::MAX),
        NodeState::Alive,
    );
    let err = respond(
        &b,
        SyncRequest::Delta {
            push: vec![good, forged],
            want: vec![NodeId::new("b").unwrap()],
        },
        &SyncConfig::default(),
        NOW,
    )
    .unwrap_err();
    assert!(matches!(err, SyncError::StampTooHigh { .. }), "{err}");
    assert!(err.to_string().contains("late"), "{err}");
    assert_eq!(b.digest(), before);
    assert!(b.get_node("fine").is_none());
}

#[test]
fn an_answer_out_of_turn_is_an_error_not_a_panic() {
    let a = owned("a", Limits::default());
    let (mut session, _) = SyncSession::start(&a, SyncConfig::default());
    let err = session
        .on_response(&a, SyncResponse::BucketDigests(vec![]), NOW)
        .map(|_| ());
    // 0 bucket digests: nothing differs that can be asked for.
    assert!(err.is_ok());
    let (mut session, _) = SyncSession::start(&a, SyncConfig::default());
    session.on_response(&a, SyncResponse::InSync, NOW).unwrap();
    assert!(matches!(
        session.on_response(&a, SyncResponse::InSync, NOW),
        Err(SyncError::Unexpected { .. })
    ));
}

#[test]
fn sessions_report_their_mode() {
    let a = owned("a", Limits::default());
    let b = owned("b", Limits::default());
    assert_eq!(sync(&a, &b, SyncConfig::default()).0.mode, SyncMode::Delta);
    assert_eq!(sync(&a, &b, SyncConfig::default()).0.mode, SyncMode::InSync);
}

/// Found by the property test: a responder cut the entry digests of a
/// bucket chunk at `max_digests_per_message`, inside a bucket, and the
/// requester read the cut-off entries as ones the responder lacked: one
/// entry never arrived and the session still said it was complete.
#[test]
fn a_bucket_is_never_split_between_messages() {
    let node = |id: String| NodeInfo::new(id, "x", "127.0.0.1:2").unwrap();
    let common: Vec<Entry> = (0..250)
        .map(|i| Entry::new(node(format!("x{i}")), Stamp::new(1, 1), NodeState::Alive))
        .collect();
    let a = Topology::new();
    a.apply(common.clone()).unwrap();
    let b = Topology::new();
    b.apply(common).unwrap();
    b.apply(
        [133, 440, 0, 1, 2, 3, 4]
            .iter()
            .map(|i| Entry::new(node(format!("e{i}")), Stamp::new(1, 0), NodeState::Alive))
            .collect(),
    )
    .unwrap();
    let config = SyncConfig {
        max_digests_per_message: 1,
        max_requests: 10_000,
        ..SyncConfig::default()
    };
    let (outcome, _) = sync(&a, &b, config);
    assert!(outcome.complete);
    assert_eq!(a.digest(), b.digest());
    assert_eq!(a.node_count(), 257);
}
