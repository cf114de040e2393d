//! `provider cat`: netcat over the provider.
//!
//! ```text
//! provider cat --iface IF (--listen PORT | --connect IP:PORT) [--udp] [--v6] [--nodelay]
//!              [--sndbuf N] [--rcvbuf N] [--linger off|0|N] [--nonblocking]
//!              [--shutdown none|send|receive|both] [--close-after MS] [--once] [--drain-ms MS]
//! ```
//!
//! stdin goes to the socket and the socket to stdout, on two threads (a blocking stdin reader
//! feeding the sender, and a receiver writing stdout). Status goes to **stderr**, stdout carries
//! only data: `ready: cat listening on tcp 0.0.0.0:5000` once a listener is bound (or
//! `ready: cat connected …` after a connect), then `cat: accepted …` per connection.
//!
//! TCP session: at stdin EOF the socket is shut down (`--shutdown`, default `send`: FIN after the
//! queued data; `none` skips it), then `cat` waits for the peer's EOF — or, with
//! `--close-after MS`, at most MS ms — and closes the socket. The peer's EOF ends the session
//! at once too (stdin still open or not). The close follows `--linger` (`off`: SO_DONTLINGER,
//! graceful in the background; `0`: hard close, RST; `N`: linger N s); with `--nonblocking` a
//! lingering close that gives WSAEWOULDBLOCK is retried every 10 ms for up to N s (DESIGN §7).
//! `--listen` accepts connections one after another until killed (a connection's error is
//! reported on stderr and the next one accepted); `--once` serves one and exits with its status.
//! Since the datapath lives in this process, `cat` waits before exiting (`--drain-ms`, default
//! 1000) for gracefully closed connections to finish sending.
//!
//! UDP session: datagrams received go to stdout (from any sender); stdin goes out in datagrams
//! (each stdin read, split at the largest payload the datapath carries) to the `--connect`
//! address, or with `--listen` to the latest sender (stdin read before any datagram arrived is
//! held until one does). The session ends `--close-after` ms (default 0) after stdin EOF.
//!
//! Options: `--sndbuf`/`--rcvbuf` set the provider-wide default and are also set on each socket
//! with WSPSetSockOpt; `--nodelay` sets TCP_NODELAY; `--nonblocking` switches the sockets with
//! FIONBIO and every call is then retried on WSAEWOULDBLOCK (exercises the nonblocking paths).
//!
//! Exit status 0 after a clean end; otherwise 1 and `provider: <call>: <WSA code> (<text>)` on
//! stderr (e.g. `provider: recv: WSAECONNRESET (connection reset by peer)`).
use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError},
    },
    time::{Duration, Instant},
};

use clap::Args;
use provider::{
    api::{
        AF_INET, AF_INET6, IPPROTO_UDP, Provider, SD_BOTH, SD_RECEIVE, SD_SEND, SOCK_DGRAM,
        SOCK_STREAM,
    },
    socket::{Socket, WsaError, WspResult, options::FIONBIO, options::IPPROTO_TCP},
};

use super::{
    DatapathArgs,
    wsp::{self, CallError, SockOpt, Tag},
};

