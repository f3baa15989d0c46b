//! The liveness core's decisions, one at a time, with no network and an
//! injected clock: probe order, suspicion and its timeout, confirmations,
//! local health, piggybacking, back-off and purges.

use std::time::Duration;

use aegis_mesh::{
    Liveness, LivenessConfig, MAX_PIGGYBACK, Piggyback, Probe, Rng, Suspicion, SyncConfig,
    SyncError, Transition,
};
use aegis_topology::{Entry, Limits, NodeId, NodeInfo, NodeState, Stamp, Topology, TopologyConfig};

const NOW: u64 = 1_700_000_000_000;

/// Missed, with every helper answering (so the miss is the member's).
const MISSED: Probe = Probe::Missed {
    asked: 3,
    replied: 3,
};

fn owned(id: &str) -> Topology {
    let t = Topology::with_config(TopologyConfig {
        local_id: Some(NodeId::new(id).unwrap()),
        generation: NOW,
        limits: Limits::default(),
        ..TopologyConfig::default()
    });
    t.add_node(NodeInfo::new(id, id, "127.0.0.1:1").unwrap())
        .unwrap();
    t
}

fn node(id: &str) -> NodeId {
    NodeId::new(id).unwrap()
}

/// An alive entry of member `id` at the first stamp of `NOW`.
fn alive(id: &str) -> Entry {
    at(id, 1, NodeState::Alive)
}

fn at(id: &str, version: u64, state: NodeState) -> Entry {
    Entry::new(
        NodeInfo::new(id, "m", "127.0.0.1:9").unwrap(),
        Stamp::new(NOW, version),
        state,
    )
}

fn setup() -> (Topology, Liveness, NodeId) {
    let t = owned("me");
    t.apply(vec![alive("x")]).unwrap();
    let l = Liveness::new(node("me"), LivenessConfig::default());
    (t, l, node("x"))
}

/// A topology of `me` and `n - 1` alive members `m0`, `m1`, ….
fn mesh(n: usize) -> (Topology, Liveness) {
    let t = owned("me");
    t.apply((0..n - 1).map(|i| alive(&format!("m{i}"))).collect())
        .unwrap();
    let mut l = Liveness::new(node("me"), LivenessConfig::default());
    l.tick(&t, NOW);
    (t, l)
}

#[test]
fn a_silent_member_is_suspect_then_dead_once_and_then_probed_with_back_off() {
    let (t, mut l, x) = setup();
    let mut rng = Rng::new(1);
    let mut now = NOW;
    let mut reports = Vec::new();
    let mut probed_at = Vec::new();
    // Ten simulated minutes of periods of 300 ms, x never answering.
    while now < NOW + 600_000 {
        reports.extend(l.tick(&t, now));
        for id in l.probes(&t, now, &mut rng) {
            assert_eq!(id, x);
            probed_at.push(now);
            reports.extend(l.on_probe(&t, &id, MISSED, now));
        }
        now += 300;
    }
    // Two members: no one can confirm, so the timeout is the shortest,
    // 4 × 300 ms.
    assert_eq!(
        reports,
        vec![
            Transition::Suspect {
                id: x.clone(),
                missed: 1
            },
            Transition::Dead {
                id: x,
                confirmations: 0,
                suspect_ms: 1_200
            },
        ]
    );
    assert_eq!(t.state_of("x"), Some(NodeState::Dead));
    // Back-off: 2,000 periods, but far fewer probes, the gaps growing to
    // the cap.
    assert!(probed_at.len() < 30, "{} probes", probed_at.len());
    let gaps: Vec<u64> = probed_at.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.windows(2).all(|g| g[1] >= g[0]), "{gaps:?}");
    assert!(*gaps.last().unwrap() >= 60_000, "{gaps:?}");
}

