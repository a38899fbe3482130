//! The peer policy: what protects a node from eclipse and abuse, after
//! Bitcoin Core's defences (`src/netgroup.cpp`, `src/node/eviction.cpp`,
//! `src/banman.cpp`, `src/net.cpp`).
//!
//! The manager applies it to every dial and every accept, on by default.
//!
//! # Networks and groups
//!
//! Every address has a [`Host`] and every host a [`Network`]: IPv4 and IPv6
//! (routable), onion, I2P, CJDNS, host names, and [`Local`](Network::Local)
//! for loopback and every other unroutable IP. Nothing is exempt: each rule
//! asks for the network. Groups ([`NetGroup`]) are Core's: an IPv4 /16, an
//! IPv6 /32, an embedded IPv4 address's /16 for 6to4, Teredo and NAT64
//! (whatever it embeds: those are routable), the first 4 bits of an onion
//! or I2P key, and one group for all local peers.
//!
//! A listener can say where its peers come from
//! ([`ListenerOptions::network`](crate::manager::ListenerOptions::network)):
//! the peers of a Tor onion service's listener arrive from 127.0.0.1, but
//! they are Tor peers, each one a peer of its own.
//!
//! For simulations on one machine, [`Policy::treat_as_routable`] makes
//! loopback addresses count as routable ones (127.a.b.c in group 127.a).
//! Without it, a regtest node on 127.0.0.1 works with the defaults: local
//! peers are told apart by port, are not limited by group or IP, and are
//! counted against `max_inbound` and evicted like everyone else.
//!
//! # Outbound
//!
//! - **No duplicates.** Never two outbound connections or dials to one
//!   routable host, in either direction (Core's
//!   `AlreadyConnectedToAddress`): `8.8.8.8:8333`, `[::ffff:8.8.8.8]:18333`
//!   and an inbound peer from `8.8.8.8` are the same host. Local and named
//!   peers count by their whole address, onion peers by their key. A
//!   duplicate automatic candidate is skipped; an explicit request is an
//!   [`Error::Duplicate`](crate::manager::Error::Duplicate), except a
//!   permanent one: it takes over an automatic or one-shot request to the
//!   address, or waits for an inbound peer of the host to leave.
//! - **Diversity.** At most [`max_outbound_per_netgroup`] automatic
//!   connections per IPv4 or IPv6 group (default 1), dials in flight
//!   counted, so that an attacker who controls one /16 and floods the
//!   address source cannot take the outbound slots (Heilman et al., 2015).
//!   As in Core, onion, I2P and CJDNS groups do not count (their keys are
//!   random), so a Tor-only node fills its target.
//! - **Before the stack.** The policy decides before the dial stack's
//!   `call`: a refused candidate never reaches a layer of yours.
//!
//! # Inbound
//!
//! Before `on_accept`: bans and discouragement, [`max_inbound_per_ip`]
//! (default 1) and [`max_inbound_per_netgroup`] (default an eighth of
//! `max_inbound`) for IPv4 and IPv6 peers. When `max_inbound` is reached
//! and [`evict_when_full`](Policy::evict_when_full) is on (the default),
//! someone is evicted.
//!
//! # Eviction
//!
//! After Core's `SelectNodeToEvict`, step by step: protect 4 peers by
//! netgroup hashed with a random key of this manager, 8 by lowest ping, 4
//! by latest transaction, 4 by latest block (what the application reports
//! with [`Handle::report`](crate::manager::Handle::report)), then half of
//! the rest by uptime with up to a quarter of all places kept for onion,
//! local, I2P and CJDNS peers; then evict the youngest member of the
//! largest group. `NOBAN` peers are never evicted. Where Core would find
//! everyone protected and refuse the newcomer, this lifts the weakest
//! protections again, so someone always goes. The side-by-side table is in
//! the eviction module's source (`src/policy/eviction.rs`).
//!
//! # Bans
//!
//! A [`Ban`] holds a [`Subnet`]: an IP network, or one host without an IP
//! (an onion service). IPv6 networks match in IPv6 space and never widen
//! to IPv4; an address that embeds an IPv4 address is covered by a ban of
//! its IPv6 range and by one of its IPv4 address. A look-up costs one hash
//! probe per prefix length in use, whatever the number of bans; the list
//! holds at most [`max_bans`](Policy::max_bans) (a typed error past it),
//! and an export never overflows the wall clock.
//!
//! # Misbehaviour
//!
//! [`Handle::misbehaving`](crate::manager::Handle::misbehaving) keeps btcd's
//! decaying [`BanScore`]. At the threshold, as Core:
//!
//! | peer | what happens |
//! |---|---|
//! | `NOBAN` ([`Policy::whitelist`], a listener's permissions) or permanent | nothing: the score is reported |
//! | local, or from a listener of another network (Tor) | this connection is closed; no address is punished |
//! | routable, onion, I2P, CJDNS | the host is discouraged for [`ban_duration`](Policy::ban_duration) and its connections closed |
//!
//! Discouraged hosts are kept apart from manual bans, in a bounded table
//! ([`max_discouraged`](Policy::max_discouraged), default 50 000 as Core's
//! rolling filter) that is exact where Core's filter has false positives:
//! automatic candidates and inbound peers from them are refused; an explicit
//! request still dials.
//!
//! A candidate the policy refuses is not a failed dial: it is counted apart
//! (see [`Counters`](crate::manager::Counters)) and never feeds the failure
//! throttle, and the fill task asks the source a bounded number of times in
//! a row before it waits the retry base.
//!
//! [`max_outbound_per_netgroup`]: Policy::max_outbound_per_netgroup
//! [`max_inbound_per_ip`]: Policy::max_inbound_per_ip
//! [`max_inbound_per_netgroup`]: Policy::max_inbound_per_netgroup
//!
//! # Examples
//!
//! ```no_run
//! use connmgr::{manager::ConnManager, policy::{Permissions, Policy}};
//! use std::time::Duration;
//!
//! # async fn run() -> Result<(), connmgr::BoxError> {
//! let handle = ConnManager::builder()
//!     .policy(
//!         Policy::new()
//!             .max_outbound_per_netgroup(2)
//!             .whitelist("192.0.2.0/24".parse()?, Permissions::NOBAN),
//!     )
//!     .start()?;
//! handle.ban("203.0.113.0/24".parse()?, Duration::from_secs(3600), "spam").await?;
//! # Ok(())
//! # }
//! ```

