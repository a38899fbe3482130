//! The manager's public value types.

use std::{fmt, net::SocketAddr};

use tokio::time::Instant;
use tower::BoxError;

use super::{ConnClass, ConnInfo};
use crate::policy::{Ban, Network, Permissions, Refusal};

/// The id of a connection request. Ids start at 1 and are never reused
/// within a manager.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub(crate) u64);

impl ConnId {
    /// The number behind the id.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// Where a request is in its life (btcd's `ConnState`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConnState {
    /// Dialing, or waiting to reconnect after a disconnect.
    Pending,
    /// The last dial failed; waiting for the next attempt.
    Failing,
    /// Ended without a connection: removed, or failed and not retried.
    Canceled,
    /// Connected.
    Established,
    /// Was connected, and ended.
    Disconnected,
}

impl ConnState {
    /// `true` for [`Canceled`](Self::Canceled) and
    /// [`Disconnected`](Self::Disconnected): the request is over.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Canceled | Self::Disconnected)
    }
}

impl fmt::Display for ConnState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Self::Pending => "pending",
            Self::Failing => "failing",
            Self::Canceled => "canceled",
            Self::Established => "established",
            Self::Disconnected => "disconnected",
        })
    }
}

/// Which way a connection was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Dialed by the manager.
    Outbound,
    /// Accepted on a listener.
    Inbound,
}

/// Why a connection exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConnKind {
    /// Dialed by the fill loop to keep the outbound target; its address came
    /// from the address source.
    Automatic,
    /// Asked for with
    /// [`Handle::connect_permanent`](super::Handle::connect_permanent):
    /// retried and reconnected until removed.
    Permanent,
    /// Asked for with [`Handle::connect`](super::Handle::connect): one dial,
    /// no retry.
    OneShot,
    /// Accepted on a listener.
    Inbound,
    /// A feeler: a short connection that tests an address of the address
    /// manager's new table (class [`ConnClass::Feeler`]); never retried,
    /// counted against no target, closed after its hold.
    Feeler,
}

impl ConnKind {
    /// Outbound or inbound.
    pub fn direction(self) -> Direction {
        match self {
            Self::Inbound => Direction::Inbound,
            _ => Direction::Outbound,
        }
    }

    /// Whether this is a permanent request.
    pub fn is_permanent(self) -> bool {
        self == Self::Permanent
    }
}

impl fmt::Display for ConnKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Self::Automatic => "automatic",
            Self::Permanent => "permanent",
            Self::OneShot => "one-shot",
            Self::Inbound => "inbound",
            Self::Feeler => "feeler",
        })
    }
}

/// One entry of the state map, as seen by [`Handle::snapshot`](super::Handle::snapshot).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry<A = SocketAddr> {
    /// Id, address and kind.
    pub info: ConnInfo<A>,
    /// The current state.
    pub state: ConnState,
    /// Dials made for this request so far.
    pub attempts: u32,
    /// When the next dial is due, if one is scheduled; for an established
    /// [feeler](ConnClass::Feeler), when the manager closes it.
    pub next_attempt: Option<Instant>,
    /// Since when the connection is up, if it is.
    pub connected_since: Option<Instant>,
    /// Its [`BanScore`](crate::policy::BanScore) now.
    pub ban_score: u32,
    /// The network of the peer: of its address, or for an inbound peer of
    /// a listener that says where its peers come from, that network.
    pub network: Network,
    /// Its permissions (from [`Policy::whitelist`](crate::policy::Policy::whitelist)
    /// and its listener's).
    pub permissions: Permissions,
}

/// What a peer did that eviction values, told with
/// [`Handle::report`](super::Handle::report).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Report {
    /// A ping round trip; the lowest one is kept.
    Ping(std::time::Duration),
    /// It sent a block the node did not have.
    Block,
    /// It sent a transaction the node accepted.
    Transaction,
}

impl<A> Entry<A> {
    /// The request's id.
    pub fn id(&self) -> ConnId {
        self.info.id
    }

    /// Whether this is a permanent request.
    pub fn permanent(&self) -> bool {
        self.info.kind.is_permanent()
    }
}