#[test]
fn a_refutation_resets_the_miss_count_and_stops_the_timer() {
    let (t, _, x) = setup();
    let config = LivenessConfig {
        suspect_after: 2,
        ..LivenessConfig::default()
    };
    let mut l = Liveness::new(node("me"), config);
    assert_eq!(l.on_probe(&t, &x, MISSED, NOW), None);
    assert!(matches!(
        l.on_probe(&t, &x, MISSED, NOW),
        Some(Transition::Suspect { missed: 2, .. })
    ));
    assert_eq!(l.suspicions(), 1);
    // x refutes: a new stamp. The timer stops, and one more miss must not
    // make it suspect again at once.
    t.apply(vec![at("x", 2, NodeState::Alive)]).unwrap();
    assert!(l.tick(&t, NOW + 300).is_empty());
    assert_eq!(l.suspicions(), 0);
    assert_eq!(l.on_probe(&t, &x, MISSED, NOW), None);
    assert_eq!(
        l.on_probe(&t, &x, MISSED, NOW),
        Some(Transition::Suspect {
            id: x.clone(),
            missed: 2
        })
    );
    assert_eq!(t.state_of("x"), Some(NodeState::Suspect));
    // Nothing fires before the timeout: x refuted in time.
    t.apply(vec![at("x", 3, NodeState::Alive)]).unwrap();
    assert!(l.tick(&t, NOW + 60_000).is_empty());
    assert_eq!(t.state_of("x"), Some(NodeState::Alive));
}

/// Lifeguard's dynamic suspicion: at N = 100 the timeout runs from 6 × 2.4 s
/// down to 2.4 s (4 periods × log10 100) as independent members confirm.
#[test]
fn confirmations_shorten_the_suspicion_timeout() {
    let (t, mut l) = mesh(100);
    let timeout = |c| l.suspicion_timeout(c).as_millis();
    assert_eq!(timeout(0), 14_400);
    assert!(
        timeout(1) < timeout(0) && timeout(1) > 2_400,
        "{}",
        timeout(1)
    );
    assert_eq!(timeout(2), 2_400);
    assert_eq!(timeout(9), 2_400);
    // Unconfirmed, a suspicion learnt from the topology runs the longest.
    t.mark("m1", NodeState::Suspect).unwrap();
    for now in (NOW..NOW + 14_400).step_by(300) {
        assert!(l.tick(&t, now).is_empty());
    }
    assert!(matches!(
        &l.tick(&t, NOW + 14_400)[..],
        [Transition::Dead {
            confirmations: 0,
            suspect_ms: 14_400,
            ..
        }]
    ));
    // Two members confirm (one suspector is the first, then two more):
    // 2.4 s after the start it is over.
    let note = |from: &str| Suspicion {
        target: node("m1"),
        stamp: Stamp::new(NOW, 1),
        from: node(from),
    };
    let (t2, mut l2) = mesh(100);
    t2.mark("m1", NodeState::Suspect).unwrap();
    assert!(l2.on_suspicion(&t2, &note("m5"), NOW));
    assert!(l2.on_suspicion(&t2, &note("m6"), NOW));
    assert!(!l2.on_suspicion(&t2, &note("m6"), NOW), "counted once");
    for now in (NOW..NOW + 2_400).step_by(300) {
        assert!(l2.tick(&t2, now).is_empty());
    }
    assert!(l2.on_suspicion(&t2, &note("m7"), NOW + 2_399));
    assert!(matches!(
        &l2.tick(&t2, NOW + 2_400)[..],
        [Transition::Dead {
            confirmations: 2,
            ..
        }]
    ));
    // A note about another stamp (an old suspicion the member refuted)
    // does not count.
    let (t3, mut l3) = mesh(100);
    t3.apply(vec![at("m2", 5, NodeState::Suspect)]).unwrap();
    assert!(!l3.on_suspicion(&t3, &note("m5").with_target("m2"), NOW));
}

trait WithTarget {
    fn with_target(self, target: &str) -> Self;
}

impl WithTarget for Suspicion {
    fn with_target(mut self, target: &str) -> Self {
        self.target = node(target);
        self
    }
}

/// A member that answers this node is not declared dead by it, whatever
/// others say; the mark stays until the member refutes it.
#[test]
fn an_answer_stops_this_nodes_own_timer() {
    let (t, mut l) = mesh(10);
    t.mark("m3", NodeState::Suspect).unwrap();
    l.tick(&t, NOW);
    assert_eq!(l.suspicions(), 1);
    l.on_probe(&t, &node("m3"), Probe::Answered, NOW + 10);
    assert_eq!(l.suspicions(), 0);
    assert!(l.tick(&t, NOW + 600_000).is_empty());
    assert_eq!(t.state_of("m3"), Some(NodeState::Suspect));
}

