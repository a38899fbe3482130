//! Which inbound peer to evict when every inbound slot is taken, after
//! Bitcoin Core's `SelectNodeToEvict` (`src/node/eviction.cpp`).
//!
//! | step | Core | here |
//! |---|---|---|
//! | candidates | inbound, not `noban`, not disconnecting | inbound, not [`NOBAN`](super::Permissions::NOBAN) |
//! | 1 | protect 4 by keyed netgroup | the same (a random key per manager) |
//! | 2 | protect 8 with the lowest ping | the same, among the peers with a ping from [`Report::Ping`](crate::manager::Report::Ping) |
//! | 3 | protect 4 that last sent a new transaction | the same, among the peers reported by [`Report::Transaction`](crate::manager::Report::Transaction) |
//! | 4 | protect up to 8 block-relay-only peers that sent blocks | not kept: the manager has no connection classes yet |
//! | 5 | protect 4 that last sent a new block | the same, among the peers reported by [`Report::Block`](crate::manager::Report::Block) |
//! | 6 | protect half the rest by uptime, up to a quarter of all for onion, local, I2P and CJDNS peers | the same |
//! | 7 | evict the youngest of the group with the most peers (ties: the group with the youngest member) | the same |
//! | result | none when every candidate is protected | someone, always (below) |
//!
//! Core can end with no one to evict when it has few inbound peers (fewer
//! than about 30, all protected) and then refuses the newcomer: a small
//! node's slots can then be held for ever by whoever came first. Here, when
//! every candidate is protected, the protections are lifted again, the
//! weakest first: those by uptime, then those by keyed netgroup (which a
//! peer got by chance) that have no report, then all the others (by block,
//! transaction and ping, which a peer earned). Step 7 then runs on the first set that is not empty, so a full
//! node always makes room, as its docs promise.

use std::time::Duration;

use tokio::time::Instant;

use super::Network;

/// What eviction knows of one inbound peer.
#[derive(Clone, Debug)]
pub(crate) struct Candidate<Id> {
    pub(crate) id: Id,
    pub(crate) connected: Instant,
    /// The netgroup, hashed with the manager's secret key.
    pub(crate) keyed_group: u64,
    pub(crate) network: Network,
    pub(crate) min_ping: Option<Duration>,
    pub(crate) last_block: Option<Instant>,
    pub(crate) last_tx: Option<Instant>,
}

/// Sorts by `key` ascending and protects (moves to `into`) up to `k` of
/// the last ones that are `eligible` (Core's `EraseLastKElements`). Linear
/// after the sort, so that a flood of newcomers into a large `max_inbound`
/// costs each eviction O(n log n).
fn protect<Id, K: Ord>(
    c: &mut Vec<Candidate<Id>>,
    into: &mut Vec<Candidate<Id>>,
    k: usize,
    key: impl Fn(&Candidate<Id>) -> K,
    eligible: impl Fn(&Candidate<Id>) -> bool,
) -> usize {
    if k == 0 {
        return 0;
    }
    c.sort_by_key(|n| key(n));
    let mut chosen = vec![false; c.len()];
    let mut protected = 0;
    for (i, n) in c.iter().enumerate().rev() {
        if protected == k {
            break;
        }
        if eligible(n) {
            chosen[i] = true;
            protected += 1;
        }
    }
    let mut i = 0;
    let (kept, moved): (Vec<_>, Vec<_>) = std::mem::take(c).into_iter().partition(|_| {
        i += 1;
        !chosen[i - 1]
    });
    *c = kept;
    into.extend(moved);
    protected
}

/// The peer to evict, or `None` without candidates.
pub(crate) fn select<Id: Copy + Ord>(mut c: Vec<Candidate<Id>>) -> Option<Id> {
    let all = |_: &Candidate<Id>| true;
    let (mut keyed, mut ping, mut tx, mut block, mut uptime) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // Deterministic for the node, unpredictable for an attacker.
    protect(&mut c, &mut keyed, 4, |n| (n.keyed_group, n.id), all);
    // Only what the application reported protects: a peer without a
    // report is never protected by a tie.
    protect(
        &mut c,
        &mut ping,
        8,
        |n| (std::cmp::Reverse(n.min_ping), n.id),
        |n| n.min_ping.is_some(),
    );
    protect(
        &mut c,
        &mut tx,
        4,
        |n| (n.last_tx, n.id),
        |n| n.last_tx.is_some(),
    );
    protect(
        &mut c,
        &mut block,
        4,
        |n| (n.last_block, n.id),
        |n| n.last_block.is_some(),
    );
    protect_by_ratio(&mut c, &mut uptime);
    // Everyone protected: lift the weakest protection that held someone.
    // A peer protected by chance (keyed netgroup) that also has a report
    // keeps its protection as long as a reported peer does.
    let (reported, unreported): (Vec<_>, Vec<_>) = keyed
        .into_iter()
        .partition(|n| n.min_ping.is_some() || n.last_tx.is_some() || n.last_block.is_some());
    let earned = [reported, block, tx, ping].concat();
    let c = [c, uptime, unreported, earned]
        .into_iter()
        .find(|set| !set.is_empty())?;
    youngest_of_largest_group(c)
}

