//! Configuration of the manager.

use std::{
    error::Error as StdError, fmt, future::Future, net::SocketAddr, pin::Pin, sync::Arc,
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
};
use tower::{BoxError, Service};

use super::{
    Connection, Disconnected, Handle,
    actor::{self, FillContext},
    types::DialFailure,
};
use crate::{
    backoff::{Backoff, DEFAULT_JITTER, InvalidBackoff, JitterRng},
    stack::{DEFAULT_CONNECT_TIMEOUT, Dialer},
};

/// Default number of automatic outbound connections.
pub const DEFAULT_TARGET_OUTBOUND: usize = 8;
/// Default first retry delay of a permanent peer, and the wait of the failure
/// throttle.
pub const DEFAULT_RETRY_BASE: Duration = Duration::from_secs(5);
/// Default longest retry delay.
pub const DEFAULT_RETRY_CAP: Duration = Duration::from_secs(300);
/// Default number of consecutive failed automatic attempts before the failure
/// throttle starts.
pub const DEFAULT_MAX_FAILURES: u32 = 25;
/// Default time a permanent peer's connection must stay up before its backoff
/// starts again from the base.
pub const DEFAULT_STABLE_PERIOD: Duration = Duration::from_secs(60);

/// Where automatic outbound addresses come from (btcd's `GetNewAddress`).
///
/// `None` means "no address right now"; it counts as a failed attempt, so an
/// empty source is asked at most once per retry base once the failure
/// throttle has started.
///
/// Any `FnMut() -> impl Future<Output = Option<A>>` closure is a source.
/// The manager calls it from its fill task, never from the manager task, so
/// it may take its time (query an address book, say).
pub trait AddressSource<A>: Send + 'static {
    /// The next address to dial.
    fn next_address(&mut self) -> impl Future<Output = Option<A>> + Send;
}

impl<A, F, Fut> AddressSource<A> for F
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Option<A>> + Send,
{
    fn next_address(&mut self) -> impl Future<Output = Option<A>> + Send {
        self()
    }
}

/// An address type the manager can work with: cloneable, printable (for
/// logs and spans) and shareable across tasks. Every such type is one, e.g.
/// `SocketAddr`, or a host name type for targets reachable only through a
/// proxy.
pub trait Address: Clone + fmt::Debug + fmt::Display + Send + Sync + 'static {}

impl<T> Address for T where T: Clone + fmt::Debug + fmt::Display + Send + Sync + 'static {}

/// A dial stack the manager can drive: a cloneable `Service<A>` whose
/// response is a stream. Every such service is one: the default [`Dialer`],
/// a [`ServiceBuilder`](tower::ServiceBuilder) stack, a `service_fn`.
pub trait DialService<A>:
    Service<
        A,
        Response: AsyncRead + AsyncWrite + Send + 'static,
        Error: Into<BoxError>,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<A, S> DialService<A> for S
where
    S: Service<A> + Clone + Send + 'static,
    S::Response: AsyncRead + AsyncWrite + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
}

pub(crate) type Callback<T> = Arc<dyn Fn(T) + Send + Sync>;
pub(crate) type Filler<A, D> =
    Box<dyn FnOnce(FillContext<A, D>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// Configures and starts a connection manager.
///
/// Made by [`ConnManager::builder`](super::ConnManager::builder) (the default
/// dial stack, `SocketAddr` addresses) or [`Builder::new`] (any dial stack,
/// any address type). Every option has a default; [`start`](Self::start)
/// checks them and spawns the manager.
pub struct Builder<A, D: Service<A>> {
    pub(crate) dialer: D,
    pub(crate) target_outbound: usize,
    pub(crate) retry_base: Duration,
    pub(crate) retry_cap: Duration,
    pub(crate) jitter: f64,
    pub(crate) rng: Option<JitterRng>,
    pub(crate) stable_period: Duration,
    pub(crate) max_failures: u32,
    pub(crate) connect_timeout: Option<Duration>,
    pub(crate) filler: Option<Filler<A, D>>,
    pub(crate) listeners: Vec<TcpListener>,
    pub(crate) max_inbound: Option<usize>,
    pub(crate) on_accept: Option<Callback<Connection<TcpStream, SocketAddr>>>,
    pub(crate) on_connection: Option<Callback<Connection<<D as Service<A>>::Response, A>>>,
    pub(crate) on_disconnection: Option<Callback<Disconnected<A>>>,
    pub(crate) on_dial_failure: Option<Callback<DialFailure<A>>>,
}

impl<A, D: Service<A>> fmt::Debug for Builder<A, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("target_outbound", &self.target_outbound)
            .field("retry_base", &self.retry_base)
            .field("retry_cap", &self.retry_cap)
            .field("jitter", &self.jitter)
            .field("stable_period", &self.stable_period)
            .field("max_failures", &self.max_failures)
            .field("connect_timeout", &self.connect_timeout)
            .field("address_source", &self.filler.is_some())
            .field("listeners", &self.listeners.len())
            .field("max_inbound", &self.max_inbound)
            .finish_non_exhaustive()
    }
}

