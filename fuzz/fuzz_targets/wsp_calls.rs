//! The WSP calls against a script of misuse.
//!
//! One `Provider` over a `LoopbackDatapath` per process (TCP and UDP between its own sockets
//! work; short TCP timers so closed connections drain quickly). Each input is a script of WSP
//! calls on a small pool of handles — sockets the script created (every one made nonblocking
//! right away, so nothing ever blocks), duplicates, accepted sockets, handles of sockets it
//! closed, and made-up handles — with arguments drawn from the bytes: families, types and
//! protocols (invalid ones too), the loopback's addresses, unspecified, foreign and v4-mapped
//! addresses on a few colliding ports, backlogs, buffers of 0–65 535 bytes, SD_* values,
//! option levels/names/values of every length (SO_LINGER with every l_onoff/l_linger
//! combination), ioctl codes, event selections, overlapped sends/receives through each
//! completion mechanism, non-waiting `get_overlapped_result`, link down/up. At the end every
//! handle is closed.
//!
//! Checked: no panic; each call's error is one its documentation (README tables, module docs)
//! lists for it, never WSAEINTR/WSAEINPROGRESS (nothing blocks) and never WSAENOTSOCK on a live
//! handle; every call on a closed or made-up handle gives WSAENOTSOCK (generations: a closed
//! handle never reaches a newer socket in its slot); sends/receives never report more than the
//! buffer; FIONREAD is what the next receive gets at least (stream) / exactly (datagram); the
//! provider's socket and handle counts follow the script after every call; recorded network
//! events carry valid codes; every overlapped operation that was accepted completes exactly
//! once (at the latest with WSA_OPERATION_ABORTED at close), within its buffers; at the end the
//! socket table, the UDP demux and (once the engine's connections are gone) the STEER entries
//! are back where they were.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use WsaError::*;
use libfuzzer_sys::fuzz_target;
use provider::api::loopback::{LOOPBACK_V4, LOOPBACK_V6};
use provider::api::{
    Completion, CompletionQueue, FD_ALL, FD_MAX_EVENTS, LoopbackDatapath, Overlapped, Provider,
    ProviderConfig, ProviderStats, WsaEvent,
};
use provider::socket::{INVALID_SOCKET, Socket, WsaError, WspResult};
use provider::tcp::TcpConfig;

// Winsock values, spelled out here (an independent oracle, not the provider's constants).
const AF_INET: i32 = 2;
const AF_INET6: i32 = 23;
const SOCK_STREAM: i32 = 1;
const SOCK_DGRAM: i32 = 2;
const SOL_SOCKET: i32 = 0xffff;
const IPPROTO_TCP: i32 = 6;
const SO_REUSEADDR: i32 = 0x0004;
const SO_KEEPALIVE: i32 = 0x0008;
const SO_LINGER: i32 = 0x0080;
const SO_DONTLINGER: i32 = !SO_LINGER;
const SO_SNDBUF: i32 = 0x1001;
const SO_RCVBUF: i32 = 0x1002;
const SO_ERROR: i32 = 0x1007;
const SO_TYPE: i32 = 0x1008;
const TCP_NODELAY: i32 = 0x0001;
const FIONBIO: u32 = 0x8004_667E;
const FIONREAD: u32 = 0x4004_667F;

const MAX_LIVE: usize = 10;
const MAX_STALE: usize = 8;
const MAX_OVS: usize = 8;
const SIZES: [usize; 12] = [
    0, 1, 7, 100, 1000, 1452, 1472, 1473, 4096, 20000, 65507, 65536,
];
const PORTS: [u16; 8] = [0, 9, 80, 443, 61000, 61001, 61007, 65535];
const EPHEMERAL: std::ops::RangeInclusive<u16> = 61000..=61007;

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
    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[usize::from(self.u8()) % from.len()]
    }
    fn bool(&mut self) -> bool {
        self.u8() & 1 != 0
    }
}

struct Fixture {
    p: Arc<Provider>,
    dp: Arc<LoopbackDatapath>,
}

/// One provider for the whole process: its pump thread and completion thread are started once.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let tcp = TcpConfig {
            initial_rto: Duration::from_millis(20),
            min_rto: Duration::from_millis(10),
            max_rto: Duration::from_millis(100),
            time_wait: Duration::from_millis(20),
            delayed_ack: Duration::from_millis(2),
            send_buffer: 16 << 10,
            recv_buffer: 16 << 10,
            syn_backlog: 8,
            syn_retries: 2,
            data_retries: 3,
            keepalive_idle: Duration::from_millis(30),
            keepalive_interval: Duration::from_millis(10),
            keepalive_probes: 2,
            orphan_timeout: Duration::from_millis(200),
            ..TcpConfig::default()
        };
        let cfg = ProviderConfig {
            max_sockets: 8,
            ephemeral_ports: EPHEMERAL,
            default_rcvbuf: 16 << 10,
            default_sndbuf: 16 << 10,
            tcp,
            // Two TCP engines, so the calls also cross shards (listeners in both, accept
            // rotating, connect choosing a port for a shard).
            tcp_shards: 2,
            rss: None,
            rx_queues: 1,
        };
        let (p, dp) = LoopbackDatapath::provider(cfg);
        dp.record_sent(false);
        dp.record_steer_ops(false);
        Fixture { p, dp }
    })
}

