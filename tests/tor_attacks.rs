//! Attacks on the Tor set-ups (onion targets, routing by network, the hyper
//! connector, TorResolver, the inactivity timeout), from a review round:
//! each test failed before its fix, or pins a behaviour. Loopback only.
#![allow(clippy::unwrap_used)]

mod support;

use std::{net::SocketAddr, time::Duration};

use connmgr::{
    DialStack, NeedsProxy, Target,
    hyper::{HyperConnector, UriErrorKind},
    manager::{ConnManager, DisconnectReason},
    policy::{Host, Network, PeerAddr},
    resolve::{DefaultResolver, Name, ResolveError, ResolveErrorKind, TorResolver},
    route::{NetworkRouter, RouteError},
    socks::{ReplyCode, Socks5Error, Socks5ErrorKind},
};
use support::{
    HoldingPeer,
    manager::record,
    socks5::{Behaviour, FakeSocks5},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};
use tower::{Service, ServiceExt};

fn onion() -> String {
    Host::Onion([0x5d; 32]).to_string()
}

fn bad_onion() -> String {
    let mut b = onion().into_bytes();
    b[3] = if b[3] == b'a' { b'b' } else { b'a' };
    String::from_utf8(b).unwrap()
}

/// A Tor-like SOCKS5 server: no auth, then answers every request with
/// `reply`; records the names asked for.
async fn tor_like(reply: Vec<u8>) -> (SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let reply = reply.clone();
            let seen = s2.clone();
            tokio::spawn(async move {
                let mut h = [0u8; 2];
                s.read_exact(&mut h).await?;
                let mut m = vec![0u8; h[1] as usize];
                s.read_exact(&mut m).await?;
                s.write_all(&[5, 0]).await?;
                let mut req = [0u8; 4];
                s.read_exact(&mut req).await?;
                if req[3] == 3 {
                    let mut len = [0u8; 1];
                    s.read_exact(&mut len).await?;
                    let mut name = vec![0u8; len[0] as usize + 2];
                    s.read_exact(&mut name).await?;
                    seen.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&name[..name.len() - 2]).into_owned());
                }
                s.write_all(&reply).await?;
                Ok::<_, std::io::Error>(())
            });
        }
    });
    (addr, seen)
}

// ===================================================================
// NetworkRouter: targets leaking through the wrong stack
// ===================================================================

/// Core's `-proxy=A -onion=B`: a fake proxy for each, both able to reach
/// the echo server by the onion's name (with and without the root dot),
/// and the router between them.
async fn tor_and_clearnet() -> (FakeSocks5, FakeSocks5, NetworkRouter) {
    let echo = support::echo_target().await;
    let names = || Behaviour::Hosts(vec![(onion(), echo), (format!("{}.", onion()), echo)]);
    let tor = FakeSocks5::start(names(), None).await;
    let clearnet = FakeSocks5::start(names(), None).await;
    let router = NetworkRouter::core(Some(clearnet.addr), Some(tor.addr));
    (tor, clearnet, router)
}

/// The onion reached the Tor proxy, by its canonical name, and nothing
/// reached the clearnet one.
fn assert_went_to_tor(tor: &FakeSocks5, clearnet: &FakeSocks5) {
    assert!(
        clearnet.connected_names().is_empty(),
        "the onion service was asked of the clearnet proxy: {:?}",
        clearnet.connected_names()
    );
    assert_eq!(tor.connected_names(), [onion()], "through the onion proxy");
}

/// `<onion>.onion.` (a trailing dot, as in an FQDN) is the same onion
/// service: it goes to the onion proxy, never to the clearnet one.
#[tokio::test]
async fn router_onion_with_trailing_dot_goes_to_tor() {
    let (tor, clearnet, router) = tor_and_clearnet().await;
    let target: Target = format!("{}.:8333", onion()).parse().expect("an onion");
    router.oneshot(target).await.expect("dialled");
    assert_went_to_tor(&tor, &clearnet);
}

/// The same through the hyper connector over a router.
#[tokio::test]
async fn hyper_onion_with_trailing_dot_goes_to_tor() {
    let (tor, clearnet, router) = tor_and_clearnet().await;
    let mut c = HyperConnector::from_service(router);
    let uri: http::Uri = format!("http://{}.:8333/", onion()).parse().unwrap();
    c.call(uri).await.expect("dialled");
    assert_went_to_tor(&tor, &clearnet);
}

