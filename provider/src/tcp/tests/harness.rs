//! A packetdrill-style harness: one [`TcpEngine`] under test, a scripted peer, a virtual clock.
//!
//! Sequence numbers in scripts are *relative*: what the test injects has `seq` relative to the
//! peer's ISS ([`PEER_ISS`]) and `ack` relative to the engine's ISS (learned from its SYN or
//! SYN-ACK); expectations are matched the other way round. Injected segments get timestamps
//! automatically when the peer negotiated them (TSval = peer clock in ms, TSecr = the engine's
//! last TSval) unless the builder sets or suppresses them.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use crate::net::checksum::{pseudo_v4, pseudo_v6};
use crate::net::tcp::{Tcp, TcpFlags};
use crate::tcp::options::TcpOptions;
use crate::tcp::segment::{SegmentIn, SegmentOut, write_segment};
use crate::tcp::seq::SeqNum;
use crate::tcp::{ConnId, ConnOptions, Event, ListenerId, TcpConfig, TcpEngine, TcpState};

/// The scripted peer's ISS.
pub(crate) const PEER_ISS: u32 = 1_000_000;
/// Engine side address.
pub(crate) const LOCAL: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 8080);
/// Peer address.
pub(crate) const REMOTE: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)), 40000);

pub(crate) const F_SYN: TcpFlags = TcpFlags::SYN;
pub(crate) const F_ACK: TcpFlags = TcpFlags::ACK;
pub(crate) const F_FIN: TcpFlags = TcpFlags::FIN;
pub(crate) const F_RST: TcpFlags = TcpFlags::RST;
pub(crate) const F_PSH: TcpFlags = TcpFlags::PSH;

/// A segment to inject, built fluently: `seg(F_ACK).seq(1).ack(1).win(100).payload(b"x")`.
#[derive(Clone, Debug)]
pub(crate) struct Seg {
    pub flags: TcpFlags,
    pub seq: u32,
    pub ack: u32,
    pub win: u16,
    pub opts: TcpOptions,
    pub payload: Vec<u8>,
    /// Sequence numbers are absolute, not relative.
    pub absolute: bool,
    /// Timestamps: None = automatic, Some(None) = none, Some(Some(..)) = these.
    pub ts: Option<Option<(u32, u32)>>,
}

pub(crate) fn seg(flags: TcpFlags) -> Seg {
    Seg {
        flags,
        seq: 0,
        ack: 0,
        win: 65535,
        opts: TcpOptions::default(),
        payload: Vec::new(),
        absolute: false,
        ts: None,
    }
}

impl Seg {
    pub fn seq(mut self, s: u32) -> Self {
        self.seq = s;
        self
    }
    pub fn ack(mut self, a: u32) -> Self {
        self.ack = a;
        self
    }
    pub fn win(mut self, w: u16) -> Self {
        self.win = w;
        self
    }
    pub fn mss(mut self, m: u16) -> Self {
        self.opts.mss = Some(m);
        self
    }
    pub fn ws(mut self, w: u8) -> Self {
        self.opts.wscale = Some(w);
        self
    }
    pub fn sack_perm(mut self) -> Self {
        self.opts.sack_permitted = true;
        self
    }
    /// SACK blocks, relative to the engine's ISS unless [`Seg::absolute`].
    pub fn sack(mut self, blocks: &[(u32, u32)]) -> Self {
        for (i, b) in blocks.iter().take(4).enumerate() {
            self.opts.sack_blocks[i] = *b;
            self.opts.sack_count = i as u8 + 1;
        }
        self
    }
    pub fn ts(mut self, val: u32, ecr: u32) -> Self {
        self.ts = Some(Some((val, ecr)));
        self
    }
    pub fn no_ts(mut self) -> Self {
        self.ts = Some(None);
        self
    }
    pub fn payload(mut self, p: &[u8]) -> Self {
        self.payload = p.to_vec();
        self
    }
    pub fn len(self, n: usize) -> Self {
        self.payload(&vec![b'x'; n])
    }
    pub fn absolute(mut self) -> Self {
        self.absolute = true;
        self
    }
}

