//! `provider bench-close`: the provider side of `cargo xtask bench close` (DESIGN §12, issue 4).
//!
//! Runs in the lab's provider namespace. The same measurements run twice, first on kernel TCP
//! sockets of this namespace (before the provider's datapath is attached), then on provider
//! sockets; in both cases the closing side is the server and the clients are kernel sockets on
//! threads that entered the peer namespace (`--peer-netns`):
//!
//! - (a) hard-close latency: the time from CLOCK_REALTIME read just before the close call
//!   (SO_LINGER {1, 0}) to the RST frame's receive timestamp on the peer's veth (AF_PACKET,
//!   SO_TIMESTAMPNS, CLOCK_REALTIME — one clock for both), p50/p99 over `--closes` closes of
//!   established connections, one at a time;
//! - (b) graceful close of a `--backlog-bytes` backlog: send, then close; the time until the
//!   close call returns and until the peer has read everything including EOF — from the close
//!   call, and from the start of the send (the kernel transmits much of it inside `write`, the
//!   provider's engine after it, so only the second compares like with like);
//! - (c) closes per second: `--conns` connections established first, then closed back to back,
//!   graceful and hard.
//!
//! The closer (and the provider's engine threads, which inherit its affinity) run on
//! `--cpu-closer`, the peer threads on `--cpu-peer`. One JSON line on stdout at the end;
//! progress on stderr.
use std::collections::HashMap;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{FromRawFd, IntoRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use provider::api::{AF_INET, IPPROTO_TCP, Provider, SOCK_STREAM};
use provider::socket::options::{SO_LINGER, SOL_SOCKET};
use provider::socket::{Linger, Socket};
use serde_json::{Value, json};

type BoxResult<T> = Result<T, Box<dyn std::error::Error>>;

#[derive(clap::Args)]
pub struct BenchCloseArgs {
    #[command(flatten)]
    datapath: super::DatapathArgs,
    /// The peer namespace (e.g. /run/netns/<lab>-peer): kernel clients and the capture run there.
    #[arg(long)]
    peer_netns: PathBuf,
    /// The peer's veth, where RST frames are timestamped.
    #[arg(long)]
    peer_iface: String,
    /// Address the servers listen on (the provider side of the lab).
    #[arg(long, default_value = "198.18.0.1")]
    local_ip: Ipv4Addr,
    /// Hard closes timed one by one for the RST latency.
    #[arg(long, default_value_t = 1000)]
    closes: usize,
    /// Connections established, then closed back to back (closes per second).
    #[arg(long, default_value_t = 10_000)]
    conns: usize,
    /// Graceful closes of a backlog timed.
    #[arg(long, default_value_t = 20)]
    backlog_reps: usize,
    /// Bytes sent right before each graceful close.
    #[arg(long, default_value_t = 1 << 20)]
    backlog_bytes: usize,
    #[arg(long, default_value_t = 0)]
    cpu_closer: usize,
    #[arg(long, default_value_t = 1)]
    cpu_peer: usize,
    /// First of the ports the servers use (a handful above it too).
    #[arg(long, default_value_t = 9100)]
    base_port: u16,
    /// Run only the kernel or only the provider side.
    #[arg(long, value_parser = ["both", "kernel", "provider"], default_value = "both")]
    only: String,
}

/// `provider bench-close-peer` (hidden; spawned by `bench-close`): kernel clients in their own
/// process, so that 10 000 client descriptors plus 10 000 server ones never meet one process's
/// RLIMIT_NOFILE (a process without CAP_SYS_RESOURCE cannot raise its hard limit).
#[derive(clap::Args)]
pub struct BenchClosePeerArgs {
    /// Network namespace to enter first.
    #[arg(long)]
    netns: PathBuf,
    #[arg(long)]
    connect: SocketAddr,
    #[arg(long)]
    count: usize,
    #[arg(long, default_value_t = 1)]
    cpu: usize,
}

/// Connect `count` times, print `connected`, wait for a line on stdin, close everything, exit.
pub fn bench_close_peer(a: BenchClosePeerArgs) -> BoxResult<()> {
    raise_fd_limit();
    let file = std::fs::File::open(&a.netns)?;
    // SAFETY: setns on a namespace descriptor we just opened (this process is single-threaded).
    if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    pin(a.cpu);
    let streams: Vec<TcpStream> = (0..a.count)
        .map(|_| TcpStream::connect(a.connect))
        .collect::<Result<_, _>>()?;
    println!("connected {}", streams.len());
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    drop(streams);
    Ok(())
}

/// A `bench-close-peer` child process holding `count` connections to `to`.
struct PeerProcess {
    child: std::process::Child,
}

impl PeerProcess {
    fn connect(ns: &Path, cpu: usize, to: SocketAddr, count: usize) -> BoxResult<Self> {
        use std::io::BufRead;
        let mut child = std::process::Command::new(std::env::current_exe()?)
            .arg("bench-close-peer")
            .arg("--netns")
            .arg(ns)
            .args(["--connect", &to.to_string(), "--count", &count.to_string()])
            .args(["--cpu", &cpu.to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let out = child.stdout.take().ok_or("no stdout")?;
        let mut line = String::new();
        std::io::BufReader::new(out).read_line(&mut line)?;
        if !line.starts_with("connected") {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("bench-close-peer: {line:?}").into());
        }
        Ok(PeerProcess { child })
    }

    /// Close every client connection and wait for the process to end.
    fn finish(mut self) -> BoxResult<()> {
        use std::io::Write;
        if let Some(mut i) = self.child.stdin.take() {
            i.write_all(b"close\n")?;
        }
        let st = self.child.wait()?;
        if !st.success() {
            return Err(format!("bench-close-peer {st}").into());
        }
        Ok(())
    }
}

// ------------------------------------------------------------------------------ helpers

fn realtime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Pin the calling thread to one CPU (best effort).
fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET indexes within it; pid 0 = this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Run `f` on a new thread that entered the network namespace `ns` and is pinned to `cpu`.
fn in_ns<T: Send + 'static>(
    ns: &Path,
    cpu: usize,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    let ns = ns.to_path_buf();
    thread::spawn(move || {
        let file = std::fs::File::open(&ns).expect("open peer netns");
        // SAFETY: setns on a namespace descriptor we just opened; affects this thread only.
        let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        pin(cpu);
        f()
    })
}

fn setsockopt_int(fd: RawFd, level: i32, name: i32, v: i32) {
    // SAFETY: setsockopt with a pointer to a live c_int and its size.
    unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&v as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        );
    }
}

