//! The builder: options, checked into a [`Config`] by `start`.

use std::{
    error::Error as StdError, fmt, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration,
};

use tokio::net::{TcpListener, TcpStream};
use tower::Service;

use super::{
    Address, AddressSource, ConnClass, Connection, DialFailure, DialService, Disconnected, Handle,
    actor,
    config::*,
    events::Callbacks,
    fill::{self, FillTask},
    persist::Persist,
};
use crate::{
    Dialer,
    addrman::{AddrCodec, AddrMan},
    backoff::{Backoff, DEFAULT_JITTER, InvalidBackoff, JitterRng},
    policy::{Ban, Network, Permissions, Policy, state::Origin},
    seed::AddressBook,
    source::Observer,
};

/// Configures and starts a connection manager.
///
/// Made by [`ConnManager::builder`](super::ConnManager::builder) (the default
/// dial stack, `SocketAddr` addresses) or [`Builder::new`] (any dial stack,
/// any address type). Every option has a default; [`start`](Self::start)
/// checks them and spawns the manager.
pub struct Builder<A, D: Service<A>> {
    dialer: D,
    targets: [usize; 3],
    feeler_interval: Option<Duration>,
    feeler_hold: Duration,
    max_anchors: usize,
    retry_base: Duration,
    throttle_wait: Option<Duration>,
    retry_cap: Duration,
    jitter: f64,
    rng: Option<JitterRng>,
    stable_period: Duration,
    max_failures: u32,
    connect_timeout: Option<Duration>,
    inactivity_timeout: Option<Duration>,
    fill: Option<FillTask<A, D>>,
    addrman: Option<AddrMan<A>>,
    persist: Option<Persist<A>>,
    listeners: Vec<(TcpListener, Origin)>,
    inbound_addr: Option<fn(SocketAddr) -> A>,
    max_inbound: Option<usize>,
    policy: Policy,
    observer: Option<Arc<dyn Observer<A>>>,
    bans: Vec<Ban>,
    callback_queue: usize,
    stop_grace: Duration,
    callbacks: Callbacks<D::Response, A>,
}

impl<A, D: Service<A>> fmt::Debug for Builder<A, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("targets", &self.targets)
            .field("feeler_interval", &self.feeler_interval)
            .field("retry_base", &self.retry_base)
            .field("retry_cap", &self.retry_cap)
            .field("jitter", &self.jitter)
            .field("stable_period", &self.stable_period)
            .field("max_failures", &self.max_failures)
            .field("connect_timeout", &self.connect_timeout)
            .field("address_source", &self.fill.is_some())
            .field("listeners", &self.listeners.len())
            .field("max_inbound", &self.max_inbound)
            .field("callback_queue", &self.callback_queue)
            .field("stop_grace", &self.stop_grace)
            .finish_non_exhaustive()
    }
}

impl Builder<SocketAddr, Dialer> {
    pub(crate) fn default_stack() -> Self {
        // The manager times each dial out itself.
        Self::new(crate::DialStack::new().timeout(None).build())
    }
}

