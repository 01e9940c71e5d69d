//! A small fault-injection TCP proxy for the integration tests (issue 7, "Fault-injection
//! proxy"): it listens on `127.0.0.1:0` and forwards every connection to one upstream address,
//! with faults that can be changed while traffic flows:
//!
//! - **latency**: each piece of data is delivered `latency` after the proxy read it (a real
//!   pipeline delay: throughput is not divided by it);
//! - **bandwidth**: a shared limit per direction (all connections together, like one link);
//! - **reset**: after N bytes forwarded in a direction, either on each connection or every N
//!   bytes of the proxy's total traffic, the connection carrying that byte is closed abruptly
//!   on both sides (`SO_LINGER` 0, then close: the peers see a TCP RST, never a clean EOF);
//!   [`FaultProxy::reset_all`] cuts every live connection at once;
//! - **black-hole**: nothing is forwarded on existing connections, and new connections are
//!   accepted but never reach the upstream, so clients wait; [`FaultProxy::restore`] (or
//!   `set_blackhole(false)`) lets everything flow again, like a network that comes back.
//!
//! The proxy runs on its own small tokio runtime (2 worker threads), so blocking tests can
//! drive it. Dropping it stops the runtime, which closes every socket it holds. Every wait in
//! it is bounded (connecting upstream: 10 s) or ends when the proxy is dropped.
//!
//! Use it from a test file with `mod fault_proxy;`.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// One direction of a proxied connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Client → server (request bodies, uploads).
    Up,
    /// Server → client (responses, downloads).
    Down,
    /// Both directions, each with its own count.
    Both,
}

impl Dir {
    fn indices(self) -> &'static [usize] {
        match self {
            Dir::Up => &[0],
            Dir::Down => &[1],
            Dir::Both => &[0, 1],
        }
    }
}

/// Which bytes a reset rule counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Each connection is reset once it has forwarded N bytes in the direction (counted from
    /// when the rule was set).
    PerConnection,
    /// Every N bytes of the proxy's total traffic in the direction, the connection that
    /// carries the N-th byte is reset.
    Total,
}

/// What the proxy has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Connections accepted from clients.
    pub accepted: u64,
    /// Connections currently open.
    pub live: u64,
    /// Bytes forwarded client → server.
    pub bytes_up: u64,
    /// Bytes forwarded server → client.
    pub bytes_down: u64,
    /// Connections reset by a rule or by [`FaultProxy::reset_all`].
    pub resets_injected: u64,
    /// Connections reset because one side failed (a peer reset, a failed upstream connect).
    pub resets_propagated: u64,
}

#[derive(Debug, Clone, Copy)]
struct Rule {
    every: u64,
    scope: Scope,
    generation: u64,
}

#[derive(Default)]
struct Rules {
    by_dir: [Option<Rule>; 2],
    /// Bytes counted by a `Total` rule since it was set, per direction.
    total: [u64; 2],
    generation: u64,
}

/// A shared pacing clock per direction for the bandwidth limit.
struct Pacer {
    /// Bytes per second; 0 means unlimited.
    rate: AtomicU64,
    next_free: Mutex<Instant>,
}

impl Pacer {
    fn new() -> Self {
        Pacer {
            rate: AtomicU64::new(0),
            next_free: Mutex::new(Instant::now()),
        }
    }

    /// The moment `n` bytes may start going out (the clock moves on by their send time).
    fn reserve(&self, n: usize) -> Option<Instant> {
        let rate = self.rate.load(Ordering::Relaxed);
        if rate == 0 {
            return None;
        }
        let mut next = self.next_free.lock().expect("pacer lock");
        let now = Instant::now();
        let start = (*next).max(now);
        *next = start + Duration::from_secs_f64(n as f64 / rate as f64);
        Some(start)
    }
}

/// Control of one live connection, for [`FaultProxy::reset_all`].
struct ConnCtl {
    kill: CancellationToken,
    reset: AtomicBool,
}

impl ConnCtl {
    fn reset(&self) {
        self.reset.store(true, Ordering::SeqCst);
        self.kill.cancel();
    }
}