/// One segment the engine sent, decoded (sequence numbers absolute; see the relative helpers).
#[derive(Clone, Debug)]
#[allow(dead_code)] // fields for scenario authors
pub(crate) struct Sent {
    pub at: Duration,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub flags: TcpFlags,
    pub seq: u32,
    pub ack: u32,
    pub win: u16,
    pub opts: TcpOptions,
    pub payload: Vec<u8>,
}

/// A matcher on an engine segment; unset fields match anything. `seq`/`ack` are relative.
#[derive(Clone, Debug, Default)]
pub(crate) struct Exp {
    pub flags: Option<TcpFlags>,
    pub seq: Option<u32>,
    pub ack: Option<u32>,
    pub win: Option<u16>,
    pub len: Option<usize>,
    pub mss: Option<Option<u16>>,
    pub ws: Option<Option<u8>>,
    pub sack_perm: Option<bool>,
    pub has_ts: Option<bool>,
    pub sacks: Option<Vec<(u32, u32)>>,
    pub absolute: bool,
}

pub(crate) fn exp(flags: TcpFlags) -> Exp {
    Exp {
        flags: Some(flags),
        ..Default::default()
    }
}

impl Exp {
    pub fn seq(mut self, s: u32) -> Self {
        self.seq = Some(s);
        self
    }
    pub fn ack(mut self, a: u32) -> Self {
        self.ack = Some(a);
        self
    }
    pub fn win(mut self, w: u16) -> Self {
        self.win = Some(w);
        self
    }
    pub fn len(mut self, n: usize) -> Self {
        self.len = Some(n);
        self
    }
    pub fn mss(mut self, m: Option<u16>) -> Self {
        self.mss = Some(m);
        self
    }
    pub fn ws(mut self, w: Option<u8>) -> Self {
        self.ws = Some(w);
        self
    }
    pub fn sack_perm(mut self, on: bool) -> Self {
        self.sack_perm = Some(on);
        self
    }
    pub fn has_ts(mut self, on: bool) -> Self {
        self.has_ts = Some(on);
        self
    }
    /// SACK blocks relative to the peer's ISS, in order.
    pub fn sacks(mut self, b: &[(u32, u32)]) -> Self {
        self.sacks = Some(b.to_vec());
        self
    }
    pub fn absolute(mut self) -> Self {
        self.absolute = true;
        self
    }
}

/// The harness: engine under test + virtual clock + captured output and events.
pub(crate) struct Harness {
    pub engine: TcpEngine,
    pub t0: Instant,
    pub now: Instant,
    pub out: VecDeque<Sent>,
    pub events: Vec<Event>,
    /// Engine's ISS once seen.
    pub iss: u32,
    /// Peer uses timestamps on injected segments.
    pub peer_ts: bool,
    /// Last TSval the engine sent.
    pub last_tsval: u32,
    /// Last TSval the peer sent (automatic TSvals never go below it).
    pub peer_tsval: u32,
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

impl Harness {
    pub fn new(cfg: TcpConfig) -> Self {
        let t0 = Instant::now();
        Self {
            engine: TcpEngine::new(cfg, [7; 16], t0),
            t0,
            now: t0,
            out: VecDeque::new(),
            events: Vec::new(),
            iss: 0,
            peer_ts: false,
            last_tsval: 0,
            peer_tsval: 0,
            local: LOCAL,
            remote: REMOTE,
        }
    }

