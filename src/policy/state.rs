//! The policy's bookkeeping, owned by the manager task: who is connected
//! from and to where, and who is banned. Pure data and functions.

use std::{
    collections::HashMap,
    hash::Hash,
    net::IpAddr,
    time::{Duration, SystemTime},
};

use tokio::time::Instant;

use super::{Ban, NetGroup, PeerAddr, Policy, Refusal, Subnet, is_routable};

/// What an entry counts for in the policy, given back when it ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Place {
    /// An outbound request: in the address map; its netgroup `counted` if
    /// it is automatic and not exempt.
    Outbound { counted: bool },
    /// An inbound connection from `ip`; its IP and netgroup `counted` if
    /// not exempt. (The group is derived again when it ends: it keeps the
    /// entry small.)
    Inbound { ip: IpAddr, counted: bool },
}

impl Place {
    /// The inbound netgroup this entry counts in.
    pub(crate) fn inbound_group(&self) -> Option<NetGroup> {
        match *self {
            Self::Inbound { ip, counted: true } => Some(NetGroup::of(ip)),
            _ => None,
        }
    }
}

/// What to do with an inbound peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    Admit,
    /// Admit after evicting the youngest connection of this group.
    Evict(NetGroup),
    Refuse(Refusal),
}

#[derive(Debug)]
struct Banned {
    subnet: Subnet,
    until: Instant,
    reason: String,
}

#[derive(Debug)]
pub(crate) struct PolicyState<A, Id> {
    policy: Policy,
    max_inbound: Option<usize>,
    inbound_per_group: usize,
    outbound: HashMap<A, Id>,
    auto_groups: HashMap<NetGroup, usize>,
    inbound: usize,
    inbound_ips: HashMap<IpAddr, usize>,
    inbound_groups: HashMap<NetGroup, usize>,
    bans: Vec<Banned>,
}

impl<A: PeerAddr + Eq + Hash + Clone, Id: Copy + Eq> PolicyState<A, Id> {
    pub(crate) fn new(policy: Policy, max_inbound: Option<usize>) -> Self {
        let inbound_per_group = policy
            .max_inbound_per_netgroup
            .unwrap_or_else(|| max_inbound.map_or(usize::MAX, |m| (m / 8).max(1)));
        Self {
            policy,
            max_inbound,
            inbound_per_group,
            outbound: HashMap::new(),
            auto_groups: HashMap::new(),
            inbound: 0,
            inbound_ips: HashMap::new(),
            inbound_groups: HashMap::new(),
            bans: Vec::new(),
        }
    }

    pub(crate) fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The group an address counts in, `None` when it is exempt.
    fn counted(&self, ip: Option<IpAddr>, group: NetGroup) -> Option<NetGroup> {
        let exempt = !self.policy.limit_local && ip.is_some_and(|ip| !is_routable(ip));
        (!exempt).then_some(group)
    }

    // ===== outbound =====

    /// The outbound request to `addr`, if there is one.
    pub(crate) fn outbound_to(&self, addr: &A) -> Option<Id> {
        self.outbound.get(addr).copied()
    }

    /// Whether `addr` may be dialed: not a duplicate, not banned, and for an
    /// automatic dial not in a full netgroup.
    pub(crate) fn may_dial(&self, addr: &A, automatic: bool, now: Instant) -> Result<(), Refusal> {
        if self.outbound.contains_key(addr) {
            return Err(Refusal::Duplicate);
        }
        let ip = addr.ip();
        if ip.is_some_and(|ip| self.banned(ip, now).is_some()) {
            return Err(Refusal::Banned);
        }
        if automatic {
            if let Some(group) = self.counted(ip, addr.netgroup()) {
                let n = self.auto_groups.get(&group).copied().unwrap_or(0);
                if n >= self.policy.max_outbound_per_netgroup {
                    return Err(Refusal::NetgroupFull);
                }
            }
        }
        Ok(())
    }

    /// Counts a new outbound request (checked with [`may_dial`](Self::may_dial)).
    pub(crate) fn add_outbound(&mut self, addr: &A, id: Id, automatic: bool) -> Place {
        self.outbound.insert(addr.clone(), id);
        let group = automatic
            .then(|| self.counted(addr.ip(), addr.netgroup()))
            .flatten();
        if let Some(group) = group {
            *self.auto_groups.entry(group).or_insert(0) += 1;
        }
        Place::Outbound {
            counted: group.is_some(),
        }
    }

