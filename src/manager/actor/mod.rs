//! The manager task: the one owner of the state map.
//!
//! Everything that changes the map arrives as a message, and each kind has
//! one synchronous handler: commands from [`Handle`]s ([`Actor::on_command`]),
//! automatic dials from the fill task ([`Actor::on_auto_dial`]), the one
//! result of each dial attempt ([`Actor::on_dialed`]), connections dropped by
//! their owners ([`Actor::on_dropped`]) and due retries
//! ([`Actor::on_retry_due`]). User code never runs here.

use std::{
    collections::{BTreeMap, VecDeque},
    future::poll_fn,
    sync::{Arc, atomic::AtomicBool},
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    sync::mpsc,
    task::{AbortHandle, JoinHandle, JoinSet},
    time::Instant,
};
use tokio_util::task::TaskTracker;
use tower::Service;

use super::persist::Persist;
use super::{
    Address, ConnClass, ConnId, ConnInfo, ConnState, DialService, DisconnectReason, Entry, Error,
    Handle, Snapshot, accept,
    class::ClassLimit,
    config::Config,
    connection::Control,
    counters::Shared,
    dial,
    events::{self, Outbox},
    fill::{self, Fill, Relay},
    message::{Accepted, AutoDial, Command, Dialed, Dropped},
};
use crate::{
    addrman::AddrMan,
    backoff::Backoff,
    policy::{BanScore, state::Place, state::PolicyState},
    source::Observer,
};

mod classes;
mod lifecycle;
mod policy;
mod stop;
mod timers;

/// `Slot::idle` of a connection no check has looked at yet.
const UNSEEN: u8 = u8::MAX;

/// Checks per inactivity timeout.
const IDLE_CHECKS: u8 = 4;

/// How many ended requests `state` still knows about.
const TOMBSTONES: usize = 1024;

/// How many queued messages of one kind the manager takes at once.
pub(crate) const BATCH: usize = 64;

/// Accepted sockets waiting for the manager, over all listeners.
const ACCEPT_QUEUE: usize = 16;

/// The longest retry delay the manager schedules.
const LONGEST_DELAY: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// One request of the state map.
struct Slot<A> {
    info: ConnInfo<A>,
    state: ConnState,
    attempts: u32,
    /// Backoff step of a permanent request.
    retries: u32,
    /// When the dial in flight started, or, once established, since when
    /// the connection is up.
    at: Instant,
    dial: Option<AbortHandle>,
    next_attempt: Option<Instant>,
    control: Option<Arc<Control>>,
    /// For how many checks of the inactivity timeout in a row nothing was
    /// read, and nothing written; [`UNSEEN`] until the first check.
    idle: (u8, u8),
    /// What it counts for in the policy.
    place: Place,
    /// The class the dial in flight was counted in: a request made
    /// permanent while it dials changes class, its dial does not.
    counted: ConnClass,
    /// Only peers that misbehaved or were reported on have one.
    extra: Option<Box<Extra>>,
}

/// What few entries need: a ban score, and what the application reported
/// for eviction.
#[derive(Default)]
struct Extra {
    score: BanScore,
    min_ping: Option<Duration>,
    last_block: Option<Instant>,
    last_tx: Option<Instant>,
}

/// Which events someone listens to.
#[derive(Clone, Copy)]
struct Wants {
    connections: bool,
    disconnections: bool,
    failures: bool,
}

