//! The peer policy: what protects a node from eclipse and abuse.
//!
//! The manager applies it to every dial and every accept, on by default:
//!
//! - **No duplicates.** Never two outbound connections or dials to one
//!   address. A duplicate automatic candidate is skipped; an explicit
//!   request is an [`Error::Duplicate`](crate::manager::Error::Duplicate).
//! - **Outbound diversity.** At most [`max_outbound_per_netgroup`]
//!   automatic connections per [`NetGroup`] (default 1), dials in flight
//!   counted, so that an attacker who controls one /16 and floods the
//!   address source cannot take the outbound slots (the eclipse attack of
//!   Heilman et al., 2015).
//! - **Inbound limits**, before `on_accept`: [`max_inbound_per_ip`]
//!   (default 1) and [`max_inbound_per_netgroup`] (default an eighth of
//!   `max_inbound`, at least 1).
//! - **Eviction when full.** When `max_inbound` is reached, a newcomer from a
//!   netgroup holding fewer inbound slots than the largest one evicts the
//!   youngest connection of the largest netgroup: diversity first, then
//!   longevity, after Bitcoin Core's principle.
//! - **Bans** of addresses and subnets, and btcd's [`BanScore`] for
//!   misbehaving peers.
//!
//! Loopback, private and link-local peers are exempt from the netgroup and
//! per-IP rules unless [`limit_local`](Policy::limit_local) is set, so a
//! regtest node on `127.0.0.1` works with the defaults. Duplicates and bans
//! apply to every address.
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
//! use connmgr::{manager::ConnManager, policy::Policy};
//! use std::time::Duration;
//!
//! # async fn run() -> Result<(), connmgr::BoxError> {
//! let handle = ConnManager::builder()
//!     .policy(Policy::new().max_outbound_per_netgroup(2).evict_when_full(false))
//!     .start()?;
//! handle.ban("203.0.113.0/24".parse()?, Duration::from_secs(3600), "spam").await?;
//! # Ok(())
//! # }
//! ```

mod ban;
mod netgroup;
pub(crate) mod state;

pub use self::{
    ban::{
        Ban, BanScore, DEFAULT_BAN_DURATION, DEFAULT_BAN_THRESHOLD, HALF_LIFE, InvalidSubnet,
        Subnet, TRANSIENT_LIFETIME,
    },
    netgroup::{NetGroup, PeerAddr, canonical, is_routable},
};

use std::{fmt, time::Duration};

/// The policy's settings. See the [module docs](self).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub(crate) max_outbound_per_netgroup: usize,
    pub(crate) max_inbound_per_ip: usize,
    pub(crate) max_inbound_per_netgroup: Option<usize>,
    pub(crate) evict_when_full: bool,
    pub(crate) limit_local: bool,
    pub(crate) ban_threshold: u32,
    pub(crate) ban_duration: Duration,
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
            limit_local: false,
            ban_threshold: DEFAULT_BAN_THRESHOLD,
            ban_duration: DEFAULT_BAN_DURATION,
        }
    }

    /// The most automatic outbound connections (dials in flight included)
    /// per netgroup. Default is 1.
    pub fn max_outbound_per_netgroup(mut self, max: usize) -> Self {
        self.max_outbound_per_netgroup = max;
        self
    }

    /// The most inbound connections from one IP address. Default is 1.
    pub fn max_inbound_per_ip(mut self, max: usize) -> Self {
        self.max_inbound_per_ip = max;
        self
    }

    /// The most inbound connections from one netgroup; `None` for an eighth
    /// of `max_inbound` (at least 1), the default.
    pub fn max_inbound_per_netgroup(mut self, max: Option<usize>) -> Self {
        self.max_inbound_per_netgroup = max;
        self
    }

    /// Whether a newcomer may evict an inbound connection when `max_inbound`
    /// is reached (see the [module docs](self)). Default is `true`.
    pub fn evict_when_full(mut self, evict: bool) -> Self {
        self.evict_when_full = evict;
        self
    }

    /// Whether loopback, private and link-local peers follow the netgroup and
    /// per-IP rules too. Default is `false`: they are exempt.
    pub fn limit_local(mut self, limit: bool) -> Self {
        self.limit_local = limit;
        self
    }

    /// The [`BanScore`] at which a misbehaving peer is banned. Default is 100.
    pub fn ban_threshold(mut self, threshold: u32) -> Self {
        self.ban_threshold = threshold;
        self
    }

    /// How long a peer banned for its score stays banned. Default is 24
    /// hours.
    pub fn ban_duration(mut self, duration: Duration) -> Self {
        self.ban_duration = duration;
        self
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
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}
