//! Merge is commutative, associative and idempotent, and `apply` survives
//! arbitrary input: property tests over random operations and entries.

use std::collections::BTreeMap;

use aegis_topology::{
    Entry, Limits, NodeInfo, NodeState, ServiceInfo, Stamp, Topology, TopologyConfig,
};
use proptest::prelude::*;

/// A local operation on one replica.
#[derive(Debug, Clone)]
enum Op {
    Add { node: u8, svc: u8 },
    Update { node: u8, svc: u8 },
    Remove { node: u8 },
    Mark { node: u8, dead: bool },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..6, 0u8..3).prop_map(|(node, svc)| Op::Add { node, svc }),
        (0u8..6, 0u8..3).prop_map(|(node, svc)| Op::Update { node, svc }),
        (0u8..6).prop_map(|node| Op::Remove { node }),
        (0u8..6, any::<bool>()).prop_map(|(node, dead)| Op::Mark { node, dead }),
    ]
}

fn info(node: u8, svc: u8, replica: usize) -> NodeInfo {
    NodeInfo::new(format!("n{node}"), format!("from-{replica}"), "127.0.0.1:9")
        .unwrap()
        .with_services([ServiceInfo::new(format!("s{svc}"), "v1")])
}

fn run(t: &Topology, replica: usize, op: &Op) {
    // Failures (add of a present node, ...) are part of the API; ignore them.
    let _ = match *op {
        Op::Add { node, svc } => t.add_node(info(node, svc, replica)).map(|_| ()),
        Op::Update { node, svc } => t.update_node(info(node, svc, replica)).map(|_| ()),
        Op::Remove { node } => t.remove_node(&format!("n{node}")),
        Op::Mark { node, dead } => t
            .mark(
                &format!("n{node}"),
                if dead {
                    NodeState::Dead
                } else {
                    NodeState::Suspect
                },
            )
            .map(|_| ()),
    };
}

fn snapshot(t: &Topology) -> BTreeMap<String, (Stamp, NodeState, NodeInfo)> {
    t.entries()
        .into_iter()
        .map(|e| (e.info.id.to_string(), (e.stamp, e.state, (*e.info).clone())))
        .collect()
}

fn providers(t: &Topology) -> Vec<Vec<String>> {
    (0..3)
        .map(|s| {
            t.get_service_providers(&format!("s{s}"), "v1")
                .iter()
                .map(|n| n.id.to_string())
                .collect()
        })
        .collect()
}

fn preferred(t: &Topology) -> Vec<Vec<String>> {
    (0..3)
        .map(|s| {
            t.get_preferred_providers(&format!("s{s}"), "v1")
                .iter()
                .map(|n| n.id.to_string())
                .collect()
        })
        .collect()
}

/// Alive providers, or all available ones when none is alive, by scanning.
fn scanned_preferred(t: &Topology) -> Vec<Vec<String>> {
    (0..3)
        .map(|s| {
            let name = format!("s{s}");
            let offering: Vec<_> = t
                .entries()
                .into_iter()
                .filter(|e| e.state.is_available() && e.info.provides(&name, "v1"))
                .collect();
            let alive: Vec<String> = offering
                .iter()
                .filter(|e| {
                    e.state == NodeState::Alive
                        && e.info.health != aegis_topology::HealthStatus::Unhealthy
                })
                .map(|e| e.info.id.to_string())
                .collect();
            if alive.is_empty() {
                offering.iter().map(|e| e.info.id.to_string()).collect()
            } else {
                alive
            }
        })
        .collect()
}

/// What the index must say, computed by scanning.
fn scanned_providers(t: &Topology) -> Vec<Vec<String>> {
    (0..3)
        .map(|s| {
            t.entries()
                .into_iter()
                .filter(|e| e.state.is_available() && e.info.provides(&format!("s{s}"), "v1"))
                .map(|e| e.info.id.to_string())
                .collect()
        })
        .collect()
}