/// Core's last step: the youngest member of the group with the most
/// candidates; among equals, of the group whose youngest member is
/// youngest.
fn youngest_of_largest_group<Id: Copy + Ord>(mut c: Vec<Candidate<Id>>) -> Option<Id> {
    c.sort_by_key(|n| std::cmp::Reverse((n.connected, n.id)));
    // (group, count, index of its youngest member)
    let mut groups: Vec<(u64, usize, usize)> = Vec::new();
    for (i, n) in c.iter().enumerate() {
        match groups.iter_mut().find(|g| g.0 == n.keyed_group) {
            Some(g) => g.1 += 1,
            None => groups.push((n.keyed_group, 1, i)),
        }
    }
    groups
        .iter()
        .max_by(|a, b| a.1.cmp(&b.1).then(b.2.cmp(&a.2)))
        .map(|&(_, _, youngest)| c[youngest].id)
}

/// Core's `ProtectEvictionCandidatesByRatio`: protects half of the
/// candidates by uptime, keeping up to half of those places (a quarter of
/// the candidates) for onion, local, I2P and CJDNS peers, the networks
/// with fewer peers first.
fn protect_by_ratio<Id: Copy + Ord>(c: &mut Vec<Candidate<Id>>, into: &mut Vec<Candidate<Id>>) {
    let total = c.len() / 2;
    let max_by_network = total / 2;
    let mut nets: Vec<(Network, usize)> =
        [Network::Cjdns, Network::I2p, Network::Local, Network::Onion]
            .into_iter()
            .map(|net| (net, c.iter().filter(|n| n.network == net).count()))
            .collect();
    nets.sort_by_key(|&(_, count)| count);
    let mut protected = 0;
    while protected < max_by_network {
        let with_peers = nets.iter().filter(|(_, n)| *n > 0).count();
        if with_peers == 0 {
            break;
        }
        let per_network = ((max_by_network - protected) / with_peers).max(1);
        let mut any = false;
        for (net, count) in nets.iter_mut().filter(|(_, n)| *n > 0) {
            let net = *net;
            // Oldest last, so the longest-connected are protected.
            let done = protect(
                c,
                into,
                per_network.min(max_by_network - protected),
                |n| (n.network == net, std::cmp::Reverse(n.connected)),
                |n| n.network == net,
            );
            if done > 0 {
                any = true;
                protected += done;
                *count -= done;
                if protected >= max_by_network {
                    break;
                }
            }
        }
        if !any {
            break;
        }
    }
    let rest = total.saturating_sub(protected);
    protect(
        c,
        into,
        rest,
        |n| (std::cmp::Reverse(n.connected), std::cmp::Reverse(n.id)),
        |_| true,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(
        id: u64,
        connected: u64,
        group: u64,
        network: Network,
        base: Instant,
    ) -> Candidate<u64> {
        Candidate {
            id,
            connected: base + Duration::from_secs(connected),
            keyed_group: group,
            network,
            min_ping: None,
            last_block: None,
            last_tx: None,
        }
    }

    /// One peer in each of 40 groups: someone is still evicted, and it is
    /// never one of the oldest half.
    #[test]
    fn forty_groups_still_evict() {
        let base = Instant::now();
        let c: Vec<_> = (0..40)
            .map(|i| peer(i, i, 1000 + i, Network::Ipv4, base))
            .collect();
        let victim = select(c).expect("someone is evicted");
        assert!(victim >= 20, "the oldest half is protected: {victim}");
    }

    /// A few peers, all of whom Core would protect: still one evicted, the
    /// youngest of the largest group.
    #[test]
    fn small_sets_always_evict() {
        let base = Instant::now();
        for n in 1..40 {
            let mut c: Vec<_> = (0..n)
                .map(|i| peer(i, i, 1000 + i, Network::Ipv4, base))
                .collect();
            c.push(peer(100, 0, 7, Network::Ipv4, base));
            c.push(peer(101, 1, 7, Network::Ipv4, base));
            let victim = select(c).expect("someone is evicted");
            if n + 2 <= 4 {
                assert_eq!(victim, 101, "{n} candidates");
            }
        }
        assert_eq!(select(Vec::<Candidate<u64>>::new()), None);
    }

    /// Reported peers are the last to lose their protection.
    #[test]
    fn reported_peers_kept_longest() {
        let base = Instant::now();
        for n in 2..40u64 {
            let mut c: Vec<_> = (0..n)
                .map(|i| peer(i, i, 1000 + i, Network::Ipv4, base))
                .collect();
            // The youngest is the best peer by ping.
            c[usize::try_from(n - 1).expect("small")].min_ping = Some(Duration::from_millis(5));
            assert_ne!(select(c), Some(n - 1), "{n} candidates");
        }
    }

    /// The largest group loses its youngest member.
    #[test]
    fn largest_group_youngest_member() {
        let base = Instant::now();
        let mut c: Vec<_> = (0..30)
            .map(|i| peer(i, i, 1000 + i, Network::Ipv4, base))
            .collect();
        // A group of 10 young peers.
        c.extend((100..110).map(|i| peer(i, i, 7, Network::Ipv4, base)));
        assert_eq!(select(c), Some(109));
    }

    /// Onion and local peers keep up to a quarter of the places by uptime,
    /// even when younger than every IPv4 peer.
    #[test]
    fn disadvantaged_networks_protected() {
        let base = Instant::now();
        let mut c: Vec<_> = (0..40)
            .map(|i| peer(i, i, 1000 + i, Network::Ipv4, base))
            .collect();
        // The 8 youngest are onion peers, one group.
        c.extend((100..108).map(|i| peer(i, i, 5, Network::Onion, base)));
        let victim = select(c).expect("evicted");
        // 48 candidates: 12 protected by network (the 8 onion, ...), so an
        // IPv4 peer goes.
        assert!(victim < 100, "{victim}");
    }
}
