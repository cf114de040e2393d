//! The TCP engine against an adversarial peer.
//!
//! A listener accepts one connection through a normal handshake (options chosen by the first
//! input byte); the rest of the input is a script of operations: segments from the peer (built
//! from fields relative to both sides' sequence numbers so they land near the windows, or raw
//! bytes with the connection's ports patched in), time passing and timers running, transmit
//! polls with buffers of every size, and the application's send/recv/shutdown/close/abort.
//!
//! Checked: no panic (the engine's own debug assertions included when built with `-a`), every
//! transmit fits its buffer and parses as a TCP segment of a known 4-tuple, `recv` and `send`
//! never report more than they were given room for, buffers stay within their bounds.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use provider::net::tcp::TcpFlags;
use provider::tcp::options::TcpOptions;
use provider::tcp::segment::{SegmentChecksum, SegmentIn, SegmentOut, write_segment};
use provider::tcp::seq::SeqNum;
use provider::tcp::{CcAlgorithm, ConnId, TcpConfig, TcpEngine, TcpError};

const LOCAL: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 80);
const REMOTE: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)), 40000);
const PEER_ISS: u32 = 0xfff0_0000;
const BUFFER_SIZES: [usize; 9] = [0, 1, 20, 40, 60, 100, 1500, 2048, 65535];

/// The fuzz input, consumed front to back; reads past the end yield zeros.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | (u32::from(self.u16()) << 16)
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
}

/// The scripted peer's view of the connection.
struct Peer {
    /// Next sequence number the peer would send.
    nxt: u32,
    /// Highest engine sequence number seen (end of the last segment), for ACKs.
    engine_max: u32,
    engine_iss: u32,
    ts: bool,
    tsval: u32,
    /// Last TSval the engine sent.
    ts_ecr: u32,
    /// Data/FIN segments the engine sent, `[start, end)`, in sequence order (the last 128).
    segs: Vec<(u32, u32)>,
}

impl Peer {
    fn record(&mut self, start: u32, end: u32) {
        let iss = self.engine_iss;
        let key = |s: u32| s.wrapping_sub(iss);
        match self
            .segs
            .binary_search_by_key(&key(start), |&(s, _)| key(s))
        {
            Ok(i) => self.segs[i].1 = end,
            Err(i) => self.segs.insert(i, (start, end)),
        }
        if self.segs.len() > 128 {
            self.segs.remove(0);
        }
    }
}

struct World {
    engine: TcpEngine,
    t0: Instant,
    now: Instant,
    peer: Peer,
    cfg: TcpConfig,
}

impl World {
    fn inject(&mut self, seg: &SegmentOut, payload: &[u8]) {
        let mut buf = vec![0u8; 60 + payload.len()];
        if let Some(n) = write_segment(&mut buf, REMOTE, LOCAL, seg, (payload, &[]), SegmentChecksum::Complete) {
            self.engine
                .on_segment(self.now, REMOTE.ip(), LOCAL.ip(), &buf[..n]);
        }
    }

    fn opts(&mut self) -> TcpOptions {
        let mut o = TcpOptions::default();
        if self.peer.ts {
            self.peer.tsval = self.peer.tsval.wrapping_add(1);
            o.timestamps = Some((self.peer.tsval, self.peer.ts_ecr));
        }
        o
    }

    /// Polls every transmit with a buffer of `size` bytes and checks it.
    fn drain(&mut self, size: usize) {
        let mut buf = vec![0u8; size];
        for _ in 0..10_000 {
            let Some(t) = self.engine.poll_transmit(self.now, &mut buf) else {
                break;
            };
            assert!(
                t.len <= buf.len(),
                "transmit of {} bytes in a {size}-byte buffer",
                t.len
            );
            let seg = SegmentIn::parse(&buf[..t.len]).expect("the engine wrote a bad segment");
            assert_eq!(seg.src_port, t.local.port());
            assert_eq!(seg.dst_port, t.remote.port());
            if t.local == LOCAL && t.remote == REMOTE && !seg.rst() {
                let end = seg.seq.0.wrapping_add(seg.len());
                if SeqNum(end).gt(SeqNum(self.peer.engine_max)) {
                    self.peer.engine_max = end;
                }
                if let Some((v, _)) = seg.opts.timestamps {
                    self.peer.ts_ecr = v;
                }
                if !seg.is_empty() && !seg.syn() {
                    self.peer.record(seg.seq.0, end);
                }
            }
        }
        while self.engine.poll_event().is_some() {}
    }

    /// Runs the clock forward by `ms`, firing the timers on the way.
    fn advance(&mut self, ms: u64) {
        let target = self.now + Duration::from_millis(ms);
        for _ in 0..10_000 {
            match self.engine.next_timeout() {
                Some(t) if t <= target => {
                    self.now = self.now.max(t);
                    self.engine.on_timeout(self.now);
                    self.drain(2048);
                }
                _ => break,
            }
        }
        self.now = target;
        self.engine.on_timeout(self.now);
    }
}

