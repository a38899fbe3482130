//! The manager's policy bookkeeping, exposed for the crate's benchmarks
//! only. Not a stable API: it may change in any release.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use tokio::time::Instant;

use super::{Host, Policy, Subnet, state::PolicyState};

/// The policy state the manager task keeps, for `SocketAddr` peers.
#[derive(Debug)]
pub struct PolicyTable(PolicyState<SocketAddr, u64>);

impl PolicyTable {
    /// An empty table with `policy`.
    pub fn new(policy: Policy) -> Self {
        Self(PolicyState::new(policy, None))
    }

    /// Bans `subnet`; `false` when the list is full.
    pub fn ban(&mut self, subnet: Subnet, duration: Duration) -> bool {
        self.0
            .ban(subnet, duration, String::new(), Instant::now())
            .is_ok()
    }

    /// Discourages `ip`.
    pub fn discourage(&mut self, ip: IpAddr) {
        self.0.discourage(Host::ip(ip), Instant::now());
    }

    /// The decision on an automatic candidate: `true` to dial.
    pub fn may_dial(&self, addr: &SocketAddr) -> bool {
        self.0.may_dial(addr, true, Instant::now()).is_ok()
    }
}
