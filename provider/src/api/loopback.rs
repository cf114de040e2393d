//! An in-memory [`Datapath`] for unit tests and examples — not a network.
//!
//! It owns the addresses 198.18.0.1 and 2001:db8::1, records every STEER add/remove and every
//! datagram sent, and delivers a datagram whose destination is one of its own addresses straight
//! back into the attached [`Provider`], so two sockets of one provider can talk. Datagrams to
//! other addresses are recorded and dropped. TCP segments to its own addresses are queued and
//! delivered back by a pump thread (which also runs the TCP timers), so stream sockets of one
//! provider can connect to each other in unit tests.
use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use provider_common::SteerKey;

use super::{Provider, ProviderConfig};
use crate::socket::entry::lock;
use crate::socket::{Datapath, WsaError};

/// IPv4 address of the loopback datapath.
pub const LOOPBACK_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// IPv6 address of the loopback datapath.
pub const LOOPBACK_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);

/// One recorded STEER map operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SteerOp {
    Add(SteerKey),
    Remove(SteerKey),
}

/// One recorded datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sent {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub len: usize,
}

/// See the module documentation.
#[derive(Debug)]
pub struct LoopbackDatapath {
    provider: OnceLock<Weak<Provider>>,
    addrs: Vec<IpAddr>,
    up: AtomicBool,
    fail_steer: Mutex<Option<WsaError>>,
    steer_ops: Mutex<Vec<SteerOp>>,
    record_steer: AtomicBool,
    /// STEER adds minus removes (counted whether recorded or not).
    steered: AtomicIsize,
    sent: Mutex<Vec<Sent>>,
    record_sent: AtomicBool,
    /// Datagrams the provider had no socket for, or addressed elsewhere.
    pub undelivered: AtomicUsize,
    /// TCP segments waiting for the pump thread, and its wake-up.
    segments: Mutex<VecDeque<(IpAddr, IpAddr, Vec<u8>)>>,
    pump: Condvar,
    /// `usize::MAX`: each segment goes straight to the shard that owns its flow (a device
    /// whose RSS agrees). Else every segment "arrives" on this RX queue, as on a device that
    /// ignores the flow (veth), and the shards hand segments over to each other.
    rx_queue: AtomicUsize,
}

impl Default for LoopbackDatapath {
    fn default() -> Self {
        LoopbackDatapath {
            provider: OnceLock::new(),
            addrs: vec![IpAddr::V4(LOOPBACK_V4), IpAddr::V6(LOOPBACK_V6)],
            up: AtomicBool::new(true),
            fail_steer: Mutex::new(None),
            steer_ops: Mutex::new(Vec::new()),
            record_steer: AtomicBool::new(true),
            steered: AtomicIsize::new(0),
            sent: Mutex::new(Vec::new()),
            record_sent: AtomicBool::new(true),
            undelivered: AtomicUsize::new(0),
            segments: Mutex::new(VecDeque::new()),
            pump: Condvar::new(),
            rx_queue: AtomicUsize::new(usize::MAX),
        }
    }
}

impl LoopbackDatapath {
    /// A provider wired to a fresh loopback datapath.
    pub fn provider(config: ProviderConfig) -> (Arc<Provider>, Arc<LoopbackDatapath>) {
        let dp = Arc::new(LoopbackDatapath::default());
        let p = Arc::new(Provider::new(dp.clone(), config));
        dp.attach(&p);
        let pump_dp = dp.clone();
        let weak = Arc::downgrade(&p);
        std::thread::spawn(move || pump_dp.run_pump(&weak));
        (p, dp)
    }

    /// Deliver queued TCP segments and run TCP timers until the provider is dropped.
    fn run_pump(&self, provider: &Weak<Provider>) {
        loop {
            let batch: Vec<_> = {
                let mut q = lock(&self.segments);
                if q.is_empty() {
                    let timeout = provider
                        .upgrade()
                        .and_then(|p| p.tcp_next_timeout())
                        .map_or(Duration::from_millis(20), |d| {
                            d.saturating_duration_since(Instant::now())
                                .min(Duration::from_millis(20))
                        });
                    q = self
                        .pump
                        .wait_timeout(q, timeout)
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .0;
                }
                q.drain(..).collect()
            };
            let Some(p) = provider.upgrade() else { return };
            match self.rx_queue.load(Ordering::Relaxed) {
                usize::MAX => {
                    for (src, dst, seg) in batch {
                        p.deliver_tcp(src, dst, &seg);
                    }
                }
                queue => {
                    p.deliver_tcp_batch(
                        queue,
                        batch.iter().map(|(src, dst, seg)| (*src, *dst, &seg[..])),
                    );
                    for k in 0..p.tcp_shards() {
                        p.tcp_drain_inbox(k);
                    }
                }
            }
            if p.tcp_next_timeout().is_some_and(|d| d <= Instant::now()) {
                p.tcp_tick();
            }
        }
    }

