//! A connection manager keeping a small local network connected, starting
//! from DNS seeds the first time and from its saved address table after.
//!
//! Starts sixteen loopback "peers" on 127.0.1.1 to 127.0.1.16, one port
//! (some accept and hold, some refuse, some accept and drop after a few
//! seconds) and a DNS server on loopback whose two seed names answer with
//! their addresses. The manager draws from an address manager
//! (`connmgr::addrman`, local addresses admitted since all of this is on
//! loopback), which seeds from those names (through hickory-resolver, asking
//! that server) only when it has nothing usable. It keeps Bitcoin Core's
//! outbound layout: 8 full-relay and 2 block-relay automatic connections,
//! feelers that test addresses of the new table (every 2 s on average here,
//! Core's 2 minutes shortened for the demo), plus 2 permanent peers, one of
//! which is down for the first seconds. Every second it shows the state
//! map, with each connection's class, and the counters per class. It stops
//! by itself after 20 seconds (or on Ctrl-C), saves its table with the
//! block-relay peers as anchors (in the system's temporary directory) and
//! prints a summary. Run it again: it starts from the saved table, dials
//! the anchors before anything else, and dials from the table before it
//! seeds.
//!
//! Run with:
//!
//! ```text
//! cargo run --example manager --features hickory
//! cargo run --example manager --features hickory -- 5     # run for 5 seconds
//! ```
//!
//! Everything happens on 127.0.0.0/8; nothing leaves the machine.

