//! The sync exchange: [`respond`] for the responder, [`SyncSession`] for
//! the requester. Both sides validate everything they receive before any of
//! it changes the topology, and every message is bounded in size: large
//! differences are paged over several requests of one session, and what a
//! session leaves (it is bounded too) is picked up by the next.

use std::collections::VecDeque;
use std::time::Duration;

use aegis_topology::{
    ApplyReport, BUCKETED_ABOVE, BUCKETS, Digest, Entry, NodeId, NodeState, Topology,
};

use crate::SyncError;
use crate::message::{SyncRequest, SyncResponse};

/// Bounds of the exchange. The defaults keep every message far below the
/// 16 MiB a server accepts, whatever the topology holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncConfig {
    /// Entries one message carries at most, by approximate encoded size
    /// (at least one entry always goes, and one entry is bounded by the
    /// topology's field limits).
    pub max_message_bytes: usize,
    /// Entries one message carries at most, by count.
    pub max_entries_per_message: usize,
    /// IDs one request wants at most.
    pub max_wants_per_message: usize,
    /// Entry digests a requester asks for in one message at most (it
    /// chunks the buckets that differ by the counts the responder reported;
    /// a bucket is never split).
    pub max_digests_per_message: usize,
    /// Requests one session makes at most; what is left waits for the next.
    pub max_requests: usize,
    /// How far in the future a stamp's generation (the writer's start time
    /// in Unix milliseconds) may lie. A claim beyond it is refused, so that
    /// no claim is so high that its owner cannot raise its own stamp above
    /// it: every accepted claim can be refuted.
    pub max_clock_skew: Duration,
    /// Size budget of an answer to a reference node (which knows no paging
    /// and gets as much of the topology as fits, its own entry first).
    pub max_full_bytes: usize,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 4 * 1024 * 1024,
            max_entries_per_message: 8192,
            max_wants_per_message: 16_384,
            max_digests_per_message: 65_536,
            max_requests: 64,
            max_clock_skew: Duration::from_secs(300),
            max_full_bytes: 12 * 1024 * 1024,
        }
    }
}

impl SyncConfig {
    fn skew_ms(&self) -> u64 {
        u64::try_from(self.max_clock_skew.as_millis()).unwrap_or(u64::MAX)
    }
}

/// Refuses entries whose stamp lies too far in the future (see
/// [`SyncConfig::max_clock_skew`]). `now_ms` is the Unix time in
/// milliseconds.
///
/// # Errors
/// [`SyncError::StampTooHigh`] naming the first such entry.
pub fn check_stamps(entries: &[Entry], config: &SyncConfig, now_ms: u64) -> Result<(), SyncError> {
    let limit = now_ms.saturating_add(config.skew_ms());
    match entries.iter().find(|e| e.stamp.generation > limit) {
        Some(e) => Err(SyncError::StampTooHigh {
            id: e.id().clone(),
            stamp: e.stamp,
            limit,
        }),
        None => Ok(()),
    }
}

/// What [`respond`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Responded {
    /// The answer to send back.
    pub response: SyncResponse,
    /// What the pushed entries changed here.
    pub applied: ApplyReport,
}