    // ===== inbound =====

    /// Whether a peer from `ip` may come in now.
    pub(crate) fn admission(&self, ip: IpAddr, now: Instant) -> Admission {
        if self.banned(ip, now).is_some() {
            return Admission::Refuse(Refusal::Banned);
        }
        let group = self.counted(Some(ip), NetGroup::of(ip));
        if let Some(group) = group {
            if self.inbound_ips.get(&ip).copied().unwrap_or(0) >= self.policy.max_inbound_per_ip {
                return Admission::Refuse(Refusal::IpFull);
            }
            if self.inbound_groups.get(&group).copied().unwrap_or(0) >= self.inbound_per_group {
                return Admission::Refuse(Refusal::NetgroupFull);
            }
        }
        if self.max_inbound.is_none_or(|max| self.inbound < max) {
            return Admission::Admit;
        }
        if !self.policy.evict_when_full {
            return Admission::Refuse(Refusal::InboundFull);
        }
        let mine = group
            .and_then(|g| self.inbound_groups.get(&g).copied())
            .unwrap_or(0);
        // The largest group; among equals, the smallest, so the choice is
        // stable.
        let largest = self
            .inbound_groups
            .iter()
            .filter(|&(_, &n)| n > 0)
            .max_by(|(ga, na), (gb, nb)| na.cmp(nb).then(gb.cmp(ga)));
        match largest {
            Some((&g, &n)) if mine < n && mine + 1 < n => Admission::Evict(g),
            _ => Admission::Refuse(Refusal::InboundFull),
        }
    }

    /// Counts an admitted inbound connection.
    pub(crate) fn add_inbound(&mut self, ip: IpAddr) -> Place {
        self.inbound += 1;
        let group = self.counted(Some(ip), NetGroup::of(ip));
        if let Some(group) = group {
            *self.inbound_ips.entry(ip).or_insert(0) += 1;
            *self.inbound_groups.entry(group).or_insert(0) += 1;
        }
        Place::Inbound {
            ip,
            counted: group.is_some(),
        }
    }

    /// Gives back what an entry counted for.
    pub(crate) fn remove(&mut self, addr: Option<&A>, id: Id, place: Place) {
        fn down<K: Hash + Eq>(map: &mut HashMap<K, usize>, key: K) {
            if let Some(n) = map.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&key);
                }
            }
        }
        match place {
            Place::Outbound { counted } => {
                if let Some(addr) = addr {
                    if self.outbound.get(addr) == Some(&id) {
                        self.outbound.remove(addr);
                    }
                    if counted {
                        down(&mut self.auto_groups, addr.netgroup());
                    }
                }
            }
            Place::Inbound { ip, counted } => {
                self.inbound = self.inbound.saturating_sub(1);
                if counted {
                    down(&mut self.inbound_ips, ip);
                    down(&mut self.inbound_groups, NetGroup::of(ip));
                }
            }
        }
    }

    // ===== bans =====

    /// The ban covering `ip`, if one is in force.
    pub(crate) fn banned(&self, ip: IpAddr, now: Instant) -> Option<Subnet> {
        self.bans
            .iter()
            .find(|b| b.until > now && b.subnet.contains(ip))
            .map(|b| b.subnet)
    }

    /// Bans `subnet` for `duration` (replacing an earlier ban of it).
    pub(crate) fn ban(&mut self, subnet: Subnet, duration: Duration, reason: String, now: Instant) {
        self.bans.retain(|b| b.until > now && b.subnet != subnet);
        let until = now.checked_add(duration).unwrap_or(now + FAR);
        self.bans.push(Banned {
            subnet,
            until,
            reason,
        });
    }

    /// Lifts the ban of exactly `subnet`; whether there was one.
    pub(crate) fn unban(&mut self, subnet: Subnet) -> bool {
        let before = self.bans.len();
        self.bans.retain(|b| b.subnet != subnet);
        self.bans.len() != before
    }

    /// The bans in force, with wall-clock expiry times.
    pub(crate) fn bans(&self, now: Instant) -> Vec<Ban> {
        let wall = SystemTime::now();
        self.bans
            .iter()
            .filter(|b| b.until > now)
            .map(|b| Ban {
                subnet: b.subnet,
                until: wall.checked_add(b.until - now).unwrap_or(wall),
                reason: b.reason.clone(),
            })
            .collect()
    }

    /// Restores exported bans; expired ones are dropped.
    pub(crate) fn restore(&mut self, bans: Vec<Ban>, now: Instant) {
        let wall = SystemTime::now();
        for ban in bans {
            if let Ok(left) = ban.until.duration_since(wall) {
                self.ban(ban.subnet, left, ban.reason, now);
            }
        }
    }
}