fn ip(b: u8) -> IpAddr {
    match b % 12 {
        0 | 1 => IpAddr::V4(LOOPBACK_V4),
        2 | 3 => IpAddr::V6(LOOPBACK_V6),
        4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        5 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        6 => IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)),
        7 => IpAddr::V6("2001:db8::2".parse().unwrap()),
        8 => IpAddr::V6(LOOPBACK_V4.to_ipv6_mapped()),
        9 => IpAddr::V4(Ipv4Addr::LOCALHOST),
        10 => IpAddr::V4(Ipv4Addr::BROADCAST),
        _ => IpAddr::V6(Ipv6Addr::LOCALHOST),
    }
}

/// A handle as the script names it.
#[derive(Clone, Copy, Debug)]
enum Ref {
    /// `pool[i]`.
    Live(usize),
    /// Closed by the script, or never valid.
    Dead(Socket),
}

#[derive(Clone, Copy, Debug)]
struct Handle {
    s: Socket,
    /// Handles of one socket (duplicates) share a group.
    group: u32,
    stream: bool,
    v6: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mech {
    Poll,
    Event,
    Routine,
    Queue,
}

struct Ov {
    ov: Overlapped,
    mech: Mech,
    event: Option<Arc<WsaEvent>>,
    key: u64,
    /// Group of the socket of the last operation issued, and whether it was a receive.
    group: u32,
    recv: bool,
    /// Capacity of the last operation's buffers.
    cap: usize,
    /// The last issue was accepted (Ok / WSA_IO_PENDING): it is reported through the mechanism.
    reported: bool,
}

/// Completions the mechanisms must deliver: at least `min`, at most `max`.
#[derive(Default)]
struct Expect {
    min: usize,
    max: usize,
}

struct Run<'a> {
    p: &'a Provider,
    dp: &'a LoopbackDatapath,
    inp: Input<'a>,
    base: ProviderStats,
    pool: Vec<Handle>,
    stale: Vec<Socket>,
    next_group: u32,
    ovs: Vec<Ov>,
    /// Descriptors dropped from `ovs` (not pending then); their completions may still be queued.
    retired: Vec<Ov>,
    events: [Arc<WsaEvent>; 2],
    queue: Arc<CompletionQueue>,
    routine_runs: Arc<AtomicUsize>,
    routines: Expect,
    queued: Expect,
    link_down: bool,
}

/// Errors a receive on a stream can give on a live handle.
const STREAM_IO: &[WsaError] = &[
    WSAENOTCONN,
    WSAESHUTDOWN,
    WSAEWOULDBLOCK,
    WSAECONNRESET,
    WSAECONNABORTED,
    WSAETIMEDOUT,
];
const SEND_TO_UDP: &[WsaError] = &[
    WSAEFAULT,
    WSAEADDRNOTAVAIL,
    WSAEMSGSIZE,
    WSAENETDOWN,
    WSAENOBUFS,
    WSAENETUNREACH,
    WSAEHOSTUNREACH,
];

fn cat(parts: &[&[WsaError]]) -> Vec<WsaError> {
    parts.iter().flat_map(|p| p.iter().copied()).collect()
}

impl<'a> Run<'a> {
    fn socket_of(&self, r: Ref) -> Socket {
        match r {
            Ref::Live(i) => self.pool[i].s,
            Ref::Dead(s) => s,
        }
    }

    /// A handle: mostly live ones, else stale or made-up ones that can never be valid.
    fn pick(&mut self) -> Ref {
        let b = self.inp.u8();
        if b < 0xe0 && !self.pool.is_empty() {
            return Ref::Live(usize::from(b) % self.pool.len());
        }
        let x = u64::from(self.inp.u8());
        match b % 6 {
            0 | 1 if !self.stale.is_empty() => {
                Ref::Dead(self.stale[usize::from(b) % self.stale.len()])
            }
            0 => Ref::Dead(Socket::from_raw(0)),
            1 => Ref::Dead(INVALID_SOCKET),
            // Generations 0 and u32::MAX are never handed out.
            2 => Ref::Dead(Socket::from_raw(x)),
            3 => Ref::Dead(Socket::from_raw((u64::from(u32::MAX) << 32) | x)),
            4 => Ref::Dead(Socket::from_raw(x << 32)),
            _ => Ref::Dead(Socket::from_raw(u64::MAX - 1)),
        }
    }

    /// Check a call's result against the documented codes.
    fn check<T: std::fmt::Debug>(&self, call: &str, r: &WspResult<T>, who: Ref, ok: &[WsaError]) {
        if trace() {
            let h = match who {
                Ref::Live(i) => format!("{:?}", self.pool[i]),
                Ref::Dead(s) => format!("dead {s:?}"),
            };
            eprintln!("TRACE {call} on {h}: {r:?}");
        }
        match (who, r) {
            (Ref::Dead(s), r) => assert!(
                matches!(r, Err(WSAENOTSOCK)),
                "{call} on dead handle {s:?} gave {r:?}, want WSAENOTSOCK"
            ),
            (Ref::Live(i), Err(e)) => assert!(
                ok.contains(e),
                "{call} on live {:?} gave {e:?} ({}), not one of {ok:?}",
                self.pool[i],
                e.code()
            ),
            (Ref::Live(_), Ok(_)) => {}
        }
    }

    fn groups(&self) -> usize {
        let mut g: Vec<u32> = self.pool.iter().map(|h| h.group).collect();
        g.sort_unstable();
        g.dedup();
        g.len()
    }

