//! TCP benchmark tools that `cargo xtask bench tcp` drives (DESIGN §12): bulk transfer and
//! connection-rate endpoints, each in a provider flavour (WSP stream sockets over the datapath)
//! and a kernel flavour (std sockets, no datapath) so both stacks run the very same loop.
//!
//! | tool | does |
//! |---|---|
//! | `tcp-sink` / `kernel-tcp-sink` | listen, accept one connection, read to EOF, close |
//! | `tcp-source` / `kernel-tcp-source` | connect, send N bytes, shut down sending, wait for the peer's EOF |
//! | `accept-close` / `kernel-accept-close` | accept in a loop until SIGTERM; a pool of closer threads reads each connection to EOF and closes it |
//! | `kernel-connect-loop` | K threads: connect, close, repeat, for S seconds; count |
//!
//! Output contract (stdout): a `ready: …` line once serving (listeners) or connected (sources),
//! progress lines `{"t": s, "bytes"|"connects": n}` about every 500 ms, and one final JSON object
//! with `"tool"` set. The kernel tools need no interface, so they also run in the peer namespace
//! as the kernel-side client or server.
//!
//! Connection-rate close order: the client closes first (it sends its FIN right after the
//! handshake), the server reads that EOF and then closes. TIME_WAIT therefore stays with the
//! kernel client in the peer namespace, and the server side — kernel or provider — ends each
//! connection through LAST_ACK with no lingering state.
use std::{
    io::{self, Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use clap::Args;
use provider::{
    api::{AF_INET, AF_INET6, IPPROTO_TCP, Provider, SD_SEND, SOCK_STREAM},
    socket::{Socket, WsaError},
};
use serde_json::{Value, json};

/// Bytes per send / receive call, the same for both stacks.
const CHUNK: usize = 256 * 1024;
/// Progress line period.
const PROGRESS: Duration = Duration::from_millis(500);
/// How long a provider process waits, after its last close, for its connections to finish
/// their FIN handshake before it stops the engine.
const DRAIN: Duration = Duration::from_secs(1);

type Res<T> = Result<T, Box<dyn std::error::Error>>;

// ------------------------------------------------------------------ arguments

#[derive(Args)]
pub struct TcpSinkArgs {
    #[command(flatten)]
    datapath: super::DatapathArgs,
    /// Port to listen on (IPv4 wildcard).
    #[arg(long)]
    port: u16,
}

#[derive(Args)]
pub struct KernelTcpSinkArgs {
    /// Port to listen on.
    #[arg(long)]
    port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    bind: IpAddr,
}

#[derive(Args)]
pub struct TcpSourceArgs {
    #[command(flatten)]
    datapath: super::DatapathArgs,
    /// Peer to connect to.
    #[arg(long)]
    connect: SocketAddr,
    /// Bytes to send.
    #[arg(long)]
    bytes: u64,
}

#[derive(Args)]
pub struct KernelTcpSourceArgs {
    /// Peer to connect to.
    #[arg(long)]
    connect: SocketAddr,
    /// Bytes to send.
    #[arg(long)]
    bytes: u64,
}

#[derive(Args)]
pub struct AcceptCloseArgs {
    #[command(flatten)]
    datapath: super::DatapathArgs,
    /// Port to listen on (IPv4 wildcard).
    #[arg(long)]
    port: u16,
    /// Listen backlog.
    #[arg(long, default_value_t = 4096)]
    backlog: i32,
    /// Threads that read accepted connections to EOF and close them.
    #[arg(long, default_value_t = 8)]
    closers: usize,
}

#[derive(Args)]
pub struct KernelAcceptCloseArgs {
    /// Port to listen on.
    #[arg(long)]
    port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    bind: IpAddr,
    /// Listen backlog (capped by net.core.somaxconn).
    #[arg(long, default_value_t = 4096)]
    backlog: i32,
    /// Threads that read accepted connections to EOF and close them.
    #[arg(long, default_value_t = 8)]
    closers: usize,
}

#[derive(Args)]
pub struct KernelConnectLoopArgs {
    /// Server to connect to.
    #[arg(long)]
    connect: SocketAddr,
    /// How long to run.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Connections in flight (one thread each).
    #[arg(long, default_value_t = 8)]
    parallel: usize,
    /// Give up on one connect after this many ms (counted as a timeout).
    #[arg(long, default_value_t = 3000)]
    connect_timeout_ms: u64,
}

// ------------------------------------------------------------------ one connection, two stacks

/// A connected stream on either stack.
trait Conn {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    fn send_all(&mut self, buf: &[u8]) -> io::Result<()>;
    fn shutdown_send(&mut self) -> io::Result<()>;
}

impl Conn for TcpStream {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }
    fn send_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.write_all(buf)
    }
    fn shutdown_send(&mut self) -> io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
}