/// Local health: probes that fail with every helper silent, or a refutation
/// about itself, make a node stretch its timeouts; answers bring it back.
/// Probes that fail while helpers answer are the member's fault, not ours.
#[test]
fn local_health_stretches_timeouts_when_this_node_is_the_problem() {
    let (t, mut l) = mesh(10);
    let base = Duration::from_millis(250);
    assert_eq!(l.scale(base), base);
    l.on_probe(&t, &node("m1"), MISSED, NOW);
    assert_eq!(l.health(), 0, "helpers answered: the member's miss");
    l.on_probe(
        &t,
        &node("m2"),
        Probe::Missed {
            asked: 3,
            replied: 0,
        },
        NOW,
    );
    assert_eq!(l.health(), 3);
    assert_eq!(l.scale(base), base * 4);
    l.on_refuted();
    assert_eq!(l.health(), 4);
    for _ in 0..20 {
        l.on_refuted();
    }
    assert_eq!(l.health(), LivenessConfig::default().max_health);
    for i in 0..20 {
        l.on_probe(&t, &node(&format!("m{}", i % 9)), Probe::Answered, NOW);
    }
    assert_eq!(l.health(), 0);
}

/// A stall (a tick long after the last) lowers health and holds every
/// running timer for a period, so that a node waking from a pause hears
/// the refutations that came meanwhile before it kills anyone.
#[test]
fn a_node_waking_from_a_stall_does_not_fire_its_timers_at_once() {
    let (t, mut l) = mesh(10);
    t.mark("m4", NodeState::Suspect).unwrap();
    l.tick(&t, NOW);
    // 30 s later the timer is long overdue, but the node was away.
    assert!(l.tick(&t, NOW + 30_000).is_empty());
    assert_eq!(l.health(), 1);
    // The refutation arrives in the next period: no death.
    t.apply(vec![at("m4", 2, NodeState::Alive)]).unwrap();
    assert!(l.tick(&t, NOW + 30_300).is_empty());
    assert_eq!(t.state_of("m4"), Some(NodeState::Alive));
}

/// Changes go out on probes and acks a bounded number of times (λ log N),
/// least-sent first; nothing when nothing changed.
#[test]
fn changes_are_piggybacked_a_bounded_number_of_times() {
    let (t, mut l) = mesh(10);
    // The first look: only this node's own entry is news.
    let first = l.piggyback(&t, &node("m1"));
    assert_eq!(first.updates.len(), 1);
    assert_eq!(first.updates[0].id().as_str(), "me");
    let limit = l.retransmit_limit();
    assert_eq!(limit, 8, "4 × ceil(log10(11))");
    let mut sends = 1;
    while !l.piggyback(&t, &node("m1")).is_empty() {
        sends += 1;
        assert!(sends <= limit);
    }
    assert_eq!(sends, limit);
    // A change is news again, and a suspicion takes its entry along.
    l.on_probe(&t, &node("m2"), MISSED, NOW);
    let p = l.piggyback(&t, &node("m1"));
    assert_eq!(p.suspicions.len(), 1);
    assert_eq!(p.suspicions[0].from.as_str(), "me");
    assert!(
        p.updates
            .iter()
            .any(|e| e.id().as_str() == "m2" && e.state == NodeState::Suspect)
    );
    // At most `max_piggyback` of each per message.
    t.apply((0..40).map(|i| alive(&format!("new{i}"))).collect())
        .unwrap();
    l.tick(&t, NOW + 300);
    assert!(
        l.piggyback(&t, &node("m1")).updates.len() <= LivenessConfig::default().max_piggyback + 1
    );
}

/// What a probe carries is merged like a sync push (checked whole first);
/// a suspicion of this node is refuted at once, and lowers its health.
#[test]
fn a_piggybacked_suspicion_of_this_node_is_refuted() {
    let (t, mut l) = mesh(5);
    let me = t.get_entry("me").unwrap();
    let claim = Entry::new(me.info.clone(), me.stamp, NodeState::Suspect);
    let report = l
        .on_piggyback(
            &t,
            Piggyback {
                updates: vec![claim],
                suspicions: vec![Suspicion {
                    target: node("me"),
                    stamp: me.stamp,
                    from: node("m1"),
                }],
            },
            &SyncConfig::default(),
            NOW,
        )
        .unwrap();
    assert!(report.refuted);
    assert_eq!(t.state_of("me"), Some(NodeState::Alive));
    assert!(t.get_entry("me").unwrap().stamp > me.stamp);
    assert_eq!(l.health(), 1);
    // The refutation is news, sent on the next probe.
    assert!(
        l.piggyback(&t, &node("m1"))
            .updates
            .iter()
            .any(|e| e.id().as_str() == "me")
    );
}

