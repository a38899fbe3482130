//! The manager task: the one owner of the state map.
//!
//! Everything that changes the map arrives as a message: commands from
//! [`Handle`]s, finished dials from the dial tasks, automatic dials from the
//! fill task, dropped connections, and due retry timers. Handlers are plain
//! synchronous functions; user code (the dial stack, the address source, the
//! callbacks) runs on other tasks.

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    future::Future,
    hash::{BuildHasherDefault, Hasher},
    net::SocketAddr,
    panic::AssertUnwindSafe,
    pin::pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use futures_util::FutureExt;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot},
    task::{AbortHandle, JoinHandle, JoinSet},
    time::Instant,
};
use tower::{BoxError, Service, ServiceExt, timeout::error::Elapsed};
use tracing::{Instrument, Span};

use super::{
    Address, AddressSource, Builder, ConnId, ConnInfo, ConnKind, ConnState, Connection, Counters,
    DialService, Disconnected, Entry, Error, Handle, Snapshot, builder::Callback,
    connection::Control, types::DialFailure,
};
use tokio_util::task::TaskTracker;

use crate::{
    backoff::Backoff,
    limit::{OutboundLimit, Permitted, future::ResponseFuture},
};

/// How many ended requests `state` still knows about.
const TOMBSTONES: usize = 1024;

/// How many queued messages of one kind the manager handles in a row.
const BATCH: usize = 64;

// ===== shared counters =====

/// Counters and the id source, shared by the manager's tasks and handles.
#[derive(Debug)]
pub(crate) struct Shared {
    next_id: AtomicU64,
    dials: AtomicU64,
    failures: AtomicU64,
    established: AtomicU64,
    throttled: AtomicU64,
    consecutive_failures: AtomicU64,
    inbound_accepted: AtomicU64,
    inbound_rejected: AtomicU64,
    accept_errors: AtomicU64,
}

impl Shared {
    fn new() -> Self {
        Self {
            next_id: AtomicU64::new(1),
            dials: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            established: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
            consecutive_failures: AtomicU64::new(0),
            inbound_accepted: AtomicU64::new(0),
            inbound_rejected: AtomicU64::new(0),
            accept_errors: AtomicU64::new(0),
        }
    }

    fn next_id(&self) -> ConnId {
        ConnId(self.next_id.fetch_add(1, Relaxed))
    }

    /// Records a finished dial. Runs in the dial task *before* the dial
    /// future (and with it an automatic dial's permit) is dropped, so the
    /// fill task sees the failure count before it can start a replacement.
    fn dial_finished(&self, ok: bool, automatic: bool) {
        if ok {
            self.established.fetch_add(1, Relaxed);
            self.consecutive_failures.store(0, Relaxed);
        } else {
            self.failures.fetch_add(1, Relaxed);
            if automatic {
                self.consecutive_failures.fetch_add(1, Relaxed);
            }
        }
    }

    pub(crate) fn counters(&self) -> Counters {
        Counters {
            dials: self.dials.load(Relaxed),
            failures: self.failures.load(Relaxed),
            established: self.established.load(Relaxed),
            throttled: self.throttled.load(Relaxed),
            consecutive_failures: self.consecutive_failures.load(Relaxed),
            inbound_accepted: self.inbound_accepted.load(Relaxed),
            inbound_rejected: self.inbound_rejected.load(Relaxed),
            accept_errors: self.accept_errors.load(Relaxed),
        }
    }
}

/// Ids are sequential integers: a multiplicative hash spreads them well
/// enough, at a fraction of SipHash's cost. They are not attacker-chosen.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

// ===== messages =====

