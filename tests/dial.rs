//! The dial stack over real loopback sockets: TCP, a real SOCKS5 proxy
//! (microsocks), and an in-process proxy that misbehaves on purpose.

mod support;

use std::{io, net::SocketAddr, time::Duration};

use connmgr::{
    DialStack,
    connect::{ConnectError, TcpConnector},
    socks::{ReplyCode, Socks5Error, Socks5ErrorKind, Socks5Layer},
};
use support::socks5::{Behaviour, FakeSocks5, RealSocks5};
use tower::{BoxError, ServiceBuilder, ServiceExt};

fn socks_kind(err: &BoxError) -> Socks5ErrorKind {
    err.downcast_ref::<Socks5Error>()
        .unwrap_or_else(|| panic!("expected a Socks5Error, got {err:?}"))
        .kind()
}

/// A refused port gives a connection-refused error naming the address.
#[tokio::test]
async fn refused_port_is_connection_refused() {
    let addr = support::refused_addr().await;
    let err = TcpConnector::new()
        .oneshot(addr)
        .await
        .expect_err("nothing listens");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    assert_eq!(err.addr(), addr);
    assert!(err.to_string().contains(&addr.to_string()));

    // The same error comes through the default stack, boxed.
    let err = DialStack::new()
        .build()
        .oneshot(addr)
        .await
        .expect_err("refused");
    let tcp = err.downcast_ref::<ConnectError>().expect("a ConnectError");
    assert_eq!(tcp.kind(), io::ErrorKind::ConnectionRefused);
}

/// The connector applies its socket options.
#[tokio::test]
async fn connector_sets_socket_options() {
    let target = support::echo_target().await;
    let connector = TcpConnector::new()
        .keepalive(Some(Duration::from_secs(42)))
        .local_address(Some("127.0.0.1".parse().expect("ip")));
    let mut stream = connector.oneshot(target).await.expect("connect");
    assert!(stream.nodelay().expect("nodelay"));
    let sock = socket2::SockRef::from(&stream);
    assert!(sock.keepalive().expect("keepalive"));
    assert_eq!(
        sock.tcp_keepalive_time().expect("keepalive time"),
        Duration::from_secs(42)
    );
    assert_eq!(stream.peer_addr().expect("peer"), target);
    support::assert_echo(&mut stream, b"hello").await;

    let plain = TcpConnector::new()
        .nodelay(false)
        .oneshot(target)
        .await
        .expect("connect");
    assert!(!plain.nodelay().expect("nodelay"));
}

/// Dials through a real SOCKS5 server without authentication and exchanges
/// bytes with the target.
#[tokio::test]
async fn socks5_real_proxy_no_auth() {
    support::trace_init();
    let target = support::echo_target().await;
    let proxy = RealSocks5::start(None).await;
    let dialer = DialStack::new().socks5(proxy.addr).build();
    let mut stream = dialer.oneshot(target).await.expect("dial through proxy");
    assert_eq!(
        stream.peer_addr().expect("peer"),
        proxy.addr,
        "the stream goes to the proxy"
    );
    support::assert_echo(&mut stream, b"through the proxy").await;
}

/// Dials through a real SOCKS5 server that requires username/password; a
/// wrong password is an `AuthRejected` error, no credentials `AuthRequired`
/// or `NoAcceptableAuthMethod`.
#[tokio::test]
async fn socks5_real_proxy_with_password() {
    let target = support::echo_target().await;
    let proxy = RealSocks5::start(Some(("alice", "s3cret"))).await;

    let layer = Socks5Layer::new(proxy.addr)
        .credentials("alice", "s3cret")
        .expect("valid");
    let dialer = ServiceBuilder::new()
        .layer(layer)
        .service(TcpConnector::new());
    let mut stream = dialer.oneshot(target).await.expect("dial with password");
    support::assert_echo(&mut stream, b"authenticated").await;

    let wrong = Socks5Layer::new(proxy.addr)
        .credentials("alice", "wrong")
        .expect("valid");
    let err = ServiceBuilder::new()
        .layer(wrong)
        .service(TcpConnector::new())
        .oneshot(target)
        .await
        .expect_err("wrong password");
    assert!(
        matches!(err.kind(), Socks5ErrorKind::AuthRejected(s) if s != 0),
        "{err}"
    );

    let err = ServiceBuilder::new()
        .layer(Socks5Layer::new(proxy.addr))
        .service(TcpConnector::new())
        .oneshot(target)
        .await
        .expect_err("no credentials");
    assert_eq!(err.kind(), Socks5ErrorKind::NoAcceptableAuthMethod, "{err}");
}

