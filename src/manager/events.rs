//! The callback task: runs the application's callbacks, one at a time, in
//! the order the events happened.
//!
//! Events reach it over a bounded queue. The manager task never waits on
//! that queue: what does not fit waits in the manager's backlog, and while
//! anything waits there the manager starts no new work (no automatic dial,
//! no accept), so the backlog is bounded by the requests already under way.

use std::{
    collections::{HashMap, VecDeque},
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
};

use tokio::{
    net::TcpStream,
    sync::mpsc::{
        self,
        error::{SendError, TrySendError},
    },
    time::Instant,
};

use super::{ConnId, Connection, DialFailure, Disconnected, counters::Shared};

/// How many events the callback task takes off the queue at once.
const BATCH: usize = 32;

pub(crate) type Callback<T> = Arc<dyn Fn(T) + Send + Sync>;

/// Something to tell the application.
pub(crate) enum Event<IO, A> {
    Connected(Connection<IO, A>),
    Accepted(Connection<TcpStream, A>),
    Disconnected(Disconnected<A>),
    DialFailed(DialFailure<A>),
}

/// The application's callbacks.
pub(crate) struct Callbacks<IO, A> {
    pub(crate) on_accept: Option<Callback<Connection<TcpStream, A>>>,
    pub(crate) on_connection: Option<Callback<Connection<IO, A>>>,
    pub(crate) on_disconnection: Option<Callback<Disconnected<A>>>,
    pub(crate) on_dial_failure: Option<Callback<DialFailure<A>>>,
}

impl<IO, A> Default for Callbacks<IO, A> {
    fn default() -> Self {
        Self {
            on_accept: None,
            on_connection: None,
            on_disconnection: None,
            on_dial_failure: None,
        }
    }
}

/// The manager's end of the callback queue, with its backlog: events that
/// did not fit, in order. The manager pauses new work while the backlog is
/// not empty ([`is_behind`](Self::is_behind)).
///
/// A failed dial of a request whose last event in the backlog is a failed
/// dial replaces that event instead of queueing behind it: a permanent peer
/// that keeps failing while the callbacks are stuck has at most one failure
/// waiting, the latest (its `attempt` says how many there were).
pub(crate) struct Outbox<IO, A> {
    tx: mpsc::Sender<Event<IO, A>>,
    backlog: VecDeque<Event<IO, A>>,
    /// How many events have left the front of the backlog, so that a
    /// position stays valid as it drains.
    popped: u64,
    /// Per request, the position of its failure event in the backlog when
    /// that is its last event there.
    last_failure: HashMap<ConnId, u64>,
    /// The wait for room in the queue, while the backlog is not empty.
    waiting: Option<Wait<IO, A>>,
}

/// A wait for one place in the callback queue.
type Wait<IO, A> =
    Pin<Box<dyn Future<Output = Result<mpsc::OwnedPermit<Event<IO, A>>, SendError<()>>> + Send>>;

impl<IO, A> Event<IO, A> {
    fn id(&self) -> ConnId {
        match self {
            Self::Connected(c) => c.id(),
            Self::Accepted(c) => c.id(),
            Self::Disconnected(d) => d.info.id,
            Self::DialFailed(f) => f.info.id,
        }
    }
}

impl<IO, A> Outbox<IO, A> {
    pub(crate) fn new(tx: mpsc::Sender<Event<IO, A>>) -> Self {
        Self {
            tx,
            backlog: VecDeque::new(),
            popped: 0,
            last_failure: HashMap::new(),
            waiting: None,
        }
    }

    /// Puts an event at the back of the backlog, or in place of the
    /// request's waiting failure.
    fn push_back(&mut self, event: Event<IO, A>) {
        let id = event.id();
        let failure = matches!(event, Event::DialFailed(_));
        if failure {
            if let Some(&at) = self.last_failure.get(&id) {
                let i = usize::try_from(at - self.popped).unwrap_or(usize::MAX);
                if let Some(slot) = self.backlog.get_mut(i) {
                    *slot = event;
                    return;
                }
            }
            let at = self.popped + self.backlog.len() as u64;
            self.last_failure.insert(id, at);
        } else if !self.last_failure.is_empty() {
            self.last_failure.remove(&id);
        }
        self.backlog.push_back(event);
    }