    fn check_counts(&self, when: &str) {
        let st = self.p.stats();
        assert_eq!(
            st.sockets_open,
            self.base.sockets_open + self.groups() as u64,
            "sockets_open after {when}"
        );
        assert_eq!(
            st.handles_open,
            self.base.handles_open + self.pool.len() as u64,
            "handles_open after {when}"
        );
    }

    /// Add a new socket (own group) to the pool, made nonblocking; closed at once if full.
    fn adopt(&mut self, s: Socket, stream: bool, v6: bool, group: Option<u32>) {
        let group = group.unwrap_or_else(|| {
            self.next_group += 1;
            self.next_group
        });
        self.pool.push(Handle {
            s,
            group,
            stream,
            v6,
        });
        let i = self.pool.len() - 1;
        let mut one = 1;
        let r = self.p.wsp_ioctl(s, FIONBIO, &mut one);
        self.check("ioctl(FIONBIO 1)", &r, Ref::Live(i), &[]);
        if self.pool.len() > MAX_LIVE {
            self.close_hard(i);
        }
    }

    /// Close `pool[i]` for good (a refused linger close is retried with SO_LINGER {1, 0}).
    fn close_hard(&mut self, i: usize) {
        let s = self.pool[i].s;
        let mut r = self.p.wsp_close_socket(s);
        if r == Err(WSAEWOULDBLOCK) {
            let l = [1u8, 0, 0, 0];
            let r2 = self.p.wsp_set_sock_opt(s, SOL_SOCKET, SO_LINGER, &l);
            self.check(
                "setsockopt(SO_LINGER {1,0}) after WSAEWOULDBLOCK",
                &r2,
                Ref::Live(i),
                &[],
            );
            r = self.p.wsp_close_socket(s);
        }
        let ok: &[WsaError] = if self.link_down { &[WSAENETDOWN] } else { &[] };
        self.check("close", &r, Ref::Live(i), ok);
        self.forget(i);
    }

    /// `pool[i]` was closed: it becomes stale and must answer WSAENOTSOCK; its duplicates live.
    fn forget(&mut self, i: usize) {
        let h = self.pool.swap_remove(i);
        let mut out = [0u8; 4];
        let r = self.p.wsp_get_sock_opt(h.s, SOL_SOCKET, SO_TYPE, &mut out);
        self.check("getsockopt after close", &r, Ref::Dead(h.s), &[]);
        let mut arg = 0;
        let r = self.p.wsp_ioctl(h.s, FIONREAD, &mut arg);
        self.check("FIONREAD after close", &r, Ref::Dead(h.s), &[]);
        for (j, other) in self.pool.iter().enumerate() {
            if other.group == h.group {
                let r = self
                    .p
                    .wsp_get_sock_opt(other.s, SOL_SOCKET, SO_TYPE, &mut out);
                self.check(
                    "getsockopt on a duplicate after close",
                    &r,
                    Ref::Live(j),
                    &[],
                );
            }
        }
        if self.stale.len() >= MAX_STALE {
            self.stale.remove(0);
        }
        self.stale.push(h.s);
    }

    fn addr(&mut self) -> SocketAddr {
        let ip = ip(self.inp.u8());
        let port = self.inp.pick(&PORTS);
        SocketAddr::new(ip, port)
    }

    fn size(&mut self) -> usize {
        self.inp.pick(&SIZES)
    }

    fn bufs(&mut self) -> Vec<Vec<u8>> {
        let n = usize::from(self.inp.u8() % 4);
        (0..n).map(|k| vec![k as u8; self.size()]).collect()
    }

    fn is_stream(&self, r: Ref) -> Option<bool> {
        match r {
            Ref::Live(i) => Some(self.pool[i].stream),
            Ref::Dead(_) => None,
        }
    }

    fn recv_pending(&self, group: u32) -> bool {
        self.ovs
            .iter()
            .any(|o| o.recv && o.group == group && o.ov.is_pending())
    }

