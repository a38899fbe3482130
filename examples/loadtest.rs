//! Load test: the connection manager against a raw tokio client, in the same
//! run, against the same local peer farm.
//!
//! The peer farm runs in a child process (this binary re-run with `__farm`),
//! listening on several loopback ports, so that client and farm do not share
//! a descriptor table. The two sides alternate (A B A B ...) and the report
//! gives each round, the medians with min and max, and the ratio pair by pair.
//! The last line is machine-readable.
//!
//! Run with:
//!
//! ```text
//! cargo run --release --example loadtest -- churn   [--target 125] [--count 20000] [--rounds 5]
//! cargo run --release --example loadtest -- hops    [--target 125] [--count 20000] [--rounds 5]
//! cargo run --release --example loadtest -- hold    [--target 10000] [--rounds 3]
//! cargo run --release --example loadtest -- refused [--target 125] [--count 20000] [--rounds 5]
//! cargo run --release --example loadtest -- stop    [--target 10000] [--inflight 1000]
//! cargo run --release --example loadtest -- soak    [--target 125] [--count 1000000]
//! cargo run --release --example loadtest -- accept  [--target 10000] [--rounds 3]
//! ```
//!
//! `--workers N` sets the runtime's worker threads (2 by default; `hold` and
//! `accept` measure in child processes with 2). `--only connmgr|raw` runs one
//! side, for profiling. `churn` and `refused` also report the context
//! switches of each side per event (from `/proc/self/task/*/status`): a
//! worker thread that parks or is woken by another costs one.
//!
//! Scenarios:
//! - `churn`: `target` connections kept filled; the peers close each at once;
//!   a connection that ends is replaced; stop after `count` established.
//!   The raw side runs `target` tasks that each loop: connect, read to EOF.
//!   Both sides set `TCP_NODELAY` on each connection, as the manager's default
//!   dial stack does.
//! - `hops`: `churn` with the manager's side replaced by its task hops
//!   alone, in plain tokio: a fill task with the permits, a manager task
//!   that spawns a task per dial, a callback task that hands each
//!   connection to a reading task of its own, the drop notice back through
//!   the fill task. No policy, no state map: the floor of a design that
//!   keeps user code off the manager's task.
//! - `hold`: `target` connections established and held; reports the time to
//!   fill and the memory per held connection, each side measured in its own
//!   child process (peak RSS).
//! - `refused`: every address refuses; attempts per second with the failure
//!   throttle off, then a check that with it on the rate keeps its promise.
//! - `stop`: `target` connections held and `inflight` dials hanging; the time
//!   `stop_and_close` takes, and whether any task or socket is left.
//! - `accept`: the manager's accept path (the policy checks, an entry per
//!   connection) against a raw tokio accept loop, each in its own child
//!   process holding `target` inbound connections that this process opens
//!   (256 connects in flight); accept rate and memory per inbound connection.
//! - `soak`: one manager churns `count` connections; open descriptors and
//!   RSS at the start, at every tenth of the way and at the end. Passes when
//!   RSS stays within 10 % of its value at the first tenth and descriptors
//!   return to the baseline after stop.
//!
//! Every scenario also counts heap allocations (a counting global allocator,
//! `stats_alloc`): `churn` and `refused` print allocations and bytes per
//! event of each side, `hold` and `accept` the heap each held connection
//! keeps (live bytes after the fill, over the connections) and the
//! allocations it took.
//!
//! Only loopback addresses are used. Every loop is bounded in count and time.

use std::{
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use connmgr::{
    manager::{Builder, ConnState, Handle},
    policy::PeerAddr,
};
use tokio::{
    io::AsyncReadExt,
    net::{TcpListener, TcpStream},
    sync::Notify,
};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Every allocation of this process, counted.
#[global_allocator]
static HEAP: &stats_alloc::StatsAlloc<std::alloc::System> = &stats_alloc::INSTRUMENTED_SYSTEM;

/// Allocations and bytes allocated so far, and the bytes live now.
#[derive(Debug, Clone, Copy, Default)]
struct Heap {
    allocs: u64,
    bytes: u64,
    live: i64,
}

fn heap() -> Heap {
    let s = HEAP.stats();
    Heap {
        allocs: (s.allocations + s.reallocations) as u64,
        bytes: (s.bytes_allocated + s.bytes_reallocated.max(0) as usize) as u64,
        live: s.bytes_allocated as i64 - s.bytes_deallocated as i64 + s.bytes_reallocated as i64,
    }
}

impl Heap {
    /// What happened since `earlier`.
    fn since(self, earlier: Self) -> Self {
        Self {
            allocs: self.allocs.saturating_sub(earlier.allocs),
            bytes: self.bytes.saturating_sub(earlier.bytes),
            live: self.live - earlier.live,
        }
    }
}

/// A round may take at most this long before the run is abandoned.
const ROUND_LIMIT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone)]
struct Opts {
    scenario: String,
    target: usize,
    count: u64,
    rounds: usize,
    peers: usize,
    inflight: usize,
    /// Worker threads of the runtime both sides run on.
    workers: usize,
    /// Run only one side (`connmgr` or `raw`), for profiling.
    only: Option<String>,
}