/// The manager's counters, all since it started.
///
/// Each dial is counted once, when it ends: once every dial has ended,
/// `dials == established + failures + canceled`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Counters {
    /// Dials started.
    pub dials: u64,
    /// Dials that failed: errors, timeouts and panics of the dial stack.
    pub failures: u64,
    /// Outbound connections delivered to the application (to
    /// `on_connection`, or dropped there when it is not set). A connection
    /// that arrives after its request was removed, or after stop, is closed
    /// and counted in `canceled` instead.
    pub established: u64,
    /// Dials ended by [`remove`](super::Handle::remove) or stop, including
    /// ones whose connection arrived too late to be delivered.
    pub canceled: u64,
    /// Times the fill loop waited the retry base because of the failure
    /// throttle.
    pub throttled: u64,
    /// Times the address source had no address (each counts as a failed
    /// automatic attempt for the throttle).
    pub no_address: u64,
    /// Consecutive failed automatic attempts right now (reset by any
    /// successful connection).
    pub consecutive_failures: u64,
    /// Panics caught in user code: the address source, the dial stack and
    /// the callbacks. Each is also logged at error level.
    pub panics: u64,
    /// Inbound connections accepted and handed to `on_accept`.
    pub inbound_accepted: u64,
    /// Inbound connections closed before `on_accept`, for any reason (the
    /// sum of `rejected`).
    pub inbound_rejected: u64,
    /// Inbound connections closed before `on_accept`, by reason.
    pub rejected: Refusals,
    /// Automatic candidates the policy skipped, by reason. They are not
    /// dials and not failures.
    pub skipped: Refusals,
    /// Inbound connections evicted to make room for a newcomer from a
    /// smaller netgroup.
    pub evicted: u64,
    /// Bans made (by `ban`, or by a ban score past the threshold).
    pub bans: u64,
    /// Errors returned by `accept` (each followed by a backoff).
    pub accept_errors: u64,
    /// The dial counts of each class: see [`class`](Self::class).
    pub(crate) classes: [DialCounts; 3],
}

impl Counters {
    /// The dial counts of `class`. The classes add up to the totals:
    /// `dials` is the sum of every class's `dials`, and so on.
    pub fn class(&self, class: ConnClass) -> DialCounts {
        self.classes[class.index()]
    }
}

/// The dials of one [`ConnClass`], counted as [`Counters`] counts them:
/// once every dial has ended, `dials == established + failures + canceled`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DialCounts {
    /// Dials started.
    pub dials: u64,
    /// Connections delivered.
    pub established: u64,
    /// Dials that failed.
    pub failures: u64,
    /// Dials ended by `remove` or stop.
    pub canceled: u64,
}

impl DialCounts {
    /// Whether every dial counted has ended one way:
    /// `dials == established + failures + canceled`.
    pub fn settled(&self) -> bool {
        self.dials == self.established + self.failures + self.canceled
    }
}

/// Counts by [`Refusal`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Refusals {
    /// The address was connected or being dialed already.
    pub duplicate: u64,
    /// The address was banned.
    pub banned: u64,
    /// Its netgroup was full.
    pub netgroup: u64,
    /// Its IP address was full (inbound).
    pub ip: u64,
    /// `max_inbound` was reached and nobody could be evicted (inbound).
    pub full: u64,
    /// The host was discouraged for misbehaving.
    pub discouraged: u64,
}

impl Refusals {
    /// The count for one reason.
    pub fn get(&self, why: Refusal) -> u64 {
        match why {
            Refusal::Duplicate => self.duplicate,
            Refusal::Banned => self.banned,
            Refusal::NetgroupFull => self.netgroup,
            Refusal::IpFull => self.ip,
            Refusal::InboundFull => self.full,
            Refusal::Discouraged => self.discouraged,
        }
    }

    /// All of them.
    pub fn total(&self) -> u64 {
        self.duplicate + self.banned + self.netgroup + self.ip + self.full + self.discouraged
    }
}

