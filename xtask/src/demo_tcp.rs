//! The TCP part of `cargo xtask demo`: WSPCloseSocket's SO_LINGER rows (DESIGN §7) against
//! the Linux kernel's TCP in the peer namespace, proven on the wire.
//!
//! `provider script` runs in the provider namespace and is fed one WSP call at a time on its
//! stdin (so every call can wait for the kernel side); each call's JSON line gives its result,
//! start time and duration. The kernel clients are std sockets created inside the peer
//! namespace. `tcpdump -w` on the peer veth captures every frame; the pcap is decoded here and
//! every claim is checked against it:
//!
//! 1. SO_DONTLINGER: close right after 1 MiB returns at once; every byte (SHA-256 compared),
//!    then the FIN right after the last byte, no RST.
//! 2. SO_LINGER {1,0}: exactly one RST, SEQ = provider ISN + 1 + bytes sent (SND.NXT), ACK =
//!    peer ISN + 1 + bytes received (RCV.NXT); the kernel's recv fails with ECONNRESET.
//! 3. SO_LINGER {1,2}, blocking, the kernel does not read: close returns after ≈ 2 s and the
//!    RST is on the wire ≈ 2 s after the call.
//! 4. SO_LINGER {1,5}, nonblocking, data unacknowledged: WSAEWOULDBLOCK, nothing on the wire
//!    from the provider, the handle still works; once the kernel has read everything a retry
//!    returns 0 and the close is graceful (FIN after the last byte, no RST).
//!
//! The script's clock (µs since it started, monotonic) is tied to the capture's clock
//! (CLOCK_REALTIME) by timing a few `sleep 0` calls, so call start times can be placed among
//! the captured frames. Kernel counters (`/proc/net/snmp`, `/proc/net/netstat`) of both
//! namespaces are read before and after.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::lab::{Lab, NsGuard};
use crate::proc::{self, Proc};

/// The provider's listening port.
pub const PORT: u16 = 5000;
/// Row 1: bytes sent before the SO_DONTLINGER close.
pub const ROW1_BYTES: usize = 1 << 20;
/// Row 2: bytes the kernel sends (RCV.NXT moves) and bytes the provider sends (SND.NXT).
pub const ROW2_IN: usize = 1000;
pub const ROW2_OUT: usize = 5000;
/// Rows 3 and 4: bytes queued behind a kernel receiver that does not read.
pub const STUCK_BYTES: usize = 200_000;
/// SO_RCVBUF of the kernel client that does not read (the kernel doubles it).
pub const SMALL_RCVBUF: i32 = 4096;
/// Row 3's l_linger and the accepted range of the measured close time / RST time.
pub const ROW3_LINGER: u16 = 2;
pub const ROW3_RANGE: (f64, f64) = (1.9, 2.6);
/// Row 4's l_linger and how long the provider must stay silent after WSAEWOULDBLOCK.
pub const ROW4_LINGER: u16 = 5;
pub const QUIET: Duration = Duration::from_millis(500);
/// The provider's minimum RTO for this part: its zero-window probes (persist timer, RTO-based)
/// are then ≥ 2 s apart, so none can fall into row 4's quiet window and be mistaken for an
/// answer to the close call.
pub const MIN_RTO_MS: u64 = 2000;
/// Longest wait for one script call or one kernel read.
const WAIT: Duration = Duration::from_secs(15);

/// CLOCK_REALTIME now, ns since the epoch (the clock of capture timestamps).
fn realtime_ns() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Byte `i` of a stream the script sends (and expects): `i mod 256`.
pub fn pattern(from: usize, len: usize) -> Vec<u8> {
    (from..from + len).map(|i| i as u8).collect()
}

// ------------------------------------------------------------------------------ SHA-256

/// SHA-256 (FIPS 180-4), incremental; small enough not to need a dependency.
pub struct Sha256 {
    h: [u32; 8],
    buf: Vec<u8>,
    len: u64,
}

const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

impl Default for Sha256 {
    fn default() -> Self {
        Sha256 {
            h: [
                0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
                0x5be0cd19,
            ],
            buf: Vec::with_capacity(64),
            len: 0,
        }
    }
}