#[test]
fn an_oversized_or_forged_piggyback_is_refused_whole() {
    let (t, mut l) = mesh(5);
    let too_many = Piggyback {
        updates: (0..MAX_PIGGYBACK + 1)
            .map(|i| alive(&format!("z{i}")))
            .collect(),
        suspicions: Vec::new(),
    };
    assert!(matches!(
        l.on_piggyback(&t, too_many, &SyncConfig::default(), NOW),
        Err(SyncError::InvalidRequest {
            field: "updates",
            ..
        })
    ));
    let far = Entry::new(
        NodeInfo::new("m1", "m", "127.0.0.1:9").unwrap(),
        Stamp::new(u64::MAX, 0),
        NodeState::Dead,
    );
    let forged = Piggyback {
        updates: vec![alive("fresh"), far],
        suspicions: Vec::new(),
    };
    assert!(matches!(
        l.on_piggyback(&t, forged, &SyncConfig::default(), NOW),
        Err(SyncError::StampTooHigh { .. })
    ));
    assert!(t.get_entry("fresh").is_none(), "nothing of it applied");
    assert_eq!(t.state_of("m1"), Some(NodeState::Alive));
}

#[test]
fn housekeeping_purges_the_departed_after_their_retention() {
    let (t, l, _) = setup();
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
    let (t, _, _) = setup();
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
    t.apply(vec![at("x", 9, NodeState::Alive)]).unwrap();
    assert!(matches!(&view.refresh(&t)[..], [MemberEvent::Up(_)]));
    assert_eq!(view.members().count(), 2);
}

/// v1 probed a random 32 of all members: with 10,000 pushed entries that
/// never answer, a real member that died was probed once in about 300
/// rounds, and not found dead within a minute anywhere. Now half the probes
/// go to members that have answered before: the dead one is suspected
/// within a few cycles of the five, and dead when its timeout runs out.
#[test]
fn a_flood_of_silent_entries_does_not_hide_a_real_death() {
    let t = owned("me");
    let flood: Vec<Entry> = (0..10_000).map(|i| alive(&format!("bogus-{i}"))).collect();
    let real: Vec<Entry> = (0..5).map(|i| alive(&format!("real-{i}"))).collect();
    t.apply(real).unwrap();
    let config = LivenessConfig {
        max_probes: 5,
        ..LivenessConfig::default()
    };
    let mut l = Liveness::new(node("me"), config);
    let mut rng = Rng::new(7);
    let mut now = NOW;
    let mut round = |l: &mut Liveness, now: u64, dead_one: Option<&str>| {
        l.tick(&t, now);
        for id in l.probes(&t, now, &mut rng) {
            let answers = id.as_str().starts_with("real-") && Some(id.as_str()) != dead_one;
            let probe = if answers { Probe::Answered } else { MISSED };
            l.on_probe(&t, &id, probe, now);
        }
    };
    // The real members answer once; then the flood arrives.
    round(&mut l, now, None);
    t.apply(flood).unwrap();
    for _ in 0..5 {
        now += 300;
        round(&mut l, now, None);
    }
    // One real member dies: it is suspected within a few periods, and dead
    // once the (unconfirmed) timeout at N = 10,005 has run: 6 × 4 × 4 ×
    // 300 ms = 28.8 s.
    let died = now;
    let mut rounds = 0;
    while t.state_of("real-3") != Some(NodeState::Suspect) {
        rounds += 1;
        assert!(rounds <= 10, "not suspected within 10 periods");
        now += 300;
        round(&mut l, now, Some("real-3"));
    }
    while t.state_of("real-3") != Some(NodeState::Dead) {
        assert!(now - died <= 31_000, "not dead within the timeout");
        now += 300;
        round(&mut l, now, Some("real-3"));
    }
    for i in [0, 1, 2, 4] {
        assert_eq!(t.state_of(&format!("real-{i}")), Some(NodeState::Alive));
    }
}