/// Soft RLIMIT_NOFILE up to the hard limit (raising the hard one needs CAP_SYS_RESOURCE).
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct; failure leaves the old limit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 * p) as usize).min(sorted.len() - 1);
    sorted[i]
}

fn summary(mut v: Vec<u64>) -> Value {
    v.sort_unstable();
    let mean = if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<u64>() as f64 / v.len() as f64
    };
    json!({
        "n": v.len(),
        "p50_ns": percentile(&v, 0.50),
        "p90_ns": percentile(&v, 0.90),
        "p99_ns": percentile(&v, 0.99),
        "min_ns": v.first().copied().unwrap_or(0),
        "max_ns": v.last().copied().unwrap_or(0),
        "mean_ns": mean,
    })
}

/// Kernel clients: `n` connections to `to`, made one after the other from the peer namespace.
fn peer_connect(ns: &Path, cpu: usize, to: SocketAddr, n: usize) -> JoinHandle<Vec<TcpStream>> {
    in_ns(ns, cpu, move || {
        (0..n)
            .map(|_| TcpStream::connect(to).expect("peer connect"))
            .collect()
    })
}

// ------------------------------------------------------------------------------ capture

/// RST frames from `from` seen on the peer's veth: (server port, client port) → receive
/// timestamp (CLOCK_REALTIME ns) of the first one.
struct RstCapture {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<HashMap<(u16, u16), u64>>,
}

