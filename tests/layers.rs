//! Each layer of the dial stack on its own, against tower-test mocks, under
//! paused tokio time.

mod support;

use std::time::Duration;

use connmgr::{
    backoff::{Backoff, JitterRng},
    limit::OutboundLimitLayer,
    retry::RetryPolicy,
};
use tokio::time::Instant;
use tokio_test::{assert_pending, assert_ready, assert_ready_err, assert_ready_ok};
use tower::{BoxError, ServiceExt, timeout::TimeoutLayer};
use tower_test::{assert_request_eq, mock};

/// The timeout fires exactly at its deadline, not a moment before.
#[tokio::test(start_paused = true)]
async fn timeout_fires_exactly_at_deadline() {
    support::trace_init();
    let (mut svc, mut handle) =
        mock::spawn_layer::<&str, (), _>(TimeoutLayer::new(Duration::from_secs(5)));
    assert_ready_ok!(svc.poll_ready());
    let mut fut = tokio_test::task::spawn(svc.call("peer"));
    let (_req, _send) = handle
        .next_request()
        .await
        .expect("request reaches the inner service");

    tokio::time::advance(Duration::from_millis(4999)).await;
    assert_pending!(fut.poll());
    tokio::time::advance(Duration::from_millis(1)).await;
    let err: BoxError = assert_ready_err!(fut.poll());
    assert!(err.is::<tower::timeout::error::Elapsed>(), "got {err}");
}

/// A dial that answers before the deadline passes through untouched.
#[tokio::test(start_paused = true)]
async fn timeout_passes_success_through() {
    let (mut svc, mut handle) =
        mock::spawn_layer::<&str, u32, _>(TimeoutLayer::new(Duration::from_secs(5)));
    assert_ready_ok!(svc.poll_ready());
    let mut fut = tokio_test::task::spawn(svc.call("peer"));
    assert_request_eq!(handle, "peer").send_response(7);
    assert_eq!(assert_ready_ok!(fut.poll()), 7);
}

/// Retries follow the backoff schedule within its jitter bounds, and each
/// request starts the schedule afresh.
#[tokio::test(start_paused = true)]
async fn retry_follows_schedule_and_resets_per_request() {
    support::trace_init();
    let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(8))
        .and_then(|b| b.with_jitter(0.5))
        .expect("valid")
        .with_rng(JitterRng::seeded(3));
    let policy = RetryPolicy::new(backoff.clone()).max_attempts(6);
    let (svc, mut handle) = mock::pair::<&'static str, ()>();
    let svc = tower::ServiceBuilder::new()
        .layer(policy.layer())
        .service(svc);

    for round in 0..2 {
        let call = tokio::spawn(svc.clone().oneshot("peer"));
        let mut last = Instant::now();
        for attempt in 0..6u32 {
            let (req, send) = handle.next_request().await.expect("attempt arrives");
            assert_eq!(req, "peer");
            let now = Instant::now();
            if attempt > 0 {
                let gap = now - last;
                let nominal = backoff.nominal(attempt - 1);
                assert!(
                    gap <= nominal && gap >= nominal.mul_f64(0.5),
                    "round {round} attempt {attempt}: gap {gap:?} outside [{:?}, {nominal:?}]",
                    nominal.mul_f64(0.5)
                );
            } else {
                assert_eq!(now, last, "the first attempt is immediate");
            }
            last = now;
            send.send_error("refused");
        }
        let result = call.await.expect("join");
        assert!(result.is_err(), "six failures exhaust the budget");
    }
}

/// A retried request that finally succeeds returns the success.
#[tokio::test(start_paused = true)]
async fn retry_returns_eventual_success() {
    let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(8)).expect("valid");
    let (svc, mut handle) = mock::pair::<&'static str, u8>();
    let svc = tower::ServiceBuilder::new()
        .layer(RetryPolicy::new(backoff).layer())
        .service(svc);
    let call = tokio::spawn(svc.oneshot("peer"));
    for _ in 0..3 {
        handle
            .next_request()
            .await
            .expect("attempt")
            .1
            .send_error("down");
    }
    handle
        .next_request()
        .await
        .expect("attempt")
        .1
        .send_response(9);
    assert_eq!(call.await.expect("join").expect("success"), 9);
}

/// The (n+1)th dial waits until one of the n connections is dropped.
#[tokio::test(start_paused = true)]
async fn limit_waits_for_a_dropped_connection() {
    let layer = OutboundLimitLayer::new(2);
    let (mut svc, mut handle) = mock::spawn_layer::<&str, &str, _>(layer);

    let mut conns = Vec::new();
    for name in ["a", "b"] {
        assert_ready_ok!(svc.poll_ready());
        let mut fut = tokio_test::task::spawn(svc.call(name));
        assert_request_eq!(handle, name).send_response(name);
        conns.push(assert_ready_ok!(fut.poll()));
    }
    // Both permits are held by open connections.
    assert_pending!(svc.poll_ready());
    tokio::time::advance(Duration::from_secs(3600)).await;
    assert_pending!(svc.poll_ready(), "time alone frees nothing");

    let first = conns.remove(0);
    assert_eq!(*first.get_ref(), "a");
    drop(first);
    assert!(
        svc.is_woken(),
        "dropping a connection wakes the waiting dialer"
    );
    assert_ready_ok!(svc.poll_ready());
}

/// A failed dial returns its permit at once, and so does a cancelled one.
#[tokio::test]
async fn limit_failed_or_cancelled_dial_frees_its_permit() {
    let layer = OutboundLimitLayer::new(1);
    let (mut svc, mut handle) = mock::spawn_layer::<&str, &str, _>(layer);

    assert_ready_ok!(svc.poll_ready());
    let mut fut = tokio_test::task::spawn(svc.call("a"));
    assert_pending!(svc.poll_ready());
    assert_request_eq!(handle, "a").send_error("refused");
    assert_ready_err!(fut.poll());
    drop(fut);
    assert_ready_ok!(svc.poll_ready(), "the failed dial's permit is back");

    let fut = svc.call("b");
    assert_pending!(svc.poll_ready());
    drop(fut);
    assert!(
        assert_ready!(svc.poll_ready()).is_ok(),
        "the cancelled dial's permit is back"
    );
}

/// Clones of a limited service share the permits.
#[tokio::test]
async fn limit_clones_share_permits() {
    let (inner, mut handle) = mock::pair::<&str, &str>();
    let svc = tower::ServiceBuilder::new()
        .layer(OutboundLimitLayer::new(1))
        .service(inner);
    let mut a = mock::Spawn::new(svc.clone());
    let mut b = mock::Spawn::new(svc);
    assert_ready_ok!(a.poll_ready());
    let fut = a.call("x");
    assert_pending!(b.poll_ready());
    let call = tokio::spawn(fut);
    assert_request_eq!(handle, "x").send_response("x");
    let conn = call.await.expect("join").expect("dial");
    assert_pending!(b.poll_ready());
    drop(conn);
    assert_ready_ok!(b.poll_ready());
}