pub(crate) struct Actor<A, D: Service<A>> {
    dialer: D,
    /// The outbound limit of each class with a target.
    limits: Vec<Arc<ClassLimit>>,
    /// The feeler schedule, with an address manager.
    feelers: Option<classes::FeelerState<A>>,
    /// The address manager the anchors are saved in on stop, and how many.
    anchors: Option<(AddrMan<A>, usize)>,
    backoff: Backoff,
    stable_period: Duration,
    connect_timeout: Option<Duration>,
    stop_grace: Duration,
    wants: Wants,
    shared: Arc<Shared>,
    /// Boxed: a B-tree fed increasing ids keeps its nodes about half
    /// full, so a slot in a node would cost twice its size.
    slots: BTreeMap<ConnId, Box<Slot<A>>>,
    peers: PolicyState<A, ConnId>,
    retries: timers::Timers,
    ended: VecDeque<(ConnId, ConnState)>,
    commands: mpsc::Receiver<Command<A>>,
    /// From the fill task; `None` without one.
    auto: Option<mpsc::Receiver<AutoDial<A, fill::Ready<D>>>>,
    /// From the accept loops; `None` without listeners.
    accepted: Option<mpsc::Receiver<Accepted>>,
    inbound_addr: Option<fn(std::net::SocketAddr) -> A>,
    observer: Option<Arc<dyn Observer<A>>>,
    // Unbounded channels, each bounded by the state map: a flooding peer
    // gets no entry beyond `max_inbound`, and a slow callback does not stop
    // the manager from draining them (it only pauses new work).
    //
    // One result per dial in flight (the sender is in `dial_cx`).
    /// What each dial task gets: the counters and the results' sender.
    dial_cx: Arc<dial::Shared<D::Response>>,
    results: mpsc::UnboundedReceiver<Dialed<D::Response>>,
    // One notice per established connection.
    dropped_tx: mpsc::UnboundedSender<Dropped>,
    dropped: mpsc::UnboundedReceiver<Dropped>,
    /// Where automatic connections send their drop notice: the fill task,
    /// which passes it on (see `fill`). Bounded by the target: one notice
    /// per automatic connection, which holds one of the target's permits.
    auto_dropped_tx: Option<mpsc::UnboundedSender<Dropped>>,
    outbox: Outbox<D::Response, A>,
    /// Every dial task, so that stop can wait for the aborted ones.
    dials: TaskTracker,
    /// The fill task and the accept loops.
    tasks: JoinSet<()>,
    callbacks: JoinHandle<()>,
    /// Set when stop's grace period is over: no callback starts after it.
    abandoned: Arc<AtomicBool>,
    /// The address manager to save, where, and its timer.
    persist: Option<(Persist<A>, AddrMan<A>, tokio::time::Interval)>,
    /// The inactivity timeout and the timer that checks for it.
    inactivity: Option<(Duration, tokio::time::Interval)>,
}

