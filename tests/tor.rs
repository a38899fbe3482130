//! Against a real, private Tor network on loopback (`support::tor`): onion
//! services through the dial stack and the manager, stream isolation seen
//! on the ControlPort, and Tor's RESOLVE.
//!
//! The network starts once for this test binary (about 25 s) and every
//! test shares it. Without tor installed the tests are skipped with a
//! message, unless `CI=true`. No paused time here: every wait on the
//! network is bounded by [`LIMIT`].

mod support;

use std::{
    collections::BTreeSet,
    net::IpAddr,
    time::{Duration, Instant},
};

use connmgr::{
    DialStack, Target,
    manager::{Builder, ConnKind, ConnState},
    policy::{Network, PeerAddr},
    resolve::{Name, ResolveErrorKind, TorResolver},
};
use support::tor;
use tokio::{io::AsyncReadExt, sync::mpsc};
use tower::ServiceExt;

/// The limit of every wait on the network.
const LIMIT: Duration = Duration::from_secs(120);

/// Runs `f` under [`LIMIT`], failing with `what` and the tors' logs.
async fn within<T>(net: &tor::TorNet, what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(LIMIT, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: not within {LIMIT:?}\n{}", net.logs()),
    }
}

/// The dial stack reaches an echo server behind a v3 onion service,
/// through the client tor's SocksPort.
#[tokio::test]
async fn tor_onion_dial_through_real_tor() {
    let Some(net) = tor::net("tor_onion_dial_through_real_tor").await else {
        return;
    };
    let stack = DialStack::new().socks5(net.socks).build();
    let target = Target::onion(&net.web, tor::PEER_PORT).expect("the web service's name");
    let mut conn = within(net, "the onion dial", stack.oneshot(target))
        .await
        .expect("the onion dial");
    within(
        net,
        "the echo",
        support::assert_echo(&mut conn, b"hello through tor"),
    )
    .await;
}

