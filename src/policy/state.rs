//! The policy's bookkeeping, owned by the manager task: who is connected
//! from and to where, who is banned or discouraged. Pure data and
//! functions.

use std::{
    collections::{HashMap, hash_map::RandomState},
    hash::BuildHasherDefault,
    hash::{BuildHasher, Hash},
    net::IpAddr,
    time::{Duration, SystemTime},
};

use tokio::time::Instant;

use super::{
    Ban, Host, NetGroup, Network, PeerAddr, Permissions, Policy, Refusal, Subnet,
    ban::{BanList, Discouraged, FAR},
    canonical, is_routable,
    netgroup::{ip_network, unmap},
};

/// Where an inbound peer came in: the network its listener says its peers
/// come from, if any, and the listener's permissions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Origin {
    pub(crate) network: Option<Network>,
    pub(crate) permissions: Permissions,
}

/// What a peer is to the policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Peer {
    pub(crate) host: Host,
    pub(crate) network: Network,
    pub(crate) group: NetGroup,
    /// Whether it has a host of its own: not the peer of a listener that
    /// says its peers come from elsewhere (they all share its address).
    pub(crate) identified: bool,
}

/// What an entry counts for in the policy, given back when it ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Place {
    /// An outbound request: in the duplicate map; its netgroup `counted` if
    /// it is automatic and its group counts for diversity.
    Outbound { counted: bool },
    /// An inbound connection from `ip`, through a listener of `origin`.
    /// (Its group is derived again when it ends: it keeps the entry small.)
    Inbound { ip: IpAddr, origin: Origin },
}

/// What to do with an inbound peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    Admit,
    /// Admit after evicting someone (see `eviction`).
    Evict,
    Refuse(Refusal),
}

/// What makes two outbound requests duplicates: the host for routable and
/// non-IP peers (an IP with any embedded IPv4 address taken out), the IP
/// and port for local peers (many share 127.0.0.1), and the whole address
/// for named ones and for local ones of an address type without ports.
#[derive(Debug, PartialEq, Eq, Hash)]
enum Key<A> {
    Host(Host),
    Local(IpAddr, u16),
    Addr(A),
}

/// The hasher of keys that are keyed digests already: it passes them on.
#[derive(Debug, Default)]
struct Digested(u64);

impl std::hash::Hasher for Digested {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used; anything else is folded in.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// The host as one machine: an IP address with an embedded IPv4 address
/// (mapped, 6to4, Teredo, NAT64) is that IPv4 address. Duplicates, the
/// per-IP limit and discouragement use it, so that no form of an address
/// gets around them.
fn identity(host: Host) -> Host {
    match host {
        Host::Ip(ip) => Host::Ip(canonical(ip)),
        other => other,
    }
}

/// An outbound request the policy allows, ready to be counted.
#[derive(Debug)]
pub(crate) struct Checked {
    key: u64,
    /// The group it counts in for diversity, if it does.
    group: Option<NetGroup>,
}

#[derive(Debug)]
pub(crate) struct PolicyState<A, Id> {
    policy: Policy,
    max_inbound: Option<usize>,
    inbound_per_group: usize,
    /// Outbound requests by the keyed digest of their [`Key`]: 16 bytes
    /// an entry whatever the address type. Two keys share a digest with
    /// odds of 2^-64 a pair, under a secret no peer knows.
    outbound: HashMap<u64, Id, BuildHasherDefault<Digested>>,
    auto_groups: HashMap<NetGroup, usize>,
    inbound: usize,
    /// Inbound peers on IPv4 and IPv6, by IP and by group.
    inbound_ips: HashMap<IpAddr, usize>,
    inbound_groups: HashMap<NetGroup, usize>,
    bans: BanList,
    discouraged: Discouraged,
    /// The secret of keyed netgroups (eviction) and of outbound keys.
    keys: RandomState,
    addr: std::marker::PhantomData<fn(&A)>,
}

impl<A: PeerAddr + Eq + Hash + Clone, Id: Copy + Eq> PolicyState<A, Id> {
    pub(crate) fn new(policy: Policy, max_inbound: Option<usize>) -> Self {
        let inbound_per_group = policy
            .max_inbound_per_netgroup
            .unwrap_or_else(|| max_inbound.map_or(usize::MAX, |m| (m / 8).max(1)));
        Self {
            bans: BanList::new(policy.max_bans),
            discouraged: Discouraged::new(policy.max_discouraged),
            policy,
            max_inbound,
            inbound_per_group,
            outbound: HashMap::default(),
            auto_groups: HashMap::new(),
            inbound: 0,
            inbound_ips: HashMap::new(),
            inbound_groups: HashMap::new(),
            keys: RandomState::new(),
            addr: std::marker::PhantomData,
        }
    }