/// Starts the manager's tasks on `rt` and returns the first handle.
pub(crate) fn spawn<A: Address, D: DialService<A>>(
    config: Config<A, D>,
    rt: &tokio::runtime::Handle,
) -> Handle<A> {
    let shared = Arc::new(Shared::new());
    let (commands_tx, commands) = mpsc::channel(BATCH);
    let (events_tx, events) = mpsc::channel(config.callback_queue);
    let wants = Wants {
        connections: config.callbacks.on_connection.is_some(),
        disconnections: config.callbacks.on_disconnection.is_some(),
        failures: config.callbacks.on_dial_failure.is_some(),
    };
    let abandoned = Arc::new(AtomicBool::new(false));
    let callbacks = rt.spawn(events::run(
        events,
        config.callbacks,
        shared.clone(),
        abandoned.clone(),
    ));

    // Unbounded, yet bounded by the state map: a dial task sends one result
    // and a connection one drop notice, and each has an entry (automatic
    // ones at most the target, inbound ones at most `max_inbound`). A
    // connection's drop cannot wait for room.
    let (results_tx, results) = mpsc::unbounded_channel();
    let (dropped_tx, dropped) = mpsc::unbounded_channel();

    let mut tasks = JoinSet::new();
    let (mut auto, mut auto_dropped_tx) = (None, None);
    let limits: Vec<Arc<ClassLimit>> = ConnClass::ALL
        .into_iter()
        .filter(|c| config.targets[c.index()] > 0)
        .map(|c| ClassLimit::new(c, config.targets[c.index()]))
        .collect();
    if let Some(fill) = config.fill.filter(|_| !limits.is_empty()) {
        let (tx, rx) = mpsc::channel(BATCH);
        auto = Some(rx);
        // Bounded by the target, as `dropped`: one notice per automatic
        // connection, each holding one of its permits.
        let (notices_tx, notices) = mpsc::unbounded_channel();
        auto_dropped_tx = Some(notices_tx);
        let relay = Relay {
            notices,
            manager: dropped_tx.clone(),
        };
        tasks.spawn_on(
            fill(
                Fill {
                    dialer: config.dialer.clone(),
                    classes: limits.clone(),
                    anchors: anchors(config.addrman.as_ref(), &config.targets, config.max_anchors)
                        .into(),
                    tx,
                    shared: shared.clone(),
                    throttle_wait: config.throttle_wait,
                    max_failures: config.max_failures,
                },
                relay,
            ),
            rt,
        );
    }
    let mut accepted = None;
    if !config.listeners.is_empty() {
        let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
        accepted = Some(rx);
        for (listener, origin) in config.listeners {
            tasks.spawn_on(
                accept::run(listener, origin, shared.clone(), tx.clone()),
                rt,
            );
        }
    }
    let mut peers = PolicyState::new(config.policy, config.max_inbound);
    peers.restore(config.bans, Instant::now());

    let actor = Actor {
        dialer: config.dialer,
        limits,
        feelers: config.feelers.map(classes::FeelerState::new),
        anchors: config.addrman.map(|man| (man, config.max_anchors)),
        backoff: config.backoff,
        stable_period: config.stable_period,
        connect_timeout: config.connect_timeout,
        stop_grace: config.stop_grace,
        wants,
        shared: shared.clone(),
        slots: BTreeMap::new(),
        peers,
        retries: timers::Timers::new(),
        ended: VecDeque::with_capacity(TOMBSTONES),
        commands,
        auto,
        accepted,
        inbound_addr: config.inbound_addr,
        observer: config.observer,
        dial_cx: Arc::new(dial::Shared {
            counters: shared.clone(),
            results: results_tx,
        }),
        results,
        dropped_tx,
        dropped,
        auto_dropped_tx,
        outbox: Outbox::new(events_tx),
        dials: TaskTracker::new(),
        tasks,
        callbacks,
        abandoned,
        inactivity: config.inactivity_timeout.map(|timeout| {
            // Rounded up, so that four checks never span less than the
            // timeout; never zero, which `interval` refuses.
            let checks = u32::from(IDLE_CHECKS);
            let mut every = timeout / checks;
            if every * checks < timeout {
                every += Duration::from_nanos(1);
            }
            let mut tick = tokio::time::interval_at(Instant::now() + every, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            (timeout, tick)
        }),
        persist: config.persist.map(|(p, man)| {
            let mut every = tokio::time::interval_at(Instant::now() + p.interval, p.interval);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            (p, man, every)
        }),
    };
    rt.spawn(actor.run());
    Handle::new(commands_tx, shared)
}

impl<A: Address, D: DialService<A>> Actor<A, D> {
    pub(crate) async fn run(mut self) {
        tracing::debug!("connection manager started");
        let mut bufs = Bufs::default();
        let stop = poll_fn(|cx| self.poll_work(cx, &mut bufs)).await;
        let (close, reply) = stop.unzip();
        self.stop(close.unwrap_or(false)).await;
        if let Some(reply) = reply {
            let _ = reply.send(());
        }
    }

    /// Handles everything that is ready, in order of priority (commands,
    /// drop notices, dial results, timers, the callback queue's room, then
    /// new work: automatic dials and accepted sockets, neither while the
    /// callbacks are behind), each source drained until it is pending.
    ///
    /// One pass serves a wake, however many sources have work: a pass
    /// leaves every source it polled pending, with this task's waker, so
    /// a second pass is needed only when a handler changed what an earlier
    /// poll saw (an earlier retry deadline, the callbacks falling behind
    /// or catching up). tokio's cooperative budget bounds a pass: once it
    /// is spent every source is pending and the task is woken again.
    ///
    /// Ready with `Some` when a stop was asked, `None` when every handle
    /// is gone.
    fn poll_work(&mut self, cx: &mut Context<'_>, bufs: &mut Bufs<A, D>) -> Poll<Stop> {
        loop {
            while let Poll::Ready(n) = self.commands.poll_recv_many(cx, &mut bufs.commands, BATCH) {
                if n == 0 {
                    // Every handle is gone.
                    return Poll::Ready(None);
                }
                for cmd in bufs.commands.drain(..) {
                    match cmd {
                        Command::Stop { close, reply } => return Poll::Ready(Some((close, reply))),
                        cmd => self.on_command(cmd),
                    }
                }
            }
            while let Poll::Ready(n) = self.dropped.poll_recv_many(cx, &mut bufs.dropped, BATCH) {
                if n == 0 {
                    break;
                }
                for d in bufs.dropped.drain(..) {
                    self.on_dropped(d);
                }
            }
            while let Poll::Ready(n) = self.results.poll_recv_many(cx, &mut bufs.results, BATCH) {
                if n == 0 {
                    break;
                }
                for r in bufs.results.drain(..) {
                    self.on_dialed(r);
                }
            }
            while let Poll::Ready(id) = self.retries.poll_expired(cx) {
                self.on_retry_due(id);
            }
            // Each timer polled until pending, so that it wakes this task.
            while self
                .persist
                .as_mut()
                .is_some_and(|(_, _, every)| every.poll_tick(cx).is_ready())
            {
                self.save_now();
            }
            while self
                .inactivity
                .as_mut()
                .is_some_and(|(_, every)| every.poll_tick(cx).is_ready())
            {
                self.close_inactive();
            }
            while classes::poll_feeler_due(&mut self.feelers, cx).is_ready() {
                self.on_feeler_due();
            }
            // The callbacks' queue: room for the backlog.
            let behind = self.outbox.is_behind() && self.outbox.poll_flush(cx).is_pending();
            // No new automatic dial while the callbacks are behind; no
            // accept either.
            // Checked before each batch: a batch can put the callbacks
            // behind, and the backlog must stay bounded by the work that
            // was under way.
            if !behind {
                while !self.outbox.is_behind() && next_batch(&mut self.auto, cx, &mut bufs.autos) {
                    for d in bufs.autos.drain(..) {
                        self.on_auto_dial(d);
                    }
                }
                while !self.outbox.is_behind()
                    && next_batch(&mut self.accepted, cx, &mut bufs.inbound)
                {
                    for a in bufs.inbound.drain(..) {
                        self.on_accepted(a);
                    }
                }
            }
            // Again only if a handler changed what an earlier poll saw.
            if !self.retries.needs_poll() && behind == self.outbox.is_behind() {
                return Poll::Pending;
            }
        }
    }

    /// Closes the established connections through which nothing moved for
    /// the inactivity timeout.
    fn close_inactive(&mut self) {
        let Some((timeout, _)) = self.inactivity else {
            return;
        };
        let mut silent = Vec::new();
        for slot in self.slots.values_mut() {
            let Some(control) = slot
                .control
                .as_ref()
                .filter(|_| slot.state == ConnState::Established)
            else {
                continue;
            };
            let (read, written) = control.take_activity();
            if slot.idle.0 == UNSEEN {
                // Counted from the first check, so a whole timeout passes.
                slot.idle = (0, 0);
                continue;
            }
            let quiet = |n: u8, moved: bool| if moved { 0 } else { n.saturating_add(1) };
            slot.idle = (quiet(slot.idle.0, read), quiet(slot.idle.1, written));
            // Core's receive and send timeouts: either direction silent.
            if slot.idle.0 >= IDLE_CHECKS || slot.idle.1 >= IDLE_CHECKS {
                silent.push(slot.info.id);
            }
        }
        for id in silent {
            tracing::debug!(%id, ?timeout, "connection inactive: closing");
            self.connection_ended(id, DisconnectReason::Inactive);
        }
    }

    /// Saves the address manager and the bans, off this task.
    fn save_now(&self) {
        if let Some((persist, man, _)) = &self.persist {
            let bans = self.peers.bans(Instant::now());
            let (persist, man) = (persist.clone(), man.clone());
            tokio::spawn(async move { super::persist::save(&persist, &man, bans).await });
        }
    }

    // ===== commands =====

    fn on_command(&mut self, cmd: Command<A>) {
        match cmd {
            Command::Connect { addr, kind, reply } => {
                let _ = reply.send(self.connect(addr, kind));
            }
            Command::Disconnect { id, reply } => {
                let result = match self.slots.get(&id) {
                    None => Err(Error::UnknownId(id)),
                    Some(s) if s.state != ConnState::Established => {
                        Err(Error::NotEstablished(id, s.state))
                    }
                    Some(_) => {
                        self.connection_ended(id, DisconnectReason::Disconnect);
                        Ok(())
                    }
                };
                let _ = reply.send(result);
            }
            Command::Remove { id, reply } => {
                let _ = reply.send(self.close(id, DisconnectReason::Remove));
            }
            Command::State { id, reply } => {
                let state = match self.slots.get(&id) {
                    Some(s) => Ok(s.state),
                    None => self
                        .ended
                        .iter()
                        .rev()
                        .find(|(e, _)| *e == id)
                        .map(|&(_, state)| state)
                        .ok_or(Error::UnknownId(id)),
                };
                let _ = reply.send(state);
            }
            Command::Snapshot { reply } => {
                let now = Instant::now();
                let entries = self
                    .slots
                    .values()
                    .map(|s| s.entry(&self.peers, now))
                    .collect();
                let counters = self.shared.counters();
                let bans = self.peers.bans(now);
                let _ = reply.send(Snapshot {
                    entries,
                    counters,
                    bans,
                    discouraged: self.peers.discouraged_count(),
                });
            }
            Command::Ban {
                subnet,
                duration,
                reason,
                reply,
            } => {
                let _ = reply.send(self.ban(subnet, duration, reason));
            }
            Command::Unban { subnet, reply } => {
                let _ = reply.send(self.peers.unban(subnet));
            }
            Command::Bans { reply } => {
                let _ = reply.send(self.peers.bans(Instant::now()));
            }
            Command::Misbehaving {
                id,
                points,
                reason,
                reply,
            } => {
                let _ = reply.send(self.misbehaving(id, points, reason));
            }
            Command::Report { id, report, reply } => {
                let _ = reply.send(self.report(id, report));
            }
            Command::ExtraOutbound { class, reply } => {
                let _ = reply.send(self.extra_outbound(class));
            }
            Command::DropCandidate { class, reply } => {
                let _ = reply.send(Ok(self.drop_candidate(class)));
            }
            // `run` handles Stop itself.
            Command::Stop { .. } => {}
        }
    }
}

impl<A: Address> Slot<A> {
    fn entry(&self, peers: &PolicyState<A, ConnId>, now: Instant) -> Entry<A> {
        let (peer, permissions) = self.peer(peers);
        Entry {
            info: self.info.clone(),
            state: self.state,
            attempts: self.attempts,
            next_attempt: self.next_attempt,
            connected_since: (self.state == ConnState::Established).then_some(self.at),
            ban_score: self.extra.as_ref().map_or(0, |e| e.score.score(now)),
            network: peer.network,
            permissions,
        }
    }
}

/// The anchors to dial first, taken out of the address manager as Core
/// reads `anchors.dat` and deletes it: they are saved again only if they
/// are anchors at the next stop. No more than the block-relay class holds,
/// since the fill task serves only anchors while any are left.
fn anchors<A: Address>(man: Option<&AddrMan<A>>, targets: &[usize; 3], max: usize) -> Vec<A> {
    let Some(man) = man else {
        return Vec::new();
    };
    let mut anchors = man.take_anchors();
    let keep = targets[ConnClass::BlockRelay.index()].min(max);
    if anchors.len() > keep {
        tracing::debug!(
            dropped = anchors.len() - keep,
            "anchors beyond the block-relay target dropped"
        );
        anchors.truncate(keep);
    }
    anchors
}

/// Takes the next batch off a queue the manager may no longer have (the
/// fill task or the accept loops ended): false when it is pending or gone.
fn next_batch<T>(
    rx: &mut Option<mpsc::Receiver<T>>,
    cx: &mut Context<'_>,
    buf: &mut Vec<T>,
) -> bool {
    let Some(queue) = rx.as_mut() else {
        return false;
    };
    match queue.poll_recv_many(cx, buf, BATCH) {
        Poll::Pending => false,
        Poll::Ready(0) => {
            *rx = None;
            false
        }
        Poll::Ready(_) => true,
    }
}

/// How the manager's loop ended: a stop (close the connections?, who to
/// tell), or `None` when every handle is gone.
type Stop = Option<(bool, tokio::sync::oneshot::Sender<()>)>;

/// What the loop takes off its queues at once, kept between passes.
struct Bufs<A, D: Service<A>> {
    commands: Vec<Command<A>>,
    dropped: Vec<Dropped>,
    results: Vec<Dialed<D::Response>>,
    autos: Vec<AutoDial<A, fill::Ready<D>>>,
    inbound: Vec<Accepted>,
}

impl<A, D: Service<A>> Default for Bufs<A, D> {
    fn default() -> Self {
        Self {
            commands: Vec::new(),
            dropped: Vec::new(),
            results: Vec::new(),
            autos: Vec::new(),
            inbound: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{mem::size_of, net::SocketAddr};

    use tokio::net::TcpStream;

    use super::Slot;
    use crate::manager::{ConnInfo, Connection, connection::Control, events::Event};

    /// What each part of a connection costs in bytes, for the README's
    /// table (`cargo test --lib per_connection_sizes -- --nocapture`); the
    /// bounds keep them from growing unnoticed.
    #[test]
    fn per_connection_sizes() {
        let sizes = [
            (
                "Slot<SocketAddr> (boxed, in the state map)",
                size_of::<Slot<SocketAddr>>(),
                144,
            ),
            (
                "Control (in an Arc, shared with the connection)",
                size_of::<Control>(),
                88,
            ),
            (
                "ConnInfo<SocketAddr>",
                size_of::<ConnInfo<SocketAddr>>(),
                48,
            ),
            (
                "Connection<TcpStream>",
                size_of::<Connection<TcpStream>>(),
                104,
            ),
            ("TcpStream", size_of::<TcpStream>(), 40),
            (
                "Event (a queued callback)",
                size_of::<Event<TcpStream, SocketAddr>>(),
                112,
            ),
        ];
        for (what, size, bound) in sizes {
            println!("{what}: {size} B");
            assert!(size <= bound, "{what} is {size} B, more than {bound}");
        }
    }
}