fn parse_opts(args: &[String]) -> Result<Opts, Error> {
    let scenario = args
        .first()
        .cloned()
        .ok_or("usage: loadtest <churn|hops|hold|refused|stop|soak|accept> [options]")?;
    let (target, count) = match scenario.as_str() {
        "hold" | "stop" | "accept" => (10_000, 0),
        "soak" => (125, 1_000_000),
        _ => (125, 20_000),
    };
    let mut o = Opts {
        scenario,
        target,
        count,
        rounds: if args.first().is_some_and(|s| s == "hold" || s == "accept") {
            3
        } else {
            5
        },
        peers: 8,
        inflight: 1000,
        workers: 2,
        only: None,
    };
    let mut it = args[1..].iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--target" => o.target = value.parse()?,
            "--count" => o.count = value.parse()?,
            "--rounds" => o.rounds = value.parse()?,
            "--peers" => o.peers = value.parse()?,
            "--inflight" => o.inflight = value.parse()?,
            "--workers" => o.workers = value.parse()?,
            "--only" => o.only = Some(value.clone()),
            other => return Err(format!("unknown option {other}").into()),
        }
    }
    if o.rounds == 0 || o.peers == 0 || o.workers == 0 {
        return Err("--rounds, --peers and --workers must be at least 1".into());
    }
    Ok(o)
}

fn main() -> Result<(), Error> {
    raise_nofile();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("__farm") => return farm(&args[1..]),
        Some("__hold") => return hold_child(&args[1..]),
        Some("__accept") => return accept_child(&args[1..]),
        _ => {}
    }
    let opts = parse_opts(&args)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.workers)
        .enable_all()
        .build()?;
    match opts.scenario.as_str() {
        "churn" | "hops" => rt.block_on(churn(&opts)),
        "hold" => hold(&opts),
        "refused" => rt.block_on(refused(&opts)),
        "stop" => rt.block_on(stop(&opts)),
        "soak" => rt.block_on(soak(&opts)),
        "accept" => rt.block_on(accept(&opts)),
        other => Err(format!("unknown scenario {other}").into()),
    }
}

// ===== measurements =====

/// Raises the soft open-file limit to the hard limit.
fn raise_nofile() {
    if let Ok((soft, hard)) = rlimit::getrlimit(rlimit::Resource::NOFILE) {
        if soft < hard {
            let _ = rlimit::setrlimit(rlimit::Resource::NOFILE, hard, hard);
        }
    }
}

/// User + system CPU time of this process.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which ends with ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// Context switches (voluntary and not) of this process's live threads: a
/// thread that blocks or is woken by another costs one.
fn context_switches() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    wall: Duration,
    cpu: Duration,
    value: f64,
    /// Context switches per event.
    switches: f64,
    /// Heap allocations and bytes allocated per event.
    allocs: f64,
    alloc_bytes: f64,
}

/// Wall time, CPU time, context switches and allocations since a round
/// started.
struct Meter {
    start: Instant,
    cpu0: Duration,
    switches0: u64,
    heap0: Heap,
}

impl Meter {
    fn start() -> Self {
        Self {
            cpu0: cpu_time(),
            switches0: context_switches(),
            heap0: heap(),
            start: Instant::now(),
        }
    }

    /// `n` events over `wall` (measured by the caller), with the CPU time
    /// and context switches until now.
    fn sample(&self, wall: Duration, n: u64) -> Sample {
        let heap = heap().since(self.heap0);
        let per = |x: u64| x as f64 / n.max(1) as f64;
        Sample {
            wall,
            cpu: cpu_time().saturating_sub(self.cpu0),
            value: n as f64 / wall.as_secs_f64(),
            switches: per(context_switches().saturating_sub(self.switches0)),
            allocs: per(heap.allocs),
            alloc_bytes: per(heap.bytes),
        }
    }
}

impl Sample {
    /// The side that was not run (`--only`).
    const NONE: Self = Self {
        wall: Duration::from_nanos(1),
        cpu: Duration::ZERO,
        value: 0.0,
        switches: 0.0,
        allocs: 0.0,
        alloc_bytes: 0.0,
    };
}

/// The value of `name=value` in a child's report line.
fn field(text: &str, name: &str) -> Option<f64> {
    text.split_whitespace()
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
}

