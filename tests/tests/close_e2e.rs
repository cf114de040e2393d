//! WSPCloseSocket on the wire (issue 4, DESIGN §7): every row of the close table and every rule
//! under it, end to end in the namespace lab against the Linux kernel's TCP in the peer
//! namespace. The provider runs in-process (engine threads in the provider namespace); the kernel
//! side uses std sockets created in the peer namespace. Frames are captured on the peer's veth
//! with tcpdump (started and confirmed listening before the action) and asserted: RST SEQ/ACK,
//! checksum, timestamps option, FIN after the last byte, silence where nothing may be sent.
//! Needs root; run by `cargo xtask test`.
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::FromRawFd;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use WsaError::*;
use etherparse::{NetSlice, SlicedPacket, TcpOptionElement, TransportSlice};
use provider::api::{AF_INET, IPPROTO_TCP, Provider, ProviderConfig, SD_SEND, SOCK_STREAM};
use provider::engine::Engine;
use provider::socket::options::{FIONBIO, FIONREAD, SO_LINGER, SO_RCVBUF, SOL_SOCKET};
use provider::socket::{INVALID_SOCKET, Linger, Socket, WsaError};
use provider_tests::{Capture, Frame, in_peer, realtime_ns};
use xtask::lab::{Lab, LabConfig, PEER_V4, PROVIDER_V4};

// ---------------------------------------------------------------------------------- setup

struct Setup {
    // Field order: the engine stops before the lab goes.
    engine: Option<Engine>,
    lab: Lab,
}

fn start() -> Setup {
    start_with(|_| {})
}

fn start_with(tweak: impl FnOnce(&mut ProviderConfig) + Send + 'static) -> Setup {
    let lab = Lab::up(&LabConfig::default()).expect("lab up");
    let engine = provider_tests::start_engine(&lab, move |cfg| {
        cfg.provider.tcp.time_wait = Duration::from_secs(1);
        tweak(&mut cfg.provider);
    });
    Setup {
        engine: Some(engine),
        lab,
    }
}

impl Setup {
    fn p(&self) -> Arc<Provider> {
        self.engine.as_ref().expect("engine").provider().clone()
    }
    fn engine(&self) -> &Engine {
        self.engine.as_ref().expect("engine")
    }
}

fn tcp(p: &Provider) -> Socket {
    p.wsp_socket(AF_INET, SOCK_STREAM, IPPROTO_TCP).unwrap()
}

fn set_linger(p: &Provider, s: Socket, onoff: u16, secs: u16) {
    let l = Linger {
        l_onoff: onoff,
        l_linger: secs,
    };
    p.wsp_set_sock_opt(s, SOL_SOCKET, SO_LINGER, &l.to_bytes())
        .unwrap();
}

fn set_nonblocking(p: &Provider, s: Socket, on: bool) {
    let mut v = u32::from(on);
    p.wsp_ioctl(s, FIONBIO, &mut v).unwrap();
}

/// A kernel TCP listener in the calling thread's namespace; `rcvbuf` is set before `listen`, so
/// accepted connections advertise a small window (and a small window scale).
fn kernel_listener(addr: SocketAddr, rcvbuf: Option<i32>) -> TcpListener {
    let SocketAddr::V4(a) = addr else {
        panic!("v4 only")
    };
    // SAFETY: plain socket calls on a descriptor we own; it is handed to TcpListener at the end.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let one: libc::c_int = 1;
        let sz = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            sz,
        );
        if let Some(r) = rcvbuf {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&r as *const i32).cast(),
                sz,
            );
        }
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: a.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(a.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        let rc = libc::bind(
            fd,
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        assert_eq!(rc, 0, "bind {addr}: {}", std::io::Error::last_os_error());
        assert_eq!(libc::listen(fd, 128), 0);
        TcpListener::from_raw_fd(fd)
    }
}

/// A provider socket connected to a kernel socket in the peer namespace (the kernel side
/// listens on `port`, with SO_RCVBUF `rcvbuf`). Returns (provider socket, kernel stream).
fn connect_pair(s: &Setup, port: u16, rcvbuf: Option<i32>) -> (Socket, TcpStream) {
    let p = s.p();
    let l = in_peer(&s.lab, move || {
        kernel_listener(SocketAddr::new(PEER_V4.into(), port), rcvbuf)
    });
    let c = tcp(&p);
    p.wsp_connect(c, SocketAddr::new(PEER_V4.into(), port))
        .expect("provider connect");
    let (k, _) = l.accept().expect("kernel accept");
    (c, k)
}

/// The byte at stream offset `i`.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// Bytes the tests queue on the provider side: far more than the small peer window takes.
const TOTAL: usize = 200_000;
/// SO_RCVBUF of a peer that never reads (the kernel doubles it).
const SMALL_RCVBUF: i32 = 4096;

/// Read from the kernel stream until EOF (Ok) or an error (Err).
fn kernel_drain(k: &mut TcpStream) -> (Vec<u8>, std::io::Result<()>) {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match k.read(&mut buf) {
            Ok(0) => return (out, Ok(())),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return (out, Err(e)),
        }
    }
}

fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

fn local_port(p: &Provider, s: Socket) -> u16 {
    p.wsp_get_sock_name(s).unwrap().port()
}

// ---------------------------------------------------------------------------------- frames

/// One captured IPv4 TCP segment.
#[derive(Clone, Debug)]
struct Seg {
    ts: u64,
    src: IpAddr,
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    syn: bool,
    fin: bool,
    rst: bool,
    ackf: bool,
    len: u32,
    timestamps: bool,
    checksum_ok: bool,
}

impl Seg {
    fn by_provider(&self) -> bool {
        self.src == IpAddr::V4(PROVIDER_V4)
    }
    /// The sequence space this segment ends at (SYN and FIN count one).
    fn end(&self) -> u32 {
        self.seq
            .wrapping_add(self.len)
            .wrapping_add(u32::from(self.syn) + u32::from(self.fin))
    }
}