pub(crate) enum Command<A> {
    Connect {
        addr: A,
        permanent: bool,
        reply: oneshot::Sender<ConnId>,
    },
    Disconnect {
        id: ConnId,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Remove {
        id: ConnId,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    State {
        id: ConnId,
        reply: oneshot::Sender<Result<ConnState, Error>>,
    },
    Snapshot {
        reply: oneshot::Sender<Snapshot<A>>,
    },
    Stop {
        close: bool,
        reply: oneshot::Sender<()>,
    },
}

type Dialed<IO> = Result<(IO, Option<OwnedSemaphorePermit>), BoxError>;

/// An automatic dial prepared by the fill task: its permit is inside `fut`.
pub(crate) struct AutoDial<A, F> {
    addr: A,
    fut: F,
}

enum Event<IO, A> {
    Connected(Connection<IO, A>),
    Accepted(Connection<TcpStream, SocketAddr>),
    Disconnected(Disconnected<A>),
    DialFailed(DialFailure<A>),
}

/// Runs one dial: the counters, and the split of an automatic connection
/// from its permit. The counters are updated before the dial future is
/// dropped (see [`Shared::dial_finished`]). The connect timeout is the
/// manager's own timer (see [`Actor::on_timers`]), not a tokio timer per
/// dial.
async fn run_dial<F, T, E, IO>(
    fut: F,
    shared: Arc<Shared>,
    automatic: bool,
    split: fn(T) -> (IO, Option<OwnedSemaphorePermit>),
) -> Dialed<IO>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    let mut fut = pin!(fut);
    let result = fut.as_mut().await.map_err(Into::into);
    shared.dial_finished(result.is_ok(), automatic);
    result.map(split)
}

// ===== the fill task =====

/// What the fill task needs; built by [`spawn`].
pub(crate) struct FillContext<A, D: Service<A>> {
    svc: OutboundLimit<D>,
    tx: mpsc::Sender<AutoDial<A, ResponseFuture<D::Future>>>,
    shared: Arc<Shared>,
    retry_base: Duration,
    max_failures: u32,
}

/// The fill loop: wait for a free outbound permit, respect the failure
/// throttle, take an address, start the dial and hand it to the manager.
pub(crate) async fn fill<A: Address, D: DialService<A>, S: AddressSource<A>>(
    ctx: FillContext<A, D>,
    mut source: S,
) {
    let FillContext {
        mut svc,
        tx,
        shared,
        retry_base,
        max_failures,
    } = ctx;
    loop {
        let ready: Result<(), BoxError> = svc.ready().await.map(drop).map_err(Into::into);
        if let Err(error) = ready {
            tracing::warn!(%error, "dial stack not ready; waiting the retry base");
            tokio::time::sleep(retry_base).await;
            continue;
        }
        if shared.consecutive_failures.load(Relaxed) >= u64::from(max_failures) {
            shared.throttled.fetch_add(1, Relaxed);
            tracing::debug!(
                failures = shared.consecutive_failures.load(Relaxed),
                wait = ?retry_base,
                "failure throttle: waiting before the next automatic dial"
            );
            tokio::time::sleep(retry_base).await;
        }
        let Some(addr) = source.next_address().await else {
            tracing::debug!("address source has no address");
            shared.consecutive_failures.fetch_add(1, Relaxed);
            continue;
        };
        let fut = svc.call(addr.clone());
        if tx.send(AutoDial { addr, fut }).await.is_err() {
            return;
        }
    }
}

// ===== the accept loops =====

async fn accept_loop<IO, A>(
    listener: TcpListener,
    slots: Option<Arc<Semaphore>>,
    shared: Arc<Shared>,
    events: mpsc::UnboundedSender<Event<IO, A>>,
) {
    const FIRST_BACKOFF: Duration = Duration::from_millis(5);
    const MAX_BACKOFF: Duration = Duration::from_secs(1);
    let local = listener.local_addr().ok();
    let mut backoff = Duration::ZERO;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => {
                backoff = Duration::ZERO;
                accepted
            }
            Err(error) => {
                shared.accept_errors.fetch_add(1, Relaxed);
                backoff = (backoff * 2).clamp(FIRST_BACKOFF, MAX_BACKOFF);
                tracing::warn!(?local, %error, wait = ?backoff, "accept failed; backing off");
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        let permit = match &slots {
            None => None,
            Some(slots) => match slots.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    let rejected = shared.inbound_rejected.fetch_add(1, Relaxed) + 1;
                    tracing::debug!(%peer, rejected, "inbound limit reached; connection closed");
                    drop(stream);
                    continue;
                }
            },
        };
        shared.inbound_accepted.fetch_add(1, Relaxed);
        let info = ConnInfo {
            id: shared.next_id(),
            addr: peer,
            kind: ConnKind::Inbound,
        };
        tracing::debug!(id = %info.id, %peer, "inbound connection accepted");
        let conn = Connection::new(stream, info, Control::new(permit), None);
        if events.send(Event::Accepted(conn)).is_err() {
            return;
        }
    }
}

