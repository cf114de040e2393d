//! The blocking linger deadline at its boundary (DESIGN §7 row 3), over an in-memory datapath
//! whose acknowledgements the test holds back and releases at a chosen instant.
//!
//! The deadline lives in the socket layer (`linger_wait`), on the real clock, so these tests
//! run the real provider and engine: the client lingers with data and FIN unacknowledged while
//! every segment towards it is parked; the test then delivers the parked ACK 1 ms before the
//! deadline (graceful), never (RST exactly at, never before, the deadline), or 1 ms after it
//! (RST already sent; the late ACK finds no connection). The wait must sleep, not spin.
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::thread;
use std::time::{Duration, Instant};

use provider_common::SteerKey;

use super::loopback::LOOPBACK_V4;
use super::*;
use crate::socket::entry::lock;
use crate::socket::options::{Linger, SO_LINGER, SOL_SOCKET};
use WsaError::*;

type Segment = (IpAddr, IpAddr, Vec<u8>);

/// One segment the provider sent: when, source port, TCP flags byte.
#[derive(Clone, Copy, Debug)]
struct SentSeg {
    at: Instant,
    sport: u16,
    flags: u8,
}

const FIN: u8 = 0x01;
const RST: u8 = 0x04;

/// Loopback with a gate: segments to port `held` are parked until `release`.
#[derive(Default)]
struct GatedDatapath {
    provider: OnceLock<Weak<Provider>>,
    queue: Mutex<VecDeque<Segment>>,
    pump: Condvar,
    held_port: Mutex<Option<u16>>,
    held: Mutex<Vec<Segment>>,
    sent: Mutex<Vec<SentSeg>>,
    stop: AtomicBool,
    down: AtomicBool,
}

impl GatedDatapath {
    fn provider(cfg: ProviderConfig) -> (Arc<Provider>, Arc<GatedDatapath>) {
        let dp = Arc::new(GatedDatapath::default());
        let p = Arc::new(Provider::new(dp.clone(), cfg));
        let _ = dp.provider.set(Arc::downgrade(&p));
        let pump = dp.clone();
        thread::spawn(move || pump.run());
        (p, dp)
    }

    fn run(&self) {
        while !self.stop.load(Ordering::Relaxed) {
            let batch: Vec<Segment> = {
                let mut q = lock(&self.queue);
                if q.is_empty() {
                    q = self
                        .pump
                        .wait_timeout(q, Duration::from_millis(1))
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .0;
                }
                q.drain(..).collect()
            };
            let Some(p) = self.provider.get().and_then(Weak::upgrade) else {
                return;
            };
            for (src, dst, seg) in batch {
                p.deliver_tcp(src, dst, &seg);
            }
            if p.tcp_next_timeout().is_some_and(|d| d <= Instant::now()) {
                p.tcp_tick();
            }
        }
    }

    fn hold(&self, port: Option<u16>) {
        *lock(&self.held_port) = port;
    }

    /// Deliver the parked segments now, from the calling thread.
    fn release(&self, p: &Provider) -> usize {
        self.hold(None);
        let held: Vec<Segment> = lock(&self.held).drain(..).collect();
        for (src, dst, seg) in &held {
            p.deliver_tcp(*src, *dst, seg);
        }
        held.len()
    }

    fn sent_from(&self, port: u16) -> Vec<SentSeg> {
        lock(&self.sent)
            .iter()
            .filter(|s| s.sport == port)
            .copied()
            .collect()
    }
}