/// Answers one sync request from `topology`. A push is applied only after
/// the whole request has been checked; a refused request changes nothing.
///
/// # Errors
/// [`SyncError::InvalidRequest`] naming the field and the rule;
/// [`SyncError::StampTooHigh`]; [`SyncError::Topology`] when the topology
/// refuses the push (a limit, a duplicate).
pub fn respond(
    topology: &Topology,
    request: SyncRequest,
    config: &SyncConfig,
    now_ms: u64,
) -> Result<Responded, SyncError> {
    let limits = topology.limits();
    let response = match request {
        SyncRequest::Digest(remote) => {
            let mine = topology.digest();
            if remote == mine {
                SyncResponse::InSync
            } else if mine.count > BUCKETED_ABOVE {
                SyncResponse::BucketDigests(topology.bucket_digests())
            } else {
                SyncResponse::EntryDigests(topology.entry_digests())
            }
        }
        SyncRequest::Buckets(buckets) => {
            if let Some(b) = buckets.iter().find(|&&b| usize::from(b) >= BUCKETS) {
                return Err(SyncError::InvalidRequest {
                    field: "buckets",
                    reason: format!("bucket {b} is not below {BUCKETS}"),
                });
            }
            // Whole buckets only: a requester compares bucket by bucket, so
            // a cut inside one would read as entries this side lacks. The
            // requester sizes its chunks from the counts in our bucket
            // digests; one bucket holds a share of at most `max_members`.
            SyncResponse::EntryDigests(topology.entry_digests_in(&buckets))
        }
        SyncRequest::Delta { push, mut want } => {
            // Everything is checked before anything is applied: the push
            // whole (stamps here, fields and bounds in `apply`), and the
            // wants are typed IDs already.
            check_stamps(&push, config, now_ms)?;
            // A pushed copy of a node this one purged is answered with the
            // reason it went (first, before the wanted entries), so the
            // pusher drops it too, or refutes it if it is that node.
            let corrections = topology.superseding_forgotten(&push);
            let applied = topology.apply(push)?;
            // More wants than this node answers at once is not an error:
            // it answers the first ones and says `more`.
            let max = limits.max_delta_entries.min(config.max_wants_per_message);
            let cut = want.len() > max;
            want.truncate(max);
            let (wanted, more) = answer_wants(topology, &want, config);
            let mut entries = corrections;
            entries.extend(wanted);
            return Ok(Responded {
                response: SyncResponse::Entries {
                    entries,
                    more: more || cut,
                },
                applied,
            });
        }
        SyncRequest::Full => SyncResponse::Full(full_answer(topology, config)),
    };
    Ok(Responded {
        response,
        applied: ApplyReport::default(),
    })
}

/// The wanted entries this topology holds, in the order asked, up to the
/// size budget (at least one).
fn answer_wants(topology: &Topology, want: &[NodeId], config: &SyncConfig) -> (Vec<Entry>, bool) {
    let held = topology.entries_for(want);
    let total = held.len();
    let entries = take_budget(
        held,
        config.max_message_bytes,
        config.max_entries_per_message,
    );
    let more = entries.len() < total;
    (entries, more)
}

/// A prefix of `entries` within `bytes` and `count` (at least one entry).
fn take_budget(entries: Vec<Entry>, bytes: usize, count: usize) -> Vec<Entry> {
    let mut used = 0;
    let mut out = Vec::new();
    for e in entries {
        let len = e.encoded_len();
        if !out.is_empty() && (used + len > bytes || out.len() >= count) {
            break;
        }
        used += len;
        out.push(e);
    }
    out
}

/// The answer to a reference node (a sync request without extension
/// fields, or `GetTopology`): available entries (it knows no states and
/// would take others for live nodes), this node's own first, as many as fit
/// [`SyncConfig::max_full_bytes`].
pub fn full_answer(topology: &Topology, config: &SyncConfig) -> Vec<Entry> {
    let mut entries: Vec<Entry> = topology
        .entries()
        .into_iter()
        .filter(|e| e.state.is_available())
        .collect();
    if let Some(me) = topology.local_id()
        && let Some(i) = entries.iter().position(|e| e.id() == me)
    {
        let own = entries.remove(i);
        entries.insert(0, own);
    }
    take_budget(entries, config.max_full_bytes, usize::MAX)
}

/// How a session went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// The digests matched: nothing was exchanged but them.
    InSync,
    /// Digests, then only the entries that differed, both ways.
    Delta,
    /// The peer answered with its whole topology (a reference node).
    Full,
}

/// What a finished [`SyncSession`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncOutcome {
    /// Which protocol ran.
    pub mode: SyncMode,
    /// Entries sent to the peer.
    pub sent: usize,
    /// Entries received from the peer.
    pub received: usize,
    /// What merging the received entries changed here.
    pub applied: ApplyReport,
    /// Requests made (the first included).
    pub requests: usize,
    /// False when the session stopped at [`SyncConfig::max_requests`] with
    /// differences left for the next one.
    pub complete: bool,
}

/// What the requester does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send this request and feed the answer to [`SyncSession::on_response`].
    Send(SyncRequest),
    /// The session is over.
    Done(SyncOutcome),
}

#[derive(Debug)]
enum Phase {
    /// Waiting for the answer to the digest.
    Digest,
    /// Waiting for the entry digests of these buckets.
    Buckets(Vec<u16>),
    /// Waiting for the answer to a delta page that asked for these IDs.
    Delta(Vec<NodeId>),
    Done,
}

