//! The core's decisions, one at a time, with no network.

use std::time::Duration;

use aegis_mesh::{
    Liveness, LivenessConfig, Rng, Step, SyncConfig, SyncError, SyncMode, SyncRequest,
    SyncResponse, SyncSession, Transition, respond,
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

fn liveness_setup() -> (Topology, Liveness, NodeId) {
    let t = owned("me", Limits::default());
    let x = NodeId::new("x").unwrap();
    t.apply(vec![Entry::new(
        NodeInfo::new("x", "x", "127.0.0.1:6").unwrap(),
        Stamp::new(NOW, 1),
        NodeState::Alive,
    )])
    .unwrap();
    let l = Liveness::new(NodeId::new("me").unwrap(), LivenessConfig::default());
    (t, l, x)
}

#[test]
fn a_state_change_is_reported_once_and_dead_members_are_probed_with_back_off() {
    let (t, mut l, x) = liveness_setup();
    let mut rng = Rng::new(1);
    let mut now = NOW;
    let mut reports = Vec::new();
    let mut probed_at = Vec::new();
    // Ten simulated minutes of rounds every 300 ms, x never answering.
    while now < NOW + 600_000 {
        for id in l.probes(&t, now, &mut rng) {
            assert_eq!(id, x);
            probed_at.push(now);
            reports.extend(l.on_probe(&t, &id, false, now));
        }
        now += 300;
    }
    assert_eq!(
        reports,
        vec![
            Transition::Suspect {
                id: x.clone(),
                missed: 2
            },
            Transition::Dead { id: x, missed: 4 },
        ]
    );
    assert_eq!(t.state_of("x"), Some(NodeState::Dead));
    // Back-off: 2,000 rounds, but far fewer probes, the gaps growing to
    // the cap.
    assert!(probed_at.len() < 30, "{} probes", probed_at.len());
    let gaps: Vec<u64> = probed_at.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.windows(2).all(|g| g[1] >= g[0]), "{gaps:?}");
    assert!(*gaps.last().unwrap() >= 60_000, "{gaps:?}");
}

#[test]
fn a_refutation_resets_the_miss_count() {
    let (t, mut l, x) = liveness_setup();
    assert_eq!(l.on_probe(&t, &x, false, NOW), None);
    assert!(matches!(
        l.on_probe(&t, &x, false, NOW),
        Some(Transition::Suspect { .. })
    ));
    // x refutes: a new stamp. One more miss must not make it dead at once.
    t.apply(vec![Entry::new(
        NodeInfo::new("x", "x", "127.0.0.1:6").unwrap(),
        Stamp::new(NOW, 2),
        NodeState::Alive,
    )])
    .unwrap();
    assert_eq!(l.on_probe(&t, &x, false, NOW), None);
    assert_eq!(
        l.on_probe(&t, &x, false, NOW),
        Some(Transition::Suspect {
            id: x.clone(),
            missed: 2
        })
    );
    assert_eq!(t.state_of("x"), Some(NodeState::Suspect));
}

#[test]
fn housekeeping_purges_the_departed_after_their_retention() {
    let (t, l, _) = liveness_setup();
    t.mark("x", NodeState::Dead).unwrap();
    let now = t.now();
    assert_eq!(l.housekeeping(&t, now), (0, 0));
    let later = now + l.config().dead_retention + Duration::from_secs(1);
    assert_eq!(l.housekeeping(&t, later), (0, 1));
    assert!(t.get_entry("x").is_none());
}

#[test]
fn membership_events_follow_the_topology() {
    use aegis_mesh::{MemberEvent, MembershipView};
    let (t, _, _) = liveness_setup();
    let mut view = MembershipView::default();
    let first = view.refresh(&t);
    assert_eq!(first.len(), 2, "{first:?}");
    assert!(first.iter().all(|e| matches!(e, MemberEvent::Up(_))));
    assert!(view.refresh(&t).is_empty(), "no change, no event");

    t.mark("x", NodeState::Suspect).unwrap();
    assert!(
        matches!(&view.refresh(&t)[..], [MemberEvent::Updated(m)] if m.state == NodeState::Suspect)
    );
    t.mark("x", NodeState::Dead).unwrap();
    assert!(matches!(&view.refresh(&t)[..], [MemberEvent::Down(_)]));
    // Purged while dead: nothing more to say.
    t.purge_dead(t.now() + Duration::from_secs(1));
    assert!(view.refresh(&t).is_empty());
    // It refutes: up again.
    t.apply(vec![Entry::new(
        NodeInfo::new("x", "x", "127.0.0.1:6").unwrap(),
        Stamp::new(NOW, 9),
        NodeState::Alive,
    )])
    .unwrap();
    assert!(matches!(&view.refresh(&t)[..], [MemberEvent::Up(_)]));
    assert_eq!(view.members().count(), 2);
}

