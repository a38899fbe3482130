//! The connection manager: btcd's `connmgr`, driving a tower dial stack.
//!
//! One task owns the state map: an entry per connection request, keyed by a
//! [`ConnId`], with its address, [`ConnKind`], [`ConnState`], attempt count
//! and next-attempt time. The application talks to it through a cloneable
//! [`Handle`], and hears from it through callbacks that run on a task of
//! their own, in order.
//!
//! # What it does
//!
//! - **Automatic outbound.** With an [`AddressSource`], a fill task keeps
//!   `target_outbound` connections open. The target *is* an
//!   [`OutboundLimit`](crate::limit::OutboundLimit) around the dial stack:
//!   the fill task waits for a free permit, asks the source for an address,
//!   and dials; the permit lives inside the [`Connection`] and returns when it
//!   is dropped, and the fill task dials a replacement. A failed dial ends
//!   its request ([`Canceled`](ConnState::Canceled)) and frees the permit for
//!   a fresh request; after 25 consecutive failures (any success resets the
//!   count) each replacement first waits the retry base.
//! - **Explicit requests.** [`Handle::connect`] adds a connection beyond the
//!   target. A permanent one is retried on failure and reconnected on
//!   disconnect with exponential backoff and jitter ([`Backoff`]), and its
//!   backoff starts again from the base only after a connection stayed up for
//!   the stable period. A one-shot one ends at its first failure.
//! - **Cancellation.** [`Handle::remove`] ends a request at any stage.
//! - **Inbound.** Each listener gets an accept loop; `max_inbound` holds a
//!   slot for each accepted connection's life; accept errors back off.
//! - **Stop.** [`Handle::stop`] returns when every task has ended.
//!
//! # Differences from btcd
//!
//! | btcd | here |
//! |---|---|
//! | linear backoff, reset on any TCP success | exponential with jitter, reset after a stable period |
//! | a failed one-shot `Connect` adds an automatic slot | it ends and is reported, nothing else |
//! | a dropped connection must be reported with `Disconnect` | dropping the [`Connection`] is the report |
//! | `Disconnect` on a pending request cancels it | it is an [`Error::NotEstablished`]; use `remove` |
//! | `TargetOutbound: 0` means 8 | `0` means no automatic connections |
//! | `Stop` leaks dials, timers and late connections | `stop` cancels, closes and joins them |
//! | accept errors spin | accept errors back off (5 ms doubling to 1 s) |
//!
//! [`Backoff`]: crate::backoff::Backoff
//!
//! # Examples
//!
//! ```no_run
//! use connmgr::manager::ConnManager;
//! use std::net::SocketAddr;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let seeds: Vec<SocketAddr> = vec!["127.0.0.1:8333".parse()?];
//! let mut next = 0;
//! let handle = ConnManager::builder()
//!     .target_outbound(8)
//!     .address_source(move || {
//!         next += 1;
//!         let addr = seeds[next % seeds.len()];
//!         async move { Some(addr) }
//!     })
//!     .on_connection(|conn| {
//!         tokio::spawn(async move {
//!             // Run the peer protocol on `conn`; dropping it disconnects.
//!             let _ = conn;
//!         });
//!     })
//!     .start()?;
//! let id = handle.connect_permanent("127.0.0.1:18333".parse()?).await?;
//! println!("{:?}", handle.state(id).await?);
//! handle.stop().await;
//! # Ok(())
//! # }
//! ```

mod accept;
mod actor;
mod builder;
mod config;
mod connection;
mod counters;
mod dial;
mod events;
mod fill;
mod handle;
mod message;
mod traits;
mod types;

#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub use self::counters::names as metric_names;
pub use self::{
    builder::{Builder, ConfigError},
    config::{
        DEFAULT_CALLBACK_QUEUE, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_FAILURES, DEFAULT_MAX_INBOUND,
        DEFAULT_RETRY_BASE, DEFAULT_RETRY_CAP, DEFAULT_STABLE_PERIOD, DEFAULT_STOP_GRACE,
        DEFAULT_TARGET_OUTBOUND,
    },
    connection::{ConnInfo, Connection},
    handle::{Handle, WeakHandle},
    traits::{Address, AddressSource, DialService},
    types::{
        ConnId, ConnKind, ConnState, Counters, DialFailure, Direction, DisconnectReason,
        Disconnected, Entry, Error, Panicked, Snapshot,
    },
};

use std::net::SocketAddr;

use crate::stack::Dialer;

/// Entry point: `ConnManager::builder()` configures and starts a manager.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct ConnManager;

impl ConnManager {
    /// A builder with the default dial stack ([`Dialer`]: TCP, no proxy)
    /// and `SocketAddr` addresses.
    pub fn builder() -> Builder<SocketAddr, Dialer> {
        Builder::default_stack()
    }

    /// A builder with your own dial stack, for `SocketAddr` addresses. For
    /// another address type use [`Builder::new`].
    ///
    /// The manager times each dial out itself
    /// ([`connect_timeout`](Builder::connect_timeout)), so a stack from
    /// [`DialStack`](crate::DialStack) can leave its own out with
    /// `.timeout(None)`; keeping both is harmless, only one timer more.
    pub fn with_dialer<D: DialService<SocketAddr>>(dialer: D) -> Builder<SocketAddr, D> {
        Builder::new(dialer)
    }
}
