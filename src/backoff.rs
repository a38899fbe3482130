//! Exponential backoff with jitter, shared by the retry policy and the
//! manager.
//!
//! A [`Backoff`] is a schedule: the nominal delay before retry number `n`
//! (counting from 0) is `base * 2^n`, capped at `cap`; jitter then shortens it
//! by a random fraction of at most `jitter`, so the delay always lies in
//! `[(1 - jitter) * nominal, nominal]` and never exceeds `cap`. Peers that
//! dropped together (a network outage) thereby spread out instead of
//! reconnecting in lockstep.
//!
//! The random source is a [`JitterRng`] (the `fastrand` generator, shared by
//! clones). It is randomly seeded by default; [`JitterRng::seeded`] makes a schedule
//! reproducible in tests. All delays are plain [`Duration`]s, slept with tokio
//! timers, so `tokio::time::pause()` makes them deterministic.
//!
//! # Examples
//!
//! ```
//! use connmgr::backoff::{Backoff, JitterRng};
//! use std::time::Duration;
//!
//! let backoff = Backoff::new(Duration::from_secs(5), Duration::from_secs(300))?
//!     .with_jitter(0.2)?
//!     .with_rng(JitterRng::seeded(7));
//! let first = backoff.delay(0);
//! assert!(first <= Duration::from_secs(5) && first >= Duration::from_secs(4));
//! assert_eq!(backoff.nominal(10), Duration::from_secs(300));
//! # Ok::<(), connmgr::backoff::InvalidBackoff>(())
//! ```

use std::{
    error::Error as StdError,
    fmt,
    sync::{Arc, Mutex},
    time::Duration,
};

/// The default jitter fraction.
pub const DEFAULT_JITTER: f64 = 0.2;

/// An exponential backoff schedule. See the [module docs](crate::backoff).
///
/// Cloning shares the random source.
#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    jitter: f64,
    rng: JitterRng,
}

impl Backoff {
    /// A schedule from `base` doubling up to `cap`, with
    /// [`DEFAULT_JITTER`].
    ///
    /// # Errors
    ///
    /// [`InvalidBackoff`] unless `base > 0` and `cap >= base`.
    pub fn new(base: Duration, cap: Duration) -> Result<Self, InvalidBackoff> {
        if base.is_zero() {
            return Err(InvalidBackoff::ZeroBase);
        }
        if cap < base {
            return Err(InvalidBackoff::CapBelowBase);
        }
        Ok(Self {
            base,
            cap,
            jitter: DEFAULT_JITTER,
            rng: JitterRng::new(),
        })
    }

    /// Sets the jitter fraction: each delay is shortened by up to this
    /// fraction of its nominal value. `0.0` turns jitter off.
    ///
    /// # Errors
    ///
    /// [`InvalidBackoff`] unless `0.0 <= jitter <= 1.0`.
    pub fn with_jitter(mut self, jitter: f64) -> Result<Self, InvalidBackoff> {
        if !(0.0..=1.0).contains(&jitter) {
            return Err(InvalidBackoff::JitterOutOfRange);
        }
        self.jitter = jitter;
        Ok(self)
    }

    /// Uses this random source for the jitter.
    pub fn with_rng(mut self, rng: JitterRng) -> Self {
        self.rng = rng;
        self
    }

    /// The first delay.
    pub fn base(&self) -> Duration {
        self.base
    }

    /// The longest delay.
    pub fn cap(&self) -> Duration {
        self.cap
    }

    /// The jitter fraction.
    pub fn jitter(&self) -> f64 {
        self.jitter
    }

    /// The delay before retry `attempt` (0 for the first retry) without
    /// jitter: `min(base * 2^attempt, cap)`.
    pub fn nominal(&self, attempt: u32) -> Duration {
        // 2^32 * base overflows long before any cap anyone would set.
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.base
            .checked_mul(factor)
            .map_or(self.cap, |d| d.min(self.cap))
    }

    /// The delay before retry `attempt`, with jitter applied: a value in
    /// `[(1 - jitter) * nominal, nominal]`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let nominal = self.nominal(attempt);
        if self.jitter == 0.0 {
            return nominal;
        }
        let cut = self.jitter * self.rng.next_f64();
        // The factor is in (0, 1]; rounding near `Duration::MAX` can still
        // leave the representable range, so fall back to the nominal delay.
        Duration::try_from_secs_f64(nominal.as_secs_f64() * (1.0 - cut))
            .map_or(nominal, |d| d.min(nominal))
    }
}

/// An invalid [`Backoff`] configuration: which rule was broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidBackoff {
    /// The base delay is zero.
    ZeroBase,
    /// The cap is less than the base.
    CapBelowBase,
    /// The jitter fraction is not in `0.0..=1.0` (or is NaN).
    JitterOutOfRange,
}