    pub fn ms(&self) -> u64 {
        self.now.duration_since(self.t0).as_millis() as u64
    }

    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    /// Drains every transmit and event at the current time.
    pub fn drain(&mut self) {
        let mut buf = vec![0u8; 2048];
        let mut guard = 0;
        while let Some(t) = self.engine.poll_transmit(self.now, &mut buf) {
            guard += 1;
            assert!(guard < 100_000, "transmit loop");
            let bytes = &buf[..t.len];
            let pseudo = match (t.local.ip(), t.remote.ip()) {
                (IpAddr::V4(s), IpAddr::V4(d)) => pseudo_v4(s, d, 6, t.len as u16),
                (IpAddr::V6(s), IpAddr::V6(d)) => pseudo_v6(s, d, 6, t.len as u32),
                _ => panic!("mixed families"),
            };
            let v = Tcp::new_checked(bytes).expect("engine wrote a bad header");
            assert!(v.verify_checksum(pseudo), "bad checksum");
            let p = SegmentIn::parse(bytes).expect("parse");
            if p.syn() && !p.rst() {
                self.iss = p.seq.0;
            }
            if let Some((val, _)) = p.opts.timestamps {
                self.last_tsval = val;
            }
            self.out.push_back(Sent {
                at: self.now.duration_since(self.t0),
                src: t.local,
                dst: t.remote,
                flags: p.flags,
                seq: p.seq.0,
                ack: p.ack.0,
                win: p.window,
                opts: p.opts,
                payload: p.payload.to_vec(),
            });
        }
        while let Some(e) = self.engine.poll_event() {
            self.events.push(e);
        }
    }

    /// Runs the clock to `ms`, firing timers on the way.
    pub fn advance(&mut self, ms: u64) {
        let target = self.at(ms);
        assert!(
            target >= self.now,
            "time goes forward ({} < {})",
            ms,
            self.ms()
        );
        let mut guard = 0;
        while let Some(t) = self.engine.next_timeout() {
            if t > target {
                break;
            }
            guard += 1;
            assert!(guard < 1_000_000, "timer loop");
            if t > self.now {
                self.now = t;
            }
            self.engine.on_timeout(self.now);
            self.drain();
        }
        self.now = target;
        self.drain();
    }

    /// Builds the wire bytes of an injected segment.
    pub fn build(&mut self, s: &Seg) -> Vec<u8> {
        let mut opts = s.opts;
        if !s.absolute {
            // SACK blocks name the engine's sequence space, like `ack`.
            let n = usize::from(opts.sack_count).min(opts.sack_blocks.len());
            for b in &mut opts.sack_blocks[..n] {
                *b = (self.iss.wrapping_add(b.0), self.iss.wrapping_add(b.1));
            }
        }
        opts.timestamps = match s.ts {
            Some(x) => x,
            None if self.peer_ts => {
                Some(((self.ms() as u32 + 1).max(self.peer_tsval), self.last_tsval))
            }
            None => None,
        };
        if let Some((v, _)) = opts.timestamps {
            self.peer_tsval = v;
        }
        let (seq, ack) = if s.absolute {
            (s.seq, s.ack)
        } else {
            (
                PEER_ISS.wrapping_add(s.seq),
                if s.flags.contains(F_ACK) {
                    self.iss.wrapping_add(s.ack)
                } else {
                    0
                },
            )
        };
        let out = SegmentOut {
            seq: SeqNum(seq),
            ack: SeqNum(ack),
            flags: s.flags,
            window: s.win,
            opts,
        };
        let mut buf = vec![0u8; 60 + s.payload.len()];
        let n = write_segment(
            &mut buf,
            self.remote,
            self.local,
            &out,
            (&s.payload, &[]),
            crate::tcp::segment::SegmentChecksum::Complete,
        )
        .expect("build");
        buf.truncate(n);
        buf
    }

    /// At `ms`, delivers `s` from the peer to the engine.
    pub fn inject(&mut self, ms: u64, s: Seg) {
        self.advance(ms);
        let bytes = self.build(&s);
        self.engine
            .on_segment(self.now, self.remote.ip(), self.local.ip(), &bytes);
        self.drain();
    }

