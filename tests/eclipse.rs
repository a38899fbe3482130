//! A small run of the eclipse simulation (`tests/sim/eclipse.rs`): after a
//! day among honest peers, an hour of flooding by 4 096 addresses in 32
//! groups and a restart, the attacker must not hold all 8 outbound slots.
//! The full run (1 000 seeds, and the curve) is `cargo run --release
//! --example eclipse`.

#[path = "sim/eclipse.rs"]
mod eclipse;

use eclipse::{Kind, Layout, Params, many, many_with};

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

/// The same attack on Core's layout (8 full-relay + 2 block-relay slots,
/// feelers), with and without anchors, in the same run. Anchors make the
/// restart worthless to the attacker: the block-relay peers of before the
/// flood are dialled first, so it holds none of the block-relay slots and
/// never every slot.
#[tokio::test(start_paused = true)]
async fn eclipse_simulation_with_classes_and_anchors() {
    let p = Params {
        flood: 200,
        ..Params::GOAL
    };
    // A stronger attacker too: four times the addresses.
    let strong = Params {
        attacker: 4 * p.attacker,
        ..p
    };
    for (name, p) in [("goal", p), ("strong", strong)] {
        let mut outcomes = Vec::new();
        for layout in [Layout::Plain, Layout::Core, Layout::Anchors] {
            let (all, mean, block) = many_with(Kind::AddrMan, layout, &p, 6).await;
            println!(
                "{name} {layout:?}: eclipsed in {all} of 6 runs, mean share {mean:.3}, of block-relay slots {block:.3}"
            );
            outcomes.push((all, mean, block));
        }
        let (all, mean, block) = outcomes[2];
        assert_eq!(all, 0, "{name}: eclipsed despite anchors");
        assert_eq!(block, 0.0, "{name}: the attacker holds an anchor's slot");
        assert!(mean <= 0.8, "{name}: {mean:.3}");
    }
}
