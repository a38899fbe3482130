//! Seeding and resolution: DNS seeds through a real DNS server on
//! loopback, Tor's RESOLVE through a SOCKS5 server that answers it, and the
//! address book.

mod support;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use connmgr::{
    DialStack,
    resolve::{Name, ResolveErrorKind, TorResolver},
    seed::{AddressBook, DnsSeeder},
    socks::{Socks5Error, Socks5ErrorKind},
};
use support::socks5::{Behaviour, FakeSocks5};
use tower::ServiceExt;

fn v4(a: u8, b: u8, c: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, a, b, c))
}

fn sa(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

/// Seeds resolve for real, against a DNS server on loopback, through the
/// hickory resolver service; btcd's service-filter prefix is asked for; the
/// address book takes what they found.
#[cfg(feature = "hickory")]
#[tokio::test]
async fn dns_seed_resolves_through_service() {
    use connmgr::resolve::HickoryResolver;
    let dns = support::dns::DnsServer::start(
        vec![
            ("seed.test", vec![v4(1, 0, 1), v4(1, 0, 2)]),
            ("x9.other.test", vec![v4(2, 0, 1)]),
        ],
        vec![],
    )
    .await;
    let resolver = HickoryResolver::new(&[dns.addr], Duration::from_secs(5));
    let found = resolver
        .clone()
        .oneshot(Name::new("seed.test").expect("name"))
        .await;
    assert_eq!(found.expect("resolved"), vec![v4(1, 0, 1), v4(1, 0, 2)]);
    let missing = resolver
        .clone()
        .oneshot(Name::new("nothing.test").expect("name"))
        .await;
    assert_eq!(
        missing.expect_err("no such name").kind(),
        ResolveErrorKind::NotFound
    );

    let seeder = DnsSeeder::new(resolver.clone())
        .seeds(["seed.test"])
        .port(18333);
    let seeded = seeder.resolve().await;
    assert_eq!(
        seeded.addrs,
        vec![sa(v4(1, 0, 1), 18333), sa(v4(1, 0, 2), 18333)]
    );
    assert!(seeded.failures.is_empty());

    let filtered = DnsSeeder::new(resolver).seeds(["other.test"]).services(9);
    assert_eq!(filtered.names(), ["x9.other.test"]);
    let book = AddressBook::new().seeder(filtered.port(8333));
    assert_eq!(book.seed().await, 1);
    assert!(book.contains(&sa(v4(2, 0, 1), 8333)));
    assert!(dns.queries().iter().any(|q| q == "x9.other.test"));
    assert_eq!(book.stats().seedings, 1);
}

/// A seed that never answers ends at the seeder's time limit while the
/// others resolve; and `stop` cancels a seeding in progress on the
/// manager's fill task.
#[cfg(feature = "hickory")]
#[tokio::test(start_paused = true)]
async fn dns_seed_timeout_and_cancel() {
    use connmgr::{manager::ConnManager, resolve::HickoryResolver};
    let dns =
        support::dns::DnsServer::start(vec![("seed.test", vec![v4(3, 0, 1)])], vec!["slow.test"])
            .await;
    let resolver = HickoryResolver::new(&[dns.addr], Duration::from_secs(60));
    let seeder = DnsSeeder::new(resolver)
        .seeds(["seed.test", "slow.test"])
        .timeout(Duration::from_secs(10));
    let start = tokio::time::Instant::now();
    let seeded = seeder.resolve().await;
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(10),
        "ends at the limit"
    );
    assert_eq!(seeded.addrs, vec![sa(v4(3, 0, 1), 8333)]);
    assert_eq!(seeded.failures.len(), 1);
    assert_eq!(seeded.failures[0].kind(), ResolveErrorKind::Timeout);
    assert_eq!(seeded.failures[0].name(), "slow.test");

    // A manager seeding from the slow seed only: stop cancels it.
    let slow = DnsSeeder::new(HickoryResolver::new(&[dns.addr], Duration::from_secs(60)))
        .seeds(["slow.test"])
        .timeout(Duration::from_secs(3600));
    let book = AddressBook::new().seeder(slow);
    let handle = ConnManager::builder()
        .address_book(book.clone())
        .start()
        .expect("start");
    let asked = || dns.queries().iter().filter(|q| *q == "slow.test").count();
    support::until("the seeding is under way", || asked() >= 2).await;
    handle.stop().await;
    assert!(handle.is_stopped());
    assert_eq!(book.stats().seedings, 0, "cancelled, never finished");
}