    /// Injects raw bytes at `ms`.
    pub fn inject_raw(&mut self, ms: u64, bytes: &[u8]) {
        self.advance(ms);
        self.engine
            .on_segment(self.now, self.remote.ip(), self.local.ip(), bytes);
        self.drain();
    }

    /// The next segment the engine sent, at or before `ms` (running the clock to `ms` if none is
    /// captured yet); asserts it was sent at `ms` (±2 ms) and matches `e`.
    #[track_caller]
    pub fn expect(&mut self, ms: u64, e: Exp) -> Sent {
        if self.out.is_empty() {
            // Step through timers one by one so the capture time is exact.
            while self.out.is_empty() {
                match self.engine.next_timeout() {
                    Some(t) if t <= self.at(ms + 2) => {
                        if t > self.now {
                            self.now = t;
                        }
                        self.engine.on_timeout(self.now);
                        self.drain();
                    }
                    _ => break,
                }
            }
            if self.out.is_empty() {
                self.advance(ms);
            }
        }
        let Some(s) = self.out.pop_front() else {
            panic!(
                "expected {e:?} at {ms} ms, nothing was sent (now {} ms)",
                self.ms()
            );
        };
        let at = s.at.as_millis() as u64;
        assert!(
            at + 2 >= ms && at <= ms + 2,
            "expected a segment at {ms} ms, got one at {at} ms: {s:?}"
        );
        self.check(&s, &e);
        s
    }

    /// Pops the next captured segment regardless of time and matches it.
    #[track_caller]
    pub fn expect_now(&mut self, e: Exp) -> Sent {
        let Some(s) = self.out.pop_front() else {
            panic!("expected {e:?} now ({} ms), nothing was sent", self.ms());
        };
        self.check(&s, &e);
        s
    }

    #[track_caller]
    pub fn check(&self, s: &Sent, e: &Exp) {
        let rel = |abs: u32, base: u32| {
            if e.absolute {
                abs
            } else {
                abs.wrapping_sub(base)
            }
        };
        if let Some(f) = e.flags {
            assert_eq!(s.flags, f, "flags of {s:?}");
        }
        if let Some(q) = e.seq {
            assert_eq!(rel(s.seq, self.iss), q, "seq of {s:?} (iss {})", self.iss);
        }
        if let Some(a) = e.ack {
            assert_eq!(rel(s.ack, PEER_ISS), a, "ack of {s:?}");
        }
        if let Some(w) = e.win {
            assert_eq!(s.win, w, "window of {s:?}");
        }
        if let Some(n) = e.len {
            assert_eq!(s.payload.len(), n, "length of {s:?}");
        }
        if let Some(m) = e.mss {
            assert_eq!(s.opts.mss, m, "MSS option of {s:?}");
        }
        if let Some(w) = e.ws {
            assert_eq!(s.opts.wscale, w, "WS option of {s:?}");
        }
        if let Some(p) = e.sack_perm {
            assert_eq!(s.opts.sack_permitted, p, "SACK-permitted of {s:?}");
        }
        if let Some(t) = e.has_ts {
            assert_eq!(s.opts.timestamps.is_some(), t, "timestamps of {s:?}");
        }
        if let Some(b) = &e.sacks {
            let got: Vec<(u32, u32)> = s
                .opts
                .sacks()
                .iter()
                .map(|&(l, r)| (rel(l, PEER_ISS), rel(r, PEER_ISS)))
                .collect();
            assert_eq!(&got, b, "SACK blocks of {s:?}");
        }
    }

    /// Asserts the engine sends nothing up to and including `ms`.
    #[track_caller]
    pub fn expect_nothing_until(&mut self, ms: u64) {
        assert!(
            self.out.is_empty(),
            "unexpected segment: {:?}",
            self.out.front()
        );
        self.advance(ms);
        assert!(
            self.out.is_empty(),
            "unexpected segment: {:?}",
            self.out.front()
        );
    }