struct Shared {
    upstream: SocketAddr,
    latency_us: AtomicU64,
    pacers: [Pacer; 2],
    rules: Mutex<Rules>,
    blackhole: watch::Sender<bool>,
    conns: Mutex<HashMap<u64, Arc<ConnCtl>>>,
    next_conn: AtomicU64,
    accepted: AtomicU64,
    bytes: [AtomicU64; 2],
    resets_injected: AtomicU64,
    resets_propagated: AtomicU64,
}

impl Shared {
    /// Waits until the proxy is not black-holed.
    async fn wait_open(&self) {
        let mut rx = self.blackhole.subscribe();
        let _ = rx.wait_for(|holed| !*holed).await;
    }

    fn latency(&self) -> Duration {
        Duration::from_micros(self.latency_us.load(Ordering::Relaxed))
    }

    /// How many of the next `n` bytes in direction `dir` may be forwarded, and whether the
    /// connection must be reset right after them. `seen` is the connection's own count for
    /// the current rule generation.
    fn admit(&self, dir: usize, n: usize, seen: &mut (u64, u64)) -> (usize, bool) {
        let mut rules = self.rules.lock().expect("rules lock");
        let Some(rule) = rules.by_dir[dir] else {
            return (n, false);
        };
        if seen.0 != rule.generation {
            *seen = (rule.generation, 0);
        }
        let n64 = n as u64;
        match rule.scope {
            Scope::PerConnection => {
                let left = rule.every.saturating_sub(seen.1);
                if n64 >= left {
                    seen.1 += left;
                    (left as usize, true)
                } else {
                    seen.1 += n64;
                    (n, false)
                }
            }
            Scope::Total => {
                let total = rules.total[dir];
                let left = rule.every - total % rule.every;
                if n64 >= left {
                    rules.total[dir] = total + left;
                    (left as usize, true)
                } else {
                    rules.total[dir] = total + n64;
                    (n, false)
                }
            }
        }
    }
}