/// The requester's side of one sync exchange with one peer.
///
/// ```
/// use aegis_mesh::{Step, SyncConfig, SyncSession, respond};
/// use aegis_topology::{NodeInfo, Topology};
///
/// let (a, b) = (Topology::new(), Topology::new());
/// a.add_node(NodeInfo::new("node-a", "a", "127.0.0.1:7001")?)?;
/// b.add_node(NodeInfo::new("node-b", "b", "127.0.0.1:7002")?)?;
/// let config = SyncConfig::default();
/// let now_ms = 1_700_000_000_000;
///
/// // The requester `a` and the responder `b`: the transport in between is
/// // the caller's business (a gRPC call, or a function call as here).
/// let (mut session, mut request) = SyncSession::start(&a, config);
/// let outcome = loop {
///     let answer = respond(&b, request, &config, now_ms)?.response;
///     match session.on_response(&a, answer, now_ms)? {
///         Step::Send(next) => request = next,
///         Step::Done(outcome) => break outcome,
///     }
/// };
/// assert_eq!((outcome.sent, outcome.received), (1, 1));
/// assert_eq!(a.digest(), b.digest());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct SyncSession {
    config: SyncConfig,
    phase: Phase,
    /// Bucket chunks still to compare.
    chunks: VecDeque<Vec<u16>>,
    /// Entries still to push, and IDs still to ask for, of the current chunk.
    push: VecDeque<Entry>,
    want: VecDeque<NodeId>,
    outcome: SyncOutcome,
}

impl SyncSession {
    /// A session against `topology`, and its first request (the digest).
    pub fn start(topology: &Topology, config: SyncConfig) -> (Self, SyncRequest) {
        let session = Self {
            config,
            phase: Phase::Digest,
            chunks: VecDeque::new(),
            push: VecDeque::new(),
            want: VecDeque::new(),
            outcome: SyncOutcome {
                mode: SyncMode::Delta,
                sent: 0,
                received: 0,
                applied: ApplyReport::default(),
                requests: 1,
                complete: true,
            },
        };
        (session, SyncRequest::Digest(topology.digest()))
    }

    /// Takes the peer's answer to the last request; returns the next
    /// request or the outcome. Received entries are checked whole before
    /// any is applied.
    ///
    /// # Errors
    /// [`SyncError::Unexpected`] for an answer that does not fit the last
    /// request; [`SyncError::StampTooHigh`] or [`SyncError::Topology`] for
    /// entries that break a rule (nothing of them is applied). The session
    /// is over after an error.
    pub fn on_response(
        &mut self,
        topology: &Topology,
        response: SyncResponse,
        now_ms: u64,
    ) -> Result<Step, SyncError> {
        let phase = std::mem::replace(&mut self.phase, Phase::Done);
        // An empty answer reads the same on the wire whatever its kind: to
        // a digest or a bucket request it is an empty list of digests.
        let response = match (&phase, response) {
            (
                Phase::Digest | Phase::Buckets(_),
                SyncResponse::Entries {
                    entries,
                    more: false,
                },
            ) if entries.is_empty() => SyncResponse::EntryDigests(Vec::new()),
            (_, r) => r,
        };
        match (phase, response) {
            (Phase::Digest, SyncResponse::InSync) => {
                self.outcome.mode = SyncMode::InSync;
                Ok(self.finish())
            }
            (Phase::Digest, SyncResponse::Full(entries)) => {
                self.outcome.mode = SyncMode::Full;
                self.take_entries(topology, entries, now_ms)?;
                Ok(self.finish())
            }
            (Phase::Digest, SyncResponse::EntryDigests(theirs)) => {
                let plan = topology.compare(&theirs);
                self.push.extend(plan.send);
                self.want.extend(plan.want);
                Ok(self.next_page())
            }
            (Phase::Digest, SyncResponse::BucketDigests(theirs)) => {
                let differing = topology.differing_buckets(&theirs);
                self.chunks = chunk_buckets(&differing, &theirs, &self.config);
                Ok(self.next_page())
            }
            (Phase::Buckets(chunk), SyncResponse::EntryDigests(theirs)) => {
                let plan = topology.compare_in(&theirs, &chunk);
                self.push.extend(plan.send);
                self.want.extend(plan.want);
                Ok(self.next_page())
            }
            (Phase::Delta(asked), SyncResponse::Entries { entries, more }) => {
                // Ask again, in the next page, for what the peer left out
                // (after the last entry it sent; with none sent, nothing can
                // be told apart, and the next session starts afresh).
                if more && !entries.is_empty() {
                    let last = entries.last().map(|e| e.id().clone());
                    let from = asked
                        .iter()
                        .position(|id| Some(id) == last.as_ref())
                        .map_or(asked.len(), |i| i + 1);
                    for id in asked[from..].iter().rev() {
                        self.want.push_front(id.clone());
                    }
                }
                self.take_entries(topology, entries, now_ms)?;
                Ok(self.next_page())
            }
            (phase, got) => Err(SyncError::Unexpected {
                expected: match phase {
                    Phase::Digest => "an answer to a digest",
                    Phase::Buckets(_) => "entry digests",
                    Phase::Delta(_) => "entries",
                    Phase::Done => "nothing (the session is over)",
                },
                got: response_kind(&got),
            }),
        }
    }