impl fmt::Display for InvalidBackoff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Self::ZeroBase => "invalid backoff: base must be greater than zero",
            Self::CapBelowBase => "invalid backoff: cap must not be less than base",
            Self::JitterOutOfRange => "invalid backoff: jitter must be between 0.0 and 1.0",
        })
    }
}

impl StdError for InvalidBackoff {}

/// The random source of the jitter: a [`fastrand::Rng`] shared by clones.
///
/// Clones draw from one sequence; with [`seeded`](Self::seeded) the sequence
/// is reproducible. It is not for cryptography.
#[derive(Clone, Debug)]
pub struct JitterRng {
    rng: Arc<Mutex<fastrand::Rng>>,
}

impl JitterRng {
    /// A randomly seeded source.
    pub fn new() -> Self {
        Self::from_rng(fastrand::Rng::new())
    }

    /// A source with a fixed seed, for reproducible schedules.
    pub fn seeded(seed: u64) -> Self {
        Self::from_rng(fastrand::Rng::with_seed(seed))
    }

    /// A source of its own, seeded from this one.
    pub(crate) fn fork(&self) -> fastrand::Rng {
        self.with(|rng| rng.fork())
    }

    fn from_rng(rng: fastrand::Rng) -> Self {
        Self {
            rng: Arc::new(Mutex::new(rng)),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut fastrand::Rng) -> T) -> T {
        // A poisoned lock still holds a valid generator.
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut rng)
    }

    /// The next 64 random bits.
    pub fn next_u64(&self) -> u64 {
        self.with(|rng| rng.u64(..))
    }

    /// A random value in `[0, 1)`.
    pub fn next_f64(&self) -> f64 {
        self.with(|rng| rng.f64())
    }
}

impl Default for JitterRng {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// Construction rejects a zero base, a cap below the base and bad
    /// jitter, and says which rule failed.
    #[test]
    fn validation() {
        use InvalidBackoff::*;
        let err = |r: Result<Backoff, InvalidBackoff>| r.err();
        assert_eq!(err(Backoff::new(Duration::ZERO, secs(1))), Some(ZeroBase));
        assert_eq!(err(Backoff::new(secs(2), secs(1))), Some(CapBelowBase));
        assert!(Backoff::new(secs(1), secs(1)).is_ok());
        let b = Backoff::new(secs(1), secs(2)).expect("valid");
        assert_eq!(err(b.clone().with_jitter(-0.1)), Some(JitterOutOfRange));
        assert_eq!(err(b.clone().with_jitter(1.5)), Some(JitterOutOfRange));
        assert_eq!(err(b.clone().with_jitter(f64::NAN)), Some(JitterOutOfRange));
        assert!(b.with_jitter(1.0).is_ok());
    }

    /// Nominal delays double from the base and stop at the cap, without
    /// overflowing for huge attempt numbers.
    #[test]
    fn nominal_doubles_and_caps() {
        let b = Backoff::new(secs(5), secs(300)).expect("valid");
        let got: Vec<_> = (0..8).map(|n| b.nominal(n).as_secs()).collect();
        assert_eq!(got, [5, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(b.nominal(u32::MAX), secs(300));
        let huge = Backoff::new(Duration::from_secs(u64::MAX / 4), Duration::MAX).expect("valid");
        assert_eq!(huge.nominal(40), Duration::MAX);
        for n in 0..50 {
            assert!(huge.delay(n) <= Duration::MAX, "no panic near the maximum");
        }
    }

    /// Jittered delays stay within `[(1 - j) * nominal, nominal]` and vary.
    #[test]
    fn jitter_bounds() {
        let b = Backoff::new(secs(5), secs(300))
            .and_then(|b| b.with_jitter(0.25))
            .expect("valid")
            .with_rng(JitterRng::seeded(1));
        let mut seen = std::collections::HashSet::new();
        for n in 0..2000u32 {
            let attempt = n % 10;
            let d = b.delay(attempt);
            let nominal = b.nominal(attempt);
            assert!(d <= nominal, "{d:?} > {nominal:?}");
            assert!(d >= nominal.mul_f64(0.75), "{d:?} below the jitter bound");
            seen.insert(d);
        }
        assert!(seen.len() > 1000, "jitter should spread the delays");
    }

    /// The same seed gives the same sequence; clones share the state.
    #[test]
    fn seeded_is_reproducible() {
        let a = JitterRng::seeded(42);
        let b = JitterRng::seeded(42);
        let xs: Vec<_> = (0..5).map(|_| a.next_u64()).collect();
        let ys: Vec<_> = (0..5).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        let c = a.clone();
        assert_ne!(a.next_u64(), c.next_u64());
        for _ in 0..1000 {
            let f = a.next_f64();
            assert!((0.0..1.0).contains(&f));
        }
    }
}
