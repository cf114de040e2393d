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
//! One thread per UDP socket, one accept thread per TCP listener and one thread per TCP
//! connection. Accepted connections get TCP_NODELAY, as sockperf's own server sets it.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use clap::Args;
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
    let engine = Arc::new(super::start(&args.datapath)?);
    let p = engine.provider().clone();
    let mut families = Vec::new();
    if args.family != "v6" {
        families.push((AF_INET, IpAddr::V4(Ipv4Addr::UNSPECIFIED)));
    }
    if args.family != "v4" {
        families.push((AF_INET6, IpAddr::V6(Ipv6Addr::UNSPECIFIED)));
    }
    let counters = Arc::new(Counters::default());
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
    let protos = match (udp, tcp) {
        (true, true) => "udp, tcp",
        (true, false) => "udp",
        _ => "tcp",
    };
    println!(
        "ready: sockperf-server on port {} ({protos}; {})",
        args.port, args.family
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

fn udp_loop(p: &Provider, s: Socket, c: &Counters) {
    let mut buf = vec![0u8; 65536];
    loop {
        match p.wsp_recv_from(s, &mut buf) {
            Ok((n, from)) => {
                c.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                if n < HEADER || !(HEADER..=n).contains(&message_len(&buf[..n])) {
                    c.malformed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                c.count(&buf[..n]);
                if answer(&mut buf[..n]) {
                    match p.wsp_send_to(s, &buf[..n], from) {
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

/// Serve one TCP connection until EOF: frame messages by their length field, answer those
/// that ask for it (all replies of one receive go out in one send).
fn tcp_conn(p: &Provider, s: Socket, c: &Counters) -> Result<(), Box<dyn std::error::Error>> {
    let mut buf = vec![0u8; 256 * 1024];
    let (mut start, mut end) = (0usize, 0usize);
    let mut out = Vec::with_capacity(64 * 1024);
    loop {
        if end == buf.len() {
            // Make room: move the partial message to the front, or grow for a large one.
            if start > 0 {
                buf.copy_within(start..end, 0);
                end -= start;
                start = 0;
            } else {
                buf.resize(buf.len() * 2, 0);
            }
        }
        let n = p.wsp_recv(s, &mut buf[end..]).call("recv")?;
        if n == 0 {
            return Ok(());
        }
        c.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
        end += n;
        while end - start >= HEADER {
            let len = message_len(&buf[start..]);
            if !(HEADER..=MAX_MESSAGE).contains(&len) {
                c.malformed.fetch_add(1, Ordering::Relaxed);
                return Err(format!("message length {len} out of range; closing").into());
            }
            if end - start < len {
                if len > buf.len() {
                    buf.resize(len.next_power_of_two(), 0);
                }
                break;
            }
            let msg = &mut buf[start..start + len];
            c.count(msg);
            if answer(msg) {
                out.extend_from_slice(msg);
                c.replies.fetch_add(1, Ordering::Relaxed);
            }
            start += len;
        }
        if start == end {
            start = 0;
            end = 0;
        }
        if !out.is_empty() {
            wsp::send_all(p, s, &out).call("send")?;
            out.clear();
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
