//! `provider scale-server` / `provider kernel-scale-server`: the server side of the scale test
//! (`tests/tests/scale_e2e.rs`) and of `cargo xtask bench scale` (issue 10, "Scale").
//!
//! Listens on `--ports` (IPv4), accepts exactly `--conns` connections and holds them all open;
//! then obeys commands on stdin, one per line, and answers each with one JSON line on stdout:
//!
//! - `measure` → `{"event":"measure", …memory…, "stats": …}`
//! - `echo BYTES` → reads every connection (nonblocking, in passes) and sends back what
//!   arrives until BYTES bytes were echoed → `{"event":"echoed","bytes":…,"conns":…}`
//! - `close` → closes each connection once it reads its EOF (the peer closes first, so no
//!   TIME_WAIT is left here), then waits for the engine's connection count to reach 0 →
//!   `{"event":"closed", …}`
//! - `quit` (or end of stdin) → exit.
//!
//! Before the commands: `ready: …` once listening, and `{"event":"accepted", …}` once all
//! `--conns` are accepted. Memory is this process's own: resident set size (`/proc/self/statm`)
//! and glibc's heap in use (`mallinfo2`: arena bytes in use plus mmapped chunks), each with the
//! value taken right after the listeners were set up, so the caller computes per-connection
//! deltas. The kernel variant serves the same protocol on kernel sockets (its per-connection
//! cost is kernel memory, which the caller reads from `/proc/slabinfo`).
use std::io::{BufRead, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use provider::api::{AF_INET, IPPROTO_TCP, Provider, SOCK_STREAM};
use provider::socket::options::FIONBIO;
use provider::socket::{Socket, WsaError};
use serde_json::{Value, json};

type BoxResult<T> = Result<T, Box<dyn std::error::Error>>;

/// How long one phase may take before the server gives up (the caller has its own limits).
const PHASE_LIMIT: Duration = Duration::from_secs(600);

#[derive(clap::Args)]
pub struct ScaleServerArgs {
    #[command(flatten)]
    datapath: super::DatapathArgs,
    #[command(flatten)]
    scale: ScaleArgs,
}

#[derive(clap::Args)]
pub struct KernelScaleServerArgs {
    #[command(flatten)]
    scale: ScaleArgs,
}

#[derive(clap::Args, Clone)]
pub struct ScaleArgs {
    /// Listening ports, comma-separated (several, so one peer address gets past the 64 k
    /// four-tuples per address pair).
    #[arg(long, value_delimiter = ',', default_value = "7400,7401,7402,7403")]
    ports: Vec<u16>,
    /// Connections to accept and hold.
    #[arg(long, default_value_t = 100_000)]
    conns: usize,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    addr: Ipv4Addr,
}

/// This process's memory: resident set and heap in use, in bytes.
fn memory() -> (u64, u64) {
    let rss = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    // SAFETY: mallinfo2 only reads glibc's allocator statistics.
    let mi = unsafe { libc::mallinfo2() };
    (rss * page, (mi.uordblks + mi.hblkhd) as u64)
}

fn emit(v: Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

/// Soft and hard RLIMIT_NOFILE raised to `want` (root: CAP_SYS_RESOURCE), else to the hard limit.
fn raise_fd_limit(want: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct; failure leaves the old limit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        let raised = libc::rlimit {
            rlim_cur: want.max(lim.rlim_cur),
            rlim_max: want.max(lim.rlim_max),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// One side's sockets: what the command loop needs, on provider or kernel sockets.
trait Side {
    type Conn;
    /// A connection if one is waiting on listener `i`.
    fn try_accept(&mut self, i: usize) -> BoxResult<Option<Self::Conn>>;
    /// Nonblocking read: `Ok(Some(0))` EOF, `Ok(None)` nothing yet.
    fn try_recv(&self, c: &Self::Conn, buf: &mut [u8]) -> BoxResult<Option<usize>>;
    fn send_all(&self, c: &Self::Conn, data: &[u8]) -> BoxResult<()>;
    fn close(&self, c: Self::Conn);
    /// Connections the stack still holds (any state).
    fn connections(&self) -> u64;
    fn stats(&self) -> Value;
}

struct ProviderSide {
    p: Arc<Provider>,
    listeners: Vec<Socket>,
}

impl Side for ProviderSide {
    type Conn = Socket;

    fn try_accept(&mut self, i: usize) -> BoxResult<Option<Socket>> {
        match self.p.wsp_accept(self.listeners[i]) {
            Ok((s, _)) => Ok(Some(s)),
            Err(WsaError::WSAEWOULDBLOCK) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn try_recv(&self, c: &Socket, buf: &mut [u8]) -> BoxResult<Option<usize>> {
        match self.p.wsp_recv(*c, buf) {
            Ok(n) => Ok(Some(n)),
            Err(WsaError::WSAEWOULDBLOCK) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn send_all(&self, c: &Socket, data: &[u8]) -> BoxResult<()> {
        let mut off = 0;
        let start = Instant::now();
        while off < data.len() {
            match self.p.wsp_send(*c, &data[off..]) {
                Ok(n) => off += n,
                Err(WsaError::WSAEWOULDBLOCK) if start.elapsed() < PHASE_LIMIT => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn close(&self, c: Socket) {
        let _ = self.p.wsp_close_socket(c);
    }

    fn connections(&self) -> u64 {
        self.p.stats().tcp_connections
    }

    fn stats(&self) -> Value {
        serde_json::to_value(self.p.stats()).unwrap_or(Value::Null)
    }
}

struct KernelSide {
    listeners: Vec<TcpListener>,
}

impl Side for KernelSide {
    type Conn = TcpStream;

    fn try_accept(&mut self, i: usize) -> BoxResult<Option<TcpStream>> {
        match self.listeners[i].accept() {
            Ok((s, _)) => {
                s.set_nonblocking(true)?;
                Ok(Some(s))
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn try_recv(&self, c: &TcpStream, buf: &mut [u8]) -> BoxResult<Option<usize>> {
        let mut c = c;
        match c.read(buf) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn send_all(&self, c: &TcpStream, data: &[u8]) -> BoxResult<()> {
        let mut c = c;
        let mut off = 0;
        while off < data.len() {
            match c.write(&data[off..]) {
                Ok(n) => off += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn close(&self, c: TcpStream) {
        drop(c);
    }

    fn connections(&self) -> u64 {
        // This namespace's TCP sockets in use (`/proc/net/sockstat` is per network namespace
        // for `inuse`); the listeners are sockets too.
        let inuse = std::fs::read_to_string("/proc/net/sockstat")
            .ok()
            .and_then(|s| {
                let line = s.lines().find(|l| l.starts_with("TCP:"))?;
                let mut w = line.split_whitespace();
                w.position(|x| x == "inuse")?;
                w.next()?.parse::<u64>().ok()
            })
            .unwrap_or(0);
        // Listening sockets of every server in this namespace (a kernel run has one server
        // process per port) are not connections.
        let listening = std::fs::read_to_string("/proc/net/tcp")
            .map(|t| {
                t.lines()
                    .skip(1)
                    .filter(|l| l.split_whitespace().nth(3) == Some("0A"))
                    .count() as u64
            })
            .unwrap_or(self.listeners.len() as u64);
        inuse.saturating_sub(listening)
    }

    fn stats(&self) -> Value {
        json!({ "sockstat": std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default() })
    }
}

fn mem_json(base: (u64, u64)) -> Value {
    let (rss, heap) = memory();
    json!({ "rss": rss, "heap": heap, "rss_base": base.0, "heap_base": base.1 })
}

fn serve<S: Side>(side: &mut S, args: &ScaleArgs, base: (u64, u64)) -> BoxResult<()> {
    let n = args.conns;
    let mut conns: Vec<S::Conn> = Vec::with_capacity(n);
    let start = Instant::now();
    let mut idle_passes = 0u64;
    while conns.len() < n {
        let mut got = false;
        for i in 0..args.ports.len() {
            // Drain each listener in turn, a bounded batch at a time.
            for _ in 0..256 {
                match side.try_accept(i)? {
                    Some(c) => {
                        conns.push(c);
                        got = true;
                        if conns.len() == n {
                            break;
                        }
                    }
                    None => break,
                }
            }
        }
        if !got {
            idle_passes += 1;
            if start.elapsed() > PHASE_LIMIT {
                return Err(format!("only {} of {n} connections arrived", conns.len()).into());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let mut ev = mem_json(base);
    ev["event"] = "accepted".into();
    ev["n"] = n.into();
    ev["secs"] = start.elapsed().as_secs_f64().into();
    ev["idle_passes"] = idle_passes.into();
    ev["stats"] = side.stats();
    emit(ev);

    let stdin = std::io::stdin();
    let mut buf = vec![0u8; 64 * 1024];
    for line in stdin.lock().lines() {
        let line = line?;
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["measure"] => {
                let mut ev = mem_json(base);
                ev["event"] = "measure".into();
                ev["conns"] = conns.len().into();
                ev["stats"] = side.stats();
                emit(ev);
            }
            ["echo", bytes] => {
                let want: u64 = bytes.parse()?;
                let t = Instant::now();
                let (mut echoed, mut touched, mut passes) = (0u64, 0u64, 0u64);
                while echoed < want {
                    passes += 1;
                    let mut progress = false;
                    for c in &conns {
                        let mut first = true;
                        while let Some(k) = side.try_recv(c, &mut buf)? {
                            if k == 0 {
                                return Err("EOF during echo".into());
                            }
                            side.send_all(c, &buf[..k])?;
                            echoed += k as u64;
                            progress = true;
                            if first {
                                touched += 1;
                                first = false;
                            }
                        }
                    }
                    if !progress {
                        if t.elapsed() > PHASE_LIMIT {
                            return Err(format!("echoed {echoed} of {want} bytes").into());
                        }
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
                let mut ev = mem_json(base);
                ev["event"] = "echoed".into();
                ev["bytes"] = echoed.into();
                ev["conns"] = touched.into();
                ev["passes"] = passes.into();
                ev["secs"] = t.elapsed().as_secs_f64().into();
                emit(ev);
            }
            ["close"] => {
                let t = Instant::now();
                let (mut eof, mut errors, mut unexpected) = (0u64, 0u64, 0u64);
                let total = conns.len();
                let mut last_report = Instant::now();
                while !conns.is_empty() {
                    let before = conns.len();
                    let mut keep = Vec::with_capacity(conns.len());
                    for c in conns.drain(..) {
                        match side.try_recv(&c, &mut buf) {
                            Ok(None) => keep.push(c),
                            Ok(Some(0)) => {
                                eof += 1;
                                side.close(c);
                            }
                            Ok(Some(_)) => {
                                unexpected += 1;
                                keep.push(c);
                            }
                            Err(_) => {
                                errors += 1;
                                side.close(c);
                            }
                        }
                    }
                    conns = keep;
                    if last_report.elapsed() > Duration::from_secs(5) {
                        last_report = Instant::now();
                        eprintln!(
                            "close: {} open, {eof} EOF, {errors} errors, {} connections in the stack",
                            conns.len(),
                            side.connections()
                        );
                    }
                    if conns.len() == before {
                        if t.elapsed() > PHASE_LIMIT {
                            return Err(format!("{} connections never saw EOF", conns.len()).into());
                        }
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
                // The peer's last ACKs finish LAST_ACK.
                let mut left = side.connections();
                while left > 0 && t.elapsed() < PHASE_LIMIT {
                    std::thread::sleep(Duration::from_millis(20));
                    left = side.connections();
                    if last_report.elapsed() > Duration::from_secs(5) {
                        last_report = Instant::now();
                        eprintln!("close: all closed, {left} connections left in the stack");
                    }
                }
                let mut ev = mem_json(base);
                ev["event"] = "closed".into();
                ev["closed"] = total.into();
                ev["eof"] = eof.into();
                ev["errors"] = errors.into();
                ev["unexpected_data"] = unexpected.into();
                ev["connections_left"] = left.into();
                ev["secs"] = t.elapsed().as_secs_f64().into();
                ev["stats"] = side.stats();
                emit(ev);
            }
            ["quit"] => break,
            [] => {}
            _ => emit(json!({ "event": "error", "unknown_command": line })),
        }
    }
    for c in conns {
        side.close(c);
    }
    Ok(())
}

pub fn scale_server(args: ScaleServerArgs) -> BoxResult<()> {
    let mut dp = args.datapath.clone();
    // Room for every connection's handle plus the listeners.
    let need = args.scale.conns + args.scale.ports.len() + 64;
    dp.settings.max_sockets = Some(dp.settings.max_sockets.unwrap_or(0).max(need));
    let engine = Arc::new(super::start(&dp)?);
    let p = engine.provider().clone();
    let mut listeners = Vec::new();
    for &port in &args.scale.ports {
        let s = p.wsp_socket(AF_INET, SOCK_STREAM, IPPROTO_TCP)?;
        p.wsp_bind(s, SocketAddr::new(IpAddr::V4(args.scale.addr), port))?;
        p.wsp_listen(s, provider::api::SOMAXCONN)?;
        let mut on = 1u32;
        p.wsp_ioctl(s, FIONBIO, &mut on)?;
        listeners.push(s);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let stats_path = dp.stats_path();
    let writer = super::spawn_stats_writer(&engine, stats_path.clone(), stop.clone());
    let base = memory();
    println!(
        "ready: scale server (provider) on ports {:?}, {} connections",
        args.scale.ports, args.scale.conns
    );
    let mut side = ProviderSide {
        p: p.clone(),
        listeners: listeners.clone(),
    };
    let r = serve(&mut side, &args.scale, base);
    for s in listeners {
        let _ = p.wsp_close_socket(s);
    }
    stop.store(true, Ordering::Relaxed);
    let _ = writer.join();
    let _ = std::fs::remove_file(&stats_path);
    r
}

pub fn kernel_scale_server(args: KernelScaleServerArgs) -> BoxResult<()> {
    raise_fd_limit(args.scale.conns as u64 + 1024);
    let mut listeners = Vec::new();
    for &port in &args.scale.ports {
        let l = TcpListener::bind(SocketAddr::new(IpAddr::V4(args.scale.addr), port))?;
        // Listening again on a listening socket only changes its backlog (std used its own).
        // SAFETY: listen(2) on a descriptor the TcpListener owns.
        if unsafe { libc::listen(l.as_raw_fd(), 4096) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        l.set_nonblocking(true)?;
        listeners.push(l);
    }
    let base = memory();
    println!(
        "ready: scale server (kernel) on ports {:?}, {} connections",
        args.scale.ports, args.scale.conns
    );
    let mut side = KernelSide { listeners };
    serve(&mut side, &args.scale, base)
}
