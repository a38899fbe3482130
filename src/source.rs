//! What the manager and the address tables both need: the address source
//! the manager draws from, and the observer it tells how each dial went.
//! It sits below both, so that imports run one way: `manager` uses `seed`
//! and `addrman` (for the builder's conveniences), and they use only this.

use std::future::Future;

/// Where automatic outbound addresses come from (btcd's `GetNewAddress`).
///
/// `None` means "no address right now": it counts as a failed attempt, and
/// the fill task waits before it asks again.
///
/// Any `FnMut() -> impl Future<Output = Option<A>>` closure is a source.
/// The manager calls it from its fill task, never from the manager task, so
/// it may take its time (query an address book, say). A source that panics
/// costs one failed attempt.
pub trait AddressSource<A>: Send + 'static {
    /// The next address to dial.
    fn next_address(&mut self) -> impl Future<Output = Option<A>> + Send;
}

impl<A, F, Fut> AddressSource<A> for F
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Option<A>> + Send,
{
    fn next_address(&mut self) -> impl Future<Output = Option<A>> + Send {
        self()
    }
}

/// Told how each automatic or explicit outbound dial went: an address
/// table learning from outcomes. Runs on the manager task, so it must be
/// quick.
pub(crate) trait Observer<A>: Send + Sync + 'static {
    fn connected(&self, addr: &A);
    fn failed(&self, addr: &A);
    fn disconnected(&self, addr: &A);
    /// The policy refused a candidate from this source: it was never
    /// dialled.
    fn skipped(&self, _addr: &A) {}
    /// A request ended without a connection and without a failure
    /// (removed, banned, stopped while it dialled or waited).
    fn canceled(&self, _addr: &A) {}
}