fn decode(frames: &[Frame]) -> Vec<Seg> {
    let mut out = Vec::new();
    eprintln!("{} frames captured", frames.len());
    for f in frames {
        let Ok(pkt) = SlicedPacket::from_ethernet(&f.data) else {
            continue;
        };
        let (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Tcp(t))) = (&pkt.net, &pkt.transport)
        else {
            continue;
        };
        let h = ip.header();
        let expected = t.calc_checksum_ipv4(h.source(), h.destination()).ok();
        let timestamps = t
            .options_iterator()
            .any(|o| matches!(o, Ok(TcpOptionElement::Timestamp(..))));
        out.push(Seg {
            ts: f.ts_ns,
            src: IpAddr::V4(Ipv4Addr::from(h.source())),
            sport: t.source_port(),
            dport: t.destination_port(),
            seq: t.sequence_number(),
            ack: t.acknowledgment_number(),
            syn: t.syn(),
            fin: t.fin(),
            rst: t.rst(),
            ackf: t.ack(),
            len: t.payload().len() as u32,
            timestamps,
            checksum_ok: expected == Some(t.checksum()),
        });
    }
    out
}

/// The segments of the flow between provider port `pp` and peer port `kp`, in capture order.
fn flow(segs: &[Seg], pp: u16, kp: u16) -> Vec<Seg> {
    segs.iter()
        .filter(|s| {
            (s.by_provider() && s.sport == pp && s.dport == kp)
                || (!s.by_provider() && s.sport == kp && s.dport == pp)
        })
        .cloned()
        .collect()
}

fn seq_max(a: u32, b: u32) -> u32 {
    if (b.wrapping_sub(a) as i32) > 0 { b } else { a }
}

/// Highest sequence end seen from one side among `segs` (None if that side sent nothing).
fn max_end(segs: &[Seg], from_provider: bool) -> Option<u32> {
    segs.iter()
        .filter(|s| s.by_provider() == from_provider && !s.rst)
        .map(Seg::end)
        .reduce(seq_max)
}

fn provider_isn(segs: &[Seg]) -> u32 {
    segs.iter()
        .find(|s| s.by_provider() && s.syn)
        .expect("provider SYN captured")
        .seq
}

fn rsts(segs: &[Seg], from_provider: bool) -> Vec<Seg> {
    segs.iter()
        .filter(|s| s.rst && s.by_provider() == from_provider)
        .cloned()
        .collect()
}

fn fins(segs: &[Seg], from_provider: bool) -> Vec<Seg> {
    segs.iter()
        .filter(|s| s.fin && s.by_provider() == from_provider)
        .cloned()
        .collect()
}

/// Timestamps were negotiated on this flow (both SYNs carried the option).
fn ts_negotiated(segs: &[Seg]) -> bool {
    segs.iter().filter(|s| s.syn).count() >= 2
        && segs.iter().filter(|s| s.syn).all(|s| s.timestamps)
}

/// Exactly one RST from the provider, with SEQ = SND.NXT and ACK = RCV.NXT as the wire shows
/// them before it, the ACK flag, a correct checksum and the timestamps option if negotiated.
fn assert_one_proper_rst(segs: &[Seg]) -> Seg {
    let r = rsts(segs, true);
    assert_eq!(r.len(), 1, "exactly one RST from the provider: {r:#?}");
    let rst = r[0].clone();
    let before: Vec<Seg> = segs.iter().filter(|s| s.ts <= rst.ts).cloned().collect();
    assert_eq!(
        Some(rst.seq),
        max_end(&before, true),
        "RST SEQ = SND.NXT (highest sequence the provider put on the wire)"
    );
    assert!(rst.ackf, "RST carries ACK");
    assert_eq!(
        Some(rst.ack),
        max_end(&before, false),
        "RST ACK = RCV.NXT (everything the peer sent)"
    );
    assert!(rst.checksum_ok, "RST checksum");
    assert_eq!(rst.len, 0, "RST carries no data");
    assert_eq!(
        rst.timestamps,
        ts_negotiated(segs),
        "timestamps option on the RST iff negotiated"
    );
    rst
}

/// Every segment the provider put on the wire has a correct checksum.
fn assert_checksums(segs: &[Seg]) {
    for s in segs.iter().filter(|s| s.by_provider()) {
        assert!(s.checksum_ok, "bad checksum: {s:?}");
    }
}

/// Graceful: no RST from the provider; the FIN sits right after the last data byte
/// (ISN + 1 + `total`), and no data segment goes beyond it or comes after the first FIN.
fn assert_fin_after_last_byte(segs: &[Seg], total: usize) -> Seg {
    assert!(rsts(segs, true).is_empty(), "no RST from the provider");
    let isn = provider_isn(segs);
    let f = fins(segs, true);
    assert!(!f.is_empty(), "a FIN from the provider");
    let fin_seq = isn.wrapping_add(1).wrapping_add(total as u32);
    for s in &f {
        assert_eq!(
            s.seq.wrapping_add(s.len),
            fin_seq,
            "FIN right after the last data byte"
        );
    }
    let first_fin = f[0].clone();
    for s in segs.iter().filter(|s| s.by_provider() && s.len > 0) {
        let end = s.seq.wrapping_add(s.len);
        assert!(
            fin_seq.wrapping_sub(end) as i32 >= 0,
            "data beyond the FIN: {s:?}"
        );
    }
    if total > 0 {
        // The last byte went out no later than the first FIN (in it, or before it).
        assert!(
            segs.iter().any(|s| s.by_provider()
                && s.len > 0
                && s.seq.wrapping_add(s.len) == fin_seq
                && s.ts <= first_fin.ts),
            "the FIN came before the last data byte"
        );
    }
    assert_checksums(segs);
    first_fin
}

// ---------------------------------------------------------------------------------- rows