    fn take_entries(
        &mut self,
        topology: &Topology,
        entries: Vec<Entry>,
        now_ms: u64,
    ) -> Result<(), SyncError> {
        check_stamps(&entries, &self.config, now_ms)?;
        self.outcome.received += entries.len();
        let report = topology.apply(entries)?;
        let applied = &mut self.outcome.applied;
        applied.changed.extend(report.changed);
        applied.changed.sort();
        applied.changed.dedup();
        applied.ignored += report.ignored;
        applied.refuted |= report.refuted;
        Ok(())
    }

    /// The next request: a delta page of the current chunk, else the entry
    /// digests of the next chunk, else the end.
    fn next_page(&mut self) -> Step {
        if self.outcome.requests >= self.config.max_requests
            && (!self.push.is_empty() || !self.want.is_empty() || !self.chunks.is_empty())
        {
            self.outcome.complete = false;
            return self.finish();
        }
        if !self.push.is_empty() || !self.want.is_empty() {
            // What does not fit this page waits in the queue for the next.
            let mut push = Vec::new();
            let mut used = 0;
            while let Some(e) = self.push.front() {
                let len = e.encoded_len();
                if !push.is_empty()
                    && (used + len > self.config.max_message_bytes
                        || push.len() >= self.config.max_entries_per_message)
                {
                    break;
                }
                used += len;
                push.extend(self.push.pop_front());
            }
            let n = self.want.len().min(self.config.max_wants_per_message);
            let want: Vec<NodeId> = self.want.drain(..n).collect();
            self.outcome.sent += push.len();
            self.outcome.requests += 1;
            self.phase = Phase::Delta(want.clone());
            return Step::Send(SyncRequest::Delta { push, want });
        }
        if let Some(chunk) = self.chunks.pop_front() {
            self.outcome.requests += 1;
            self.phase = Phase::Buckets(chunk.clone());
            return Step::Send(SyncRequest::Buckets(chunk));
        }
        self.finish()
    }

    fn finish(&mut self) -> Step {
        self.phase = Phase::Done;
        Step::Done(self.outcome.clone())
    }
}

/// Splits the differing buckets into chunks whose entry digests (the peer
/// told how many each bucket holds) fit one message.
fn chunk_buckets(differing: &[u16], theirs: &[Digest], config: &SyncConfig) -> VecDeque<Vec<u16>> {
    let mut chunks = VecDeque::new();
    let mut chunk = Vec::new();
    let mut count: u64 = 0;
    let max = config.max_digests_per_message as u64;
    for &b in differing {
        let n = theirs.get(usize::from(b)).map_or(0, |d| d.count);
        if !chunk.is_empty() && count.saturating_add(n) > max {
            chunks.push_back(std::mem::take(&mut chunk));
            count = 0;
        }
        chunk.push(b);
        count = count.saturating_add(n);
    }
    if !chunk.is_empty() {
        chunks.push_back(chunk);
    }
    chunks
}

fn response_kind(r: &SyncResponse) -> &'static str {
    match r {
        SyncResponse::InSync => "in-sync",
        SyncResponse::EntryDigests(_) => "entry digests",
        SyncResponse::BucketDigests(_) => "bucket digests",
        SyncResponse::Entries { .. } => "entries",
        SyncResponse::Full(_) => "a full topology",
    }
}

/// The one push a leaving node makes: its tombstone, to as many members as
/// it can reach (see the facade's shutdown). A single request, no want.
pub fn leave_request(topology: &Topology) -> Option<SyncRequest> {
    let me = topology.local_id()?;
    let entry = topology.get_entry(me.as_str())?;
    (entry.state == NodeState::Left).then(|| SyncRequest::Delta {
        push: vec![entry],
        want: Vec::new(),
    })
}
