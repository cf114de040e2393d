//! `XdpDatapath`: the real `Datapath` — STEER map updates, frame building and TX onto the rings.
use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
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
    net::{checksum, frame, neighbour::Neighbours},
    socket::{Datapath, L4Out, WsaError, send_l4_copying},
    xdp::Steering,
    xsk::{TxBuild, TxChecksum, TxFrame, Xsk, XskConfig},
};

/// Writes one frame into a TX buffer given (our MAC, next-hop MAC); returns its length.
type FrameBuilder<'a> = &'a dyn Fn(&mut [u8], [u8; 6], [u8; 6]) -> Result<usize, frame::BuildError>;

/// Facts about the served interface.
pub(super) struct Interface {
    pub name: String,
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub mtu: u32,
    pub addrs: Vec<IpAddr>,
    pub checksums: frame::Checksums,
}

/// How long a send waits for the kernel to resolve a missing neighbour.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(1);
/// Destination → (next-hop MAC, when it was resolved).
type MacCache = rustc_hash::FxHashMap<IpAddr, ([u8; 6], std::time::Instant)>;

/// How long a queue trusts a next-hop MAC it resolved (the kernel's table may change).
const MAC_CACHE_TTL: Duration = Duration::from_secs(1);
/// Entries a queue's MAC cache holds before expired ones are pruned.
const MAC_CACHE_MAX: usize = 4096;
/// How many times a send reaps completions and retries before reporting WSAENOBUFS.
const TX_RETRIES: usize = 64;

pub struct XdpDatapath {
    /// Whether TCP segments leave their checksum to the kernel / device (AF_XDP TX metadata).
    tx_checksum_offload: bool,
    name: String,
    ifindex: u32,
    mac: [u8; 6],
    mtu: usize,
    addrs: Vec<IpAddr>,
    /// Whether received frames may carry partial checksums (veth).
    pub(super) checksums: frame::Checksums,
    steering: Mutex<Steering>,
    /// One slot per RX queue the interface could ever run (allocated at start); queues
    /// `0..served` hold a bound socket, the rest `None`. Active queues are always numbered
    /// from 0, so the served set is a prefix.
    pub(super) xsks: Vec<Mutex<Option<Xsk>>>,
    served: AtomicUsize,
    /// Per slot, bumped whenever its socket is bound or released: a queue thread serves the
    /// socket it started with and ends when the slot changes.
    slot_generation: Vec<AtomicU64>,
    /// Bumped whenever the served set changes, so drivers rebuild their per-queue state.
    epoch: AtomicU64,
    /// How sockets of queues bound later are made.
    xsk_config: XskConfig,
    neighbours: Mutex<Neighbours>,
    /// Per TX queue: next-hop MACs resolved recently, so a send takes only its queue's locks
    /// (the shared `neighbours` only on a miss, at most once per destination per second).
    mac_cache: Vec<Mutex<MacCache>>,
    running: Running,
    pub(super) counters: EngineCounters,
    pub(super) queue_counters: Vec<QueueCounters>,
    /// Queues with frames reserved by `send_ip` and not yet kicked.
    tx_pending: Vec<AtomicBool>,
    /// One per queue slot: wakes the thread serving that queue when one of its TCP shards has
    /// an earlier deadline or was handed segments by another queue.
    pub(super) wakers: Vec<super::wake::Waker>,
    /// While an async driver task runs (`aio::drive`), `flush_tx` leaves the kick to it: the
    /// task is woken and kicks once for everything the application's tasks queued in one
    /// scheduling round, instead of one system call per send.
    deferred_kick: Mutex<Option<std::task::Waker>>,
    /// A deferred kick is owed.
    kick_wanted: AtomicBool,
}