    pub(crate) fn policy(&self) -> &Policy {
        &self.policy
    }

    // ===== classification =====

    /// The network and group of `host`, with the policy's routable
    /// subnets.
    pub(crate) fn classify(&self, host: Host) -> Peer {
        match host {
            Host::Ip(ip) => {
                let ip = unmap(ip);
                let routable =
                    is_routable(ip) || self.policy.routable.iter().any(|n| n.contains(ip));
                Peer {
                    host: Host::Ip(ip),
                    network: ip_network(ip, routable),
                    group: if routable {
                        NetGroup::routable(ip)
                    } else {
                        NetGroup::Local
                    },
                    identified: true,
                }
            }
            other => Peer {
                host: other,
                network: other.network(),
                group: other.netgroup(),
                identified: true,
            },
        }
    }

    /// An inbound peer from `ip` through a listener of `origin`.
    pub(crate) fn inbound_peer(&self, ip: IpAddr, origin: Origin) -> Peer {
        match origin.network {
            Some(network) => Peer {
                host: Host::ip(ip),
                network,
                group: NetGroup::Inbound(network),
                identified: false,
            },
            None => self.classify(Host::ip(ip)),
        }
    }

    /// The permissions of `peer`: its listener's, and those of every
    /// whitelisted subnet it is in.
    pub(crate) fn permissions(&self, peer: &Peer, listener: Permissions) -> Permissions {
        self.policy
            .whitelist
            .iter()
            .filter(|(net, _)| peer.identified && net.contains_host(peer.host))
            .fold(listener, |p, (_, q)| p | *q)
    }

    /// The group hashed with this manager's secret.
    pub(crate) fn keyed_group(&self, group: NetGroup) -> u64 {
        self.keys.hash_one(group)
    }

    /// The keyed digest of what makes `addr` a duplicate.
    fn key(&self, addr: &A, peer: &Peer) -> u64 {
        match (peer.network, peer.host, addr.port()) {
            (Network::Local, Host::Ip(ip), Some(port)) => {
                self.keys.hash_one(Key::<&A>::Local(ip, port))
            }
            (Network::Local | Network::Name, ..) => self.keys.hash_one(Key::Addr(addr)),
            _ => self.keys.hash_one(Key::<&A>::Host(identity(peer.host))),
        }
    }

    // ===== outbound =====

    /// The outbound request that makes `addr` a duplicate, if any.
    pub(crate) fn outbound_to(&self, addr: &A) -> Option<Id> {
        let peer = self.classify(addr.host());
        self.outbound.get(&self.key(addr, &peer)).copied()
    }

    /// Whether an inbound peer holds the host of `addr` (routable hosts
    /// only: local peers share addresses).
    pub(crate) fn inbound_from(&self, addr: &A) -> Option<IpAddr> {
        let peer = self.classify(addr.host());
        self.inbound_holds(&peer)
    }

    fn inbound_holds(&self, peer: &Peer) -> Option<IpAddr> {
        let ip = canonical(peer.host.as_ip()?);
        (peer.group.counts_for_diversity() && self.inbound_ips.contains_key(&ip)).then_some(ip)
    }

    /// Whether `addr` may be dialed: not a duplicate (in either direction),
    /// not banned, and for an automatic dial not discouraged and not in a
    /// full netgroup.
    pub(crate) fn may_dial(&self, addr: &A, automatic: bool, now: Instant) -> Result<(), Refusal> {
        self.check_dial(addr, automatic, now).map(drop)
    }