    fn step(&mut self) {
        let op = self.inp.u8() % 30;
        match op {
            0 => {
                let af = self
                    .inp
                    .pick(&[AF_INET, AF_INET6, 10, AF_INET, AF_INET6, 0, 1, -1, 17]);
                let ty = self.inp.pick(&[
                    SOCK_STREAM,
                    SOCK_DGRAM,
                    SOCK_STREAM,
                    SOCK_DGRAM,
                    3,
                    0,
                    5,
                    -1,
                ]);
                let proto = self.inp.pick(&[0, 0, 6, 17, 1, 255, -1]);
                let r = self.p.wsp_socket(af, ty, proto);
                let valid_af = [AF_INET, AF_INET6, 10].contains(&af);
                let valid_ty = ty == SOCK_STREAM || ty == SOCK_DGRAM;
                let valid_proto = proto == 0
                    || (ty == SOCK_STREAM && proto == 6)
                    || (ty == SOCK_DGRAM && proto == 17);
                let want = if !valid_af {
                    Some(WSAEAFNOSUPPORT)
                } else if !valid_ty {
                    Some(WSAESOCKTNOSUPPORT)
                } else if !valid_proto {
                    Some(WSAEPROTONOSUPPORT)
                } else {
                    None
                };
                match (r, want) {
                    (Ok(s), None) => self.adopt(s, ty == SOCK_STREAM, af != AF_INET, None),
                    (Err(WSAEMFILE), None) => {}
                    (Err(e), Some(w)) if e == w => {}
                    (r, want) => panic!("socket({af}, {ty}, {proto}) = {r:?}, want {want:?}"),
                }
            }
            1 => {
                let h = self.pick();
                let a = self.addr();
                let r = self.p.wsp_bind(self.socket_of(h), a);
                let ok = [
                    WSAEFAULT,
                    WSAEINVAL,
                    WSAEADDRNOTAVAIL,
                    WSAEADDRINUSE,
                    WSAENOBUFS,
                ];
                self.check("bind", &r, h, &ok);
            }
            2 => {
                let h = self.pick();
                let backlog = self.inp.pick(&[-1, 0, 1, 5, 4096, i32::MAX, i32::MIN]);
                let r = self.p.wsp_listen(self.socket_of(h), backlog);
                let ok = [
                    WSAEOPNOTSUPP,
                    WSAEINVAL,
                    WSAEISCONN,
                    WSAENETDOWN,
                    WSAEADDRINUSE,
                ];
                self.check("listen", &r, h, &ok);
                if r.is_ok() {
                    assert_eq!(self.is_stream(h), Some(true), "listen on a datagram socket");
                }
            }
            3 => {
                let h = self.pick();
                let r = self.p.wsp_accept(self.socket_of(h));
                let ok = [WSAEOPNOTSUPP, WSAEINVAL, WSAEWOULDBLOCK, WSAEMFILE];
                self.check("accept", &r, h, &ok);
                if let (Ok((s, _)), Ref::Live(i)) = (r, h) {
                    let v6 = self.pool[i].v6;
                    self.adopt(s, true, v6, None);
                }
            }
            4 => {
                let h = self.pick();
                let a = self.addr();
                let r = self.p.wsp_connect(self.socket_of(h), a);
                let ok = [
                    WSAEOPNOTSUPP,
                    WSAEFAULT,
                    WSAEADDRNOTAVAIL,
                    WSAEINVAL,
                    WSAEISCONN,
                    WSAEALREADY,
                    WSAEWOULDBLOCK,
                    WSAECONNREFUSED,
                    WSAETIMEDOUT,
                    WSAECONNRESET,
                    WSAECONNABORTED,
                    WSAENETDOWN,
                    WSAENETUNREACH,
                    WSAENOBUFS,
                    WSAEADDRINUSE,
                ];
                self.check("connect", &r, h, &ok);
                assert!(r.is_err(), "a nonblocking connect cannot succeed at once");
            }
            5 => {
                let h = self.pick();
                let buf = vec![0x5a; self.size()];
                let r = self.p.wsp_send(self.socket_of(h), &buf);
                let ok = cat(&[&[WSAEOPNOTSUPP], STREAM_IO]);
                self.check("send", &r, h, &ok);
                if let Ok(n) = r {
                    assert!(n <= buf.len(), "send reported {n} of {}", buf.len());
                    assert!(n > 0 || buf.is_empty(), "nonblocking send took 0 bytes");
                }
            }
            6 => {
                let h = self.pick();
                let mut buf = vec![0; self.size()];
                let r = self.p.wsp_recv(self.socket_of(h), &mut buf);
                let ok = cat(&[&[WSAEOPNOTSUPP], STREAM_IO]);
                self.check("recv", &r, h, &ok);
                if let Ok(n) = r {
                    assert!(n <= buf.len(), "recv reported {n} of {}", buf.len());
                }
            }
            7 => {
                let h = self.pick();
                let buf = vec![0xa5; self.size()];
                let to = self.addr();
                let r = self.p.wsp_send_to(self.socket_of(h), &buf, to);
                let ok = match self.is_stream(h) {
                    Some(true) => cat(&[STREAM_IO]),
                    _ => cat(&[SEND_TO_UDP]),
                };
                self.check("send_to", &r, h, &ok);
                if let Ok(n) = r {
                    assert!(n <= buf.len());
                    if self.is_stream(h) == Some(false) {
                        assert_eq!(n, buf.len(), "a datagram is sent whole");
                    }
                }
            }
            8 => {
                let h = self.pick();
                let mut buf = vec![0; self.size()];
                let r = self.p.wsp_recv_from(self.socket_of(h), &mut buf);
                let ok = match self.is_stream(h) {
                    Some(true) => cat(&[STREAM_IO]),
                    _ => vec![WSAEINVAL, WSAEWOULDBLOCK, WSAEMSGSIZE],
                };
                self.check("recv_from", &r, h, &ok);
                if let Ok((n, _)) = r {
                    assert!(n <= buf.len());
                }
            }
            9 => {
                let h = self.pick();
                let how = self.inp.pick(&[0, 1, 2, 3, -1, i32::MAX]);
                let r = self.p.wsp_shutdown(self.socket_of(h), how);
                let ok = [
                    WSAEINVAL,
                    WSAENOTCONN,
                    WSAESHUTDOWN,
                    WSAECONNRESET,
                    WSAECONNABORTED,
                    WSAETIMEDOUT,
                    WSAENETDOWN,
                ];
                self.check("shutdown", &r, h, &ok);
                if !(0..=2).contains(&how) && matches!(h, Ref::Live(_)) {
                    assert_eq!(r, Err(WSAEINVAL), "shutdown({how})");
                }
            }
            10 => {
                let h = self.pick();
                let r = self.p.wsp_close_socket(self.socket_of(h));
                let mut ok = vec![WSAEWOULDBLOCK];
                if self.link_down {
                    ok.push(WSAENETDOWN);
                }
                self.check("close", &r, h, &ok);
                if let Ref::Live(i) = h {
                    match r {
                        Ok(()) | Err(WSAENETDOWN) => self.forget(i),
                        Err(WSAEWOULDBLOCK) => {
                            assert!(self.pool[i].stream, "datagram close never waits");
                            // The handle stays valid.
                            let mut out = [0u8; 4];
                            let r = self.p.wsp_get_sock_opt(
                                self.pool[i].s,
                                SOL_SOCKET,
                                SO_TYPE,
                                &mut out,
                            );
                            self.check("getsockopt after WSAEWOULDBLOCK close", &r, h, &[]);
                        }
                        Err(_) => unreachable!(),
                    }
                }
            }
            11 => {
                let h = self.pick();
                let (level, name) = self.level_name();
                let val = self.optval();
                let r = self
                    .p
                    .wsp_set_sock_opt(self.socket_of(h), level, name, &val);
                self.check("setsockopt", &r, h, &[WSAEINVAL, WSAENOPROTOOPT, WSAEFAULT]);
            }
            12 => {
                let h = self.pick();
                let (level, name) = self.level_name();
                let mut out = vec![0u8; self.inp.pick(&[0usize, 1, 3, 4, 8])];
                let r = self
                    .p
                    .wsp_get_sock_opt(self.socket_of(h), level, name, &mut out);
                self.check("getsockopt", &r, h, &[WSAEINVAL, WSAENOPROTOOPT, WSAEFAULT]);
                if let Ok(n) = r {
                    assert!(n <= out.len(), "getsockopt wrote {n} into {}", out.len());
                    if name == SO_ERROR && level == SOL_SOCKET {
                        let code = i32::from_ne_bytes(out[..4].try_into().unwrap());
                        assert!(
                            code == 0 || WsaError::from_code(code).is_some(),
                            "SO_ERROR {code}"
                        );
                    }
                    if name == SO_TYPE && level == SOL_SOCKET {
                        let ty = i32::from_ne_bytes(out[..4].try_into().unwrap());
                        let want = if self.is_stream(h) == Some(true) {
                            SOCK_STREAM
                        } else {
                            SOCK_DGRAM
                        };
                        assert_eq!(ty, want, "SO_TYPE");
                    }
                }
            }
            13 => {
                let h = self.pick();
                // FIONBIO 0 only through op 27 (the socket is closed right after).
                let code =
                    self.inp
                        .pick(&[FIONBIO, FIONREAD, 0, 0x4004_667E, 0x9800_0001, u32::MAX]);
                let mut arg = if code == FIONBIO {
                    1 + self.inp.u32() % 4
                } else {
                    self.inp.u32()
                };
                let r = self.p.wsp_ioctl(self.socket_of(h), code, &mut arg);
                self.check("ioctl", &r, h, &[WSAEINVAL]);
                if matches!(h, Ref::Live(_)) {
                    assert_eq!(
                        r.is_ok(),
                        code == FIONBIO || code == FIONREAD,
                        "ioctl {code:#x}"
                    );
                }
            }
            14 => self.fionread_then_recv(),
            15 => {
                let h = self.pick();
                let r = self.p.wsp_get_sock_name(self.socket_of(h));
                self.check("getsockname", &r, h, &[WSAEINVAL]);
            }
            16 => {
                let h = self.pick();
                let r = self.p.wsp_get_peer_name(self.socket_of(h));
                self.check("getpeername", &r, h, &[WSAENOTCONN]);
            }
            17 => {
                let h = self.pick();
                let r = self.p.duplicate(self.socket_of(h));
                self.check("duplicate", &r, h, &[WSAEMFILE]);
                if let (Ok(s), Ref::Live(i)) = (r, h) {
                    let old = self.pool[i];
                    assert_ne!(s, old.s);
                    self.adopt(s, old.stream, old.v6, Some(old.group));
                }
            }
            18 => {
                let h = self.pick();
                let ev = self.events[usize::from(self.inp.u8() & 1)].clone();
                let mask =
                    u32::from(self.inp.u16()) | if self.inp.bool() { 0xffff_0000 } else { 0 };
                let r = self.p.wsp_event_select(self.socket_of(h), ev, mask);
                self.check("event_select", &r, h, &[]);
            }
            19 => {
                let h = self.pick();
                let which = self.inp.u8() % 3;
                let ev = self.events.get(usize::from(which)).cloned();
                let r = self
                    .p
                    .wsp_enum_network_events(self.socket_of(h), ev.as_deref());
                self.check("enum_network_events", &r, h, &[]);
                if let Ok(ne) = r {
                    assert_eq!(ne.events & !FD_ALL, 0, "unknown events {:#x}", ne.events);
                    for bit in 0..FD_MAX_EVENTS {
                        let code = ne.errors[bit];
                        if code != 0 {
                            assert!(ne.events & (1 << bit) != 0, "error without its event");
                            assert!(WsaError::from_code(code).is_some(), "event code {code}");
                        }
                    }
                }
            }
            20..=23 => self.overlapped(op - 20),
            24 => {
                let k = usize::from(self.inp.u8());
                let h = self.pick();
                if self.ovs.is_empty() {
                    return;
                }
                let k = k % self.ovs.len();
                let o = &self.ovs[k];
                let r = self
                    .p
                    .wsp_get_overlapped_result(self.socket_of(h), &o.ov, false);
                match r {
                    Ok((n, _)) => assert!(n <= o.cap, "overlapped result {n} > {}", o.cap),
                    Err(WSA_IO_INCOMPLETE) => {}
                    Err(e) => assert!(
                        ![WSAEINTR, WSAEINPROGRESS, WSA_IO_PENDING].contains(&e),
                        "get_overlapped_result: {e:?}"
                    ),
                }
                if r != Err(WSA_IO_INCOMPLETE) && o.reported && o.mech == Mech::Event {
                    // The event is set right after the result is stored (another thread may
                    // be completing it): poll, never wait on it.
                    let ev = o.event.as_ref().unwrap();
                    let deadline = Instant::now() + Duration::from_secs(5);
                    while !ev.is_set() {
                        assert!(Instant::now() < deadline, "completed, event not set");
                        std::thread::sleep(Duration::from_micros(50));
                    }
                }
            }
            25 => {
                let h = self.pick();
                let r = self.p.cancel_blocking_calls(self.socket_of(h));
                self.check("cancel_blocking_calls", &r, h, &[]);
                assert_eq!(self.p.wsp_cancel_blocking_call(), Err(WSAEINVAL));
            }
            26 => {
                // Let the pump thread deliver segments and run timers.
                let us = [50u64, 200, 1000, 3000][usize::from(self.inp.u8() % 4)];
                std::thread::sleep(Duration::from_micros(us));
            }
            27 => {
                // The one FIONBIO 0: a blocking socket closed at once with SO_LINGER {1, 0}
                // (never waits); its duplicates are made nonblocking again.
                let Ref::Live(i) = self.pick() else { return };
                let s = self.pool[i].s;
                let l = [1u8, 0, 0, 0];
                let r = self.p.wsp_set_sock_opt(s, SOL_SOCKET, SO_LINGER, &l);
                let ok: &[WsaError] = if self.pool[i].stream {
                    &[]
                } else {
                    &[WSAENOPROTOOPT]
                };
                self.check("setsockopt(SO_LINGER {1,0})", &r, Ref::Live(i), ok);
                let mut zero = 0;
                let r = self.p.wsp_ioctl(s, FIONBIO, &mut zero);
                // WSAEINVAL: event-selected, stays nonblocking.
                self.check("ioctl(FIONBIO 0)", &r, Ref::Live(i), &[WSAEINVAL]);
                let group = self.pool[i].group;
                self.close_hard(i);
                for j in 0..self.pool.len() {
                    if self.pool[j].group == group {
                        let mut one = 1;
                        let r = self.p.wsp_ioctl(self.pool[j].s, FIONBIO, &mut one);
                        self.check("ioctl(FIONBIO 1)", &r, Ref::Live(j), &[]);
                    }
                }
            }
            28 => {
                self.link_down = self.inp.u8() % 4 == 0;
                self.dp.set_up(!self.link_down);
            }
            _ => self.pair(),
        }
    }

