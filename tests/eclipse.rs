//! A small run of the eclipse simulation (`tests/sim/eclipse.rs`): after a
//! day among honest peers, an hour of flooding by 4 096 addresses in 32
//! groups and a restart, the attacker must not hold all 8 outbound slots.
//! The full run (1 000 seeds, and the curve) is `cargo run --release
//! --example eclipse`.

#[path = "sim/eclipse.rs"]
mod eclipse;

use eclipse::{Kind, Params, many};

/// The goal on a small run: the attacker holds all 8 slots in none of the
/// runs, and a minority of them on average.
#[tokio::test(start_paused = true)]
async fn eclipse_simulation_attacker_share() {
    let p = Params {
        flood: 200,
        ..Params::GOAL
    };
    let (all, mean) = many(Kind::AddrMan, &p, 10).await;
    println!("addrman: all 8 slots in {all} of 10 runs, mean share {mean:.3}");
    assert_eq!(all, 0, "the attacker took all 8 slots");
    assert!(mean < 0.5, "mean attacker share {mean:.3}");
}
