//! The eclipse simulation (`tests/sim/eclipse.rs`) at full size: today's
//! `AddressBook` and the address manager in the same run, the attacker's
//! share of the 8 outbound slots after a day among honest peers, an hour of
//! flooding and a restart, over many seeds; then Heilman's curve, attacker
//! addresses against the probability of holding all 8 slots.
//!
//! Run with: `cargo run --release --example eclipse -- [runs]` (default
//! 1000; the curve uses a fifth as many per point). Everything is in
//! memory: no socket is opened.

#[path = "../tests/sim/eclipse.rs"]
mod eclipse;

use eclipse::{Kind, Layout, Params, many, many_with};

fn main() {
    let runs: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    rt.block_on(async {
        let p = Params::GOAL;
        println!(
            "honest {} addresses in {} groups; attacker {} in {} groups, {} per peer per minute for {} min; {runs} runs",
            p.honest, p.honest_groups, p.attacker, p.attacker_groups, p.flood, p.minutes
        );
        for kind in [Kind::Book, Kind::AddrMan] {
            let (all, mean) = many(kind, &p, runs).await;
            println!(
                "{kind:?}: attacker holds all 8 slots in {all} of {runs} runs ({:.1} %), mean share {mean:.3}",
                100.0 * all as f64 / runs as f64
            );
        }
        for layout in [Layout::Core, Layout::Anchors] {
            let (all, mean, block) = many_with(Kind::AddrMan, layout, &p, runs).await;
            println!(
                "AddrMan, {layout:?} layout (8 full-relay + 2 block-relay, feelers{}): eclipsed in {all} of {runs} runs ({:.1} %), mean share {mean:.3}, of the block-relay slots {block:.3}",
                if layout == Layout::Anchors { ", anchors" } else { "" },
                100.0 * all as f64 / runs as f64
            );
        }
        println!("curve (attacker addresses in 32 groups: P(all 8) book / addrman, mean share book / addrman):");
        let per_point = (runs / 5).max(10);
        for attacker in [256, 1024, 4096, 16384] {
            let p = Params { attacker, ..Params::GOAL };
            let (book_all, book_mean) = many(Kind::Book, &p, per_point).await;
            let (man_all, man_mean) = many(Kind::AddrMan, &p, per_point).await;
            println!(
                "  {attacker:>6}: {:.3} / {:.3}   {book_mean:.3} / {man_mean:.3}",
                book_all as f64 / per_point as f64,
                man_all as f64 / per_point as f64,
            );
        }
    });
}