/// At one probe a period, members that have answered and members that have
/// not yet both keep being probed: neither side starves the other.
#[test]
fn at_one_probe_a_period_every_member_is_probed() {
    let t = owned("me");
    t.apply((0..4).map(|i| alive(&format!("p{i}"))).collect())
        .unwrap();
    let mut l = Liveness::new(node("me"), LivenessConfig::default());
    let mut rng = Rng::new(3);
    let mut probed = std::collections::BTreeMap::new();
    for round in 0..200u64 {
        for id in l.probes(&t, NOW + round * 300, &mut rng) {
            *probed.entry(id.to_string()).or_insert(0) += 1;
            l.on_probe(&t, &id, Probe::Answered, NOW + round * 300);
        }
    }
    assert_eq!(probed.len(), 4, "{probed:?}");
    assert!(probed.values().all(|&n| n >= 20), "{probed:?}");
}

/// Round-robin: with 30 members that all answer and one probe a period,
/// each member is probed once per cycle of 30 periods, so never more than
/// 59 periods apart (a random choice each period leaves gaps far longer).
#[test]
fn every_member_is_probed_once_per_cycle() {
    let t = owned("me");
    t.apply((0..30).map(|i| alive(&format!("m{i}"))).collect())
        .unwrap();
    let mut l = Liveness::new(node("me"), LivenessConfig::default());
    let mut rng = Rng::new(5);
    let mut last: std::collections::HashMap<NodeId, u64> = std::collections::HashMap::new();
    let mut gaps = Vec::new();
    let mut probes = 0;
    for round in 0..900u64 {
        let now = NOW + round * 300;
        for id in l.probes(&t, now, &mut rng) {
            probes += 1;
            l.on_probe(&t, &id, Probe::Answered, now);
            // Gaps are measured once every member has answered.
            if round >= 300
                && let Some(before) = last.get(&id)
            {
                gaps.push(round - before);
            }
            last.insert(id, round);
        }
    }
    assert_eq!(probes, 900, "one probe every period");
    assert_eq!(last.len(), 30);
    let worst = gaps.iter().max().copied().unwrap_or(0);
    assert!(worst <= 59, "a member waited {worst} periods");
}

/// The buddy system: a member held suspect here hears of it on every probe
/// or ack sent to it, even once the news has been sent its bounded number
/// of times; others do not get its entry for that reason.
#[test]
fn a_suspect_is_told_on_every_exchange_with_it() {
    let (t, mut l) = mesh(10);
    l.on_probe(&t, &node("m2"), MISSED, NOW);
    while !l.piggyback(&t, &node("m1")).is_empty() {}
    for _ in 0..3 {
        let p = l.piggyback(&t, &node("m2"));
        assert!(
            p.updates
                .iter()
                .any(|e| e.id().as_str() == "m2" && e.state == NodeState::Suspect)
        );
    }
    assert!(l.piggyback(&t, &node("m1")).is_empty());
}

/// News goes to a few more members each period while there is any, and
/// nothing goes in steady state.
#[test]
fn news_is_gossiped_to_a_few_members_only_while_there_is_news() {
    let (t, mut l) = mesh(10);
    let mut rng = Rng::new(9);
    let targets = l.gossip_targets(&mut rng);
    assert_eq!(targets.len(), 3, "the own entry is news at first");
    assert!(!targets.contains(&node("me")));
    while l.has_news() {
        l.piggyback(&t, &node("m1"));
    }
    assert!(l.gossip_targets(&mut rng).is_empty());
}

/// A client-only node (it serves nothing: its entry says port 0) is a
/// member, but is never probed, asked for help or sent news.
#[test]
fn a_client_only_member_is_never_probed() {
    let t = owned("me");
    t.apply(vec![
        alive("server"),
        Entry::new(
            NodeInfo::new("client", "c", "127.0.0.1:0").unwrap(),
            Stamp::new(NOW, 1),
            NodeState::Alive,
        ),
    ])
    .unwrap();
    let mut l = Liveness::new(node("me"), LivenessConfig::default());
    let mut rng = Rng::new(4);
    for round in 0..50u64 {
        l.tick(&t, NOW + round * 300);
        for id in l.probes(&t, NOW + round * 300, &mut rng) {
            assert_eq!(id.as_str(), "server");
        }
        assert!(
            !l.gossip_targets(&mut rng)
                .iter()
                .any(|i| i.as_str() == "client")
        );
        assert!(l.helpers(&node("server"), &mut rng).is_empty());
    }
    assert_eq!(t.state_of("client"), Some(NodeState::Alive));
}

