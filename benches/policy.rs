//! What the peer policy costs per decision, with full tables.
//!
//! - `ban_lookup/may_dial_clean_ipv6` and `_ipv4`: the decision on an automatic candidate
//!   that no ban covers, with 100 000 manual bans (IPv4 /32s and /24s, IPv6
//!   /128s, /64s and /48s, and one ban at every prefix length so that a
//!   look-up probes them all) and a full discouragement table (50 000): the
//!   worst case, every table consulted.
//! - `ban_lookup/may_dial_banned`: the same for a banned candidate.
//! - `ban_lookup/connect_refused`: `Handle::connect` for a banned address
//!   on a running manager with the same 100 000 bans: the decision with the
//!   command's round trip to the manager task.
//!
//! Run with: `cargo bench --bench policy`
#![allow(missing_docs)]

use std::{
    hint::black_box,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use connmgr::{
    manager::ConnManager,
    policy::{Subnet, bench::PolicyTable},
};
use criterion::{Criterion, criterion_group, criterion_main};

const BANS: u32 = 100_000;
const HOUR: Duration = Duration::from_secs(3600);

/// 100 000 bans of mixed kinds and every prefix length in use.
fn bans() -> Vec<Subnet> {
    let mut out = Vec::with_capacity(BANS as usize);
    // Every prefix length, from the top of each space (away from the
    // candidates below).
    for p in 1..=32u8 {
        out.push(Subnet::new(IpAddr::V4(Ipv4Addr::BROADCAST), p).expect("v4"));
    }
    for p in 1..=128u8 {
        out.push(Subnet::new(IpAddr::V6(Ipv6Addr::from(u128::MAX)), p).expect("v6"));
    }
    out.push(Subnet::from(IpAddr::V4(Ipv4Addr::new(1, 2, 3, 4))));
    let mut i = 0u32;
    while out.len() < BANS as usize {
        let n = i.wrapping_mul(2_654_435_761);
        let subnet = match i % 5 {
            0 | 1 => Subnet::from(IpAddr::V4(Ipv4Addr::from(n | 0x0100_0000))),
            2 => Subnet::new(IpAddr::V4(Ipv4Addr::from(n)), 24).expect("/24"),
            3 => Subnet::from(IpAddr::V6(Ipv6Addr::from(
                (u128::from(n) << 64) | 0x2a01 << 112,
            ))),
            _ => Subnet::new(
                IpAddr::V6(Ipv6Addr::from(u128::from(n) << 80 | 0x2a02 << 112)),
                48,
            )
            .expect("/48"),
        };
        out.push(subnet);
        i += 1;
    }
    out
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    let mut table = PolicyTable::new(connmgr::policy::Policy::new());
    let all = bans();
    let banned_addr = SocketAddr::from((Ipv4Addr::new(1, 2, 3, 4), 8333));
    for subnet in &all {
        assert!(table.ban(*subnet, HOUR), "room for {subnet}");
    }
    for i in 0..50_000u32 {
        table.discourage(IpAddr::V4(Ipv4Addr::from(0x0500_0000 + i)));
    }
    let clean = SocketAddr::new(
        IpAddr::V6(Ipv6Addr::new(0x2001, 0x4860, 0x4860, 0, 0, 0, 0, 0x8888)),
        8333,
    );
    let clean_v4 = SocketAddr::from((Ipv4Addr::new(8, 8, 4, 4), 8333));
    assert!(table.may_dial(&clean) && table.may_dial(&clean_v4));
    assert!(!table.may_dial(&banned_addr));

    let mut g = c.benchmark_group("ban_lookup");
    g.bench_function("may_dial_clean_ipv6", |b| {
        b.iter(|| black_box(table.may_dial(black_box(&clean))))
    });
    g.bench_function("may_dial_clean_ipv4", |b| {
        b.iter(|| black_box(table.may_dial(black_box(&clean_v4))))
    });
    g.bench_function("may_dial_banned", |b| {
        b.iter(|| black_box(table.may_dial(black_box(&banned_addr))))
    });

    let handle = rt.block_on(async {
        let handle = ConnManager::builder().start().expect("start");
        for subnet in &all {
            handle.ban(*subnet, HOUR, "").await.expect("ban");
        }
        handle
    });
    g.bench_function("connect_refused", |b| {
        b.to_async(&rt).iter(|| async {
            black_box(handle.connect(banned_addr).await.is_err());
        })
    });
    g.finish();
    rt.block_on(handle.stop());
}

criterion_group!(benches, bench);
criterion_main!(benches);