/// Tor's RESOLVE answers with IPv4 or IPv6; both come back.
#[tokio::test]
async fn tor_resolve_ipv4_and_ipv6() {
    let proxy = FakeSocks5::start(
        Behaviour::Resolve(vec![
            ("v4.test".into(), v4(4, 0, 1)),
            ("v6.test".into(), IpAddr::V6(Ipv6Addr::LOCALHOST)),
        ]),
        None,
    )
    .await;
    let resolver = TorResolver::new(proxy.addr);
    let name = |n: &str| Name::new(n).expect("name");
    assert_eq!(
        resolver.clone().oneshot(name("v4.test")).await.expect("v4"),
        vec![v4(4, 0, 1)]
    );
    assert_eq!(
        resolver.clone().oneshot(name("v6.test")).await.expect("v6"),
        vec![IpAddr::V6(Ipv6Addr::LOCALHOST)]
    );
    let err = resolver
        .oneshot(name("none.test"))
        .await
        .expect_err("unknown");
    assert_eq!(err.kind(), ResolveErrorKind::NotFound);
    let socks = std::error::Error::source(&err)
        .and_then(|e| e.downcast_ref::<Socks5Error>())
        .expect("a typed SOCKS error");
    assert_eq!(
        socks.kind(),
        Socks5ErrorKind::Reply(connmgr::socks::ReplyCode::HostUnreachable)
    );
    assert_eq!(proxy.resolved_names(), ["v4.test", "v6.test", "none.test"]);
}

/// A name Tor cannot resolve ("host unreachable" to RESOLVE) is not found,
/// and the proxy is fine; a proxy that cannot be reached is a proxy
/// failure.
#[tokio::test]
async fn tor_resolve_not_found_is_not_proxy_failure() {
    let proxy = FakeSocks5::start(Behaviour::Resolve(vec![]), None).await;
    let resolver = TorResolver::new(proxy.addr);
    for unknown in ["no-such-name.test", "abcdefghijklmnop.onion", "foo.exit"] {
        let err = resolver
            .clone()
            .oneshot(Name::new(unknown).expect("name"))
            .await
            .expect_err("not found");
        assert_eq!(err.kind(), ResolveErrorKind::NotFound, "{unknown}: {err}");
    }
    let down = support::refused_addr().await;
    let err = TorResolver::new(down)
        .oneshot(Name::new("seed.test").expect("name"))
        .await
        .expect_err("no proxy");
    assert_eq!(err.kind(), ResolveErrorKind::Proxy);
}

/// A resolver wrapped in tower layers (a timeout, a concurrency limit) and
/// failing with an error of its own seeds as well: its errors become typed
/// `ResolveError`s. The stack's resolver's RESOLVE timeout can be set.
#[tokio::test(start_paused = true)]
async fn seeder_takes_layered_resolver() {
    let resolver = tower::ServiceBuilder::new()
        .timeout(Duration::from_secs(2))
        .concurrency_limit(4)
        .service(tower::service_fn(|name: Name| async move {
            match name.as_str() {
                "good.test" => Ok(vec![v4(8, 0, 1)]),
                "broken.test" => Err(std::io::Error::other("server on fire")),
                _ => std::future::pending().await,
            }
        }));
    let seeder = DnsSeeder::new(resolver)
        .seeds(["good.test", "broken.test", "silent.test"])
        .port(8333);
    let seeded = seeder.resolve().await;
    assert_eq!(seeded.addrs, vec![SocketAddr::new(v4(8, 0, 1), 8333)]);
    let mut kinds: Vec<ResolveErrorKind> = seeded.failures.iter().map(|e| e.kind()).collect();
    kinds.sort_by_key(|k| k.to_string());
    assert_eq!(
        kinds,
        vec![ResolveErrorKind::Failed, ResolveErrorKind::Timeout]
    );
    let custom = connmgr::resolve::ResolveError::new(ResolveErrorKind::NotFound, "x.test", None);
    assert_eq!(custom.kind(), ResolveErrorKind::NotFound);

    let proxy = FakeSocks5::start(Behaviour::Silent, None).await;
    let started = tokio::time::Instant::now();
    let err = DialStack::new()
        .socks5(proxy.addr)
        .resolver()
        .tor_timeout(Duration::from_secs(3))
        .oneshot(Name::new("seed.test").expect("name"))
        .await
        .expect_err("silent proxy");
    assert_eq!(err.kind(), ResolveErrorKind::Timeout);
    assert_eq!(started.elapsed(), Duration::from_secs(3));
}