impl Datapath for GatedDatapath {
    fn steer_add(&self, _key: SteerKey) -> Result<(), WsaError> {
        Ok(())
    }
    fn steer_remove(&self, _key: SteerKey) {}
    fn send_udp(&self, _: SocketAddr, _: SocketAddr, _: &[u8]) -> Result<(), WsaError> {
        Ok(())
    }
    fn send_ip(&self, src: IpAddr, dst: IpAddr, _proto: u8, l4: &[u8]) -> Result<(), WsaError> {
        if !self.is_up() {
            return Err(WSAENETDOWN);
        }
        let port = |i: usize| u16::from_be_bytes([l4[i], l4[i + 1]]);
        let (sport, dport) = (port(0), port(2));
        lock(&self.sent).push(SentSeg {
            at: Instant::now(),
            sport,
            flags: l4[13],
        });
        let seg = (src, dst, l4.to_vec());
        if *lock(&self.held_port) == Some(dport) {
            lock(&self.held).push(seg);
        } else {
            lock(&self.queue).push_back(seg);
        }
        Ok(())
    }
    fn flush_tx(&self) {
        self.pump.notify_one();
    }
    fn wake(&self) {
        self.pump.notify_one();
    }
    fn local_addrs(&self) -> Vec<IpAddr> {
        vec![IpAddr::V4(LOOPBACK_V4)]
    }
    fn max_udp_payload(&self, _v6: bool) -> usize {
        1500 - 28
    }
    fn is_up(&self) -> bool {
        !self.down.load(Ordering::Relaxed)
    }
}