mod ban;
#[doc(hidden)]
pub mod bench;
pub(crate) mod eviction;
mod netgroup;
pub(crate) mod state;

pub use self::{
    ban::{
        Ban, BanScore, DEFAULT_BAN_DURATION, DEFAULT_BAN_THRESHOLD, HALF_LIFE, InvalidSubnet,
        Subnet, TRANSIENT_LIFETIME,
    },
    netgroup::{Host, InvalidHost, NetGroup, Network, PeerAddr, canonical, is_routable, unmap},
};

use std::{fmt, ops::BitOr, time::Duration};

/// Default most manual bans ([`Policy::max_bans`]).
pub const DEFAULT_MAX_BANS: usize = 100_000;
/// Default most discouraged hosts ([`Policy::max_discouraged`]), as Core's
/// rolling filter.
pub const DEFAULT_MAX_DISCOURAGED: usize = 50_000;

/// The policy's settings. See the [module docs](self).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub(crate) max_outbound_per_netgroup: usize,
    pub(crate) max_inbound_per_ip: usize,
    pub(crate) max_inbound_per_netgroup: Option<usize>,
    pub(crate) evict_when_full: bool,
    pub(crate) ban_threshold: u32,
    pub(crate) ban_duration: Duration,
    pub(crate) max_bans: usize,
    pub(crate) max_discouraged: usize,
    pub(crate) routable: Vec<Subnet>,
    pub(crate) whitelist: Vec<(Subnet, Permissions)>,
}

impl Default for Policy {
    fn default() -> Self {
        Self::new()
    }
}

impl Policy {
    /// The defaults.
    pub fn new() -> Self {
        Self {
            max_outbound_per_netgroup: 1,
            max_inbound_per_ip: 1,
            max_inbound_per_netgroup: None,
            evict_when_full: true,
            ban_threshold: DEFAULT_BAN_THRESHOLD,
            ban_duration: DEFAULT_BAN_DURATION,
            max_bans: DEFAULT_MAX_BANS,
            max_discouraged: DEFAULT_MAX_DISCOURAGED,
            routable: Vec::new(),
            whitelist: Vec::new(),
        }
    }

