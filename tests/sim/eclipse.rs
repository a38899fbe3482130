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
//! The attacker's share is the part of the outbound slots it holds after
//! the restart.
//!
//! With [`Layout::Core`], the node keeps Bitcoin Core's layout as the
//! manager does with `Builder::core_layout`: 8 full-relay slots (which
//! gossip addresses) and 2 block-relay slots (which do not, and are not
//! replaced), and a feeler every 2 minutes on average that moves an
//! address of the new table that answers to tried (the attacker's answer
//! too). [`Layout::Anchors`] adds anchors: the block-relay peers at the
//! restart are saved with the table (`AddrMan::set_anchors`, through the
//! file) and dialled first after it.

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

/// Runs so far in this process: each saves in a directory of its own.
static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Which outbound layout the node keeps (with the address manager).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// 8 outbound slots, no feelers: the address-manager issue's node.
    Plain,
    /// 8 full-relay + 2 block-relay slots, feelers.
    Core,
    /// As `Core`, with the block-relay peers kept as anchors across the
    /// restart.
    Anchors,
}

impl Layout {
    fn block_relay(self) -> usize {
        if self == Self::Plain { 0 } else { 2 }
    }
}

/// The outcome of one run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Outcome {
    /// The attacker's part of all outbound slots after the restart.
    pub share: f64,
    /// Whether it holds every slot: the node is eclipsed.
    pub eclipsed: bool,
    /// Its part of the block-relay slots (0 without them).
    pub block_share: f64,
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

/// Fills `slots` up to `target`, one per group over every slot the node
/// holds (`others` too).
fn fill_to(table: &Table, slots: &mut Vec<SocketAddr>, others: &[SocketAddr], target: usize) {
    let mut used: HashSet<[u8; 2]> = slots.iter().chain(others).map(group).collect();
    for _ in 0..2000 {
        if slots.len() >= target {
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

fn fill(table: &Table, slots: &mut Vec<SocketAddr>) {
    fill_to(table, slots, &[], 8);
}

/// The feelers of `secs` seconds (one every 2 minutes on average): each
/// tests an address of the new table, which answers (honest and attacker
/// addresses alike) and moves to tried.
fn feelers(table: &Table, rng: &mut fastrand::Rng, secs: f64) {
    let Table::Man(m) = table else {
        return;
    };
    let mut t = -120.0 * (1.0 - rng.f64()).ln();
    while t < secs {
        if let Some(a) = m.select_new() {
            m.good(&a);
        }
        t += -120.0 * (1.0 - rng.f64()).ln();
    }
}

/// One run with a layout.
pub async fn run_with(kind: Kind, layout: Layout, p: &Params, seed: u64) -> Outcome {
    let mut rng = fastrand::Rng::with_seed(seed);
    let table = match kind {
        Kind::Book => Table::Book(AddressBook::new().rng_seed(seed)),
        Kind::AddrMan => Table::Man(AddrMan::seeded(seed)),
    };
    let with_feelers = layout != Layout::Plain;
    let dns = Source::Seed(Host::name("seed.example.org"));
    table.add(
        (0..200)
            .map(|_| honest_addr(p, rng.u32(..p.honest)))
            .collect(),
        dns,
    );

    // A day among honest peers. Block-relay peers gossip no addresses and
    // stay.
    let (mut slots, mut block) = (Vec::new(), Vec::new());
    for _ in 0..(24 * 6) {
        fill(&table, &mut slots);
        fill_to(&table, &mut block, &slots, layout.block_relay());
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
        if with_feelers {
            feelers(&table, &mut rng, 600.0);
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
        if with_feelers {
            feelers(&table, &mut rng, 60.0);
        }
        tokio::time::advance(Duration::from_secs(60)).await;
    }

    // The restart.
    let (table, anchors) = match table {
        Table::Man(m) => {
            if layout == Layout::Anchors {
                m.set_anchors(block.iter().copied());
            }
            let dir =
                // A directory of its own: runs of other tests go on at once.
                std::env::temp_dir().join(format!(
                    "connmgr-eclipse-{}-{seed}-{}",
                    std::process::id(),
                    RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                ));
            std::fs::create_dir_all(&dir).expect("dir");
            let path = dir.join("peers.dat");
            m.save(&path, &[]).expect("save");
            // The loaded table's randomness comes from `fastrand`: seeded,
            // so that a run repeats.
            fastrand::seed(seed);
            let (back, _) = AddrMan::<SocketAddr>::load(&path, false).expect("load");
            let _ = std::fs::remove_dir_all(&dir);
            let anchors = back.take_anchors();
            (Table::Man(back), anchors)
        }
        book => {
            for a in slots.drain(..) {
                book.disconnected(&a);
            }
            (book, Vec::new())
        }
    };
    // Anchors first (they answer: they were connected at the stop), then
    // the full-relay slots, then the block-relay slots left.
    let mut block: Vec<SocketAddr> = anchors;
    block.truncate(layout.block_relay());
    for a in &block {
        table.connected(a);
    }
    let mut slots = Vec::new();
    fill_to(&table, &mut slots, &block, 8);
    fill_to(&table, &mut block, &slots, layout.block_relay());
    let all: Vec<&SocketAddr> = slots.iter().chain(&block).collect();
    let theirs = all.iter().filter(|a| is_attacker(a)).count();
    let block_theirs = block.iter().filter(|a| is_attacker(a)).count();
    Outcome {
        share: theirs as f64 / all.len().max(1) as f64,
        eclipsed: !all.is_empty() && theirs == all.len(),
        block_share: block_theirs as f64 / block.len().max(1) as f64,
    }
}

/// Many runs: how often the attacker holds all 8 slots, and its mean
/// share.
pub async fn many(kind: Kind, p: &Params, runs: u64) -> (u64, f64) {
    let (all, mean, _) = many_with(kind, Layout::Plain, p, runs).await;
    (all, mean)
}

/// Many runs with a layout: how often the node is eclipsed, the
/// attacker's mean share of all slots, and of the block-relay slots.
pub async fn many_with(kind: Kind, layout: Layout, p: &Params, runs: u64) -> (u64, f64, f64) {
    let (mut all, mut sum, mut block) = (0, 0.0, 0.0);
    for seed in 0..runs {
        let o = run_with(kind, layout, p, seed).await;
        all += u64::from(o.eclipsed);
        sum += o.share;
        block += o.block_share;
    }
    (all, sum / runs as f64, block / runs as f64)
}