/// A target the proxy cannot reach is a SOCKS reply error, not a hang.
#[tokio::test]
async fn socks5_real_proxy_refused_target() {
    let target = support::refused_addr().await;
    let proxy = RealSocks5::start(None).await;
    let err = DialStack::new()
        .socks5(proxy.addr)
        .build()
        .oneshot(target)
        .await
        .expect_err("refused");
    assert!(
        matches!(socks_kind(&err), Socks5ErrorKind::Reply(_)),
        "{err}"
    );
}

/// An unreachable proxy is `ProxyUnreachable`, with the TCP error as source.
#[tokio::test]
async fn socks5_unreachable_proxy() {
    let proxy = support::refused_addr().await;
    let target: SocketAddr = "127.0.0.1:8333".parse().expect("addr");
    let err = DialStack::new()
        .socks5(proxy)
        .build()
        .oneshot(target)
        .await
        .expect_err("no proxy");
    assert_eq!(socks_kind(&err), Socks5ErrorKind::ProxyUnreachable);
    let socks = err.downcast_ref::<Socks5Error>().expect("socks error");
    assert_eq!(socks.proxy(), proxy);
    let source = std::error::Error::source(socks).expect("source");
    let tcp = source
        .downcast_ref::<ConnectError>()
        .expect("the TCP error is kept");
    assert_eq!(tcp.kind(), io::ErrorKind::ConnectionRefused);
}

/// Tor stream isolation sends different credentials on every connection.
#[tokio::test]
async fn tor_isolation_sends_fresh_credentials() {
    let target = support::echo_target().await;
    let proxy = FakeSocks5::start_recording().await;
    let dialer = ServiceBuilder::new()
        .layer(Socks5Layer::new(proxy.addr).tor_isolation(true))
        .service(TcpConnector::new());
    for _ in 0..3 {
        let mut s = dialer.clone().oneshot(target).await.expect("isolated dial");
        support::assert_echo(&mut s, b"x").await;
    }
    let seen = proxy.seen_credentials();
    assert_eq!(seen.len(), 3);
    assert_ne!(seen[0], seen[1]);
    assert_ne!(seen[1], seen[2]);
    assert_ne!(seen[0].0, seen[1].0, "usernames differ too");
}

async fn dial_fake(behaviour: Behaviour, credentials: Option<(&str, &str)>) -> Socks5Error {
    let proxy = FakeSocks5::start(behaviour.clone(), credentials).await;
    let mut layer = Socks5Layer::new(proxy.addr);
    if let Some((u, p)) = credentials {
        layer = layer.credentials(u, p).expect("valid");
    }
    let target: SocketAddr = "127.0.0.1:8333".parse().expect("addr");
    ServiceBuilder::new()
        .layer(layer)
        .service(TcpConnector::new())
        .oneshot(target)
        .await
        .expect_err(&format!("{behaviour:?} must fail"))
}

/// Each kind of proxy misbehaviour gives its own typed error, with the
/// tokio-socks error kept as source.
#[tokio::test]
async fn misbehaving_proxy_errors_are_typed() {
    support::trace_init();
    let cases = [
        (
            Behaviour::CloseOnGreeting,
            None,
            Socks5ErrorKind::ProxyClosed,
        ),
        (Behaviour::WrongVersion, None, Socks5ErrorKind::Malformed),
        (
            Behaviour::ChooseMethod(0x01),
            None,
            Socks5ErrorKind::UnexpectedAuthMethod(0x01),
        ),
        (
            Behaviour::ChooseMethod(0xff),
            None,
            Socks5ErrorKind::NoAcceptableAuthMethod,
        ),
        (
            Behaviour::ChooseMethod(0x02),
            None,
            Socks5ErrorKind::AuthRequired,
        ),
        (
            Behaviour::RejectAuth,
            Some(("u", "p")),
            Socks5ErrorKind::AuthRejected(0x01),
        ),
        (
            Behaviour::TruncatedAddress,
            None,
            Socks5ErrorKind::Malformed,
        ),
    ];
    for (behaviour, creds, want) in cases {
        let err = dial_fake(behaviour.clone(), creds).await;
        assert_eq!(err.kind(), want, "{behaviour:?}: {err}");
        assert!(
            std::error::Error::source(&err).is_some(),
            "{behaviour:?} keeps its cause"
        );
    }
}