use std::{
    io::IsTerminal,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use connmgr::{
    addrman::AddrMan,
    backoff::JitterRng,
    manager::{ConnClass, ConnManager, ConnState, Snapshot},
    resolve::HickoryResolver,
    seed::DnsSeeder,
};
use tokio::{
    io::AsyncReadExt,
    net::TcpListener,
    time::{Instant, sleep},
};

/// The DNS server of the tests: a few lines of UDP.
#[allow(dead_code, unreachable_pub)]
#[path = "../tests/support/dns.rs"]
mod dns;

#[tokio::main]
async fn main() -> Result<(), connmgr::BoxError> {
    let run_for = std::env::args()
        .nth(1)
        .map(|s| s.parse::<u64>())
        .transpose()?
        .map_or(Duration::from_secs(20), Duration::from_secs);

    // The local network: one port, one address per peer. The same port
    // each run, when it is free, so that a saved table still points at it.
    let port = match TcpListener::bind("127.0.1.1:28333").await {
        Ok(_) => 28333,
        Err(_) => TcpListener::bind("127.0.1.1:0").await?.local_addr()?.port(),
    };
    let peer = |host: u8| SocketAddr::from(([127, 0, 1, host], port));
    for host in 1..=10 {
        holding_peer(peer(host)).await?;
    }
    // 127.0.1.11 to .13 refuse: nothing listens there.
    for (i, host) in (14..=16).enumerate() {
        flaky_peer(peer(host), Duration::from_secs(2 + 2 * i as u64)).await?;
    }
    let permanent_up = SocketAddr::from(([127, 0, 2, 1], port));
    holding_peer(permanent_up).await?;
    let permanent_late = SocketAddr::from(([127, 0, 2, 2], port));
    tokio::spawn(async move {
        // This permanent peer comes up after 8 seconds.
        sleep(Duration::from_secs(8)).await;
        if let Ok(listener) = TcpListener::bind(permanent_late).await {
            serve_holding(listener).await;
        }
    });

    // Two DNS seeds, served on loopback, resolved with hickory-resolver.
    let ips = |hosts: std::ops::RangeInclusive<u8>| -> Vec<IpAddr> {
        hosts.map(|h| peer(h).ip()).collect()
    };
    let dns = dns::DnsServer::start(
        vec![
            ("seed-a.connmgr.test", ips(1..=8)),
            ("seed-b.connmgr.test", ips(9..=16)),
        ],
        vec![],
    )
    .await;
    let seeder = DnsSeeder::new(HickoryResolver::new(&[dns.addr], Duration::from_secs(2)))
        .seeds(["seed-a.connmgr.test", "seed-b.connmgr.test"])
        .port(port);
    let file = std::env::temp_dir().join("connmgr-example-peers.dat");
    let (table, bans, error) = AddrMan::load_or_new(&file, true);
    if let Some(error) = error {
        println!("the saved table was unusable ({error}); starting empty");
    }
    let saved = table.stats();
    if table.is_empty() {
        println!(
            "no saved table at {}: seeding from DNS first",
            file.display()
        );
    } else {
        println!(
            "starting from {} saved addresses ({} tried) in {}: dialling them before seeding",
            table.len(),
            saved.tried,
            file.display()
        );
    }
    let anchors = table.anchors();
    if !anchors.is_empty() {
        let shown: Vec<String> = anchors.iter().map(ToString::to_string).collect();
        println!(
            "anchors from the last run, dialled first as block-relay: {}",
            shown.join(", ")
        );
    }
    let table = table.seeder(seeder);

    let rng = JitterRng::seeded(7);
    let events = Arc::new(AtomicU64::new(0));
    let (on_conn, on_disc) = (events.clone(), events.clone());
    let handle = ConnManager::builder()
        // Core's layout: 8 full-relay, 2 block-relay, feelers, 2 anchors.
        .core_layout()
        .feelers(Some(Duration::from_secs(2)))
        .feeler_hold(Duration::from_secs(1))
        .retry_base(Duration::from_millis(500))
        .retry_cap(Duration::from_secs(4))
        .stable_period(Duration::from_secs(3))
        .max_failures(5)
        .connect_timeout(Some(Duration::from_secs(2)))
        .rng(rng)
        .address_manager(table.clone())
        .bans(bans)
        .save_to(&file, Duration::from_secs(60))
        .on_connection(move |mut conn| {
            on_conn.fetch_add(1, Ordering::Relaxed);
            if conn.class() == ConnClass::Feeler {
                // A feeler has done its job once it connected (a node
                // would close it after the version handshake).
                return;
            }
            // The "peer protocol": read until the peer hangs up; on a
            // block-relay connection a node would relay blocks only.
            tokio::spawn(async move {
                let mut buf = [0u8; 256];
                while matches!(conn.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        })
        .on_disconnection(move |_| {
            on_disc.fetch_add(1, Ordering::Relaxed);
        })
        .start()?;
    handle.connect_permanent(permanent_up).await?;
    handle.connect_permanent(permanent_late).await?;

    let started = Instant::now();
    let tty = std::io::stdout().is_terminal();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    while started.elapsed() < run_for {
        let snapshot = handle.snapshot().await?;
        render(&snapshot, started.elapsed(), tty);
        tokio::select! {
            _ = sleep(Duration::from_secs(1)) => {}
            _ = &mut ctrl_c => break,
        }
    }

    let last = handle.snapshot().await?;
    let stop_started = Instant::now();
    handle.stop().await;
    let anchors: Vec<String> = table.anchors().iter().map(ToString::to_string).collect();
    println!("anchors saved for the next run: {}", anchors.join(", "));
    let c = last.counters;
    let t = table.stats();
    println!(
        "table: {} new, {} tried, {} seedings this run; saved to {}",
        t.new,
        t.tried,
        t.seedings,
        file.display()
    );
    println!(
        "done in {:.1}s: {} established now ({} full-relay, {} block-relay), {} feelers, {} dials, {} failures, {} throttled waits, {} callbacks; stop took {:?}",
        started.elapsed().as_secs_f64(),
        last.count(ConnState::Established),
        last.established_in(ConnClass::FullRelay),
        last.established_in(ConnClass::BlockRelay),
        c.class(ConnClass::Feeler).dials,
        c.dials,
        c.failures,
        c.throttled,
        events.load(Ordering::Relaxed),
        stop_started.elapsed(),
    );
    Ok(())
}

fn render(snapshot: &Snapshot, elapsed: Duration, tty: bool) {
    let now = Instant::now();
    let mut out = String::new();
    if tty {
        out.push_str("\x1b[2J\x1b[H");
    }
    out.push_str(&format!(
        "connmgr example, t={:>4.1}s   (Core's layout: 8 full-relay + 2 block-relay, feelers; + 2 permanent)\n",
        elapsed.as_secs_f64()
    ));
    out.push_str(&format!(
        "{:>5}  {:<21} {:<10} {:<12} {:<12} {:>8}  {}\n",
        "id", "address", "kind", "class", "state", "attempts", "next attempt"
    ));
    for e in &snapshot.entries {
        let next = e
            .next_attempt
            .map(|at| format!("in {:.1}s", at.saturating_duration_since(now).as_secs_f64()))
            .unwrap_or_default();
        out.push_str(&format!(
            "{:>5}  {:<21} {:<10} {:<12} {:<12} {:>8}  {}\n",
            e.id(),
            e.info.addr.to_string(),
            e.info.kind.to_string(),
            e.info.class.to_string(),
            e.state.to_string(),
            e.attempts,
            next
        ));
    }
    let c = snapshot.counters;
    out.push_str(&format!(
        "dials {}  failures {}  established {}  throttled {}  consecutive failures {}\n",
        c.dials, c.failures, c.established, c.throttled, c.consecutive_failures
    ));
    for class in ConnClass::ALL {
        let k = c.class(class);
        out.push_str(&format!(
            "  {:<12} established now {:>2}   dials {:>4}  established {:>4}  failures {:>4}  canceled {:>3}\n",
            class.to_string(),
            snapshot.established_in(class),
            k.dials,
            k.established,
            k.failures,
            k.canceled
        ));
    }
    if !tty {
        out.push('\n');
    }
    print!("{out}");
}

async fn holding_peer(addr: SocketAddr) -> std::io::Result<()> {
    tokio::spawn(serve_holding(TcpListener::bind(addr).await?));
    Ok(())
}

async fn serve_holding(listener: TcpListener) {
    while let Ok((mut sock, _)) = listener.accept().await {
        tokio::spawn(async move {
            let mut buf = [0u8; 256];
            while matches!(sock.read(&mut buf).await, Ok(n) if n > 0) {}
        });
    }
}

/// Accepts, then hangs up after `after`.
async fn flaky_peer(addr: SocketAddr, after: Duration) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                sleep(after).await;
                drop(sock);
            });
        }
    });
    Ok(())
}
