//! One RX queue's loop: drain RX → deliver → reap completions → sleep in poll (or spin).
//! The step is shared by the queue threads and the application-driven [`Driver`](super::Driver).
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::{EngineConfig, XdpDatapath, datapath::lock};
use crate::{
    api::Provider,
    net::{
        ParseError,
        frame::{self, L3},
    },
};

/// Longest sleep in `poll` so a stop request is noticed promptly.
pub(super) const IDLE_POLL_MS: i32 = 50;

/// What one [`QueueStep::poll`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Frames were received or timers ran: poll again before sleeping.
    Busy,
    /// Nothing to do until the socket is readable, a wake-up arrives, or `until` (the next TCP
    /// timer of a queue that runs them) passes.
    Idle { until: Option<Instant> },
}

/// One RX queue's work, one batch at a time: the body of the queue thread, and of
/// [`Driver`](super::Driver) when the application's own event loop drives the engine.
pub(super) struct QueueStep {
    queue: u32,
    /// TCP segments are copied out of the RX frames and handed to the TCP engine after the
    /// queue's lock is released: the engine transmits (taking TX locks) as it processes them.
    tcp: TcpBatch,
    tally: RxTally,
}

impl QueueStep {
    pub(super) fn new(queue: u32) -> Self {
        Self {
            queue,
            tcp: TcpBatch::default(),
            tally: RxTally::default(),
        }
    }

    /// Drain one RX batch, deliver it, reap TX completions, run due timers.
    pub(super) fn poll(
        &mut self,
        dp: &XdpDatapath,
        provider: &Provider,
        cfg: &EngineConfig,
    ) -> Progress {
        let queue = self.queue as usize;
        let started = Instant::now();
        let n = {
            let mut slot = lock(&dp.xsks[queue]);
            // A released queue (channel change) has no socket: nothing to receive.
            let Some(xsk) = slot.as_mut() else {
                return Progress::Idle { until: None };
            };
            let (tcp, tally) = (&mut self.tcp, &mut self.tally);
            let n = xsk.recv_batch(cfg.rx_batch, |f| {
                handle_frame(dp, provider, queue, f, tcp, tally)
            });
            xsk.reap_completions();
            n
        };
        self.tally.flush(dp);
        let mut busy = n > 0;
        let delivered = !self.tcp.segments.is_empty();
        if delivered {
            let bytes = &self.tcp.bytes;
            provider.deliver_tcp_batch(
                queue,
                self.tcp
                    .segments
                    .drain(..)
                    .map(|(src, dst, range)| (src, dst, &bytes[range])),
            );
            self.tcp.bytes.clear();
        }
        let shards = shards_of(queue, dp.served_count(), provider.tcp_shards());
        for k in shards.clone() {
            // The batch delivery drained this queue's own shard's inbox already.
            if !(delivered && k == queue) && provider.tcp_drain_inbox(k) {
                busy = true;
            }
        }
        dp.counters.add_rx(n as u64);
        dp.queue_counters[queue]
            .rx_frames
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        let mut until: Option<Instant> = None;
        for k in shards {
            if let Some(deadline) = provider.tcp_next_timeout_shard(k) {
                if deadline <= Instant::now() {
                    provider.tcp_tick_shard(k);
                    busy = true;
                } else {
                    until = Some(until.map_or(deadline, |u| u.min(deadline)));
                }
            }
        }
        if busy {
            dp.queue_counters[queue].busy_pass.record(started.elapsed());
            Progress::Busy
        } else {
            Progress::Idle { until }
        }
    }
}

/// The queue thread: step, and sleep in `poll` (without the queue lock, so senders can use the
/// TX ring meanwhile) when idle.
pub(super) fn run(queue: u32, dp: &XdpDatapath, provider: &Provider, cfg: &EngineConfig) {
    let generation = dp.slot_generation(queue);
    let poller = match lock(&dp.xsks[queue as usize]).as_ref().map(|x| x.poller()) {
        Some(Ok(p)) => p,
        Some(Err(err)) => {
            tracing::error!(queue, %err, "cannot poll the AF_XDP socket; queue thread stops");
            return;
        }
        None => return,
    };
    let mut step = QueueStep::new(queue);
    let mut spin = Spin::for_queue_thread(cfg);
    // Serve the socket this thread started with; a released (or released and re-bound) queue
    // has a thread of its own. Queue 0 runs the timers and is never released.
    while dp.is_running() && dp.slot_generation(queue) == generation {
        let progress = step.poll(dp, provider, cfg);
        let Progress::Idle { until } = progress else {
            spin.traffic();
            continue;
        };
        if spin.keep_polling() {
            // Let the application's threads (often on this very CPU) run between polls.
            std::thread::yield_now();
            continue;
        }
        let timeout_ms = idle_timeout_ms(until, Instant::now());
        dp.wakers[queue as usize].wait(&poller, timeout_ms);
    }
}