/// Row 1 — SO_DONTLINGER (default): close returns 0 at once with data queued; the peer gets
/// every byte then EOF; FIN after the last byte, no RST; the orphan is visible, then gone.
#[test]
#[ignore = "needs root and network namespaces"]
fn dontlinger_close_returns_at_once_then_every_byte_and_fin() {
    let s = start();
    let p = s.p();
    let base = p.stats();
    let cap = Capture::start(&s.lab, "tcp").unwrap();
    let (c, mut k) = connect_pair(&s, 7101, Some(SMALL_RCVBUF));
    let pp = local_port(&p, c);
    let data = pattern(TOTAL);
    assert_eq!(p.wsp_send(c, &data), Ok(TOTAL));
    thread::sleep(Duration::from_millis(100));
    assert!(p.stats().tcp_connections >= 1);
    let t = Instant::now();
    assert_eq!(p.wsp_close_socket(c), Ok(()));
    let took = t.elapsed();
    assert!(took < Duration::from_millis(50), "close took {took:?}");
    let st = p.stats();
    assert_eq!(st.tcp_orphans, 1, "the orphan is visible");
    assert_eq!(st.close_graceful, base.close_graceful + 1);
    assert_eq!(st.sockets_open, base.sockets_open);
    assert_eq!(p.wsp_close_socket(c), Err(WSAENOTSOCK));
    // The peer reads everything, then EOF; then closes its side.
    let (got, end) = kernel_drain(&mut k);
    assert!(end.is_ok(), "peer sees EOF, got {end:?}");
    assert_eq!(got.len(), TOTAL);
    assert!(got == data, "every byte, in order");
    drop(k);
    assert!(
        wait_until(Duration::from_secs(5), || p.stats().tcp_orphans == 0),
        "orphan gone after the FIN handshake"
    );
    let segs = decode(&cap.stop().unwrap());
    let f = flow(&segs, pp, 7101);
    assert_fin_after_last_byte(&f, TOTAL);
    assert!(rsts(&f, false).is_empty(), "the peer never reset");
}

/// Row 2 — SO_LINGER {1, 0}: exactly one RST (SEQ=SND.NXT, ACK=RCV.NXT, ACK flag, checksum,
/// timestamps), no FIN, unsent data discarded, ECONNRESET at the peer, no TIME_WAIT, STEER gone.
#[test]
#[ignore = "needs root and network namespaces"]
fn linger_zero_sends_one_rst_with_snd_nxt_and_rcv_nxt() {
    let s = start();
    let p = s.p();
    let base = p.stats();
    let cap = Capture::start(&s.lab, "tcp").unwrap();
    let (c, mut k) = connect_pair(&s, 7102, Some(SMALL_RCVBUF));
    let pp = local_port(&p, c);
    // The peer sends some bytes the provider reads (RCV.NXT moves; nothing unread).
    let hello = b"hello from the kernel ".repeat(40);
    k.write_all(&hello).unwrap();
    let mut got = vec![0u8; hello.len()];
    let mut n = 0;
    while n < got.len() {
        n += p.wsp_recv(c, &mut got[n..]).unwrap();
    }
    assert_eq!(got, hello);
    let data = pattern(TOTAL);
    assert_eq!(p.wsp_send(c, &data), Ok(TOTAL));
    thread::sleep(Duration::from_millis(300));
    set_linger(&p, c, 1, 0);
    let t = Instant::now();
    assert_eq!(p.wsp_close_socket(c), Ok(()));
    assert!(t.elapsed() < Duration::from_millis(50), "hard close blocks");
    let st = p.stats();
    assert_eq!(st.close_hard, base.close_hard + 1);
    assert_eq!(st.tcp_connections, 0, "no TIME_WAIT after a hard close");
    let (got, end) = kernel_drain(&mut k);
    let err = end.expect_err("the peer's recv fails");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    assert!(
        got.len() < TOTAL,
        "unsent data discarded ({} arrived)",
        got.len()
    );
    assert!(got[..] == data[..got.len()]);
    let segs = decode(&cap.stop().unwrap());
    let f = flow(&segs, pp, 7102);
    assert!(
        ts_negotiated(&f),
        "the kernel and the provider negotiate timestamps"
    );
    assert_one_proper_rst(&f);
    assert!(fins(&f, true).is_empty(), "no FIN on a hard close");
    assert_checksums(&f);
    // STEER entry removed: a SYN to that port now reaches the provider namespace's kernel,
    // which refuses it (no socket there).
    let passed = s.engine().stats().xdp.passed_not_ours;
    let r = in_peer(&s.lab, move || {
        TcpStream::connect_timeout(
            &SocketAddr::new(PROVIDER_V4.into(), pp),
            Duration::from_secs(2),
        )
    });
    assert_eq!(
        r.map(drop).map_err(|e| e.kind()),
        Err(ErrorKind::ConnectionRefused)
    );
    assert!(
        s.engine().stats().xdp.passed_not_ours > passed,
        "the SYN went to the kernel"
    );
}

/// Row 3a — SO_LINGER {1, n} blocking, the peer never reads (zero window): close returns within
/// n s + 100 ms; the RST is on the wire ≈ n s after the call; the peer drains, then ECONNRESET.
#[test]
#[ignore = "needs root and network namespaces"]
fn linger_n_blocking_peer_never_reads_rst_at_the_deadline() {
    let s = start();
    let p = s.p();
    let base = p.stats();
    let cap = Capture::start(&s.lab, "tcp").unwrap();
    let (c, mut k) = connect_pair(&s, 7103, Some(SMALL_RCVBUF));
    let pp = local_port(&p, c);
    let data = pattern(TOTAL);
    assert_eq!(p.wsp_send(c, &data), Ok(TOTAL));
    thread::sleep(Duration::from_millis(300));
    set_linger(&p, c, 1, 1);
    let t0 = realtime_ns();
    let i0 = Instant::now();
    assert_eq!(p.wsp_close_socket(c), Ok(()));
    let took = i0.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_millis(1100),
        "blocking linger close returned after {took:?}"
    );
    assert_eq!(
        p.stats().close_linger_timeout_reset,
        base.close_linger_timeout_reset + 1
    );
    assert_eq!(p.wsp_close_socket(c), Err(WSAENOTSOCK));
    let (got, end) = kernel_drain(&mut k);
    let err = end.expect_err("the peer's recv fails after draining");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    assert!(got[..] == data[..got.len()]);
    let segs = decode(&cap.stop().unwrap());
    let f = flow(&segs, pp, 7103);
    let rst = assert_one_proper_rst(&f);
    let after = Duration::from_nanos(rst.ts.saturating_sub(t0));
    assert!(
        after >= Duration::from_millis(990) && after < Duration::from_millis(1100),
        "RST {after:?} after the close call"
    );
    assert!(
        fins(&f, true).is_empty(),
        "the FIN never got past the zero window"
    );
}