impl RstCapture {
    fn start(ns: &Path, cpu: usize, iface: &str, from: Ipv4Addr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let iface = iface.to_owned();
        let flag = stop.clone();
        let thread = in_ns(ns, cpu, move || {
            let fd = open_packet_socket(&iface);
            ready_tx.send(()).unwrap();
            let mut seen = HashMap::new();
            let mut buf = [0u8; 256];
            let mut ctl = [0u8; 256];
            loop {
                match recv_frame(fd, &mut buf, &mut ctl) {
                    Some((len, ts)) => {
                        if let Some(key) = rst_key(&buf[..len], from) {
                            seen.entry(key).or_insert(ts);
                        }
                    }
                    None if flag.load(Ordering::Relaxed) => break,
                    None => {}
                }
            }
            // SAFETY: closing the descriptor this thread opened.
            unsafe { libc::close(fd) };
            seen
        });
        ready_rx.recv().expect("capture thread ready");
        RstCapture { stop, thread }
    }

    fn finish(self) -> HashMap<(u16, u16), u64> {
        thread::sleep(Duration::from_millis(100));
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("capture thread")
    }
}

fn open_packet_socket(iface: &str) -> RawFd {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket calls; the sockaddr_ll is zeroed then filled.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto));
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        let name = std::ffi::CString::new(iface).unwrap();
        let ifindex = libc::if_nametoindex(name.as_ptr());
        assert!(ifindex > 0, "no interface {iface} in the peer namespace");
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex as i32;
        let rc = libc::bind(
            fd,
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        );
        assert_eq!(rc, 0, "bind AF_PACKET: {}", std::io::Error::last_os_error());
        setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1);
        setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 32 << 20);
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 50_000,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
        fd
    }
}

/// One received frame (not our own outgoing ones): (length, timestamp ns).
fn recv_frame(fd: RawFd, buf: &mut [u8], ctl: &mut [u8]) -> Option<(usize, u64)> {
    // SAFETY: recvmsg into buffers we own, with their sizes; cmsg walking per CMSG_* macros.
    unsafe {
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = (&mut sll as *mut libc::sockaddr_ll).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = ctl.as_mut_ptr().cast();
        msg.msg_controllen = ctl.len();
        let n = libc::recvmsg(fd, &mut msg, libc::MSG_TRUNC);
        if n < 0 {
            return None;
        }
        if sll.sll_pkttype == libc::PACKET_OUTGOING {
            return Some((0, 0));
        }
        let mut ts = 0;
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let t: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                ts = t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64;
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
        Some(((n as usize).min(buf.len()), ts))
    }
}