/// An entry of the client-only member `id` (port 0) at `version`.
fn client_at(id: &str, version: u64) -> Entry {
    Entry::new(
        NodeInfo::new(id, "c", "127.0.0.1:0").unwrap(),
        Stamp::new(NOW, version),
        NodeState::Alive,
    )
}

/// A client-only member cannot be probed, so it holds a lease: while its
/// stamp keeps rising it stays alive; once it stops, it is marked dead
/// (once) a lease after its last renewal was seen; its next renewal brings
/// it back. (It used to stay alive for ever after a crash.)
#[test]
fn a_client_only_member_that_stops_renewing_is_dead_after_its_lease() {
    let t = owned("me");
    t.apply(vec![client_at("client", 1)]).unwrap();
    let mut l = Liveness::new(node("me"), LivenessConfig::default());
    let lease = LivenessConfig::default().client_lease.as_millis() as u64;
    let mut version = 1;
    let mut last_renewal = NOW;
    let mut silent = Vec::new();
    let mut now = NOW;
    // Two minutes of renewals every 10 s (more often than a client would):
    // never dead.
    while now < NOW + 120_000 {
        if now - last_renewal >= 10_000 {
            version += 1;
            t.apply(vec![client_at("client", version)]).unwrap();
            last_renewal = now;
        }
        silent.extend(l.tick(&t, now));
        assert_eq!(t.state_of("client"), Some(NodeState::Alive), "at {now}");
        now += 300;
    }
    assert!(silent.is_empty(), "{silent:?}");
    // It stops renewing: dead a lease after the last renewal, not before.
    let stopped = last_renewal;
    while t.state_of("client") == Some(NodeState::Alive) {
        silent.extend(l.tick(&t, now));
        assert!(now < stopped + lease + 1_000, "still alive at {now}");
        now += 300;
    }
    let died = now - 300;
    assert!(died >= stopped + lease, "dead after {} ms", died - stopped);
    assert!(
        matches!(&silent[..], [Transition::Silent { id, silent_ms }]
            if id.as_str() == "client" && *silent_ms >= lease),
        "{silent:?}"
    );
    for _ in 0..100 {
        assert!(l.tick(&t, now).is_empty());
        now += 300;
    }
    assert_eq!(t.state_of("client"), Some(NodeState::Dead));
    // Its next renewal refutes the death.
    t.apply(vec![client_at("client", version + 1)]).unwrap();
    for _ in 0..10 {
        assert!(l.tick(&t, now).is_empty());
        now += 300;
    }
    assert_eq!(t.state_of("client"), Some(NodeState::Alive));
}

/// A node that serves nothing renews its own entry every half of the
/// lease (a new stamp, queued as news); a node that serves does not.
#[test]
fn a_client_only_node_renews_its_own_entry() {
    let t = Topology::with_config(TopologyConfig {
        local_id: Some(node("me")),
        generation: NOW,
        limits: Limits::default(),
        ..TopologyConfig::default()
    });
    t.add_node(NodeInfo::new("me", "me", "127.0.0.1:0").unwrap())
        .unwrap();
    t.apply(vec![alive("server")]).unwrap();
    let config = LivenessConfig {
        client_lease: Duration::from_secs(20),
        ..LivenessConfig::default()
    };
    let mut l = Liveness::new(node("me"), config);
    let mut stamps = vec![t.get_entry("me").unwrap().stamp];
    let mut now = NOW;
    while now <= NOW + 62_000 {
        l.tick(&t, now);
        let stamp = t.get_entry("me").unwrap().stamp;
        if stamp != *stamps.last().unwrap() {
            stamps.push(stamp);
            assert!(l.has_news(), "a renewal is news");
            while l.has_news() {
                l.piggyback(&t, &node("server"));
            }
        }
        now += 300;
    }
    // At the first tick at least 10 s after the last: 10.2, 20.4, ...,
    // 61.2 s (ticks every 300 ms).
    assert_eq!(stamps.len(), 7, "{stamps:?}");
    assert_eq!(l.renewals(), 6);
    assert!(stamps.windows(2).all(|w| w[0] < w[1]));

    let (t, mut l, _) = setup();
    let before = t.get_entry("me").unwrap().stamp;
    for round in 0..400u64 {
        l.tick(&t, NOW + round * 300);
    }
    assert_eq!(t.get_entry("me").unwrap().stamp, before);
    assert_eq!(l.renewals(), 0);
}