// ===== the callback task =====

pub(crate) struct Callbacks<IO, A> {
    pub(crate) on_accept: Option<Callback<Connection<TcpStream, SocketAddr>>>,
    pub(crate) on_connection: Option<Callback<Connection<IO, A>>>,
    pub(crate) on_disconnection: Option<Callback<Disconnected<A>>>,
    pub(crate) on_dial_failure: Option<Callback<DialFailure<A>>>,
}

fn call<T>(name: &'static str, callback: &Option<Callback<T>>, arg: T) {
    if let Some(f) = callback {
        if std::panic::catch_unwind(AssertUnwindSafe(|| f(arg))).is_err() {
            tracing::error!(callback = name, "callback panicked");
        }
    }
}

/// Runs the callbacks one at a time, in the order the events happened, and
/// ends when every sender (the manager and the accept loops) is gone.
async fn run_callbacks<IO, A>(
    mut rx: mpsc::UnboundedReceiver<Event<IO, A>>,
    cbs: Callbacks<IO, A>,
) {
    while let Some(event) = rx.recv().await {
        match event {
            Event::Connected(c) => call("on_connection", &cbs.on_connection, c),
            Event::Accepted(c) => call("on_accept", &cbs.on_accept, c),
            Event::Disconnected(d) => call("on_disconnection", &cbs.on_disconnection, d),
            Event::DialFailed(f) => call("on_dial_failure", &cbs.on_dial_failure, f),
        }
    }
}

// ===== the actor =====

struct Slot<A> {
    info: ConnInfo<A>,
    state: ConnState,
    attempts: u32,
    /// Backoff step of a permanent request.
    retries: u32,
    next_attempt: Option<Instant>,
    /// When the dial in flight times out.
    dial_deadline: Option<Instant>,
    since: Option<Instant>,
    dial: Option<AbortHandle>,
    control: Option<Arc<Control>>,
    span: Span,
}

struct Actor<A, D: Service<A>> {
    dialer: D,
    backoff: Backoff,
    stable_period: Duration,
    timeout: Option<Duration>,
    shared: Arc<Shared>,
    slots: HashMap<ConnId, Slot<A>, BuildHasherDefault<IdHasher>>,
    timers: BTreeSet<(Instant, ConnId)>,
    /// Every dial task, so that stop can wait for the aborted ones to end.
    dials: TaskTracker,
    /// Finished dials: request id, attempt number, result.
    results: mpsc::UnboundedSender<(ConnId, u32, Dialed<D::Response>)>,
    tasks: JoinSet<()>,
    ended: VecDeque<(ConnId, ConnState)>,
    events: mpsc::UnboundedSender<Event<D::Response, A>>,
    dropped: mpsc::UnboundedSender<ConnId>,
    wants_connections: bool,
    wants_disconnections: bool,
    wants_failures: bool,
}

