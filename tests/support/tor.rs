//! A private Tor network on loopback for the tests.
//!
//! One directory authority and three relays (every one an exit, a guard and
//! an HSDir), an onion-service tor with four v3 services, and a client tor
//! whose SocksPort the tests dial through; the exits resolve names with a
//! DNS server of the harness. [`net`] starts it once per test binary and
//! every Tor test of the binary shares it; the echo, HTTP and DNS servers
//! behind it run on a thread of their own, so they outlive each test's
//! runtime.
//!
//! Every tor is the test process's: it is started with
//! `__OwningControllerProcess <our pid>` and the harness sends
//! `TAKEOWNERSHIP` on a control connection it keeps open, so the tors exit
//! as soon as the test process ends, however it ends (a finished run, a
//! panic, a kill). Data directories are under cargo's temporary folder for
//! integration tests (`target/tmp/tor-net-<port>`), cleared at the next
//! start and kept until then for their logs (`<dir>/tor.log`, whose tail is
//! printed when the start fails).
//!
//! Environment:
//! - `CONNMGR_TOR`, `CONNMGR_TOR_GENCERT`: the binaries (default `tor` and
//!   `tor-gencert` on `PATH`). When they are missing the Tor tests are
//!   skipped with a message, except with `CI=true`, where that is a failure.
//! - `CONNMGR_TOR_BASE_PORT`: the first of the fixed ports (default 27000,
//!   below the kernel's ephemeral range; the next free block of 500 is taken
//!   when one of them is busy).
//!
//! Facts behind the set-up (options, start order, pitfalls):
//! `shared/reference/tor-private-network.md`.

use std::{
    collections::{BTreeSet, VecDeque},
    fmt::Write as _,
    fs,
    io::{self, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU16, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use super::dns::DnsServer;

/// How long the whole network may take to start.
const START_LIMIT: Duration = Duration::from_secs(240);
/// How long one onion-service tor may take to publish its services.
const PUBLISH_LIMIT: Duration = Duration::from_secs(120);
/// Relays, the first of which is the directory authority.
const RELAYS: u16 = 4;
/// The body the HTTP server behind the onion service answers with.
pub const HTTP_BODY: &str = "hello-onion";
/// The name the exits' DNS server knows, and its address.
pub const DNS_NAME: &str = "seed.tor.test";
pub const DNS_ADDR: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 0, 0, 77);
/// The port of every onion service's echo (and of the peers).
pub const PEER_PORT: u16 = 8333;
/// The web service's ports: HTTP, and echo ports for the isolation test
/// (one with isolation, one without).
pub const HTTP_PORT: u16 = 80;
pub const ISOLATED_PORT: u16 = 7001;
pub const SHARED_PORT: u16 = 7002;

/// The running network.
#[derive(Debug)]
pub struct TorNet {
    /// The client tor's SocksPort.
    pub socks: SocketAddr,
    /// The client tor's ControlPort (no authentication).
    pub client_control: SocketAddr,
    /// The web service (`<56>.onion`): HTTP on 80, echo on 8333, 7001, 7002.
    pub web: String,
    /// Three more services, echo on 8333: distinct hosts for a manager.
    pub peers: Vec<String>,
    /// The DNS server the exits ask.
    pub dns: DnsServer,
    /// The echo server behind the services.
    pub echo: SocketAddr,
    /// Requests the HTTP server behind the web service has answered.
    pub http_requests: Arc<AtomicUsize>,
    /// How long the start took.
    pub bootstrap: Duration,
    env: Env,
    tors: Mutex<Vec<Tor>>,
    next_control: AtomicU16,
}

/// Where things are: binaries, the data root, the ports.
#[derive(Debug, Clone)]
struct Env {
    tor: String,
    root: PathBuf,
    /// The pids of the tors, for the watchdog.
    pids: PathBuf,
    base: u16,
    /// The `DirAuthority` line and the options every tor shares.
    common: String,
}

impl Env {
    fn or_port(&self, i: u16) -> u16 {
        self.base + i
    }
    fn dir_port(&self, i: u16) -> u16 {
        self.base + 100 + i
    }
    fn control(&self, i: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.base + 200 + i))
    }
    fn socks(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.base + 300))
    }
}

/// Control-port slots: relays 0..4, the shared onion tor, the client, then
/// onion tors of single tests.
const ONION_SLOT: u16 = 5;
const CLIENT_SLOT: u16 = 6;
const FIRST_EXTRA_SLOT: u16 = 7;
const LAST_EXTRA_SLOT: u16 = 20;

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Writes to the process's stderr, past the test harness's capture, so
/// that the line shows in every log (CI greps the bootstrap time).
pub fn say(msg: &str) {
    let _ = writeln!(io::stderr(), "{msg}");
}