/// For (measure, bytes per connection) pairs of two sides: the median of the
/// measures' ratios, and each side's median bytes.
fn paired_medians(a: &[(f64, f64)], b: &[(f64, f64)]) -> (f64, f64, f64) {
    (
        median(a.iter().zip(b).map(|(x, y)| x.0 / y.0).collect()),
        median(a.iter().map(|x| x.1).collect()),
        median(b.iter().map(|y| y.1).collect()),
    )
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

fn summary(name: &str, unit: &str, xs: &[f64]) -> String {
    let min = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let max = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!(
        "{name:>8}: median {:.1} {unit} (min {min:.1}, max {max:.1})",
        median(xs.to_vec())
    )
}

// ===== the peer farm =====

/// A child process that listens on loopback ports. It prints the addresses
/// on one line, serves until its standard input closes, then exits.
struct Farm {
    child: Child,
    addrs: Vec<SocketAddr>,
}

impl Farm {
    fn start(mode: &str, peers: usize) -> Result<Self, Error> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["__farm", mode, &peers.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("farm stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let addrs = line
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<Vec<SocketAddr>, _>>()?;
        if addrs.is_empty() {
            return Err("the farm started no listener".into());
        }
        Ok(Self { child, addrs })
    }
}

impl Drop for Farm {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn farm(args: &[String]) -> Result<(), Error> {
    let mode = args.first().ok_or("farm mode")?.clone();
    let peers: usize = args.get(1).ok_or("farm peers")?.parse()?;
    let mut listeners = Vec::new();
    for _ in 0..peers {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        let bind: SocketAddr = "127.0.0.1:0".parse()?;
        socket.bind(&bind.into())?;
        // A stalling listener has a backlog of one and never accepts, so
        // further connects hang in SYN_SENT.
        socket.listen(if mode == "stall" { 1 } else { 4096 })?;
        listeners.push(std::net::TcpListener::from(socket));
    }
    let line: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.to_string()))
        .collect::<Result<_, _>>()?;
    println!("{}", line.join(" "));
    std::io::stdout().flush()?;
    // Exit when the parent closes our stdin (or dies).
    std::thread::spawn(|| {
        let mut sink = String::new();
        let _ = std::io::stdin().read_line(&mut sink);
        std::process::exit(0);
    });
    match mode.as_str() {
        "close" => {
            // One blocking accept thread per listener: accept and close.
            let threads: Vec<_> = listeners
                .into_iter()
                .map(|l| {
                    std::thread::spawn(move || {
                        for conn in l.incoming() {
                            drop(conn);
                        }
                    })
                })
                .collect();
            for t in threads {
                let _ = t.join();
            }
        }
        "hold" => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let mut tasks = Vec::new();
                for l in listeners {
                    l.set_nonblocking(true)?;
                    let l = TcpListener::from_std(l)?;
                    tasks.push(tokio::spawn(async move {
                        while let Ok((mut sock, _)) = l.accept().await {
                            tokio::spawn(async move {
                                let mut buf = [0u8; 64];
                                while matches!(sock.read(&mut buf).await, Ok(n) if n > 0) {}
                            });
                        }
                    }));
                }
                for t in tasks {
                    let _ = t.await;
                }
                Ok::<_, Error>(())
            })?;
        }
        "stall" => loop {
            std::thread::sleep(Duration::from_secs(3600));
            let _ = &listeners;
        },
        other => return Err(format!("unknown farm mode {other}").into()),
    }
    Ok(())
}

/// Loopback addresses where nothing listens.
fn refused_addrs(n: usize) -> Result<Vec<SocketAddr>, Error> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    Ok(listeners
        .iter()
        .map(|l| l.local_addr())
        .collect::<Result<_, _>>()?)
}

/// A farm address with a serial number. The manager never makes two
/// connections to one address, and this test keeps thousands of
/// connections to a few listeners; so each candidate is a distinct
/// (address, serial) pair, and the dial stack dials the address. On
/// loopback the netgroup rules do not apply; the duplicate check runs for
/// every candidate, as it would for real addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Tagged {
    addr: SocketAddr,
    serial: u64,
}

impl std::fmt::Display for Tagged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}#{}", self.addr, self.serial)
    }
}

impl PeerAddr for Tagged {
    fn host(&self) -> connmgr::policy::Host {
        self.addr.host()
    }
}

fn untag(t: Tagged) -> SocketAddr {
    t.addr
}

type TaggedDialer = tower::util::MapRequest<connmgr::Dialer, fn(Tagged) -> SocketAddr>;

/// The manager's default stack (TCP, `TCP_NODELAY`, the manager's own
/// connect timeout) behind the tag.
fn builder() -> Builder<Tagged, TaggedDialer> {
    let dialer = connmgr::DialStack::new().timeout(None).build();
    Builder::new(tower::util::MapRequest::new(
        dialer,
        untag as fn(Tagged) -> SocketAddr,
    ))
}

fn round_robin(
    addrs: Vec<SocketAddr>,
) -> impl FnMut() -> std::future::Ready<Option<Tagged>> + Send + 'static {
    let mut serial = 0u64;
    move || {
        serial = serial.wrapping_add(1);
        let addr = addrs[serial as usize % addrs.len()];
        std::future::ready(Some(Tagged { addr, serial }))
    }
}

// ===== churn =====