impl Builder<SocketAddr, Dialer> {
    pub(crate) fn default_stack() -> Self {
        Self::new(crate::DialStack::new().timeout(None).build())
    }
}

impl<A: Address, D: DialService<A>> Builder<A, D> {
    /// A builder that dials with `dialer`, any `Service<A>` whose response is
    /// a stream: the default [`Dialer`], a [`ServiceBuilder`] stack with your
    /// own layers, a mock.
    ///
    /// The manager applies its own [`connect_timeout`](Self::connect_timeout)
    /// around each dial, so the stack need not have one.
    ///
    /// [`ServiceBuilder`]: tower::ServiceBuilder
    pub fn new(dialer: D) -> Self {
        Self {
            dialer,
            target_outbound: DEFAULT_TARGET_OUTBOUND,
            retry_base: DEFAULT_RETRY_BASE,
            retry_cap: DEFAULT_RETRY_CAP,
            jitter: DEFAULT_JITTER,
            rng: None,
            stable_period: DEFAULT_STABLE_PERIOD,
            max_failures: DEFAULT_MAX_FAILURES,
            connect_timeout: Some(DEFAULT_CONNECT_TIMEOUT),
            filler: None,
            listeners: Vec::new(),
            max_inbound: None,
            on_accept: None,
            on_connection: None,
            on_disconnection: None,
            on_dial_failure: None,
        }
    }

    /// The number of automatic outbound connections to keep. Explicit
    /// [`connect`](super::Handle::connect) requests come in addition. `0`
    /// means none. Default is 8.
    pub fn target_outbound(mut self, target: usize) -> Self {
        self.target_outbound = target;
        self
    }

    /// The first retry delay of a permanent peer, doubled on each further
    /// failure; also the wait of the failure throttle. Default is 5 seconds.
    pub fn retry_base(mut self, base: Duration) -> Self {
        self.retry_base = base;
        self
    }

    /// The longest retry delay. Default is 5 minutes.
    pub fn retry_cap(mut self, cap: Duration) -> Self {
        self.retry_cap = cap;
        self
    }