/// Every error reply code, assigned or not, is reported as that code.
#[tokio::test]
async fn every_reply_code_is_reported() {
    for code in (1..=8u8).chain([9, 0x42, 0xff]) {
        let err = dial_fake(Behaviour::Reply(code), None).await;
        let want = ReplyCode::from_byte(code).expect("non-zero");
        assert_eq!(
            err.kind(),
            Socks5ErrorKind::Reply(want),
            "code {code}: {err}"
        );
        assert!(err.to_string().contains("proxy replied"));
    }
}

/// Tor's extended reply codes (`ExtendedErrors` on its SocksPort) have
/// names, and no error in the chain talks of an authentication method.
#[tokio::test]
async fn tor_extended_errors_named() {
    let named = [
        (
            0xf0,
            ReplyCode::OnionDescriptorNotFound,
            "descriptor not found",
        ),
        (
            0xf1,
            ReplyCode::OnionDescriptorInvalid,
            "descriptor invalid",
        ),
        (
            0xf2,
            ReplyCode::OnionIntroductionFailed,
            "introduction failed",
        ),
        (0xf3, ReplyCode::OnionRendezvousFailed, "rendezvous failed"),
        (
            0xf4,
            ReplyCode::OnionClientAuthMissing,
            "authorization missing",
        ),
        (0xf5, ReplyCode::OnionClientAuthWrong, "authorization wrong"),
        (
            0xf6,
            ReplyCode::OnionAddressInvalid,
            "onion address invalid",
        ),
        (
            0xf7,
            ReplyCode::OnionIntroductionTimedOut,
            "introduction timed out",
        ),
    ];
    for (byte, code, text) in named {
        let err = dial_fake(Behaviour::Reply(byte), None).await;
        assert_eq!(err.kind(), Socks5ErrorKind::Reply(code), "{byte:#04x}");
        assert!(err.to_string().contains(text), "{err}");
        let mut chain = Some(&err as &(dyn std::error::Error + 'static));
        while let Some(e) = chain {
            assert!(
                !e.to_string().to_lowercase().contains("auth method"),
                "{byte:#04x}: {e}"
            );
            chain = e.source();
        }
    }
}

/// A proxy that accepts TCP and never answers ends by the timeout, with an
/// `Elapsed` error, after exactly the configured time.
#[tokio::test(start_paused = true)]
async fn silent_proxy_ends_by_timeout() {
    let proxy = FakeSocks5::start(Behaviour::Silent, None).await;
    let target: SocketAddr = "127.0.0.1:8333".parse().expect("addr");
    let started = tokio::time::Instant::now();
    let err = DialStack::new()
        .socks5(proxy.addr)
        .timeout(Some(Duration::from_secs(30)))
        .build()
        .oneshot(target)
        .await
        .expect_err("silent proxy");
    assert!(err.is::<tower::timeout::error::Elapsed>(), "got {err}");
    assert_eq!(started.elapsed(), Duration::from_secs(30));
}

/// The stack `DialStack` builds dials onion services and host names as
/// readily as `SocketAddr`s, through its proxy (the onion name goes to the
/// proxy as it is, checksum checked first); without a proxy they fail with
/// `NeedsProxy` before any socket opens; a manager can use `Target` as its
/// address type.
#[tokio::test]
async fn dial_stack_dials_onion_addresses() {
    let echo = support::echo_target().await;
    let onion = connmgr::policy::Host::Onion([0x3c; 32]).to_string();
    let proxy = FakeSocks5::start(
        Behaviour::Hosts(vec![(onion.clone(), echo), ("peer.test".into(), echo)]),
        None,
    )
    .await;
    let stack = DialStack::new().socks5(proxy.addr).build();
    let target: connmgr::Target = format!("{onion}:8333").parse().expect("onion target");
    let mut conn = stack
        .clone()
        .oneshot(target.clone())
        .await
        .expect("through the proxy");
    support::assert_echo(&mut conn, b"hello onion").await;
    let named = connmgr::Target::name("peer.test", 8333).expect("name");
    let mut conn = stack.clone().oneshot(named).await.expect("a name");
    support::assert_echo(&mut conn, b"hello name").await;
    assert_eq!(
        proxy.connected_names(),
        [onion.clone(), "peer.test".to_string()]
    );
    let ip = connmgr::Target::from(echo);
    let mut conn = stack
        .oneshot(ip)
        .await
        .expect("an IP, through the proxy too");
    support::assert_echo(&mut conn, b"hello ip").await;

    let err = DialStack::new()
        .build()
        .oneshot(target.clone())
        .await
        .expect_err("no proxy");
    assert!(err.is::<connmgr::NeedsProxy>(), "{err}");
    let mut bad = onion.clone().into_bytes();
    bad[10] = if bad[10] == b'a' { b'b' } else { b'a' };
    let bad = String::from_utf8(bad).expect("ascii");
    assert!(
        format!("{bad}:8333").parse::<connmgr::Target>().is_err(),
        "checksum"
    );
    use connmgr::policy::PeerAddr;
    assert_eq!(target.host().network(), connmgr::policy::Network::Onion);

    // As the manager's address type.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let handle = connmgr::manager::Builder::new(DialStack::new().socks5(proxy.addr).build())
        .on_connection(move |c| {
            let _ = tx.send(c);
        })
        .start()
        .expect("start");
    handle
        .connect_permanent(target.clone())
        .await
        .expect("connect");
    let conn = rx.recv().await.expect("connected to the onion");
    assert_eq!(conn.addr(), &target);
    handle.stop().await;
}

/// Each target goes through the stack of its network: IP targets direct,
/// onion targets through the Tor proxy only, names through the clearnet
/// proxy; an onion target with no onion route is a typed error.
#[tokio::test]
async fn route_by_network() {
    use connmgr::{
        Target,
        policy::Host,
        route::{NetworkRouter, RouteError},
    };
    let echo = support::echo_target().await;
    let onion = Host::Onion([0x5d; 32]).to_string();
    let tor = FakeSocks5::start(Behaviour::Hosts(vec![(onion.clone(), echo)]), None).await;
    let clearnet =
        FakeSocks5::start(Behaviour::Hosts(vec![("peer.test".into(), echo)]), None).await;

    // Core's -proxy=clearnet -onion=tor.
    let router = NetworkRouter::core(Some(clearnet.addr), Some(tor.addr));
    let onion_target: Target = format!("{onion}:8333").parse().expect("onion");
    let mut c = router
        .clone()
        .oneshot(onion_target.clone())
        .await
        .expect("onion via tor");
    support::assert_echo(&mut c, b"via tor").await;
    let mut c = router
        .clone()
        .oneshot(Target::name("peer.test", 8333).expect("name"))
        .await
        .expect("name via the clearnet proxy");
    support::assert_echo(&mut c, b"via proxy").await;
    assert_eq!(tor.connected_names(), std::slice::from_ref(&onion));
    assert_eq!(clearnet.connected_names(), ["peer.test".to_string()]);

    // Direct clearnet, onion through Tor (btcd's --onion alone).
    let router = NetworkRouter::new(DialStack::new().build())
        .onion(DialStack::new().socks5(tor.addr).build());
    let mut c = router
        .clone()
        .oneshot(Target::from(echo))
        .await
        .expect("direct");
    support::assert_echo(&mut c, b"direct").await;
    assert_eq!(
        tor.connected_names().len(),
        1,
        "the IP did not go through Tor"
    );

    // No onion route at all.
    let err = NetworkRouter::new(DialStack::new().build())
        .oneshot(onion_target)
        .await
        .expect_err("no route");
    assert_eq!(
        err.downcast_ref::<RouteError>(),
        Some(&RouteError::NoRoute(connmgr::policy::Network::Onion))
    );
}

/// An `onlynet` allow list refuses other networks before any socket opens:
/// the proxy never sees a connection.
#[tokio::test]
async fn onlynet_refuses_before_socket() {
    use connmgr::{
        Target,
        policy::Network,
        route::{NetworkRouter, RouteError},
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let proxy = listener.local_addr().expect("addr");
    let router = NetworkRouter::core(Some(proxy), None).only([Network::Onion]);
    for target in [
        Target::from(SocketAddr::from(([127, 0, 0, 1], 8333))),
        Target::from("[::1]:8333".parse::<SocketAddr>().expect("v6")),
        Target::name("seed.test", 8333).expect("name"),
    ] {
        let err = router
            .clone()
            .oneshot(target.clone())
            .await
            .expect_err("refused");
        assert!(
            matches!(
                err.downcast_ref::<RouteError>(),
                Some(RouteError::NotAllowed(_))
            ),
            "{target}: {err}"
        );
    }
    let accepted =
        tokio::time::timeout(std::time::Duration::from_millis(50), listener.accept()).await;
    assert!(accepted.is_err(), "no socket was opened to the proxy");
}