/// Starts the manager's tasks.
pub(crate) fn spawn<A: Address, D: DialService<A>>(
    b: Builder<A, D>,
    backoff: Backoff,
    rt: &tokio::runtime::Handle,
) -> Handle<A> {
    let shared = Arc::new(Shared::new());
    let (cmd_tx, cmd_rx) = mpsc::channel(64);
    let (dropped_tx, dropped_rx) = mpsc::unbounded_channel();
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let (auto_tx, auto_rx) = mpsc::channel(BATCH);
    let (results_tx, results_rx) = mpsc::unbounded_channel();

    let wants_connections = b.on_connection.is_some();
    let wants_disconnections = b.on_disconnection.is_some();
    let wants_failures = b.on_dial_failure.is_some();
    let callbacks = rt.spawn(run_callbacks(
        events_rx,
        Callbacks {
            on_accept: b.on_accept,
            on_connection: b.on_connection,
            on_disconnection: b.on_disconnection,
            on_dial_failure: b.on_dial_failure,
        },
    ));

    let mut tasks = JoinSet::new();
    if let Some(filler) = b.filler {
        if b.target_outbound > 0 {
            let ctx = FillContext {
                svc: OutboundLimit::new(b.dialer.clone(), b.target_outbound),
                tx: auto_tx,
                shared: shared.clone(),
                retry_base: backoff.base(),
                max_failures: b.max_failures,
            };
            tasks.spawn_on(filler(ctx), rt);
        }
    }
    let inbound_slots = b.max_inbound.map(|n| Arc::new(Semaphore::new(n)));
    for listener in b.listeners {
        tasks.spawn_on(
            accept_loop(
                listener,
                inbound_slots.clone(),
                shared.clone(),
                events_tx.clone(),
            ),
            rt,
        );
    }

    let actor = Actor {
        dialer: b.dialer,
        backoff,
        stable_period: b.stable_period,
        timeout: b.connect_timeout,
        shared: shared.clone(),
        slots: HashMap::default(),
        timers: BTreeSet::new(),
        dials: TaskTracker::new(),
        results: results_tx,
        tasks,
        ended: VecDeque::with_capacity(TOMBSTONES),
        events: events_tx,
        dropped: dropped_tx,
        wants_connections,
        wants_disconnections,
        wants_failures,
    };
    rt.spawn(actor.run(cmd_rx, dropped_rx, auto_rx, results_rx, callbacks));
    Handle { tx: cmd_tx, shared }
}