/// A valid onion address given to `Target::name` is still an onion
/// service: it goes to the onion proxy.
#[tokio::test]
async fn router_target_name_of_onion_goes_to_tor() {
    let (tor, clearnet, router) = tor_and_clearnet().await;
    let target = Target::name(&onion(), 8333).expect("an onion");
    assert_eq!(target.host().network(), Network::Onion, "{target}");
    router.oneshot(target).await.expect("dialled");
    assert_went_to_tor(&tor, &clearnet);
}

/// An onion address with a bad checksum never reaches the proxy, whichever
/// constructor made the target.
#[tokio::test]
async fn target_name_bad_onion_checksum_refused() {
    let echo = support::echo_target().await;
    let proxy = FakeSocks5::start(Behaviour::Hosts(vec![(bad_onion(), echo)]), None).await;
    let dialer = DialStack::new().socks5(proxy.addr).build();
    assert!(Target::name(&bad_onion(), 80).is_err(), "a typed refusal");
    if let Ok(target) = Target::name(&bad_onion(), 80) {
        let _ = dialer.oneshot(target).await;
    }
    assert!(
        proxy.connected_names().is_empty(),
        "an invalid onion address was sent to the proxy: {:?}",
        proxy.connected_names()
    );
}

/// `route(Network::I2p, stack)`: an I2P destination goes through that
/// stack, not the clearnet one.
#[tokio::test]
async fn router_i2p_route_taken() {
    let echo = support::echo_target().await;
    let i2p = Host::I2p([7; 32]).to_string();
    let i2p_proxy = FakeSocks5::start(Behaviour::Hosts(vec![(i2p.clone(), echo)]), None).await;
    let clearnet = FakeSocks5::start(Behaviour::Hosts(vec![(i2p.clone(), echo)]), None).await;
    let router = NetworkRouter::new(DialStack::new().socks5(clearnet.addr).build()).route(
        Network::I2p,
        DialStack::new().socks5(i2p_proxy.addr).build(),
    );
    let target: Target = format!("{i2p}:0").parse().unwrap();
    let _ = router.clone().oneshot(target.clone()).await;
    assert!(
        clearnet.connected_names().is_empty(),
        "I2P destination {i2p} sent to the clearnet proxy"
    );
    assert_eq!(
        i2p_proxy.connected_names(),
        std::slice::from_ref(&i2p),
        "not via the I2P route"
    );
    // And -onlynet=i2p lets it through.
    let only = NetworkRouter::new(DialStack::new().build())
        .route(
            Network::I2p,
            DialStack::new().socks5(i2p_proxy.addr).build(),
        )
        .only([Network::I2p]);
    let r = only.oneshot(target).await;
    assert!(
        r.as_ref()
            .err()
            .and_then(|e| e.downcast_ref::<RouteError>())
            .is_none(),
        "onlynet=i2p refused an I2P target: {:?}",
        r.err()
    );
}

/// `route(Network::Cjdns, stack)`: a CJDNS address (fc00::/8) goes through
/// that stack. Both "stacks" are loopback proxies; which one is dialled is
/// observed by which listener accepts (nothing leaves loopback).
#[tokio::test]
async fn router_cjdns_route_taken() {
    let clear = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cjdns = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let router = NetworkRouter::new(DialStack::new().socks5(clear.local_addr().unwrap()).build())
        .route(
            Network::Cjdns,
            DialStack::new().socks5(cjdns.local_addr().unwrap()).build(),
        );
    let target = Target::from("[fc00::1]:8333".parse::<SocketAddr>().unwrap());
    let dial = tokio::spawn(router.oneshot(target));
    let which = tokio::select! {
        _ = clear.accept() => "clearnet",
        _ = cjdns.accept() => "cjdns",
    };
    dial.abort();
    assert_eq!(
        which, "cjdns",
        "a CJDNS address went through the clearnet stack"
    );
}

/// An IPv4-mapped loopback address is IPv4 (Host::ip maps it): -onlynet=ipv6
/// must refuse it, before any socket.
#[tokio::test]
async fn router_onlynet_ipv6_refuses_ipv4_mapped() {
    let echo = support::echo_target().await;
    let mapped: SocketAddr = format!("[::ffff:127.0.0.1]:{}", echo.port())
        .parse()
        .unwrap();
    let r = NetworkRouter::new(DialStack::new().build())
        .only([Network::Ipv6])
        .oneshot(Target::from(mapped))
        .await;
    let err = r
        .err()
        .map(|e| format!("{:?}", e.downcast_ref::<RouteError>()));
    assert_eq!(
        err.as_deref(),
        Some("Some(NotAllowed(Ipv4))"),
        "an IPv4 connection went out under onlynet=ipv6"
    );
}

