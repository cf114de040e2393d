//! `XdpDatapath`: the real `Datapath` — STEER map updates, frame building and TX onto the rings.
use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use provider_common::SteerKey;

use super::{
    Running,
    stats::{EngineCounters, EngineStats, QueueCounters, QueueStats},
};
use crate::{
    api::Provider,
    net::{frame, neighbour::Neighbours},
    socket::{Datapath, WsaError},
    xdp::Steering,
    xsk::Xsk,
};

/// How long a send waits for the kernel to resolve a missing neighbour.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(1);
/// How many times a send reaps completions and retries before reporting WSAENOBUFS.
const TX_RETRIES: usize = 64;

pub struct XdpDatapath {
    ifindex: u32,
    mac: [u8; 6],
    mtu: usize,
    addrs: Vec<IpAddr>,
    steering: Mutex<Steering>,
    pub(super) xsks: Vec<Mutex<Xsk>>,
    neighbours: Mutex<Neighbours>,
    running: Running,
    pub(super) counters: EngineCounters,
    pub(super) queue_counters: Vec<QueueCounters>,
}

/// Lock, recovering from a poisoned mutex: the guarded state stays consistent because no
/// critical section here leaves it half-updated.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl XdpDatapath {
    pub(super) fn new(
        ifindex: u32,
        mac: [u8; 6],
        mtu: u32,
        addrs: Vec<IpAddr>,
        steering: Steering,
        xsks: Vec<Mutex<Xsk>>,
        neighbours: Neighbours,
    ) -> Self {
        Self {
            ifindex,
            mac,
            mtu: mtu as usize,
            addrs,
            steering: Mutex::new(steering),
            queue_counters: xsks.iter().map(|_| QueueCounters::default()).collect(),
            xsks,
            neighbours: Mutex::new(neighbours),
            running: Arc::new(AtomicBool::new(true)),
            counters: EngineCounters::default(),
        }
    }

    pub(super) fn running_flag(&self) -> Running {
        self.running.clone()
    }

    pub(super) fn is_running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }

    pub(super) fn set_down(&self) {
        self.running.store(false, Ordering::Release);
    }

    /// Unregister every queue's socket, forget every endpoint and detach the program, so the
    /// interface's traffic goes to the kernel even while the `Provider` object lives on.
    pub(super) fn detach(&self) {
        let mut steering = lock(&self.steering);
        for q in 0..self.xsks.len() as u32 {
            let _ = steering.clear_xsk(q);
        }
        for key in steering.steered_keys() {
            let _ = steering.steer_remove(&key);
        }
        if let Err(err) = steering.detach() {
            tracing::warn!(%err, "XDP detach failed");
        }
    }

    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    pub(super) fn stats(&self, provider: &Provider) -> EngineStats {
        let xdp = lock(&self.steering).stats().unwrap_or_default();
        let queues = self
            .xsks
            .iter()
            .zip(&self.queue_counters)
            .map(|(x, c)| {
                let x = lock(x);
                QueueStats {
                    queue: x.queue(),
                    rx_frames: c.rx_frames.load(Ordering::Relaxed),
                    tx_frames: c.tx_frames.load(Ordering::Relaxed),
                    zero_copy: matches!(x.mode(), crate::xsk::BindMode::ZeroCopy),
                    xsk: x.statistics().unwrap_or_default(),
                    pending_tx: x.pending_tx(),
                    free_tx_frames: x.free_tx_frames(),
                }
            })
            .collect();
        EngineStats {
            xdp,
            queues,
            engine: self.counters.snapshot(),
            sockets: provider.stats(),
        }
    }

    fn next_hop_mac(&self, dst: IpAddr) -> Result<[u8; 6], WsaError> {
        let mut n = lock(&self.neighbours);
        let hop = n.next_hop(dst).map_err(|_| WsaError::WSAENETUNREACH)?;
        n.resolve(hop, RESOLVE_TIMEOUT).map_err(|err| {
            tracing::debug!(%dst, %hop, %err, "neighbour resolution failed");
            WsaError::WSAEHOSTUNREACH
        })
    }
}

impl Datapath for XdpDatapath {
    fn steer_add(&self, key: SteerKey) -> Result<(), WsaError> {
        if !self.is_running() {
            return Err(WsaError::WSAENETDOWN);
        }
        lock(&self.steering).steer_add(key).map_err(|err| {
            tracing::warn!(%err, "STEER insert failed");
            WsaError::WSAENOBUFS
        })
    }

    fn steer_remove(&self, key: SteerKey) {
        if let Err(err) = lock(&self.steering).steer_remove(&key) {
            tracing::warn!(%err, "STEER remove failed");
        }
    }

    fn send_udp(&self, src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Result<(), WsaError> {
        if !self.is_running() {
            return Err(WsaError::WSAENETDOWN);
        }
        if payload.len() > self.max_udp_payload(dst.is_ipv6()) {
            return Err(WsaError::WSAEMSGSIZE);
        }
        let dst_mac = self.next_hop_mac(dst.ip())?;
        // Spread senders over the queues by source port; any TX queue reaches the wire.
        let q = src.port() as usize % self.xsks.len();
        let mut xsk = lock(&self.xsks[q]);
        let mut built = Err(WsaError::WSAENOBUFS);
        for attempt in 0..TX_RETRIES {
            let ok = xsk.send_with(usize::MAX, |buf| {
                match frame::build_udp(buf, self.mac, dst_mac, None, src, dst, payload) {
                    Ok(len) => {
                        built = Ok(());
                        len
                    }
                    Err(_) => {
                        built = Err(WsaError::WSAEMSGSIZE);
                        0
                    }
                }
            });
            if ok {
                break;
            }
            if built == Err(WsaError::WSAEMSGSIZE) {
                return built;
            }
            // No free frame or ring full: push out what is queued and take back completions.
            if attempt > 0 {
                std::thread::yield_now();
            }
            let _ = xsk.flush();
            xsk.reap_completions();
        }
        built?;
        xsk.flush().map_err(|err| {
            tracing::warn!(%err, "TX kick failed");
            WsaError::WSAENETDOWN
        })?;
        xsk.reap_completions();
        self.counters.add_tx(1);
        self.queue_counters[q]
            .tx_frames
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn local_addrs(&self) -> Vec<IpAddr> {
        self.addrs.clone()
    }

    fn max_udp_payload(&self, v6: bool) -> usize {
        self.mtu.saturating_sub(if v6 { 40 + 8 } else { 20 + 8 })
    }

    fn is_up(&self) -> bool {
        self.is_running()
    }
}