/// Starts a manager keeping `target` automatic connections to `addrs`; each
/// connection is read until the peer hangs up, on a task of its own, as an
/// application would. The returned `Notify` fires at the `count`-th
/// connection.
fn counting_manager(
    addrs: Vec<SocketAddr>,
    target: usize,
    count: u64,
) -> Result<(Handle<Tagged>, Arc<Notify>), Error> {
    let seen = AtomicU64::new(0);
    let done = Arc::new(Notify::new());
    let notify = done.clone();
    let handle = builder()
        .target_outbound(target)
        .address_source(round_robin(addrs))
        .on_connection(move |mut conn| {
            if seen.fetch_add(1, Ordering::Relaxed) + 1 == count {
                notify.notify_one();
            }
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while matches!(conn.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        })
        .start()?;
    Ok((handle, done))
}

async fn churn_connmgr(addrs: &[SocketAddr], target: usize, count: u64) -> Result<Sample, Error> {
    let meter = Meter::start();
    let (handle, done) = counting_manager(addrs.to_vec(), target, count)?;
    tokio::time::timeout(ROUND_LIMIT, done.notified())
        .await
        .map_err(|_| "churn round timed out")?;
    let wall = meter.start.elapsed();
    let failures = handle.counters().failures;
    handle.stop_and_close().await;
    if failures > 0 {
        eprintln!("  (connmgr: {failures} failed dials)");
    }
    Ok(meter.sample(wall, count))
}

/// The raw side: `target` tasks that each loop `attempt` over the addresses
/// until `count` attempts have started in all.
async fn raw_clients<F, Fut>(
    addrs: &[SocketAddr],
    target: usize,
    count: u64,
    attempt: F,
) -> Result<Sample, Error>
where
    F: Fn(SocketAddr) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let started = Arc::new(AtomicU64::new(0));
    let meter = Meter::start();
    let tasks: Vec<_> = (0..target)
        .map(|i| {
            let (started, addrs, attempt) = (started.clone(), addrs.to_vec(), attempt.clone());
            tokio::spawn(async move {
                let mut k = i;
                while started.fetch_add(1, Ordering::Relaxed) < count {
                    k = k.wrapping_add(1);
                    attempt(addrs[k % addrs.len()]).await;
                }
            })
        })
        .collect();
    let all = async {
        for t in tasks {
            let _ = t.await;
        }
    };
    tokio::time::timeout(ROUND_LIMIT, all)
        .await
        .map_err(|_| "raw round timed out")?;
    Ok(meter.sample(meter.start.elapsed(), count))
}