/// Row 3b — SO_LINGER {1, n} blocking, the peer reads everything: returns well before n;
/// every byte, then FIN; graceful.
#[test]
#[ignore = "needs root and network namespaces"]
fn linger_n_blocking_peer_reads_everything_returns_early_graceful() {
    let s = start();
    let p = s.p();
    let base = p.stats();
    let cap = Capture::start(&s.lab, "tcp").unwrap();
    let (c, mut k) = connect_pair(&s, 7104, Some(SMALL_RCVBUF));
    let pp = local_port(&p, c);
    let data = pattern(TOTAL);
    assert_eq!(p.wsp_send(c, &data), Ok(TOTAL));
    let reader = thread::spawn(move || {
        thread::sleep(Duration::from_millis(100));
        kernel_drain(&mut k)
    });
    set_linger(&p, c, 1, 10);
    let t = Instant::now();
    assert_eq!(p.wsp_close_socket(c), Ok(()));
    let took = t.elapsed();
    assert!(took < Duration::from_secs(2), "took {took:?}");
    let (got, end) = reader.join().unwrap();
    assert!(end.is_ok(), "EOF, got {end:?}");
    assert!(got == data, "every byte ({} of {TOTAL})", got.len());
    let st = p.stats();
    assert_eq!(st.close_graceful, base.close_graceful + 1);
    assert_eq!(
        st.close_linger_timeout_reset,
        base.close_linger_timeout_reset
    );
    let segs = decode(&cap.stop().unwrap());
    assert_fin_after_last_byte(&flow(&segs, pp, 7104), TOTAL);
}

/// Nonblocking linger setup: a connection with ~TOTAL bytes unacknowledged behind a zero
/// window, linger {1, 5}, FIONBIO. The engine's RTO floor is 2 s here, so zero-window probes
/// are ≥ 2 s apart and cannot be mistaken for a disconnect.
fn nonblocking_linger_setup(port: u16) -> (Setup, Socket, TcpStream, Capture, Vec<u8>) {
    let s = start_with(|c| {
        c.tcp.min_rto = Duration::from_secs(2);
        c.tcp.initial_rto = c.tcp.initial_rto.max(c.tcp.min_rto);
        c.tcp.max_rto = c.tcp.max_rto.max(c.tcp.min_rto);
    });
    let p = s.p();
    let cap = Capture::start(&s.lab, "tcp").unwrap();
    let (c, k) = connect_pair(&s, port, Some(SMALL_RCVBUF));
    let data = pattern(TOTAL);
    assert_eq!(p.wsp_send(c, &data), Ok(TOTAL));
    thread::sleep(Duration::from_millis(300));
    set_linger(&p, c, 1, 5);
    set_nonblocking(&p, c, true);
    (s, c, k, cap, data)
}

/// Row 4 — SO_LINGER {1, n} nonblocking with unacknowledged data: WSAEWOULDBLOCK, the handle
/// stays valid, no frame at all from the provider for ~300 ms; once the peer has read
/// everything a retry returns 0 (graceful: every byte, then FIN).
#[test]
#[ignore = "needs root and network namespaces"]
fn linger_n_nonblocking_would_block_sends_nothing_then_retry_succeeds() {
    let (s, c, mut k, cap, data) = nonblocking_linger_setup(7105);
    let p = s.p();
    let base = p.stats();
    let pp = local_port(&p, c);
    let t0 = realtime_ns();
    assert_eq!(p.wsp_close_socket(c), Err(WSAEWOULDBLOCK));
    assert_eq!(
        p.wsp_close_socket(c),
        Err(WSAEWOULDBLOCK),
        "retry while unacked"
    );
    assert!(p.wsp_get_peer_name(c).is_ok(), "handle still valid");
    thread::sleep(Duration::from_millis(300));
    let t1 = realtime_ns();
    assert_eq!(p.stats().sockets_open, base.sockets_open);
    // The peer reads everything; the window opens, the rest goes out and is acknowledged.
    let mut got = vec![0u8; TOTAL];
    k.read_exact(&mut got).unwrap();
    assert!(got == data);
    let mut closed_at = 0;
    assert!(
        wait_until(Duration::from_secs(5), || {
            closed_at = realtime_ns();
            match p.wsp_close_socket(c) {
                Ok(()) => true,
                Err(WSAEWOULDBLOCK) => false,
                Err(e) => panic!("retry gave {e:?}"),
            }
        }),
        "retry succeeds once everything is acknowledged"
    );
    let (rest, end) = kernel_drain(&mut k);
    assert!(end.is_ok() && rest.is_empty(), "then EOF: {rest:?} {end:?}");
    assert_eq!(p.stats().close_graceful, base.close_graceful + 1);
    let segs = decode(&cap.stop().unwrap());
    let f = flow(&segs, pp, 7105);
    let quiet: Vec<&Seg> = f
        .iter()
        .filter(|x| x.by_provider() && x.ts >= t0 && x.ts <= t1)
        .collect();
    assert!(quiet.is_empty(), "frames after WSAEWOULDBLOCK: {quiet:#?}");
    let early: Vec<&Seg> = f
        .iter()
        .filter(|x| x.by_provider() && (x.fin || x.rst) && x.ts < closed_at)
        .collect();
    assert!(
        early.is_empty(),
        "disconnect before the successful close: {early:#?}"
    );
    assert_fin_after_last_byte(&f, TOTAL);
}

/// Row 4, variant: after WSAEWOULDBLOCK, setting linger {1, 0} makes the next close a hard one.
#[test]
#[ignore = "needs root and network namespaces"]
fn linger_n_nonblocking_then_linger_zero_closes_hard() {
    let (s, c, mut k, cap, _data) = nonblocking_linger_setup(7106);
    let p = s.p();
    let base = p.stats();
    let pp = local_port(&p, c);
    assert_eq!(p.wsp_close_socket(c), Err(WSAEWOULDBLOCK));
    set_linger(&p, c, 1, 0);
    assert_eq!(p.wsp_close_socket(c), Ok(()));
    assert_eq!(p.stats().close_hard, base.close_hard + 1);
    let (_, end) = kernel_drain(&mut k);
    assert_eq!(end.unwrap_err().kind(), ErrorKind::ConnectionReset);
    let segs = decode(&cap.stop().unwrap());
    let f = flow(&segs, pp, 7106);
    assert_one_proper_rst(&f);
    assert!(fins(&f, true).is_empty());
}