/// (source port, destination port) of an IPv4 TCP RST from `from`.
fn rst_key(f: &[u8], from: Ipv4Addr) -> Option<(u16, u16)> {
    if f.len() < 14 + 20 || f[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &f[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[9] != 6 || ip[12..16] != from.octets() || ip.len() < ihl + 14 {
        return None;
    }
    let tcp = &ip[ihl..];
    if tcp[13] & 0x04 == 0 {
        return None;
    }
    Some((
        u16::from_be_bytes([tcp[0], tcp[1]]),
        u16::from_be_bytes([tcp[2], tcp[3]]),
    ))
}

// ------------------------------------------------------------------------------ sides

/// The closing side: kernel sockets of this namespace, or provider sockets.
enum Side {
    Kernel,
    Provider(Arc<Provider>),
}

enum Listener {
    Kernel(TcpListener),
    Provider(Socket),
}

enum Conn {
    Kernel(RawFd),
    Provider(Socket),
}

impl Side {
    fn name(&self) -> &'static str {
        match self {
            Side::Kernel => "kernel",
            Side::Provider(_) => "provider",
        }
    }

    fn listen(&self, at: SocketAddr) -> BoxResult<Listener> {
        match self {
            Side::Kernel => {
                let SocketAddr::V4(a) = at else {
                    return Err("v4 only".into());
                };
                // SAFETY: plain socket calls on a descriptor handed to TcpListener at the end.
                unsafe {
                    let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error().into());
                    }
                    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1);
                    let sin = libc::sockaddr_in {
                        sin_family: libc::AF_INET as libc::sa_family_t,
                        sin_port: a.port().to_be(),
                        sin_addr: libc::in_addr {
                            s_addr: u32::from_ne_bytes(a.ip().octets()),
                        },
                        sin_zero: [0; 8],
                    };
                    let l = TcpListener::from_raw_fd(fd);
                    if libc::bind(
                        fd,
                        (&sin as *const libc::sockaddr_in).cast(),
                        std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                    ) != 0
                        || libc::listen(fd, 4096) != 0
                    {
                        return Err(std::io::Error::last_os_error().into());
                    }
                    Ok(Listener::Kernel(l))
                }
            }
            Side::Provider(p) => {
                let s = p.wsp_socket(AF_INET, SOCK_STREAM, IPPROTO_TCP)?;
                p.wsp_bind(s, at)?;
                p.wsp_listen(s, 4096)?;
                Ok(Listener::Provider(s))
            }
        }
    }

    fn accept(&self, l: &Listener) -> BoxResult<Conn> {
        Ok(match (self, l) {
            (Side::Kernel, Listener::Kernel(l)) => Conn::Kernel(l.accept()?.0.into_raw_fd()),
            (Side::Provider(p), Listener::Provider(s)) => Conn::Provider(p.wsp_accept(*s)?.0),
            _ => return Err("side mismatch".into()),
        })
    }

    fn close_listener(&self, l: Listener) {
        if let (Side::Provider(p), Listener::Provider(s)) = (self, l) {
            let _ = p.wsp_close_socket(s);
        }
    }

    fn set_linger_zero(&self, c: &Conn) {
        match (self, c) {
            (Side::Kernel, Conn::Kernel(fd)) => {
                let l = libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                };
                // SAFETY: setsockopt with a live linger struct and its size.
                unsafe {
                    libc::setsockopt(
                        *fd,
                        libc::SOL_SOCKET,
                        libc::SO_LINGER,
                        (&l as *const libc::linger).cast(),
                        std::mem::size_of::<libc::linger>() as libc::socklen_t,
                    );
                }
            }
            (Side::Provider(p), Conn::Provider(s)) => {
                let l = Linger {
                    l_onoff: 1,
                    l_linger: 0,
                };
                let _ = p.wsp_set_sock_opt(*s, SOL_SOCKET, SO_LINGER, &l.to_bytes());
            }
            _ => {}
        }
    }

    /// The timed call.
    #[inline]
    fn close(&self, c: Conn) {
        match (self, c) {
            // SAFETY: closing a descriptor we own (taken out of its TcpStream).
            (Side::Kernel, Conn::Kernel(fd)) => unsafe {
                libc::close(fd);
            },
            (Side::Provider(p), Conn::Provider(s)) => {
                let _ = p.wsp_close_socket(s);
            }
            _ => {}
        }
    }

    fn send_all(&self, c: &Conn, data: &[u8]) -> BoxResult<()> {
        match (self, c) {
            (Side::Kernel, Conn::Kernel(fd)) => {
                setsockopt_int(
                    *fd,
                    libc::SOL_SOCKET,
                    libc::SO_SNDBUF,
                    (data.len() * 2) as i32,
                );
                let mut off = 0;
                while off < data.len() {
                    // SAFETY: write from a live slice within its bounds.
                    let n =
                        unsafe { libc::write(*fd, data[off..].as_ptr().cast(), data.len() - off) };
                    if n < 0 {
                        return Err(std::io::Error::last_os_error().into());
                    }
                    off += n as usize;
                }
                Ok(())
            }
            (Side::Provider(p), Conn::Provider(s)) => {
                let mut off = 0;
                while off < data.len() {
                    off += p.wsp_send(*s, &data[off..])?;
                }
                Ok(())
            }
            _ => Err("side mismatch".into()),
        }
    }
}