struct WspConn<'a> {
    p: &'a Provider,
    s: Socket,
}

fn wsa(e: WsaError) -> io::Error {
    io::Error::other(format!("{e:?} ({})", e.code()))
}

impl Conn for WspConn<'_> {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.p.wsp_recv(self.s, buf).map_err(wsa)
    }
    fn send_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            done += self.p.wsp_send(self.s, &buf[done..]).map_err(wsa)?;
        }
        Ok(())
    }
    fn shutdown_send(&mut self) -> io::Result<()> {
        self.p.wsp_shutdown(self.s, SD_SEND).map_err(wsa)
    }
}

/// Prints `{"t": s, "<key>": n}` at most every [`PROGRESS`].
struct Progress {
    start: Instant,
    next: Instant,
    key: &'static str,
}

impl Progress {
    fn new(key: &'static str) -> Self {
        let start = Instant::now();
        Progress {
            start,
            next: start + PROGRESS,
            key,
        }
    }

    fn tick(&mut self, n: u64) {
        let now = Instant::now();
        if now >= self.next {
            self.next = now + PROGRESS;
            println!(
                "{}",
                json!({"t": (now - self.start).as_secs_f64(), self.key: n})
            );
        }
    }
}

fn gbps(bytes: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        bytes as f64 * 8.0 / secs / 1e9
    } else {
        0.0
    }
}

/// Read to EOF; the time runs from the accept to the EOF.
fn sink(c: &mut dyn Conn, accepted: Instant) -> io::Result<(u64, f64)> {
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    let mut progress = Progress::new("bytes");
    loop {
        let n = c.recv(&mut buf)?;
        if n == 0 {
            return Ok((total, accepted.elapsed().as_secs_f64()));
        }
        total += n as u64;
        progress.tick(total);
    }
}

/// Send `bytes`, shut down sending, then wait for the peer's EOF (it closes after reading ours),
/// so the time covers delivery, not just the copy into the send buffer.
fn source(c: &mut dyn Conn, bytes: u64, connected: Instant) -> io::Result<f64> {
    let buf: Vec<u8> = (0..CHUNK).map(|i| (i % 251) as u8).collect();
    let mut sent = 0u64;
    let mut progress = Progress::new("bytes");
    while sent < bytes {
        let n = (bytes - sent).min(CHUNK as u64) as usize;
        c.send_all(&buf[..n])?;
        sent += n as u64;
        progress.tick(sent);
    }
    c.shutdown_send()?;
    let mut b = [0u8; 64];
    while c.recv(&mut b)? > 0 {}
    Ok(connected.elapsed().as_secs_f64())
}

fn report(tool: &str, stack: &str, bytes: u64, secs: f64, extra: Value) {
    let mut v = json!({
        "tool": tool, "stack": stack, "bytes": bytes, "seconds": secs, "gbps": gbps(bytes, secs),
    });
    if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
        o.extend(e);
    }
    println!("{v}");
}

// ------------------------------------------------------------------ provider side helpers