/// The manager keeps a permanent onion peer connected across a restart of
/// the onion service: the tor that publishes it is killed (the stream
/// ends, the application drops the connection) and started again from the
/// same HiddenServiceDir, so under the same address; the manager
/// reconnects on its own.
///
/// The stack uses Tor stream isolation, as a node with onion peers should:
/// a dial made just after the service died can be acknowledged by one of
/// its old introduction points and then wait on a rendezvous circuit that
/// no service will ever join. Tor does not expire such a v3 circuit, and
/// without isolation every later stream to that service waits on the same
/// one (seen here in about one run in six). With fresh credentials each
/// retry, after the manager's connect timeout, builds a rendezvous of its
/// own.
#[tokio::test]
async fn tor_permanent_onion_peer_reconnects() {
    let Some(net) = tor::net("tor_permanent_onion_peer_reconnects").await else {
        return;
    };
    let echo = support::echo_target().await;
    let services = vec![("peer".to_string(), vec![(tor::PEER_PORT, echo)])];
    let mut onion = tokio::task::spawn_blocking(move || net.onion_service("restart", services))
        .await
        .expect("the onion-service task")
        .unwrap_or_else(|e| panic!("the test's own onion service: {e}"));
    let host = onion.hosts[0].clone();
    let target = Target::onion(&host, tor::PEER_PORT).expect("onion name");

    let (tx, mut connected) = mpsc::unbounded_channel();
    let (dtx, mut disconnected) = mpsc::unbounded_channel();
    let failures = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let failed = failures.clone();
    let handle = Builder::new(DialStack::new().socks5_tor_isolation(net.socks).build())
        .target_outbound(0)
        .retry_base(Duration::from_secs(1))
        .retry_cap(Duration::from_secs(4))
        .connect_timeout(Some(Duration::from_secs(20)))
        .on_connection(move |c| {
            let _ = tx.send(c);
        })
        .on_disconnection(move |d| {
            let _ = dtx.send(d);
        })
        .on_dial_failure(move |f| {
            let mut failed = failed.lock().expect("failures");
            failed.push(format!("{:?}", f.error));
        })
        .start()
        .expect("start the manager");
    let id = handle
        .connect_permanent(target.clone())
        .await
        .expect("connect_permanent");
    let mut conn = within(net, "the first connection", connected.recv())
        .await
        .expect("a connection");
    assert_eq!(conn.addr(), &target);
    within(
        net,
        "echo before",
        support::assert_echo(&mut conn, b"before"),
    )
    .await;

    // The service goes away: the stream through Tor ends, and the
    // application lets go of the connection.
    onion = tokio::task::spawn_blocking(move || {
        onion.kill();
        onion
    })
    .await
    .expect("kill the onion service");
    let mut buf = [0u8; 16];
    let ended = within(net, "the end of the stream", conn.read(&mut buf)).await;
    assert!(
        matches!(ended, Ok(0) | Err(_)),
        "the stream must end with its service, read {ended:?}"
    );
    drop(conn);
    let gone = within(net, "the disconnection", disconnected.recv())
        .await
        .expect("a disconnection");
    assert_eq!(gone.info.id, id);
    assert!(
        gone.reconnect_at.is_some(),
        "a permanent peer is reconnected"
    );

    // Back under the same address: the manager reconnects on its own.
    let started = Instant::now();
    let onion = tokio::task::spawn_blocking(move || {
        let restarted = onion.start();
        (onion, restarted)
    })
    .await
    .expect("restart task");
    if let Err(e) = onion.1 {
        panic!("restarting the onion service: {e}");
    }
    let onion = onion.0;
    assert_eq!(
        onion.hosts[0], host,
        "the same HiddenServiceDir, the same address"
    );
    let mut conn = match tokio::time::timeout(LIMIT, connected.recv()).await {
        Ok(c) => c.expect("a connection"),
        Err(_) => panic!(
            "no reconnection within {LIMIT:?} of the restart; dial failures: {:?}\n{}\n{}",
            failures.lock().expect("failures"),
            onion.log(),
            net.logs()
        ),
    };
    tor::say(&format!(
        "tor_permanent_onion_peer_reconnects: reconnected {:.1} s after the restart began",
        started.elapsed().as_secs_f64()
    ));
    assert_eq!(conn.id(), id, "the same permanent request");
    within(net, "echo after", support::assert_echo(&mut conn, b"after")).await;
    assert_eq!(
        handle.state(id).await.expect("state"),
        ConnState::Established
    );
    handle.stop().await;
    drop(onion);
}

/// One `650 STREAM <id> SUCCEEDED <circuit> <target> ...` event.
#[derive(Debug)]
struct Stream {
    circuit: String,
    target: String,
    username: Option<String>,
}

fn parse_stream(event: &str) -> Option<Stream> {
    let words: Vec<&str> = event.split_whitespace().collect();
    if words.get(1) != Some(&"STREAM") || words.get(3) != Some(&"SUCCEEDED") {
        return None;
    }
    let username = words
        .iter()
        .find_map(|w| w.strip_prefix("SOCKS_USERNAME="))
        .map(|u| u.trim_matches('"').to_owned());
    Some(Stream {
        circuit: words.get(4)?.to_string(),
        target: words.get(5)?.to_string(),
        username,
    })
}