impl<A: Address, D: DialService<A>> Actor<A, D> {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command<A>>,
        mut dropped: mpsc::UnboundedReceiver<ConnId>,
        mut auto: mpsc::Receiver<AutoDial<A, ResponseFuture<D::Future>>>,
        mut results: mpsc::UnboundedReceiver<(ConnId, u32, Dialed<D::Response>)>,
        callbacks: JoinHandle<()>,
    ) {
        tracing::debug!("connection manager started");
        let mut timer = pin!(tokio::time::sleep_until(Instant::now()));
        // The deadline the timer is armed for. It is re-armed only for an
        // earlier deadline: when the earliest entry goes away (a dial
        // finished before its timeout) the timer fires early, finds nothing
        // due and is armed again, instead of being re-armed on every dial.
        let mut armed: Option<Instant> = None;
        let (close, reply) = loop {
            if let Some(&(at, _)) = self.timers.first() {
                if armed.is_none_or(|current| at < current) {
                    timer.as_mut().reset(at);
                    armed = Some(at);
                }
            }
            tokio::select! {
                biased;
                cmd = commands.recv() => match cmd {
                    Some(Command::Stop { close, reply }) => break (close, Some(reply)),
                    Some(cmd) => self.on_command(cmd),
                    // Every handle is gone.
                    None => break (false, None),
                },
                // Under load, take what is queued in one go rather than one
                // message per trip through `select!`.
                Some(id) = dropped.recv() => {
                    self.on_dropped(id);
                    for _ in 0..BATCH {
                        let Ok(id) = dropped.try_recv() else { break };
                        self.on_dropped(id);
                    }
                }
                Some((id, attempt, result)) = results.recv() => {
                    self.on_dialed(id, attempt, result);
                    for _ in 0..BATCH {
                        let Ok((id, attempt, result)) = results.try_recv() else { break };
                        self.on_dialed(id, attempt, result);
                    }
                }
                Some(dial) = auto.recv() => {
                    self.on_auto_dial(dial);
                    for _ in 0..BATCH {
                        let Ok(dial) = auto.try_recv() else { break };
                        self.on_auto_dial(dial);
                    }
                }
                () = &mut timer, if armed.is_some() => {
                    armed = None;
                    self.on_timers();
                }
            }
        };

        // Shut down: listeners and the fill task first, then dials in flight
        // (a connection that arrives now is dropped, which closes it).
        self.tasks.shutdown().await;
        drop(auto);
        for slot in self.slots.values_mut() {
            if let Some(dial) = slot.dial.take() {
                dial.abort();
            }
        }
        self.dials.close();
        self.dials.wait().await;
        // Close established connections only now: their owners' tasks wake
        // up to drop them, and stop need not wait behind that work.
        if close {
            for control in self.slots.values().filter_map(|s| s.control.as_ref()) {
                control.close();
            }
        }
        // Connections that arrived after the stop are dropped here, closed.
        drop(results);
        self.slots.clear();
        self.timers.clear();
        // The callback task ends once it has run what was queued.
        drop(self);
        let _ = callbacks.await;
        tracing::debug!("connection manager stopped");
        if let Some(reply) = reply {
            let _ = reply.send(());
        }
        // `commands` is dropped last: `Handle::stop` waits for that.
        drop(dropped);
        drop(commands);
    }

    fn on_command(&mut self, cmd: Command<A>) {
        match cmd {
            Command::Connect {
                addr,
                permanent,
                reply,
            } => {
                let kind = if permanent {
                    ConnKind::Permanent
                } else {
                    ConnKind::OneShot
                };
                let id = self.shared.next_id();
                let slot = self.insert(id, addr, kind);
                tracing::debug!(parent: &slot.span, %kind, "connection requested");
                self.start_dial(id);
                let _ = reply.send(id);
            }
            Command::Disconnect { id, reply } => {
                let result = match self.slots.get(&id) {
                    None => Err(Error::UnknownId(id)),
                    Some(s) if s.state != ConnState::Established => {
                        Err(Error::NotEstablished(id, s.state))
                    }
                    Some(_) => {
                        self.connection_ended(id, false);
                        Ok(())
                    }
                };
                let _ = reply.send(result);
            }
            Command::Remove { id, reply } => {
                let _ = reply.send(self.remove(id));
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
                let mut entries: Vec<Entry<A>> = self
                    .slots
                    .values()
                    .map(|s| Entry {
                        info: s.info.clone(),
                        state: s.state,
                        attempts: s.attempts,
                        next_attempt: s.next_attempt,
                        connected_since: s.since,
                    })
                    .collect();
                entries.sort_unstable_by_key(|e| e.info.id);
                let _ = reply.send(Snapshot {
                    entries,
                    counters: self.shared.counters(),
                });
            }
            // `run` handles Stop itself before dispatching here.
            Command::Stop { .. } => {}
        }
    }

    fn insert(&mut self, id: ConnId, addr: A, kind: ConnKind) -> &mut Slot<A> {
        let span = tracing::debug_span!("conn", %id, %addr, %kind);
        self.slots.entry(id).or_insert(Slot {
            info: ConnInfo { id, addr, kind },
            state: ConnState::Pending,
            attempts: 0,
            retries: 0,
            next_attempt: None,
            dial_deadline: None,
            since: None,
            dial: None,
            control: None,
            span,
        })
    }

    /// Dials an explicit request (first attempt or a retry).
    fn start_dial(&mut self, id: ConnId) {
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        slot.state = ConnState::Pending;
        slot.next_attempt = None;
        slot.attempts += 1;
        tracing::debug!(parent: &slot.span, attempt = slot.attempts, "dialing");
        let fut = self.dialer.clone().oneshot(slot.info.addr.clone());
        self.spawn_dial(
            id,
            run_dial(fut, self.shared.clone(), false, |io| (io, None)),
        );
    }

    /// Runs the current attempt of request `id` on a task of its own and
    /// arms its connect timeout; the result comes back on the results
    /// channel. Removing the request aborts the task.
    fn spawn_dial<F>(&mut self, id: ConnId, fut: F)
    where
        F: Future<Output = Dialed<D::Response>> + Send + 'static,
    {
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        let (attempt, span) = (slot.attempts, slot.span.clone());
        self.shared.dials.fetch_add(1, Relaxed);
        let results = self.results.clone();
        let task = self.dials.track_future(
            async move {
                // A panicking dial stack fails this dial, nothing more.
                let result = AssertUnwindSafe(fut)
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|_| Err("dial stack panicked".into()));
                // The manager may have stopped: the connection is then
                // dropped here, which closes it.
                let _ = results.send((id, attempt, result));
            }
            .instrument(span),
        );
        slot.dial = Some(tokio::spawn(task).abort_handle());
        if let Some(limit) = self.timeout {
            let at = after(Instant::now(), limit);
            slot.dial_deadline = Some(at);
            self.timers.insert((at, id));
        }
    }

    fn on_auto_dial(&mut self, dial: AutoDial<A, ResponseFuture<D::Future>>) {
        let id = self.shared.next_id();
        let slot = self.insert(id, dial.addr, ConnKind::Automatic);
        slot.attempts = 1;
        tracing::debug!(parent: &slot.span, "dialing automatic peer");
        let fut = run_dial(dial.fut, self.shared.clone(), true, Permitted::into_parts);
        self.spawn_dial(id, fut);
    }

    fn on_dialed(&mut self, id: ConnId, attempt: u32, result: Dialed<D::Response>) {
        let Some(slot) = self.slots.get_mut(&id) else {
            // Removed while dialing: a late connection is dropped (closed).
            tracing::debug!(%id, "ignoring dial result of a removed request");
            return;
        };
        if slot.attempts != attempt || slot.dial.is_none() {
            // This attempt already timed out (its result raced the abort);
            // the request has moved on. A connection here is dropped, closed.
            tracing::debug!(parent: &slot.span, attempt, "ignoring the result of a timed-out dial");
            return;
        }
        slot.dial = None;
        if let Some(at) = slot.dial_deadline.take() {
            self.timers.remove(&(at, id));
        }
        self.dial_done(id, result);
    }

    fn dial_done(&mut self, id: ConnId, result: Dialed<D::Response>) {
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        match result {
            Ok((io, permit)) => {
                let now = Instant::now();
                slot.state = ConnState::Established;
                slot.since = Some(now);
                let control = Control::new(permit);
                slot.control = Some(control.clone());
                tracing::debug!(parent: &slot.span, "connection established");
                let conn =
                    Connection::new(io, slot.info.clone(), control, Some(self.dropped.clone()));
                if self.wants_connections {
                    let _ = self.events.send(Event::Connected(conn));
                }
            }
            Err(error) => {
                let attempt = slot.attempts;
                tracing::debug!(parent: &slot.span, %error, attempt, "dial failed");
                let retry_at = if slot.info.kind.is_permanent() {
                    let at = after(Instant::now(), self.backoff.delay(slot.retries));
                    slot.retries = slot.retries.saturating_add(1);
                    slot.state = ConnState::Failing;
                    slot.next_attempt = Some(at);
                    self.timers.insert((at, id));
                    Some(at)
                } else {
                    None
                };
                let info = self.wants_failures.then(|| slot.info.clone());
                if retry_at.is_none() {
                    // Automatic and one-shot requests end with their first
                    // failure; an automatic one is replaced by the fill task.
                    self.finish(id, ConnState::Canceled);
                }
                if let Some(info) = info {
                    let _ = self.events.send(Event::DialFailed(DialFailure {
                        info,
                        attempt,
                        error,
                        retry_at,
                    }));
                }
            }
        }
    }

    fn on_dropped(&mut self, id: ConnId) {
        if self
            .slots
            .get(&id)
            .is_some_and(|s| s.state == ConnState::Established)
        {
            self.connection_ended(id, false);
        }
    }

    /// An established connection ended: dropped by its owner, or closed by
    /// `disconnect` / `remove` (`removed`: never reconnect). Closing a
    /// connection its owner already dropped is harmless.
    fn connection_ended(&mut self, id: ConnId, removed: bool) {
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        if let Some(control) = slot.control.take() {
            control.close();
        }
        let now = Instant::now();
        let reconnect_at = if slot.info.kind.is_permanent() && !removed {
            let stable = slot
                .since
                .is_some_and(|since| now.saturating_duration_since(since) >= self.stable_period);
            if stable {
                slot.retries = 0;
            }
            let at = after(now, self.backoff.delay(slot.retries));
            slot.retries = slot.retries.saturating_add(1);
            slot.state = ConnState::Pending;
            slot.since = None;
            slot.next_attempt = Some(at);
            self.timers.insert((at, id));
            Some(at)
        } else {
            None
        };
        tracing::debug!(parent: &slot.span, ?reconnect_at, "connection ended");
        let info = self.wants_disconnections.then(|| slot.info.clone());
        if reconnect_at.is_none() {
            self.finish(id, ConnState::Disconnected);
        }
        if let Some(info) = info {
            let _ = self
                .events
                .send(Event::Disconnected(Disconnected { info, reconnect_at }));
        }
    }

    fn remove(&mut self, id: ConnId) -> Result<(), Error> {
        let Some(slot) = self.slots.get_mut(&id) else {
            return Err(Error::UnknownId(id));
        };
        match slot.state {
            ConnState::Established => self.connection_ended(id, true),
            _ => {
                if let Some(dial) = slot.dial.take() {
                    dial.abort();
                }
                tracing::debug!(parent: &slot.span, "request removed");
                self.finish(id, ConnState::Canceled);
            }
        }
        Ok(())
    }

    /// Takes a request out of the map with its timers, remembering how it
    /// ended.
    fn finish(&mut self, id: ConnId, state: ConnState) {
        if let Some(slot) = self.slots.remove(&id) {
            for at in [slot.next_attempt, slot.dial_deadline]
                .into_iter()
                .flatten()
            {
                self.timers.remove(&(at, id));
            }
        }
        if self.ended.len() == TOMBSTONES {
            self.ended.pop_front();
        }
        self.ended.push_back((id, state));
    }

    fn on_timers(&mut self) {
        let now = Instant::now();
        while let Some(&(at, id)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            let Some(slot) = self.slots.get_mut(&id) else {
                continue;
            };
            if slot.next_attempt == Some(at) {
                self.start_dial(id);
            } else if slot.dial_deadline == Some(at) {
                // The connect timeout: drop the dial and fail the attempt.
                // The counters come first, so that an automatic dial's
                // permit (dropped with the dial) is freed after them.
                slot.dial_deadline = None;
                self.shared
                    .dial_finished(false, slot.info.kind == ConnKind::Automatic);
                if let Some(dial) = slot.dial.take() {
                    dial.abort();
                }
                self.dial_done(id, Err(Elapsed::new().into()));
            }
        }
    }
}

/// `now + delay`, saturating far in the future instead of overflowing for a
/// huge configured delay.
fn after(now: Instant, delay: Duration) -> Instant {
    now.checked_add(delay)
        .unwrap_or_else(|| now + Duration::from_secs(60 * 60 * 24 * 365 * 30))
}