// ------------------------------------------------------------------------------ phases

/// (a) close call → RST on the peer's wire, one established connection at a time.
fn rst_latency(a: &BenchCloseArgs, side: &Side, port: u16) -> BoxResult<Value> {
    let at = SocketAddr::new(a.local_ip.into(), port);
    let l = side.listen(at)?;
    let peer = peer_connect(&a.peer_netns, a.cpu_peer, at, a.closes);
    let mut conns = Vec::with_capacity(a.closes);
    for _ in 0..a.closes {
        conns.push(side.accept(&l)?);
    }
    let streams = peer.join().map_err(|_| "peer thread panicked")?;
    // Each RST is matched to its close by the peer's port.
    let remote_ports = accepted_remote_ports(side, &conns);
    for c in &conns {
        side.set_linger_zero(c);
    }
    let cap = RstCapture::start(&a.peer_netns, a.cpu_peer, &a.peer_iface, a.local_ip);
    thread::sleep(Duration::from_millis(50));
    let mut t0 = Vec::with_capacity(conns.len());
    for (i, c) in conns.into_iter().enumerate() {
        let t = realtime_ns();
        side.close(c);
        t0.push((remote_ports[i], t));
        // Let the RST's softirq work finish before the next close.
        thread::sleep(Duration::from_micros(200));
    }
    let seen = cap.finish();
    drop(streams);
    side.close_listener(l);
    let mut lat = Vec::new();
    let mut missing = 0;
    for (cport, t) in t0 {
        match seen.get(&(port, cport)) {
            Some(&ts) if ts >= t => lat.push(ts - t),
            Some(_) | None => missing += 1,
        }
    }
    let mut v = summary(lat);
    v["missing"] = json!(missing);
    eprintln!("  {} hard-close → RST: {v}", side.name());
    Ok(v)
}

/// The peer port of each accepted connection.
fn accepted_remote_ports(side: &Side, conns: &[Conn]) -> Vec<u16> {
    conns
        .iter()
        .map(|c| match (side, c) {
            (Side::Kernel, Conn::Kernel(fd)) => {
                // SAFETY: getpeername into a zeroed sockaddr_in of the right size.
                unsafe {
                    let mut sin: libc::sockaddr_in = std::mem::zeroed();
                    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
                    libc::getpeername(*fd, (&mut sin as *mut libc::sockaddr_in).cast(), &mut len);
                    u16::from_be(sin.sin_port)
                }
            }
            (Side::Provider(p), Conn::Provider(s)) => {
                p.wsp_get_peer_name(*s).map(|a| a.port()).unwrap_or(0)
            }
            _ => 0,
        })
        .collect()
}

/// (b) send `backlog_bytes`, close (graceful); until close returns, and until the peer has read
/// everything including EOF.
fn graceful_backlog(a: &BenchCloseArgs, side: &Side, port: u16) -> BoxResult<Value> {
    let at = SocketAddr::new(a.local_ip.into(), port);
    let l = side.listen(at)?;
    let data = vec![0x5au8; a.backlog_bytes];
    let (mut ret, mut done, mut whole) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..a.backlog_reps {
        let want = a.backlog_bytes;
        let peer = in_ns(&a.peer_netns, a.cpu_peer, move || {
            let mut s = TcpStream::connect(at).expect("peer connect");
            let mut buf = vec![0u8; 256 * 1024];
            let mut got = 0;
            loop {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) => panic!("peer read: {e}"),
                }
            }
            assert_eq!(got, want, "the peer got every byte");
            realtime_ns()
        });
        let c = side.accept(&l)?;
        let ts = realtime_ns();
        side.send_all(&c, &data)?;
        let t0 = realtime_ns();
        side.close(c);
        let t1 = realtime_ns();
        let t_eof = peer.join().map_err(|_| "peer thread panicked")?;
        ret.push(t1 - t0);
        done.push(t_eof.saturating_sub(t0));
        whole.push(t_eof.saturating_sub(ts));
    }
    side.close_listener(l);
    let v = json!({
        "close_returns": summary(ret),
        "peer_read_all_and_eof": summary(done),
        "send_and_close_to_peer_eof": summary(whole),
    });
    eprintln!(
        "  {} graceful close of {} B: {v}",
        side.name(),
        a.backlog_bytes
    );
    Ok(v)
}

