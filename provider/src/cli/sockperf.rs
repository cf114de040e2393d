//! `provider sockperf-server`: the server side of the sockperf wire protocol, so the unmodified
//! `sockperf` client (`ping-pong`, `throughput`, `under-load`) measures the provider.
//!
//! Every sockperf message starts with a 14-byte header in network byte order:
//!
//! ```text
//! u64 sequence number | u16 flags (CLIENT 1, PONG_REQUEST 2, WARMUP 4) | u32 message length
//! ```
//!
//! `length` counts the whole message, header included (≥ 14); the rest is filler. Over UDP a
//! message is a datagram; over TCP messages follow each other in the byte stream, framed by the
//! length field. The server answers a client message (CLIENT set) that asks for a pong
//! (PONG_REQUEST set) with the same message, CLIENT cleared, back to its sender — every message
//! in ping-pong, none in throughput, one every `--reply-every` in under-load — and consumes
//! everything else. (Checked against the kernel `sockperf server` 3.7 with tcpdump: requests
//! carry flags 3 or 1, replies flags 2, same sequence number and length; a TCP client sends no
//! preamble.)
//!
//! With `--drive application` (the default): no queue threads — one thread runs a tokio runtime
//! with the datapath (`provider::aio::drive`) and every socket as a task. With `--drive
//! threads`: the engine's queue threads, one thread per UDP socket, one accept thread per TCP
//! listener and one thread per TCP connection, all on blocking WSP calls. Accepted connections get
//! TCP_NODELAY, as sockperf's own server sets it.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use clap::Args;
use provider::engine::{Drive, Engine};
use provider::{
    api::{AF_INET, AF_INET6, IPPROTO_UDP, Provider, SOCK_DGRAM, SOCK_STREAM},
    socket::{Socket, WsaError, options::IPPROTO_TCP},
};
use serde::Serialize;

use super::{
    DatapathArgs,
    wsp::{self, SockOpt, Tag},
};

/// Header length.
pub const HEADER: usize = 14;
pub const FLAG_CLIENT: u16 = 1;
pub const FLAG_PONG_REQUEST: u16 = 2;
pub const FLAG_WARMUP: u16 = 4;
/// Largest TCP message accepted; sockperf's own limit is 65507 (a UDP payload) plus slack.
const MAX_MESSAGE: usize = 1 << 20;