#[derive(Args)]
pub struct CatArgs {
    #[command(flatten)]
    datapath: DatapathArgs,
    /// Listen on this port (wildcard address).
    #[arg(long, value_name = "PORT", required_unless_present = "connect")]
    listen: Option<u16>,
    /// Connect to this address.
    #[arg(long, value_name = "IP:PORT", conflicts_with = "listen")]
    connect: Option<SocketAddr>,
    /// UDP instead of TCP.
    #[arg(long)]
    udp: bool,
    /// With --listen: IPv6 wildcard instead of IPv4 (--connect follows its address).
    #[arg(long)]
    v6: bool,
    /// Set TCP_NODELAY.
    #[arg(long)]
    nodelay: bool,
    /// SO_LINGER for the close: off (SO_DONTLINGER), 0 (hard close) or N seconds.
    #[arg(long, value_parser = parse_linger)]
    linger: Option<LingerArg>,
    /// Nonblocking sockets (FIONBIO); calls are retried on WSAEWOULDBLOCK.
    #[arg(long)]
    nonblocking: bool,
    /// What to do to a TCP socket at stdin EOF.
    #[arg(long, value_enum, default_value = "send")]
    shutdown: ShutdownArg,
    /// After stdin EOF, close at the latest after this many ms (TCP default: wait for the
    /// peer's EOF; UDP default: 0).
    #[arg(long, value_name = "MS")]
    close_after: Option<u64>,
    /// With --listen (TCP): serve one connection, then exit.
    #[arg(long)]
    once: bool,
    /// Before exiting, wait up to this many ms for gracefully closed TCP connections to finish
    /// sending (TIME_WAIT counts as unfinished).
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    drain_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LingerArg {
    Off,
    Secs(u16),
}

fn parse_linger(s: &str) -> Result<LingerArg, String> {
    match s {
        "off" => Ok(LingerArg::Off),
        n => n
            .parse()
            .map(LingerArg::Secs)
            .map_err(|_| format!("{s:?}: expected off, 0 or seconds")),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum ShutdownArg {
    None,
    Send,
    Receive,
    Both,
}

type BoxError = Box<dyn std::error::Error>;

pub fn cat(args: CatArgs) -> Result<(), BoxError> {
    if args.udp && (args.nodelay || args.linger.is_some()) {
        return Err("--nodelay and --linger apply to TCP only".into());
    }
    let engine = super::start(&args.datapath)?;
    super::require_family(&engine, if af_is_v6(&args) { "v6" } else { "v4" })?;
    let p = engine.provider().clone();
    let stdin = spawn_stdin_reader();
    let result = if args.udp {
        udp(&p, &args, &stdin)
    } else {
        tcp(&p, &args, &stdin)
    };
    let left = wsp::drain(&p, Duration::from_millis(args.drain_ms));
    if left > 0 {
        eprintln!("cat: exiting with {left} connection(s) still closing (TIME_WAIT included)");
    }
    result.map_err(Into::into)
}

/// Reads stdin on its own thread; the channel closes at EOF (or a read error).
fn spawn_stdin_reader() -> Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::sync_channel(4);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    if tx.send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    eprintln!("cat: stdin: {e}");
                    return;
                }
            }
        }
    });
    rx
}

impl CatArgs {
    fn af(&self, addr: Option<SocketAddr>) -> i32 {
        match addr {
            Some(a) if a.is_ipv6() => AF_INET6,
            Some(_) => AF_INET,
            None if self.v6 => AF_INET6,
            None => AF_INET,
        }
    }

    fn wildcard(&self, port: u16) -> SocketAddr {
        if self.v6 {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port)
        } else {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)
        }
    }

    /// The per-socket options the flags ask for, in the order they are set.
    fn options(&self) -> Vec<SockOpt> {
        let s = &self.datapath.settings;
        let mut v = Vec::new();
        if let Some(n) = s.sndbuf {
            v.push(SockOpt::SndBuf(i32::try_from(n).unwrap_or(i32::MAX)));
        }
        if let Some(n) = s.rcvbuf {
            v.push(SockOpt::RcvBuf(i32::try_from(n).unwrap_or(i32::MAX)));
        }
        if self.nodelay {
            v.push(SockOpt::NoDelay(true));
        }
        match self.linger {
            Some(LingerArg::Off) => v.push(SockOpt::DontLinger(true)),
            Some(LingerArg::Secs(n)) => v.push(SockOpt::Linger(1, n)),
            None => {}
        }
        v
    }

    fn setup(&self, p: &Provider, s: Socket) -> Result<(), CallError> {
        for o in self.options() {
            o.apply(p, s).call("setsockopt")?;
        }
        if self.nonblocking {
            let mut on = 1;
            p.wsp_ioctl(s, FIONBIO, &mut on).call("ioctl(FIONBIO)")?;
        }
        Ok(())
    }

    fn linger_secs(&self) -> u64 {
        match self.linger {
            Some(LingerArg::Secs(n)) => u64::from(n),
            _ => 0,
        }
    }
}