impl<D: DialService<SocketAddr>> Builder<SocketAddr, D> {
    /// Draws automatic peers from `book` (it becomes the address source, see
    /// [`seed`](crate::seed)) and tells it how each outbound dial went: a
    /// connection marks an address good and its netgroup taken, failures
    /// back it off and finally drop it.
    pub fn address_book(mut self, book: AddressBook) -> Self {
        self.observer = Some(Arc::new(book.clone()));
        self.address_source(book)
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
            targets: [DEFAULT_TARGET_OUTBOUND, 0, 0],
            feeler_interval: Some(DEFAULT_FEELER_INTERVAL),
            feeler_hold: DEFAULT_FEELER_HOLD,
            max_anchors: DEFAULT_MAX_ANCHORS,
            retry_base: DEFAULT_RETRY_BASE,
            throttle_wait: None,
            retry_cap: DEFAULT_RETRY_CAP,
            jitter: DEFAULT_JITTER,
            rng: None,
            stable_period: DEFAULT_STABLE_PERIOD,
            max_failures: DEFAULT_MAX_FAILURES,
            connect_timeout: Some(DEFAULT_CONNECT_TIMEOUT),
            inactivity_timeout: None,
            fill: None,
            addrman: None,
            persist: None,
            listeners: Vec::new(),
            inbound_addr: None,
            max_inbound: Some(DEFAULT_MAX_INBOUND),
            policy: Policy::new(),
            observer: None,
            bans: Vec::new(),
            callback_queue: DEFAULT_CALLBACK_QUEUE,
            stop_grace: DEFAULT_STOP_GRACE,
            callbacks: Callbacks::default(),
        }
    }

    /// Closes a connection, outbound or inbound, from which no byte was
    /// read for `timeout`, or to which none was written, reported as
    /// [`DisconnectReason::Inactive`](super::DisconnectReason::Inactive):
    /// Core's receive and send timeouts (20 minutes). A dead peer behind
    /// Tor can look alive for a long time, and the node's own pings to it
    /// still leave; what it never gets is an answer. A protocol with pings
    /// both ways (Bitcoin's) keeps both directions busy. It is checked four
    /// times per timeout, so a silent direction ends its connection between
    /// `timeout` and `1.25 × timeout`. `None` (the default)
    /// never closes one. `Some(ZERO)` is
    /// [`ConfigError::ZeroInactivityTimeout`].
    pub fn inactivity_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.inactivity_timeout = timeout;
        self
    }

    /// Draws automatic peers from the address manager `addrman` (it
    /// becomes the address source, see [`addrman`](crate::addrman)) and
    /// teaches it every outcome: a connection moves its address to tried, a
    /// failure counts against it, a candidate the policy refuses is given
    /// back. When it has no usable address it seeds again, at a bounded
    /// rate, if it has a seeder.
    ///
    /// With it come [feelers](Self::feelers) (on by default) and
    /// [anchors](Self::max_anchors): its anchors are taken out at start
    /// and dialled first as block-relay connections, and the block-relay
    /// peers at stop become its anchors.
    pub fn address_manager(mut self, addrman: AddrMan<A>) -> Self {
        self.observer = Some(Arc::new(addrman.clone()));
        self.addrman = Some(addrman.clone());
        self.address_source(addrman)
    }

    /// Saves the [address manager](Self::address_manager) and the bans to
    /// `path` on [`stop`](super::Handle::stop) and every `interval`
    /// (atomically, off the manager task). Load it at the next start with
    /// [`AddrMan::load_or_new`] and give the bans to [`bans`](Self::bans).
    /// Without an address manager, nothing is saved.
    pub fn save_to(mut self, path: impl Into<PathBuf>, interval: Duration) -> Self
    where
        A: AddrCodec,
    {
        self.persist = Some(Persist {
            path: path.into(),
            interval,
            save: |man, path, bans| man.save(path, bans),
        });
        self
    }

    /// The number of automatic outbound connections to keep: the target of
    /// the default class, [`ConnClass::FullRelay`]. Explicit
    /// [`connect`](super::Handle::connect) requests come in addition. `0`
    /// means none. Default is 8.
    pub fn target_outbound(self, target: usize) -> Self {
        self.class_target(ConnClass::FullRelay, target)
    }

    /// The number of automatic connections of `class` to keep. Each class
    /// has its own target and its own outbound limit, all draw from the
    /// one address source, and all share the netgroup diversity rule; the
    /// fill task serves them in the order of [`ConnClass::ALL`]. Defaults:
    /// full-relay 8, block-relay 0. [`ConnClass::Feeler`] takes no target
    /// ([`ConfigError::FeelerTarget`]): see [`feelers`](Self::feelers).
    pub fn class_target(mut self, class: ConnClass, target: usize) -> Self {
        self.targets[class.index()] = target;
        self
    }

    /// Bitcoin Core's outbound layout: 8 full-relay and 2 block-relay
    /// connections, a feeler every 2 minutes on average (with an
    /// [address manager](Self::address_manager)), and the block-relay
    /// peers saved as 2 anchors on stop.
    pub fn core_layout(self) -> Self {
        self.class_target(ConnClass::FullRelay, 8)
            .class_target(ConnClass::BlockRelay, 2)
            .feelers(Some(DEFAULT_FEELER_INTERVAL))
            .max_anchors(DEFAULT_MAX_ANCHORS)
    }

    /// The mean time between two feelers (Core's 2 minutes), or `None` for
    /// none. Feelers need an [address manager](Self::address_manager): each
    /// tests an address of its new table (or a tried address that a
    /// collision waits on), and a success moves it to tried. One at a time,
    /// at exponentially distributed intervals; never while the callbacks
    /// are behind; they count against no target and never feed the failure
    /// throttle. The application learns of each in `on_connection` (kind
    /// [`ConnKind::Feeler`](super::ConnKind::Feeler), class
    /// [`ConnClass::Feeler`]) and should close it after its handshake; the
    /// manager closes it after the [hold](Self::feeler_hold). Default is 2
    /// minutes. `Some(ZERO)` is [`ConfigError::ZeroFeelerInterval`].
    pub fn feelers(mut self, interval: Option<Duration>) -> Self {
        self.feeler_interval = interval;
        self
    }

    /// How long the manager keeps a feeler open before it closes it
    /// ([`DisconnectReason::FeelerDone`](super::DisconnectReason::FeelerDone)).
    /// Default is 30 seconds.
    pub fn feeler_hold(mut self, hold: Duration) -> Self {
        self.feeler_hold = hold;
        self
    }

    /// The most block-relay connections saved as anchors on
    /// [`stop`](super::Handle::stop), in the [address
    /// manager](Self::address_manager) (and so in the file of
    /// [`save_to`](Self::save_to)). At the next start the anchors of the
    /// address manager given to the builder are dialled before anything
    /// else, as block-relay connections, once each: an anchor that fails
    /// is forgotten. `0` saves none. Default is 2, as in Core.
    pub fn max_anchors(mut self, max: usize) -> Self {
        self.max_anchors = max;
        self
    }

    /// The first retry delay of a permanent peer, doubled on each further
    /// failure; also the wait of the failure throttle unless
    /// [`throttle_wait`](Self::throttle_wait) is set. Default is 5 seconds.
    pub fn retry_base(mut self, base: Duration) -> Self {
        self.retry_base = base;
        self
    }

    /// How long the fill task waits once the failure throttle is on (after
    /// [`max_failures`](Self::max_failures) failed automatic attempts in a
    /// row), when the source has no address, or when it offers only
    /// candidates the policy refuses. Default is the retry base: set it
    /// apart to retry permanent peers at one pace and rest a dead network at
    /// another.
    pub fn throttle_wait(mut self, wait: Duration) -> Self {
        self.throttle_wait = Some(wait);
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

    /// The random source of the jitter and of the feeler schedule;
    /// [`JitterRng::seeded`] makes retry and feeler times reproducible. Default is a randomly seeded source.
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

    /// The time limit of each dial attempt, run with the dial; `None` for
    /// none. `Some(Duration::ZERO)` is a [`ConfigError`]. Default is 30
    /// seconds.
    pub fn connect_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Where automatic outbound addresses come from. Without a source the
    /// manager makes no automatic connections (btcd's connect mode).
    pub fn address_source<S: AddressSource<A>>(mut self, source: S) -> Self {
        self.fill = Some(fill::task(source));
        self
    }

    /// Accepts inbound connections on `listener`; the manager owns it and
    /// closes it on stop. Requires [`on_accept`](Self::on_accept). Inbound
    /// connections are entries of the state map, with the peer's address as
    /// an `A`.
    pub fn listener(self, listener: TcpListener) -> Self
    where
        A: From<SocketAddr>,
    {
        self.listener_with(listener, ListenerOptions::new())
    }

    /// Like [`listener`](Self::listener), with options: the network its
    /// peers come from (a Tor onion service's listener), and permissions
    /// for every peer of it (Core's `-bind=…=onion` and `-whitebind`).
    pub fn listener_with(mut self, listener: TcpListener, options: ListenerOptions) -> Self
    where
        A: From<SocketAddr>,
    {
        self.listeners.push((listener, options.origin));
        self.inbound_addr = Some(A::from);
        self
    }

    /// The peer policy: duplicates, netgroup limits, inbound limits,
    /// eviction and bans. See [`policy`](crate::policy). Default is
    /// [`Policy::new`].
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Bans to start with, as exported by
    /// [`Handle::bans`](super::Handle::bans); expired ones are dropped.
    pub fn bans(mut self, bans: impl IntoIterator<Item = Ban>) -> Self {
        self.bans.extend(bans);
        self
    }

    /// The most inbound connections open at once; `Some(0)` rejects every
    /// one, `None` sets no limit. A rejected socket is closed at once and
    /// counted. Default is 117 ([`DEFAULT_MAX_INBOUND`]: Bitcoin Core's 125
    /// connections less the default outbound target).
    pub fn max_inbound(mut self, max: Option<usize>) -> Self {
        self.max_inbound = max;
        self
    }

    /// The capacity of the queue of events to the callbacks. When it is
    /// full, the manager starts no new automatic dial and accepts no
    /// connection until the callbacks catch up; nothing is dropped. `0` is a
    /// [`ConfigError`]. Default is 1024.
    pub fn callback_queue(mut self, capacity: usize) -> Self {
        self.callback_queue = capacity;
        self
    }

    /// How long [`stop`](super::Handle::stop) waits for the callbacks to run
    /// what is queued. After it, queued events are dropped (their
    /// connections closed), a callback still running is abandoned, and stop
    /// returns. Default is 5 seconds.
    pub fn stop_grace(mut self, grace: Duration) -> Self {
        self.stop_grace = grace;
        self
    }

    /// Called with each accepted inbound connection.
    pub fn on_accept<F>(mut self, f: F) -> Self
    where
        F: Fn(Connection<TcpStream, A>) + Send + Sync + 'static,
    {
        self.callbacks.on_accept = Some(Arc::new(f));
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
        self.callbacks.on_connection = Some(Arc::new(f));
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
        self.callbacks.on_disconnection = Some(Arc::new(f));
        self
    }

    /// Called when a dial fails, with the error and whether (and when) it
    /// will be retried. An address book can use it to penalise the address.
    pub fn on_dial_failure<F>(mut self, f: F) -> Self
    where
        F: Fn(DialFailure<A>) + Send + Sync + 'static,
    {
        self.callbacks.on_dial_failure = Some(Arc::new(f));
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
    /// [`ConfigError`] for an invalid option (checked first), or when called
    /// outside a tokio runtime.
    pub fn start(self) -> Result<Handle<A>, ConfigError> {
        let config = self.build()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ConfigError::NoRuntime)?;
        Ok(actor::spawn(config, &runtime))
    }

    fn build(self) -> Result<Config<A, D>, ConfigError> {
        let mut backoff = Backoff::new(self.retry_base, self.retry_cap)
            .and_then(|b| b.with_jitter(self.jitter))
            .map_err(ConfigError::Backoff)?;
        let rng = self.rng;
        if let Some(rng) = &rng {
            backoff = backoff.with_rng(rng.clone());
        }
        let max = tokio::sync::Semaphore::MAX_PERMITS;
        if self.targets[ConnClass::Feeler.index()] > 0 {
            return Err(ConfigError::FeelerTarget);
        }
        if self.feeler_interval == Some(Duration::ZERO) {
            return Err(ConfigError::ZeroFeelerInterval);
        }
        let outbound = self
            .targets
            .iter()
            .try_fold(0usize, |a, t| a.checked_add(*t));
        for limit in [outbound.or(Some(usize::MAX)), self.max_inbound]
            .into_iter()
            .flatten()
        {
            if limit > max {
                return Err(ConfigError::TargetTooLarge(limit));
            }
        }
        if self.connect_timeout == Some(Duration::ZERO) {
            return Err(ConfigError::ZeroConnectTimeout);
        }
        if self.inactivity_timeout == Some(Duration::ZERO) {
            return Err(ConfigError::ZeroInactivityTimeout);
        }
        if self.callback_queue == 0 {
            return Err(ConfigError::ZeroCallbackQueue);
        }
        if !self.listeners.is_empty() && self.callbacks.on_accept.is_none() {
            return Err(ConfigError::ListenersWithoutOnAccept);
        }
        let feelers = self
            .feeler_interval
            .zip(self.addrman.clone())
            .map(|(interval, addrman)| Feelers {
                addrman,
                interval,
                hold: self.feeler_hold,
                rng: rng
                    .as_ref()
                    .map_or_else(fastrand::Rng::new, JitterRng::fork),
            });
        Ok(Config {
            dialer: self.dialer,
            targets: self.targets,
            feelers,
            max_anchors: self.max_anchors,
            addrman: self.addrman.clone(),
            throttle_wait: self.throttle_wait.unwrap_or(self.retry_base),
            backoff,
            stable_period: self.stable_period,
            max_failures: self.max_failures,
            connect_timeout: self.connect_timeout,
            inactivity_timeout: self.inactivity_timeout,
            fill: self.fill,
            persist: self.persist.zip(self.addrman),
            listeners: self.listeners,
            inbound_addr: self.inbound_addr,
            max_inbound: self.max_inbound,
            policy: self.policy,
            observer: self.observer,
            bans: self.bans,
            callback_queue: self.callback_queue,
            stop_grace: self.stop_grace,
            callbacks: self.callbacks,
        })
    }
}

