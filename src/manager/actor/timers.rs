//! The retry timers of permanent requests: one tokio `Sleep` for the
//! earliest deadline, over an ordered set.
//!
//! tokio's own timer takes any deadline, however far (it parks far ones on
//! its top level and looks at them again as time passes). tokio-util's
//! `DelayQueue`, used before, advances its clock only when an entry fires
//! and panics for a deadline more than about two years past it, which a
//! permanent peer that stayed connected that long could reach.

use std::{
    collections::BTreeSet,
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use tokio::time::{Instant, Sleep, sleep_until};

use crate::manager::ConnId;

pub(super) struct Timers {
    due: BTreeSet<(Instant, ConnId)>,
    sleep: Pin<Box<Sleep>>,
    /// The deadline `sleep` is set to, if it is set to the first one.
    armed: Option<Instant>,
}

impl Timers {
    pub(super) fn new() -> Self {
        Self {
            due: BTreeSet::new(),
            sleep: Box::pin(sleep_until(Instant::now())),
            armed: None,
        }
    }

    pub(super) fn insert(&mut self, at: Instant, id: ConnId) {
        self.due.insert((at, id));
    }

    pub(super) fn remove(&mut self, at: Instant, id: ConnId) {
        self.due.remove(&(at, id));
    }

    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.due.is_empty()
    }

    /// Whether the first deadline changed since the last poll: it must be
    /// polled again to be woken at the right time.
    pub(super) fn needs_poll(&self) -> bool {
        self.due
            .first()
            .is_some_and(|&(at, _)| self.armed != Some(at))
    }

    /// The next request whose deadline has passed (cancel safe).
    pub(super) fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<ConnId> {
        let Some(&(at, id)) = self.due.first() else {
            return Poll::Pending;
        };
        if self.armed != Some(at) {
            self.sleep.as_mut().reset(at);
            self.armed = Some(at);
        }
        ready!(self.sleep.as_mut().poll(cx));
        self.due.pop_first();
        self.armed = None;
        Poll::Ready(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{future::poll_fn, time::Duration};

    /// Deadlines fire in order, a removed one never, and one years away
    /// after years of quiet (what panicked `DelayQueue`).
    #[tokio::test(start_paused = true)]
    async fn far_deadlines_fire_in_order() {
        let mut t = Timers::new();
        let start = Instant::now();
        let year = Duration::from_secs(365 * 24 * 3600);
        t.insert(start + Duration::from_secs(2), ConnId(2));
        t.insert(start + Duration::from_secs(1), ConnId(1));
        t.insert(start + Duration::from_secs(3), ConnId(3));
        t.remove(start + Duration::from_secs(3), ConnId(3));
        assert_eq!(poll_fn(|cx| t.poll_expired(cx)).await, ConnId(1));
        assert_eq!(poll_fn(|cx| t.poll_expired(cx)).await, ConnId(2));
        assert!(t.is_empty());
        tokio::time::advance(3 * year).await;
        let far = Instant::now() + 3 * year;
        t.insert(far, ConnId(4));
        assert_eq!(poll_fn(|cx| t.poll_expired(cx)).await, ConnId(4));
        assert!(Instant::now() >= far);
    }
}