    fn level_name(&mut self) -> (i32, i32) {
        let level = self.inp.pick(&[
            SOL_SOCKET,
            SOL_SOCKET,
            SOL_SOCKET,
            IPPROTO_TCP,
            17,
            0,
            41,
            -1,
            12345,
        ]);
        let name = self.inp.pick(&[
            SO_REUSEADDR,
            SO_KEEPALIVE,
            SO_LINGER,
            SO_DONTLINGER,
            SO_SNDBUF,
            SO_RCVBUF,
            SO_ERROR,
            SO_TYPE,
            TCP_NODELAY,
            0x7777,
            0,
        ]);
        (level, name)
    }

    fn optval(&mut self) -> Vec<u8> {
        let mut v = if self.inp.bool() {
            let on = self.inp.pick(&[0u16, 1, 2, 0xffff]);
            let secs = self.inp.pick(&[0u16, 1, 5, 0xffff]);
            let mut v = on.to_ne_bytes().to_vec();
            v.extend_from_slice(&secs.to_ne_bytes());
            v
        } else {
            let x = self
                .inp
                .pick(&[0i32, 1, -1, 2, 4096, 65536, i32::MAX, i32::MIN]);
            x.to_ne_bytes().to_vec()
        };
        v.resize(self.inp.pick(&[4usize, 4, 4, 0, 1, 3, 8]), 0);
        v
    }