/// Core's `-onion` alone (no -proxy): clearnet is direct. A named peer
/// (`-addnode=localhost:port`) is resolved and dialled, as Core does.
#[tokio::test]
async fn router_core_onion_only_dials_named_peer_direct() {
    let echo = support::echo_target().await;
    let tor = FakeSocks5::start(Behaviour::Proxy, None).await;
    let router = NetworkRouter::core(None, Some(tor.addr));
    let r = router
        .oneshot(Target::name("localhost", echo.port()).unwrap())
        .await;
    assert!(r.is_ok(), "named clearnet peer not dialled: {:?}", r.err());
}

/// An IP literal given as a name is an IP for the policy (bans, onlynet,
/// groups), or refused: otherwise a ban on 127.0.0.1 does not cover it.
#[test]
fn target_name_ip_literal_is_a_socket_address() {
    if let Ok(t) = Target::name("127.0.0.1", 8333) {
        assert_eq!(
            t.host(),
            Host::ip([127, 0, 0, 1].into()),
            "an IP literal became a Name target: {t:?}"
        );
    }
}

// ===================================================================
// Hyper connector
// ===================================================================

/// Tor reaches `www.<onion>.onion` (subdomains of an onion service); the
/// connector refuses it as an invalid host.
#[tokio::test]
async fn hyper_onion_subdomain_dialled() {
    let echo = support::echo_target().await;
    let sub = format!("www.{}", onion());
    let proxy = FakeSocks5::start(
        Behaviour::Hosts(vec![(onion(), echo), (sub.clone(), echo)]),
        None,
    )
    .await;
    let mut c = HyperConnector::new(DialStack::new().socks5(proxy.addr));
    let uri: http::Uri = format!("http://{sub}/").parse().unwrap();
    let r = c.call(uri).await;
    assert!(r.is_ok(), "www.<onion>.onion refused: {:?}", r.err());
}

// ===================================================================
// TorResolver
// ===================================================================

/// Real Tor answers RESOLVE of the malformed name `a..b` with 0x01 (general
/// failure), see the reference. The issue lists `a..b` among the names that
/// must not look like a dead proxy.
#[tokio::test]
async fn tor_resolve_malformed_name_is_invalid_name() {
    let (proxy, seen) = tor_like(vec![5, 1, 0, 1, 0, 0, 0, 0, 0, 0]).await;
    let r = match Name::new("a..b") {
        Ok(name) => TorResolver::new(proxy).oneshot(name).await,
        Err(e) => Err(e),
    };
    let err = r.expect_err("a..b has no address");
    assert!(
        matches!(
            err.kind(),
            ResolveErrorKind::InvalidName | ResolveErrorKind::NotFound
        ),
        "a..b came back as {:?} ({err}); asked proxy: {:?}",
        err.kind(),
        seen.lock().unwrap()
    );
}

// ===================================================================
// Inactivity timeout
// ===================================================================

/// A timeout of a few nanoseconds is not zero, so it passes validation:
/// start() must not panic.
#[tokio::test(start_paused = true)]
async fn inactivity_timeout_of_one_nanosecond_runs() {
    let r = std::panic::AssertUnwindSafe(async {
        ConnManager::builder()
            .inactivity_timeout(Some(Duration::from_nanos(1)))
            .start()
            .map(|_| ())
    });
    let out = futures_util::FutureExt::catch_unwind(r).await;
    assert!(out.is_ok(), "start() panicked on a 1 ns inactivity timeout");
}

/// "Never" written as Duration::MAX must not panic either.
#[tokio::test(start_paused = true)]
async fn inactivity_timeout_of_duration_max_runs() {
    let r = std::panic::AssertUnwindSafe(async {
        ConnManager::builder()
            .inactivity_timeout(Some(Duration::MAX))
            .start()
            .map(|_| ())
    });
    let out = futures_util::FutureExt::catch_unwind(r).await;
    assert!(out.is_ok(), "start() panicked on Duration::MAX");
}

/// The dead onion peer: the node keeps sending pings (Tor accepts
/// the bytes), nothing ever comes back. Core closes it after 20 minutes
/// without receiving ("socket receive timeout"); here it stays forever.
#[tokio::test(start_paused = true)]
async fn inactivity_write_only_dead_peer_closed() {
    let dead = HoldingPeer::start().await; // reads, never answers
    let (b, mut ev) =
        record(ConnManager::builder().inactivity_timeout(Some(Duration::from_secs(20 * 60))));
    let handle = b.start().expect("start");
    handle.connect(dead.addr).await.expect("connect");
    let mut conn = ev.connected.recv().await.expect("connected");
    let started = tokio::time::Instant::now();
    // A ping every 2 minutes for an hour.
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_secs(120)).await;
        if conn.write_all(b"ping").await.is_err() {
            break;
        }
    }
    let gone = ev.disconnected.try_recv();
    assert!(
        matches!(&gone, Ok(d) if d.reason == DisconnectReason::Inactive),
        "after {:?} of sending with nothing received, the connection is still up ({:?})",
        started.elapsed(),
        gone.map(|d| d.reason)
    );
    handle.stop().await;
}

