//! An eclipse attack on the node's address table, in memory, on virtual
//! time (tokio's paused clock), deterministic for a seed. Shared by
//! `tests/eclipse.rs` (a small run that asserts the goal) and
//! `examples/eclipse.rs` (the full run and Heilman's curve).
//!
//! The story of one run:
//! 1. **A day among honest peers.** The node seeds 200 honest addresses
//!    from DNS, keeps 8 outbound connections (one per /16), and each
//!    outbound peer gossips 10 honest addresses every 10 minutes; one
//!    outbound peer is replaced every 10 minutes.
//! 2. **An hour of flooding.** The attacker's peers (one in each of its /16
//!    groups) connect inbound and each sends `flood` of its addresses per
//!    minute.
//! 3. **A restart.** The table is saved and loaded (the address manager
//!    through its file; the old book is kept as it was, which is generous
//!    to it: it has no file), and the node fills its 8 outbound slots anew,
//!    one per /16, each pick dialled (attacker addresses always answer,
//!    honest ones do).
//!
//! The attacker's share is the part of the 8 slots it holds after the
//! restart.

#![allow(dead_code, unreachable_pub)]

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use connmgr::{
    addrman::{AddrMan, Source},
    policy::Host,
    seed::AddressBook,
};

/// The sizes of one simulation.
#[derive(Clone, Copy, Debug)]
pub struct Params {
    /// Honest addresses, and the /16 groups they spread over.
    pub honest: u32,
    pub honest_groups: u32,
    /// Attacker addresses, and its /16 groups.
    pub attacker: u32,
    pub attacker_groups: u32,
    /// Addresses each attacker peer sends per minute.
    pub flood: u32,
    /// Minutes of flooding.
    pub minutes: u32,
}

impl Params {
    /// The goal: 4 096 attacker addresses in 32 groups, an hour.
    pub const GOAL: Self = Self {
        honest: 4000,
        honest_groups: 1000,
        attacker: 4096,
        attacker_groups: 32,
        flood: 1000,
        minutes: 60,
    };
}

/// Which table the node keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `seed::AddressBook`: first come, first served, by group.
    Book,
    /// `addrman::AddrMan`: Core's new and tried tables.
    AddrMan,
}

fn honest_addr(p: &Params, i: u32) -> SocketAddr {
    let g = i % p.honest_groups;
    // Groups 11.0 .. : routable, apart from the attacker's.
    let ip = Ipv4Addr::new(
        11 + (g / 256) as u8,
        (g % 256) as u8,
        (i / p.honest_groups) as u8,
        1,
    );
    SocketAddr::new(IpAddr::V4(ip), 8333)
}

fn attacker_addr(p: &Params, i: u32) -> SocketAddr {
    let g = i % p.attacker_groups;
    let n = i / p.attacker_groups;
    let ip = Ipv4Addr::new(99, g as u8, (n / 256) as u8, (n % 256) as u8);
    SocketAddr::new(IpAddr::V4(ip), 8333)
}

fn is_attacker(a: &SocketAddr) -> bool {
    matches!(a.ip(), IpAddr::V4(v4) if v4.octets()[0] == 99)
}

fn group(a: &SocketAddr) -> [u8; 2] {
    match a.ip() {
        IpAddr::V4(v4) => [v4.octets()[0], v4.octets()[1]],
        IpAddr::V6(_) => [0, 0],
    }
}

/// One table behind one interface.
enum Table {
    Book(AddressBook),
    Man(AddrMan<SocketAddr>),
}

impl Table {
    fn add(&self, addrs: Vec<SocketAddr>, source: Source) {
        match self {
            Self::Book(b) => {
                b.extend(addrs);
            }
            Self::Man(m) => {
                m.add(addrs, source);
            }
        }
    }

    fn pick(&self, used: &HashSet<[u8; 2]>) -> Option<SocketAddr> {
        match self {
            Self::Book(b) => b.pick(),
            Self::Man(m) => m.select_where(|a| !used.contains(&group(a))),
        }
    }