/// (c) `conns` connections established, then closed back to back.
fn close_rate(a: &BenchCloseArgs, side: &Side, port: u16, hard: bool) -> BoxResult<Value> {
    let at = SocketAddr::new(a.local_ip.into(), port);
    let l = side.listen(at)?;
    let (ns, cpu, n) = (a.peer_netns.clone(), a.cpu_peer, a.conns);
    let peer =
        thread::spawn(move || PeerProcess::connect(&ns, cpu, at, n).map_err(|e| e.to_string()));
    let mut conns = Vec::with_capacity(a.conns);
    for _ in 0..a.conns {
        conns.push(side.accept(&l)?);
    }
    let peer = peer.join().map_err(|_| "peer thread panicked")??;
    if hard {
        for c in &conns {
            side.set_linger_zero(c);
        }
    }
    let n = conns.len();
    let t = Instant::now();
    for c in conns {
        side.close(c);
    }
    let secs = t.elapsed().as_secs_f64();
    // Let the FINs/RSTs land, then the peer closes its ends.
    thread::sleep(Duration::from_millis(500));
    peer.finish()?;
    thread::sleep(Duration::from_millis(500));
    side.close_listener(l);
    let v = json!({ "conns": n, "seconds": secs, "closes_per_sec": n as f64 / secs });
    eprintln!(
        "  {} {} closes: {v}",
        side.name(),
        if hard { "hard" } else { "graceful" }
    );
    Ok(v)
}

fn run_side(a: &BenchCloseArgs, side: &Side, base: u16) -> BoxResult<Value> {
    eprintln!("==> {}", side.name());
    let latency = rst_latency(a, side, base)?;
    let hard = close_rate(a, side, base + 1, true)?;
    let graceful = close_rate(a, side, base + 2, false)?;
    let backlog = graceful_backlog(a, side, base + 3)?;
    Ok(json!({
        "hard_close_rst_latency": latency,
        "graceful_backlog": backlog,
        "closes_per_sec": { "hard": hard, "graceful": graceful },
    }))
}

pub fn bench_close(args: BenchCloseArgs) -> BoxResult<()> {
    raise_fd_limit();
    pin(args.cpu_closer);
    let mut out = json!({
        "closes": args.closes,
        "conns": args.conns,
        "backlog_bytes": args.backlog_bytes,
        "backlog_reps": args.backlog_reps,
        "cpu_closer": args.cpu_closer,
        "cpu_peer": args.cpu_peer,
    });
    if args.only != "provider" {
        out["kernel"] = run_side(&args, &Side::Kernel, args.base_port)?;
    }
    if args.only != "kernel" {
        // Engine threads are spawned from this (pinned) thread and inherit its CPU.
        let engine = super::start(&args.datapath)?;
        thread::sleep(Duration::from_millis(200));
        let side = Side::Provider(engine.provider().clone());
        out["provider"] = run_side(&args, &side, args.base_port + 10)?;
        out["provider_stats"] = serde_json::to_value(engine.stats().sockets)?;
    }
    println!("{out}");
    Ok(())
}
