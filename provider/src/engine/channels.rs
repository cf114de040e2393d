//! Following channel changes: `ethtool -L IF rx K` / `combined K` under a running provider.
//!
//! A thread re-reads the channel counts (`ETHTOOL_GCHANNELS`, one ioctl) every
//! [`EngineConfig::channel_check`] and makes the served queues match the active ones: queues that
//! appear get a socket (and a queue thread, or a place in the application's driver); queues that
//! vanish are released. Connections are not tied to queues (one TCP engine serves them all), so
//! none is lost when the set changes: their frames simply arrive on another queue.
//!
//! What the kernel allows matters here. Growing works at any time. Shrinking below a queue that
//! has an AF_XDP socket bound is *refused by the kernel* (`ethtool -L` fails with "requested
//! channel counts are too low for existing zerocopy AF_XDP sockets", copy mode included), so
//! while the provider serves a queue it cannot vanish through ethtool. To shrink, the
//! application first lowers the limit ([`Engine::set_queue_limit`](super::Engine::set_queue_limit)):
//! the queues above it are released at once, and `ethtool -L` then succeeds. The release path
//! also runs when a driver changes its queues by itself (a reset, a firmware event). Frames on
//! a queue without a socket fall back to the kernel: `steer` redirects with `XDP_PASS` as the
//! fallback, never a black hole.
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::{EngineConfig, XdpDatapath, datapath::lock, spawn_queue_thread};
use crate::api::Provider;
use crate::net::ethtool;

/// What the monitor last saw and did (shown in `stats`).
#[derive(Clone, Debug, Default)]
pub(super) struct State {
    pub active: Option<u32>,
    pub changes: u64,
    pub last_message: Option<String>,
}

pub(super) struct Monitor {
    pub datapath: Arc<XdpDatapath>,
    pub provider: Arc<Provider>,
    pub config: EngineConfig,
    pub threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
    /// Never serve more than this many queues, even when more become active (`--queues N`,
    /// [`Engine::set_queue_limit`](super::Engine::set_queue_limit)); 0: no limit.
    limit: Arc<AtomicU32>,
    /// The driver reports channel counts (otherwise there is nothing to follow).
    pub follows: bool,
    state: Arc<Mutex<State>>,
}

impl Monitor {
    pub(super) fn new(
        datapath: Arc<XdpDatapath>,
        provider: Arc<Provider>,
        config: EngineConfig,
        threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
        follows: bool,
    ) -> Self {
        Self {
            limit: Arc::new(AtomicU32::new(config.queues.unwrap_or(0))),
            datapath,
            provider,
            config,
            threads,
            follows,
            state: Arc::default(),
        }
    }

    pub(super) fn state(&self) -> Arc<Mutex<State>> {
        self.state.clone()
    }

    pub(super) fn limit(&self) -> Arc<AtomicU32> {
        self.limit.clone()
    }

    /// Run in a thread of the caller's network namespace (threads inherit it) until the engine
    /// stops.
    pub(super) fn spawn(self) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name("provider-channels".into())
            .spawn(move || self.run())
    }

    fn run(self) {
        let period = self
            .config
            .channel_check
            .unwrap_or(std::time::Duration::from_secs(1));
        let mut read_error_logged = false;
        while self.datapath.is_running() {
            self.sleep(period);
            if !self.datapath.is_running() || !self.follows {
                continue;
            }
            match ethtool::channels(self.datapath.interface()) {
                Ok(ch) => {
                    read_error_logged = false;
                    self.follow(ch.active_rx());
                }
                Err(err) if !read_error_logged => {
                    read_error_logged = true;
                    tracing::warn!(interface = self.datapath.interface(), %err, "cannot read the channel counts; the served queues stay as they are");
                }
                Err(_) => {}
            }
        }
    }

    /// Sleep `period` in short steps so a stop is noticed promptly.
    fn sleep(&self, period: std::time::Duration) {
        let step = std::time::Duration::from_millis(50);
        let end = std::time::Instant::now() + period;
        while self.datapath.is_running() {
            let now = std::time::Instant::now();
            if now >= end {
                return;
            }
            std::thread::sleep(step.min(end - now));
        }
    }

    /// Make the served set match `active` RX queues (bounded by `--queues` and the slots).
    fn follow(&self, active: u32) {
        let iface = self.datapath.interface().to_string();
        let before = self.datapath.served_count() as u32;
        let capacity = self.datapath.queue_capacity() as u32;
        let target = match self.limit.load(Ordering::Acquire) {
            0 => active,
            n => n.min(active),
        }
        .clamp(1, capacity);
        {
            let mut st = lock(&self.state);
            if st.active != Some(active) && st.active.is_some() {
                tracing::warn!(interface = %iface, from = st.active, to = active, "active RX queue count changed");
            }
            st.active = Some(active);
        }
        if active > capacity {
            self.note(format!(
                "{iface} now has {active} active RX queues, more than the {capacity} the provider allocated at start; serving {capacity} (restart the provider to serve all)"
            ), false);
        }
        if target == before {
            return;
        }
        let (added, failure) = self.datapath.serve_queues(target as usize);
        let after = self.datapath.served_count() as u32;
        if self.config.drive == super::Drive::Threads {
            for &q in &added {
                match spawn_queue_thread(q, &self.datapath, &self.provider, &self.config) {
                    Ok(h) => lock(&self.threads).push(h),
                    Err(err) => tracing::error!(queue = q, %err, "cannot start a queue thread"),
                }
            }
        }
        let mut message = format!(
            "{iface}: {active} active RX queue{}; serving queues 0..{after} (was 0..{before})",
            if active == 1 { "" } else { "s" }
        );
        if let Some((q, err)) = failure {
            message.push_str(&format!(
                "; binding queue {q} failed: {err} — its frames go to the kernel"
            ));
        }
        self.note(message, true);
    }

    fn note(&self, message: String, change: bool) {
        note(&self.state, message, change);
    }
}

/// Record (and log at WARN) what happened to the served set; repeats are logged once.
pub(super) fn note(state: &Mutex<State>, message: String, change: bool) {
    let mut st = lock(state);
    if st.last_message.as_deref() == Some(message.as_str()) {
        return;
    }
    tracing::warn!("{message}");
    if change {
        st.changes += 1;
    }
    st.last_message = Some(message);
}