/// Row 4, variant: after WSAEWOULDBLOCK, WSPShutdown(SD_SEND) makes the next close succeed;
/// the peer gets every byte, then EOF.
#[test]
#[ignore = "needs root and network namespaces"]
fn linger_n_nonblocking_then_shutdown_send_close_succeeds() {
    let (s, c, mut k, cap, data) = nonblocking_linger_setup(7107);
    let p = s.p();
    let base = p.stats();
    let pp = local_port(&p, c);
    assert_eq!(p.wsp_close_socket(c), Err(WSAEWOULDBLOCK));
    assert_eq!(p.wsp_shutdown(c, SD_SEND), Ok(()));
    assert_eq!(p.wsp_close_socket(c), Ok(()));
    assert_eq!(p.wsp_close_socket(c), Err(WSAENOTSOCK));
    assert_eq!(p.stats().close_graceful, base.close_graceful + 1);
    let (got, end) = kernel_drain(&mut k);
    assert!(end.is_ok(), "{end:?}");
    assert!(got == data);
    let segs = decode(&cap.stop().unwrap());
    assert_fin_after_last_byte(&flow(&segs, pp, 7107), TOTAL);
}

/// Orphan deadline (row 1's "or the orphan deadline expires → RST"): a graceful close whose
/// peer never reads is reset at the deadline and counted.
#[test]
#[ignore = "needs root and network namespaces"]
fn orphan_deadline_resets_and_counts() {
    let s = start_with(|c| c.tcp.orphan_timeout = Duration::from_secs(1));
    let p = s.p();
    let base = p.stats();
    let cap = Capture::start(&s.lab, "tcp").unwrap();
    let (c, mut k) = connect_pair(&s, 7108, Some(SMALL_RCVBUF));
    let pp = local_port(&p, c);
    assert_eq!(p.wsp_send(c, &pattern(TOTAL)), Ok(TOTAL));
    thread::sleep(Duration::from_millis(300));
    let t0 = realtime_ns();
    assert_eq!(p.wsp_close_socket(c), Ok(()));
    assert_eq!(p.stats().tcp_orphans, 1);
    assert!(wait_until(Duration::from_secs(3), || p.stats().tcp_orphans == 0));
    let st = p.stats();
    assert_eq!(
        st.close_orphan_timeout_reset,
        base.close_orphan_timeout_reset + 1
    );
    assert_eq!(st.close_graceful, base.close_graceful + 1);
    let (_, end) = kernel_drain(&mut k);
    assert_eq!(end.unwrap_err().kind(), ErrorKind::ConnectionReset);
    let segs = decode(&cap.stop().unwrap());
    let f = flow(&segs, pp, 7108);
    let rst = assert_one_proper_rst(&f);
    let after = Duration::from_nanos(rst.ts.saturating_sub(t0));
    assert!(
        after >= Duration::from_millis(990) && after < Duration::from_millis(1200),
        "orphan RST {after:?} after close"
    );
}

// ---------------------------------------------------------------------------------- rules

/// Rule — unread received data at close → RST instead of FIN (RFC 2525 §2.17).
#[test]
#[ignore = "needs root and network namespaces"]
fn unread_data_at_close_resets_instead_of_fin() {
    let s = start();
    let p = s.p();
    let base = p.stats();
    let cap = Capture::start(&s.lab, "tcp").unwrap();
    let (c, mut k) = connect_pair(&s, 7110, None);
    let pp = local_port(&p, c);
    k.write_all(&[7u8; 600]).unwrap();
    let mut n = 0u32;
    assert!(wait_until(Duration::from_secs(2), || {
        p.wsp_ioctl(c, FIONREAD, &mut n).unwrap();
        n == 600
    }));
    assert_eq!(p.wsp_close_socket(c), Ok(()));
    assert_eq!(
        p.stats().close_unread_data_reset,
        base.close_unread_data_reset + 1
    );
    assert_eq!(p.stats().close_graceful, base.close_graceful);
    let (_, end) = kernel_drain(&mut k);
    assert_eq!(end.unwrap_err().kind(), ErrorKind::ConnectionReset);
    let segs = decode(&cap.stop().unwrap());
    let f = flow(&segs, pp, 7110);
    let rst = assert_one_proper_rst(&f);
    assert_eq!(
        rst.seq,
        provider_isn(&f).wrapping_add(1),
        "nothing was sent"
    );
    assert!(fins(&f, true).is_empty(), "RST instead of FIN");
}

/// Rule — data arriving after close → RST: the provider closed gracefully with nothing unread
/// (FIN sent); the peer keeps sending; the provider answers with RST.
#[test]
#[ignore = "needs root and network namespaces"]
fn data_arriving_after_close_is_answered_with_rst() {
    let s = start();
    let p = s.p();
    let cap = Capture::start(&s.lab, "tcp").unwrap();
    let (c, mut k) = connect_pair(&s, 7111, None);
    let pp = local_port(&p, c);
    assert_eq!(p.wsp_send(c, b"bye"), Ok(3));
    assert_eq!(p.wsp_close_socket(c), Ok(()));
    let (got, end) = kernel_drain(&mut k);
    assert!(end.is_ok());
    assert_eq!(got, b"bye");
    // Half-closed from the provider's side: the kernel may still send.
    let t_write = realtime_ns();
    k.write_all(b"more data after your FIN").unwrap();
    thread::sleep(Duration::from_millis(200));
    // Linux reports a reset received in CLOSE_WAIT as EPIPE on the next write (reads keep
    // giving EOF after the FIN).
    let r = k.write(b"x");
    assert_eq!(r.map_err(|e| e.kind()), Err(ErrorKind::BrokenPipe));
    assert!(wait_until(Duration::from_secs(2), || p
        .stats()
        .tcp_connections
        == 0));
    let segs = decode(&cap.stop().unwrap());
    let f = flow(&segs, pp, 7111);
    let fin = fins(&f, true);
    assert_eq!(fin.len(), 1, "one FIN first");
    let data_in = f
        .iter()
        .find(|x| !x.by_provider() && x.len > 0 && x.ts >= t_write)
        .expect("the peer's late data on the wire")
        .clone();
    let r = rsts(&f, true);
    assert_eq!(r.len(), 1, "{r:#?}");
    assert!(r[0].ts >= data_in.ts, "the RST answers the late data");
    assert!(fin[0].ts < data_in.ts);
    assert_eq!(
        r[0].seq,
        fin[0].seq.wrapping_add(fin[0].len + 1),
        "SEQ = SND.NXT after FIN"
    );
    assert_eq!(
        r[0].ack, data_in.seq,
        "ACK = RCV.NXT (the late data not taken)"
    );
    assert!(r[0].checksum_ok);
}

