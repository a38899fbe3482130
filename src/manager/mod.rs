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
//! - **Explicit requests.** [`Handle::connect`] (one-shot) and
//!   [`Handle::connect_permanent`] add connections beyond the target. A
//!   permanent one is retried on failure and reconnected on disconnect with
//!   exponential backoff and jitter ([`Backoff`]), and its backoff starts
//!   again from the base only after a connection stayed up for the stable
//!   period. A one-shot one ends at its first failure or disconnect.
//! - **One result per attempt.** Each attempt runs on a dial task of its
//!   own, under the connect timeout, and ends exactly once: connected,
//!   failed, timed out or panicked. [`Counters`] count it once.
//! - **Cancellation.** [`Handle::remove`] ends a request at any stage.
//! - **Inbound.** Each listener gets an accept loop; each admitted
//!   connection is an entry (kind [`Inbound`](ConnKind::Inbound)) for its
//!   life, within `max_inbound` (117 by default); accept errors back off.
//! - **Peer policy.** No duplicate hosts, netgroup diversity, inbound
//!   limits, Core's eviction, bans and discouragement, decided before the
//!   dial stack's `call`: see [`policy`](crate::policy).
//!   What it refused is counted ([`Counters::skipped`],
//!   [`Counters::rejected`]) and logged with the reason.
//! - **Connection classes** ([`ConnClass`], Bitcoin Core's outbound
//!   layout). Each class of automatic connections has its own target and
//!   its own outbound limit; all draw from the one source and share the
//!   netgroup diversity rule. One class (full-relay) by default;
//!   [`Builder::core_layout`] keeps Core's 8 full-relay and 2 block-relay
//!   connections. With an address manager, **feelers** test addresses of
//!   its new table at exponentially distributed intervals (2 minutes on
//!   average), outside every target and the failure throttle; on stop the
//!   block-relay peers are saved as **anchors** and dialled first at the
//!   next start. [`Handle::extra_outbound`] and [`Handle::drop_candidate`]
//!   are the primitives of Core's extra outbound peer. The class of each
//!   connection is in its [`ConnInfo`], the snapshot, the counters
//!   ([`Counters::class`]) and the metrics.
//! - **Seeding.** [`Builder::address_book`] draws automatic peers from an
//!   [`AddressBook`](crate::seed::AddressBook) seeded from DNS.
//!
//! # Tasks
//!
//! | task | file | owns |
//! |---|---|---|
//! | manager | `actor/` | the state map, retry and feeler-hold timers, the feeler schedule, the event backlog |
//! | fill | `fill.rs` | the address source, one outbound limit per class, the anchors to dial first, the failure throttle; passes automatic connections' drop notices on |
//! | dial (one per attempt) | `dial.rs` | one dial future and its connect timeout |
//! | accept (one per listener) | `accept.rs` | a listener and the inbound limit |
//! | callbacks | `events.rs` | the application's callbacks, run in order |
//!
//! # Events and backpressure
//!
//! Callbacks run on a task of their own, one at a time, in the order the
//! events happened, never on the manager task. Events reach it over a
//! bounded queue ([`Builder::callback_queue`], 1024 by default). When the
//! callbacks fall behind and the queue is full, nothing is dropped and
//! nothing grows without bound: the manager keeps the events that do not
//! fit in order, and until they are delivered it **starts no new work**:
//!
//! | event | while the callbacks are behind |
//! |---|---|
//! | `on_connection`, `on_dial_failure`, `on_disconnection` | kept in order; at most one per request already under way |
//! | automatic dials | not started: the fill task waits |
//! | `on_accept` | accepting pauses; new peers wait in the kernel's listen backlog |
//! | explicit requests, permanent retries | go on (the application asked for them) |
//!
//! # Stop
//!
//! [`Handle::stop`] closes the listeners, cancels dials and retry timers,
//! closes connections that arrive late, and then gives the callbacks a grace
//! period ([`Builder::stop_grace`], 5 s by default) to run what is queued.
//! After it, what is still queued is dropped (its connections closed) and a
//! callback still running is abandoned: stop returns, and no callback starts
//! after it returns.
//!
//! # Faults in user code
//!
//! The address source, the dial stack and the callbacks are the
//! application's code, and may panic, fail, hang or be slow. Whatever they
//! do, the manager keeps running, keeps its counts and stops when asked.
//! A panic is caught, logged at error level with the name of what
//! panicked, and counted in [`Counters::panics`]. Each cell names the test
//! that shows it.
//!
//! | user code | panic | error | hang | slow |
//! |---|---|---|---|---|
//! | address source | a failed attempt: feeds the throttle, asked again (`address_source_panic_is_a_failed_attempt`) | `None`: a failed attempt, asked again after the retry base (`empty_source_without_throttle_yields`) | automatic dials wait; everything else goes on; stop aborts it (`hanging_address_source_does_not_block_stop`) | as a hang, for as long |
//! | dial stack `poll_ready` | a failed attempt, the stack is cloned afresh (`dial_call_panic_is_a_failed_attempt`) | a failed attempt, then a wait of the retry base (`dial_stack_not_ready_waits_and_stops`) | automatic dials wait; explicit ones end at the connect timeout; stop returns (`dial_stack_not_ready_waits_and_stops`) | as a hang, for as long |
//! | dial stack `call` | a failed attempt, reported with [`Panicked`] (`dial_call_panic_is_a_failed_attempt`) | (errors come from the future) | `call` must not block: it holds up the fill task's thread | as a hang |
//! | dial future | a failed attempt: reported, feeds the throttle (`panicking_dial_counts_for_throttle`) | a failed attempt (`network_failure`, `failed_oneshot_never_adds_automatic_slot`) | ended by the connect timeout (`connect_timeout_ends_hanging_dials`) | ends once, counted once, even at the timeout's instant (`timeout_race_counts_once`) |
//! | callbacks | skipped, the next one runs (`panics_in_user_code_do_not_stop_the_manager`) | (no return value) | stop abandons it after the grace period (`stuck_callback_does_not_hang_stop`) | the queue fills, new work pauses (`slow_callback_bounded_queue`, `flood_with_slow_on_accept_bounded`) |
//!
//! A callback that blocks its thread blocks a runtime worker: on a
//! current-thread runtime that is the whole runtime. Spawn from callbacks
//! for long work, or use `tokio::task::block_in_place`.
//!
//! # Metrics
//!
//! With the `metrics` feature the manager publishes its counters and gauges
//! through the [`metrics`](https://docs.rs/metrics) facade, so an installed
//! exporter (Prometheus, say) shows them with no glue code. The names are
//! constants in `metric_names`.
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | `connmgr_dials_total` | counter | `conn_class` | dials started |
//! | `connmgr_established_total` | counter | `conn_class` | outbound connections delivered |
//! | `connmgr_dial_failures_total` | counter | `class`: `timeout`, `refused`, `connect`, `proxy`, `panic`, `other`; `conn_class` | failed dials |
//! | `connmgr_dials_canceled_total` | counter | `conn_class` | dials ended by `remove` or stop |
//! | `connmgr_throttle_waits_total` | counter | | waits of the failure throttle |
//! | `connmgr_no_address_total` | counter | | times the source had no address |
//! | `connmgr_panics_total` | counter | `what` | panics caught in user code |
//! | `connmgr_inbound_accepted_total` | counter | | inbound connections accepted |
//! | `connmgr_inbound_rejected_total` | counter | `reason`: `limit` | inbound connections closed at once |
//! | `connmgr_accept_errors_total` | counter | | errors from `accept` |
//! | `connmgr_connections` | gauge | `kind`: `automatic`, `permanent`, `one-shot`, `inbound`; `conn_class`; `state`: `pending`, `failing`, `established` | requests and connections now |
//!
//! `conn_class` is the connection's [`ConnClass`]: `full-relay`,
//! `block-relay` or `feeler`.
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
//! | `MaxInbound` unlimited unless set | 117 by default (Core's 125 less the outbound target) |
//! | a panic in a callback or `Dial` kills the node | caught, counted, one failed attempt |
//! | bans checked after the handshake; a banned permanent peer is retried | refused at dial and at accept, before `on_accept`; banned entries end |
//! | the server counts only handshaken peers per group | dials in flight count for netgroup diversity |
//! | `DynamicBanScore.Increase` returns an undecayed score | decayed before it is returned |
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
mod class;
mod config;
mod connection;
mod counters;
mod dial;
mod error;
mod events;
mod fill;
mod handle;
mod message;
mod persist;
mod traits;
mod types;

#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub use self::counters::names as metric_names;
pub use self::{
    builder::{Builder, ConfigError, ListenerOptions},
    class::ConnClass,
    config::{
        DEFAULT_CALLBACK_QUEUE, DEFAULT_CONNECT_TIMEOUT, DEFAULT_FEELER_HOLD,
        DEFAULT_FEELER_INTERVAL, DEFAULT_MAX_ANCHORS, DEFAULT_MAX_FAILURES, DEFAULT_MAX_INBOUND,
        DEFAULT_RETRY_BASE, DEFAULT_RETRY_CAP, DEFAULT_STABLE_PERIOD, DEFAULT_STOP_GRACE,
        DEFAULT_TARGET_OUTBOUND,
    },
    connection::{ConnInfo, Connection},
    error::{Error, Panicked, Points},
    handle::{Handle, WeakHandle},
    traits::{Address, DialService},
    types::{
        ConnId, ConnKind, ConnState, Counters, DialCounts, DialFailure, Direction,
        DisconnectReason, Disconnected, Entry, Refusals, Report, Snapshot,
    },
};
pub use crate::source::AddressSource;

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
