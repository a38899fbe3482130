//! The manager's validated configuration and its defaults.

use std::{net::SocketAddr, time::Duration};

use tokio::net::TcpListener;
use tower::Service;

use super::{events::Callbacks, fill::FillTask};
use crate::addrman::AddrMan;
use crate::{
    backoff::Backoff,
    policy::{Ban, Policy, state::Origin},
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
/// Default time a permanent peer's connection must stay up before its
/// backoff starts again from the base.
pub const DEFAULT_STABLE_PERIOD: Duration = Duration::from_secs(60);
/// Default time limit of each dial, as in btcd.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default most inbound connections: Bitcoin Core's 125 connections less the
/// default outbound target.
pub const DEFAULT_MAX_INBOUND: usize = 125 - DEFAULT_TARGET_OUTBOUND;
/// Default capacity of the queue to the callbacks.
pub const DEFAULT_CALLBACK_QUEUE: usize = 1024;
/// Default time `stop` gives the callbacks to finish what is queued.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(5);
/// Default mean time between two feelers, as in Bitcoin Core.
pub const DEFAULT_FEELER_INTERVAL: Duration = Duration::from_secs(120);
/// Default time the manager holds a feeler open before it closes it.
pub const DEFAULT_FEELER_HOLD: Duration = Duration::from_secs(30);
/// Default most block-relay connections saved as anchors on stop, as in
/// Bitcoin Core.
pub const DEFAULT_MAX_ANCHORS: usize = 2;

/// Everything the manager's tasks need, checked by
/// [`Builder::start`](super::Builder::start).
pub(crate) struct Config<A, D: Service<A>> {
    pub(crate) dialer: D,
    /// The target of each class, by [`ConnClass::index`]; feelers have none.
    pub(crate) targets: [usize; 3],
    /// Feelers: the address manager they test addresses of, the mean time
    /// between two, how long one is held, and their random source.
    pub(crate) feelers: Option<Feelers<A>>,
    /// How many anchors to save on stop, and to dial at start.
    pub(crate) max_anchors: usize,
    /// The address manager given to the builder, if any.
    pub(crate) addrman: Option<AddrMan<A>>,
    pub(crate) throttle_wait: std::time::Duration,
    pub(crate) backoff: Backoff,
    pub(crate) stable_period: Duration,
    pub(crate) max_failures: u32,
    pub(crate) connect_timeout: Option<Duration>,
    pub(crate) inactivity_timeout: Option<Duration>,
    pub(crate) fill: Option<FillTask<A, D>>,
    pub(crate) persist: Option<(super::persist::Persist<A>, crate::addrman::AddrMan<A>)>,
    pub(crate) listeners: Vec<(TcpListener, Origin)>,
    /// How an inbound peer's address becomes an `A` (set with a listener).
    pub(crate) inbound_addr: Option<fn(SocketAddr) -> A>,
    pub(crate) max_inbound: Option<usize>,
    pub(crate) policy: Policy,
    pub(crate) observer: Option<std::sync::Arc<dyn crate::source::Observer<A>>>,
    pub(crate) bans: Vec<Ban>,
    pub(crate) callback_queue: usize,
    pub(crate) stop_grace: Duration,
    pub(crate) callbacks: Callbacks<D::Response, A>,
}

/// What the manager needs to open feelers.
pub(crate) struct Feelers<A> {
    pub(crate) addrman: AddrMan<A>,
    pub(crate) interval: Duration,
    pub(crate) hold: Duration,
    pub(crate) rng: fastrand::Rng,
}
