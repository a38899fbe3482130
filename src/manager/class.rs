//! Connection classes: what each outbound connection is for, and the
//! per-class outbound limit that keeps each class at its target.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What an outbound connection is for: Bitcoin Core's outbound connection
/// types.
///
/// Automatic connections of [`FullRelay`](Self::FullRelay) and
/// [`BlockRelay`](Self::BlockRelay) each have a target of their own
/// ([`Builder::class_target`](super::Builder::class_target)); all of them
/// share the outbound netgroup diversity rule. The application learns the
/// class of each connection in `on_connection`
/// ([`Connection::class`](super::Connection::class)), so it knows what to
/// relay on it.
///
/// Explicit requests and inbound connections are of class `FullRelay`, and
/// so is an automatic connection made permanent
/// ([`Handle::connect_permanent`](super::Handle::connect_permanent)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum ConnClass {
    /// Relays blocks, transactions and addresses (Core's
    /// `OUTBOUND_FULL_RELAY`). The default class: its target is
    /// [`Builder::target_outbound`](super::Builder::target_outbound).
    #[default]
    FullRelay,
    /// Relays blocks only: no transactions and no addresses (Core's
    /// `BLOCK_RELAY`), which makes it hard to find through
    /// transaction-relay topology inference. Its connections are saved as
    /// anchors on stop and dialled first at the next start.
    BlockRelay,
    /// A short connection that tests an address from the address manager's
    /// new table (Core's `FEELER`): a success moves the address to tried.
    /// The application closes it after its handshake, or the manager after
    /// the [feeler hold](super::Builder::feeler_hold). Feelers count against
    /// no target and never feed the failure throttle.
    Feeler,
}

impl ConnClass {
    /// Every class, in the order the fill task serves them.
    pub const ALL: [Self; 3] = [Self::FullRelay, Self::BlockRelay, Self::Feeler];

    /// Its place in [`ALL`](Self::ALL).
    pub(crate) fn index(self) -> usize {
        match self {
            Self::FullRelay => 0,
            Self::BlockRelay => 1,
            Self::Feeler => 2,
        }
    }

    /// Its name, as a metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FullRelay => "full-relay",
            Self::BlockRelay => "block-relay",
            Self::Feeler => "feeler",
        }
    }
}

impl fmt::Display for ConnClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// The outbound limit of one class with a target: its permits, and how many
/// of them are extra (above the target) and go away at the next release.
#[derive(Debug)]
pub(crate) struct ClassLimit {
    pub(crate) class: ConnClass,
    pub(crate) permits: Arc<Semaphore>,
    /// Permits above the target still to take back: each release of an
    /// established connection's permit forgets one instead.
    extra: AtomicUsize,
}

impl ClassLimit {
    pub(crate) fn new(class: ConnClass, target: usize) -> Arc<Self> {
        Arc::new(Self {
            class,
            permits: Arc::new(Semaphore::new(target)),
            extra: AtomicUsize::new(0),
        })
    }

    /// Raises the target by one until one of the class's connections ends.
    /// `false` when one extra connection is already allowed.
    pub(crate) fn add_extra(&self) -> bool {
        if self
            .extra
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        self.permits.add_permits(1);
        true
    }

    /// Whether an extra connection is allowed and not yet taken back.
    #[cfg(test)]
    fn has_extra(&self) -> bool {
        self.extra.load(Ordering::Acquire) > 0
    }

    fn take_extra(&self) -> bool {
        self.extra
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// The permit an established automatic connection holds. Its release gives
/// the slot back to the fill task, unless the class is above its target:
/// then the permit is forgotten and the class is back at its target.
#[derive(Debug)]
pub(crate) struct ClassPermit {
    permit: Option<OwnedSemaphorePermit>,
    limit: Arc<ClassLimit>,
}

impl ClassPermit {
    pub(crate) fn new(permit: OwnedSemaphorePermit, limit: Arc<ClassLimit>) -> Self {
        Self {
            permit: Some(permit),
            limit,
        }
    }
}

impl Drop for ClassPermit {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            if self.limit.take_extra() {
                permit.forget();
            }
        }
    }
}

/// The time to the next feeler: exponentially distributed with mean `mean`
/// (Core's Poisson schedule), from `u` in `[0, 1)`.
pub(crate) fn exponential(mean: Duration, u: f64) -> Duration {
    // 1 - u is in (0, 1]: its log is finite, at most 0.
    let factor = -(1.0 - u).ln();
    // At most about 37 × mean (u < 1 - 2^-53); the cap keeps it finite.
    Duration::try_from_secs_f64(mean.as_secs_f64() * factor.min(100.0)).unwrap_or(mean)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_permit_is_forgotten_once() {
        let limit = ClassLimit::new(ConnClass::FullRelay, 1);
        let first = limit.permits.clone().try_acquire_owned().expect("target");
        assert!(limit.add_extra());
        assert!(!limit.add_extra(), "one extra at a time");
        let second = limit.permits.clone().try_acquire_owned().expect("extra");
        assert_eq!(limit.permits.available_permits(), 0);
        drop(ClassPermit::new(first, limit.clone()));
        // Back at the target: the released permit was forgotten.
        assert_eq!(limit.permits.available_permits(), 0);
        assert!(!limit.has_extra());
        drop(ClassPermit::new(second, limit.clone()));
        assert_eq!(limit.permits.available_permits(), 1);
    }

    #[test]
    fn exponential_mean() {
        let mean = Duration::from_secs(120);
        let mut rng = fastrand::Rng::with_seed(7);
        let n = 100_000;
        let total: f64 = (0..n)
            .map(|_| exponential(mean, rng.f64()).as_secs_f64())
            .sum();
        let got = total / f64::from(n);
        assert!((got - 120.0).abs() < 2.0, "mean {got}");
        assert_eq!(exponential(mean, 0.0), Duration::ZERO);
    }
}