    fn pop_front(&mut self) -> Option<Event<IO, A>> {
        let event = self.backlog.pop_front()?;
        if !self.last_failure.is_empty() {
            let id = event.id();
            if self.last_failure.get(&id) == Some(&self.popped) {
                self.last_failure.remove(&id);
            }
        }
        self.popped += 1;
        Some(event)
    }

    /// Whether events wait in the backlog.
    pub(crate) fn is_behind(&self) -> bool {
        !self.backlog.is_empty()
    }

    /// Queues an event, behind any backlog.
    pub(crate) fn emit(&mut self, event: Event<IO, A>) {
        if self.is_behind() {
            self.push_back(event);
            return;
        }
        if let Err(TrySendError::Full(event)) = self.tx.try_send(event) {
            tracing::debug!("callbacks behind; pausing new work");
            self.push_back(event);
        }
    }

    /// Moves what fits of the backlog into the queue: ready once the
    /// backlog is empty, pending (woken when the queue has room) while it
    /// is not. A backlog the callback task will never take (it is gone)
    /// is dropped, which closes its connections.
    pub(crate) fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<()>
    where
        IO: Send + 'static,
        A: Send + 'static,
    {
        let tx = self.tx.clone();
        loop {
            while let Ok(place) = tx.try_reserve() {
                match self.pop_front() {
                    Some(event) => place.send(event),
                    None => break,
                }
            }
            if !self.is_behind() {
                self.waiting = None;
                return Poll::Ready(());
            }
            let wait = self
                .waiting
                .get_or_insert_with(|| Box::pin(tx.clone().reserve_owned()));
            match wait.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(place)) => {
                    self.waiting = None;
                    if let Some(event) = self.pop_front() {
                        place.send(event);
                    }
                }
                Poll::Ready(Err(_)) => {
                    self.waiting = None;
                    while self.pop_front().is_some() {}
                    return Poll::Ready(());
                }
            }
        }
    }

    /// At stop: queues the whole backlog, waiting for room until
    /// `deadline`; what is left then is dropped (connections closed).
    pub(crate) async fn close(mut self, deadline: Instant) {
        // A wait left from the run would hold the next place in the queue
        // without ever using it.
        self.waiting = None;
        let tx = self.tx.clone();
        let send_all = async {
            while let Some(event) = self.pop_front() {
                if tx.send(event).await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout_at(deadline, send_all).await;
    }
}

/// Runs the callbacks until every sender (the manager and the accept loops)
/// is gone, or until `abandoned` is set: stop's grace period is over, and
/// whatever is still queued is dropped (connections closed).
pub(crate) async fn run<IO, A>(
    mut rx: mpsc::Receiver<Event<IO, A>>,
    callbacks: Callbacks<IO, A>,
    shared: Arc<Shared>,
    abandoned: Arc<AtomicBool>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        for event in batch.drain(..) {
            if abandoned.load(Ordering::Acquire) {
                return;
            }
            match event {
                Event::Connected(c) => call(&shared, "on_connection", &callbacks.on_connection, c),
                Event::Accepted(c) => call(&shared, "on_accept", &callbacks.on_accept, c),
                Event::Disconnected(d) => {
                    call(&shared, "on_disconnection", &callbacks.on_disconnection, d);
                }
                Event::DialFailed(f) => {
                    call(&shared, "on_dial_failure", &callbacks.on_dial_failure, f);
                }
            }
            // A long run of quick callbacks must not starve the runtime's
            // other tasks on this worker.
            tokio::task::consume_budget().await;
        }
    }
}

/// Calls one callback; a panic is caught, counted and logged.
fn call<T>(shared: &Shared, name: &'static str, callback: &Option<Callback<T>>, arg: T) {
    if let Some(f) = callback {
        if std::panic::catch_unwind(AssertUnwindSafe(|| f(arg))).is_err() {
            shared.panicked(name);
        }
    }
}