/// A node that was stalled (it missed its own periods) gives the leases
/// of client-only members at least half a lease more: their renewals
/// were held up with it.
#[test]
fn a_stalled_node_does_not_take_held_up_renewals_for_silence() {
    let t = owned("me");
    t.apply(vec![client_at("client", 1)]).unwrap();
    let config = LivenessConfig {
        client_lease: Duration::from_secs(30),
        ..LivenessConfig::default()
    };
    let mut l = Liveness::new(node("me"), config);
    let mut now = NOW;
    while now < NOW + 20_000 {
        assert!(l.tick(&t, now).is_empty());
        now += 300;
    }
    // Stalled for 25 s: 45 s since the client was last seen renewing.
    now += 25_000;
    assert!(l.tick(&t, now).is_empty(), "no death right after a stall");
    assert_eq!(t.state_of("client"), Some(NodeState::Alive));
    // A renewal arrives soon after: alive.
    t.apply(vec![client_at("client", 2)]).unwrap();
    let resumed = now;
    while now < resumed + 20_000 {
        assert!(l.tick(&t, now).is_empty());
        now += 300;
    }
    assert_eq!(t.state_of("client"), Some(NodeState::Alive));
}

/// What a node learns before its first tick (a sync or a probe answered
/// while it starts: `piggyback` reads the topology then) has no time of
/// its own yet: it counts from the first tick, not from the epoch. A
/// client-only member learnt that way used to be dead at the first tick,
/// and a suspect's timer fired at once.
#[test]
fn what_is_learnt_before_the_first_tick_counts_from_the_first_tick() {
    let t = owned("me");
    t.apply(vec![
        client_at("client", 1),
        at("x", 1, NodeState::Suspect),
        alive("y"),
    ])
    .unwrap();
    let mut l = Liveness::new(node("me"), LivenessConfig::default());
    l.piggyback(&t, &node("y"));
    let mut now = NOW;
    for _ in 0..3 {
        let transitions = l.tick(&t, now);
        assert!(transitions.is_empty(), "{transitions:?}");
        now += 300;
    }
    assert_eq!(t.state_of("client"), Some(NodeState::Alive));
    assert_eq!(t.state_of("x"), Some(NodeState::Suspect));
    // The suspicion still runs out in time, and the lease too.
    let mut transitions = Vec::new();
    while now < NOW + 70_000 {
        transitions.extend(l.tick(&t, now));
        now += 300;
    }
    assert_eq!(t.state_of("x"), Some(NodeState::Dead));
    assert_eq!(t.state_of("client"), Some(NodeState::Dead));
    assert_eq!(transitions.len(), 2, "{transitions:?}");
}

/// Another member's renewal (a new stamp, same state) is not news: it
/// travels by anti-entropy, or every node would piggyback every renewal.
/// A change of its state still is.
#[test]
fn another_members_renewal_is_not_news_but_its_death_is() {
    let t = owned("me");
    t.apply(vec![alive("server"), client_at("client", 1)])
        .unwrap();
    let mut l = Liveness::new(node("me"), LivenessConfig::default());
    let mut now = NOW;
    l.tick(&t, now);
    while l.has_news() {
        l.piggyback(&t, &node("server"));
    }
    for version in 2..5 {
        t.apply(vec![client_at("client", version)]).unwrap();
        now += 300;
        l.tick(&t, now);
        assert!(!l.has_news(), "renewal {version} queued as news");
    }
    let mut dead = client_at("client", 4);
    dead.state = NodeState::Dead;
    t.apply(vec![dead]).unwrap();
    now += 300;
    l.tick(&t, now);
    assert!(l.has_news());
}