    /// The most automatic outbound connections (dials in flight included)
    /// per IPv4 or IPv6 netgroup. Default is 1.
    pub fn max_outbound_per_netgroup(mut self, max: usize) -> Self {
        self.max_outbound_per_netgroup = max;
        self
    }

    /// The most inbound connections from one routable IP address. Default
    /// is 1.
    pub fn max_inbound_per_ip(mut self, max: usize) -> Self {
        self.max_inbound_per_ip = max;
        self
    }

    /// The most inbound connections from one IPv4 or IPv6 netgroup; `None`
    /// for an eighth of `max_inbound` (at least 1), the default.
    pub fn max_inbound_per_netgroup(mut self, max: Option<usize>) -> Self {
        self.max_inbound_per_netgroup = max;
        self
    }

    /// Whether a newcomer evicts an inbound connection when `max_inbound` is
    /// reached (see [eviction](self#eviction)). Default is `true`.
    pub fn evict_when_full(mut self, evict: bool) -> Self {
        self.evict_when_full = evict;
        self
    }

    /// Treats the addresses of `subnet` as routable IPv4 or IPv6 addresses,
    /// grouped by their /16 or /32: for simulations and tests of a network
    /// on one machine, whose peers sit on `127.a.b.c`. May be given more
    /// than once. Default is none: loopback and private addresses are
    /// [`Network::Local`].
    pub fn treat_as_routable(mut self, subnet: Subnet) -> Self {
        self.routable.push(subnet);
        self
    }

    /// Grants `permissions` to every peer inside `subnet`, in both
    /// directions (Core's `-whitelist`). May be given more than once.
    pub fn whitelist(mut self, subnet: Subnet, permissions: Permissions) -> Self {
        self.whitelist.push((subnet, permissions));
        self
    }

    /// The [`BanScore`] at which a misbehaving peer is punished (see
    /// [misbehaviour](self#misbehaviour)). Default is 100.
    pub fn ban_threshold(mut self, threshold: u32) -> Self {
        self.ban_threshold = threshold;
        self
    }

    /// How long a peer discouraged for its score stays discouraged. Default
    /// is 24 hours.
    pub fn ban_duration(mut self, duration: Duration) -> Self {
        self.ban_duration = duration;
        self
    }

    /// The most manual bans at once; past it,
    /// [`Handle::ban`](crate::manager::Handle::ban) is
    /// [`Error::BanListFull`](crate::manager::Error::BanListFull). Default
    /// is [`DEFAULT_MAX_BANS`].
    pub fn max_bans(mut self, max: usize) -> Self {
        self.max_bans = max;
        self
    }

    /// The most hosts discouraged for misbehaving at once; past it, the
    /// oldest is forgotten first. Default is [`DEFAULT_MAX_DISCOURAGED`].
    pub fn max_discouraged(mut self, max: usize) -> Self {
        self.max_discouraged = max;
        self
    }
}

/// What a peer may do that others may not (Core's `-whitelist` and
/// `-whitebind` permissions). Combine with `|`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Permissions(u8);

impl Permissions {
    /// No permission.
    pub const NONE: Self = Self(0);
    /// Never banned, discouraged, disconnected for misbehaviour or
    /// evicted; its score is still kept and reported.
    pub const NOBAN: Self = Self(1);

    /// Whether every permission of `other` is here.
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

impl BitOr for Permissions {
    type Output = Self;

    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

/// Why the policy refused a candidate, an inbound peer or a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Refusal {
    /// The address is connected or being dialed already.
    Duplicate,
    /// The address is banned.
    Banned,
    /// Its netgroup holds as many connections as allowed.
    NetgroupFull,
    /// Its IP address holds as many inbound connections as allowed.
    IpFull,
    /// `max_inbound` is reached and no connection could be evicted.
    InboundFull,
    /// The host misbehaved and is discouraged.
    Discouraged,
}

impl Refusal {
    /// A short name, as used in metrics labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Duplicate => "duplicate",
            Self::Banned => "banned",
            Self::NetgroupFull => "netgroup",
            Self::IpFull => "ip",
            Self::InboundFull => "full",
            Self::Discouraged => "discouraged",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}