/// A proxy that never answers: RESOLVE ends at its time limit, exactly.
#[tokio::test(start_paused = true)]
async fn tor_resolve_timeout() {
    let proxy = FakeSocks5::start(Behaviour::Silent, None).await;
    let resolver = TorResolver::new(proxy.addr).timeout(Duration::from_secs(5));
    let start = tokio::time::Instant::now();
    let err = resolver
        .oneshot(Name::new("seed.test").expect("name"))
        .await
        .expect_err("times out");
    assert_eq!(err.kind(), ResolveErrorKind::Timeout);
    assert_eq!(start.elapsed(), Duration::from_secs(5));
}

/// With a dial stack through a proxy, its resolver asks the proxy: a name
/// only the proxy knows (`.invalid` never resolves anywhere else) seeds the
/// book, and the proxy saw the query.
#[tokio::test]
async fn seeding_through_proxy_never_touches_system_resolver() {
    let proxy = FakeSocks5::start(
        Behaviour::Resolve(vec![("seed.invalid".into(), v4(5, 0, 1))]),
        None,
    )
    .await;
    let stack = DialStack::new().socks5(proxy.addr);
    let seeder = DnsSeeder::new(stack.resolver())
        .seeds(["seed.invalid"])
        .port(8333);
    let book = AddressBook::new().seeder(seeder);
    assert_eq!(book.seed().await, 1);
    assert!(book.contains(&sa(v4(5, 0, 1), 8333)));
    assert_eq!(proxy.resolved_names(), ["seed.invalid"]);
    // The system resolver is not asked: it could not have answered.
    let system = DialStack::new().resolver();
    let err = system
        .oneshot(Name::new("seed.invalid").expect("name"))
        .await
        .expect_err("the system does not know the name");
    assert_ne!(err.kind(), ResolveErrorKind::Proxy);
}

/// The book holds at most its capacity and each address once.
#[test]
fn address_book_bounded_and_deduplicated() {
    let book = AddressBook::with_capacity(3);
    assert!(book.add(sa(v4(6, 0, 1), 1)));
    assert!(!book.add(sa(v4(6, 0, 1), 1)), "duplicate");
    assert_eq!(book.extend((2..=5).map(|h| sa(v4(6, 0, h), 1))), 2);
    assert_eq!(book.len(), 3);
    assert_eq!(book.stats().full, 2);
}

/// Picks come from netgroups the manager is not connected to while there
/// are any; when every group is taken, any address will do.
#[tokio::test(start_paused = true)]
async fn address_book_prefers_new_netgroups() {
    let book = AddressBook::new().rng_seed(1);
    book.extend((1..=10).map(|h| sa(v4(7, 0, h), 1)));
    let fresh = sa(v4(8, 0, 1), 1);
    book.add(fresh);
    book.connected(&sa(v4(7, 0, 1), 1));
    for _ in 0..200 {
        assert_eq!(book.pick(), Some(fresh));
    }
    book.connected(&fresh);
    let picks: std::collections::HashSet<_> = (0..200).filter_map(|_| book.pick()).collect();
    assert!(picks.len() > 2, "any address once every group is taken");
    book.disconnected(&fresh);
    assert_eq!(book.pick(), Some(fresh));
}

/// A failed address backs off (a minute, then two), and after three
/// failures in a row it is dropped; a success clears the count.
#[tokio::test(start_paused = true)]
async fn address_book_backs_off_failures() {
    let book = AddressBook::new();
    let addr = sa(v4(9, 0, 1), 1);
    book.add(addr);
    book.failed(&addr);
    assert_eq!(book.pick(), None, "backing off");
    tokio::time::advance(Duration::from_secs(60)).await;
    assert_eq!(book.pick(), Some(addr));
    book.failed(&addr);
    tokio::time::advance(Duration::from_secs(119)).await;
    assert_eq!(book.pick(), None, "two minutes after the second failure");
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(book.pick(), Some(addr));
    book.connected(&addr);
    book.failed(&addr);
    book.failed(&addr);
    assert!(book.contains(&addr), "a success cleared the count");
    book.failed(&addr);
    assert!(!book.contains(&addr), "dropped after three in a row");
    assert_eq!(book.stats().dropped, 1);
}