    /// [`may_dial`](Self::may_dial), with what [`add_checked`](Self::add_checked)
    /// needs to count the request without classifying `addr` again.
    pub(crate) fn check_dial(
        &self,
        addr: &A,
        automatic: bool,
        now: Instant,
    ) -> Result<Checked, Refusal> {
        let peer = self.classify(addr.host());
        let key = self.key(addr, &peer);
        if self.outbound.contains_key(&key) || self.inbound_holds(&peer).is_some() {
            return Err(Refusal::Duplicate);
        }
        if self.bans.find(peer.host, now).is_some() {
            return Err(Refusal::Banned);
        }
        let counted = automatic && peer.group.counts_for_diversity();
        if automatic {
            if self.discouraged.contains(identity(peer.host), now) {
                return Err(Refusal::Discouraged);
            }
            if counted {
                let n = self.auto_groups.get(&peer.group).copied().unwrap_or(0);
                if n >= self.policy.max_outbound_per_netgroup {
                    return Err(Refusal::NetgroupFull);
                }
            }
        }
        Ok(Checked {
            key,
            group: counted.then_some(peer.group),
        })
    }

    /// Counts a new outbound request (checked with [`may_dial`](Self::may_dial)).
    pub(crate) fn add_outbound(&mut self, addr: &A, id: Id, automatic: bool) -> Place {
        let peer = self.classify(addr.host());
        let checked = Checked {
            key: self.key(addr, &peer),
            group: (automatic && peer.group.counts_for_diversity()).then_some(peer.group),
        };
        self.add_checked(checked, id)
    }

    /// Counts a new outbound request checked by [`check_dial`](Self::check_dial),
    /// with nothing changed in between.
    pub(crate) fn add_checked(&mut self, checked: Checked, id: Id) -> Place {
        self.outbound.insert(checked.key, id);
        if let Some(group) = checked.group {
            *self.auto_groups.entry(group).or_insert(0) += 1;
        }
        Place::Outbound {
            counted: checked.group.is_some(),
        }
    }

    /// An automatic request becomes an explicit one: its group no longer
    /// counts for diversity.
    pub(crate) fn upgrade(&mut self, addr: &A, place: Place) -> Place {
        if place == (Place::Outbound { counted: true }) {
            let peer = self.classify(addr.host());
            down(&mut self.auto_groups, peer.group);
        }
        match place {
            Place::Outbound { .. } => Place::Outbound { counted: false },
            inbound => inbound,
        }
    }

    // ===== inbound =====

    /// Whether a peer from `ip`, through a listener of `origin`, may come
    /// in now.
    pub(crate) fn admission(&self, ip: IpAddr, origin: Origin, now: Instant) -> Admission {
        let peer = self.inbound_peer(ip, origin);
        let noban = self
            .permissions(&peer, origin.permissions)
            .contains(Permissions::NOBAN);
        if peer.identified && !noban {
            if self.bans.find(peer.host, now).is_some() {
                return Admission::Refuse(Refusal::Banned);
            }
            if self.discouraged.contains(identity(peer.host), now) {
                return Admission::Refuse(Refusal::Discouraged);
            }
        }
        if peer.group.counts_for_diversity() {
            let ip = canonical(ip);
            if self.inbound_ips.get(&ip).copied().unwrap_or(0) >= self.policy.max_inbound_per_ip {
                return Admission::Refuse(Refusal::IpFull);
            }
            if self.inbound_groups.get(&peer.group).copied().unwrap_or(0) >= self.inbound_per_group
            {
                return Admission::Refuse(Refusal::NetgroupFull);
            }
        }
        if self.max_inbound.is_none_or(|max| self.inbound < max) {
            Admission::Admit
        } else if self.policy.evict_when_full {
            Admission::Evict
        } else {
            Admission::Refuse(Refusal::InboundFull)
        }
    }

    /// Counts an admitted inbound connection.
    pub(crate) fn add_inbound(&mut self, ip: IpAddr, origin: Origin) -> Place {
        self.inbound += 1;
        let peer = self.inbound_peer(ip, origin);
        if peer.group.counts_for_diversity() {
            *self.inbound_ips.entry(canonical(ip)).or_insert(0) += 1;
            *self.inbound_groups.entry(peer.group).or_insert(0) += 1;
        }
        Place::Inbound { ip, origin }
    }