/// Lock, recovering from a poisoned mutex: the guarded state stays consistent because no
/// critical section here leaves it half-updated.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl XdpDatapath {
    pub(super) fn new(
        Interface {
            name,
            ifindex,
            mac,
            mtu,
            addrs,
            checksums,
        }: Interface,
        steering: Steering,
        xsks: Vec<Mutex<Option<Xsk>>>,
        xsk_config: XskConfig,
        neighbours: Neighbours,
        wakers: Vec<super::wake::Waker>,
    ) -> Self {
        let served = xsks.iter().take_while(|x| lock(x).is_some()).count();
        let capacity = xsks.len();
        // Queues bound later without it finish the checksums in software (send_l4_batch).
        let tx_checksum_offload = xsks
            .iter()
            .any(|x| lock(x).as_ref().is_some_and(Xsk::tx_checksum_offload));
        Self {
            tx_checksum_offload,
            name,
            ifindex,
            mac,
            mtu: mtu as usize,
            addrs,
            checksums,
            steering: Mutex::new(steering),
            served: AtomicUsize::new(served),
            slot_generation: xsks.iter().map(|_| AtomicU64::new(0)).collect(),
            epoch: AtomicU64::new(0),
            xsk_config,
            queue_counters: xsks.iter().map(|_| QueueCounters::default()).collect(),
            tx_pending: xsks.iter().map(|_| AtomicBool::new(false)).collect(),
            wakers,
            deferred_kick: Mutex::new(None),
            kick_wanted: AtomicBool::new(false),
            xsks,
            neighbours: Mutex::new(neighbours),
            mac_cache: (0..capacity).map(|_| Mutex::default()).collect(),
            running: Arc::new(AtomicBool::new(true)),
            counters: EngineCounters::default(),
        }
    }

    /// Wake every queue's thread (stop, or a change they must all see).
    pub(super) fn wake_all(&self) {
        for w in &self.wakers {
            w.wake();
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

    /// Kick every queue with frames waiting on its TX ring.
    pub(super) fn kick_now(&self) {
        for (q, pending) in self.tx_pending.iter().enumerate() {
            if pending.swap(false, Ordering::AcqRel)
                && let Some(xsk) = lock(&self.xsks[q]).as_mut()
            {
                if let Err(err) = xsk.flush() {
                    tracing::warn!(%err, queue = q, "TX kick failed");
                }
                xsk.reap_completions();
            }
        }
    }

    /// Defer kicks to the async driver task `waker` wakes (None: kick in `flush_tx` again,
    /// and push out anything still owed).
    pub(super) fn defer_kicks(&self, waker: Option<&std::task::Waker>) {
        let mut slot = lock(&self.deferred_kick);
        match (waker, slot.as_ref()) {
            (Some(w), Some(cur)) if cur.will_wake(w) => {}
            (Some(w), _) => *slot = Some(w.clone()),
            (None, _) => {
                *slot = None;
                drop(slot);
                self.kick_now();
            }
        }
    }

    /// Take the owed deferred kick, if any (true: the caller kicks).
    pub(super) fn take_kick_wanted(&self) -> bool {
        self.kick_wanted.swap(false, Ordering::AcqRel)
    }

    /// Unregister every queue's socket, forget every endpoint and detach the program, so the
    /// interface's traffic goes to the kernel even while the `Provider` object lives on.
    pub(super) fn detach(&self) {
        let mut steering = lock(&self.steering);
        for q in 0..self.xsks.len() as u32 {
            let _ = steering.clear_xsk(q);
        }
        self.served.store(0, Ordering::Release);
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

    /// The interface's name.
    pub fn interface(&self) -> &str {
        &self.name
    }

    /// The interface's addresses (read at start).
    pub fn addrs(&self) -> &[IpAddr] {
        &self.addrs
    }

    /// How many RX queues have a bound socket now (queues `0..n`); at least 1 for choosing a
    /// TX queue.
    pub(super) fn served_count(&self) -> usize {
        self.served.load(Ordering::Acquire).max(1)
    }

    /// Changes whenever queue `q`'s socket is bound or released.
    pub(super) fn slot_generation(&self, q: u32) -> u64 {
        self.slot_generation[q as usize].load(Ordering::Acquire)
    }

    /// Changes whenever the served queue set changes.
    pub(super) fn queue_epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Most queues this engine can serve (slots allocated at start).
    pub(super) fn queue_capacity(&self) -> usize {
        self.xsks.len()
    }

    /// Serve RX queues `0..target`: bind sockets on the queues that are new (registering each
    /// in XSKS only once its fill ring is stocked) and release the ones beyond `target` (their
    /// frames fall back to the kernel as soon as the XSKS entry is gone). Returns the queues
    /// newly bound; on a bind failure it stops there and reports it with what was bound before.
    pub(super) fn serve_queues(&self, target: usize) -> (Vec<u32>, Option<(u32, std::io::Error)>) {
        let target = target.clamp(1, self.xsks.len());
        let current = self.served.load(Ordering::Acquire);
        let mut added = Vec::new();
        let mut failure = None;
        if target > current {
            for q in current..target {
                let queue = q as u32;
                let bound = Xsk::new(self.ifindex, queue, &self.xsk_config).and_then(|xsk| {
                    lock(&self.steering)
                        .set_xsk(queue, &xsk.fd())
                        .map_err(std::io::Error::other)?;
                    Ok(xsk)
                });
                match bound {
                    Ok(xsk) => {
                        *lock(&self.xsks[q]) = Some(xsk);
                        self.slot_generation[q].fetch_add(1, Ordering::AcqRel);
                        added.push(queue);
                    }
                    Err(err) => {
                        failure = Some((queue, err));
                        break;
                    }
                }
            }
            self.served.store(current + added.len(), Ordering::Release);
        } else if target < current {
            // Stop choosing the vanished queues for TX first, then unregister and close them.
            self.served.store(target, Ordering::Release);
            for q in target..current {
                let _ = lock(&self.steering).clear_xsk(q as u32);
                self.tx_pending[q].store(false, Ordering::Release);
                lock(&self.xsks[q]).take();
                self.slot_generation[q].fetch_add(1, Ordering::AcqRel);
            }
        }
        if target != current {
            self.epoch.fetch_add(1, Ordering::AcqRel);
        }
        (added, failure)
    }

    pub(super) fn stats(&self, provider: &Provider) -> EngineStats {
        let xdp = lock(&self.steering).stats().unwrap_or_default();
        let queues = self
            .xsks
            .iter()
            .zip(&self.queue_counters)
            .filter_map(|(x, c)| {
                let x = lock(x);
                let x = x.as_ref()?;
                Some(QueueStats {
                    queue: x.queue(),
                    rx_frames: c.rx_frames.load(Ordering::Relaxed),
                    tx_frames: c.tx_frames.load(Ordering::Relaxed),
                    zero_copy: matches!(x.mode(), crate::xsk::BindMode::ZeroCopy),
                    xsk: x.statistics().unwrap_or_default(),
                    pending_tx: x.pending_tx(),
                    free_tx_frames: x.free_tx_frames(),
                    kicks: x.kicks(),
                    tx_kicks_per_frame: {
                        let frames = c.tx_frames.load(Ordering::Relaxed);
                        if frames == 0 {
                            0.0
                        } else {
                            x.kicks().tx as f64 / frames as f64
                        }
                    },
                    busy_pass: c.busy_pass.summary(),
                    tx_checksum_offload: x.tx_checksum_offload(),
                    busy_poll: x.busy_poll(),
                })
            })
            .collect();
        EngineStats {
            interface: None,
            xdp,
            queues,
            engine: self.counters.snapshot(),
            tcp_shards: provider.tcp_shard_stats(),
            tcp_flow_owner: if provider.tcp_router_is_device() {
                "device-rss"
            } else {
                "software"
            },
            sockets: provider.stats(),
        }
    }

    /// Build one frame in a free UMEM frame of queue `q`'s TX ring; with `kick`, push it out
    /// at once, else leave it for `flush_tx`.
    fn transmit(
        &self,
        dst: IpAddr,
        q: usize,
        kick: bool,
        build: FrameBuilder<'_>,
    ) -> Result<(), WsaError> {
        if !self.is_running() {
            return Err(WsaError::WSAENETDOWN);
        }
        let dst_mac = self.next_hop_mac(dst, q)?;
        let mut slot = lock(&self.xsks[q]);
        if slot.is_none() {
            // The queue was released between the choice and the lock; queue 0 serves while
            // the engine runs.
            drop(slot);
            return if q == 0 {
                Err(WsaError::WSAENETDOWN)
            } else {
                self.transmit(dst, 0, kick, build)
            };
        }
        let xsk = slot.as_mut().expect("checked above");
        let mut built = Err(WsaError::WSAENOBUFS);
        for attempt in 0..TX_RETRIES {
            let ok = xsk.send_with(usize::MAX, |buf| match build(buf, self.mac, dst_mac) {
                Ok(len) => {
                    built = Ok(());
                    len
                }
                Err(_) => {
                    built = Err(WsaError::WSAEMSGSIZE);
                    0
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
        if kick {
            xsk.flush().map_err(|err| {
                tracing::warn!(%err, "TX kick failed");
                WsaError::WSAENETDOWN
            })?;
            xsk.reap_completions();
        } else {
            self.tx_pending[q].store(true, Ordering::Release);
        }
        self.counters.add_tx(1);
        self.queue_counters[q]
            .tx_frames
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The next-hop MAC for `dst` if queue `q`'s cache has it fresh (never blocks).
    fn cached_mac(&self, dst: IpAddr, q: usize, now: std::time::Instant) -> Option<[u8; 6]> {
        let cache = self.mac_cache.get(q)?;
        match lock(cache).get(&dst) {
            Some(&(mac, at)) if now.duration_since(at) < MAC_CACHE_TTL => Some(mac),
            _ => None,
        }
    }

    /// The next-hop MAC for `dst`, from queue `q`'s cache when fresh.
    fn next_hop_mac(&self, dst: IpAddr, q: usize) -> Result<[u8; 6], WsaError> {
        let now = std::time::Instant::now();
        if let Some(mac) = self.cached_mac(dst, q, now) {
            return Ok(mac);
        }
        if let Some(cache) = self.mac_cache.get(q) {
            let mac = self.resolve_mac(dst)?;
            let mut c = lock(cache);
            if c.len() >= MAC_CACHE_MAX {
                c.retain(|_, (_, at)| now.duration_since(*at) < MAC_CACHE_TTL);
            }
            c.insert(dst, (mac, now));
            return Ok(mac);
        }
        self.resolve_mac(dst)
    }

    fn resolve_mac(&self, dst: IpAddr) -> Result<[u8; 6], WsaError> {
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
        if payload.len() > self.max_udp_payload(dst.is_ipv6()) {
            return Err(WsaError::WSAEMSGSIZE);
        }
        // Spread senders over the queues by source port; any TX queue reaches the wire.
        let q = src.port() as usize % self.served_count();
        self.transmit(dst.ip(), q, true, &|buf, mac, dst_mac| {
            frame::build_udp(buf, mac, dst_mac, None, src, dst, payload)
        })
    }

    fn send_ip_on(
        &self,
        shard: usize,
        src: IpAddr,
        dst: IpAddr,
        proto: u8,
        l4: &[u8],
    ) -> Result<(), WsaError> {
        // Shard k transmits on queue k (mod the served count after a shrink).
        let q = shard % self.served_count();
        self.transmit(dst, q, false, &|buf, mac, dst_mac| {
            frame::build_ip(buf, mac, dst_mac, None, src, dst, proto, l4)
        })
    }

    fn send_l4_batch(
        &self,
        shard: usize,
        proto: u8,
        scratch: &mut [u8],
        next: &mut dyn FnMut(&mut [u8]) -> Option<L4Out>,
    ) -> usize {
        let q = shard % self.served_count();
        let mut produced = 0;
        loop {
            let now = std::time::Instant::now();
            let mut slot = lock(&self.xsks[q]);
            let (Some(xsk), true) = (slot.as_mut(), self.is_running()) else {
                // Released queue or stopped datapath: the copying path redirects or reports.
                drop(slot);
                return produced + send_l4_copying(self, shard, proto, scratch, next);
            };
            // A segment whose next hop is not cached: copied out, sent after the XSK lock is
            // released (resolving may wait for the kernel).
            let mut unresolved: Option<L4Out> = None;
            let mut exhausted = false;
            let mut queued = 0;
            let mut retries = 0;
            while !exhausted && unresolved.is_none() {
                let l4_at = frame::L4_IN_PLACE_AT + xsk.tx_metadata_len();
                let offload = xsk.tx_checksum_offload();
                let r = xsk.send_within(|frame| {
                    let out = next(frame.get_mut(l4_at..)?);
                    let Some(out) = out else {
                        exhausted = true;
                        return None;
                    };
                    produced += 1;
                    let l4 = &mut frame[l4_at..l4_at + out.len];
                    let Some(dst_mac) = self.cached_mac(out.dst, q, now) else {
                        scratch[..out.len].copy_from_slice(l4);
                        unresolved = Some(out);
                        return None;
                    };
                    let mut checksum = None;
                    if let Some(at) = out.partial_checksum_at {
                        if offload {
                            checksum = Some(at);
                        } else {
                            checksum::finish_partial(l4, at);
                        }
                    }
                    match frame::wrap_l4_in_place(
                        frame, l4_at, self.mac, dst_mac, out.src, out.dst, proto, out.len,
                    ) {
                        Ok(range) => {
                            let start = l4_at - range.start;
                            Some(TxFrame {
                                checksum: checksum.map(|at| TxChecksum {
                                    start: start as u16,
                                    offset: at as u16,
                                }),
                                range,
                            })
                        }
                        Err(err) => {
                            tracing::debug!(%err, dst = %out.dst, "segment not sent");
                            None
                        }
                    }
                });
                match r {
                    TxBuild::Queued => {
                        queued += 1;
                        retries = 0;
                    }
                    TxBuild::Cancelled => {}
                    TxBuild::NoRoom => {
                        // Push out what is queued and take back completions; give up after a
                        // while (the source keeps what it did not produce).
                        retries += 1;
                        if retries > TX_RETRIES {
                            exhausted = true;
                        } else if retries > 1 {
                            std::thread::yield_now();
                        }
                        let _ = xsk.flush();
                        xsk.reap_completions();
                    }
                }
            }
            drop(slot);
            if queued > 0 {
                self.tx_pending[q].store(true, Ordering::Release);
                self.counters.add_tx(queued);
                self.queue_counters[q]
                    .tx_frames
                    .fetch_add(queued, Ordering::Relaxed);
            }
            match unresolved {
                Some(out) => {
                    let l4 = &mut scratch[..out.len];
                    if let Some(at) = out.partial_checksum_at {
                        checksum::finish_partial(l4, at);
                    }
                    if let Err(err) = self.send_ip_on(shard, out.src, out.dst, proto, l4) {
                        tracing::debug!(%err, dst = %out.dst, "segment not sent");
                    }
                }
                None => return produced,
            }
        }
    }

    fn send_ip(&self, src: IpAddr, dst: IpAddr, proto: u8, l4: &[u8]) -> Result<(), WsaError> {
        // One flow, one TX queue (ports are the first 4 bytes of TCP and UDP headers).
        let ports = l4.get(..4).map_or(0, |p| {
            usize::from(u16::from_be_bytes([p[0], p[1]]) ^ u16::from_be_bytes([p[2], p[3]]))
        });
        let q = ports % self.served_count();
        self.transmit(dst, q, false, &|buf, mac, dst_mac| {
            frame::build_ip(buf, mac, dst_mac, None, src, dst, proto, l4)
        })
    }

    fn tx_checksum_offload(&self) -> bool {
        self.tx_checksum_offload
    }

    fn flush_tx(&self) {
        if super::held_kicks::held() {
            // The frames stay pending for this thread's release (`held_kicks`).
            return;
        }
        if let Some(task) = lock(&self.deferred_kick).as_ref() {
            if !self.kick_wanted.swap(true, Ordering::AcqRel) {
                task.wake_by_ref();
            }
            return;
        }
        self.kick_now();
    }

    fn wake(&self) {
        self.wake_all();
    }

    fn wake_shard(&self, shard: usize) {
        // Shard k is run by the thread of queue k, or (queue released) of k mod served.
        self.wakers[shard % self.served_count()].wake();
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
