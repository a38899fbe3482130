//! Retrying failed dials on a [`Backoff`] schedule.
//!
//! [`RetryPolicy`] is a [`tower::retry::Policy`]: put it in tower's
//! [`RetryLayer`] (or call [`RetryPolicy::layer`]) above the rest of the dial
//! stack and a failed dial is tried again after `backoff.delay(0)`, then
//! `backoff.delay(1)`, and so on, forever or up to a number of attempts.
//! Each request starts its own count at zero: tower clones the policy for each
//! request.
//!
//! Placed above a [`Timeout`](tower::timeout::Timeout), the timeout applies to
//! each attempt. The manager does not use this layer for its permanent peers:
//! it keeps their attempt count in its state map (so a snapshot can show it)
//! and schedules their retries itself, with the same [`Backoff`] type.
//!
//! # Examples
//!
//! ```
//! use connmgr::{backoff::Backoff, connect::TcpConnector, retry::RetryPolicy};
//! use std::time::Duration;
//! use tower::ServiceBuilder;
//!
//! # fn build() -> Result<(), connmgr::backoff::InvalidBackoff> {
//! let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60))?;
//! let dialer = ServiceBuilder::new()
//!     .layer(RetryPolicy::new(backoff).max_attempts(5).layer())
//!     .timeout(Duration::from_secs(10))
//!     .service(TcpConnector::new());
//! # let _ = dialer;
//! # Ok(())
//! # }
//! ```

use tower::retry::{Policy, RetryLayer};

use crate::backoff::Backoff;

/// A [`Policy`] that retries every failed request on a [`Backoff`] schedule.
///
/// See the [module docs](crate::retry).
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    backoff: Backoff,
    max_attempts: Option<u32>,
    attempts: u32,
}

impl RetryPolicy {
    /// Retries forever on `backoff`.
    pub fn new(backoff: Backoff) -> Self {
        Self {
            backoff,
            max_attempts: None,
            attempts: 1,
        }
    }

    /// Stops after `attempts` attempts in all (the first call included);
    /// `max_attempts(1)` never retries. `0` is treated as `1`.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts.max(1));
        self
    }

    /// Retries forever (the default).
    pub fn forever(mut self) -> Self {
        self.max_attempts = None;
        self
    }

    /// The schedule.
    pub fn backoff(&self) -> &Backoff {
        &self.backoff
    }

    /// A [`RetryLayer`] with this policy.
    pub fn layer(self) -> RetryLayer<Self> {
        RetryLayer::new(self)
    }
}

impl<Req: Clone, Res, E> Policy<Req, Res, E> for RetryPolicy {
    type Future = tokio::time::Sleep;

    fn retry(&mut self, _req: &mut Req, result: &mut Result<Res, E>) -> Option<Self::Future> {
        if result.is_ok() {
            return None;
        }
        if self.max_attempts.is_some_and(|max| self.attempts >= max) {
            return None;
        }
        let delay = self.backoff.delay(self.attempts - 1);
        self.attempts += 1;
        tracing::debug!(attempt = self.attempts, ?delay, "dial failed, retrying");
        Some(tokio::time::sleep(delay))
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn _object_safe(_: Box<dyn Policy<u8, (), (), Future = tokio::time::Sleep>>) {}

    /// Success is never retried; failures are, until the attempt budget is
    /// spent.
    #[tokio::test]
    async fn respects_max_attempts() {
        let backoff = Backoff::new(Duration::from_millis(10), Duration::from_secs(1)).expect("ok");
        let mut policy = RetryPolicy::new(backoff).max_attempts(3);
        let mut req = 1u8;
        let mut ok: Result<(), ()> = Ok(());
        let mut err: Result<(), ()> = Err(());
        assert!(Policy::<u8, (), ()>::retry(&mut policy, &mut req, &mut ok).is_none());
        assert!(Policy::<u8, (), ()>::retry(&mut policy, &mut req, &mut err).is_some());
        assert!(Policy::<u8, (), ()>::retry(&mut policy, &mut req, &mut err).is_some());
        assert!(Policy::<u8, (), ()>::retry(&mut policy, &mut req, &mut err).is_none());
    }
}