/// A running fault-injection proxy. See the module documentation.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FaultProxy {
    /// Starts a proxy on `127.0.0.1:0` that forwards to `upstream`, with no faults.
    pub fn start(upstream: SocketAddr) -> FaultProxy {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fault-proxy")
            .enable_all()
            .build()
            .expect("proxy runtime");
        let (blackhole, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            upstream,
            latency_us: AtomicU64::new(0),
            pacers: [Pacer::new(), Pacer::new()],
            rules: Mutex::new(Rules::default()),
            blackhole,
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            bytes: [AtomicU64::new(0), AtomicU64::new(0)],
            resets_injected: AtomicU64::new(0),
            resets_propagated: AtomicU64::new(0),
        });
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let stop = CancellationToken::new();
        {
            let (shared, stop) = (shared.clone(), stop.clone());
            runtime.spawn(async move {
                loop {
                    let accepted = tokio::select! {
                        _ = stop.cancelled() => return,
                        a = listener.accept() => a,
                    };
                    match accepted {
                        Ok((client, _)) => {
                            shared.accepted.fetch_add(1, Ordering::Relaxed);
                            tokio::spawn(serve(client, shared.clone()));
                        }
                        // Out of descriptors or similar: try again shortly.
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
            });
        }
        FaultProxy {
            addr,
            shared,
            stop,
            runtime: Some(runtime),
        }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://127.0.0.1:PORT/REPO`: the URL a mount or the CLI takes.
    pub fn repo_url(&self, repo: &str) -> String {
        format!("{}/{repo}", self.url())
    }

    /// Delays every piece of data by `latency` (in each direction).
    pub fn set_latency(&self, latency: Duration) {
        self.shared
            .latency_us
            .store(latency.as_micros() as u64, Ordering::Relaxed);
    }

    /// Limits each direction to `bytes_per_sec` over all connections; `None` removes the limit.
    pub fn set_bandwidth(&self, bytes_per_sec: Option<u64>) {
        for pacer in &self.shared.pacers {
            *pacer.next_free.lock().expect("pacer lock") = Instant::now();
            pacer
                .rate
                .store(bytes_per_sec.unwrap_or(0), Ordering::Relaxed);
        }
    }

    /// Resets connections after `every` bytes in `dir` (see [`Scope`]). Replaces the rule of
    /// that direction and restarts its counts.
    pub fn reset_every(&self, dir: Dir, every: u64, scope: Scope) {
        assert!(every > 0, "a reset rule needs a positive byte count");
        let mut rules = self.shared.rules.lock().expect("rules lock");
        rules.generation += 1;
        let generation = rules.generation;
        for &d in dir.indices() {
            rules.by_dir[d] = Some(Rule {
                every,
                scope,
                generation,
            });
            rules.total[d] = 0;
        }
    }

    /// Removes the reset rules of `dir`.
    pub fn clear_resets(&self, dir: Dir) {
        let mut rules = self.shared.rules.lock().expect("rules lock");
        for &d in dir.indices() {
            rules.by_dir[d] = None;
        }
    }

    /// Resets every live connection now; returns how many.
    pub fn reset_all(&self) -> usize {
        let conns: Vec<Arc<ConnCtl>> = self
            .shared
            .conns
            .lock()
            .expect("conns lock")
            .values()
            .cloned()
            .collect();
        for c in &conns {
            self.shared.resets_injected.fetch_add(1, Ordering::Relaxed);
            c.reset();
        }
        conns.len()
    }

    /// Starts (`true`) or ends (`false`) a black-hole.
    pub fn set_blackhole(&self, on: bool) {
        self.shared.blackhole.send_replace(on);
    }

    /// Removes every fault: no latency, no bandwidth limit, no reset rule, no black-hole.
    pub fn restore(&self) {
        self.set_latency(Duration::ZERO);
        self.set_bandwidth(None);
        self.clear_resets(Dir::Both);
        self.set_blackhole(false);
    }

    /// Counters so far.
    pub fn stats(&self) -> ProxyStats {
        let s = &self.shared;
        ProxyStats {
            accepted: s.accepted.load(Ordering::Relaxed),
            live: s.conns.lock().expect("conns lock").len() as u64,
            bytes_up: s.bytes[0].load(Ordering::Relaxed),
            bytes_down: s.bytes[1].load(Ordering::Relaxed),
            resets_injected: s.resets_injected.load(Ordering::Relaxed),
            resets_propagated: s.resets_propagated.load(Ordering::Relaxed),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        for c in self.shared.conns.lock().expect("conns lock").values() {
            c.kill.cancel();
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

/// Makes the next close of `stream` send a RST (SO_LINGER on, 0 s).
fn linger_zero(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we own, with a pointer to a live linger of the right size.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// One piece of data on its way, or the end of one direction.
enum Piece {
    Data(Instant, Bytes),
    Eof,
}

/// Forwards one client connection until both directions end or it is reset.
async fn serve(client: TcpStream, shared: Arc<Shared>) {
    let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let ctl = Arc::new(ConnCtl {
        kill: CancellationToken::new(),
        reset: AtomicBool::new(false),
    });
    shared
        .conns
        .lock()
        .expect("conns lock")
        .insert(id, ctl.clone());
    serve_registered(client, &shared, &ctl).await;
    shared.conns.lock().expect("conns lock").remove(&id);
}

async fn serve_registered(mut client: TcpStream, shared: &Arc<Shared>, ctl: &Arc<ConnCtl>) {
    // A black-hole holds new connections here: accepted, never connected upstream.
    tokio::select! {
        _ = ctl.kill.cancelled() => { linger_zero(&client); return; }
        _ = shared.wait_open() => {}
    }
    let connected = tokio::select! {
        _ = ctl.kill.cancelled() => { linger_zero(&client); return; }
        c = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(shared.upstream)) => c,
    };
    let mut server = match connected {
        Ok(Ok(s)) => s,
        _ => {
            shared.resets_propagated.fetch_add(1, Ordering::Relaxed);
            linger_zero(&client);
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    {
        let (cr, cw) = client.split();
        let (sr, sw) = server.split();
        let (tx_up, rx_up) = mpsc::channel(64);
        let (tx_down, rx_down) = mpsc::channel(64);
        tokio::join!(
            read_side(cr, tx_up, shared, ctl),
            write_side(rx_up, sw, 0, shared, ctl),
            read_side(sr, tx_down, shared, ctl),
            write_side(rx_down, cw, 1, shared, ctl),
        );
    }
    if ctl.reset.load(Ordering::SeqCst) {
        linger_zero(&client);
        linger_zero(&server);
    }
}

/// Reads one side into the queue of the other; pauses during a black-hole.
async fn read_side(
    mut from: tokio::net::tcp::ReadHalf<'_>,
    to: mpsc::Sender<Piece>,
    shared: &Shared,
    ctl: &ConnCtl,
) {
    loop {
        tokio::select! {
            _ = ctl.kill.cancelled() => return,
            _ = shared.wait_open() => {}
        }
        let mut buf = BytesMut::with_capacity(64 << 10);
        let read = tokio::select! {
            _ = ctl.kill.cancelled() => return,
            r = from.read_buf(&mut buf) => r,
        };
        let piece = match read {
            Ok(0) => Piece::Eof,
            Ok(_) => Piece::Data(Instant::now(), buf.freeze()),
            Err(_) => {
                // The peer reset or broke the connection: pass that on as a reset.
                if !ctl.kill.is_cancelled() {
                    shared.resets_propagated.fetch_add(1, Ordering::Relaxed);
                }
                ctl.reset();
                return;
            }
        };
        let eof = matches!(piece, Piece::Eof);
        let sent = tokio::select! {
            _ = ctl.kill.cancelled() => return,
            s = to.send(piece) => s,
        };
        if sent.is_err() || eof {
            return;
        }
    }
}

/// Delivers the queue to one side, applying latency, bandwidth and reset rules.
async fn write_side(
    mut from: mpsc::Receiver<Piece>,
    mut to: tokio::net::tcp::WriteHalf<'_>,
    dir: usize,
    shared: &Shared,
    ctl: &ConnCtl,
) {
    let mut seen = (0u64, 0u64);
    loop {
        let piece = tokio::select! {
            biased;
            _ = ctl.kill.cancelled() => return,
            p = from.recv() => p,
        };
        let (read_at, mut data) = match piece {
            Some(Piece::Data(at, data)) => (at, data),
            Some(Piece::Eof) => {
                // A clean end of this direction: half-close the other side.
                let _ = to.shutdown().await;
                return;
            }
            // The reader stopped without an end (the connection is being reset): never send
            // a FIN, which the peer would take for a clean end.
            None => return,
        };
        let due = read_at + shared.latency();
        tokio::select! {
            _ = ctl.kill.cancelled() => return,
            _ = tokio::time::sleep_until(due) => {}
        }
        while !data.is_empty() {
            tokio::select! {
                _ = ctl.kill.cancelled() => return,
                _ = shared.wait_open() => {}
            }
            // Small slices when paced, so the limit is smooth.
            let limited = shared.pacers[dir].rate.load(Ordering::Relaxed) != 0;
            let want = if limited {
                data.len().min(16 << 10)
            } else {
                data.len()
            };
            let (n, reset) = shared.admit(dir, want, &mut seen);
            if let Some(start) = shared.pacers[dir].reserve(n) {
                tokio::select! {
                    _ = ctl.kill.cancelled() => return,
                    _ = tokio::time::sleep_until(start) => {}
                }
            }
            let chunk = data.split_to(n);
            let written = tokio::select! {
                _ = ctl.kill.cancelled() => return,
                w = to.write_all(&chunk) => w,
            };
            if written.is_err() {
                if !ctl.kill.is_cancelled() {
                    shared.resets_propagated.fetch_add(1, Ordering::Relaxed);
                }
                ctl.reset();
                return;
            }
            shared.bytes[dir].fetch_add(n as u64, Ordering::Relaxed);
            if reset {
                if !ctl.kill.is_cancelled() {
                    shared.resets_injected.fetch_add(1, Ordering::Relaxed);
                }
                ctl.reset();
                return;
            }
        }
    }
}