/// The state map and counters at one moment.
#[derive(Clone, Debug)]
pub struct Snapshot<A = SocketAddr> {
    /// Every live request (pending, failing, established) and inbound
    /// connection, ordered by id.
    pub entries: Vec<Entry<A>>,
    /// The counters.
    pub counters: Counters,
    /// The bans in force.
    pub bans: Vec<Ban>,
    /// How many hosts are discouraged for misbehaving (at most
    /// [`Policy::max_discouraged`](crate::policy::Policy::max_discouraged);
    /// some may have expired).
    pub discouraged: usize,
}

impl<A> Snapshot<A> {
    /// The entry with this id, if it is live.
    pub fn get(&self, id: ConnId) -> Option<&Entry<A>> {
        self.entries
            .binary_search_by_key(&id, |e| e.info.id)
            .ok()
            .map(|i| &self.entries[i])
    }

    /// How many live entries are in `state`.
    pub fn count(&self, state: ConnState) -> usize {
        self.entries.iter().filter(|e| e.state == state).count()
    }

    /// How many established entries are of `kind`.
    pub fn established(&self, kind: ConnKind) -> usize {
        self.entries
            .iter()
            .filter(|e| e.state == ConnState::Established && e.info.kind == kind)
            .count()
    }

    /// How many automatic connections of `class` are established: what
    /// its target keeps filled (for [`ConnClass::Feeler`], the feeler held
    /// now, if any).
    pub fn established_in(&self, class: ConnClass) -> usize {
        self.entries
            .iter()
            .filter(|e| {
                e.state == ConnState::Established
                    && matches!(e.info.kind, ConnKind::Automatic | ConnKind::Feeler)
                    && e.info.class == class
            })
            .count()
    }
}

/// A failed dial, as reported to `on_dial_failure`.
#[derive(Debug)]
#[non_exhaustive]
pub struct DialFailure<A = SocketAddr> {
    /// The request.
    pub info: ConnInfo<A>,
    /// Which attempt of this request failed (1 for the first).
    pub attempt: u32,
    /// When this attempt started.
    pub started: Instant,
    /// Why. Timeouts are [`tower::timeout::error::Elapsed`], a panicking
    /// dial stack is [`Panicked`](super::Panicked).
    pub error: BoxError,
    /// When the next attempt is due, for a permanent request; `None` when the
    /// request ended with this failure.
    pub retry_at: Option<Instant>,
}

/// Why an established connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// Its owner dropped the [`Connection`](super::Connection).
    Dropped,
    /// [`Handle::disconnect`](super::Handle::disconnect) closed it.
    Disconnect,
    /// [`Handle::remove`](super::Handle::remove) closed it.
    Remove,
    /// [`Handle::stop_and_close`](super::Handle::stop_and_close) closed it.
    Stop,
    /// Evicted to make room for an inbound peer from a smaller netgroup.
    Evicted,
    /// Its address was banned ([`Handle::ban`](super::Handle::ban), or a
    /// ban score past the threshold).
    Banned,
    /// No byte was read, or none written, for the
    /// [`inactivity_timeout`](super::Builder::inactivity_timeout) (Core's
    /// receive and send timeouts, 20 minutes). A permanent peer is
    /// reconnected.
    Inactive,
    /// A [feeler](ConnClass::Feeler) held for the
    /// [feeler hold](super::Builder::feeler_hold): its test is over.
    FeelerDone,
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Self::Dropped => "dropped by its owner",
            Self::Disconnect => "disconnected",
            Self::Remove => "removed",
            Self::Stop => "closed by stop",
            Self::Evicted => "evicted",
            Self::Banned => "banned",
            Self::Inactive => "inactive",
            Self::FeelerDone => "feeler done",
        })
    }
}

/// An established connection that ended, as reported to `on_disconnection`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Disconnected<A = SocketAddr> {
    /// The request.
    pub info: ConnInfo<A>,
    /// Why it ended.
    pub reason: DisconnectReason,
    /// When the reconnect is due, for a permanent request that was not
    /// removed; `None` when the request ended.
    pub reconnect_at: Option<Instant>,
}