    /// Gives back what an entry counted for.
    pub(crate) fn remove(&mut self, addr: &A, id: Id, place: Place) {
        match place {
            Place::Outbound { counted } => {
                let peer = self.classify(addr.host());
                let key = self.key(addr, &peer);
                if self.outbound.get(&key) == Some(&id) {
                    self.outbound.remove(&key);
                }
                if counted {
                    down(&mut self.auto_groups, peer.group);
                }
            }
            Place::Inbound { ip, origin } => {
                self.inbound = self.inbound.saturating_sub(1);
                let peer = self.inbound_peer(ip, origin);
                if peer.group.counts_for_diversity() {
                    down(&mut self.inbound_ips, canonical(ip));
                    down(&mut self.inbound_groups, peer.group);
                }
            }
        }
    }

    // ===== bans and discouragement =====

    /// The ban covering `host`, if one is in force.
    pub(crate) fn banned(&self, host: Host, now: Instant) -> Option<Subnet> {
        self.bans.find(host, now)
    }

    /// Bans `subnet` for `duration` (replacing an earlier ban of it).
    ///
    /// Returns the limit when the list is full.
    pub(crate) fn ban(
        &mut self,
        subnet: Subnet,
        duration: Duration,
        reason: String,
        now: Instant,
    ) -> Result<(), usize> {
        self.bans.insert(subnet, duration, reason, now)
    }

    /// Lifts the ban of exactly `subnet`; whether there was one.
    pub(crate) fn unban(&mut self, subnet: Subnet) -> bool {
        self.bans.remove(subnet)
    }

    /// The bans in force, with wall-clock expiry times.
    pub(crate) fn bans(&self, now: Instant) -> Vec<Ban> {
        self.bans.export(now)
    }

    /// How many bans are kept.
    #[cfg(test)]
    pub(crate) fn ban_count(&self) -> usize {
        self.bans.len()
    }

    /// Restores exported bans; expired ones are dropped, and so are those
    /// past the limit (logged).
    pub(crate) fn restore(&mut self, bans: Vec<Ban>, now: Instant) {
        let wall = SystemTime::now();
        for ban in bans {
            if let Ok(left) = ban.until.duration_since(wall) {
                if self.ban(ban.subnet, left, ban.reason, now).is_err() {
                    tracing::warn!(subnet = %ban.subnet, "ban list full: ban not restored");
                }
            }
        }
    }

    /// Discourages `host` for the policy's ban duration.
    pub(crate) fn discourage(&mut self, host: Host, now: Instant) {
        let until = now
            .checked_add(self.policy.ban_duration)
            .unwrap_or(now + FAR);
        self.discouraged.insert(identity(host), until, now);
    }

    /// Whether `host` is discouraged.
    #[cfg(test)]
    pub(crate) fn is_discouraged(&self, host: Host, now: Instant) -> bool {
        self.discouraged.contains(identity(host), now)
    }

    /// How many hosts are discouraged (some may have expired).
    pub(crate) fn discouraged_count(&self) -> usize {
        self.discouraged.len()
    }
}

fn down<K: Hash + Eq>(map: &mut HashMap<K, usize>, key: K) {
    if let Some(n) = map.get_mut(&key) {
        *n -= 1;
        if *n == 0 {
            map.remove(&key);
        }
    }
}

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

    const PLAIN: Origin = Origin {
        network: None,
        permissions: Permissions::NONE,
    };

    /// Duplicates name the existing request and count by IP for routable
    /// hosts; automatic dials are limited per IPv4/IPv6 netgroup; local
    /// peers are keyed by their whole address and not limited by group.
    #[test]
    fn outbound_rules() {
        let now = Instant::now();
        let mut s = State::new(Policy::new(), Some(117));
        let a = sa("8.8.4.4:8333");
        assert_eq!(s.may_dial(&a, true, now), Ok(()));
        let place = s.add_outbound(&a, 1, true);
        assert_eq!(s.may_dial(&a, false, now), Err(Refusal::Duplicate));
        assert_eq!(
            s.may_dial(&sa("[::ffff:8.8.4.4]:9999"), false, now),
            Err(Refusal::Duplicate),
            "same IP, mapped, other port"
        );
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
        s.remove(&a, 1, place);
        assert_eq!(s.may_dial(&same_group, true, now), Ok(()));

        let local = sa("127.0.0.1:1");
        s.add_outbound(&local, 2, true);
        assert_eq!(s.may_dial(&local, true, now), Err(Refusal::Duplicate));
        assert_eq!(
            s.may_dial(&sa("127.0.0.1:2"), true, now),
            Ok(()),
            "local: the port counts"
        );
        let mut routable = State::new(
            Policy::new().treat_as_routable("127.0.0.0/8".parse().expect("net")),
            None,
        );
        routable.add_outbound(&local, 2, true);
        assert_eq!(
            routable.may_dial(&sa("127.0.0.1:2"), true, now),
            Err(Refusal::Duplicate)
        );
        assert_eq!(
            routable.may_dial(&sa("127.0.9.9:2"), true, now),
            Err(Refusal::NetgroupFull)
        );
    }