/// Rule — closing a listener resets every connection still in its accept queue.
#[test]
#[ignore = "needs root and network namespaces"]
fn closing_a_listener_resets_unaccepted_connections() {
    let s = start();
    let p = s.p();
    let cap = Capture::start(&s.lab, "tcp").unwrap();
    let l = tcp(&p);
    p.wsp_bind(l, SocketAddr::new(PROVIDER_V4.into(), 7112))
        .unwrap();
    p.wsp_listen(l, 8).unwrap();
    let mut clients = in_peer(&s.lab, || {
        (0..3)
            .map(|_| TcpStream::connect((PROVIDER_V4, 7112)).expect("kernel connect"))
            .collect::<Vec<_>>()
    });
    let ports: Vec<u16> = clients
        .iter()
        .map(|k| k.local_addr().unwrap().port())
        .collect();
    assert!(wait_until(Duration::from_secs(2), || p
        .stats()
        .tcp_connections
        == 3));
    // The count includes SYN_RECEIVED: let the engine take the last client's final ACK (else it
    // arrives after the close and is answered by a second — correct — RST for a closed port).
    thread::sleep(Duration::from_millis(100));
    assert_eq!(p.wsp_close_socket(l), Ok(()));
    for k in &mut clients {
        let mut b = [0u8; 8];
        let r = k.read(&mut b);
        assert_eq!(r.map_err(|e| e.kind()), Err(ErrorKind::ConnectionReset));
    }
    assert!(wait_until(Duration::from_secs(2), || p
        .stats()
        .tcp_connections
        == 0));
    let segs = decode(&cap.stop().unwrap());
    for kp in ports {
        let f = flow(&segs, 7112, kp);
        let r = rsts(&f, true);
        assert_eq!(r.len(), 1, "one RST for client port {kp}: {f:#?}");
        assert_eq!(Some(r[0].seq), max_end(&f, true));
        assert_eq!(Some(r[0].ack), max_end(&f, false));
        assert!(r[0].checksum_ok && r[0].ackf);
    }
}

/// Rule — close in SYN_SENT sends nothing; a late SYN-ACK then gets a RST. The peer's first
/// SYN-ACK is dropped on its way out (nftables egress on the peer's veth); the provider closes
/// while in SYN_SENT; the rule goes; the kernel's retransmitted SYN-ACK is answered with RST.
#[test]
#[ignore = "needs root and network namespaces"]
fn close_in_syn_sent_sends_nothing_and_a_late_syn_ack_gets_rst() {
    let s = start();
    let p = s.p();
    let _l = in_peer(&s.lab, || {
        kernel_listener(SocketAddr::new(PEER_V4.into(), 7113), None)
    });
    let kif = s.lab.peer_if.clone();
    let rules = format!(
        "table netdev close_e2e {{\n chain out {{ type filter hook egress device \"{kif}\" priority 0; tcp flags & (syn|ack) == syn|ack drop; }}\n}}\n"
    );
    let file = std::env::temp_dir().join(format!("{}-synack.nft", s.lab.name));
    std::fs::write(&file, rules).unwrap();
    s.lab
        .exec_ok(&s.lab.peer_ns, &["nft", "-f", &file.to_string_lossy()])
        .unwrap();
    let _ = std::fs::remove_file(&file);
    let cap = Capture::start(&s.lab, "tcp").unwrap();
    let c = tcp(&p);
    set_nonblocking(&p, c, true);
    assert_eq!(
        p.wsp_connect(c, SocketAddr::new(PEER_V4.into(), 7113)),
        Err(WSAEWOULDBLOCK)
    );
    let pp = local_port(&p, c);
    thread::sleep(Duration::from_millis(200));
    let t_close = realtime_ns();
    assert_eq!(p.wsp_close_socket(c), Ok(()));
    assert_eq!(p.stats().tcp_connections, 0);
    thread::sleep(Duration::from_millis(100));
    s.lab
        .exec_ok(
            &s.lab.peer_ns,
            &["nft", "delete", "table", "netdev", "close_e2e"],
        )
        .unwrap();
    // The kernel retransmits its SYN-ACK 1 s after the first.
    thread::sleep(Duration::from_millis(2500));
    let segs = decode(&cap.stop().unwrap());
    let f = flow(&segs, pp, 7113);
    let syns: Vec<&Seg> = f.iter().filter(|x| x.by_provider() && x.syn).collect();
    assert_eq!(syns.len(), 1, "one SYN, no retransmission after close");
    assert!(syns[0].ts < t_close);
    let synack = f
        .iter()
        .find(|x| !x.by_provider() && x.syn && x.ackf)
        .expect("the late SYN-ACK on the wire")
        .clone();
    assert!(synack.ts > t_close);
    let silent: Vec<&Seg> = f
        .iter()
        .filter(|x| x.by_provider() && x.ts >= t_close && x.ts < synack.ts)
        .collect();
    assert!(
        silent.is_empty(),
        "nothing sent on close in SYN_SENT: {silent:#?}"
    );
    let r: Vec<&Seg> = f
        .iter()
        .filter(|x| x.by_provider() && x.rst && x.ts >= synack.ts)
        .collect();
    assert_eq!(r.len(), 1, "the late SYN-ACK gets one RST: {r:#?}");
    assert_eq!(r[0].seq, synack.ack, "RST SEQ = the SYN-ACK's ACK");
    assert!(r[0].checksum_ok);
}