/// Two replicas after `ops`, and the merge of both (what any sync between
/// them must reach).
fn two_replicas(ops: &[(usize, Op)]) -> (Vec<Topology>, Topology) {
    let r: Vec<Topology> = (0..2).map(|_| Topology::new()).collect();
    for (i, op) in ops {
        run(&r[*i], *i, op);
    }
    let full = Topology::new();
    full.apply(r[0].entries()).unwrap();
    full.apply(r[1].entries()).unwrap();
    (r, full)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Several replicas write independently, then merge pairwise in a random
    /// order until each has heard from all: all end identical.
    #[test]
    fn replicas_converge_whatever_the_merge_order(
        ops in prop::collection::vec((0usize..4, op()), 0..40),
        order in prop::collection::vec((0usize..4, 0usize..4), 0..30),
    ) {
        // Timestamps come from the clock; fix them so content is comparable.
        let replicas: Vec<Topology> = (0..4).map(|_| Topology::new()).collect();
        for (r, op) in &ops {
            run(&replicas[*r], *r, op);
        }
        for (a, b) in order {
            replicas[b].apply(replicas[a].entries()).unwrap();
        }
        // Finish with a full round so everyone has everything.
        for a in 0..4 {
            for b in 0..4 {
                replicas[b].apply(replicas[a].entries()).unwrap();
            }
        }
        let first = snapshot(&replicas[0]);
        for r in &replicas[1..] {
            prop_assert_eq!(&snapshot(r), &first);
            prop_assert_eq!(r.digest(), replicas[0].digest());
            prop_assert_eq!(providers(r), providers(&replicas[0]));
        }
        for r in &replicas {
            prop_assert_eq!(providers(r), scanned_providers(r));
            prop_assert_eq!(preferred(r), scanned_preferred(r));
        }
    }

    /// merge(a, b) == merge(b, a); merge(merge(a, b), c) == merge(a, merge(b, c));
    /// merge(a, a) == a.
    #[test]
    fn merge_is_commutative_associative_idempotent(
        ops in prop::collection::vec((0usize..3, op()), 0..30),
    ) {
        let r: Vec<Topology> = (0..3).map(|_| Topology::new()).collect();
        for (i, op) in &ops {
            run(&r[*i], *i, op);
        }
        let merged = |parts: &[&Topology]| {
            let t = Topology::new();
            for p in parts {
                t.apply(p.entries()).unwrap();
            }
            t
        };
        let ab = merged(&[&r[0], &r[1]]);
        let ba = merged(&[&r[1], &r[0]]);
        prop_assert_eq!(snapshot(&ab), snapshot(&ba));
        prop_assert_eq!(ab.digest(), ba.digest());

        let ab_c = merged(&[&ab, &r[2]]);
        let bc = merged(&[&r[1], &r[2]]);
        let a_bc = merged(&[&r[0], &bc]);
        prop_assert_eq!(snapshot(&ab_c), snapshot(&a_bc));

        let before = (snapshot(&r[0]), r[0].digest(), r[0].version());
        r[0].apply(r[0].entries()).unwrap();
        prop_assert_eq!((snapshot(&r[0]), r[0].digest(), r[0].version()), before);
    }

    /// Digest-driven delta sync reaches the same state as a full merge.
    #[test]
    fn delta_sync_equals_full_merge(
        ops in prop::collection::vec((0usize..2, op()), 0..40),
    ) {
        let (r, full) = two_replicas(&ops);

        let plan = r[0].compare(&r[1].entry_digests());
        r[1].apply(plan.send).unwrap();
        r[0].apply(r[1].entries_for(&plan.want)).unwrap();
        prop_assert_eq!(snapshot(&r[0]), snapshot(&full));
        prop_assert_eq!(snapshot(&r[1]), snapshot(&full));
        prop_assert!(r[0].compare(&r[1].entry_digests()).send.is_empty());
    }

    /// Sync through bucket digests reaches the same state as a full merge,
    /// and exchanges only the entry digests of the buckets that differ.
    #[test]
    fn bucketed_sync_equals_full_merge(
        ops in prop::collection::vec((0usize..2, op()), 0..40),
    ) {
        let (r, full) = two_replicas(&ops);

        let differing = r[0].differing_buckets(&r[1].bucket_digests());
        let theirs = r[1].entry_digests_in(&differing);
        prop_assert!(theirs.len() <= r[1].entry_digests().len());
        let plan = r[0].compare_in(&theirs, &differing);
        r[1].apply(plan.send).unwrap();
        r[0].apply(r[1].entries_for(&plan.want)).unwrap();
        prop_assert_eq!(snapshot(&r[0]), snapshot(&full));
        prop_assert_eq!(snapshot(&r[1]), snapshot(&full));
        prop_assert!(r[0].differing_buckets(&r[1].bucket_digests()).is_empty());
    }
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof!["\\PC{0,12}", (0usize..1400).prop_map(|n| "x".repeat(n)),]
}

fn arbitrary_entry() -> impl Strategy<Value = Result<Entry, String>> {
    (
        text(),
        text(),
        text(),
        text(),
        prop::collection::vec((text(), text()), 0..4),
        0usize..300,
        any::<(u64, u64, i64, i64)>(),
        0u8..4,
    )
        .prop_map(
            |(id, name, ty, addr, services, extra, (g, v, j, u), state)| {
                let mut info = NodeInfo::new(&id, name, addr).map_err(|e| e.to_string())?;
                info.node_type = ty.into();
                info.services = services
                    .into_iter()
                    .map(|(n, v)| ServiceInfo::new(n, v))
                    .collect();
                if extra > 250 {
                    info.services
                        .extend((0..extra).map(|i| ServiceInfo::new(i.to_string(), "v")));
                }
                info.joined_at = j;
                info.updated_at = u;
                let state = [
                    NodeState::Alive,
                    NodeState::Suspect,
                    NodeState::Dead,
                    NodeState::Left,
                ][state as usize];
                Ok(Entry::new(info, Stamp::new(g, v), state))
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Arbitrary entries and deltas: `apply` never panics; it either applies
    /// a valid delta or rejects it leaving the topology exactly as it was;
    /// the indexes always agree with a scan.
    #[test]
    fn apply_survives_arbitrary_input(
        deltas in prop::collection::vec(prop::collection::vec(arbitrary_entry(), 0..8), 1..6),
    ) {
        let t = Topology::with_config(TopologyConfig {
            limits: Limits { max_delta_entries: 6, ..Limits::default() },
            ..TopologyConfig::default()
        });
        t.add_node(NodeInfo::new("anchor", "a", "127.0.0.1:1").unwrap()).unwrap();
        for delta in deltas {
            // Invalid IDs never become entries: NodeInfo::new refuses them.
            let entries: Vec<Entry> = delta.into_iter().filter_map(Result::ok).collect();
            let before = (snapshot(&t), t.digest(), t.version());
            match t.apply(entries) {
                Ok(_) => {}
                Err(_) => prop_assert_eq!((snapshot(&t), t.digest(), t.version()), before),
            }
            for e in t.entries() {
                prop_assert!(e.info.name.len() <= 1024 && e.info.services.len() <= 256);
            }
        }
    }
}