    /// Per-IP and per-group limits for routable peers; none for local ones,
    /// which are still counted against `max_inbound`.
    #[test]
    fn inbound_rules() {
        let now = Instant::now();
        let policy = Policy::new().max_inbound_per_netgroup(Some(3));
        let mut s = State::new(policy, Some(5));
        assert_eq!(s.admission(ip("198.51.1.1"), PLAIN, now), Admission::Admit);
        s.add_inbound(ip("198.51.1.1"), PLAIN);
        assert_eq!(
            s.admission(ip("198.51.1.1"), PLAIN, now),
            Admission::Refuse(Refusal::IpFull)
        );
        s.add_inbound(ip("198.51.1.2"), PLAIN);
        s.add_inbound(ip("198.51.1.3"), PLAIN);
        assert_eq!(
            s.admission(ip("198.51.1.4"), PLAIN, now),
            Admission::Refuse(Refusal::NetgroupFull)
        );
        assert_eq!(s.admission(ip("127.0.0.1"), PLAIN, now), Admission::Admit);
        s.add_inbound(ip("127.0.0.1"), PLAIN);
        s.add_inbound(ip("127.0.0.1"), PLAIN);
        // Full: a newcomer makes someone go.
        assert_eq!(s.admission(ip("8.8.8.8"), PLAIN, now), Admission::Evict);
        let s2 = State::new(Policy::new().evict_when_full(false), Some(0));
        assert_eq!(
            s2.admission(ip("8.8.8.8"), PLAIN, now),
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
        )
        .expect("room");
        let host = |s: &str| Host::ip(ip(s));
        assert!(s.banned(host("203.0.113.9"), now).is_some());
        assert!(s.banned(host("203.0.114.9"), now).is_none());
        assert!(
            s.banned(host("203.0.113.9"), now + Duration::from_secs(61))
                .is_none()
        );
        let exported = s.bans(now);
        assert_eq!(exported.len(), 1);
        let mut t = State::new(Policy::new(), None);
        t.restore(exported, now);
        assert!(t.banned(host("203.0.113.9"), now).is_some());
        assert!(t.unban("203.0.113.0/24".parse().expect("net")));
        assert!(t.banned(host("203.0.113.9"), now).is_none());
    }

    /// The ban list is bounded; expired bans make room.
    #[test]
    fn ban_list_bounded() {
        let now = Instant::now();
        let mut s = State::new(Policy::new().max_bans(2), None);
        let net = |i: u8| Subnet::from(IpAddr::from([8, 8, 8, i]));
        let short = Duration::from_secs(1);
        s.ban(net(1), short, String::new(), now).expect("1");
        s.ban(net(2), Duration::from_secs(60), String::new(), now)
            .expect("2");
        assert_eq!(s.ban(net(3), short, String::new(), now), Err(2));
        s.ban(net(2), short, "again".into(), now)
            .expect("replacing is not adding");
        let later = now + Duration::from_secs(2);
        s.ban(net(3), short, String::new(), later)
            .expect("expired ones make room");
        assert_eq!(s.ban_count(), 1);
    }

    /// Discouragement is bounded: the oldest goes first.
    #[test]
    fn discouragement_bounded() {
        let now = Instant::now();
        let mut s = State::new(Policy::new().max_discouraged(3), None);
        let host = |i: u8| Host::ip(IpAddr::from([8, 8, 8, i]));
        for i in 0..10 {
            s.discourage(host(i), now);
        }
        assert!(s.discouraged_count() <= 3);
        assert!(s.is_discouraged(host(9), now));
        assert!(!s.is_discouraged(host(0), now));
        assert!(!s.is_discouraged(host(9), now + DEFAULT_DAY + Duration::from_secs(1)));
    }

    const DEFAULT_DAY: Duration = super::super::DEFAULT_BAN_DURATION;
}