/// Rule — blocking calls pending in other threads return WSAEINTR (recv, accept, send);
/// afterwards every call on the handle gives WSAENOTSOCK, close included.
#[test]
#[ignore = "needs root and network namespaces"]
fn pending_blocking_calls_get_wsaeintr_then_every_call_wsaenotsock() {
    let s = start();
    let p = s.p();
    let (c, mut k) = connect_pair(&s, 7114, None);
    let l = tcp(&p);
    p.wsp_bind(l, SocketAddr::new(PROVIDER_V4.into(), 7115))
        .unwrap();
    p.wsp_listen(l, 8).unwrap();
    let (p1, p2) = (p.clone(), p.clone());
    let recv = thread::spawn(move || {
        let mut b = [0u8; 16];
        p1.wsp_recv(c, &mut b)
    });
    let accept = thread::spawn(move || p2.wsp_accept(l).map(|_| ()));
    thread::sleep(Duration::from_millis(200));
    assert!(
        !recv.is_finished() && !accept.is_finished(),
        "both calls block"
    );
    assert_eq!(p.wsp_close_socket(c), Ok(()));
    assert_eq!(p.wsp_close_socket(l), Ok(()));
    assert_eq!(recv.join().unwrap(), Err(WSAEINTR));
    assert_eq!(accept.join().unwrap(), Err(WSAEINTR));
    // A blocking send sleeping on a full send buffer (nothing copied yet) too.
    let (c2, _k2) = connect_pair(&s, 7121, Some(SMALL_RCVBUF));
    set_nonblocking(&p, c2, true);
    let chunk = vec![1u8; 64 * 1024];
    let mut full = 0;
    while full < 5 {
        match p.wsp_send(c2, &chunk) {
            Ok(_) => full = 0,
            Err(WSAEWOULDBLOCK) => {
                full += 1;
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    set_nonblocking(&p, c2, false);
    let p3 = p.clone();
    let send = thread::spawn(move || p3.wsp_send(c2, &chunk));
    thread::sleep(Duration::from_millis(200));
    assert!(!send.is_finished(), "the send blocks on the full buffer");
    assert_eq!(p.wsp_close_socket(c2), Ok(()));
    assert_eq!(send.join().unwrap(), Err(WSAEINTR));
    let (_, end) = kernel_drain(&mut k);
    assert!(end.is_ok(), "the connection closed gracefully: {end:?}");
    for h in [c, l] {
        let mut b = [0u8; 8];
        let mut arg = 0u32;
        let mut opt = [0u8; 8];
        let to = SocketAddr::new(PEER_V4.into(), 9);
        let calls: Vec<(&str, Result<(), WsaError>)> = vec![
            ("send", p.wsp_send(h, b"x").map(drop)),
            ("send_to", p.wsp_send_to(h, b"x", to).map(drop)),
            ("recv", p.wsp_recv(h, &mut b).map(drop)),
            ("recv_from", p.wsp_recv_from(h, &mut b).map(drop)),
            ("recv_msg", p.wsp_recv_msg(h, &mut b).map(drop)),
            ("connect", p.wsp_connect(h, to)),
            (
                "bind",
                p.wsp_bind(h, SocketAddr::new(PROVIDER_V4.into(), 0)),
            ),
            ("listen", p.wsp_listen(h, 1)),
            ("accept", p.wsp_accept(h).map(drop)),
            ("shutdown", p.wsp_shutdown(h, SD_SEND)),
            ("ioctl FIONBIO", p.wsp_ioctl(h, FIONBIO, &mut arg)),
            ("ioctl FIONREAD", p.wsp_ioctl(h, FIONREAD, &mut arg)),
            (
                "setsockopt",
                p.wsp_set_sock_opt(h, SOL_SOCKET, SO_RCVBUF, &4096i32.to_ne_bytes()),
            ),
            (
                "getsockopt",
                p.wsp_get_sock_opt(h, SOL_SOCKET, SO_RCVBUF, &mut opt)
                    .map(drop),
            ),
            ("getsockname", p.wsp_get_sock_name(h).map(drop)),
            ("getpeername", p.wsp_get_peer_name(h).map(drop)),
            ("duplicate", p.duplicate(h).map(drop)),
            ("close", p.wsp_close_socket(h)),
        ];
        for (name, r) in calls {
            assert_eq!(r, Err(WSAENOTSOCK), "{name} on a closed handle");
        }
    }
}

/// Rule — WSAEINPROGRESS: close (and send) on a handle whose blocking linger close is in
/// progress in another thread.
#[test]
#[ignore = "needs root and network namespaces"]
fn calls_racing_a_lingering_close_get_wsaeinprogress() {
    let s = start();
    let p = s.p();
    let base = p.stats();
    let (c, mut k) = connect_pair(&s, 7116, Some(SMALL_RCVBUF));
    let data = pattern(TOTAL);
    assert_eq!(p.wsp_send(c, &data), Ok(TOTAL));
    thread::sleep(Duration::from_millis(300));
    set_linger(&p, c, 1, 5);
    let p2 = p.clone();
    let closer = thread::spawn(move || p2.wsp_close_socket(c));
    thread::sleep(Duration::from_millis(200));
    assert!(!closer.is_finished(), "the linger close blocks");
    assert_eq!(p.wsp_close_socket(c), Err(WSAEINPROGRESS));
    assert_eq!(p.wsp_send(c, b"x"), Err(WSAEINPROGRESS));
    let mut b = [0u8; 4];
    assert_eq!(p.wsp_recv(c, &mut b), Err(WSAEINPROGRESS));
    // The peer reads everything: the lingering close completes gracefully.
    let (got, end) = kernel_drain(&mut k);
    assert!(end.is_ok());
    assert!(got == data);
    assert_eq!(closer.join().unwrap(), Ok(()));
    assert_eq!(p.wsp_close_socket(c), Err(WSAENOTSOCK));
    assert_eq!(p.stats().close_graceful, base.close_graceful + 1);
}

/// Rule — duplicated handles share one socket: closing one keeps the connection (data still
/// flows, nothing on the wire), the last close sends the FIN.
#[test]
#[ignore = "needs root and network namespaces"]
fn only_the_last_duplicate_handle_disconnects() {
    let s = start();
    let p = s.p();
    let base = p.stats();
    let cap = Capture::start(&s.lab, "tcp").unwrap();
    let (c, mut k) = connect_pair(&s, 7117, None);
    let pp = local_port(&p, c);
    let d = p.duplicate(c).unwrap();
    assert_eq!(p.wsp_close_socket(c), Ok(()));
    assert_eq!(p.wsp_close_socket(c), Err(WSAENOTSOCK));
    assert_eq!(
        p.stats().sockets_open,
        base.sockets_open + 1,
        "the socket lives on"
    );
    assert_eq!(p.wsp_send(d, b"still here"), Ok(10));
    let mut got = [0u8; 10];
    k.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"still here");
    k.write_all(b"and back").unwrap();
    let mut back = [0u8; 8];
    let mut n = 0;
    while n < 8 {
        n += p.wsp_recv(d, &mut back[n..]).unwrap();
    }
    assert_eq!(&back, b"and back");
    thread::sleep(Duration::from_millis(50));
    let t_last = realtime_ns();
    assert_eq!(p.wsp_close_socket(d), Ok(()));
    let (rest, end) = kernel_drain(&mut k);
    assert!(end.is_ok() && rest.is_empty(), "EOF after the last close");
    assert_eq!(p.stats().sockets_open, base.sockets_open);
    assert_eq!(
        p.stats().close_graceful,
        base.close_graceful + 1,
        "one close path"
    );
    let segs = decode(&cap.stop().unwrap());
    let f = flow(&segs, pp, 7117);
    let fin = assert_fin_after_last_byte(&f, 10);
    assert!(fin.ts > t_last, "the FIN only after the last handle");
}

/// Rule — WSAENETDOWN: the datapath is stopped (engine dropped) while a socket is open; close
/// reports WSAENETDOWN and the handle is released anyway.
#[test]
#[ignore = "needs root and network namespaces"]
fn close_with_the_datapath_down_gives_wsaenetdown_and_releases() {
    let mut s = start();
    let p = s.p();
    let base = p.stats();
    let (c, _k) = connect_pair(&s, 7118, None);
    assert_eq!(p.stats().sockets_open, base.sockets_open + 1);
    drop(s.engine.take());
    assert!(!p.datapath().is_up());
    assert_eq!(p.wsp_close_socket(c), Err(WSAENETDOWN));
    assert_eq!(p.wsp_close_socket(c), Err(WSAENOTSOCK), "handle released");
    let st = p.stats();
    assert_eq!(st.sockets_open, base.sockets_open);
    assert_eq!(st.handles_open, base.handles_open);
}

/// Misuse — close twice, garbage handles, 16 threads closing one handle at once (exactly one
/// Ok, the rest WSAENOTSOCK); no panic, no leak: socket table and UMEM TX frames back to their
/// baseline.
#[test]
#[ignore = "needs root and network namespaces"]
fn misuse_close_twice_garbage_and_sixteen_threads_no_leak() {
    let s = start();
    let p = s.p();
    let tx_base = |e: &Engine| {
        e.stats()
            .queues
            .iter()
            .map(|q| (q.free_tx_frames, q.pending_tx))
            .collect::<Vec<_>>()
    };
    let frames0 = tx_base(s.engine());
    let base = p.stats();
    for h in [
        Socket::from_raw(0),
        INVALID_SOCKET,
        Socket::from_raw(0xdead_beef_0000_0042),
        Socket::from_raw(7),
    ] {
        assert_eq!(p.wsp_close_socket(h), Err(WSAENOTSOCK), "{h:?}");
    }
    let c = tcp(&p);
    assert_eq!(p.wsp_close_socket(c), Ok(()));
    assert_eq!(p.wsp_close_socket(c), Err(WSAENOTSOCK), "close twice");
    let l = in_peer(&s.lab, || {
        kernel_listener(SocketAddr::new(PEER_V4.into(), 7119), None)
    });
    let drain = thread::spawn(move || {
        // Accept and drain every connection until the listener is idle for a while.
        l.set_nonblocking(true).unwrap();
        let mut idle = Instant::now();
        let mut served = 0;
        while idle.elapsed() < Duration::from_secs(3) {
            match l.accept() {
                Ok((mut k, _)) => {
                    k.set_nonblocking(false).unwrap();
                    served += 1;
                    idle = Instant::now();
                    thread::spawn(move || kernel_drain(&mut k));
                }
                Err(_) => thread::sleep(Duration::from_millis(5)),
            }
        }
        served
    });
    const ROUNDS: usize = 20;
    for round in 0..ROUNDS {
        let c = tcp(&p);
        p.wsp_connect(c, SocketAddr::new(PEER_V4.into(), 7119))
            .unwrap();
        assert_eq!(p.wsp_send(c, &pattern(10_000)), Ok(10_000));
        if round % 2 == 1 {
            set_linger(&p, c, 1, 0);
        }
        let barrier = Arc::new(Barrier::new(16));
        let results: Vec<_> = (0..16)
            .map(|_| {
                let (p, b) = (p.clone(), barrier.clone());
                thread::spawn(move || {
                    b.wait();
                    p.wsp_close_socket(c)
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().expect("no panic"))
            .collect();
        assert_eq!(
            results.iter().filter(|r| r.is_ok()).count(),
            1,
            "{results:?}"
        );
        assert!(
            results
                .iter()
                .all(|r| matches!(r, Ok(()) | Err(WSAENOTSOCK))),
            "{results:?}"
        );
    }
    assert_eq!(drain.join().unwrap(), ROUNDS);
    let st = p.stats();
    assert_eq!(
        st.sockets_open, base.sockets_open,
        "socket table back to baseline"
    );
    assert_eq!(st.handles_open, base.handles_open);
    assert_eq!(
        st.close_graceful + st.close_hard,
        (ROUNDS / 2 + ROUNDS / 2) as u64
    );
    assert!(
        wait_until(Duration::from_secs(5), || p.stats().tcp_connections == 0),
        "every connection finished (TIME_WAIT 1 s here)"
    );
    assert!(
        wait_until(Duration::from_secs(2), || tx_base(s.engine()) == frames0),
        "UMEM TX frames back to baseline: {:?} vs {frames0:?}",
        tx_base(s.engine())
    );
}