// ===================================================================
// Passing: regressions worth keeping
// ===================================================================

/// IPv6 literal, userinfo, huge host, uppercase onion, bad checksum.
#[tokio::test]
async fn hyper_uri_edge_cases() {
    // [::1] direct.
    let l6 = TcpListener::bind("[::1]:0").await.unwrap();
    let p6 = l6.local_addr().unwrap().port();
    let mut direct = HyperConnector::new(DialStack::new());
    let io = direct
        .call(format!("http://[::1]:{p6}/").parse().unwrap())
        .await
        .expect("[::1]");
    assert_eq!(io.inner().peer_addr().unwrap(), l6.local_addr().unwrap());
    // Userinfo does not become part of the host.
    let echo = support::echo_target().await;
    let io = direct
        .call(
            format!("http://user:pw@127.0.0.1:{}/", echo.port())
                .parse()
                .unwrap(),
        )
        .await
        .expect("userinfo");
    assert_eq!(io.inner().peer_addr().unwrap(), echo);

    // Through a proxy that records names.
    let up = onion().to_ascii_uppercase();
    let proxy = FakeSocks5::start(
        Behaviour::Hosts(vec![(onion(), echo), (bad_onion(), echo)]),
        None,
    )
    .await;
    let mut via = HyperConnector::new(DialStack::new().socks5(proxy.addr));
    via.call(format!("http://{up}/").parse().unwrap())
        .await
        .expect("uppercase onion");
    assert_eq!(proxy.connected_names(), [onion()]);
    let e = via
        .call(format!("http://{}/", bad_onion()).parse().unwrap())
        .await
        .expect_err("bad checksum");
    let e = e
        .downcast_ref::<connmgr::hyper::UriError>()
        .expect("UriError");
    assert_eq!(e.kind(), UriErrorKind::InvalidHost);
    let huge = format!("{}.test", "a".repeat(300));
    if let Ok(uri) = format!("http://{huge}/").parse::<http::Uri>() {
        let e = via.call(uri).await.expect_err("huge");
        assert_eq!(
            e.downcast_ref::<connmgr::hyper::UriError>()
                .map(|e| e.kind()),
            Some(UriErrorKind::InvalidHost)
        );
    }
    let e = via
        .call("https://127.0.0.1/".parse().unwrap())
        .await
        .expect_err("https");
    assert_eq!(
        e.downcast_ref::<connmgr::hyper::UriError>()
            .map(|e| e.kind()),
        Some(UriErrorKind::UnsupportedScheme)
    );
    assert_eq!(
        proxy.connected_names(),
        [onion()],
        "nothing else reached it"
    );
}

/// A proxy that never answers: a name dial ends with Elapsed at the stack's
/// timeout; a garbage proxy gives a typed Socks5Error.
#[tokio::test(start_paused = true)]
async fn dialer_name_target_hostile_proxies() {
    let silent = FakeSocks5::start(Behaviour::Silent, None).await;
    let started = tokio::time::Instant::now();
    let e = DialStack::new()
        .socks5(silent.addr)
        .build()
        .oneshot(Target::name("peer.test", 1).unwrap())
        .await
        .expect_err("silent");
    assert!(e.is::<tower::timeout::error::Elapsed>(), "{e}");
    assert_eq!(started.elapsed(), Duration::from_secs(30));
    let garbage = FakeSocks5::start(Behaviour::WrongVersion, None).await;
    let e = DialStack::new()
        .socks5(garbage.addr)
        .build()
        .oneshot(Target::onion(&onion(), 1).unwrap())
        .await
        .expect_err("garbage");
    assert!(e.downcast_ref::<Socks5Error>().is_some(), "{e}");
    let ext = FakeSocks5::start(Behaviour::Reply(0xf7), None).await;
    let e = DialStack::new()
        .socks5(ext.addr)
        .build()
        .oneshot(Target::from(support::echo_target().await))
        .await
        .expect_err("0xf7");
    let s = e.downcast_ref::<Socks5Error>().expect("socks");
    assert_eq!(
        s.kind(),
        Socks5ErrorKind::Reply(ReplyCode::OnionIntroductionTimedOut)
    );
    let mut chain = format!("{e}");
    let mut src = std::error::Error::source(s);
    while let Some(x) = src {
        chain.push_str(&format!(" / {x}"));
        src = x.source();
    }
    assert!(!chain.to_lowercase().contains("auth"), "{chain}");
    // No proxy: an onion is NeedsProxy.
    let e = DialStack::new()
        .build()
        .oneshot(Target::onion(&onion(), 1).unwrap())
        .await
        .expect_err("no proxy");
    assert!(e.downcast_ref::<NeedsProxy>().is_some(), "{e}");
}