    /// The jitter fraction of retry delays (see [`Backoff`]). Default is 0.2.
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter;
        self
    }

    /// The random source of the jitter; [`JitterRng::seeded`] makes retry
    /// times reproducible. Default is a randomly seeded source.
    pub fn rng(mut self, rng: JitterRng) -> Self {
        self.rng = Some(rng);
        self
    }

    /// How long a permanent peer's connection must stay up before its
    /// backoff starts again from the base. A peer that accepts and drops at
    /// once keeps backing off. Default is 60 seconds.
    pub fn stable_period(mut self, period: Duration) -> Self {
        self.stable_period = period;
        self
    }

    /// After this many consecutive failed automatic attempts, each
    /// replacement waits the retry base first. Any successful connection
    /// resets the count. `u32::MAX` turns the throttle off. Default is 25.
    pub fn max_failures(mut self, failures: u32) -> Self {
        self.max_failures = failures;
        self
    }

    /// The time limit of each dial; `None` for none. Default is 30 seconds.
    pub fn connect_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Where automatic outbound addresses come from. Without a source the
    /// manager makes no automatic connections (btcd's connect mode).
    pub fn address_source<S: AddressSource<A>>(mut self, source: S) -> Self {
        self.filler = Some(Box::new(move |ctx| Box::pin(actor::fill(ctx, source))));
        self
    }

    /// Accepts inbound connections on `listener`; the manager owns it and
    /// closes it on stop. Requires [`on_accept`](Self::on_accept).
    pub fn listener(mut self, listener: TcpListener) -> Self {
        self.listeners.push(listener);
        self
    }

    /// The most inbound connections open at once; `Some(0)` rejects every
    /// one. A rejected socket is closed at once and counted. Default is
    /// `None` (no limit).
    pub fn max_inbound(mut self, max: Option<usize>) -> Self {
        self.max_inbound = max;
        self
    }

    /// Called with each accepted inbound connection.
    pub fn on_accept<F>(mut self, f: F) -> Self
    where
        F: Fn(Connection<TcpStream, SocketAddr>) + Send + Sync + 'static,
    {
        self.on_accept = Some(Arc::new(f));
        self
    }

    /// Called with each established outbound connection, after the state
    /// map says [`Established`](super::ConnState::Established).
    ///
    /// The connection belongs to the callback: keep it (spawn a task that
    /// runs the peer protocol on it) or drop it to disconnect. Without this
    /// callback outbound connections are dropped as they arrive.
    pub fn on_connection<F>(mut self, f: F) -> Self
    where
        F: Fn(Connection<D::Response, A>) + Send + Sync + 'static,
    {
        self.on_connection = Some(Arc::new(f));
        self
    }

    /// Called when an established outbound connection ends, after the state
    /// map says [`Disconnected`](super::ConnState::Disconnected) (or
    /// [`Pending`](super::ConnState::Pending) for a permanent peer that will
    /// be reconnected).
    pub fn on_disconnection<F>(mut self, f: F) -> Self
    where
        F: Fn(Disconnected<A>) + Send + Sync + 'static,
    {
        self.on_disconnection = Some(Arc::new(f));
        self
    }

    /// Called when a dial fails, with the error and whether (and when) it
    /// will be retried. An address book can use it to penalise the address.
    pub fn on_dial_failure<F>(mut self, f: F) -> Self
    where
        F: Fn(DialFailure<A>) + Send + Sync + 'static,
    {
        self.on_dial_failure = Some(Arc::new(f));
        self
    }

    /// Checks the configuration and starts the manager on the current tokio
    /// runtime.
    ///
    /// Callbacks run on a task of their own, one at a time and in order;
    /// spawn from them for long work.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] for an invalid retry schedule, listeners without
    /// `on_accept`, a target beyond what a semaphore holds, or no runtime.
    pub fn start(self) -> Result<Handle<A>, ConfigError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ConfigError::NoRuntime)?;
        let mut backoff = Backoff::new(self.retry_base, self.retry_cap)
            .and_then(|b| b.with_jitter(self.jitter))
            .map_err(ConfigError::Backoff)?;
        if let Some(rng) = &self.rng {
            backoff = backoff.with_rng(rng.clone());
        }
        if self.target_outbound > tokio::sync::Semaphore::MAX_PERMITS {
            return Err(ConfigError::TargetTooLarge(self.target_outbound));
        }
        if let Some(max) = self.max_inbound {
            if max > tokio::sync::Semaphore::MAX_PERMITS {
                return Err(ConfigError::TargetTooLarge(max));
            }
        }
        if !self.listeners.is_empty() && self.on_accept.is_none() {
            return Err(ConfigError::ListenersWithoutOnAccept);
        }
        Ok(actor::spawn(self, backoff, &runtime))
    }
}

/// An invalid manager configuration, reported by [`Builder::start`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// The retry base, cap or jitter is invalid.
    Backoff(InvalidBackoff),
    /// Listeners were given but no `on_accept` callback to take the
    /// connections.
    ListenersWithoutOnAccept,
    /// The outbound target or inbound limit is larger than a semaphore can
    /// count.
    TargetTooLarge(usize),
    /// `start` was called outside a tokio runtime.
    NoRuntime,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Backoff(e) => write!(f, "invalid retry schedule: {e}"),
            Self::ListenersWithoutOnAccept => {
                f.pad("listeners were given without an on_accept callback")
            }
            Self::TargetTooLarge(n) => write!(f, "limit {n} is too large"),
            Self::NoRuntime => f.pad("start must be called from within a tokio runtime"),
        }
    }
}

impl StdError for ConfigError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Self::Backoff(e) => Some(e),
            _ => None,
        }
    }
}