    /// Asserts an event was emitted (and removes it).
    #[track_caller]
    pub fn expect_event(&mut self, e: Event) {
        let Some(i) = self.events.iter().position(|x| *x == e) else {
            panic!("expected event {e:?}, have {:?}", self.events);
        };
        self.events.remove(i);
    }

    pub fn has_event(&self, e: Event) -> bool {
        self.events.contains(&e)
    }

    // ---------------------------------------------------------------- canned openings

    /// Listens on LOCAL, completes a passive handshake with `peer` options at t=0 and accepts.
    /// Afterwards the peer's next sequence is 1 and the engine's is 1.
    pub fn passive(cfg: TcpConfig, peer: PeerOpts) -> (Self, ListenerId, ConnId) {
        Self::passive_rtt(cfg, peer, 0)
    }

    /// [`Harness::passive`] with the handshake's final ACK at `rtt` ms, so the engine starts
    /// with an RTT estimate of `rtt` ms.
    pub fn passive_rtt(cfg: TcpConfig, peer: PeerOpts, rtt: u64) -> (Self, ListenerId, ConnId) {
        let mut h = Self::new(cfg);
        let l = h.engine.listen(LOCAL, 16).expect("listen");
        let mut syn = seg(F_SYN).win(peer.win);
        syn = peer.apply(syn);
        h.inject(0, syn);
        h.expect(0, exp(F_SYN | F_ACK).ack(1));
        h.peer_ts = peer.ts;
        h.inject(rtt, seg(F_ACK).seq(1).ack(1).win(peer.win));
        h.expect_event(Event::AcceptReady(l));
        let c = h.engine.accept(l).expect("accept");
        assert_eq!(h.engine.state(c), Some(TcpState::Established));
        (h, l, c)
    }

    /// Connects LOCAL → REMOTE at t=0 and completes the handshake with `peer` options.
    pub fn active(cfg: TcpConfig, opts: ConnOptions, peer: PeerOpts) -> (Self, ConnId) {
        let mut h = Self::new(cfg);
        let c = h
            .engine
            .connect(h.now, LOCAL, REMOTE, opts)
            .expect("connect");
        h.drain();
        h.expect(0, exp(F_SYN).seq(0));
        let mut sa = seg(F_SYN | F_ACK).ack(1).win(peer.win);
        sa = peer.apply(sa);
        h.inject(0, sa);
        h.peer_ts = peer.ts;
        h.expect(0, exp(F_ACK).seq(1).ack(1));
        h.expect_event(Event::Connected(c));
        (h, c)
    }
}

/// The scripted peer's SYN options.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PeerOpts {
    pub mss: Option<u16>,
    pub ws: Option<u8>,
    pub ts: bool,
    pub sack: bool,
    pub win: u16,
}

impl PeerOpts {
    /// MSS 1460, WS 7, TS, SACK.
    pub fn full() -> Self {
        Self {
            mss: Some(1460),
            ws: Some(7),
            ts: true,
            sack: true,
            win: 65535,
        }
    }
    /// MSS 1000 only, no other options (classic RFC 793 peer): windows unscaled.
    pub fn plain() -> Self {
        Self {
            mss: Some(1000),
            ws: None,
            ts: false,
            sack: false,
            win: 65535,
        }
    }
    fn apply(&self, mut s: Seg) -> Seg {
        if let Some(m) = self.mss {
            s = s.mss(m);
        }
        if let Some(w) = self.ws {
            s = s.ws(w);
        }
        if self.sack {
            s = s.sack_perm();
        }
        if self.ts {
            s = s.ts(1, 0);
        } else {
            s = s.no_ts();
        }
        s
    }
}

/// A config without delayed-ACK surprises for tests that do not study it.
pub(crate) fn cfg() -> TcpConfig {
    TcpConfig::default()
}
