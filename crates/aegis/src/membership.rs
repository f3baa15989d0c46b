//! Membership events for users and the node's own parts: a task turns the
//! topology's change signal into [`MemberEvent`]s (a broadcast) and a
//! member list (a watch).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use aegis_mesh::{Member, MemberEvent, MembershipView};
use aegis_topology::Topology;
use tokio::sync::{Notify, broadcast, watch};

/// Events kept for a subscriber that falls behind; past this it gets
/// `RecvError::Lagged` and should read the member list afresh.
const EVENT_BUFFER: usize = 1024;

pub(crate) struct Hub {
    members: watch::Sender<Arc<[Member]>>,
    events: broadcast::Sender<MemberEvent>,
    notify: Arc<Notify>,
    started: AtomicBool,
}

impl Hub {
    /// A hub fed by `topology`'s changes.
    pub(crate) fn new(topology: &Topology) -> Arc<Self> {
        let notify = Arc::new(Notify::new());
        let signal = Arc::clone(&notify);
        topology.on_change(move |_| signal.notify_one());
        let (members, _) = watch::channel(Arc::from(Vec::new()));
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        Arc::new(Self {
            members,
            events,
            notify,
            started: AtomicBool::new(false),
        })
    }

    /// Starts the task that follows the topology, once, if there is a
    /// runtime to run it on (the first call inside one does). Nodes whose
    /// users never ask for events never pay for following the topology.
    pub(crate) fn ensure_running(self: &Arc<Self>, topology: &Topology) {
        if tokio::runtime::Handle::try_current().is_err()
            || self.started.swap(true, Ordering::AcqRel)
        {
            return;
        }
        // The first look happens now, so a subscriber sees the current
        // members at once.
        let mut view = MembershipView::default();
        self.publish(&mut view, topology);
        let hub = Arc::downgrade(self);
        let notify = Arc::clone(&self.notify);
        tokio::spawn(follow(hub, notify, topology.clone(), view));
    }

    fn publish(&self, view: &mut MembershipView, topology: &Topology) {
        let events = view.refresh(topology);
        if events.is_empty() && !self.members.borrow().is_empty() {
            return;
        }
        let list: Arc<[Member]> = view.members().cloned().collect();
        self.members.send_replace(list);
        for event in events {
            // No subscriber is not an error.
            let _ = self.events.send(event);
        }
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<MemberEvent> {
        self.events.subscribe()
    }

    pub(crate) fn watch(&self) -> watch::Receiver<Arc<[Member]>> {
        self.members.subscribe()
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        // Wakes the task, which then finds the hub gone and ends.
        self.notify.notify_one();
    }
}

async fn follow(hub: Weak<Hub>, notify: Arc<Notify>, topology: Topology, mut view: MembershipView) {
    loop {
        notify.notified().await;
        let Some(hub) = hub.upgrade() else { return };
        hub.publish(&mut view, &topology);
    }
}