fn provider_listener(p: &Provider, port: u16, backlog: i32) -> Res<Socket> {
    let s = p.wsp_socket(AF_INET, SOCK_STREAM, IPPROTO_TCP)?;
    p.wsp_bind(s, SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port))?;
    p.wsp_listen(s, backlog)?;
    Ok(s)
}

/// Wait (up to [`DRAIN`]) for closed connections to finish their FIN handshake, so the last
/// ACKs leave before the engine stops and the XDP program goes.
fn drain(p: &Provider) {
    let end = Instant::now() + DRAIN;
    while Instant::now() < end && p.tcp_counts().1 > 0 {
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn engine_stats(engine: &provider::engine::Engine) -> Value {
    serde_json::to_value(engine.stats()).unwrap_or(Value::Null)
}

// ------------------------------------------------------------------ bulk tools

/// `provider tcp-sink`: accept one connection through the provider, read to EOF, report.
pub fn tcp_sink(args: TcpSinkArgs) -> Res<()> {
    let engine = super::start(&args.datapath)?;
    let p = engine.provider().clone();
    let l = provider_listener(&p, args.port, 8)?;
    println!("ready: provider tcp-sink on port {}", args.port);
    let (s, from) = p.wsp_accept(l)?;
    let accepted = Instant::now();
    let r = sink(&mut WspConn { p: &p, s }, accepted);
    let _ = p.wsp_close_socket(s);
    let _ = p.wsp_close_socket(l);
    let (bytes, secs) = r?;
    drain(&p);
    report(
        "tcp-sink",
        "provider",
        bytes,
        secs,
        json!({"peer": from.to_string(), "engine": engine_stats(&engine)}),
    );
    Ok(())
}

/// `provider kernel-tcp-sink`: the same on a kernel socket.
pub fn kernel_tcp_sink(args: KernelTcpSinkArgs) -> Res<()> {
    let l = TcpListener::bind(SocketAddr::new(args.bind, args.port))?;
    println!("ready: kernel tcp-sink on port {}", args.port);
    let (mut s, from) = l.accept()?;
    let accepted = Instant::now();
    let (bytes, secs) = sink(&mut s, accepted)?;
    drop(s);
    report(
        "kernel-tcp-sink",
        "kernel",
        bytes,
        secs,
        json!({"peer": from.to_string()}),
    );
    Ok(())
}

/// `provider tcp-source`: connect through the provider, send N bytes, shut down, wait for EOF.
pub fn tcp_source(args: TcpSourceArgs) -> Res<()> {
    let engine = super::start(&args.datapath)?;
    let p = engine.provider().clone();
    let af = if args.connect.is_ipv4() {
        AF_INET
    } else {
        AF_INET6
    };
    let s = p.wsp_socket(af, SOCK_STREAM, IPPROTO_TCP)?;
    p.wsp_connect(s, args.connect)?;
    let connected = Instant::now();
    println!("ready: provider tcp-source connected to {}", args.connect);
    let r = source(&mut WspConn { p: &p, s }, args.bytes, connected);
    let _ = p.wsp_close_socket(s);
    let secs = r?;
    drain(&p);
    report(
        "tcp-source",
        "provider",
        args.bytes,
        secs,
        json!({"engine": engine_stats(&engine)}),
    );
    Ok(())
}

/// `provider kernel-tcp-source`: the same on a kernel socket.
pub fn kernel_tcp_source(args: KernelTcpSourceArgs) -> Res<()> {
    let mut s = TcpStream::connect(args.connect)?;
    let connected = Instant::now();
    println!("ready: kernel tcp-source connected to {}", args.connect);
    let secs = source(&mut s, args.bytes, connected)?;
    report("kernel-tcp-source", "kernel", args.bytes, secs, json!({}));
    Ok(())
}

// ------------------------------------------------------------------ connection rate

/// Counters of an accept-close server.
#[derive(Default)]
struct AcceptCounters {
    accepted: AtomicU64,
    closed: AtomicU64,
    errors: AtomicU64,
}

fn accept_report(tool: &str, stack: &str, c: &AcceptCounters, start: Instant, extra: Value) {
    let secs = start.elapsed().as_secs_f64();
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let accepted = g(&c.accepted);
    let mut v = json!({
        "tool": tool, "stack": stack, "accepted": accepted, "closed": g(&c.closed),
        "errors": g(&c.errors), "seconds": secs, "cps": accepted as f64 / secs.max(1e-9),
    });
    if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
        o.extend(e);
    }
    println!("{v}");
}

/// Read one connection to EOF (the client closes first), ignoring what it sent.
fn read_to_eof(c: &mut dyn Conn) -> io::Result<()> {
    let mut b = [0u8; 512];
    while c.recv(&mut b)? > 0 {}
    Ok(())
}

/// The accept loop hands each connection to one of `closers` threads (round robin) that reads
/// it to EOF and closes it, so a client that is slow to send its FIN (descheduled between
/// connect and close) never stalls the accepts — a single-threaded accept/read/close loop
/// lets the accept queue overflow behind one such connection, and SYNs then wait out a 1 s
/// retransmission.
fn closer_pool<T: Send + 'static>(
    closers: usize,
    counters: &Arc<AcceptCounters>,
    close: impl Fn(T) -> io::Result<()> + Send + Sync + 'static,
) -> Vec<std::sync::mpsc::Sender<T>> {
    let close = Arc::new(close);
    (0..closers.max(1))
        .map(|_| {
            let (tx, rx) = std::sync::mpsc::channel::<T>();
            let (counters, close) = (counters.clone(), close.clone());
            std::thread::spawn(move || {
                for conn in rx {
                    if close(conn).is_err() {
                        counters.errors.fetch_add(1, Ordering::Relaxed);
                    }
                    counters.closed.fetch_add(1, Ordering::Relaxed);
                }
            });
            tx
        })
        .collect()
}