/// A ban "for ever": far enough, and within what `Instant` holds.
const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    type State = PolicyState<SocketAddr, u64>;

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    /// Duplicates name the existing request; automatic dials are limited
    /// per netgroup; local addresses are exempt unless limited.
    #[test]
    fn outbound_rules() {
        let now = Instant::now();
        let mut s = State::new(Policy::new(), Some(117));
        let a = sa("8.8.4.4:8333");
        assert_eq!(s.may_dial(&a, true, now), Ok(()));
        let place = s.add_outbound(&a, 1, true);
        assert_eq!(s.may_dial(&a, false, now), Err(Refusal::Duplicate));
        assert_eq!(s.outbound_to(&a), Some(1));
        let same_group = sa("8.8.9.9:8333");
        assert_eq!(
            s.may_dial(&same_group, true, now),
            Err(Refusal::NetgroupFull)
        );
        assert_eq!(
            s.may_dial(&same_group, false, now),
            Ok(()),
            "explicit: no group limit"
        );
        s.remove(Some(&a), 1, place);
        assert_eq!(s.may_dial(&same_group, true, now), Ok(()));

        let local = sa("127.0.0.1:1");
        s.add_outbound(&local, 2, true);
        assert_eq!(s.may_dial(&sa("127.0.0.1:2"), true, now), Ok(()), "exempt");
        let mut strict = State::new(Policy::new().limit_local(true), Some(117));
        strict.add_outbound(&local, 2, true);
        assert_eq!(
            strict.may_dial(&sa("127.0.0.1:2"), true, now),
            Err(Refusal::NetgroupFull)
        );
    }

    /// Per-IP and per-group limits, and eviction from the largest group
    /// when full.
    #[test]
    fn inbound_rules() {
        let now = Instant::now();
        let policy = Policy::new().max_inbound_per_netgroup(Some(3));
        let mut s = State::new(policy, Some(4));
        assert_eq!(s.admission(ip("198.51.1.1"), now), Admission::Admit);
        s.add_inbound(ip("198.51.1.1"));
        assert_eq!(
            s.admission(ip("198.51.1.1"), now),
            Admission::Refuse(Refusal::IpFull)
        );
        s.add_inbound(ip("198.51.1.2"));
        s.add_inbound(ip("198.51.1.3"));
        assert_eq!(
            s.admission(ip("198.51.1.4"), now),
            Admission::Refuse(Refusal::NetgroupFull)
        );
        s.add_inbound(ip("192.0.0.9"));
        // Full: a newcomer from a new group evicts from the largest.
        assert_eq!(
            s.admission(ip("8.8.8.8"), now),
            Admission::Evict(NetGroup::Ipv4([198, 51]))
        );
        let s2 = State::new(Policy::new().evict_when_full(false), Some(0));
        assert_eq!(
            s2.admission(ip("8.8.8.8"), now),
            Admission::Refuse(Refusal::InboundFull)
        );
    }

    /// Bans cover their subnet until they expire, and export with
    /// wall-clock times that restore.
    #[test]
    fn bans_expire_and_restore() {
        let now = Instant::now();
        let mut s = State::new(Policy::new(), None);
        s.ban(
            "203.0.113.0/24".parse().expect("net"),
            Duration::from_secs(60),
            "spam".into(),
            now,
        );
        assert!(s.banned(ip("203.0.113.9"), now).is_some());
        assert!(s.banned(ip("203.0.114.9"), now).is_none());
        assert!(
            s.banned(ip("203.0.113.9"), now + Duration::from_secs(61))
                .is_none()
        );
        let exported = s.bans(now);
        assert_eq!(exported.len(), 1);
        let mut t = State::new(Policy::new(), None);
        t.restore(exported, now);
        assert!(t.banned(ip("203.0.113.9"), now).is_some());
        assert!(t.unban("203.0.113.0/24".parse().expect("net")));
        assert!(t.banned(ip("203.0.113.9"), now).is_none());
    }
}