    fn connected(&self, a: &SocketAddr) {
        match self {
            Self::Book(b) => b.connected(a),
            Self::Man(m) => {
                m.good(a);
            }
        }
    }

    fn disconnected(&self, a: &SocketAddr) {
        match self {
            Self::Book(b) => b.disconnected(a),
            Self::Man(m) => m.connected(a),
        }
    }
}

/// Fills the outbound slots up to 8, one per group; returns them.
fn fill(table: &Table, slots: &mut Vec<SocketAddr>) {
    let mut used: HashSet<[u8; 2]> = slots.iter().map(group).collect();
    for _ in 0..2000 {
        if slots.len() >= 8 {
            return;
        }
        let Some(a) = table.pick(&used) else {
            return;
        };
        if used.contains(&group(&a)) || slots.contains(&a) {
            continue;
        }
        used.insert(group(&a));
        table.connected(&a);
        slots.push(a);
    }
}

/// One run: the attacker's share of the 8 slots after the restart.
pub async fn run(kind: Kind, p: &Params, seed: u64) -> f64 {
    let mut rng = fastrand::Rng::with_seed(seed);
    let table = match kind {
        Kind::Book => Table::Book(AddressBook::new().rng_seed(seed)),
        Kind::AddrMan => Table::Man(AddrMan::seeded(seed)),
    };
    let dns = Source::Seed(Host::name("seed.example.org"));
    table.add(
        (0..200)
            .map(|_| honest_addr(p, rng.u32(..p.honest)))
            .collect(),
        dns,
    );

    // A day among honest peers.
    let mut slots = Vec::new();
    for _ in 0..(24 * 6) {
        fill(&table, &mut slots);
        for peer in &slots {
            let gossip = (0..10)
                .map(|_| honest_addr(p, rng.u32(..p.honest)))
                .collect();
            table.add(gossip, Source::Peer(Host::ip(peer.ip())));
        }
        if !slots.is_empty() {
            let gone = slots.swap_remove(rng.usize(..slots.len()));
            table.disconnected(&gone);
        }
        tokio::time::advance(Duration::from_secs(600)).await;
    }

    // An hour of flooding from the attacker's own peers.
    for _ in 0..p.minutes {
        for g in 0..p.attacker_groups {
            let from = Source::Peer(Host::ip(IpAddr::V4(Ipv4Addr::new(99, g as u8, 255, 254))));
            let batch = (0..p.flood)
                .map(|_| attacker_addr(p, rng.u32(..p.attacker)))
                .collect();
            table.add(batch, from);
        }
        tokio::time::advance(Duration::from_secs(60)).await;
    }

    // The restart.
    let table = match table {
        Table::Man(m) => {
            let dir =
                std::env::temp_dir().join(format!("connmgr-eclipse-{}-{seed}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("dir");
            let path = dir.join("peers.dat");
            m.save(&path, &[]).expect("save");
            let (back, _) = AddrMan::<SocketAddr>::load(&path, false).expect("load");
            let _ = std::fs::remove_dir_all(&dir);
            Table::Man(back)
        }
        book => {
            for a in slots.drain(..) {
                book.disconnected(&a);
            }
            book
        }
    };
    let mut slots = Vec::new();
    fill(&table, &mut slots);
    let theirs = slots.iter().filter(|a| is_attacker(a)).count();
    theirs as f64 / slots.len().max(1) as f64
}

/// Many runs: how often the attacker holds all 8 slots, and its mean
/// share.
pub async fn many(kind: Kind, p: &Params, runs: u64) -> (u64, f64) {
    let (mut all, mut sum) = (0, 0.0);
    for seed in 0..runs {
        let share = run(kind, p, seed).await;
        if share >= 1.0 {
            all += 1;
        }
        sum += share;
    }
    (all, sum / runs as f64)
}