fn tcp(p: &Arc<Provider>, args: &CatArgs, stdin: &Receiver<Vec<u8>>) -> Result<(), CallError> {
    let af = args.af(args.connect);
    if let Some(to) = args.connect {
        let s = p.wsp_socket(af, SOCK_STREAM, IPPROTO_TCP).call("socket")?;
        args.setup(p, s)?;
        if let Err(e) = wsp::connect_wait(p, s, to).call("connect") {
            let _ = p.wsp_close_socket(s);
            return Err(e);
        }
        let local = p.wsp_get_sock_name(s).ok();
        eprintln!("ready: cat connected to tcp {to} from {}", show(local));
        let r = tcp_session(p, args, s, stdin);
        let c = close(p, s, args);
        return r.and(c);
    }
    let port = args.listen.expect("clap requires --listen or --connect");
    let l = p.wsp_socket(af, SOCK_STREAM, IPPROTO_TCP).call("socket")?;
    let served = (|| {
        args.setup(p, l)?;
        p.wsp_bind(l, args.wildcard(port)).call("bind")?;
        p.wsp_listen(l, 16).call("listen")?;
        eprintln!(
            "ready: cat listening on tcp {}",
            show(p.wsp_get_sock_name(l).ok())
        );
        loop {
            let (c, peer) = wsp::retry(|| p.wsp_accept(l)).call("accept")?;
            eprintln!("cat: accepted {peer}");
            let r = args
                .setup(p, c)
                .and_then(|()| tcp_session(p, args, c, stdin));
            let r = r.and(close(p, c, args));
            if args.once {
                return r;
            }
            // Serving on: a connection's failure is reported, not fatal.
            if let Err(e) = r {
                eprintln!("cat: connection from {peer}: {e}");
            }
        }
    })();
    let _ = p.wsp_close_socket(l);
    served
}

/// One TCP connection: stdin → `s` here, `s` → stdout on a receiver thread.
fn tcp_session(
    p: &Arc<Provider>,
    args: &CatArgs,
    s: Socket,
    stdin: &Receiver<Vec<u8>>,
) -> Result<(), CallError> {
    let done = Arc::new(AtomicBool::new(false));
    let closing = Arc::new(AtomicBool::new(false));
    let receiver = {
        let (p, done, closing) = (p.clone(), done.clone(), closing.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            let r = loop {
                match p.wsp_recv(s, &mut buf) {
                    Ok(0) => break Ok(()),
                    Ok(n) => {
                        if write_stdout(&buf[..n]).is_err() {
                            break Ok(());
                        }
                    }
                    Err(WsaError::WSAEWOULDBLOCK) => std::thread::sleep(wsp::RETRY_PAUSE),
                    // Our own close interrupted the call.
                    Err(_) if closing.load(Ordering::Acquire) => break Ok(()),
                    Err(err) => break Err(CallError { call: "recv", err }),
                }
            };
            done.store(true, Ordering::Release);
            r
        })
    };
    let tick = Duration::from_millis(20);
    let mut sent = Ok(());
    loop {
        if done.load(Ordering::Acquire) {
            break;
        }
        match stdin.recv_timeout(tick) {
            Ok(chunk) => {
                if let Err(e) = wsp::send_all(p, s, &chunk).call("send") {
                    sent = Err(e);
                    break;
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                let how = match args.shutdown {
                    ShutdownArg::None => None,
                    ShutdownArg::Send => Some(SD_SEND),
                    ShutdownArg::Receive => Some(SD_RECEIVE),
                    ShutdownArg::Both => Some(SD_BOTH),
                };
                if let Some(how) = how
                    && let Err(e) = p.wsp_shutdown(s, how).call("shutdown")
                {
                    sent = Err(e);
                    break;
                }
                let deadline = args
                    .close_after
                    .map(|ms| Instant::now() + Duration::from_millis(ms));
                while !done.load(Ordering::Acquire) && deadline.is_none_or(|d| Instant::now() < d) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                break;
            }
        }
    }
    // The receiver may still be blocked in recv (stdin-side end, or a send error); the close
    // that follows interrupts it, so it is only joined when it has finished by itself.
    closing.store(true, Ordering::Release);
    let received = if done.load(Ordering::Acquire) {
        receiver.join().unwrap_or(Ok(()))
    } else {
        Ok(())
    };
    sent.and(received)
}