    /// FIONREAD, then a receive: it gets at least that much (stream) / exactly that datagram.
    fn fionread_then_recv(&mut self) {
        let h = self.pick();
        let s = self.socket_of(h);
        let mut n = 0;
        let r = self.p.wsp_ioctl(s, FIONREAD, &mut n);
        self.check("ioctl(FIONREAD)", &r, h, &[]);
        let Ref::Live(i) = h else { return };
        let n = n as usize;
        let mut buf = vec![0; self.size()];
        let handle = self.pool[i];
        if handle.stream {
            let pending = self.recv_pending(handle.group);
            let r = self.p.wsp_recv(s, &mut buf);
            self.check("recv after FIONREAD", &r, h, STREAM_IO);
            if n > 0 && !buf.is_empty() && !pending {
                match r {
                    Ok(k) => assert!(
                        k >= n.min(buf.len()) && k <= buf.len(),
                        "FIONREAD {n}, recv into {} got {k}",
                        buf.len()
                    ),
                    Err(WSAESHUTDOWN) => {}
                    Err(e) => panic!("FIONREAD {n}, then recv gave {e:?}"),
                }
            }
        } else {
            let r = self.p.wsp_recv_from(s, &mut buf);
            self.check(
                "recv_from after FIONREAD",
                &r,
                h,
                &[WSAEINVAL, WSAEWOULDBLOCK, WSAEMSGSIZE],
            );
            match r {
                Ok((k, _)) => assert!(k == n && k <= buf.len(), "FIONREAD {n}, recv_from got {k}"),
                Err(WSAEMSGSIZE) => assert!(
                    n > buf.len(),
                    "FIONREAD {n}, WSAEMSGSIZE into {}",
                    buf.len()
                ),
                Err(_) => assert_eq!(n, 0, "FIONREAD {n}, then {r:?}"),
            }
        }
    }