/// v1 probed a random 32 of all members: with 10,000 pushed entries that
/// never answer, a real member that died was probed once in about 300
/// rounds, and not found dead within a minute anywhere.
#[test]
fn a_flood_of_silent_entries_does_not_hide_a_real_death() {
    let t = owned("me", Limits::default());
    let flood: Vec<Entry> = (0..10_000).map(|i| alive(&format!("bogus-{i}"))).collect();
    let real: Vec<Entry> = (0..5).map(|i| alive(&format!("real-{i}"))).collect();
    t.apply(real).unwrap();
    let mut l = Liveness::new(NodeId::new("me").unwrap(), LivenessConfig::default());
    let mut rng = Rng::new(7);
    let mut now = NOW;
    let mut round = |l: &mut Liveness, now: u64, dead_one: Option<&str>| {
        for id in l.probes(&t, now, &mut rng) {
            let answers = id.as_str().starts_with("real-") && Some(id.as_str()) != dead_one;
            l.on_probe(&t, &id, answers, now);
        }
    };
    // The real members answer once; then the flood arrives.
    round(&mut l, now, None);
    t.apply(flood).unwrap();
    for _ in 0..5 {
        now += 300;
        round(&mut l, now, None);
    }
    // One real member dies: it is found dead within a few rounds.
    let mut rounds = 0;
    while t.state_of("real-3") != Some(NodeState::Dead) {
        rounds += 1;
        assert!(rounds <= 10, "not found dead within 10 rounds");
        now += 300;
        round(&mut l, now, Some("real-3"));
    }
    for i in [0, 1, 2, 4] {
        assert_eq!(t.state_of(&format!("real-{i}")), Some(NodeState::Alive));
    }
}

/// At one probe a round, members that have answered and members that have
/// not yet both keep being probed: neither side starves the other (a first
/// split of the probes did, and the facade's one-probe test caught it).
#[test]
fn at_one_probe_a_round_every_member_is_probed() {
    let t = owned("me", Limits::default());
    t.apply((0..4).map(|i| alive(&format!("p{i}"))).collect())
        .unwrap();
    let config = LivenessConfig {
        max_probes: 1,
        ..LivenessConfig::default()
    };
    let mut l = Liveness::new(NodeId::new("me").unwrap(), config);
    let mut rng = Rng::new(3);
    let mut probed = std::collections::BTreeMap::new();
    for round in 0..200u64 {
        for id in l.probes(&t, NOW + round * 300, &mut rng) {
            *probed.entry(id.to_string()).or_insert(0) += 1;
            l.on_probe(&t, &id, true, NOW + round * 300);
        }
    }
    assert_eq!(probed.len(), 4, "{probed:?}");
    assert!(probed.values().all(|&n| n >= 20), "{probed:?}");
}

/// Round-robin: with 30 members that all answer and 3 probes a round,
/// each member is probed once per cycle of 10 rounds, so never more than
/// 19 rounds apart (a random choice each round leaves gaps far longer).
#[test]
fn every_member_is_probed_once_per_cycle() {
    let t = owned("me", Limits::default());
    t.apply((0..30).map(|i| alive(&format!("m{i}"))).collect())
        .unwrap();
    let config = LivenessConfig {
        max_probes: 3,
        ..LivenessConfig::default()
    };
    let mut l = Liveness::new(NodeId::new("me").unwrap(), config);
    let mut rng = Rng::new(5);
    let mut last: std::collections::HashMap<NodeId, u64> = std::collections::HashMap::new();
    let mut gaps = Vec::new();
    let mut probes = 0;
    for round in 0..300u64 {
        let now = NOW + round * 300;
        for id in l.probes(&t, now, &mut rng) {
            probes += 1;
            l.on_probe(&t, &id, true, now);
            // Gaps are measured once every member has answered (from round
            // 100 on, long after that).
            if round >= 100
                && let Some(before) = last.get(&id)
            {
                gaps.push(round - before);
            }
            last.insert(id, round);
        }
    }
    assert_eq!(probes, 900, "3 probes every round");
    assert_eq!(last.len(), 30);
    let worst = gaps.iter().max().copied().unwrap_or(0);
    assert!(worst <= 19, "a member waited {worst} rounds");
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