fn handshake(w: &mut World, input: &mut Input<'_>) -> Option<ConnId> {
    let l = w.engine.listen(LOCAL, 4).ok()?;
    let mut o = TcpOptions {
        mss: Some(match input.u8() % 4 {
            0 => 1460,
            1 => 536,
            2 => 64,
            _ => 9000,
        }),
        ..Default::default()
    };
    let flags = input.u8();
    if flags & 1 != 0 {
        o.wscale = Some(flags >> 4);
    }
    o.sack_permitted = flags & 2 != 0;
    if flags & 4 != 0 {
        o.timestamps = Some((w.peer.tsval, 0));
        w.peer.ts = true;
    }
    let syn = SegmentOut {
        seq: SeqNum(PEER_ISS),
        ack: SeqNum(0),
        flags: TcpFlags::SYN,
        window: 65535,
        opts: o,
    };
    w.inject(&syn, &[]);
    let mut buf = vec![0u8; 2048];
    let t = w.engine.poll_transmit(w.now, &mut buf)?;
    let sa = SegmentIn::parse(&buf[..t.len])?;
    assert!(sa.syn() && sa.has_ack());
    w.peer.engine_iss = sa.seq.0;
    w.peer.engine_max = sa.seq.0.wrapping_add(1);
    w.peer.ts = sa.opts.timestamps.is_some();
    if let Some((v, _)) = sa.opts.timestamps {
        w.peer.ts_ecr = v;
    }
    w.peer.nxt = PEER_ISS.wrapping_add(1);
    let ack = SegmentOut {
        seq: SeqNum(w.peer.nxt),
        ack: SeqNum(w.peer.engine_max),
        flags: TcpFlags::ACK,
        window: 65535,
        opts: w.opts(),
    };
    w.inject(&ack, &[]);
    w.drain(2048);
    w.engine.accept(l)
}