    /// An overlapped receive/send/send_to/recv_from through a new or reused descriptor.
    fn overlapped(&mut self, kind: u8) {
        let h = self.pick();
        let k = self.inp.u8();
        let bufs = self.bufs();
        let cap: usize = bufs.iter().map(Vec::len).sum();
        let to = self.addr();
        let idx = if usize::from(k >> 2) < self.ovs.len() && k & 0x80 != 0 {
            usize::from(k >> 2) % self.ovs.len()
        } else {
            if self.ovs.len() >= MAX_OVS {
                // Forget an old descriptor that is not pending (pending ones must complete).
                let Some(old) = self.ovs.iter().position(|o| !o.ov.is_pending()) else {
                    return;
                };
                let o = self.ovs.swap_remove(old);
                self.retired.push(o);
            }
            let key = u64::from(self.inp.u32());
            let (ov, mech, event) = match k & 3 {
                0 => (Overlapped::new(), Mech::Poll, None),
                1 => {
                    let ev = WsaEvent::new();
                    (Overlapped::with_event(ev.clone()), Mech::Event, Some(ev))
                }
                2 => {
                    let runs = self.routine_runs.clone();
                    let ov = Overlapped::with_routine(move |c: Completion| {
                        check_completion(&c, cap);
                        runs.fetch_add(1, Ordering::SeqCst);
                    });
                    (ov, Mech::Routine, None)
                }
                _ => (
                    Overlapped::with_queue(self.queue.clone(), key),
                    Mech::Queue,
                    None,
                ),
            };
            self.ovs.push(Ov {
                ov,
                mech,
                event,
                key,
                group: 0,
                recv: false,
                cap: 0,
                reported: false,
            });
            self.ovs.len() - 1
        };
        let s = self.socket_of(h);
        let ov = self.ovs[idx].ov.clone();
        let was_pending = ov.is_pending();
        let stream = self.is_stream(h);
        let (r, recv, name) = match kind {
            0 => (
                self.p.wsp_recv_overlapped(s, bufs, &ov),
                true,
                "recv_overlapped",
            ),
            1 => (
                self.p.wsp_send_overlapped(s, bufs, &ov),
                false,
                "send_overlapped",
            ),
            2 => (
                self.p.wsp_send_to_overlapped(s, bufs, to, &ov),
                false,
                "send_to_overlapped",
            ),
            _ => (
                self.p.wsp_recv_from_overlapped(s, bufs, &ov),
                true,
                "recv_from_overlapped",
            ),
        };
        let common = [
            WSAEINVAL,
            WSA_IO_PENDING,
            WSAENOTCONN,
            WSAESHUTDOWN,
            WSAECONNRESET,
            WSAECONNABORTED,
            WSAETIMEDOUT,
        ];
        let ok = match (stream, recv) {
            (Some(false), false) => cat(&[&common, SEND_TO_UDP]),
            (Some(false), true) => cat(&[&common, &[WSAEMSGSIZE]]),
            _ => cat(&[&common]),
        };
        self.check(name, &r, h, &ok);
        if was_pending {
            assert!(
                !matches!(r, Ok(_) | Err(WSA_IO_PENDING)),
                "{name} on a pending descriptor gave {r:?}"
            );
            return;
        }
        if let Ok(n) = r {
            assert!(n <= cap, "{name} reported {n} of {cap}");
        }
        let o = &mut self.ovs[idx];
        if let Ref::Live(i) = h {
            o.group = self.pool[i].group;
        }
        o.recv = recv;
        let accepted = matches!(r, Ok(_) | Err(WSA_IO_PENDING));
        // A datagram too large completes at once with WSAEMSGSIZE, and is reported.
        let maybe = r == Err(WSAEMSGSIZE);
        if accepted || maybe {
            o.cap = cap;
            o.reported = accepted;
            let e = match o.mech {
                Mech::Routine => &mut self.routines,
                Mech::Queue => &mut self.queued,
                _ => return,
            };
            e.max += 1;
            if accepted {
                e.min += 1;
            }
        } else if r.is_err() {
            o.reported = false;
        }
    }

