//! The address manager at full size: what `add`, `select` and `good` cost
//! each, and how long saving and loading the whole table take.
//!
//! The table is filled from 4 000 source groups until its places are
//! nearly all taken (about 60 000 of 81 920 entries: the last places are
//! hard to reach, as in Core), with a quarter of it moved to tried.
//!
//! Run with: `cargo bench --bench addrman`
#![allow(missing_docs)]

use std::{
    hint::black_box,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Instant,
};

use connmgr::{
    addrman::{AddrMan, Source},
    policy::Host,
};
use criterion::{Criterion, criterion_group, criterion_main};

fn addr(i: u32) -> SocketAddr {
    // Spread over many /16s, away from unroutable ranges.
    let n = i.wrapping_mul(2_654_435_761);
    let a = 1 + (n >> 24) % 100;
    SocketAddr::new(
        IpAddr::V4(Ipv4Addr::from((a << 24) | (n & 0x00ff_ffff))),
        8333,
    )
}

fn source(i: u32) -> Source {
    Source::Peer(Host::ip(IpAddr::V4(Ipv4Addr::new(
        101 + (i % 100) as u8,
        (i / 100 % 256) as u8,
        0,
        1,
    ))))
}

fn full() -> (AddrMan<SocketAddr>, Vec<SocketAddr>) {
    let man = AddrMan::<SocketAddr>::seeded(42);
    let mut known = Vec::new();
    for i in 0..400_000u32 {
        let a = addr(i);
        if man.add([a], source(i % 4000)) > 0 {
            known.push(a);
        }
    }
    for a in known.iter().step_by(4) {
        man.good(a);
    }
    (man, known)
}

fn bench(c: &mut Criterion) {
    let _rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let (man, known) = full();
    let stats = man.stats();
    println!("full table: {} new, {} tried", stats.new, stats.tried);
    man.check().expect("invariants");

    let mut g = c.benchmark_group("addrman");
    let mut i = 1_000_000u32;
    g.bench_function("add", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(man.add([addr(i)], source(i % 4000)));
        })
    });
    g.bench_function("select", |b| b.iter(|| black_box(man.select())));
    let mut k = 0usize;
    g.bench_function("good", |b| {
        b.iter(|| {
            k = (k + 7) % known.len();
            black_box(man.good(&known[k]));
        })
    });
    g.finish();

    let dir = std::env::temp_dir().join(format!("connmgr-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("peers.dat");
    let t = Instant::now();
    man.save(&path, &[]).expect("save");
    let saved = t.elapsed();
    let size = std::fs::metadata(&path).map_or(0, |m| m.len());
    let t = Instant::now();
    let (back, _) = AddrMan::<SocketAddr>::load(&path, false).expect("load");
    let loaded = t.elapsed();
    println!(
        "save {:.1} ms, load {:.1} ms, {} entries, {} KiB",
        saved.as_secs_f64() * 1e3,
        loaded.as_secs_f64() * 1e3,
        back.len(),
        size / 1024
    );
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);