/// only([]) refuses everything with NotAllowed, and no socket is opened.
#[tokio::test]
async fn router_only_empty_refuses_everything() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = l.local_addr().unwrap();
    let router = NetworkRouter::core(Some(proxy), None).only([]);
    for t in [
        Target::from(proxy),
        Target::onion(&onion(), 1).unwrap(),
        Target::name("peer.test", 1).unwrap(),
    ] {
        let e = router.clone().oneshot(t).await.expect_err("refused");
        assert!(matches!(
            e.downcast_ref::<RouteError>(),
            Some(RouteError::NotAllowed(_))
        ));
    }
    // Nothing pending in the accept queue: poll once.
    let polled = futures_util::FutureExt::now_or_never(l.accept());
    assert!(polled.is_none(), "a socket was opened");
}

/// TorResolver: an unassigned reply is Proxy with the reply kind; a silent
/// proxy times out at the set timeout.
#[tokio::test(start_paused = true)]
async fn tor_resolver_hostile_replies() {
    let (proxy, _) = tor_like(vec![5, 9, 0, 1, 0, 0, 0, 0, 0, 0]).await;
    let e = TorResolver::new(proxy)
        .oneshot(Name::new("peer.test").unwrap())
        .await
        .expect_err("0x09");
    assert_eq!(e.kind(), ResolveErrorKind::Proxy);
    let s = std::error::Error::source(&e)
        .and_then(|s| s.downcast_ref::<Socks5Error>())
        .expect("socks source");
    assert_eq!(s.kind(), Socks5ErrorKind::Reply(ReplyCode::Unassigned(9)));
    // Garbage after the greeting: Proxy, no panic.
    let (proxy, _) = tor_like(vec![0xff; 3]).await;
    let e = TorResolver::new(proxy)
        .oneshot(Name::new("peer.test").unwrap())
        .await
        .expect_err("garbage");
    assert_eq!(e.kind(), ResolveErrorKind::Proxy);
    // Silent.
    let silent = FakeSocks5::start(Behaviour::Silent, None).await;
    let started = tokio::time::Instant::now();
    let e = DefaultResolver::for_proxy(Some(silent.addr))
        .tor_timeout(Duration::from_secs(5))
        .oneshot(Name::new("peer.test").unwrap())
        .await
        .expect_err("silent");
    assert_eq!(e.kind(), ResolveErrorKind::Timeout);
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    let _: Option<&ResolveError> = std::error::Error::source(&e).and_then(|s| s.downcast_ref());
}

/// A connection that only receives (the peer talks, the node never
/// writes) is closed as Core closes it, by the send timeout: between one
/// and one and a quarter timeouts after it was made, while the peer still
/// talks.
#[tokio::test(start_paused = true)]
async fn inactivity_read_only_connection_closed_by_send_timeout() {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        let Ok((mut s, _)) = l.accept().await else {
            return;
        };
        for _ in 0..30 {
            tokio::time::sleep(Duration::from_secs(120)).await;
            if s.write_all(b"inv!").await.is_err() {
                break;
            }
        }
        std::future::pending::<()>().await;
    });
    let timeout = Duration::from_secs(20 * 60);
    let (b, mut ev) = record(ConnManager::builder().inactivity_timeout(Some(timeout)));
    let handle = b.start().expect("start");
    handle.connect(addr).await.expect("connect");
    let mut conn = ev.connected.recv().await.expect("connected");
    let start = tokio::time::Instant::now();
    let mut buf = [0u8; 4];
    let mut reads = 0;
    while conn.read_exact(&mut buf).await.is_ok() {
        reads += 1;
        assert!(reads < 30, "never closed");
    }
    let after = start.elapsed();
    assert!(conn.is_closed());
    assert!(
        after >= timeout && after <= timeout + timeout / 4 + Duration::from_secs(1),
        "closed after {after:?}"
    );
    let gone = ev.disconnected.recv().await.expect("disconnected");
    assert_eq!(gone.reason, DisconnectReason::Inactive);
    handle.stop().await;
}