/// With Tor stream isolation (`DialStack::socks5_tor_isolation`) two
/// connections to one onion service go out on two circuits, each tagged
/// with its own SOCKS username; without it, two connections share one
/// circuit. Seen on the client's ControlPort: STREAM events carry the
/// circuit and the username, and `GETINFO circuit-status` tags each
/// isolated circuit with its username.
#[tokio::test]
async fn tor_isolation_distinct_circuits() {
    let Some(net) = tor::net("tor_isolation_distinct_circuits").await else {
        return;
    };
    let mut control = tokio::task::spawn_blocking(move || {
        let mut c = net.client()?;
        c.command("SETEVENTS STREAM", Instant::now() + Duration::from_secs(10))?;
        Ok::<_, String>(c)
    })
    .await
    .expect("control task")
    .unwrap_or_else(|e| panic!("the client's control port: {e}"));

    // Ports only this test uses, so that its streams are told apart from
    // the other tests' by their target.
    let isolated_target = Target::onion(&net.web, tor::ISOLATED_PORT).expect("onion");
    let shared_target = Target::onion(&net.web, tor::SHARED_PORT).expect("onion");
    let isolated = DialStack::new().socks5_tor_isolation(net.socks).build();
    let shared = DialStack::new().socks5(net.socks).build();
    let mut held = Vec::new();
    for (stack, target) in [
        (&isolated, &isolated_target),
        (&isolated, &isolated_target),
        (&shared, &shared_target),
        (&shared, &shared_target),
    ] {
        let mut conn = within(net, "a dial", stack.clone().oneshot(target.clone()))
            .await
            .expect("a dial through tor");
        within(net, "an echo", support::assert_echo(&mut conn, b"iso")).await;
        held.push(conn);
    }

    let isolated_name = format!("{}:{}", net.web, tor::ISOLATED_PORT);
    let shared_name = format!("{}:{}", net.web, tor::SHARED_PORT);
    let (streams, status, control) = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut mine = Vec::new();
        for _ in 0..10_000 {
            let ours = |s: &Stream| s.target == isolated_name || s.target == shared_name;
            if mine.len() == 4 {
                break;
            }
            match control.event(deadline)? {
                Some(e) => mine.extend(parse_stream(&e).filter(ours)),
                None => return Err(format!("only these streams seen in time: {mine:?}")),
            }
        }
        let status = control.command("GETINFO circuit-status", deadline)?;
        Ok::<_, String>((mine, status, control))
    })
    .await
    .expect("event task")
    .unwrap_or_else(|e| panic!("STREAM events: {e}\n{}", net.logs()));
    drop(control);
    drop(held);

    let (iso, plain): (Vec<&Stream>, Vec<&Stream>) = streams
        .iter()
        .partition(|s| s.target.ends_with(&format!(":{}", tor::ISOLATED_PORT)));
    assert_eq!((iso.len(), plain.len()), (2, 2), "{streams:?}");
    let users: BTreeSet<_> = iso.iter().map(|s| s.username.clone()).collect();
    assert_eq!(users.len(), 2, "fresh credentials each: {iso:?}");
    assert!(users.iter().all(Option::is_some), "{iso:?}");
    assert_ne!(
        iso[0].circuit, iso[1].circuit,
        "isolation on: two circuits: {iso:?}"
    );
    assert_eq!(
        plain[0].circuit, plain[1].circuit,
        "isolation off: one circuit: {plain:?}"
    );
    assert!(plain.iter().all(|s| s.username.is_none()), "{plain:?}");
    for s in &iso {
        let user = s.username.as_deref().unwrap_or_default();
        let tagged = status.iter().any(|l| {
            let l = l.trim_start_matches("250+circuit-status=");
            l.split_whitespace().next() == Some(s.circuit.as_str())
                && l.contains(&format!("SOCKS_USERNAME=\"{user}\""))
        });
        assert!(
            tagged,
            "circuit {} tagged with {user} in circuit-status: {status:#?}",
            s.circuit
        );
    }
}

/// Tor's RESOLVE through the crate's `TorResolver`: a name the exits'
/// DNS server knows resolves to its address (and that server was asked);
/// an unknown name and an onion name (which Tor refuses to resolve) are
/// typed `NotFound` errors.
#[tokio::test]
async fn tor_resolve_through_real_tor() {
    let Some(net) = tor::net("tor_resolve_through_real_tor").await else {
        return;
    };
    let resolver = TorResolver::new(net.socks).timeout(LIMIT);
    let name = Name::new(tor::DNS_NAME).expect("name");
    let ips = within(net, "RESOLVE", resolver.clone().oneshot(name))
        .await
        .expect("the exits' DNS server knows the name");
    assert_eq!(ips, [IpAddr::V4(tor::DNS_ADDR)]);
    assert!(
        net.dns.queries().iter().any(|q| q == tor::DNS_NAME),
        "an exit asked the loopback DNS server: {:?}",
        net.dns.queries()
    );

    let unknown = Name::new("missing.tor.test").expect("name");
    let err = within(net, "RESOLVE unknown", resolver.clone().oneshot(unknown))
        .await
        .expect_err("an unknown name");
    assert_eq!(err.kind(), ResolveErrorKind::NotFound, "{err}");

    let onion = Name::new(net.web.clone()).expect("name");
    let err = within(net, "RESOLVE onion", resolver.oneshot(onion))
        .await
        .expect_err("Tor does not resolve onion names");
    assert_eq!(err.kind(), ResolveErrorKind::NotFound, "{err}");
}