/// The TCP shards queue `queue`'s thread runs: its own (shard `queue`), and those of released
/// queues that map onto it (`k mod served == queue`). A queue beyond the shards runs none: it
/// hands every segment to its owner.
pub(super) fn shards_of(
    queue: usize,
    served: usize,
    shards: usize,
) -> std::iter::StepBy<std::ops::Range<usize>> {
    (queue..shards.max(queue)).step_by(served.max(1))
}

/// Adaptive polling ([`EngineConfig::spin_after_traffic`], [`EngineConfig::busy_poll`]):
/// whether an idle poll should be followed by another poll rather than a sleep.
pub struct Spin {
    window: std::time::Duration,
    always: bool,
    last_traffic: Option<Instant>,
}

impl Spin {
    pub(super) fn new(cfg: &EngineConfig) -> Self {
        Self {
            window: cfg.spin_after_traffic,
            always: cfg.busy_poll,
            last_traffic: None,
        }
    }

    /// For a queue thread: no adaptive window unless `spin_queue_threads` (busy_poll still
    /// spins always).
    pub(super) fn for_queue_thread(cfg: &EngineConfig) -> Self {
        let mut s = Self::new(cfg);
        if !cfg.spin_queue_threads {
            s.window = std::time::Duration::ZERO;
        }
        s
    }

    /// A poll found work.
    pub fn traffic(&mut self) {
        if !self.window.is_zero() {
            self.last_traffic = Some(Instant::now());
        }
    }

    /// After an idle poll: poll again (true) or sleep (false).
    pub fn keep_polling(&mut self) -> bool {
        if self.always {
            return true;
        }
        match self.last_traffic {
            Some(t) if t.elapsed() < self.window => true,
            Some(_) => {
                self.last_traffic = None;
                false
            }
            None => false,
        }
    }
}

/// Milliseconds to sleep when idle: until the next timer, at most [`IDLE_POLL_MS`].
pub(super) fn idle_timeout_ms(until: Option<Instant>, now: Instant) -> i32 {
    until.map_or(IDLE_POLL_MS, |deadline| {
        let ms = deadline
            .saturating_duration_since(now)
            .as_micros()
            .div_ceil(1000);
        i32::try_from(ms).unwrap_or(i32::MAX).min(IDLE_POLL_MS)
    })
}

/// TCP segments of one RX batch, copied out of UMEM.
#[derive(Default)]
struct TcpBatch {
    bytes: Vec<u8>,
    segments: Vec<(IpAddr, IpAddr, std::ops::Range<usize>)>,
}

/// Frame counts of one RX batch, added to the engine-wide counters once per batch: the
/// per-frame path writes no cache line shared with other queues.
#[derive(Default)]
struct RxTally {
    udp: u64,
    no_socket: u64,
    malformed: u64,
    bad_checksum: u64,
    partial_checksum: u64,
    unhandled: u64,
}

impl RxTally {
    fn flush(&mut self, dp: &XdpDatapath) {
        let t = std::mem::take(self);
        let c = &dp.counters;
        for (counter, n) in [
            (&c.rx_udp, t.udp),
            (&c.rx_no_socket, t.no_socket),
            (&c.rx_malformed, t.malformed),
            (&c.rx_bad_checksum, t.bad_checksum),
            (&c.rx_partial_checksum, t.partial_checksum),
            (&c.rx_unhandled_proto, t.unhandled),
        ] {
            super::stats::EngineCounters::add_batch(counter, n);
        }
    }
}

fn handle_frame(
    dp: &XdpDatapath,
    provider: &Provider,
    queue: usize,
    bytes: &[u8],
    tcp: &mut TcpBatch,
    tally: &mut RxTally,
) {
    let parsed = match frame::parse_with(bytes, dp.checksums) {
        Ok(p) => {
            if p.partial_checksum {
                tally.partial_checksum += 1;
            }
            p
        }
        Err(ParseError::BadChecksum) => return tally.bad_checksum += 1,
        Err(_) => return tally.malformed += 1,
    };
    let (src, dst): (IpAddr, IpAddr) = match parsed.l3 {
        L3::V4 { src, dst } => (src.into(), dst.into()),
        L3::V6 { src, dst } => (src.into(), dst.into()),
    };
    match parsed.proto {
        provider_common::PROTO_UDP => {
            tally.udp += 1;
            let local = SocketAddr::new(dst, parsed.dst_port);
            let remote = SocketAddr::new(src, parsed.src_port);
            if !provider.deliver_udp(queue, local, remote, parsed.payload) {
                tally.no_socket += 1;
            }
        }
        provider_common::PROTO_TCP => {
            let start = tcp.bytes.len();
            tcp.bytes.extend_from_slice(parsed.l4);
            tcp.bytes.extend_from_slice(parsed.payload);
            tcp.segments.push((src, dst, start..tcp.bytes.len()));
        }
        _ => tally.unhandled += 1,
    }
}