/// Sets the listen backlog of a std listener (std picks its own).
fn set_backlog(l: &TcpListener, backlog: i32) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: listen(2) on a socket fd we own; a second listen only updates the backlog.
    if unsafe { libc::listen(l.as_raw_fd(), backlog) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `provider accept-close`: accept, read to EOF, close, in a loop until SIGINT/SIGTERM.
pub fn accept_close(args: AcceptCloseArgs) -> Res<()> {
    let engine = super::start(&args.datapath)?;
    let p = engine.provider().clone();
    let l = provider_listener(&p, args.port, args.backlog)?;
    let counters = Arc::new(AcceptCounters::default());
    let closers = {
        let p = p.clone();
        closer_pool(args.closers, &counters, move |s: Socket| {
            let r = read_to_eof(&mut WspConn { p: &p, s });
            let c = p.wsp_close_socket(s).map_err(wsa);
            r.and(c)
        })
    };
    let worker = {
        let (p, counters) = (p.clone(), counters.clone());
        std::thread::spawn(move || {
            let mut next = 0usize;
            loop {
                match p.wsp_accept(l) {
                    Ok((s, _)) => {
                        counters.accepted.fetch_add(1, Ordering::Relaxed);
                        let _ = closers[next % closers.len()].send(s);
                        next = next.wrapping_add(1);
                    }
                    // The listener was closed: we are stopping.
                    Err(WsaError::WSAENOTSOCK | WsaError::WSAEINTR) => return,
                    Err(_) => {
                        counters.errors.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
        })
    };
    let start = Instant::now();
    println!("ready: provider accept-close on port {}", args.port);
    super::wait_for_signal()?;
    let (conns, orphans) = p.tcp_counts();
    accept_report(
        "accept-close",
        "provider",
        &counters,
        start,
        json!({"engine_connections": conns, "engine_orphans": orphans,
               "engine": engine_stats(&engine)}),
    );
    let _ = p.wsp_close_socket(l);
    let _ = worker.join();
    Ok(())
}

/// `provider kernel-accept-close`: the same on kernel sockets.
pub fn kernel_accept_close(args: KernelAcceptCloseArgs) -> Res<()> {
    let l = TcpListener::bind(SocketAddr::new(args.bind, args.port))?;
    set_backlog(&l, args.backlog)?;
    let counters = Arc::new(AcceptCounters::default());
    let closers = closer_pool(args.closers, &counters, |mut s: TcpStream| {
        read_to_eof(&mut s)
    });
    {
        let counters = counters.clone();
        // Never joined: std's accept cannot be interrupted; the process ends after the report.
        std::thread::spawn(move || {
            let mut next = 0usize;
            loop {
                match l.accept() {
                    Ok((s, _)) => {
                        counters.accepted.fetch_add(1, Ordering::Relaxed);
                        let _ = closers[next % closers.len()].send(s);
                        next = next.wrapping_add(1);
                    }
                    Err(_) => {
                        counters.errors.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
        });
    }
    let start = Instant::now();
    println!("ready: kernel accept-close on port {}", args.port);
    super::wait_for_signal()?;
    accept_report("kernel-accept-close", "kernel", &counters, start, json!({}));
    Ok(())
}

#[derive(Default)]
struct ConnectCounters {
    connects: AtomicU64,
    refused: AtomicU64,
    timeouts: AtomicU64,
    other: AtomicU64,
}

/// `provider kernel-connect-loop`: K threads connect and close as fast as they can; the
/// client closes first (TIME_WAIT stays here).
pub fn kernel_connect_loop(args: KernelConnectLoopArgs) -> Res<()> {
    if args.parallel == 0 {
        return Err("--parallel must be at least 1".into());
    }
    let c = Arc::new(ConnectCounters::default());
    let timeout = Duration::from_millis(args.connect_timeout_ms.max(1));
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(args.seconds);
    println!(
        "ready: kernel-connect-loop to {} ×{}",
        args.connect, args.parallel
    );
    let threads: Vec<_> = (0..args.parallel)
        .map(|_| {
            let c = c.clone();
            let to = args.connect;
            std::thread::spawn(move || {
                while Instant::now() < end {
                    match TcpStream::connect_timeout(&to, timeout) {
                        Ok(s) => {
                            drop(s);
                            c.connects.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            let counter = match e.kind() {
                                io::ErrorKind::ConnectionRefused => &c.refused,
                                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => &c.timeouts,
                                _ => &c.other,
                            };
                            counter.fetch_add(1, Ordering::Relaxed);
                            if e.kind() != io::ErrorKind::TimedOut {
                                // Do not spin on an immediate error (e.g. no ports left).
                                std::thread::sleep(Duration::from_millis(1));
                            }
                        }
                    }
                }
            })
        })
        .collect();
    let mut progress = Progress::new("connects");
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
        progress.tick(c.connects.load(Ordering::Relaxed));
    }
    for t in threads {
        let _ = t.join();
    }
    let secs = start.elapsed().as_secs_f64();
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let connects = g(&c.connects);
    println!(
        "{}",
        json!({
            "tool": "kernel-connect-loop", "stack": "kernel", "connects": connects,
            "seconds": secs, "cps": connects as f64 / secs.max(1e-9), "parallel": args.parallel,
            "errors": {"refused": g(&c.refused), "timeouts": g(&c.timeouts), "other": g(&c.other)},
        })
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_maths() {
        assert_eq!(gbps(1_000_000_000, 8.0), 1.0);
        assert_eq!(gbps(5, 0.0), 0.0);
    }

    /// The kernel flavours against each other over loopback: sink, source and the
    /// accept/connect pair exchange what they should.
    #[test]
    fn kernel_loop_over_loopback() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            sink(&mut s, Instant::now()).unwrap()
        });
        let mut c = TcpStream::connect(addr).unwrap();
        source(&mut c, 3 * CHUNK as u64 + 17, Instant::now()).unwrap();
        let (bytes, _) = t.join().unwrap();
        assert_eq!(bytes, 3 * CHUNK as u64 + 17);
    }
}