    /// Deliver every TCP segment as received on RX queue `queue` (None: to its owner shard).
    pub fn set_rx_queue(&self, queue: Option<usize>) {
        self.rx_queue
            .store(queue.unwrap_or(usize::MAX), Ordering::Relaxed);
    }

    /// Deliver sent datagrams into `provider` (once; later calls are ignored).
    pub fn attach(&self, provider: &Arc<Provider>) {
        let _ = self.provider.set(Arc::downgrade(provider));
    }

    /// Link up or down (down → `send_udp` fails with WSAENETDOWN, `is_up` false).
    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
    }

    /// Make every later `steer_add` fail with `err` (None: succeed again).
    pub fn fail_steer(&self, err: Option<WsaError>) {
        *lock(&self.fail_steer) = err;
    }

    /// Stop recording sent datagrams (long-running tests).
    pub fn record_sent(&self, on: bool) {
        self.record_sent.store(on, Ordering::Relaxed);
    }

    /// Stop recording STEER operations (long-running tests, fuzzing); `steered` still counts.
    pub fn record_steer_ops(&self, on: bool) {
        self.record_steer.store(on, Ordering::Relaxed);
    }

    /// STEER entries added and not removed since (0 once every endpoint is released).
    pub fn steered(&self) -> isize {
        self.steered.load(Ordering::Relaxed)
    }

    /// Every STEER operation so far, in order (while recording).
    pub fn steer_ops(&self) -> Vec<SteerOp> {
        lock(&self.steer_ops).clone()
    }

    /// Every datagram sent so far (while recording).
    pub fn sent(&self) -> Vec<Sent> {
        lock(&self.sent).clone()
    }
}

impl Datapath for LoopbackDatapath {
    fn steer_add(&self, key: SteerKey) -> Result<(), WsaError> {
        if let Some(err) = *lock(&self.fail_steer) {
            return Err(err);
        }
        self.steered.fetch_add(1, Ordering::Relaxed);
        if self.record_steer.load(Ordering::Relaxed) {
            lock(&self.steer_ops).push(SteerOp::Add(key));
        }
        Ok(())
    }

    fn steer_remove(&self, key: SteerKey) {
        self.steered.fetch_sub(1, Ordering::Relaxed);
        if self.record_steer.load(Ordering::Relaxed) {
            lock(&self.steer_ops).push(SteerOp::Remove(key));
        }
    }

    fn send_udp(&self, src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Result<(), WsaError> {
        if !self.is_up() {
            return Err(WsaError::WSAENETDOWN);
        }
        if self.record_sent.load(Ordering::Relaxed) {
            lock(&self.sent).push(Sent {
                src,
                dst,
                len: payload.len(),
            });
        }
        let provider = self.provider.get().and_then(Weak::upgrade);
        let delivered = match provider {
            Some(p) if self.addrs.contains(&dst.ip()) => p.deliver_udp(0, dst, src, payload),
            _ => false,
        };
        if !delivered {
            self.undelivered.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn send_ip(&self, src: IpAddr, dst: IpAddr, _proto: u8, l4: &[u8]) -> Result<(), WsaError> {
        if !self.is_up() {
            return Err(WsaError::WSAENETDOWN);
        }
        if self.addrs.contains(&dst) {
            lock(&self.segments).push_back((src, dst, l4.to_vec()));
        } else {
            self.undelivered.fetch_add(1, Ordering::Relaxed);
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
        self.addrs.clone()
    }

    fn max_udp_payload(&self, v6: bool) -> usize {
        // A 1500-byte MTU.
        if v6 { 1500 - 40 - 8 } else { 1500 - 20 - 8 }
    }

    fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }
}