fn run(data: &[u8]) {
    let mut input = Input(data);
    let c = input.u8();
    let small = c & 8 != 0;
    let cfg = TcpConfig {
        sack: c & 1 == 0,
        timestamps: c & 2 == 0,
        window_scale: c & 4 == 0,
        send_buffer: if small { 4096 } else { 256 * 1024 },
        recv_buffer: if small { 4096 } else { 256 * 1024 },
        ooo_max_segments: if small { 4 } else { 64 },
        ooo_max_bytes: if small { 4096 } else { 256 * 1024 },
        delayed_ack: if c & 16 != 0 {
            Duration::ZERO
        } else {
            Duration::from_millis(40)
        },
        cc: if c & 32 != 0 {
            CcAlgorithm::NewReno
        } else {
            CcAlgorithm::Cubic
        },
        time_wait: Duration::from_secs(1),
        ..Default::default()
    };
    let t0 = Instant::now();
    let mut w = World {
        engine: TcpEngine::new(cfg.clone(), [9; 16], t0),
        t0,
        now: t0,
        peer: Peer {
            nxt: PEER_ISS,
            engine_max: 0,
            engine_iss: 0,
            ts: false,
            tsval: 100,
            ts_ecr: 0,
            segs: Vec::new(),
        },
        cfg,
    };
    let Some(conn) = handshake(&mut w, &mut input) else {
        return;
    };
    let mut ops = 0;
    while !input.is_empty() && ops < 2_000 {
        ops += 1;
        match input.u8() % 14 {
            // SACK whole segments the engine sent (up to three ranges of them), with a
            // cumulative ACK at the start of one of them: what a receiver missing some would
            // send. Drives fast recovery, RACK, NextSeg rules 1–4 and D-SACK handling.
            12 | 13 if !w.peer.segs.is_empty() => {
                let n = w.peer.segs.len();
                let ack = match input.u8() {
                    0 => w.peer.engine_max,
                    x => w.peer.segs[usize::from(x) % n].0,
                };
                let mut o = w.opts();
                let k = usize::from(input.u8() % 4);
                for i in 0..k {
                    let a = usize::from(input.u8()) % n;
                    let b = (a + usize::from(input.u8() % 8)).min(n - 1);
                    o.sack_blocks[i] = (w.peer.segs[a].0, w.peer.segs[b].1);
                }
                o.sack_count = k as u8;
                let seg = SegmentOut {
                    seq: SeqNum(w.peer.nxt),
                    ack: SeqNum(ack),
                    flags: TcpFlags::ACK,
                    window: 65535,
                    opts: o,
                };
                w.inject(&seg, &[]);
            }
            // A segment built from fields relative to both sides' sequence numbers.
            0..=2 => {
                let flags = TcpFlags(u16::from(input.u8() & 0x3f));
                let seq = w
                    .peer
                    .nxt
                    .wrapping_add(i32::from(input.u16() as i16) as u32);
                let ack = w
                    .peer
                    .engine_max
                    .wrapping_add(i32::from(input.u16() as i16) as u32);
                let window = input.u16();
                let mode = input.u8();
                let len = usize::from(input.u16() % 3000);
                let mut o = w.opts();
                if mode & 1 != 0 {
                    // SACK blocks near the engine's sequence space.
                    let n = usize::from(mode >> 1) % 4 + 1;
                    for i in 0..n {
                        let l = w.peer.engine_max.wrapping_sub(u32::from(input.u16()));
                        let r = l.wrapping_add(u32::from(input.u16() % 4000));
                        o.sack_blocks[i] = (l, r);
                    }
                    o.sack_count = n as u8;
                }
                if mode & 0x40 != 0 {
                    o.timestamps = Some((input.u32(), input.u32()));
                }
                let payload = vec![0x5a; len];
                let seg = SegmentOut {
                    seq: SeqNum(seq),
                    ack: SeqNum(ack),
                    flags,
                    window,
                    opts: o,
                };
                w.inject(&seg, &payload);
                if mode & 0x80 != 0 && seq == w.peer.nxt {
                    w.peer.nxt = seq
                        .wrapping_add(len as u32)
                        .wrapping_add(u32::from(flags.contains(TcpFlags::FIN)));
                }
            }
            // Raw bytes, with the connection's ports so that they reach it.
            3 => {
                let len = usize::from(input.u16() % 1600);
                let mut raw = input.bytes(len).to_vec();
                if raw.len() >= 4 {
                    raw[..2].copy_from_slice(&REMOTE.port().to_be_bytes());
                    raw[2..4].copy_from_slice(&LOCAL.port().to_be_bytes());
                }
                w.engine.on_segment(w.now, REMOTE.ip(), LOCAL.ip(), &raw);
            }
            // The peer acknowledges everything (with in-order data, sometimes).
            4 => {
                let len = usize::from(input.u8()) * 8;
                let opts = w.opts();
                let seg = SegmentOut {
                    seq: SeqNum(w.peer.nxt),
                    ack: SeqNum(w.peer.engine_max),
                    flags: TcpFlags::ACK,
                    window: 65535,
                    opts,
                };
                w.inject(&seg, &vec![0xa5; len]);
                w.peer.nxt = w.peer.nxt.wrapping_add(len as u32);
            }
            5 => {
                let ms = match input.u8() {
                    x @ 0..=200 => u64::from(x),
                    x => u64::from(x - 200) * 1000,
                };
                w.advance(ms);
            }
            6 => {
                let size = BUFFER_SIZES[usize::from(input.u8()) % BUFFER_SIZES.len()];
                w.drain(size);
            }
            7 => {
                let n = usize::from(input.u16());
                let mut buf = vec![0u8; n];
                let avail = w.engine.recv_available(conn);
                assert!(avail <= w.cfg.recv_buffer);
                match w.engine.recv(w.now, conn, &mut buf) {
                    Ok(k) => assert!(k <= n && k <= avail, "recv {k} of {n}, {avail}"),
                    Err(TcpError::WouldBlock) => assert!(avail == 0 || n == 0),
                    Err(_) => {}
                }
            }
            8 => {
                let n = usize::from(input.u16()) % 20_000;
                let data = vec![0x33; n];
                if let Ok(k) = w.engine.send(w.now, conn, &data) {
                    assert!(k <= n, "send took {k} of {n}");
                }
                assert!(w.engine.unacked_bytes(conn) <= w.cfg.send_buffer + 1);
            }
            9 => {
                let _ = w.engine.shutdown_write(w.now, conn);
            }
            10 => match input.u8() % 8 {
                0 => w.engine.close(w.now, conn),
                1 => w.engine.abort(w.now, conn),
                2 => w.engine.set_nodelay(conn, true),
                3 => w.engine.set_keepalive(conn, true),
                _ => {
                    let _ = (
                        w.engine.state(conn),
                        w.engine.stats(conn),
                        w.engine.send_space(conn),
                        w.engine.error(conn),
                    );
                }
            },
            _ => {
                let size = BUFFER_SIZES[usize::from(input.u8()) % BUFFER_SIZES.len()];
                w.drain(size);
                w.advance(u64::from(input.u8()));
            }
        }
    }
    if std::env::var_os("FUZZ_STATS").is_some() {
        eprintln!(
            "STATS {:?} {:?}",
            w.engine.state(conn),
            w.engine.stats(conn)
        );
    }
    // Let everything settle: timers run out, nothing panics, the engine stays consistent.
    w.drain(2048);
    w.advance(200_000);
    w.drain(2048);
    let _ = (w.t0, w.peer.engine_iss);
}

fuzz_target!(|data: &[u8]| run(data));