#[derive(Args)]
pub struct SockperfArgs {
    #[command(flatten)]
    datapath: DatapathArgs,
    /// Port to serve (sockperf's default is 11111).
    #[arg(long, short = 'p', default_value_t = 11111)]
    port: u16,
    /// Serve UDP (default: UDP and TCP).
    #[arg(long)]
    udp: bool,
    /// Serve TCP (default: UDP and TCP).
    #[arg(long)]
    tcp: bool,
    /// Address families to serve.
    #[arg(long, value_parser = ["v4", "v6", "both"], default_value = "both")]
    family: String,
    /// Who runs the datapath: one thread that runs it and every socket as tokio tasks
    /// (`application`: `Drive::Application` + `provider::aio`; run to completion, no thread
    /// hand-offs); or the engine's queue threads, with a blocking thread per socket (`threads`).
    #[arg(long, value_enum, default_value = "application")]
    drive: DriveArg,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DriveArg {
    Threads,
    Application,
}

/// Counters printed (JSON, stderr) when the server stops.
#[derive(Default)]
struct Counters {
    messages: AtomicU64,
    warmup: AtomicU64,
    replies: AtomicU64,
    bytes_in: AtomicU64,
    malformed: AtomicU64,
    connections: AtomicU64,
}

#[derive(Serialize)]
struct Summary {
    messages: u64,
    warmup: u64,
    replies: u64,
    bytes_in: u64,
    malformed: u64,
    tcp_connections: u64,
}

impl Counters {
    fn summary(&self) -> Summary {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Summary {
            messages: g(&self.messages),
            warmup: g(&self.warmup),
            replies: g(&self.replies),
            bytes_in: g(&self.bytes_in),
            malformed: g(&self.malformed),
            tcp_connections: g(&self.connections),
        }
    }
}

fn flags(msg: &[u8]) -> u16 {
    u16::from_be_bytes([msg[8], msg[9]])
}

impl Counters {
    fn count(&self, msg: &[u8]) {
        self.messages.fetch_add(1, Ordering::Relaxed);
        if flags(msg) & FLAG_WARMUP != 0 {
            self.warmup.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What to do with one message (`msg` is the whole message, header included; its length was
/// checked). Returns true if it is to be echoed, with its CLIENT flag cleared in place.
pub fn answer(msg: &mut [u8]) -> bool {
    let flags = flags(msg);
    if flags & FLAG_CLIENT == 0 || flags & FLAG_PONG_REQUEST == 0 {
        return false;
    }
    msg[8..10].copy_from_slice(&(flags & !FLAG_CLIENT).to_be_bytes());
    true
}

/// The length field of a header.
pub fn message_len(header: &[u8]) -> usize {
    u32::from_be_bytes([header[10], header[11], header[12], header[13]]) as usize
}

pub fn sockperf_server(args: SockperfArgs) -> Result<(), Box<dyn std::error::Error>> {
    let (udp, tcp) = match (args.udp, args.tcp) {
        (false, false) => (true, true),
        x => x,
    };
    let drive = match args.drive {
        DriveArg::Threads => Drive::Threads,
        DriveArg::Application => Drive::Application,
    };
    let engine = Arc::new(super::start_with(&args.datapath, drive)?);
    super::require_family(&engine, &args.family)?;
    let p = engine.provider().clone();
    let mut families = Vec::new();
    if args.family != "v6" {
        families.push((AF_INET, IpAddr::V4(Ipv4Addr::UNSPECIFIED)));
    }
    if args.family != "v4" {
        families.push((AF_INET6, IpAddr::V6(Ipv6Addr::UNSPECIFIED)));
    }
    let counters = Arc::new(Counters::default());
    if drive == Drive::Application {
        let any: Vec<IpAddr> = families.iter().map(|&(_, any)| any).collect();
        return application_driven(&engine, &args, &any, (udp, tcp), &counters);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut sockets = Vec::new();
    let mut threads = Vec::new();
    for &(af, any) in &families {
        let addr = SocketAddr::new(any, args.port);
        if udp {
            let s = p.wsp_socket(af, SOCK_DGRAM, IPPROTO_UDP).call("socket")?;
            sockets.push(s);
            p.wsp_bind(s, addr).call("bind")?;
            let (p, c) = (p.clone(), counters.clone());
            threads.push(std::thread::spawn(move || udp_loop(&p, s, &c)));
        }
        if tcp {
            let l = p.wsp_socket(af, SOCK_STREAM, IPPROTO_TCP).call("socket")?;
            sockets.push(l);
            p.wsp_bind(l, addr).call("bind")?;
            p.wsp_listen(l, 128).call("listen")?;
            let (p, c, stop) = (p.clone(), counters.clone(), stop.clone());
            threads.push(std::thread::spawn(move || accept_loop(&p, l, &c, &stop)));
        }
    }
    let stats_path = args.datapath.stats_path();
    let writer = super::spawn_stats_writer(&engine, stats_path.clone(), stop.clone());
    println!(
        "ready: sockperf-server on port {} ({}; {})",
        args.port,
        protocols(udp, tcp),
        args.family
    );
    super::wait_for_signal()?;
    stop.store(true, Ordering::Relaxed);
    let _ = writer.join();
    for s in sockets {
        let _ = p.wsp_close_socket(s);
    }
    for t in threads {
        let _ = t.join();
    }
    eprintln!("{}", serde_json::to_string(&counters.summary())?);
    let _ = std::fs::remove_file(&stats_path);
    Ok(())
}

/// `--drive application`: one current-thread runtime runs the datapath (`aio::drive`), an
/// accept task per TCP listener, a task per connection and a task per UDP socket.
fn application_driven(
    engine: &Arc<Engine>,
    args: &SockperfArgs,
    any: &[IpAddr],
    (udp, tcp): (bool, bool),
    counters: &Arc<Counters>,
) -> Result<(), Box<dyn std::error::Error>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let stop = Arc::new(AtomicBool::new(false));
    let stats_path = args.datapath.stats_path();
    let writer = super::spawn_stats_writer(engine, stats_path.clone(), stop.clone());
    let p = engine.provider().clone();
    let served = rt.block_on(async {
        tokio::spawn(provider::aio::drive(engine.driver()?));
        for &ip in any {
            let addr = SocketAddr::new(ip, args.port);
            if udp {
                let s = provider::aio::UdpSocket::bind(&p, addr)?;
                let c = counters.clone();
                tokio::spawn(async move { udp_task(s, &c).await });
            }
            if tcp {
                let l = provider::aio::TcpListener::bind_with_backlog(&p, addr, 128)?;
                let c = counters.clone();
                tokio::spawn(async move {
                    while let Ok((s, peer)) = l.accept().await {
                        c.connections.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(%peer, "sockperf tcp connection");
                        if let Err(err) = s.set_nodelay(true) {
                            tracing::warn!(%err, "TCP_NODELAY");
                        }
                        let c = c.clone();
                        tokio::spawn(async move {
                            if let Err(e) = tcp_conn_async(s, &c).await {
                                tracing::info!(%peer, "sockperf tcp connection ended: {e}");
                            }
                        });
                    }
                });
            }
        }
        println!(
            "ready: sockperf-server on port {} ({}; {}; application-driven)",
            args.port,
            protocols(udp, tcp),
            args.family
        );
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r?,
            _ = term.recv() => {}
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    });
    stop.store(true, Ordering::Relaxed);
    // Dropping the runtime drops every task: sockets close, the driver is released.
    drop(rt);
    let _ = writer.join();
    eprintln!("{}", serde_json::to_string(&counters.summary())?);
    let _ = std::fs::remove_file(&stats_path);
    served
}

fn protocols(udp: bool, tcp: bool) -> &'static str {
    match (udp, tcp) {
        (true, true) => "udp, tcp",
        (true, false) => "udp",
        _ => "tcp",
    }
}

/// One UDP socket over `provider::aio`: answer what asks for it.
async fn udp_task(s: provider::aio::UdpSocket, c: &Counters) {
    let mut buf = vec![0u8; 65536];
    loop {
        match s.recv_from(&mut buf).await {
            Ok((n, from)) => {
                if let Some(reply) = udp_message(&mut buf[..n], c) {
                    match s.send_to(reply, from).await {
                        Ok(_) => {
                            c.replies.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(err) => tracing::debug!(%err, %from, "sockperf udp reply failed"),
                    }
                }
            }
            Err(e) if provider::aio::wsa_error(&e) == Some(WsaError::WSAEMSGSIZE) => {
                c.malformed.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => return,
        }
    }
}

/// Count one datagram; the reply to send, if it asks for one.
fn udp_message<'a>(msg: &'a mut [u8], c: &Counters) -> Option<&'a [u8]> {
    let n = msg.len();
    c.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
    if n < HEADER || !(HEADER..=n).contains(&message_len(msg)) {
        c.malformed.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    c.count(msg);
    answer(msg).then_some(&*msg)
}

fn udp_loop(p: &Provider, s: Socket, c: &Counters) {
    let mut buf = vec![0u8; 65536];
    loop {
        match p.wsp_recv_from(s, &mut buf) {
            Ok((n, from)) => {
                if let Some(reply) = udp_message(&mut buf[..n], c) {
                    match p.wsp_send_to(s, reply, from) {
                        Ok(_) => {
                            c.replies.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(err) => tracing::debug!(%err, %from, "sockperf udp reply failed"),
                    }
                }
            }
            Err(WsaError::WSAEMSGSIZE) => {
                c.malformed.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => return,
        }
    }
}

fn accept_loop(p: &Arc<Provider>, l: Socket, c: &Arc<Counters>, stop: &AtomicBool) {
    loop {
        match p.wsp_accept(l) {
            Ok((s, peer)) => {
                c.connections.fetch_add(1, Ordering::Relaxed);
                tracing::info!(%peer, "sockperf tcp connection");
                if let Err(err) = SockOpt::NoDelay(true).apply(p, s) {
                    tracing::warn!(%err, "TCP_NODELAY");
                }
                let (p, c) = (p.clone(), c.clone());
                std::thread::spawn(move || {
                    if let Err(e) = tcp_conn(&p, s, &c) {
                        tracing::info!(%peer, "sockperf tcp connection ended: {e}");
                    }
                    let _ = p.wsp_close_socket(s);
                });
            }
            Err(err) => {
                if !stop.load(Ordering::Relaxed) {
                    tracing::warn!(%err, "sockperf accept failed; no longer accepting");
                }
                return;
            }
        }
    }
}

/// TCP message framing for one connection: received bytes go into [`space`](Self::space),
/// [`feed`](Self::feed) frames the complete messages by their length field and collects the
/// replies, which the caller sends in one go (all replies of one receive in one send).
struct Framer {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    out: Vec<u8>,
}

impl Framer {
    fn new() -> Self {
        Self {
            buf: vec![0u8; 256 * 1024],
            start: 0,
            end: 0,
            out: Vec::with_capacity(64 * 1024),
        }
    }

    /// Free room for the next receive (never empty).
    fn space(&mut self) -> &mut [u8] {
        if self.end == self.buf.len() {
            // Make room: move the partial message to the front, or grow for a large one.
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                self.buf.resize(self.buf.len() * 2, 0);
            }
        }
        &mut self.buf[self.end..]
    }

    /// `n` bytes arrived in [`space`](Self::space): count and answer every complete message.
    /// Returns the replies to send (empty if none), or an error for a malformed length.
    fn feed(&mut self, n: usize, c: &Counters) -> Result<&[u8], String> {
        c.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
        self.out.clear();
        self.end += n;
        while self.end - self.start >= HEADER {
            let len = message_len(&self.buf[self.start..]);
            if !(HEADER..=MAX_MESSAGE).contains(&len) {
                c.malformed.fetch_add(1, Ordering::Relaxed);
                return Err(format!("message length {len} out of range; closing"));
            }
            if self.end - self.start < len {
                if len > self.buf.len() {
                    self.buf.resize(len.next_power_of_two(), 0);
                }
                break;
            }
            let msg = &mut self.buf[self.start..self.start + len];
            c.count(msg);
            if answer(msg) {
                self.out.extend_from_slice(msg);
                c.replies.fetch_add(1, Ordering::Relaxed);
            }
            self.start += len;
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        Ok(&self.out)
    }
}

/// Serve one TCP connection until EOF with blocking WSP calls.
fn tcp_conn(p: &Provider, s: Socket, c: &Counters) -> Result<(), Box<dyn std::error::Error>> {
    let mut f = Framer::new();
    loop {
        let n = p.wsp_recv(s, f.space()).call("recv")?;
        if n == 0 {
            return Ok(());
        }
        let out = f.feed(n, c)?;
        if !out.is_empty() {
            wsp::send_all(p, s, out).call("send")?;
        }
    }
}

/// The same over `provider::aio` (application-driven mode).
async fn tcp_conn_async(
    mut io: provider::aio::TcpStream,
    c: &Counters,
) -> Result<(), Box<dyn std::error::Error>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut f = Framer::new();
    loop {
        let n = io.read(f.space()).await?;
        if n == 0 {
            return Ok(());
        }
        let out = f.feed(n, c)?;
        if !out.is_empty() {
            io.write_all(out).await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u64, flags: u16, len: u32) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&seq.to_be_bytes());
        m.extend_from_slice(&flags.to_be_bytes());
        m.extend_from_slice(&len.to_be_bytes());
        m.resize(len as usize, 0xab);
        m
    }

    #[test]
    fn ping_is_answered_with_client_flag_cleared() {
        let mut m = msg(7, FLAG_CLIENT | FLAG_PONG_REQUEST, 20);
        assert_eq!(message_len(&m), 20);
        assert!(answer(&mut m));
        assert_eq!(m, msg(7, FLAG_PONG_REQUEST, 20));
        let mut w = msg(1, FLAG_CLIENT | FLAG_PONG_REQUEST | FLAG_WARMUP, 14);
        assert!(answer(&mut w));
        assert_eq!(w, msg(1, FLAG_PONG_REQUEST | FLAG_WARMUP, 14));
    }

    #[test]
    fn throughput_and_server_messages_are_consumed() {
        assert!(!answer(&mut msg(1, FLAG_CLIENT, 14)));
        assert!(!answer(&mut msg(1, FLAG_PONG_REQUEST, 14)));
    }
}