/// What a listener says of its peers; see [`Builder::listener_with`].
///
/// ```
/// use connmgr::{manager::ListenerOptions, policy::{Network, Permissions}};
///
/// // The listener behind an onion service: its peers arrive from
/// // 127.0.0.1, but they are Tor peers, and each is a peer of its own.
/// let tor = ListenerOptions::new().network(Network::Onion);
/// // A listener for the node's own tools, never punished.
/// let trusted = ListenerOptions::new().permissions(Permissions::NOBAN);
/// # let _ = (tor, trusted);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerOptions {
    origin: Origin,
}

impl ListenerOptions {
    /// A plain listener: its peers are what their addresses say.
    pub fn new() -> Self {
        Self::default()
    }

    /// Its peers come from `network` (say [`Network::Onion`] for the
    /// listener an onion service forwards to): they are that network's
    /// peers, not the proxy's address. They share one group
    /// ([`NetGroup::Inbound`](crate::policy::NetGroup::Inbound)), no
    /// per-IP limit applies to them, no IP ban or discouragement reaches
    /// them, and a misbehaving one is disconnected, never banned.
    pub fn network(mut self, network: Network) -> Self {
        self.origin.network = Some(network);
        self
    }

    /// Grants `permissions` to every peer of this listener (Core's
    /// `-whitebind`).
    pub fn permissions(mut self, permissions: Permissions) -> Self {
        self.origin.permissions = permissions;
        self
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
    /// The connect timeout is zero: every dial would fail. Use `None` for no
    /// timeout.
    ZeroConnectTimeout,
    /// The inactivity timeout is zero: every connection would be closed.
    /// Use `None` for none.
    ZeroInactivityTimeout,
    /// The callback queue has no room.
    ZeroCallbackQueue,
    /// A target was set for [`ConnClass::Feeler`]: feelers are timed, not
    /// kept at a count (see [`Builder::feelers`]).
    FeelerTarget,
    /// The mean time between feelers is zero. Use `None` for no feelers.
    ZeroFeelerInterval,
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
            Self::ZeroConnectTimeout => f.pad("the connect timeout must be greater than zero"),
            Self::ZeroInactivityTimeout => {
                f.pad("the inactivity timeout must be greater than zero")
            }
            Self::ZeroCallbackQueue => f.pad("the callback queue must hold at least one event"),
            Self::FeelerTarget => f.pad("feelers take no target; set their interval instead"),
            Self::ZeroFeelerInterval => f.pad("the feeler interval must be greater than zero"),
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