/// WSPCloseSocket; with `--nonblocking` and a linger interval, WSAEWOULDBLOCK is retried every
/// 10 ms for up to that interval (plus a second), then reported.
fn close(p: &Provider, s: Socket, args: &CatArgs) -> Result<(), CallError> {
    let deadline = Instant::now() + Duration::from_secs(args.linger_secs() + 1);
    let mut told = false;
    loop {
        match p.wsp_close_socket(s) {
            Err(WsaError::WSAEWOULDBLOCK) if Instant::now() < deadline => {
                if !told {
                    eprintln!("cat: close: WSAEWOULDBLOCK (lingering), retrying");
                    told = true;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            r => return r.call("close"),
        }
    }
}

fn udp(p: &Arc<Provider>, args: &CatArgs, stdin: &Receiver<Vec<u8>>) -> Result<(), CallError> {
    let af = args.af(args.connect);
    let s = p.wsp_socket(af, SOCK_DGRAM, IPPROTO_UDP).call("socket")?;
    let r = udp_session(p, args, s, stdin);
    let c = p.wsp_close_socket(s).call("close");
    r.and(c)
}

fn udp_session(
    p: &Arc<Provider>,
    args: &CatArgs,
    s: Socket,
    stdin: &Receiver<Vec<u8>>,
) -> Result<(), CallError> {
    args.setup(p, s)?;
    p.wsp_bind(s, args.wildcard(args.listen.unwrap_or(0)))
        .call("bind")?;
    let local = p.wsp_get_sock_name(s).ok();
    match args.connect {
        Some(to) => eprintln!("ready: cat udp to {to} from {}", show(local)),
        None => eprintln!("ready: cat listening on udp {}", show(local)),
    }
    let peer = Arc::new(Mutex::new(args.connect));
    let stop = Arc::new(AtomicBool::new(false));
    let receiver = {
        let (p, peer, stop) = (p.clone(), peer.clone(), stop.clone());
        let learn = args.connect.is_none();
        std::thread::spawn(move || -> Result<(), CallError> {
            let mut buf = vec![0u8; 65536];
            loop {
                match p.wsp_recv_from(s, &mut buf) {
                    Ok((n, from)) => {
                        if learn {
                            *peer.lock().unwrap_or_else(|e| e.into_inner()) = Some(from);
                        }
                        let _ = write_stdout(&buf[..n]);
                    }
                    Err(WsaError::WSAEWOULDBLOCK | WsaError::WSAEMSGSIZE) => {
                        std::thread::sleep(wsp::RETRY_PAUSE)
                    }
                    Err(_) if stop.load(Ordering::Acquire) => return Ok(()),
                    Err(err) => {
                        return Err(CallError {
                            call: "recvfrom",
                            err,
                        });
                    }
                }
            }
        })
    };
    let max = p.datapath().max_udp_payload(af_is_v6(args)).max(1);
    let mut result = Ok(());
    'stdin: for chunk in stdin.iter() {
        let to = loop {
            if let Some(to) = *peer.lock().unwrap_or_else(|e| e.into_inner()) {
                break to;
            }
            if receiver.is_finished() {
                break 'stdin;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        for part in chunk.chunks(max) {
            if let Err(e) = send_to(p, s, part, to).call("sendto") {
                result = Err(e);
                break 'stdin;
            }
        }
    }
    if result.is_ok() {
        let deadline = Instant::now() + Duration::from_millis(args.close_after.unwrap_or(0));
        while Instant::now() < deadline && !receiver.is_finished() {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    stop.store(true, Ordering::Release);
    if receiver.is_finished() {
        result = result.and(receiver.join().unwrap_or(Ok(())));
    }
    result
}

fn af_is_v6(args: &CatArgs) -> bool {
    args.af(args.connect) == AF_INET6
}

fn send_to(p: &Provider, s: Socket, buf: &[u8], to: SocketAddr) -> WspResult<usize> {
    wsp::retry(|| p.wsp_send_to(s, buf, to))
}

fn write_stdout(data: &[u8]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(data)?;
    out.flush()
}

fn show(a: Option<SocketAddr>) -> String {
    a.map_or_else(|| "?".into(), |a| a.to_string())
}