/// The manager's task hops alone (`hops`): what `churn_connmgr` does, with
/// nothing but the channels and tasks it passes through.
async fn churn_hops(addrs: &[SocketAddr], target: usize, count: u64) -> Result<Sample, Error> {
    use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
    type Conn = (TcpStream, OwnedSemaphorePermit);
    let meter = Meter::start();
    let permits = Arc::new(Semaphore::new(target));
    let (auto_tx, mut autos) = mpsc::channel::<(SocketAddr, OwnedSemaphorePermit)>(64);
    let (results_tx, mut results) = mpsc::unbounded_channel::<Conn>();
    let (events_tx, mut events) = mpsc::channel::<Conn>(64);
    let (notices_tx, mut notices) = mpsc::unbounded_channel::<()>();
    let (relay_tx, mut relayed) = mpsc::unbounded_channel::<()>();
    let done = Arc::new(Notify::new());
    let mut tasks = tokio::task::JoinSet::new();
    let addrs = addrs.to_vec();
    tasks.spawn(async move {
        let mut k = 0usize;
        loop {
            tokio::select! {
                biased;
                Some(()) = notices.recv() => {
                    let _ = relay_tx.send(());
                }
                permit = permits.clone().acquire_owned() => {
                    let Ok(permit) = permit else { return };
                    k = k.wrapping_add(1);
                    if auto_tx.send((addrs[k % addrs.len()], permit)).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    tasks.spawn(async move {
        loop {
            tokio::select! {
                biased;
                Some(()) = relayed.recv() => {}
                Some(conn) = results.recv() => {
                    if events_tx.send(conn).await.is_err() {
                        return;
                    }
                }
                Some((addr, permit)) = autos.recv() => {
                    let results_tx = results_tx.clone();
                    tokio::spawn(async move {
                        if let Ok(sock) = TcpStream::connect(addr).await {
                            let _ = sock.set_nodelay(true);
                            let _ = results_tx.send((sock, permit));
                        }
                    });
                }
                else => return,
            }
        }
    });
    let notify = done.clone();
    tasks.spawn(async move {
        let mut seen = 0u64;
        while let Some((mut sock, permit)) = events.recv().await {
            seen += 1;
            if seen == count {
                notify.notify_one();
            }
            let notices_tx = notices_tx.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while matches!(sock.read(&mut buf).await, Ok(n) if n > 0) {}
                drop((sock, permit));
                let _ = notices_tx.send(());
            });
        }
    });
    tokio::time::timeout(ROUND_LIMIT, done.notified())
        .await
        .map_err(|_| "hops round timed out")?;
    let wall = meter.start.elapsed();
    tasks.shutdown().await;
    Ok(meter.sample(wall, count))
}

/// Connect, then read until the peer hangs up.
async fn churn_raw(addrs: &[SocketAddr], target: usize, count: u64) -> Result<Sample, Error> {
    raw_clients(addrs, target, count, |addr| async move {
        if let Ok(mut sock) = TcpStream::connect(addr).await {
            // The same socket work as the manager's default dialer.
            let _ = sock.set_nodelay(true);
            let mut buf = [0u8; 64];
            while matches!(sock.read(&mut buf).await, Ok(n) if n > 0) {}
        }
    })
    .await
}

/// "conns/s" -> "conn".
fn unit_event(unit: &str) -> &str {
    unit.split('/')
        .next()
        .map_or(unit, |u| u.trim_end_matches('s'))
}

fn report(scenario: &str, params: &str, unit: &str, a: &[Sample], b: &[Sample]) -> f64 {
    let av: Vec<f64> = a.iter().map(|s| s.value).collect();
    let bv: Vec<f64> = b.iter().map(|s| s.value).collect();
    println!("{}", summary("connmgr", unit, &av));
    println!("{}", summary("raw", unit, &bv));
    let ratios: Vec<f64> = a
        .iter()
        .zip(b)
        .map(|(x, y)| x.wall.as_secs_f64() / y.wall.as_secs_f64())
        .collect();
    let cpu: Vec<f64> = a
        .iter()
        .zip(b)
        .map(|(x, y)| x.cpu.as_secs_f64() / y.cpu.as_secs_f64().max(0.01))
        .collect();
    println!(
        "time ratio per pair (connmgr/raw): {}",
        ratios
            .iter()
            .map(|r| format!("{r:.3}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "cpu ratio per pair (connmgr/raw):  {}",
        cpu.iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let ratio = median(ratios);
    let (sa, sb) = (
        median(a.iter().map(|s| s.switches).collect()),
        median(b.iter().map(|s| s.switches).collect()),
    );
    println!(
        "context switches per {}: connmgr {sa:.2}, raw {sb:.2}",
        unit_event(unit)
    );
    let m = |xs: &[Sample], f: fn(&Sample) -> f64| median(xs.iter().map(f).collect());
    println!(
        "allocations per {}: connmgr {:.1} ({:.0} B), raw {:.1} ({:.0} B)",
        unit_event(unit),
        m(a, |s| s.allocs),
        m(a, |s| s.alloc_bytes),
        m(b, |s| s.allocs),
        m(b, |s| s.alloc_bytes),
    );
    println!(
        "{scenario} {params} connmgr={:.1} raw={:.1} ratio={ratio:.3} cpu_ratio={:.2} switches={sa:.2}/{sb:.2}",
        median(av),
        median(bv),
        median(cpu)
    );
    ratio
}

async fn churn(o: &Opts) -> Result<(), Error> {
    let farm = Farm::start("close", o.peers)?;
    let hops = o.scenario == "hops";
    println!(
        "{}: target {} until {} established, {} rounds, {} peers (conns/s)",
        o.scenario, o.target, o.count, o.rounds, o.peers
    );
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for round in 0..o.rounds {
        let x = if hops {
            churn_hops(&farm.addrs, o.target, o.count).await?
        } else if o.only.as_deref() != Some("raw") {
            churn_connmgr(&farm.addrs, o.target, o.count).await?
        } else {
            Sample::NONE
        };
        let y = if o.only.as_deref() != Some("connmgr") {
            churn_raw(&farm.addrs, o.target, o.count).await?
        } else {
            Sample::NONE
        };
        println!(
            "round {round}: connmgr {:.0}/s ({:?} cpu, {:.2} cs/conn)  raw {:.0}/s ({:?} cpu, {:.2} cs/conn)",
            x.value, x.cpu, x.switches, y.value, y.cpu, y.switches
        );
        a.push(x);
        b.push(y);
    }
    report(
        &o.scenario,
        &format!("target={} count={} rounds={}", o.target, o.count, o.rounds),
        "conns/s",
        &a,
        &b,
    );
    Ok(())
}

// ===== hold =====

/// One side of `hold`, in its own process: fill `target` connections, hold
/// them, report the fill time and memory.
fn hold_child(args: &[String]) -> Result<(), Error> {
    let side = args.first().ok_or("side")?.clone();
    let target: usize = args.get(1).ok_or("target")?.parse()?;
    let addrs = args[2..]
        .iter()
        .map(|a| a.parse())
        .collect::<Result<Vec<SocketAddr>, _>>()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let base = status_kib("VmRSS:");
        let heap0 = heap();
        let start = Instant::now();
        let (handle, full) = if side == "connmgr" {
            let (handle, full) = counting_manager(addrs, target, target as u64)?;
            (Some(handle), full)
        } else {
            let held = Arc::new(AtomicUsize::new(0));
            let full = Arc::new(Notify::new());
            for i in 0..target {
                let (h, f, addr) = (held.clone(), full.clone(), addrs[i % addrs.len()]);
                tokio::spawn(async move {
                    if let Ok(mut sock) = TcpStream::connect(addr).await {
                        let _ = sock.set_nodelay(true);
                        if h.fetch_add(1, Ordering::Relaxed) + 1 == target {
                            f.notify_one();
                        }
                        let mut buf = [0u8; 64];
                        while matches!(sock.read(&mut buf).await, Ok(n) if n > 0) {}
                    }
                });
            }
            (None, full)
        };
        tokio::time::timeout(ROUND_LIMIT, full.notified())
            .await
            .map_err(|_| "hold fill timed out")?;
        let fill = start.elapsed();
        // Let allocations settle before reading memory.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let rss = status_kib("VmRSS:");
        let peak = status_kib("VmHWM:");
        let heap = heap().since(heap0);
        println!(
            "fill_us={} base_kib={base} rss_kib={rss} peak_kib={peak} live_bytes={} allocs={}",
            fill.as_micros(),
            heap.live,
            heap.allocs
        );
        if let Some(h) = handle {
            h.stop_and_close().await;
        }
        Ok::<_, Error>(())
    })
}

fn hold(o: &Opts) -> Result<(), Error> {
    let farm = Farm::start("hold", o.peers)?;
    println!(
        "hold: {} connections per side, {} rounds, each side in its own process",
        o.target, o.rounds
    );
    let heaps = std::cell::RefCell::new((Vec::new(), Vec::new()));
    let run = |side: &str| -> Result<(f64, f64), Error> {
        let mut args = vec!["__hold".to_string(), side.to_string(), o.target.to_string()];
        args.extend(farm.addrs.iter().map(ToString::to_string));
        let out = Command::new(std::env::current_exe()?)
            .args(&args)
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let field = |name| field(&text, name);
        match (field("fill_us"), field("base_kib"), field("peak_kib")) {
            (Some(fill), Some(base), Some(peak)) => {
                let per = |x: Option<f64>| x.unwrap_or(f64::NAN) / o.target as f64;
                let heap = (per(field("live_bytes")), per(field("allocs")));
                let mut heaps = heaps.borrow_mut();
                if side == "connmgr" {
                    &mut heaps.0
                } else {
                    &mut heaps.1
                }
                .push(heap);
                Ok((fill / 1000.0, (peak - base) * 1024.0 / o.target as f64))
            }
            _ => Err(format!(
                "{side} child failed: {}{}",
                text,
                String::from_utf8_lossy(&out.stderr)
            )
            .into()),
        }
    };
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for round in 0..o.rounds {
        let x = run("connmgr")?;
        let y = run("raw")?;
        println!(
            "round {round}: connmgr fill {:.1} ms, {:.0} B/conn   raw fill {:.1} ms, {:.0} B/conn",
            x.0, x.1, y.0, y.1
        );
        a.push(x);
        b.push(y);
    }
    let (fill_ratio, mem_a, mem_b) = paired_medians(&a, &b);
    println!(
        "{}",
        summary(
            "connmgr",
            "ms fill",
            &a.iter().map(|x| x.0).collect::<Vec<_>>()
        )
    );
    println!(
        "{}",
        summary("raw", "ms fill", &b.iter().map(|y| y.0).collect::<Vec<_>>())
    );
    println!(
        "memory per held connection: connmgr {:.0} B, raw {:.0} B, difference {:.0} B",
        mem_a,
        mem_b,
        mem_a - mem_b
    );
    print_heap("held", &heaps.borrow());
    println!(
        "hold target={} rounds={} connmgr={:.1} raw={:.1} ratio={fill_ratio:.3} connmgr_bytes_per_conn={mem_a:.0} raw_bytes_per_conn={mem_b:.0}",
        o.target,
        o.rounds,
        median(a.iter().map(|x| x.0).collect()),
        median(b.iter().map(|y| y.0).collect()),
    );
    Ok(())
}

// ===== refused =====

async fn refused_connmgr(addrs: &[SocketAddr], target: usize, count: u64) -> Result<Sample, Error> {
    let meter = Meter::start();
    let handle = builder()
        .target_outbound(target)
        .max_failures(u32::MAX)
        .address_source(round_robin(addrs.to_vec()))
        .start()?;
    let deadline = meter.start + ROUND_LIMIT;
    while handle.counters().failures < count {
        if Instant::now() > deadline {
            return Err("refused round timed out".into());
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let wall = meter.start.elapsed();
    let attempts = handle.counters().failures;
    handle.stop().await;
    Ok(meter.sample(wall, attempts))
}

async fn refused_raw(addrs: &[SocketAddr], target: usize, count: u64) -> Result<Sample, Error> {
    raw_clients(addrs, target, count, |addr| async move {
        let _ = TcpStream::connect(addr).await;
    })
    .await
}

async fn refused(o: &Opts) -> Result<(), Error> {
    let addrs = refused_addrs(o.peers)?;
    println!(
        "refused: target {}, {} attempts per round, {} rounds, throttle off (attempts/s)",
        o.target, o.count, o.rounds
    );
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for round in 0..o.rounds {
        let x = if o.only.as_deref() != Some("raw") {
            refused_connmgr(&addrs, o.target, o.count).await?
        } else {
            Sample::NONE
        };
        let y = if o.only.as_deref() != Some("connmgr") {
            refused_raw(&addrs, o.target, o.count).await?
        } else {
            Sample::NONE
        };
        println!(
            "round {round}: connmgr {:.0}/s  raw {:.0}/s",
            x.value, y.value
        );
        a.push(x);
        b.push(y);
    }

    // With the throttle on: 25 failures at once, then one dial per retry base.
    let base = Duration::from_millis(100);
    let window = Duration::from_secs(1);
    let handle = builder()
        .target_outbound(o.target)
        .retry_base(base)
        .address_source(round_robin(addrs.clone()))
        .start()?;
    tokio::time::sleep(window).await;
    let dials = handle.counters().dials;
    handle.stop().await;
    let promise = 25 + o.target as u64 + (window.as_millis() / base.as_millis()) as u64;
    let kept = dials <= promise;
    println!(
        "throttle on (base {base:?}, {window:?}): {dials} dials; promised at most 25 + target + window/base = {promise}: {}",
        if kept { "kept" } else { "BROKEN" }
    );
    report(
        "refused",
        &format!(
            "target={} count={} rounds={} throttled_dials={dials} throttle_kept={kept}",
            o.target, o.count, o.rounds
        ),
        "attempts/s",
        &a,
        &b,
    );
    Ok(())
}

// ===== stop =====

async fn stop(o: &Opts) -> Result<(), Error> {
    let farm = Farm::start("hold", o.peers)?;
    let stall = Farm::start("stall", 1)?;
    let metrics = tokio::runtime::Handle::current().metrics();
    let tasks0 = metrics.num_alive_tasks();
    let fds0 = open_fds();
    let (handle, full) = counting_manager(farm.addrs.clone(), o.target, o.target as u64)?;
    tokio::time::timeout(ROUND_LIMIT, full.notified())
        .await
        .map_err(|_| "stop: fill timed out")?;
    for serial in 0..o.inflight as u64 {
        let addr = stall.addrs[0];
        handle.connect(Tagged { addr, serial }).await?;
    }
    // Let the stalled dials get going: at most the backlog's worth connect.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let snap = handle.snapshot().await?;
    let pending = snap.count(ConnState::Pending);
    let established = snap.count(ConnState::Established);

    let t = Instant::now();
    handle.stop_and_close().await;
    let took = t.elapsed();
    // The owners' tasks see the close and drop their connections.
    let deadline = Instant::now() + Duration::from_secs(10);
    while (metrics.num_alive_tasks() > tasks0 || open_fds() > fds0) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let tasks_left = metrics.num_alive_tasks().saturating_sub(tasks0);
    let fds_left = open_fds().saturating_sub(fds0);
    println!(
        "stop: {established} established, {pending} dials in flight; stop_and_close took {took:?}; left behind: {tasks_left} tasks, {fds_left} sockets"
    );
    println!(
        "stop target={} inflight={} established={established} pending={pending} connmgr={:.1} raw=0 ratio=n/a tasks_left={tasks_left} sockets_left={fds_left}",
        o.target,
        o.inflight,
        took.as_secs_f64() * 1000.0
    );
    if tasks_left > 0 || fds_left > 0 {
        return Err("stop left tasks or sockets behind".into());
    }
    Ok(())
}

// ===== soak =====

async fn soak(o: &Opts) -> Result<(), Error> {
    let farm = Farm::start("close", o.peers)?;
    let every = (o.count / 10).max(1);
    let (fds_start, rss_start) = (open_fds(), status_kib("VmRSS:"));
    println!(
        "soak: target {} until {} established; fds {fds_start}, rss {rss_start} KiB",
        o.target, o.count
    );
    let (handle, done) = counting_manager(farm.addrs.clone(), o.target, o.count)?;
    // Bounded: at 2 000 connections a second it would still finish.
    let deadline = Instant::now() + Duration::from_secs(o.count / 2_000 + 60);
    let (mut next, mut rss_first, mut rss_last) = (every, 0, 0);
    let finished = done.notified();
    tokio::pin!(finished);
    loop {
        tokio::select! {
            () = &mut finished => break,
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
        if Instant::now() > deadline {
            return Err("soak timed out".into());
        }
        let n = handle.counters().established;
        while n >= next && next < o.count {
            rss_last = status_kib("VmRSS:");
            if rss_first == 0 {
                rss_first = rss_last;
            }
            println!("  {next:>9}: fds {:>5}, rss {rss_last} KiB", open_fds());
            next += every;
        }
    }
    rss_last = status_kib("VmRSS:").max(rss_last);
    if rss_first == 0 {
        rss_first = rss_last;
    }
    let c = handle.counters();
    handle.stop_and_close().await;
    // The owners' tasks see the close and drop their connections.
    let mut fds_end = open_fds();
    for _ in 0..200 {
        if fds_end <= fds_start {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        fds_end = open_fds();
    }
    println!(
        "  {:>9}: fds {fds_end} after stop, rss {rss_last} KiB; dials {}, failures {}",
        o.count, c.dials, c.failures
    );
    let rss_ok = rss_last as f64 <= rss_first as f64 * 1.10;
    let fds_ok = fds_end <= fds_start;
    println!(
        "soak target={} count={} fds_start={fds_start} fds_end={fds_end} rss_first_kib={rss_first} rss_last_kib={rss_last} rss_ok={rss_ok} fds_ok={fds_ok}",
        o.target, o.count
    );
    if rss_ok && fds_ok {
        Ok(())
    } else {
        Err("soak: memory grew or descriptors leaked".into())
    }
}

// ===== accept =====

/// One side of `accept`, in its own process: listen, print the address,
/// hold `target` inbound connections, print the memory, and exit when the
/// parent closes standard input.
fn accept_child(args: &[String]) -> Result<(), Error> {
    let side = args.first().ok_or("side")?.clone();
    let target: usize = args.get(1).ok_or("target")?.parse()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        // A backlog that holds the connects in flight, on both sides.
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind("127.0.0.1:0".parse()?)?;
        let listener = socket.listen(4096)?;
        let addr = listener.local_addr()?;
        let base = status_kib("VmRSS:");
        let heap0 = heap();
        let held = Arc::new(AtomicUsize::new(0));
        let full = Arc::new(Notify::new());
        let hold = move |mut io: Box<dyn HoldIo>, held: &AtomicUsize, full: &Notify| {
            if held.fetch_add(1, Ordering::Relaxed) + 1 == target {
                full.notify_one();
            }
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while matches!(io.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        };
        let handle = if side == "connmgr" {
            let (h, f) = (held.clone(), full.clone());
            let handle = connmgr::manager::ConnManager::builder()
                .max_inbound(None)
                .listener(listener)
                .on_accept(move |conn| hold(Box::new(conn), &h, &f))
                .start()?;
            Some(handle)
        } else {
            let (h, f) = (held.clone(), full.clone());
            tokio::spawn(async move {
                while let Ok((sock, _)) = listener.accept().await {
                    hold(Box::new(sock), &h, &f);
                }
            });
            None
        };
        // Accepting now: the parent may connect.
        tokio::task::yield_now().await;
        println!("{addr}");
        std::io::stdout().flush()?;
        tokio::time::timeout(ROUND_LIMIT, full.notified())
            .await
            .map_err(|_| "accept: fill timed out")?;
        println!("accepted");
        std::io::stdout().flush()?;
        // Let allocations settle before reading memory.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let heap = heap().since(heap0);
        println!(
            "base_kib={base} rss_kib={} peak_kib={} live_bytes={} allocs={}",
            status_kib("VmRSS:"),
            status_kib("VmHWM:"),
            heap.live,
            heap.allocs
        );
        std::io::stdout().flush()?;
        tokio::task::spawn_blocking(|| {
            let mut sink = String::new();
            let _ = std::io::stdin().read_line(&mut sink);
        })
        .await?;
        if let Some(h) = handle {
            h.stop_and_close().await;
        }
        Ok::<_, Error>(())
    })
}

/// Prints the heap per connection of both sides (medians of the rounds).
fn print_heap(what: &str, (a, b): &(Vec<(f64, f64)>, Vec<(f64, f64)>)) {
    let m = |xs: &[(f64, f64)], f: fn(&(f64, f64)) -> f64| median(xs.iter().map(f).collect());
    println!(
        "heap per {what} connection: connmgr {:.0} B live ({:.1} allocations), raw {:.0} B live ({:.1} allocations), difference {:.0} B",
        m(a, |x| x.0),
        m(a, |x| x.1),
        m(b, |x| x.0),
        m(b, |x| x.1),
        m(a, |x| x.0) - m(b, |x| x.0),
    );
}

/// A held inbound stream: a `Connection` or a `TcpStream`.
trait HoldIo: tokio::io::AsyncRead + Unpin + Send {}
impl<T: tokio::io::AsyncRead + Unpin + Send> HoldIo for T {}

/// Opens `target` connections to `addr`, 256 in flight at a time.
async fn open_clients(addr: SocketAddr, target: usize) -> Result<Vec<TcpStream>, Error> {
    let limit = Arc::new(tokio::sync::Semaphore::new(256));
    let mut tasks = Vec::with_capacity(target);
    for _ in 0..target {
        let permit = limit.clone().acquire_owned().await?;
        tasks.push(tokio::spawn(async move {
            let sock = TcpStream::connect(addr).await;
            drop(permit);
            sock
        }));
    }
    let mut clients = Vec::with_capacity(target);
    for t in tasks {
        clients.push(t.await??);
    }
    Ok(clients)
}

async fn accept(o: &Opts) -> Result<(), Error> {
    println!(
        "accept: {} inbound connections per side, {} rounds, each side in its own process",
        o.target, o.rounds
    );
    let run = |side: &'static str| async move {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["__accept", side, &o.target.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let mut out = BufReader::new(child.stdout.take().ok_or("child stdout")?);
        let mut line = String::new();
        out.read_line(&mut line)?;
        let addr: SocketAddr = line.trim().parse()?;
        let start = Instant::now();
        let clients = open_clients(addr, o.target).await?;
        let (out, line) = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            let ok = out.read_line(&mut line).is_ok() && line.trim() == "accepted";
            let wall = start.elapsed();
            line.clear();
            let _ = out.read_line(&mut line);
            (ok.then_some(wall), line)
        })
        .await?;
        drop(clients);
        drop(child.stdin.take());
        let _ = child.wait();
        let wall = out.ok_or(format!("{side} child failed"))?;
        let field = |name| field(&line, name);
        let (base, peak) = field("base_kib")
            .zip(field("peak_kib"))
            .ok_or("child memory")?;
        let rate = o.target as f64 / wall.as_secs_f64();
        let per = |x: Option<f64>| x.unwrap_or(f64::NAN) / o.target as f64;
        let heap = (per(field("live_bytes")), per(field("allocs")));
        Ok::<_, Error>((rate, (peak - base) * 1024.0 / o.target as f64, heap))
    };
    let mut heaps = (Vec::new(), Vec::new());
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for round in 0..o.rounds {
        let (x0, x1, xh) = run("connmgr").await?;
        let (y0, y1, yh) = run("raw").await?;
        println!(
            "round {round}: connmgr {x0:.0} accepts/s, {x1:.0} B/conn   raw {y0:.0} accepts/s, {y1:.0} B/conn"
        );
        a.push((x0, x1));
        b.push((y0, y1));
        heaps.0.push(xh);
        heaps.1.push(yh);
    }
    let (rate_ratio, mem_a, mem_b) = paired_medians(&a, &b);
    println!(
        "memory per inbound connection: connmgr {mem_a:.0} B, raw {mem_b:.0} B, difference {:.0} B",
        mem_a - mem_b
    );
    print_heap("inbound", &heaps);
    println!(
        "accept target={} rounds={} connmgr={:.1} raw={:.1} ratio={rate_ratio:.3} connmgr_bytes_per_conn={mem_a:.0} raw_bytes_per_conn={mem_b:.0}",
        o.target,
        o.rounds,
        median(a.iter().map(|x| x.0).collect()),
        median(b.iter().map(|y| y.0).collect()),
    );
    Ok(())
}