/// A manager fed only onion addresses (three onion services, so three
/// hosts) fills its outbound target: onion peers do not count for
/// netgroup diversity, and each connection carries data.
#[tokio::test]
async fn tor_onion_only_manager_fills_target() {
    let Some(net) = tor::net("tor_onion_only_manager_fills_target").await else {
        return;
    };
    let targets: Vec<Target> = net
        .peers
        .iter()
        .map(|h| Target::onion(h, tor::PEER_PORT).expect("onion"))
        .collect();
    assert_eq!(targets.len(), 3);
    let mut next = 0usize;
    let source_targets = targets.clone();
    let (held, on_connection) = support::manager::keep();
    let handle = Builder::new(DialStack::new().socks5(net.socks).build())
        .target_outbound(3)
        .retry_base(Duration::from_secs(1))
        .connect_timeout(Some(Duration::from_secs(60)))
        .address_source(move || {
            next = next.wrapping_add(1);
            std::future::ready(Some(source_targets[next % source_targets.len()].clone()))
        })
        .on_connection(on_connection)
        .start()
        .expect("start the manager");
    within(net, "three onion connections", async {
        for _ in 0..10_000 {
            let snap = handle.snapshot().await.expect("snapshot");
            if snap.established(ConnKind::Automatic) == 3 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    let snap = handle.snapshot().await.expect("snapshot");
    let established: Vec<_> = snap
        .entries
        .iter()
        .filter(|e| e.state == ConnState::Established)
        .collect();
    assert_eq!(established.len(), 3, "{:?}", snap.entries);
    assert!(established.iter().all(|e| e.network == Network::Onion));
    let hosts: BTreeSet<_> = established
        .iter()
        .map(|e| e.info.addr.host().to_string())
        .collect();
    assert_eq!(hosts.len(), 3, "three hosts");
    let mut conns = std::mem::take(&mut *held.lock().expect("held"));
    assert_eq!(conns.len(), 3);
    for conn in &mut conns {
        assert!(targets.contains(conn.addr()));
        within(net, "an echo", support::assert_echo(conn, b"onion only")).await;
    }
    handle.stop().await;
}

/// hyper's client (feature `hyper`) fetches a page from the HTTP server
/// behind an onion service, through `HyperConnector` and the client tor.
#[cfg(feature = "hyper")]
#[tokio::test]
async fn tor_hyper_client_through_onion() {
    use http_body_util::BodyExt;

    let Some(net) = tor::net("tor_hyper_client_through_onion").await else {
        return;
    };
    let connector = connmgr::hyper::HyperConnector::new(DialStack::new().socks5(net.socks));
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector);
    let before = net.http_requests.load(std::sync::atomic::Ordering::SeqCst);
    let uri = format!("http://{}/", net.web).parse().expect("uri");
    let response = within(net, "the GET", client.get(uri))
        .await
        .expect("a response through the onion service");
    assert!(response.status().is_success(), "{response:?}");
    let body = within(net, "the body", response.into_body().collect())
        .await
        .expect("the body")
        .to_bytes();
    assert_eq!(&body[..], tor::HTTP_BODY.as_bytes());
    assert!(net.http_requests.load(std::sync::atomic::Ordering::SeqCst) > before);
}
