//! Driving the engine from the application's own event loop instead of queue threads
//! ([`Drive::Application`](super::Drive::Application)).
//!
//! With queue threads every received segment crosses threads twice before the application sees
//! it (NIC → queue thread → application thread), and on a small machine those wake-ups cost more
//! than the protocol work. A [`Driver`] runs the very same per-queue step on whatever thread
//! polls it — typically a task on the application's tokio runtime ([`crate::aio::drive`]), so
//! reception, the TCP engine, the application and transmission share one thread, as with the
//! kernel stack.
//!
//! Any event loop can drive it: call [`Driver::poll`] until it reports [`Progress::Idle`], then
//! wait until one of [`Driver::fds`] is readable (the AF_XDP sockets and the timer wake-up
//! eventfd) or the `until` instant passes, call [`Driver::clear_wake`], and poll again.
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

pub use super::queue::Spin;
use super::queue::{QueueStep, idle_timeout_ms};
use super::{EngineConfig, XdpDatapath, datapath::lock};
use crate::api::Provider;
use crate::xsk::Poller;

pub use super::queue::Progress;

/// The engine's queue work, run by the caller. At most one exists per engine at a time; once
/// the engine stops, [`is_running`](Self::is_running) turns false and polling does nothing.
pub struct Driver {
    dp: Arc<XdpDatapath>,
    provider: Arc<Provider>,
    cfg: EngineConfig,
    steps: Vec<QueueStep>,
    pollers: Vec<Poller>,
    /// The datapath's queue epoch `steps` and `pollers` were built for.
    epoch: u64,
    /// Cleared on drop so the engine can hand out another driver.
    taken: Arc<AtomicBool>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("queues", &self.steps.len())
            .finish()
    }
}

impl Driver {
    pub(super) fn new(
        dp: Arc<XdpDatapath>,
        provider: Arc<Provider>,
        cfg: EngineConfig,
        taken: Arc<AtomicBool>,
    ) -> std::io::Result<Self> {
        let mut driver = Self {
            dp,
            provider,
            cfg,
            steps: Vec::new(),
            pollers: Vec::new(),
            epoch: u64::MAX,
            taken,
        };
        driver.refresh()?;
        Ok(driver)
    }

    /// Rebuild the per-queue state for the queues served now (after a channel change).
    fn refresh(&mut self) -> std::io::Result<()> {
        let epoch = self.dp.queue_epoch();
        let pollers = self
            .dp
            .xsks
            .iter()
            .map_while(|x| lock(x).as_ref().map(|x| x.poller()))
            .collect::<std::io::Result<Vec<_>>>()?;
        let old = std::mem::take(&mut self.steps);
        // Keep the steps of queues that stay (their batch buffers), add new ones.
        self.steps = old.into_iter().take(pollers.len()).collect();
        for q in self.steps.len()..pollers.len() {
            self.steps.push(QueueStep::new(q as u32));
        }
        self.pollers = pollers;
        self.epoch = epoch;
        Ok(())
    }

    /// Changes when the served queues change (`ethtool -L` followed): [`fds`](Self::fds) then
    /// lists other descriptors, and an event loop waiting on them must re-register.
    pub fn queue_epoch(&self) -> u64 {
        self.epoch
    }

    /// One batch on every queue: receive and deliver, reap TX completions, run due TCP timers.
    /// `Busy` means poll again (let other tasks run in between); `Idle` means wait on
    /// [`fds`](Self::fds) until readable or until `until`.
    pub fn poll(&mut self) -> Progress {
        if !self.dp.is_running() {
            return Progress::Idle { until: None };
        }
        if self.dp.queue_epoch() != self.epoch
            && let Err(err) = self.refresh()
        {
            tracing::warn!(%err, "cannot poll a newly served queue; it is retried");
        }
        let mut busy = false;
        let mut until: Option<Instant> = None;
        for step in &mut self.steps {
            match step.poll(&self.dp, &self.provider, &self.cfg) {
                Progress::Busy => busy = true,
                Progress::Idle { until: Some(t) } => {
                    until = Some(until.map_or(t, |u| u.min(t)));
                }
                Progress::Idle { until: None } => {}
            }
        }
        if busy {
            Progress::Busy
        } else {
            Progress::Idle { until }
        }
    }

    /// The descriptors to wait on for readability: every queue's AF_XDP socket, then one
    /// eventfd per queue that announces an earlier TCP timer or segments handed over between
    /// queues (from index [`socket_count`](Self::socket_count) on).
    pub fn fds(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        self.pollers
            .iter()
            .map(|p| p.as_fd())
            .chain(self.wakers().map(|w| w.as_fd()))
    }

    /// How many of [`fds`](Self::fds) are AF_XDP sockets (the rest are wake-up eventfds).
    pub fn socket_count(&self) -> usize {
        self.pollers.len()
    }

    fn wakers(&self) -> impl Iterator<Item = &super::wake::Waker> {
        self.dp.wakers.iter().take(self.pollers.len().max(1))
    }

    /// Consume the wake-ups (after an eventfd was seen readable).
    pub fn clear_wake(&self) {
        for w in self.wakers() {
            w.drain();
        }
    }

    /// Leave TX kicks to the task `waker` wakes: until [`end_deferred_kicks`]
    /// (Self::end_deferred_kicks), a send only queues its frames and wakes that task, which
    /// then calls [`kick`](Self::kick) — one system call for everything the application queued
    /// meanwhile. For async drivers whose task runs right after the application's tasks.
    pub fn defer_kicks(&self, waker: &std::task::Waker) {
        self.dp.defer_kicks(Some(waker));
    }

    /// Kick at once again in every send (and push out anything owed).
    pub fn end_deferred_kicks(&self) {
        self.dp.defer_kicks(None);
    }

    /// A handle to hold this thread's TX kicks over a batch of work and push them out after
    /// (`held_kicks`).
    pub fn tx_kicker(&self) -> super::TxKicker {
        super::TxKicker {
            dp: self.dp.clone(),
        }
    }

    /// Push out the frames whose kick was deferred; true if there were any.
    pub fn kick(&self) -> bool {
        let owed = self.dp.take_kick_wanted();
        if owed {
            self.dp.kick_now();
        }
        owed
    }

    /// `EngineConfig::busy_poll`: an async driver should keep polling (yielding to other tasks
    /// in between) instead of sleeping when idle — no wake-up latency, one core spent.
    pub fn busy_poll(&self) -> bool {
        self.cfg.busy_poll
    }

    /// False once the engine stopped: the caller's loop should end.
    pub fn is_running(&self) -> bool {
        self.dp.is_running()
    }

    /// Drive on the calling thread until the engine stops (what a queue thread does, for all
    /// queues at once; sleeps in `poll(2)` when idle).
    pub fn run_blocking(&mut self) {
        let mut spin = Spin::new(&self.cfg);
        while self.is_running() {
            if let Progress::Idle { until } = self.poll() {
                if spin.keep_polling() {
                    std::thread::yield_now();
                    continue;
                }
                let timeout = idle_timeout_ms(until, Instant::now());
                let wakers: Vec<_> = self.wakers().collect();
                super::wake::wait_any(&self.pollers, &wakers, timeout);
            } else {
                spin.traffic();
            }
        }
    }

    /// Adaptive polling for an event loop that drives this engine: call
    /// [`Spin::traffic`](Spin::traffic) after a busy poll and poll again (yielding) while
    /// [`Spin::keep_polling`](Spin::keep_polling) says so, before sleeping.
    pub fn spin(&self) -> Spin {
        Spin::new(&self.cfg)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.end_deferred_kicks();
        self.taken.store(false, Ordering::Release);
    }
}