impl Drop for GatedDatapath {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn tcp(p: &Provider) -> Socket {
    p.wsp_socket(AF_INET, SOCK_STREAM, IPPROTO_TCP).unwrap()
}

type Pair = (Arc<Provider>, Arc<GatedDatapath>, Socket, Socket, u16);

fn config() -> ProviderConfig {
    let mut cfg = ProviderConfig::default();
    cfg.tcp.time_wait = Duration::from_millis(100);
    // The RTO stays far above the linger time: no retransmission muddles the picture.
    cfg.tcp.min_rto = Duration::from_secs(5);
    cfg.tcp.initial_rto = Duration::from_secs(5);
    cfg.tcp.max_rto = Duration::from_secs(10);
    cfg
}

/// A connected pair whose client (first socket) hears nothing from now on: (provider,
/// datapath, client, server-side socket, client port).
fn held_pair(cfg: ProviderConfig, port: u16) -> Pair {
    let (p, dp) = GatedDatapath::provider(cfg);
    let at = SocketAddr::new(LOOPBACK_V4.into(), port);
    let l = tcp(&p);
    p.wsp_bind(l, at).unwrap();
    p.wsp_listen(l, 4).unwrap();
    let c = tcp(&p);
    let p2 = p.clone();
    let t = thread::spawn(move || p2.wsp_connect(c, at));
    let (s, _) = p.wsp_accept(l).unwrap();
    t.join().unwrap().unwrap();
    let cport = p.wsp_get_sock_name(c).unwrap().port();
    p.wsp_close_socket(l).unwrap();
    // From now on nothing reaches the client: its data and FIN stay unacknowledged.
    dp.hold(Some(cport));
    (p, dp, c, s, cport)
}

/// `held_pair` with 1000 bytes unacknowledged and SO_LINGER {1, 1} on the client.
fn lingering_pair(port: u16) -> Pair {
    let (p, dp, c, s, cport) = held_pair(config(), port);
    assert_eq!(p.wsp_send(c, &[5u8; 1000]), Ok(1000));
    let l = Linger {
        l_onoff: 1,
        l_linger: 1,
    };
    p.wsp_set_sock_opt(c, SOL_SOCKET, SO_LINGER, &l.to_bytes())
        .unwrap();
    (p, dp, c, s, cport)
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Close `c` on another thread; returns (result, when the call started, how long it took,
/// the closer's CPU time).
fn spawn_close(
    p: &Arc<Provider>,
    c: Socket,
) -> (
    Instant,
    thread::JoinHandle<(WspResult<()>, Duration, Duration)>,
) {
    let p = p.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let h = thread::spawn(move || {
        let cpu = thread_cpu();
        let t = Instant::now();
        tx.send(t).unwrap();
        let r = p.wsp_close_socket(c);
        (r, t.elapsed(), thread_cpu() - cpu)
    });
    (rx.recv().unwrap(), h)
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        thread::sleep(t - now);
    }
}

/// The ACK of data and FIN arrives 1 ms before the deadline: graceful, no RST, returns just
/// before n seconds. (Retried if the machine was too busy to deliver it in time.)
#[test]
fn linger_ack_one_ms_before_the_deadline_is_graceful() {
    for attempt in 0..5u16 {
        let (p, dp, c, _s, cport) = lingering_pair(5700 + attempt);
        let (t0, closer) = spawn_close(&p, c);
        // The client's FIN reaches the server, whose ACK (of data and FIN) is parked.
        thread::sleep(Duration::from_millis(100));
        let deadline = t0 + Duration::from_secs(1);
        sleep_until(deadline - Duration::from_millis(1));
        assert!(dp.release(&p) > 0, "an ACK was parked");
        let delivered = Instant::now();
        let (r, took, cpu) = closer.join().unwrap();
        if delivered >= deadline {
            eprintln!(
                "attempt {attempt}: ACK delivered {:?} late",
                delivered - deadline
            );
            continue;
        }
        assert_eq!(r, Ok(()));
        // The final ACK raises an engine event that wakes the wait at once (5 ms of slack for
        // a busy machine).
        let acked = delivered - t0;
        assert!(
            took >= acked && took < acked + Duration::from_millis(5),
            "returned after {took:?}, ACK at {acked:?}"
        );
        assert!(
            cpu < Duration::from_millis(100),
            "the wait spun: {cpu:?} CPU"
        );
        let st = p.stats();
        assert_eq!(st.close_graceful, 1);
        assert_eq!(st.close_linger_timeout_reset, 0);
        let sent = dp.sent_from(cport);
        assert!(sent.iter().any(|s| s.flags & FIN != 0), "FIN sent");
        assert!(!sent.iter().any(|s| s.flags & RST != 0), "no RST: {sent:?}");
        return;
    }
    panic!("the machine never delivered the ACK within 1 ms of the deadline");
}

/// No ACK at all: the RST goes out at the deadline — not a moment before — and close returns
/// right after it, having slept (not spun) meanwhile.
#[test]
fn linger_without_ack_resets_exactly_at_the_deadline() {
    let (p, dp, c, _s, cport) = lingering_pair(5710);
    let (t0, closer) = spawn_close(&p, c);
    let (r, took, cpu) = closer.join().unwrap();
    assert_eq!(r, Ok(()));
    let deadline = t0 + Duration::from_secs(1);
    let rsts: Vec<SentSeg> = dp
        .sent_from(cport)
        .into_iter()
        .filter(|s| s.flags & RST != 0)
        .collect();
    assert_eq!(rsts.len(), 1, "{rsts:?}");
    assert!(
        rsts[0].at >= deadline,
        "RST {:?} early",
        deadline - rsts[0].at
    );
    assert!(
        rsts[0].at < deadline + Duration::from_millis(20),
        "RST {:?} late",
        rsts[0].at - deadline
    );
    assert!(took >= Duration::from_secs(1) && took < Duration::from_millis(1050));
    assert!(
        cpu < Duration::from_millis(100),
        "the wait spun: {cpu:?} CPU"
    );
    let st = p.stats();
    assert_eq!(st.close_linger_timeout_reset, 1);
    assert_eq!(st.close_graceful, 0);
    // The server side took the RST: nothing is left.
    for _ in 0..100 {
        if p.stats().tcp_connections == 0 {
            break;
        }
        thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(p.stats().tcp_connections, 0);
    assert_eq!(p.wsp_close_socket(c), Err(WSAENOTSOCK));
    dp.release(&p);
}

/// The ACK arrives 1 ms after the deadline: too late — the RST is already out, the linger close
/// counted a timeout reset, and the late ACK finds no connection (answered with RST).
#[test]
fn linger_ack_one_ms_after_the_deadline_is_too_late() {
    let (p, dp, c, _s, cport) = lingering_pair(5720);
    let (t0, closer) = spawn_close(&p, c);
    let deadline = t0 + Duration::from_secs(1);
    sleep_until(deadline + Duration::from_millis(1));
    let (r, _took, _) = closer.join().unwrap();
    assert_eq!(r, Ok(()));
    let before = dp.sent_from(cport).len();
    // The server's ACKs (still parked) arrive now; each gets a RST from the client's port.
    let late = dp.release(&p);
    assert!(late > 0);
    let st = p.stats();
    assert_eq!(st.close_linger_timeout_reset, 1);
    assert_eq!(st.close_graceful, 0);
    let sent = dp.sent_from(cport);
    let rsts: Vec<&SentSeg> = sent.iter().filter(|s| s.flags & RST != 0).collect();
    assert_eq!(
        rsts.len(),
        1 + late,
        "the deadline RST, then one per stray ACK: {sent:?}"
    );
    assert!(
        rsts.iter().all(|r| r.at >= deadline),
        "no RST before the deadline"
    );
    assert_eq!(sent.len(), before + late, "nothing but those RSTs");
    assert!(
        !sent.iter().any(|s| s.at >= deadline && s.flags & RST == 0),
        "nothing else after the deadline"
    );
}

/// WSAENETDOWN comes before the linger rules: with the datapath down, a lingering close (blocking
/// or not) does not wait for acknowledgements that cannot come — it releases the handle and
/// says WSAENETDOWN at once (DESIGN §7).
#[test]
fn linger_close_with_the_datapath_down_releases_at_once() {
    for nonblocking in [false, true] {
        let (p, dp, c, _s, _cport) = lingering_pair(5730 + u16::from(nonblocking));
        if nonblocking {
            let mut on = 1;
            p.wsp_ioctl(c, crate::socket::options::FIONBIO, &mut on)
                .unwrap();
        }
        thread::sleep(Duration::from_millis(20));
        dp.down.store(true, Ordering::Relaxed);
        let t = Instant::now();
        assert_eq!(
            p.wsp_close_socket(c),
            Err(WSAENETDOWN),
            "nonblocking {nonblocking}"
        );
        assert!(
            t.elapsed() < Duration::from_millis(100),
            "nonblocking {nonblocking}: waited {:?}",
            t.elapsed()
        );
        assert_eq!(p.wsp_close_socket(c), Err(WSAENOTSOCK), "handle released");
        assert_eq!(p.stats().sockets_open, 1, "only the server side is open");
        dp.down.store(false, Ordering::Relaxed);
    }
}

/// A blocking send that is sleeping on a full send buffer — having copied nothing yet — when
/// another thread closes the socket returns WSAEINTR, like recv and accept (DESIGN §7).
#[test]
fn blocking_send_waiting_on_a_full_buffer_is_interrupted_by_close() {
    let mut cfg = config();
    cfg.tcp.send_buffer = 16 * 1024;
    cfg.default_sndbuf = 16 * 1024;
    let (p, _dp, c, _s, _cport) = held_pair(cfg, 5740);
    let mut on = 1;
    p.wsp_ioctl(c, crate::socket::options::FIONBIO, &mut on)
        .unwrap();
    let chunk = [1u8; 4096];
    while p.wsp_send(c, &chunk) != Err(WSAEWOULDBLOCK) {}
    let mut off = 0;
    p.wsp_ioctl(c, crate::socket::options::FIONBIO, &mut off)
        .unwrap();
    let p2 = p.clone();
    let sender = thread::spawn(move || p2.wsp_send(c, &chunk));
    thread::sleep(Duration::from_millis(100));
    assert!(!sender.is_finished(), "the send blocks on the full buffer");
    assert_eq!(p.wsp_close_socket(c), Ok(()));
    assert_eq!(sender.join().unwrap(), Err(WSAEINTR));
}

/// `duplicate` is "any call": during a blocking linger close in another thread it gets
/// WSAEINPROGRESS — a handle made then would outlive its socket (WSAENOTSOCK on every call,
/// close included, so it could never be released).
#[test]
fn duplicate_during_a_lingering_close_is_in_progress_and_leaks_nothing() {
    let (p, dp, c, _s, _cport) = lingering_pair(5750);
    let (_t0, closer) = spawn_close(&p, c);
    thread::sleep(Duration::from_millis(100));
    assert_eq!(p.duplicate(c), Err(WSAEINPROGRESS));
    let (r, _, _) = closer.join().unwrap();
    assert_eq!(r, Ok(()));
    let st = p.stats();
    assert_eq!(
        (st.sockets_open, st.handles_open),
        (1, 1),
        "only the server side is left"
    );
    dp.release(&p);
}