impl Sha256 {
    fn block(&mut self, b: &[u8]) {
        let mut w = [0u32; 64];
        for (i, c) in b.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = self.h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = h
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            h = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (x, y) in self.h.iter_mut().zip([a, b, c, d, e, f, g, h]) {
            *x = x.wrapping_add(y);
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if !self.buf.is_empty() {
            let take = (64 - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == 64 {
                let b = std::mem::take(&mut self.buf);
                self.block(&b);
                self.buf = b;
                self.buf.clear();
            }
        }
        let mut chunks = data.chunks_exact(64);
        for c in &mut chunks {
            self.block(c);
        }
        self.buf.extend_from_slice(chunks.remainder());
    }

    pub fn hex(mut self) -> String {
        let bits = self.len.wrapping_mul(8);
        let mut pad = vec![0x80u8];
        while (self.buf.len() + pad.len()) % 64 != 56 {
            pad.push(0);
        }
        pad.extend_from_slice(&bits.to_be_bytes());
        let len = self.len;
        self.update(&pad);
        self.len = len;
        self.h.iter().map(|x| format!("{x:08x}")).collect()
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    let mut s = Sha256::default();
    s.update(data);
    s.hex()
}

// ------------------------------------------------------------------------------ capture

/// One captured IPv4 TCP segment.
#[derive(Clone, Debug)]
pub struct Seg {
    /// Capture timestamp, ns since the epoch.
    pub ts: u64,
    pub from_provider: bool,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub syn: bool,
    pub fin: bool,
    pub rst: bool,
    pub psh: bool,
    pub ackf: bool,
    pub win: u16,
    /// Payload bytes.
    pub len: u32,
    /// The TCP checksum verified (None: the frame was truncated by the snap length).
    pub checksum_ok: Option<bool>,
}

impl Seg {
    /// Where this segment ends in sequence space (SYN and FIN count one).
    pub fn end(&self) -> u32 {
        self.seq
            .wrapping_add(self.len)
            .wrapping_add(u32::from(self.syn) + u32::from(self.fin))
    }

    pub fn flags(&self) -> String {
        let mut f = String::new();
        for (on, c) in [
            (self.syn, 'S'),
            (self.fin, 'F'),
            (self.rst, 'R'),
            (self.psh, 'P'),
            (self.ackf, '.'),
        ] {
            if on {
                f.push(c);
            }
        }
        format!("[{f}]")
    }
}

/// Parses a classic pcap file (µs or ns timestamps, either byte order): (ts ns, orig len, bytes).
pub fn read_pcap(b: &[u8]) -> Result<Vec<(u64, usize, Vec<u8>)>> {
    if b.len() < 24 {
        bail!("pcap too short ({} bytes)", b.len());
    }
    let (le, nano) = match u32::from_le_bytes([b[0], b[1], b[2], b[3]]) {
        0xa1b2_c3d4 => (true, false),
        0xa1b2_3c4d => (true, true),
        0xd4c3_b2a1 => (false, false),
        0x4d3c_b2a1 => (false, true),
        m => bail!("not a pcap file (magic {m:#x})"),
    };
    let u32_at = |i: usize| {
        let a = [b[i], b[i + 1], b[i + 2], b[i + 3]];
        if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    let mut out = Vec::new();
    let mut i = 24;
    while i + 16 <= b.len() {
        let (sec, frac) = (u64::from(u32_at(i)), u64::from(u32_at(i + 4)));
        let (caplen, orig) = (u32_at(i + 8) as usize, u32_at(i + 12) as usize);
        let start = i + 16;
        if start + caplen > b.len() {
            break;
        }
        let ts = sec * 1_000_000_000 + if nano { frac } else { frac * 1000 };
        out.push((ts, orig, b[start..start + caplen].to_vec()));
        i = start + caplen;
    }
    Ok(out)
}

fn ones_sum(mut acc: u32, data: &[u8]) -> u32 {
    let mut c = data.chunks_exact(2);
    for w in &mut c {
        acc += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [x] = c.remainder() {
        acc += u32::from(*x) << 8;
    }
    acc
}

/// Decodes Ethernet/IPv4/TCP frames; anything else is skipped.
pub fn decode(frames: &[(u64, usize, Vec<u8>)], provider: Ipv4Addr) -> Vec<Seg> {
    let mut out = Vec::new();
    for (ts, orig, f) in frames {
        if f.len() < 14 + 20 || u16::from_be_bytes([f[12], f[13]]) != 0x0800 {
            continue;
        }
        let ip = &f[14..];
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        if ip[0] >> 4 != 4 || ip[9] != 6 || ihl < 20 || ip.len() < ihl + 20 || total < ihl + 20 {
            continue;
        }
        let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
        let t = &ip[ihl..];
        let doff = usize::from(t[12] >> 4) * 4;
        let flags = t[13];
        let tcp_len = total - ihl;
        let checksum_ok = (*orig == f.len() && ip.len() >= total).then(|| {
            let mut acc = ones_sum(0, &ip[12..20]);
            acc += 6 + tcp_len as u32;
            acc = ones_sum(acc, &ip[ihl..total]);
            while acc > 0xffff {
                acc = (acc & 0xffff) + (acc >> 16);
            }
            acc == 0xffff
        });
        out.push(Seg {
            ts: *ts,
            from_provider: src == provider,
            sport: u16::from_be_bytes([t[0], t[1]]),
            dport: u16::from_be_bytes([t[2], t[3]]),
            seq: u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
            ack: u32::from_be_bytes([t[8], t[9], t[10], t[11]]),
            fin: flags & 0x01 != 0,
            syn: flags & 0x02 != 0,
            rst: flags & 0x04 != 0,
            psh: flags & 0x08 != 0,
            ackf: flags & 0x10 != 0,
            win: u16::from_be_bytes([t[14], t[15]]),
            len: tcp_len.saturating_sub(doff) as u32,
            checksum_ok,
        });
    }
    out
}

/// `a` is after `b` in sequence space.
fn seq_gt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// The segments of the connection whose kernel end is `kport`.
fn flow(segs: &[Seg], kport: u16) -> Vec<Seg> {
    segs.iter()
        .filter(|s| {
            (s.from_provider && s.sport == PORT && s.dport == kport)
                || (!s.from_provider && s.sport == kport && s.dport == PORT)
        })
        .cloned()
        .collect()
}

/// What the capture says about one connection.
struct Wire {
    segs: Vec<Seg>,
    /// Provider ISN (its SYN-ACK) and the kernel's ISN (its SYN).
    provider_isn: Option<u32>,
    kernel_isn: Option<u32>,
}

impl Wire {
    fn new(segs: Vec<Seg>) -> Wire {
        let provider_isn = segs
            .iter()
            .find(|s| s.from_provider && s.syn && s.ackf)
            .map(|s| s.seq);
        let kernel_isn = segs
            .iter()
            .find(|s| !s.from_provider && s.syn && !s.ackf)
            .map(|s| s.seq);
        Wire {
            segs,
            provider_isn,
            kernel_isn,
        }
    }
    fn provider(&self) -> impl Iterator<Item = &Seg> {
        self.segs.iter().filter(|s| s.from_provider)
    }
    fn rsts(&self) -> Vec<&Seg> {
        self.provider().filter(|s| s.rst).collect()
    }
    fn fins(&self) -> Vec<&Seg> {
        self.provider().filter(|s| s.fin).collect()
    }
    /// Highest sequence end the provider put on the wire before `ts` (RSTs aside): SND.NXT.
    fn snd_nxt_before(&self, ts: u64) -> Option<u32> {
        self.provider()
            .filter(|s| s.ts <= ts && !s.rst)
            .map(Seg::end)
            .reduce(|a, b| if seq_gt(b, a) { b } else { a })
    }
    /// Highest sequence end the kernel put on the wire before `ts`: the provider's RCV.NXT.
    fn rcv_nxt_before(&self, ts: u64) -> Option<u32> {
        self.segs
            .iter()
            .filter(|s| !s.from_provider && s.ts <= ts && !s.rst)
            .map(Seg::end)
            .reduce(|a, b| if seq_gt(b, a) { b } else { a })
    }
    /// Highest ACK the kernel sent before `ts`.
    fn kernel_ack_before(&self, ts: u64) -> Option<u32> {
        self.segs
            .iter()
            .filter(|s| !s.from_provider && s.ts <= ts && s.ackf)
            .map(|s| s.ack)
            .reduce(|a, b| if seq_gt(b, a) { b } else { a })
    }
    /// At `ts`, of the `total` bytes the application handed over: (acknowledged by the kernel,
    /// on the wire but unacknowledged, still queued at the provider).
    fn progress_at(&self, ts: u64, total: usize) -> Option<(u32, u32, u32)> {
        let isn = self.provider_isn?.wrapping_add(1);
        let acked = self.kernel_ack_before(ts)?.wrapping_sub(isn);
        let sent = self.snd_nxt_before(ts)?.wrapping_sub(isn);
        Some((
            acked,
            sent.wrapping_sub(acked),
            (total as u32).wrapping_sub(sent),
        ))
    }
    /// Graceful end: no RST from the provider, every FIN at ISN + 1 + `total`, the last data
    /// byte on the wire no later than the first FIN, no data beyond the FIN. `Err` says why not.
    fn graceful(&self, total: usize) -> Result<(u32, u64), String> {
        let isn = self
            .provider_isn
            .ok_or("no SYN-ACK from the provider captured")?;
        if !self.rsts().is_empty() {
            return Err(format!("{} RST from the provider", self.rsts().len()));
        }
        let fins = self.fins();
        let first = fins.first().ok_or("no FIN from the provider")?;
        let fin_seq = isn.wrapping_add(1).wrapping_add(total as u32);
        if let Some(f) = fins.iter().find(|f| f.seq.wrapping_add(f.len) != fin_seq) {
            return Err(format!(
                "FIN at seq {} + {} bytes ≠ {fin_seq}",
                f.seq, f.len
            ));
        }
        if let Some(s) = self
            .provider()
            .find(|s| s.len > 0 && seq_gt(s.seq.wrapping_add(s.len), fin_seq))
        {
            return Err(format!("data beyond the FIN (seq {} len {})", s.seq, s.len));
        }
        if total > 0
            && !self
                .provider()
                .any(|s| s.len > 0 && s.seq.wrapping_add(s.len) == fin_seq && s.ts <= first.ts)
        {
            return Err("the FIN came before the last data byte".into());
        }
        Ok((fin_seq, first.ts))
    }
}

/// Prints the frames of one connection, the calls (`marks`) placed among them. Times are
/// relative to `t0`. The handshake, SYN/FIN/RST frames, the first and last data frame of each
/// side, the last two frames before and the first two after each mark and the last two frames
/// are shown; runs of other frames are summarised in one line.
fn print_wire(out: &mut String, w: &Wire, t0: u64, marks: &[(u64, String)]) {
    let segs = &w.segs;
    let n = segs.len();
    let mut keep = vec![n <= 16; n];
    for (i, s) in segs.iter().enumerate() {
        if i < 3 || i + 2 >= n || s.syn || s.fin || s.rst {
            keep[i] = true;
        }
    }
    for side in [true, false] {
        let data: Vec<usize> = (0..n)
            .filter(|&i| segs[i].from_provider == side && segs[i].len > 0)
            .collect();
        for i in [data.first(), data.last()].into_iter().flatten() {
            keep[*i] = true;
        }
    }
    for (t, _) in marks {
        let split = segs.partition_point(|s| s.ts < *t);
        for k in &mut keep[split.saturating_sub(2)..(split + 2).min(n)] {
            *k = true;
        }
    }
    let rel = |ts: u64| (ts as i128 - t0 as i128) as f64 / 1e9;
    let mut skipped: Vec<&Seg> = Vec::new();
    let flush = |out: &mut String, skipped: &mut Vec<&Seg>| {
        if skipped.is_empty() {
            return;
        }
        let (p, k): (Vec<&&Seg>, Vec<&&Seg>) = skipped.iter().partition(|s| s.from_provider);
        let bytes = |v: &[&&Seg]| v.iter().map(|s| u64::from(s.len)).sum::<u64>();
        let _ = writeln!(
            out,
            "      {:>10}  … {} frame{}: provider {} ({} data bytes), kernel {} ({} data bytes) …",
            "",
            skipped.len(),
            if skipped.len() == 1 { "" } else { "s" },
            p.len(),
            bytes(&p),
            k.len(),
            bytes(&k)
        );
        skipped.clear();
    };
    let mut m = 0;
    for (i, s) in segs.iter().enumerate() {
        while m < marks.len() && marks[m].0 <= s.ts {
            flush(out, &mut skipped);
            let _ = writeln!(
                out,
                "      {:>+10.6}  ── {} ──",
                rel(marks[m].0),
                marks[m].1
            );
            m += 1;
        }
        if !keep[i] {
            skipped.push(s);
            continue;
        }
        flush(out, &mut skipped);
        let _ = writeln!(
            out,
            "      {:>+10.6}  {:<17} {:<6} seq {:>10}  ack {:>10}  win {:>5}  len {}",
            rel(s.ts),
            if s.from_provider {
                "provider → kernel"
            } else {
                "kernel → provider"
            },
            s.flags(),
            s.seq,
            if s.ackf {
                s.ack.to_string()
            } else {
                "-".into()
            },
            s.win,
            s.len
        );
    }
    flush(out, &mut skipped);
    for (t, what) in &marks[m..] {
        let _ = writeln!(out, "      {:>+10.6}  ── {what} ──", rel(*t));
    }
}

// ------------------------------------------------------------------------------ the script

/// One result line of `provider script`.
#[derive(Clone, Debug)]
struct OpResult {
    v: Value,
    /// When the call started, on the capture's clock (ns since the epoch).
    wall_ns: u64,
}

impl OpResult {
    fn ret(&self) -> i64 {
        self.v["ret"].as_i64().unwrap_or(i64::MIN)
    }
    fn error(&self) -> Option<&str> {
        self.v["error"].as_str()
    }
    fn ok(&self) -> bool {
        self.v["error"].is_null()
    }
    fn dur(&self) -> Duration {
        Duration::from_micros(self.v["dur_us"].as_u64().unwrap_or(0))
    }
    /// `op args → result (duration)`, for the transcript.
    fn show(&self) -> String {
        let args: Vec<&str> = self.v["args"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let op = self.v["op"].as_str().unwrap_or("?");
        let res = match self.error() {
            Some(e) => e.to_string(),
            None if op == "accept" => format!("handle {}", self.ret()),
            None if self.v["linger"].is_array() => format!("linger {}", self.v["linger"]),
            None => self.ret().to_string(),
        };
        format!("{op} {} → {res} ({})", args.join(" "), dur(self.dur())).replace("  →", " →")
    }
}

fn dur(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{} µs", d.as_micros())
    } else if d < Duration::from_secs(1) {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.3} s", d.as_secs_f64())
    }
}

/// `provider script` in the provider namespace, fed on stdin one call at a time. Stopped (by
/// its pid: SIGTERM, then SIGKILL) on drop.
struct Script {
    child: Child,
    stdin: Option<ChildStdin>,
    out: Receiver<(u64, String)>,
    err_tail: Arc<Mutex<VecDeque<String>>>,
    lines: u64,
    /// Capture clock = `offset_ns` + script clock (µs × 1000).
    offset_ns: i128,
    /// ± of the clock tie.
    offset_err: Duration,
    events: Vec<Value>,
}

impl Script {
    fn spawn(lab: &Lab, bin: &Path) -> Result<Script> {
        let mut cmd: Command = lab.provider_cmd(bin);
        cmd.args(["script", "--iface", &lab.provider_if])
            .args(["--min-rto-ms", &MIN_RTO_MS.to_string()])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let shown = crate::cmd::display(&cmd);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start `{shown}`"))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("stdout")?;
        let stderr = child.stderr.take().context("stderr")?;
        let (tx, out) = mpsc::channel();
        thread::spawn(move || {
            for l in BufReader::new(stdout).lines() {
                let Ok(l) = l else { break };
                if tx.send((realtime_ns(), l)).is_err() {
                    break;
                }
            }
        });
        let err_tail = Arc::new(Mutex::new(VecDeque::new()));
        let tail = err_tail.clone();
        thread::spawn(move || {
            for l in BufReader::new(stderr).lines() {
                let Ok(l) = l else { break };
                let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
                if t.len() == 40 {
                    t.pop_front();
                }
                t.push_back(l);
            }
        });
        let mut s = Script {
            child,
            stdin,
            out,
            err_tail,
            lines: 0,
            offset_ns: 0,
            offset_err: Duration::ZERO,
            events: Vec::new(),
        };
        s.wait_event("ready", Duration::from_secs(30))?;
        Ok(s)
    }

    fn stderr_tail(&self) -> String {
        let t = self.err_tail.lock().unwrap_or_else(|e| e.into_inner());
        t.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    fn fail(&mut self, what: &str) -> anyhow::Error {
        thread::sleep(Duration::from_millis(100));
        let status = self
            .child
            .try_wait()
            .ok()
            .flatten()
            .map_or("running".into(), |s| s.to_string());
        anyhow::anyhow!(
            "provider script ({status}): {what}\n--- provider script stderr (last lines) ---\n{}",
            self.stderr_tail()
        )
    }

    /// The next JSON line: (read time, value).
    fn next_json(&mut self, timeout: Duration) -> Result<Option<(u64, Value)>> {
        let end = Instant::now() + timeout;
        loop {
            proc::check_interrupted()?;
            let left = end.saturating_duration_since(Instant::now());
            match self.out.recv_timeout(left.min(Duration::from_millis(50))) {
                Ok((at, l)) => {
                    if let Ok(v) = serde_json::from_str::<Value>(&l)
                        && v.is_object()
                    {
                        return Ok(Some((at, v)));
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return Ok(None),
                Err(RecvTimeoutError::Timeout) if left.is_zero() => return Ok(None),
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }

    fn wait_event(&mut self, name: &str, timeout: Duration) -> Result<Value> {
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.next_json(left)? {
                Some((_, v)) if v["event"] == name => {
                    self.events.push(v.clone());
                    return Ok(v);
                }
                Some((_, v)) if v.get("event").is_some() => self.events.push(v),
                Some(_) => {}
                None => return Err(self.fail(&format!("no {name:?} event"))),
            }
        }
    }

    /// Writes the calls (one line each) and returns their results, in order.
    fn calls(&mut self, texts: &[&str]) -> Result<Vec<OpResult>> {
        let mut block = String::new();
        for t in texts {
            block.push_str(t);
            block.push('\n');
        }
        let first = self.lines + 1;
        self.lines += texts.len() as u64;
        let written = self
            .stdin
            .as_mut()
            .context("stdin closed")
            .and_then(|s| Ok(s.write_all(block.as_bytes()).and_then(|()| s.flush())?));
        if let Err(e) = written {
            return Err(self.fail(&format!("write {:?}: {e:#}", texts)));
        }
        let mut res = Vec::new();
        for no in first..=self.lines {
            loop {
                match self.next_json(WAIT)? {
                    Some((_, v)) if v["line"] == no && v.get("op").is_some() => {
                        let t_us = v["t_us"].as_u64().unwrap_or(0);
                        let wall = self.offset_ns + i128::from(t_us) * 1000;
                        res.push(OpResult {
                            v,
                            wall_ns: wall.max(0) as u64,
                        });
                        break;
                    }
                    Some((_, v)) if v.get("event").is_some() => self.events.push(v),
                    Some(_) => {}
                    None => {
                        return Err(self.fail(&format!("no result for line {no} ({texts:?})")));
                    }
                }
            }
        }
        Ok(res)
    }

    fn call(&mut self, text: &str) -> Result<OpResult> {
        Ok(self.calls(&[text])?.remove(0))
    }

    /// Ties the script's clock to CLOCK_REALTIME: of a few `sleep 0` calls, the one answered
    /// fastest brackets its start time most tightly.
    fn calibrate(&mut self) -> Result<()> {
        let mut best: Option<(u64, i128)> = None;
        for _ in 0..8 {
            let before = realtime_ns();
            let n = self.lines + 1;
            self.lines += 1;
            let stdin = self.stdin.as_mut().context("stdin closed")?;
            stdin.write_all(b"sleep 0\n")?;
            stdin.flush()?;
            let (at, v) = loop {
                match self.next_json(WAIT)? {
                    Some((at, v)) if v["line"] == n => break (at, v),
                    Some(_) => {}
                    None => return Err(self.fail("no answer to `sleep 0`")),
                }
            };
            let t_us = i128::from(v["t_us"].as_u64().unwrap_or(0));
            let gap = at.saturating_sub(before);
            let mid = i128::from(before) + i128::from(gap / 2);
            if best.is_none_or(|(g, _)| gap < g) {
                best = Some((gap, mid - t_us * 1000));
            }
        }
        let (gap, off) = best.context("calibration")?;
        self.offset_ns = off;
        self.offset_err = Duration::from_nanos(gap / 2);
        Ok(())
    }

    /// Closes stdin and waits for the `done` event and the exit.
    fn finish(&mut self) -> Result<(Value, ExitStatus)> {
        self.stdin.take();
        let done = self.wait_event("done", Duration::from_secs(10))?;
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(s) = self.child.try_wait()? {
                return Ok((done, s));
            }
            if Instant::now() > end {
                return Err(self.fail("did not exit after `done`"));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        // SAFETY: kill(2) on the pid of the child we spawned and have not reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------------------------ kernel side

/// A kernel TCP socket created in the namespace at `ns`, SO_RCVBUF set before the connect
/// when asked (so the window and its scale stay small), connected to `to`.
fn kernel_connect(ns: &Path, to: SocketAddrV4, rcvbuf: Option<i32>) -> Result<TcpStream> {
    let fd = {
        let _g = NsGuard::enter(ns)?;
        // SAFETY: socket(2) with constant arguments.
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) }
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("socket");
    }
    // SAFETY: `fd` is a fresh socket we own; the stream closes it.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let sz = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    if let Some(r) = rcvbuf {
        // SAFETY: setsockopt on our socket with a c_int option value.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&r as *const i32).cast(),
                sz,
            )
        };
    }
    // The connect gives up after 5 s (SO_SNDTIMEO bounds a blocking connect on Linux).
    let tv = libc::timeval {
        tv_sec: 5,
        tv_usec: 0,
    };
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: to.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(to.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: valid option value and address for the calls on our socket.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
        libc::connect(
            fd,
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("connect {to}"));
    }
    stream.set_read_timeout(Some(WAIT))?;
    stream.set_write_timeout(Some(WAIT))?;
    Ok(stream)
}

/// What a kernel reader got: bytes (hashed, and checked against the script's pattern), then
/// how the stream ended.
struct Drained {
    bytes: usize,
    sha256: String,
    matches_pattern: bool,
    end: std::io::Result<()>,
}

/// Reads until EOF or an error, starting at stream offset `from`.
fn drain(k: &mut TcpStream, from: usize) -> Drained {
    let mut h = Sha256::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0;
    let mut matches = true;
    let end = loop {
        match k.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(r) => {
                h.update(&buf[..r]);
                matches &= buf[..r] == pattern(from + n, r)[..];
                n += r;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    Drained {
        bytes: n,
        sha256: h.hex(),
        matches_pattern: matches,
        end,
    }
}

fn end_name(e: &std::io::Result<()>) -> String {
    match e {
        Ok(()) => "EOF".into(),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => "ECONNRESET".into(),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            "timed out (no EOF, no reset)".into()
        }
        Err(e) => e.to_string(),
    }
}

/// TCP counters of the kernel in the namespace at `ns` (`/proc/net/snmp` Tcp: and
/// `/proc/net/netstat` TcpExt:), as `Tcp<Name>` / `TcpExt<Name>`.
fn tcp_counters(ns: &Path) -> Result<Vec<(String, u64)>> {
    let _g = NsGuard::enter(ns)?;
    let mut out = Vec::new();
    for (file, prefix) in [("snmp", "Tcp:"), ("netstat", "TcpExt:")] {
        let text = std::fs::read_to_string(format!("/proc/thread-self/net/{file}"))?;
        let rows: Vec<&str> = text.lines().filter(|l| l.starts_with(prefix)).collect();
        if let [names, values] = rows[..] {
            let tag = prefix.trim_end_matches(':');
            for (n, v) in names
                .split_whitespace()
                .zip(values.split_whitespace())
                .skip(1)
            {
                if let Ok(v) = v.parse::<i64>() {
                    out.push((format!("{tag}{n}"), v.max(0) as u64));
                }
            }
        }
    }
    Ok(out)
}

fn counter_delta(before: &[(String, u64)], after: &[(String, u64)], name: &str) -> u64 {
    let get = |v: &[(String, u64)]| v.iter().find(|(n, _)| n == name).map_or(0, |(_, x)| *x);
    get(after).saturating_sub(get(before))
}

// ------------------------------------------------------------------------------ rows

/// A row's sub-checks; the row is `ok` when all hold.
struct Row {
    title: String,
    checks: Vec<(bool, String)>,
}

impl Row {
    fn new(title: impl Into<String>) -> Row {
        Row {
            title: title.into(),
            checks: Vec::new(),
        }
    }
    fn check(&mut self, ok: bool, what: impl Into<String>) {
        self.checks.push((ok, what.into()));
    }
    fn ok(&self) -> bool {
        self.checks.iter().all(|(ok, _)| *ok)
    }
    fn print(&self, out: &mut String) {
        for (ok, what) in &self.checks {
            let _ = writeln!(out, "    {}  {what}", if *ok { "ok  " } else { "FAIL" });
        }
        let _ = writeln!(
            out,
            "  {}: {}",
            self.title,
            if self.ok() { "ok" } else { "FAIL" }
        );
    }
}

fn transcript(out: &mut String, calls: &[&OpResult]) {
    let _ = writeln!(out, "  WSP calls (provider script):");
    for c in calls {
        let _ = writeln!(out, "      {}", c.show());
    }
}

fn secs(ns: i128) -> f64 {
    ns as f64 / 1e9
}

/// A row's checks against the capture: (the connection's frames, the row, the report).
type WireChecks = Box<dyn FnOnce(&Wire, &mut Row, &mut String)>;

/// Everything the four rows leave to check once the capture is in.
struct Pending {
    title: String,
    /// The kernel end of the connection.
    kport: u16,
    /// Header lines (setup, calls, kernel-side results).
    text: String,
    /// The close call everything is timed against.
    t0: u64,
    marks: Vec<(u64, String)>,
    row: Row,
    wire_checks: WireChecks,
}

fn accept(s: &mut Script, lab: &Lab, rcvbuf: Option<i32>) -> Result<(TcpStream, OpResult)> {
    let to = SocketAddrV4::new(lab.provider_v4, PORT);
    let k = kernel_connect(&lab.peer_ns_path(), to, rcvbuf)?;
    // `accept` acts on the current handle: the listener is handle 1.
    let a = s.calls(&["use 1", "accept"])?.remove(1);
    if !a.ok() {
        bail!("accept failed: {}", a.v);
    }
    Ok((k, a))
}

fn kernel_desc(k: &TcpStream, rcvbuf: Option<i32>) -> String {
    format!(
        "  kernel client {} → provider {}:{PORT}, SO_RCVBUF {}",
        k.local_addr().map_or("?".into(), |a| a.to_string()),
        crate::lab::PROVIDER_V4,
        rcvbuf.map_or("default".into(), |r| format!(
            "{r} (set before connect; the kernel doubles it)"
        ))
    )
}

fn row1(s: &mut Script, lab: &Lab) -> Result<Pending> {
    let mut row = Row::new("row 1  SO_DONTLINGER close after 1 MiB");
    let mut text = String::new();
    let (k, a) = accept(s, lab, None)?;
    let kport = k.local_addr()?.port();
    let _ = writeln!(text, "{}", kernel_desc(&k, None));
    let mut kk = k.try_clone()?;
    let reader = thread::spawn(move || drain(&mut kk, 0));
    let opt = s.call("setsockopt dontlinger 1")?;
    let r = s.calls(&[&format!("sendall {ROW1_BYTES}"), "close"])?;
    let (send, close) = (&r[0], &r[1]);
    let got = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))?;
    drop(k);
    transcript(&mut text, &[&a, &opt, send, close]);
    let sent_sha = sha256_hex(&pattern(0, ROW1_BYTES));
    let _ = writeln!(
        text,
        "  kernel received {} bytes, then {}\n    sha256 sent      {sent_sha}\n    sha256 received  {}",
        got.bytes,
        end_name(&got.end),
        got.sha256
    );
    row.check(
        send.ret() == ROW1_BYTES as i64,
        format!("sendall {ROW1_BYTES} took every byte ({})", send.ret()),
    );
    row.check(
        close.ok() && close.ret() == 0 && close.dur() < Duration::from_millis(50),
        format!(
            "close returned {} at once: {} (limit 50 ms)",
            close.error().unwrap_or("0"),
            dur(close.dur())
        ),
    );
    row.check(
        got.bytes == ROW1_BYTES && got.end.is_ok() && got.sha256 == sent_sha,
        format!(
            "the kernel got every byte, then EOF: {} bytes, {}, SHA-256 {}",
            got.bytes,
            end_name(&got.end),
            if got.sha256 == sent_sha {
                "equal"
            } else {
                "DIFFERENT"
            }
        ),
    );
    let t0 = close.wall_ns;
    let close_dur = close.dur();
    Ok(Pending {
        title: row.title.clone(),
        kport,
        text,
        t0,
        marks: vec![(t0, format!("WSPCloseSocket → 0 after {}", dur(close_dur)))],
        row,
        wire_checks: Box::new(move |w, row, out| {
            let after: u64 = w
                .provider()
                .filter(|x| x.ts > t0 && x.len > 0)
                .map(|x| u64::from(x.len))
                .sum();
            let _ = writeln!(
                out,
                "  measured: close returned after {}; {after} of {ROW1_BYTES} bytes went on the wire after the call",
                dur(close_dur)
            );
            match w.graceful(ROW1_BYTES) {
                Ok((fin_seq, fin_ts)) => row.check(
                    true,
                    format!(
                        "FIN seq {fin_seq} = provider ISN {} + 1 + {ROW1_BYTES}, after the last data byte, at {:+.6} s; no RST",
                        w.provider_isn.unwrap_or(0),
                        secs(fin_ts as i128 - t0 as i128)
                    ),
                ),
                Err(e) => row.check(false, format!("graceful on the wire: {e}")),
            }
        }),
    })
}

fn row2(s: &mut Script, lab: &Lab) -> Result<Pending> {
    let mut row = Row::new("row 2  SO_LINGER {1,0}: hard close");
    let mut text = String::new();
    let (mut k, a) = accept(s, lab, None)?;
    let kport = k.local_addr()?.port();
    let _ = writeln!(text, "{}", kernel_desc(&k, None));
    k.write_all(&pattern(0, ROW2_IN))?;
    let r = s.calls(&[
        &format!("recv_all {ROW2_IN}"),
        &format!("sendall {ROW2_OUT}"),
    ])?;
    let mut got = vec![0u8; ROW2_OUT];
    let read = k.read_exact(&mut got);
    let r2 = s.calls(&["setsockopt linger 1 0", "close"])?;
    let close = &r2[1];
    let after = drain(&mut k, ROW2_OUT);
    transcript(&mut text, &[&a, &r[0], &r[1], &r2[0], close]);
    let _ = writeln!(
        text,
        "  kernel sent {ROW2_IN} bytes, read {} bytes ({}), then recv → {}",
        if read.is_ok() { ROW2_OUT } else { 0 },
        if read.is_ok() && got == pattern(0, ROW2_OUT) {
            "as sent"
        } else {
            "NOT as sent"
        },
        end_name(&after.end)
    );
    row.check(
        r[0].ret() == ROW2_IN as i64 && r[0].v["verify"] == "ok" && r[1].ret() == ROW2_OUT as i64,
        format!(
            "the provider received {} bytes (verify {}) and sent {}",
            r[0].ret(),
            r[0].v["verify"],
            r[1].ret()
        ),
    );
    row.check(
        close.ok() && close.ret() == 0,
        format!(
            "close returned {} after {}",
            close.error().unwrap_or("0"),
            dur(close.dur())
        ),
    );
    let reset = matches!(&after.end, Err(e) if e.kind() == ErrorKind::ConnectionReset);
    row.check(
        reset && after.bytes == 0,
        format!(
            "the kernel client's recv failed with ECONNRESET ({}, {} more bytes)",
            end_name(&after.end),
            after.bytes
        ),
    );
    let t0 = close.wall_ns;
    Ok(Pending {
        title: row.title.clone(),
        kport,
        text,
        t0,
        marks: vec![(t0, format!("WSPCloseSocket → 0 after {}", dur(close.dur())))],
        row,
        wire_checks: Box::new(move |w, row, out| {
            let rsts = w.rsts();
            row.check(
                rsts.len() == 1,
                format!(
                    "exactly one RST from the provider ({} captured)",
                    rsts.len()
                ),
            );
            row.check(
                w.fins().is_empty(),
                format!("no FIN from the provider ({})", w.fins().len()),
            );
            if let (Some(r), Some(pisn), Some(kisn)) = (rsts.first(), w.provider_isn, w.kernel_isn)
            {
                let want_seq = pisn.wrapping_add(1).wrapping_add(ROW2_OUT as u32);
                let want_ack = kisn.wrapping_add(1).wrapping_add(ROW2_IN as u32);
                let _ = writeln!(
                    out,
                    "  measured: RST {:+.6} s after the call; SND.NXT on the wire before it {}, RCV.NXT {}",
                    secs(r.ts as i128 - t0 as i128),
                    w.snd_nxt_before(r.ts).map_or("?".into(), |x| x.to_string()),
                    w.rcv_nxt_before(r.ts).map_or("?".into(), |x| x.to_string()),
                );
                row.check(
                    r.seq == want_seq,
                    format!(
                        "RST SEQ {} = provider ISN {pisn} + 1 + {ROW2_OUT} bytes sent = {want_seq} (SND.NXT)",
                        r.seq
                    ),
                );
                row.check(
                    r.ackf && r.ack == want_ack,
                    format!(
                        "RST ACK {} = kernel ISN {kisn} + 1 + {ROW2_IN} bytes received = {want_ack} (RCV.NXT){}",
                        r.ack,
                        if r.ackf { "" } else { ", but no ACK flag" }
                    ),
                );
            } else {
                row.check(false, "RST, SYN and SYN-ACK captured");
            }
        }),
    })
}

fn row3(s: &mut Script, lab: &Lab) -> Result<Pending> {
    let mut row = Row::new(format!(
        "row 3  SO_LINGER {{1,{ROW3_LINGER}}} blocking, kernel not reading"
    ));
    let mut text = String::new();
    let (mut k, a) = accept(s, lab, Some(SMALL_RCVBUF))?;
    let kport = k.local_addr()?.port();
    let _ = writeln!(
        text,
        "{}; it does not read until close has returned",
        kernel_desc(&k, Some(SMALL_RCVBUF))
    );
    let r = s.calls(&[
        &format!("sendall {STUCK_BYTES}"),
        "sleep 300",
        &format!("setsockopt linger 1 {ROW3_LINGER}"),
        "close",
    ])?;
    let close = &r[3];
    let after = drain(&mut k, 0);
    transcript(&mut text, &[&a, &r[0], &r[1], &r[2], close]);
    let _ = writeln!(
        text,
        "  then the kernel read {} bytes ({}) and recv → {}",
        after.bytes,
        if after.matches_pattern {
            "as sent"
        } else {
            "NOT as sent"
        },
        end_name(&after.end)
    );
    let took = close.dur().as_secs_f64();
    row.check(
        r[0].ret() == STUCK_BYTES as i64,
        format!("sendall {STUCK_BYTES} queued every byte ({})", r[0].ret()),
    );
    row.check(
        close.ok() && (ROW3_RANGE.0..=ROW3_RANGE.1).contains(&took),
        format!(
            "close returned {} after {took:.3} s (accepted {}–{} s)",
            close.error().unwrap_or("0"),
            ROW3_RANGE.0,
            ROW3_RANGE.1
        ),
    );
    let reset = matches!(&after.end, Err(e) if e.kind() == ErrorKind::ConnectionReset);
    row.check(
        reset && after.bytes < STUCK_BYTES,
        format!(
            "the kernel drained {} of {STUCK_BYTES} bytes, then ECONNRESET ({})",
            after.bytes,
            end_name(&after.end)
        ),
    );
    let t0 = close.wall_ns;
    let end = t0 + close.dur().as_nanos() as u64;
    Ok(Pending {
        title: row.title.clone(),
        kport,
        text,
        t0,
        marks: vec![
            (
                t0,
                format!("WSPCloseSocket called (linger {ROW3_LINGER} s)"),
            ),
            (end, format!("WSPCloseSocket → 0 after {took:.3} s")),
        ],
        row,
        wire_checks: Box::new(move |w, row, out| {
            let rsts = w.rsts();
            row.check(
                rsts.len() == 1,
                format!(
                    "exactly one RST from the provider ({} captured)",
                    rsts.len()
                ),
            );
            if let Some(r) = rsts.first() {
                let at = secs(r.ts as i128 - t0 as i128);
                let (acked, flight, queued) = w.progress_at(t0, STUCK_BYTES).unwrap_or_default();
                let _ = writeln!(
                    out,
                    "  measured: close took {took:.3} s; RST on the wire {at:+.6} s after the call\n  at the call: {acked} of {STUCK_BYTES} bytes acknowledged, {flight} in flight, {queued} queued behind the kernel's zero window"
                );
                row.check(
                    (ROW3_RANGE.0..=ROW3_RANGE.1).contains(&at),
                    format!("the RST is on the wire at the deadline: {at:.3} s after the call"),
                );
                let (nxt, rcv) = (w.snd_nxt_before(r.ts), w.rcv_nxt_before(r.ts));
                row.check(
                    Some(r.seq) == nxt && r.ackf && Some(r.ack) == rcv,
                    format!(
                        "RST SEQ {} = SND.NXT {}, ACK {} = RCV.NXT {}",
                        r.seq,
                        nxt.map_or("?".into(), |x| x.to_string()),
                        r.ack,
                        rcv.map_or("?".into(), |x| x.to_string())
                    ),
                );
            }
            row.check(
                w.fins().is_empty(),
                format!("no FIN got past the full window ({} FIN)", w.fins().len()),
            );
        }),
    })
}

fn row4(s: &mut Script, lab: &Lab) -> Result<Pending> {
    let mut row = Row::new(format!(
        "row 4  SO_LINGER {{1,{ROW4_LINGER}}} nonblocking, data unacknowledged"
    ));
    let mut text = String::new();
    let (k, a) = accept(s, lab, Some(SMALL_RCVBUF))?;
    let kport = k.local_addr()?.port();
    let _ = writeln!(
        text,
        "{}; it reads only after the first close",
        kernel_desc(&k, Some(SMALL_RCVBUF))
    );
    let r = s.calls(&[
        "ioctl fionbio 1",
        &format!("setsockopt linger 1 {ROW4_LINGER}"),
        &format!("sendall {STUCK_BYTES}"),
        "sleep 300",
        "close",
        "getsockopt linger",
        "ioctl fionread",
        "getpeername",
    ])?;
    let first = r[4].clone();
    proc::sleep(QUIET.saturating_sub(first.dur()))?;
    // The kernel now reads everything, then waits for the EOF.
    let read_from = realtime_ns();
    let (tx, rx) = mpsc::channel();
    let mut kk = k.try_clone()?;
    let reader = thread::spawn(move || {
        let mut buf = vec![0u8; STUCK_BYTES];
        let full = kk.read_exact(&mut buf).is_ok() && buf == pattern(0, STUCK_BYTES);
        let _ = tx.send((full, realtime_ns()));
        (full, drain(&mut kk, STUCK_BYTES))
    });
    let (full, all_read) = rx.recv_timeout(WAIT).unwrap_or((false, realtime_ns()));
    // Retry the close until it succeeds (or 5 s): WSAEWOULDBLOCK while anything is unacked.
    let mut retries = Vec::new();
    let give_up = Instant::now() + Duration::from_secs(5);
    let last = loop {
        let c = s.call("close")?;
        if c.error() != Some("WSAEWOULDBLOCK") || Instant::now() > give_up {
            break c;
        }
        retries.push(c);
        s.call("sleep 20")?;
    };
    let (_, rest) = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))?;
    drop(k);
    let mut shown: Vec<&OpResult> = vec![&a];
    shown.extend(r.iter());
    shown.extend(retries.iter().take(1));
    if retries.len() > 1 {
        let _ = writeln!(
            text,
            "  ({} more close retries → WSAEWOULDBLOCK)",
            retries.len() - 1
        );
    }
    shown.push(&last);
    transcript(&mut text, &shown);
    let _ = writeln!(
        text,
        "  the kernel started reading {:.3} s after the first close, read {STUCK_BYTES} bytes ({}), then {}",
        secs(read_from as i128 - first.wall_ns as i128),
        if full {
            "as sent"
        } else {
            "NOT all, or not as sent"
        },
        if rest.bytes == 0 {
            end_name(&rest.end)
        } else {
            format!("{} more bytes and {}", rest.bytes, end_name(&rest.end))
        }
    );
    row.check(
        r[2].ret() == STUCK_BYTES as i64,
        format!("sendall {STUCK_BYTES} queued every byte ({})", r[2].ret()),
    );
    row.check(
        first.error() == Some("WSAEWOULDBLOCK"),
        format!(
            "close gave {} after {}",
            first.error().unwrap_or("0 (not WSAEWOULDBLOCK)"),
            dur(first.dur())
        ),
    );
    row.check(
        r[5].ok()
            && r[5].v["linger"] == serde_json::json!([1, ROW4_LINGER])
            && r[6].ok()
            && r[7].ok(),
        format!(
            "the handle still works: getsockopt linger → {}, FIONREAD → {}, getpeername → {}",
            r[5].v["linger"],
            r[6].error().map_or(r[6].ret().to_string(), str::to_owned),
            r[7].error().or(r[7].v["addr"].as_str()).unwrap_or("?")
        ),
    );
    row.check(
        last.ok() && last.ret() == 0,
        format!(
            "the retry after the kernel read everything returned {} ({} WSAEWOULDBLOCK retries before)",
            last.error().unwrap_or("0"),
            retries.len()
        ),
    );
    row.check(
        full && rest.bytes == 0 && rest.end.is_ok(),
        format!(
            "the kernel got all {STUCK_BYTES} bytes as sent, then EOF ({})",
            end_name(&rest.end)
        ),
    );
    let t0 = first.wall_ns;
    let retry_at = last.wall_ns;
    let mut marks = vec![
        (t0, "WSPCloseSocket → WSAEWOULDBLOCK".to_string()),
        (
            r[5].wall_ns,
            "getsockopt linger, FIONREAD, getpeername: the handle works".to_string(),
        ),
        (read_from, "the kernel starts reading".to_string()),
        (
            all_read,
            format!("the kernel has read all {STUCK_BYTES} bytes"),
        ),
    ];
    if let Some(r1) = retries.first() {
        marks.push((
            r1.wall_ns,
            format!("close retry → WSAEWOULDBLOCK ×{}", retries.len()),
        ));
    }
    marks.push((
        retry_at,
        format!("close retry → {}", last.error().unwrap_or("0")),
    ));
    marks.sort_by_key(|m| m.0);
    Ok(Pending {
        title: row.title.clone(),
        kport,
        text,
        t0,
        marks,
        row,
        wire_checks: Box::new(move |w, row, out| {
            let quiet: Vec<&Seg> = w
                .provider()
                .filter(|x| x.ts >= t0 && x.ts < read_from)
                .collect();
            let (acked, flight, queued) = w.progress_at(t0, STUCK_BYTES).unwrap_or_default();
            let _ = writeln!(
                out,
                "  measured: at the call {acked} of {STUCK_BYTES} bytes acknowledged, {flight} in flight, {queued} queued behind the kernel's zero window;\n  the provider sent {} frames in the {:.3} s from the call until the kernel started reading",
                quiet.len(),
                secs(read_from as i128 - t0 as i128)
            );
            let unacked = flight + queued;
            row.check(
                unacked > 0,
                format!("data unacknowledged at the call ({unacked} of {STUCK_BYTES} bytes, per the capture)"),
            );
            row.check(
                quiet.is_empty(),
                format!(
                    "no frame at all from the provider after WSAEWOULDBLOCK ({} in {:.3} s)",
                    quiet.len(),
                    secs(read_from as i128 - t0 as i128)
                ),
            );
            let early = w
                .provider()
                .filter(|x| (x.fin || x.rst) && x.ts < retry_at)
                .count();
            row.check(
                early == 0,
                format!("no FIN or RST before the successful retry ({early})"),
            );
            match w.graceful(STUCK_BYTES) {
                Ok((fin_seq, fin_ts)) => row.check(
                    fin_ts >= retry_at,
                    format!(
                        "graceful: FIN seq {fin_seq} = provider ISN {} + 1 + {STUCK_BYTES}, after the last byte, {:+.6} s after the retry; no RST",
                        w.provider_isn.unwrap_or(0),
                        secs(fin_ts as i128 - retry_at as i128)
                    ),
                ),
                Err(e) => row.check(false, format!("graceful on the wire: {e}")),
            }
        }),
    })
}

/// The TCP part of the demo: its report, and one check per row (plus the counters).
pub fn run(lab: &Lab, bin: &Path, tmp: &Path) -> Result<(String, Vec<(bool, String)>)> {
    let pcap: PathBuf = tmp.join("tcp.pcap");
    eprintln!(
        "==> tcpdump -w {} on {} (peer namespace)",
        pcap.display(),
        lab.peer_if
    );
    let mut tcpdump = Proc::spawn(
        "tcpdump",
        &mut lab.peer_capture_cmd(&pcap, &["tcp", "port", &PORT.to_string()]),
    )?;
    tcpdump.wait_stderr("listening on", Duration::from_secs(10))?;
    let peer_before = tcp_counters(&lab.peer_ns_path())?;
    let prov_before = tcp_counters(&lab.provider_ns_path())?;

    eprintln!(
        "==> provider script on {} (provider namespace), listening on TCP {PORT}",
        lab.provider_if
    );
    let mut s = Script::spawn(lab, bin)?;
    s.calibrate()?;
    let setup = s.calls(&["socket tcp", &format!("bind 0.0.0.0:{PORT}"), "listen 8"])?;
    if let Some(bad) = setup.iter().find(|r| !r.ok()) {
        bail!("listener set-up failed: {}", bad.v);
    }
    let mut pending = Vec::new();
    eprintln!("==> row 1: SO_DONTLINGER");
    pending.push(row1(&mut s, lab)?);
    eprintln!("==> row 2: SO_LINGER {{1,0}}");
    pending.push(row2(&mut s, lab)?);
    eprintln!("==> row 3: SO_LINGER {{1,{ROW3_LINGER}}} blocking");
    pending.push(row3(&mut s, lab)?);
    eprintln!("==> row 4: SO_LINGER {{1,{ROW4_LINGER}}} nonblocking");
    pending.push(row4(&mut s, lab)?);
    let close_listener = s.calls(&["use 1", "close"])?;
    let (done, status) = s.finish()?;
    let offset_err = s.offset_err;
    drop(s);
    // Let the last frames reach the capture, then stop it (SIGTERM: it flushes).
    proc::sleep(Duration::from_millis(100))?;
    let peer_after = tcp_counters(&lab.peer_ns_path())?;
    let prov_after = tcp_counters(&lab.provider_ns_path())?;
    tcpdump.stop();
    let frames = read_pcap(&std::fs::read(&pcap).context("read the capture")?)?;
    let segs = decode(&frames, lab.provider_v4);

    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n=== TCP: WSPCloseSocket and SO_LINGER against the kernel's TCP (DESIGN §7) ===\n  provider script (--min-rto-ms {MIN_RTO_MS}: zero-window probes ≥ 2 s apart) listening on {}:{PORT}; kernel clients in netns {}\n  wire: tcpdump -w on {} (peer side), {} TCP frames; times are seconds from each row's close call\n  (script clock tied to the capture clock ±{} µs)",
        lab.provider_v4,
        lab.peer_ns,
        lab.peer_if,
        segs.len(),
        offset_err.as_micros()
    );
    let mut verdicts = Vec::new();
    let mut provider_frames = 0;
    let mut bad_checksums = 0;
    for p in pending {
        let w = Wire::new(flow(&segs, p.kport));
        provider_frames += w.provider().count();
        bad_checksums += w
            .provider()
            .filter(|x| x.checksum_ok == Some(false))
            .count();
        let _ = writeln!(out, "\n--- {} ---", p.title);
        out.push_str(&p.text);
        let _ = writeln!(
            out,
            "  wire ({} frames; seq/ack absolute; provider ISN {}, kernel ISN {}):",
            w.segs.len(),
            w.provider_isn.map_or("?".into(), |x| x.to_string()),
            w.kernel_isn.map_or("?".into(), |x| x.to_string())
        );
        print_wire(&mut out, &w, p.t0, &p.marks);
        let mut row = p.row;
        (p.wire_checks)(&w, &mut row, &mut out);
        row.print(&mut out);
        verdicts.push((row.ok(), row.title.clone()));
    }

    let mut row = Row::new("counters");
    let _ = writeln!(
        out,
        "\n--- counters: kernel TCP in both namespaces (/proc/net/snmp, /proc/net/netstat; change over the TCP part) ---"
    );
    let names = [
        "TcpActiveOpens",
        "TcpEstabResets",
        "TcpInSegs",
        "TcpOutSegs",
        "TcpRetransSegs",
        "TcpInErrs",
        "TcpInCsumErrors",
        "TcpOutRsts",
        "TcpExtTCPToZeroWindowAdv",
        "TcpExtTCPFromZeroWindowAdv",
        "TcpExtTCPAbortOnData",
    ];
    let _ = writeln!(out, "  {:<28} {:>8} {:>10}", "", "peer", "provider");
    for n in names {
        let _ = writeln!(
            out,
            "  {n:<28} {:>8} {:>10}",
            counter_delta(&peer_before, &peer_after, n),
            counter_delta(&prov_before, &prov_after, n)
        );
    }
    let d = |n: &str| counter_delta(&peer_before, &peer_after, n);
    let _ = writeln!(
        out,
        "  provider script: {} calls ({} answered with a WSA error: row 4's WSAEWOULDBLOCK), exited with {status}; listener close → {}",
        done["ops"],
        done["errors"],
        close_listener[1].error().unwrap_or("0")
    );
    row.check(
        d("TcpActiveOpens") == 4 && d("TcpEstabResets") == 2,
        format!(
            "the kernel opened 4 connections and saw 2 of them reset (rows 2 and 3): {} / {}",
            d("TcpActiveOpens"),
            d("TcpEstabResets")
        ),
    );
    row.check(
        d("TcpInCsumErrors") == 0 && d("TcpInErrs") == 0 && bad_checksums == 0,
        format!(
            "checksums: the kernel rejected none ({} in-csum errors), and all {provider_frames} provider frames captured verify ({bad_checksums} bad)",
            d("TcpInCsumErrors")
        ),
    );
    let prov_in = counter_delta(&prov_before, &prov_after, "TcpInSegs");
    row.check(
        prov_in == 0,
        format!(
            "steering: the provider namespace's own kernel TCP received {prov_in} segments (XDP handed all of port {PORT} to the provider)"
        ),
    );
    row.check(
        status.success(),
        format!("provider script exited cleanly ({status})"),
    );
    row.print(&mut out);
    verdicts.push((row.ok(), "TCP counters and checksums".to_string()));
    Ok((out, verdicts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_known_answers() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let long = b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
        assert_eq!(
            sha256_hex(long),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
        // Incremental in odd pieces = one shot.
        let data = pattern(0, 10_000);
        let mut h = Sha256::default();
        for c in data.chunks(77) {
            h.update(c);
        }
        assert_eq!(h.hex(), sha256_hex(&data));
    }

    #[test]
    fn decodes_a_tcp_frame_and_its_checksum() {
        // Ethernet + IPv4 + TCP SYN with a correct checksum, 198.18.0.1:5000 → 198.18.0.2:40000.
        let mut f = vec![0u8; 14];
        f[12] = 0x08;
        let mut ip = vec![
            0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, 198, 18, 0, 1, 198, 18, 0, 2,
        ];
        let mut tcp = vec![0u8; 20];
        tcp[0..2].copy_from_slice(&5000u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&40000u16.to_be_bytes());
        tcp[4..8].copy_from_slice(&7u32.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = 0x12;
        tcp[14..16].copy_from_slice(&1000u16.to_be_bytes());
        let mut acc = ones_sum(0, &ip[12..20]) + 6 + 20;
        acc = ones_sum(acc, &tcp);
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        tcp[16..18].copy_from_slice(&(!(acc as u16)).to_be_bytes());
        f.append(&mut ip);
        f.extend_from_slice(&tcp);
        let segs = decode(&[(5, f.len(), f.clone())], crate::lab::PROVIDER_V4);
        assert_eq!(segs.len(), 1);
        let s = &segs[0];
        assert!(s.from_provider && s.syn && s.ackf && !s.fin);
        assert_eq!(
            (s.sport, s.dport, s.seq, s.len, s.win),
            (5000, 40000, 7, 0, 1000)
        );
        assert_eq!(s.end(), 8);
        assert_eq!(s.checksum_ok, Some(true));
        assert_eq!(s.flags(), "[S.]");
        f[40] ^= 1;
        assert_eq!(
            decode(&[(5, f.len(), f)], crate::lab::PROVIDER_V4)[0].checksum_ok,
            Some(false)
        );
    }

    #[test]
    fn pcap_round_trip_and_sequence_order() {
        let mut b = Vec::new();
        b.extend_from_slice(&0xa1b2_3c4du32.to_le_bytes());
        b.extend_from_slice(&[0; 20]);
        for (sec, ns) in [(1u32, 5u32), (2, 7)] {
            for x in [sec, ns, 3, 3] {
                b.extend_from_slice(&x.to_le_bytes());
            }
            b.extend_from_slice(&[1, 2, 3]);
        }
        let f = read_pcap(&b).unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(f[1].0, 2_000_000_007);
        assert_eq!(f[0].2, vec![1, 2, 3]);
        assert!(seq_gt(5, u32::MAX - 5));
        assert!(!seq_gt(u32::MAX - 5, 5));
    }
}
