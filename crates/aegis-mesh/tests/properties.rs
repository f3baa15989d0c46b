//! Laws of the exchange, over arbitrary topologies and page sizes.

use aegis_mesh::{Step, SyncConfig, SyncSession, respond};
use aegis_topology::{Entry, NodeInfo, NodeState, ServiceInfo, Stamp, Topology};
use proptest::prelude::*;

const NOW: u64 = 1_700_000_000_000;

fn entry(id: u8, generation: u8, version: u8, state: u8, svc: u8) -> Entry {
    let info = NodeInfo::new(format!("n{id}"), format!("name{svc}"), "127.0.0.1:1")
        .expect("valid id")
        .with_services([ServiceInfo::new(format!("s{}", svc % 3), "v1")]);
    let state = match state % 4 {
        0 => NodeState::Alive,
        1 => NodeState::Suspect,
        2 => NodeState::Dead,
        _ => NodeState::Left,
    };
    Entry::new(
        info,
        Stamp::new(u64::from(generation), u64::from(version)),
        state,
    )
}

fn topology(entries: &[(u8, u8, u8, u8, u8)]) -> Topology {
    let t = Topology::new();
    for &(id, g, v, s, svc) in entries {
        t.apply(vec![entry(id, g, v, s, svc)]).expect("valid entry");
    }
    t
}

/// One whole session of `a` against `b`; panics on any protocol error.
fn session(a: &Topology, b: &Topology, config: SyncConfig) -> aegis_mesh::SyncOutcome {
    let (mut s, mut request) = SyncSession::start(a, config);
    loop {
        let answer = respond(b, request, &config, NOW)
            .expect("a valid request")
            .response;
        match s.on_response(a, answer, NOW).expect("a valid answer") {
            Step::Send(next) => request = next,
            Step::Done(outcome) => return outcome,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever two topologies hold, and however small the pages, sessions
    /// end (each within its request bound) and one session each way leaves
    /// both with the same entries; a further session is "in sync".
    #[test]
    fn sessions_converge_whatever_the_contents_and_page_sizes(
        a in prop::collection::vec((0u8..40, 0u8..3, 0u8..4, 0u8..4, 0u8..6), 0..40),
        b in prop::collection::vec((0u8..40, 0u8..3, 0u8..4, 0u8..4, 0u8..6), 0..40),
        per_message in 1usize..6,
        bytes in 60usize..400,
    ) {
        let (ta, tb) = (topology(&a), topology(&b));
        let config = SyncConfig {
            max_entries_per_message: per_message,
            max_wants_per_message: per_message,
            max_message_bytes: bytes,
            max_requests: 1_000,
            ..SyncConfig::default()
        };
        let first = session(&ta, &tb, config);
        prop_assert!(first.complete);
        prop_assert_eq!(ta.digest(), tb.digest());
        let again = session(&tb, &ta, config);
        prop_assert_eq!(again.mode, aegis_mesh::SyncMode::InSync);
    }

    /// Past 256 entries the exchange goes by bucket digests, in chunks that
    /// fit `max_digests_per_message`: the same law holds.
    #[test]
    fn bucketed_sessions_converge_in_chunks(
        shared in 250usize..400,
        only_a in prop::collection::vec((0u16..2000, 0u8..3, 0u8..4), 0..60),
        only_b in prop::collection::vec((0u16..2000, 0u8..3, 0u8..4), 0..60),
        digests in 1usize..200,
    ) {
        let build = |extra: &[(u16, u8, u8)]| {
            let t = Topology::new();
            let node = |id: String| NodeInfo::new(id, "x", "127.0.0.1:2").expect("valid id");
            let common = (0..shared)
                .map(|i| Entry::new(node(format!("x{i}")), Stamp::new(1, 1), NodeState::Alive));
            t.apply(common.collect()).expect("valid");
            for &(id, version, state) in extra {
                let state = [NodeState::Alive, NodeState::Suspect, NodeState::Dead, NodeState::Left]
                    [usize::from(state % 4)];
                let e = Entry::new(node(format!("e{id}")), Stamp::new(1, u64::from(version)), state);
                t.apply(vec![e]).expect("valid");
            }
            t
        };
        let (ta, tb) = (build(&only_a), build(&only_b));
        let config = SyncConfig {
            max_digests_per_message: digests,
            max_requests: 10_000,
            ..SyncConfig::default()
        };
        let first = session(&ta, &tb, config);
        prop_assert!(first.complete);
        prop_assert_eq!(ta.digest(), tb.digest());
    }
}