    /// A connected pair on the loopback (listener, client, accepted), through the checked calls.
    fn pair(&mut self) {
        let v6 = self.inp.bool();
        let port = self.inp.pick(&[9u16, 80, 443, 61000]);
        let ip = if v6 {
            IpAddr::V6(LOOPBACK_V6)
        } else {
            IpAddr::V4(LOOPBACK_V4)
        };
        let at = SocketAddr::new(ip, port);
        let af = if v6 { AF_INET6 } else { AF_INET };
        let Ok(l) = self.p.wsp_socket(af, SOCK_STREAM, 0) else {
            return;
        };
        self.adopt(l, true, v6, None);
        let Some(li) = self.pool.iter().position(|h| h.s == l) else {
            return;
        };
        if self.p.wsp_bind(l, at).is_err() || self.p.wsp_listen(l, 4).is_err() {
            return;
        }
        let Ok(c) = self.p.wsp_socket(af, SOCK_STREAM, 0) else {
            return;
        };
        self.adopt(c, true, v6, None);
        let Some(ci) = self.pool.iter().position(|h| h.s == c) else {
            return;
        };
        let r = self.p.wsp_connect(c, at);
        self.check(
            "connect (pair)",
            &r,
            Ref::Live(ci),
            &[WSAEWOULDBLOCK, WSAEADDRINUSE, WSAENOBUFS, WSAENETDOWN],
        );
        if r != Err(WSAEWOULDBLOCK) {
            return;
        }
        let deadline = Instant::now() + Duration::from_millis(50);
        while Instant::now() < deadline {
            let r = self.p.wsp_accept(l);
            self.check(
                "accept (pair)",
                &r,
                Ref::Live(li),
                &[WSAEWOULDBLOCK, WSAEMFILE],
            );
            match r {
                Ok((s, _)) => {
                    self.adopt(s, true, v6, None);
                    return;
                }
                Err(WSAEWOULDBLOCK) => std::thread::sleep(Duration::from_micros(50)),
                Err(_) => return,
            }
        }
    }

    /// Close everything; check that nothing leaked and every operation completed.
    fn finish(&mut self) {
        if self.link_down {
            self.dp.set_up(true);
            self.link_down = false;
        }
        while !self.pool.is_empty() {
            self.close_hard(self.pool.len() - 1);
            self.check_counts("close at the end");
        }
        let st = self.p.stats();
        assert_eq!(st.sockets_open, self.base.sockets_open, "sockets leaked");
        assert_eq!(st.handles_open, self.base.handles_open, "handles leaked");
        assert_eq!(
            st.udp_endpoints, self.base.udp_endpoints,
            "UDP endpoints leaked"
        );
        // A completion the pump thread took from the socket just before the close is delivered
        // just after it (once the engine lock is released): allow it a moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.ovs.iter().any(|o| o.ov.is_pending()) {
            assert!(
                Instant::now() < deadline,
                "an overlapped operation outlived its socket"
            );
            std::thread::sleep(Duration::from_micros(100));
        }
        for o in &self.ovs {
            let r = o.ov.result(false);
            assert_ne!(r, Err(WSA_IO_INCOMPLETE));
        }
        let mut queued = 0;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            // Posted right after the result is stored, maybe by the pump thread: poll a moment.
            let Some(c) = self.queue.get_queued_completion(Some(Duration::ZERO)) else {
                if queued >= self.queued.min || Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(Duration::from_micros(100));
                continue;
            };
            let o = self
                .ovs
                .iter()
                .chain(&self.retired)
                .find(|o| o.ov.ptr_eq(&c.overlapped))
                .expect("a completion for a descriptor of this input");
            assert_eq!(c.key, o.key, "completion key");
            check_completion(&c, usize::MAX);
            queued += 1;
        }
        assert!(
            (self.queued.min..=self.queued.max).contains(&queued),
            "{queued} queued completions, want {}..={}",
            self.queued.min,
            self.queued.max
        );
        // Routines run on the provider's completion thread: give it a moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let runs = self.routine_runs.load(Ordering::SeqCst);
            if runs >= self.routines.min || Instant::now() > deadline {
                assert!(
                    (self.routines.min..=self.routines.max).contains(&runs),
                    "{runs} routines ran, want {}..={}",
                    self.routines.min,
                    self.routines.max
                );
                break;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        // Orphans and TIME_WAIT drain on the pump thread; do not let them pile up across inputs.
        let st = self.p.stats();
        if st.tcp_connections > 64 {
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.p.stats().tcp_connections > 16 {
                assert!(
                    Instant::now() < deadline,
                    "TCP connections do not drain: {:?}",
                    self.p.stats()
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        // With no connection left, no endpoint may stay steered.
        if self.p.stats().tcp_connections == 0 {
            assert_eq!(self.dp.steered(), 0, "STEER entries leaked");
        }
    }
}

/// `WSP_TRACE=1`: print every checked call (to follow a crash input).
fn trace() -> bool {
    static T: OnceLock<bool> = OnceLock::new();
    *T.get_or_init(|| std::env::var_os("WSP_TRACE").is_some())
}

/// A delivered completion stays within its buffers and carries a valid code.
fn check_completion(c: &Completion, cap: usize) {
    let have: usize = c.buffers.iter().map(Vec::len).sum();
    assert!(c.bytes <= have, "completion of {} bytes in {have}", c.bytes);
    assert!(c.bytes <= cap);
    if let Some(e) = c.error {
        assert!(
            ![WSAEINTR, WSAEINPROGRESS, WSA_IO_PENDING, WSA_IO_INCOMPLETE].contains(&e),
            "completion error {e:?}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let mut run = Run {
        p: &f.p,
        dp: &f.dp,
        inp: Input(data),
        base: f.p.stats(),
        pool: Vec::new(),
        stale: Vec::new(),
        next_group: 0,
        ovs: Vec::new(),
        retired: Vec::new(),
        events: [WsaEvent::new(), WsaEvent::new()],
        queue: CompletionQueue::new(),
        routine_runs: Arc::new(AtomicUsize::new(0)),
        routines: Expect::default(),
        queued: Expect::default(),
        link_down: false,
    };
    assert_eq!(run.base.sockets_open, 0, "a previous input leaked sockets");
    let mut steps = 0;
    while !run.inp.is_empty() && steps < 256 {
        run.step();
        run.check_counts("a step");
        steps += 1;
    }
    run.finish();
});