/// The shared network, started on first use; `None` (after a message)
/// when tor is not installed and this is not CI. Panics when the start
/// fails, in every test that asks, with the same message.
pub async fn net(test: &str) -> Option<&'static TorNet> {
    let shared = tokio::task::spawn_blocking(TorNet::shared)
        .await
        .expect("the tor start task");
    match shared {
        Ok(Some(net)) => Some(net),
        Ok(None) => {
            say(&format!(
                "SKIPPED {test}: tor or tor-gencert is not installed (apt-get install tor; CI=true makes this a failure)"
            ));
            None
        }
        Err(e) => panic!("{e}"),
    }
}

impl TorNet {
    fn shared() -> Result<Option<&'static Self>, String> {
        static NET: OnceLock<Result<Option<TorNet>, String>> = OnceLock::new();
        match NET.get_or_init(Self::start_if_installed) {
            Ok(net) => Ok(net.as_ref()),
            Err(e) => Err(e.clone()),
        }
    }

    fn start_if_installed() -> Result<Option<Self>, String> {
        let tor = std::env::var("CONNMGR_TOR").unwrap_or_else(|_| "tor".into());
        let gencert = std::env::var("CONNMGR_TOR_GENCERT").unwrap_or_else(|_| "tor-gencert".into());
        for (bin, arg) in [(&tor, "--version"), (&gencert, "--help")] {
            let found = Command::new(bin)
                .arg(arg)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if let Err(e) = found {
                if in_ci() {
                    return Err(format!(
                        "{bin} is required in CI (CI=true) but could not run: {e}"
                    ));
                }
                say(&format!("{bin} could not run: {e}"));
                return Ok(None);
            }
        }
        Self::start(tor, gencert).map(Some)
    }

    fn start(tor: String, gencert: String) -> Result<Self, String> {
        let started = Instant::now();
        let deadline = started + START_LIMIT;
        let base = free_base()?;
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("tor-net-{base}"));
        match fs::remove_dir_all(&root) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("clearing {}: {e}", root.display())),
        }
        private_dir(&root)?;
        fs::write(root.join("defaults-torrc"), "").map_err(|e| format!("defaults-torrc: {e}"))?;

        let pids =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("tor-pids-{}", std::process::id()));
        watchdog(&pids)?;

        // Servers behind the network, on a thread of their own.
        let backends = Backends::start()?;
        fs::write(
            root.join("resolv.conf"),
            format!("nameserver {}\n", backends.dns.addr),
        )
        .map_err(|e| format!("resolv.conf: {e}"))?;

        // Keys: every relay's identity, and the authority's v3 keys.
        let mut env = Env {
            tor,
            root,
            pids,
            base,
            common: String::new(),
        };
        let keys = generate_keys(&env, &gencert)?;
        let keys_done = started.elapsed();
        env.common = common_options(&env, &keys);

        // Relays first; the onion service and the client only once every
        // relay is listed as an exit and has bootstrapped (they would ask
        // a directory cache too early and stall otherwise).
        let mut tors = Vec::new();
        for i in 0..RELAYS {
            let dir = env.root.join(format!("relay{i}"));
            fs::write(dir.join("torrc"), relay_torrc(&env, i))
                .map_err(|e| format!("torrc: {e}"))?;
            tors.push(Tor::spawn(&env, &format!("relay{i}"), dir, env.control(i))?);
        }
        let result = (|| {
            for t in tors.iter_mut() {
                t.take_ownership(deadline)?;
            }
            wait_for_consensus(&mut tors, deadline)?;
            let relays_done = started.elapsed();

            let onion_dir = env.root.join("onion");
            private_dir(&onion_dir)?;
            let services = vec![
                (
                    "web".to_string(),
                    vec![
                        (HTTP_PORT, backends.http),
                        (PEER_PORT, backends.echo),
                        (ISOLATED_PORT, backends.echo),
                        (SHARED_PORT, backends.echo),
                    ],
                ),
                ("peer0".to_string(), vec![(PEER_PORT, backends.echo)]),
                ("peer1".to_string(), vec![(PEER_PORT, backends.echo)]),
                ("peer2".to_string(), vec![(PEER_PORT, backends.echo)]),
            ];
            fs::write(
                onion_dir.join("torrc"),
                onion_torrc(&env, &onion_dir, ONION_SLOT, &services),
            )
            .map_err(|e| format!("torrc: {e}"))?;
            let client_dir = env.root.join("client");
            private_dir(&client_dir)?;
            fs::write(client_dir.join("torrc"), client_torrc(&env, &client_dir))
                .map_err(|e| format!("torrc: {e}"))?;
            tors.push(Tor::spawn(
                &env,
                "onion",
                onion_dir.clone(),
                env.control(ONION_SLOT),
            )?);
            tors.push(Tor::spawn(
                &env,
                "client",
                client_dir,
                env.control(CLIENT_SLOT),
            )?);
            let n = tors.len();
            tors[n - 2].take_ownership(deadline)?;
            tors[n - 1].take_ownership(deadline)?;
            let hosts = wait_published(&mut tors[n - 2], &onion_dir, &services, deadline)?;
            wait_bootstrapped(&mut tors[n - 1..], deadline)?;
            // Ready when a real stream reaches every service.
            for host in &hosts {
                probe_echo(env.socks(), host, PEER_PORT, deadline, &mut tors)?;
            }
            Ok::<_, String>((relays_done, hosts))
        })();
        let (relays_done, hosts) = match result {
            Ok(r) => r,
            Err(e) => {
                let logs = tails(&tors);
                drop(tors);
                return Err(format!(
                    "the private Tor network did not start after {:.1} s: {e}\n(data in {})\n{logs}",
                    started.elapsed().as_secs_f64(),
                    env.root.display()
                ));
            }
        };
        let bootstrap = started.elapsed();
        say(&format!(
            "tor private network bootstrapped in {:.1} s (keys {:.1} s, relays {:.1} s, onion service and client {:.1} s; ports {base}+, data in {})",
            bootstrap.as_secs_f64(),
            keys_done.as_secs_f64(),
            (relays_done - keys_done).as_secs_f64(),
            (bootstrap - relays_done).as_secs_f64(),
            env.root.display(),
        ));
        let mut hosts = hosts.into_iter();
        let web = hosts.next().ok_or("no web service")?;
        Ok(Self {
            socks: env.socks(),
            client_control: env.control(CLIENT_SLOT),
            web,
            peers: hosts.collect(),
            dns: backends.dns,
            echo: backends.echo,
            http_requests: backends.http_requests,
            bootstrap,
            env,
            tors: Mutex::new(tors),
            next_control: AtomicU16::new(FIRST_EXTRA_SLOT),
        })
    }

    /// An onion-service tor of the caller's own (one test may stop and
    /// restart it while the others use the shared network), publishing
    /// `services` (name, [(onion port, backend)]). Blocking: call it from
    /// `spawn_blocking`.
    pub fn onion_service(
        &self,
        name: &str,
        services: Vec<(String, Vec<(u16, SocketAddr)>)>,
    ) -> Result<OnionTor, String> {
        let slot = self.next_control.fetch_add(1, Ordering::Relaxed);
        if slot > LAST_EXTRA_SLOT {
            return Err("out of control ports for onion-service tors".into());
        }
        let dir = self.env.root.join(name);
        private_dir(&dir)?;
        fs::write(
            dir.join("torrc"),
            onion_torrc(&self.env, &dir, slot, &services),
        )
        .map_err(|e| format!("torrc: {e}"))?;
        let mut onion = OnionTor {
            env: self.env.clone(),
            name: name.to_owned(),
            dir,
            control: self.env.control(slot),
            services,
            tor: None,
            hosts: Vec::new(),
        };
        onion.start()?;
        Ok(onion)
    }

    /// A control connection to the client tor.
    pub fn client(&self) -> Result<Control, String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut c = Control::connect(self.client_control, deadline)?;
        c.command("AUTHENTICATE", deadline)?;
        Ok(c)
    }

    /// The last lines of every tor's log, for a failure message.
    pub fn logs(&self) -> String {
        tails(&self.tors.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// An onion-service tor that a test owns: stopped on drop.
#[derive(Debug)]
pub struct OnionTor {
    env: Env,
    name: String,
    dir: PathBuf,
    control: SocketAddr,
    services: Vec<(String, Vec<(u16, SocketAddr)>)>,
    tor: Option<Tor>,
    /// `<56>.onion` of each service, in order.
    pub hosts: Vec<String>,
}

impl OnionTor {
    /// Starts (or restarts) the tor and waits until every service is
    /// published. Blocking.
    pub fn start(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + PUBLISH_LIMIT;
        if self.tor.is_some() {
            return Err("already running".into());
        }
        let mut tor = Tor::spawn(&self.env, &self.name, self.dir.clone(), self.control)?;
        let published = tor
            .take_ownership(deadline)
            .and_then(|()| wait_published(&mut tor, &self.dir, &self.services, deadline));
        match published {
            Ok(hosts) => {
                self.hosts = hosts;
                self.tor = Some(tor);
                Ok(())
            }
            Err(e) => Err(format!("{e}\n{}", tor.tail())),
        }
    }

    /// Kills the tor (SIGKILL, as a crash would) and waits for it.
    pub fn kill(&mut self) {
        drop(self.tor.take());
    }

    /// The last lines of its log.
    pub fn log(&self) -> String {
        self.tor.as_ref().map(Tor::tail).unwrap_or_default()
    }
}

/// One tor process.
#[derive(Debug)]
struct Tor {
    name: String,
    dir: PathBuf,
    control: SocketAddr,
    child: Child,
    /// The connection that owns the process (TAKEOWNERSHIP): tor exits
    /// when it closes.
    owner: Option<Control>,
}

impl Tor {
    fn spawn(env: &Env, name: &str, dir: PathBuf, control: SocketAddr) -> Result<Self, String> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("tor.log"))
            .map_err(|e| format!("{name}: log file: {e}"))?;
        let log2 = log.try_clone().map_err(|e| format!("{name}: log: {e}"))?;
        let child = Command::new(&env.tor)
            .arg("--defaults-torrc")
            .arg(env.root.join("defaults-torrc"))
            .arg("-f")
            .arg(dir.join("torrc"))
            // On the command line, so that the watchdog can tell this
            // process's tors from another run's.
            .arg("--__OwningControllerProcess")
            .arg(std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("{name}: could not start {}: {e}", env.tor))?;
        // For the watchdog.
        let pids = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&env.pids)
            .and_then(|mut f| writeln!(f, "{}", child.id()));
        if let Err(e) = pids {
            say(&format!("{name}: could not record pid {}: {e}", child.id()));
        }
        Ok(Self {
            name: name.to_owned(),
            dir,
            control,
            child,
            owner: None,
        })
    }

    /// Connects to the ControlPort (retrying until it opens) and takes
    /// ownership of the process.
    fn take_ownership(&mut self, deadline: Instant) -> Result<(), String> {
        let mut c = loop {
            self.check_alive()?;
            match Control::connect(
                self.control,
                deadline.min(Instant::now() + Duration::from_millis(500)),
            ) {
                Ok(c) => break c,
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!("{}: control port: {e}", self.name));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        c.command("AUTHENTICATE", deadline)?;
        c.command("TAKEOWNERSHIP", deadline)?;
        self.owner = Some(c);
        Ok(())
    }

    fn owner(&mut self) -> Result<&mut Control, String> {
        self.owner
            .as_mut()
            .ok_or_else(|| format!("{}: no control connection", self.name))
    }

    fn check_alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "{} exited ({status}); its log ends:\n{}",
                self.name,
                self.tail()
            )),
            Err(e) => Err(format!("{}: {e}", self.name)),
        }
    }

    fn bootstrapped(&mut self, deadline: Instant) -> Result<bool, String> {
        let reply = self
            .owner()?
            .command("GETINFO status/bootstrap-phase", deadline)?;
        Ok(reply.iter().any(|l| l.contains("PROGRESS=100")))
    }

    fn tail(&self) -> String {
        let text = fs::read_to_string(self.dir.join("tor.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(25);
        let mut out = format!("--- {} ({}/tor.log)\n", self.name, self.dir.display());
        for l in &lines[from..] {
            let _ = writeln!(out, "  {l}");
        }
        out
    }
}

impl Drop for Tor {
    fn drop(&mut self) {
        self.owner = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tails(tors: &[Tor]) -> String {
    tors.iter().map(Tor::tail).collect()
}

/// The first block of fixed ports (500 apart, below 32768) in which every
/// port the network listens on is free.
fn free_base() -> Result<u16, String> {
    let first: u16 = match std::env::var("CONNMGR_TOR_BASE_PORT") {
        Ok(v) => v
            .parse()
            .map_err(|e| format!("CONNMGR_TOR_BASE_PORT={v}: {e}"))?,
        Err(_) => 27_000,
    };
    let mut tried = Vec::new();
    for k in 0..8u16 {
        let Some(base) = first.checked_add(k * 500).filter(|b| *b <= 32_000) else {
            break;
        };
        let ports = (0..RELAYS)
            .flat_map(|i| [base + i, base + 100 + i])
            .chain((0..=LAST_EXTRA_SLOT).map(|i| base + 200 + i))
            .chain([base + 300]);
        let busy: Vec<u16> = ports
            .filter(|p| TcpListener::bind(("127.0.0.1", *p)).is_err())
            .collect();
        if busy.is_empty() {
            return Ok(base);
        }
        tried.push(format!("{base} (busy: {busy:?})"));
    }
    Err(format!(
        "no free block of ports for tor: {}",
        tried.join(", ")
    ))
}

/// A shell that outlives the test process by a few seconds: once the
/// process is gone (however it ended) and the tors had 5 s to exit on
/// their own (they own a control connection of the process), it sends
/// SIGKILL to every tor listed in `pids` that still runs with this
/// process as its owner on its command line (so neither a reused pid nor
/// the next run's tors are touched), then removes the list. A tor can hang
/// in its exit path (seen: two threads in futex wait, minutes after
/// "exiting cleanly"), and then only this frees its ports. The wait is
/// bounded (a day).
fn watchdog(pids: &Path) -> Result<(), String> {
    const SCRIPT: &str = r#"owner=$1; pids=$2; n=0
while kill -0 "$owner" 2>/dev/null && [ "$n" -lt 86400 ]; do sleep 1; n=$((n+1)); done
sleep 5
for p in $(cat "$pids" 2>/dev/null); do
  if tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null | grep -qF -- "__OwningControllerProcess $owner "; then
    kill -9 "$p" 2>/dev/null
  fi
done
rm -f "$pids""#;
    Command::new("sh")
        .args(["-c", SCRIPT, "tor-watchdog"])
        .arg(std::process::id().to_string())
        .arg(pids)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(drop)
        .map_err(|e| format!("watchdog: {e}"))
}

fn private_dir(dir: &Path) -> Result<(), String> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("creating {}: {e}", dir.display()))
}

/// What the `DirAuthority` line needs.
struct Keys {
    /// RSA identity fingerprint of each relay.
    fingerprints: Vec<String>,
    /// The authority's v3 identity.
    v3ident: String,
}

/// Every relay's identity keys (`--list-fingerprint`), and the authority's
/// v3 keys (`tor-gencert`), all at once.
fn generate_keys(env: &Env, gencert: &str) -> Result<Keys, String> {
    let mut jobs = Vec::new();
    for i in 0..RELAYS {
        let dir = env.root.join(format!("relay{i}"));
        private_dir(&dir.join("keys"))?;
        let out = fs::File::create(dir.join("keygen.log")).map_err(|e| e.to_string())?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(&env.tor)
            .args(["--ignore-missing-torrc", "-f"])
            .arg(dir.join("none"))
            .arg("--DataDirectory")
            .arg(&dir)
            .args(["--ORPort", "1", "--list-fingerprint"])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("{}: {e}", env.tor))?;
        jobs.push((format!("relay{i} keys"), dir.join("keygen.log"), child));
    }
    let auth_keys = env.root.join("relay0").join("keys");
    let mut child = Command::new(gencert)
        .current_dir(&auth_keys)
        .args(["--create-identity-key", "-m", "12", "-a"])
        .arg(format!("127.0.0.1:{}", env.dir_port(0)))
        .args([
            "--passphrase-fd",
            "0",
            "-i",
            "authority_identity_key",
            "-s",
            "authority_signing_key",
            "-c",
            "authority_certificate",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{gencert}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(b"\n");
    }
    // Bounded: each job is waited for with a deadline, then killed.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut gencert_err = String::new();
    if let Some(mut e) = child.stderr.take() {
        // tor-gencert writes little; reading to the end ends with it.
        let _ = e.read_to_string(&mut gencert_err);
    }
    wait_job(&mut child, "tor-gencert", deadline).map_err(|e| format!("{e}: {gencert_err}"))?;
    for (what, log, mut child) in jobs {
        wait_job(&mut child, &what, deadline)
            .map_err(|e| format!("{e}: {}", fs::read_to_string(&log).unwrap_or_default()))?;
    }
    let mut fingerprints = Vec::new();
    for i in 0..RELAYS {
        let file = env.root.join(format!("relay{i}")).join("fingerprint");
        let text = fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        let fp: String = text.split_whitespace().skip(1).collect::<Vec<_>>().concat();
        if fp.len() != 40 {
            return Err(format!("{}: unexpected {text:?}", file.display()));
        }
        fingerprints.push(fp);
    }
    let cert = auth_keys.join("authority_certificate");
    let text = fs::read_to_string(&cert).map_err(|e| format!("{}: {e}", cert.display()))?;
    let v3ident = text
        .lines()
        .find_map(|l| l.strip_prefix("fingerprint "))
        .map(str::trim)
        .filter(|f| f.len() == 40)
        .ok_or_else(|| format!("no fingerprint in {}", cert.display()))?
        .to_owned();
    Ok(Keys {
        fingerprints,
        v3ident,
    })
}

fn wait_job(child: &mut Child, what: &str, deadline: Instant) -> Result<(), String> {
    loop {
        match child.try_wait() {
            Ok(Some(s)) if s.success() => return Ok(()),
            Ok(Some(s)) => return Err(format!("{what} failed ({s})")),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{what} did not finish in time"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("{what}: {e}")),
        }
    }
}

fn common_options(env: &Env, keys: &Keys) -> String {
    format!(
        "TestingTorNetwork 1
PathsNeededToBuildCircuits 0.67
TestingDirAuthVoteExit *
TestingDirAuthVoteGuard *
TestingDirAuthVoteHSDir *
TestingMinExitFlagThreshold 0
V3AuthNIntervalsValid 2
Sandbox 0
CookieAuthentication 0
SafeLogging 0
Log notice stdout
DirAuthority test0 orport={or} no-v2 v3ident={v3} 127.0.0.1:{dir} {fp}
",
        or = env.or_port(0),
        v3 = keys.v3ident,
        dir = env.dir_port(0),
        fp = keys.fingerprints[0],
    )
}

fn relay_torrc(env: &Env, i: u16) -> String {
    let dir = env.root.join(format!("relay{i}"));
    let mut rc = format!(
        "{common}DataDirectory {dir}
Nickname test{i}
ControlPort {control}
SocksPort 0
Address 127.0.0.1
ORPort 127.0.0.1:{or}
DirPort 127.0.0.1:{dirport}
AssumeReachable 1
ExitRelay 1
ExitPolicyRejectPrivate 0
ExitPolicy accept 127.0.0.0/8:*
ExitPolicy accept *:*
ServerDNSDetectHijacking 0
ServerDNSResolvConfFile {resolv}
",
        common = env.common,
        dir = dir.display(),
        control = env.control(i),
        or = env.or_port(i),
        dirport = env.dir_port(i),
        resolv = env.root.join("resolv.conf").display(),
    );
    if i == 0 {
        rc.push_str(
            "AuthoritativeDirectory 1
V3AuthoritativeDirectory 1
ContactInfo connmgr-tests
TestingV3AuthInitialVotingInterval 5
TestingV3AuthInitialVoteDelay 2
TestingV3AuthInitialDistDelay 2
V3AuthVotingInterval 10
V3AuthVoteDelay 2
V3AuthDistDelay 2
",
        );
    }
    rc
}

fn onion_torrc(
    env: &Env,
    dir: &Path,
    slot: u16,
    services: &[(String, Vec<(u16, SocketAddr)>)],
) -> String {
    let mut rc = format!(
        "{common}DataDirectory {dir}
ControlPort {control}
SocksPort 0
Log info file {dir}/info.log
",
        common = env.common,
        dir = dir.display(),
        control = env.control(slot),
    );
    for (name, ports) in services {
        let _ = writeln!(rc, "HiddenServiceDir {}", dir.join(name).display());
        for (port, backend) in ports {
            let _ = writeln!(rc, "HiddenServicePort {port} {backend}");
        }
    }
    rc
}

fn client_torrc(env: &Env, dir: &Path) -> String {
    format!(
        "{common}DataDirectory {dir}
ControlPort {control}
SocksPort {socks}
ConfluxEnabled 0
Log info file {dir}/info.log
",
        common = env.common,
        dir = dir.display(),
        control = env.control(CLIENT_SLOT),
        socks = env.socks(),
    )
}

/// Until the authority's consensus lists every relay as an exit and every
/// relay has bootstrapped.
fn wait_for_consensus(tors: &mut [Tor], deadline: Instant) -> Result<(), String> {
    let want: BTreeSet<String> = (0..RELAYS).map(|i| format!("test{i}")).collect();
    let mut listed = BTreeSet::new();
    loop {
        for t in tors.iter_mut() {
            t.check_alive()?;
        }
        if listed != want {
            // No consensus yet is an error reply: keep polling.
            if let Ok(reply) = tors[0].owner()?.command("GETINFO ns/all", deadline) {
                listed = exits_listed(&reply);
            }
        }
        if listed == want {
            let mut all = true;
            for t in tors.iter_mut() {
                all &= t.bootstrapped(deadline)?;
            }
            if all {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "no consensus listing every relay as an exit in time (listed: {listed:?})"
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Nicknames of the relays flagged `Exit` in a `GETINFO ns/all` reply.
fn exits_listed(reply: &[String]) -> BTreeSet<String> {
    let mut listed = BTreeSet::new();
    let mut nick = None;
    for line in reply {
        let line = line.trim_start_matches("250+ns/all=");
        if let Some(rest) = line.strip_prefix("r ") {
            nick = rest.split_whitespace().next().map(str::to_owned);
        } else if let Some(flags) = line.strip_prefix("s ") {
            if flags.split_whitespace().any(|f| f == "Exit") {
                if let Some(n) = nick.take() {
                    listed.insert(n);
                }
            }
        }
    }
    listed
}

fn wait_bootstrapped(tors: &mut [Tor], deadline: Instant) -> Result<(), String> {
    loop {
        let mut all = true;
        for t in tors.iter_mut() {
            t.check_alive()?;
            all &= t.bootstrapped(deadline)?;
        }
        if all {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err("a tor did not bootstrap in time".into());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Waits until every service's hostname file exists and its descriptor
/// was uploaded (HS_DESC UPLOADED) at least once; returns the hostnames.
fn wait_published(
    tor: &mut Tor,
    dir: &Path,
    services: &[(String, Vec<(u16, SocketAddr)>)],
    deadline: Instant,
) -> Result<Vec<String>, String> {
    tor.owner()?.command("SETEVENTS HS_DESC", deadline)?;
    let mut hosts = Vec::new();
    for (name, _) in services {
        let file = dir.join(name).join("hostname");
        let host = loop {
            tor.check_alive()?;
            if let Ok(text) = fs::read_to_string(&file) {
                let host = text.trim().to_owned();
                if host.ends_with(".onion") {
                    break host;
                }
            }
            if Instant::now() >= deadline {
                return Err(format!("{} was not written in time", file.display()));
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        hosts.push(host);
    }
    let mut waiting: BTreeSet<String> = hosts
        .iter()
        .map(|h| h.trim_end_matches(".onion").to_owned())
        .collect();
    while !waiting.is_empty() {
        tor.check_alive()?;
        let step = deadline.min(Instant::now() + Duration::from_millis(500));
        // 650 HS_DESC UPLOADED <address> <auth> <hsdir> ...
        if let Some(event) = tor.owner()?.event(step)? {
            let mut words = event.split_whitespace().skip(2);
            if words.next() == Some("UPLOADED") {
                if let Some(addr) = words.next() {
                    waiting.remove(addr);
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{}: no descriptor uploaded in time for {waiting:?}",
                tor.name
            ));
        }
    }
    tor.owner()?.command("SETEVENTS", deadline)?;
    Ok(hosts)
}

/// Until a stream through the client reaches `host:port` and echoes.
fn probe_echo(
    socks: SocketAddr,
    host: &str,
    port: u16,
    deadline: Instant,
    tors: &mut [Tor],
) -> Result<(), String> {
    let mut last = String::new();
    for attempt in 0..200 {
        for t in tors.iter_mut() {
            t.check_alive()?;
        }
        match socks_echo(socks, host, port, Duration::from_secs(30)) {
            Ok(()) => return Ok(()),
            Err(e) => last = format!("attempt {attempt}: {e}"),
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Err(format!(
        "{host}:{port} not reachable through the client: {last}"
    ))
}

/// A SOCKS5 CONNECT to `host:port` through `socks`, then an echo.
fn socks_echo(socks: SocketAddr, host: &str, port: u16, limit: Duration) -> Result<(), String> {
    let io = |e: io::Error| e.to_string();
    let mut s = TcpStream::connect_timeout(&socks, limit).map_err(io)?;
    s.set_read_timeout(Some(limit)).map_err(io)?;
    s.write_all(&[5, 1, 0]).map_err(io)?;
    let mut reply = [0u8; 2];
    s.read_exact(&mut reply).map_err(io)?;
    if reply != [5, 0] {
        return Err(format!("greeting answered {reply:?}"));
    }
    let len = u8::try_from(host.len()).map_err(|_| "name too long")?;
    let mut req = vec![5, 1, 0, 3, len];
    req.extend_from_slice(host.as_bytes());
    req.extend_from_slice(&port.to_be_bytes());
    s.write_all(&req).map_err(io)?;
    let mut head = [0u8; 4];
    s.read_exact(&mut head).map_err(io)?;
    if head[1] != 0 {
        return Err(format!("CONNECT answered REP {:#04x}", head[1]));
    }
    let rest = match head[3] {
        1 => 6,
        4 => 18,
        3 => {
            let mut l = [0u8; 1];
            s.read_exact(&mut l).map_err(io)?;
            usize::from(l[0]) + 2
        }
        a => return Err(format!("ATYP {a}")),
    };
    let mut skip = vec![0u8; rest];
    s.read_exact(&mut skip).map_err(io)?;
    s.write_all(b"probe").map_err(io)?;
    let mut back = [0u8; 5];
    s.read_exact(&mut back).map_err(io)?;
    if &back != b"probe" {
        return Err(format!("echo answered {back:?}"));
    }
    Ok(())
}

/// A blocking ControlPort connection (no authentication on this network).
#[derive(Debug)]
pub struct Control {
    stream: TcpStream,
    buf: Vec<u8>,
    events: VecDeque<String>,
}

impl Control {
    /// Connects, retrying until `deadline`.
    pub fn connect(addr: SocketAddr, deadline: Instant) -> Result<Self, String> {
        loop {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                Ok(stream) => {
                    return Ok(Self {
                        stream,
                        buf: Vec::new(),
                        events: VecDeque::new(),
                    });
                }
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!("control port {addr}: {e}"));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// One line (without CRLF), or `None` when `deadline` passed first.
    fn line(&mut self, deadline: Instant) -> Result<Option<String>, String> {
        let mut chunk = [0u8; 4096];
        for _ in 0..1_000_000 {
            if let Some(end) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                let text = String::from_utf8_lossy(&line);
                return Ok(Some(text.trim_end_matches(['\r', '\n']).to_owned()));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            self.stream
                .set_read_timeout(Some((deadline - now).max(Duration::from_millis(1))))
                .map_err(|e| e.to_string())?;
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err("control connection closed".into()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("control connection: {e}")),
            }
        }
        Err("control connection: too many reads".into())
    }

    /// Sends `cmd` and returns the reply's lines (data lines included);
    /// an error for a reply other than 2xx. Events that arrive meanwhile
    /// are kept for [`event`](Self::event).
    pub fn command(&mut self, cmd: &str, deadline: Instant) -> Result<Vec<String>, String> {
        self.stream
            .write_all(format!("{cmd}\r\n").as_bytes())
            .map_err(|e| format!("{cmd}: {e}"))?;
        let mut lines = Vec::new();
        let mut in_data = false;
        for _ in 0..1_000_000 {
            let Some(line) = self.line(deadline)? else {
                return Err(format!("{cmd}: no reply in time"));
            };
            if in_data {
                if line == "." {
                    in_data = false;
                } else {
                    lines.push(line);
                }
                continue;
            }
            if line.starts_with("650") {
                self.events.push_back(line);
                continue;
            }
            let sep = line.as_bytes().get(3).copied();
            lines.push(line.clone());
            match sep {
                Some(b'+') => in_data = true,
                Some(b'-') => {}
                _ => {
                    return if line.starts_with('2') {
                        Ok(lines)
                    } else {
                        Err(format!("{cmd}: {line}"))
                    };
                }
            }
        }
        Err(format!("{cmd}: reply too long"))
    }

    /// The next asynchronous event line, or `None` at `deadline`.
    pub fn event(&mut self, deadline: Instant) -> Result<Option<String>, String> {
        if let Some(e) = self.events.pop_front() {
            return Ok(Some(e));
        }
        for _ in 0..1_000_000 {
            match self.line(deadline)? {
                None => return Ok(None),
                Some(l) if l.starts_with("650") => return Ok(Some(l)),
                Some(_) => {}
            }
        }
        Ok(None)
    }
}

/// The servers behind the network: echo, HTTP and DNS, on a thread and
/// runtime of their own for the life of the process.
struct Backends {
    echo: SocketAddr,
    http: SocketAddr,
    http_requests: Arc<AtomicUsize>,
    dns: DnsServer,
}

impl Backends {
    fn start() -> Result<Self, String> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("tor-backends".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(format!("backend runtime: {e}")));
                        return;
                    }
                };
                rt.block_on(async move {
                    let echo = super::echo_target().await;
                    let requests = Arc::new(AtomicUsize::new(0));
                    let http = http_server(requests.clone()).await;
                    let dns =
                        DnsServer::start(vec![(DNS_NAME, vec![DNS_ADDR.into()])], vec![]).await;
                    let _ = tx.send(Ok(Self {
                        echo,
                        http,
                        http_requests: requests,
                        dns,
                    }));
                    std::future::pending::<()>().await;
                });
            })
            .map_err(|e| format!("backend thread: {e}"))?;
        rx.recv_timeout(Duration::from_secs(30))
            .map_err(|e| format!("backends: {e}"))?
    }
}

/// An HTTP/1.1 server that answers every request with [`HTTP_BODY`] and
/// closes.
async fn http_server(requests: Arc<AtomicUsize>) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind http backend");
    let addr = listener.local_addr().expect("http addr");
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let requests = requests.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                requests.fetch_add(1, Ordering::SeqCst);
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{HTTP_BODY}",
                    HTTP_BODY.len()
                );
                let _ = sock.write_all(reply.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    addr
}
