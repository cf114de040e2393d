//! The engine: ties the XDP program, one AF_XDP socket per RX queue, the network layer and the
//! socket table together (DESIGN §1, §3 "Engine loop").
//!
//! `Engine::start` loads and attaches `steer`, binds an `Xsk` on every RX queue, registers each in
//! XSKS, and runs one thread per queue that drains RX, hands datagrams to the socket table, reaps
//! TX completions and sleeps in `poll` when idle — or, with [`Drive::Application`], leaves that
//! work to a [`Driver`] the application polls from its own event loop. Application threads transmit through
//! `XdpDatapath::send_udp`, which builds the frame in place in a UMEM frame under the queue's lock.
mod channels;
mod datapath;
mod driver;
mod held_kicks;
mod preflight;
mod queue;
mod stats;
mod wake;

use std::{
    io,
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
};

pub use datapath::XdpDatapath;
pub use driver::{Driver, Progress};
pub use held_kicks::TxKicker;
pub use stats::{EngineCounters, EngineStats, InterfaceInfo, InterfaceStats, QueueStats};
use thiserror::Error;

use crate::{
    api::{Provider, ProviderConfig},
    net::neighbour,
    xdp::{AttachMode, Steering, XdpError},
    xsk::{Xsk, XskConfig},
};

/// Start one queue thread (Drive::Threads).
fn spawn_queue_thread(
    queue: u32,
    dp: &Arc<XdpDatapath>,
    prov: &Arc<Provider>,
    cfg: &EngineConfig,
) -> Result<JoinHandle<()>, EngineError> {
    let (dp, prov, cfg) = (dp.clone(), prov.clone(), cfg.clone());
    std::thread::Builder::new()
        .name(format!("provider-q{queue}"))
        .spawn(move || queue::run(queue, &dp, &prov, &cfg))
        .map_err(|source| EngineError::Io {
            what: "spawning a queue thread",
            source,
        })
}

/// Why the engine did not start (or a driver could not be made). Each message is one line that
/// names the cause and the remedy.
#[derive(Debug, Error)]
pub enum EngineError {
    #[error(
        "interface {0} not found in this network namespace: `ip link show` lists the interfaces (for one in another namespace, run the provider under `ip netns exec NS`)"
    )]
    NoInterface(String),
    #[error(
        "not permitted: the provider needs CAP_NET_ADMIN, CAP_NET_RAW and CAP_BPF (missing: {0}); run it as root, or grant them with `setcap cap_net_admin,cap_net_raw,cap_bpf,cap_perfmon+ep` on the binary"
    )]
    NotPermitted(String),
    #[error("interface {0} is down: bring it up with `ip link set {0} up`")]
    InterfaceDown(String),
    #[error(
        "interface {0} has no IP address: the provider serves the interface's own addresses; add one with `ip addr add ADDR/PREFIX dev {0}`"
    )]
    NoAddress(String),
    #[error(
        "interface {iface} already has XDP program id {prog_id} attached ({mode} mode): an interface runs one XDP program and the provider cannot share it (no --attach mode can); detach it with `ip link set dev {iface} xdp off` (`bpftool prog show id {prog_id}` names its owner) or serve another interface"
    )]
    XdpBusy {
        iface: String,
        prog_id: u32,
        mode: &'static str,
    },
    #[error("{0}")]
    BadQueues(String),
    #[error("loading the XDP program: {0}")]
    Xdp(#[from] XdpError),
    #[error("attaching XDP to {iface}: {source}")]
    Attach {
        iface: String,
        source: Box<XdpError>,
    },
    #[error("{message}")]
    Xsk {
        queue: u32,
        message: String,
        source: io::Error,
    },
    #[error("the engine runs its own queue threads (EngineConfig::drive is Drive::Threads)")]
    NotApplicationDriven,
    #[error("a Driver for this engine already exists")]
    DriverTaken,
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: io::Error,
    },
}

impl EngineError {
    /// An AF_XDP bind failure on `queue`, with what the user can do about it.
    fn xsk(iface: &str, queue: u32, active: Option<u32>, source: io::Error) -> Self {
        let active_note = active.map_or(String::new(), |a| {
            format!(
                "; {iface} has {a} active RX queue{}",
                if a == 1 { "" } else { "s" }
            )
        });
        let message = match source.raw_os_error() {
            Some(libc::EBUSY) => format!(
                "AF_XDP bind to RX queue {queue} of {iface}: the queue is already served by another AF_XDP socket (another provider or AF_XDP program on {iface}?); stop it or serve other queues (--queues){active_note}"
            ),
            Some(libc::EINVAL) => format!(
                "AF_XDP bind to RX queue {queue} of {iface} failed: {source}: the queue is not active{active_note} (`ethtool -l {iface}`)"
            ),
            Some(libc::EPERM) => format!(
                "AF_XDP socket for RX queue {queue} of {iface}: {source}: needs CAP_NET_RAW (run as root)"
            ),
            _ => format!("AF_XDP socket on RX queue {queue} of {iface}: {source}{active_note}"),
        };
        EngineError::Xsk {
            queue,
            message,
            source,
        }
    }
}

/// Who runs the per-queue work (receive, deliver, reap, TCP timers).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Drive {
    /// One thread per RX queue, started by [`Engine::start`] (the default).
    #[default]
    Threads,
    /// No threads: the application polls a [`Driver`] from its own event loop
    /// ([`Engine::driver`]; with tokio, `provider::aio::drive`). Reception, the TCP engine and
    /// the application then share a thread, which saves two cross-thread wake-ups per message.
    Application,
}

/// Default [`EngineConfig::spin_after_traffic`]: a few round trips on veth or a LAN.
pub const DEFAULT_SPIN: std::time::Duration = std::time::Duration::from_micros(200);

/// How the engine runs.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Interface the provider serves.
    pub interface: String,
    /// XDP attach mode (native with SKB fallback by default).
    pub attach: AttachMode,
    /// Serve only the first `queues` RX queues (default: every *active* RX queue, following
    /// channel changes). More than the interface has active is a start-up error.
    pub queues: Option<u32>,
    /// Accept received TCP/UDP frames whose checksum field holds only the pseudo-header sum
    /// (a local sender's offload-pending checksum). None (default): only on veth, where a
    /// peer with `tx-checksumming on` (the default) sends nothing else.
    pub partial_checksums: Option<bool>,
    /// How often the active RX queue count is re-read to follow `ethtool -L` (None: never).
    pub channel_check: Option<std::time::Duration>,
    /// AF_XDP ring and UMEM sizes, copy/zero-copy.
    pub xsk: XskConfig,
    /// Queue threads or an application-driven [`Driver`].
    pub drive: Drive,
    /// Spin instead of sleeping when idle: queue threads spin on their rings; `aio::drive`
    /// keeps polling, yielding to the runtime's other tasks in between.
    pub busy_poll: bool,
    /// Adaptive polling (the default): after a poll that found work, keep polling — yielding
    /// the CPU between polls — for this long before sleeping in `poll(2)`, as Linux's
    /// `busy_poll` does for a socket. A request/response peer's next frame usually arrives
    /// within one round trip, so it is picked up without waking an idle CPU (the dominant cost
    /// of a small round trip on a VM), while an idle provider costs nothing. Zero: sleep at once.
    ///
    /// It applies where the polling thread is the application's own (an application-driven
    /// [`Driver`], `aio::drive`), as Linux busy-polls in the application's system call. Queue
    /// threads spin only with `spin_queue_threads`: on a small machine a spinning queue thread
    /// takes the CPU from the application threads it serves (measured: hard close → RST and
    /// bulk sends slowed by half on the 2-core VM).
    pub spin_after_traffic: std::time::Duration,
    /// Let queue threads spin for `spin_after_traffic` too. Default false.
    pub spin_queue_threads: bool,
    /// Frames taken from RX per batch.
    pub rx_batch: usize,
    /// Log every malformed frame from the XDP program (aya-log → tracing WARN). Diagnostic only.
    pub log_malformed: bool,
    /// Socket-table settings.
    pub provider: ProviderConfig,
}

impl EngineConfig {
    pub fn new(interface: impl Into<String>) -> Self {
        Self {
            interface: interface.into(),
            attach: AttachMode::Auto,
            queues: None,
            channel_check: Some(std::time::Duration::from_secs(1)),
            partial_checksums: None,
            xsk: XskConfig::default(),
            drive: Drive::Threads,
            busy_poll: false,
            spin_after_traffic: DEFAULT_SPIN,
            spin_queue_threads: false,
            rx_batch: 64,
            log_malformed: false,
            provider: link_sized_provider_config(),
        }
    }
}

/// The socket-table defaults with the TCP MSS left to the link: `Provider::new` clamps the
/// configured MSS to what the MTU (and the UMEM frame) allow, so an unbounded value means "as
/// large as the interface carries" — 1460 at MTU 1500, 8960 worth of jumbo clamped to a frame.
fn link_sized_provider_config() -> ProviderConfig {
    let mut config = ProviderConfig::default();
    config.tcp.mss = u16::MAX;
    config.tcp.mss_v6 = u16::MAX;
    config
}

/// The device's RSS function if the provider can compute it and every indirection entry names
/// a served queue (0..queues); else None (the provider's own function, and hand-over of
/// segments that arrive elsewhere).
fn device_rss(iface: &str, queues: u32) -> Option<crate::net::rss::RssConfig> {
    if queues <= 1 {
        return None;
    }
    match crate::net::ethtool::rss(iface) {
        Ok(Some(r)) if r.is_computable() && r.indirection.iter().all(|&q| q < queues) => Some(r),
        Ok(Some(r)) => {
            tracing::info!(interface = %iface, hfunc = ?r.hfunc, "device RSS not usable for flow ownership; using the provider's own");
            None
        }
        Ok(None) => None,
        Err(err) => {
            tracing::debug!(interface = %iface, %err, "reading RSS failed");
            None
        }
    }
}

/// A running provider on one interface. Dropping it stops the queue threads, unregisters the
/// sockets and detaches the XDP program, so the interface's traffic goes to the kernel again.
pub struct Engine {
    provider: Arc<Provider>,
    datapath: Arc<XdpDatapath>,
    /// Queue threads (Drive::Threads); the channel monitor adds one per queue it binds.
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
    monitor: Option<JoinHandle<()>>,
    channel_state: Arc<Mutex<channels::State>>,
    /// Most queues to serve (0: every active one); read by the channel monitor.
    queue_limit: Arc<std::sync::atomic::AtomicU32>,
    info: InterfaceInfo,
    config: EngineConfig,
    /// A [`Driver`] exists (Drive::Application).
    driver_taken: Arc<AtomicBool>,
}

impl Engine {
    /// Start the datapath on `config.interface` and return the socket provider running over it.
    ///
    /// Every failure is one line naming the cause and the remedy ([`EngineError`]); nothing is
    /// left attached when it fails.
    pub fn start(mut config: EngineConfig) -> Result<Self, EngineError> {
        let plan = preflight::check(&config)?;
        let iface = config.interface.clone();
        config.xsk.frame_size = plan.frame_size;

        let mut steering = Steering::load_with(config.log_malformed)?;
        let xsks: Vec<Mutex<Option<Xsk>>> = (0..plan.capacity).map(|_| Mutex::new(None)).collect();
        for queue in 0..plan.serve {
            let xsk = match Xsk::new(plan.ifindex, queue, &config.xsk) {
                Ok(xsk) => xsk,
                // Without channel counts the active queues are found the kernel's way: binding
                // at or above real_num_rx_queues fails with EINVAL.
                Err(e)
                    if plan.channels.is_none()
                        && queue > 0
                        && e.raw_os_error() == Some(libc::EINVAL) =>
                {
                    tracing::info!(
                        interface = %iface,
                        queues = queue,
                        "the driver reports no channel counts; serving the RX queues that accept an AF_XDP socket"
                    );
                    break;
                }
                Err(source) => {
                    let active = plan.channels.map(|c| c.active_rx());
                    return Err(EngineError::xsk(&iface, queue, active, source));
                }
            };
            steering.set_xsk(queue, &xsk.fd())?;
            *datapath::lock(&xsks[queue as usize]) = Some(xsk);
        }
        let nqueues = xsks
            .iter()
            .take_while(|x| datapath::lock(x).is_some())
            .count() as u32;
        // Attach last: by now every queue has a socket with a stocked fill ring.
        let mode = steering
            .attach(crate::xdp::Prog::Steer, plan.ifindex, config.attach)
            .map_err(|source| EngineError::Attach {
                iface: iface.clone(),
                source: Box::new(source),
            })?;
        tracing::info!(interface = %iface, ifindex = plan.ifindex, queues = nqueues, ?mode, mtu = plan.mtu, "datapath up");

        let neighbours =
            neighbour::Neighbours::new(plan.ifindex).map_err(|source| EngineError::Io {
                what: "opening rtnetlink",
                source,
            })?;
        let wakers = (0..plan.capacity)
            .map(|_| wake::Waker::new())
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|source| EngineError::Io {
                what: "creating the timer eventfds",
                source,
            })?;
        let interface = datapath::Interface {
            name: iface.clone(),
            ifindex: plan.ifindex,
            mac: plan.mac,
            mtu: plan.mtu,
            addrs: plan.addrs.clone(),
            checksums: plan.checksums,
        };
        let datapath = Arc::new(XdpDatapath::new(
            interface, steering, xsks, config.xsk, neighbours, wakers,
        ));
        // The engine derives the MSS from the MTU it can receive (`Provider::new` clamps the
        // configured bound to the link).
        // One TCP engine (shard) per queue served now; flows are owned by the device's RSS
        // function where it has a usable one over exactly these queues.
        let mut provider_config = config.provider.clone();
        provider_config.tcp_shards = nqueues.max(1) as usize;
        provider_config.rss = device_rss(&iface, nqueues);
        // UDP receive counters for every queue slot, so queues added later count on their own.
        provider_config.rx_queues = plan.capacity as usize;
        let provider = Arc::new(Provider::new(datapath.clone(), provider_config));
        tracing::info!(
            interface = %iface,
            shards = provider.tcp_shards(),
            device_rss = provider.tcp_router_is_device(),
            "TCP engines: one per RX queue"
        );
        let running = datapath.running_flag();
        let threads = Arc::new(Mutex::new(Vec::new()));
        if config.drive == Drive::Threads {
            for queue in 0..nqueues {
                let handle = spawn_queue_thread(queue, &datapath, &provider, &config)?;
                datapath::lock(&threads).push(handle);
            }
        }
        let info = InterfaceInfo {
            name: iface,
            ifindex: plan.ifindex,
            attach_mode: format!("{mode:?}"),
            link_mtu: plan.link.mtu,
            mtu: plan.mtu,
            frame_size: plan.frame_size,
            allocated_rx_queues: plan.link.allocated_rx_queues,
            channels: plan.channels,
            driver: plan.driver.clone(),
            partial_checksums: plan.checksums == crate::net::frame::Checksums::AcceptPartial,
        };
        let monitor = channels::Monitor::new(
            datapath.clone(),
            provider.clone(),
            config.clone(),
            threads.clone(),
            plan.channels.is_some(),
        );
        let channel_state = monitor.state();
        let queue_limit = monitor.limit();
        let monitor = if plan.channels.is_some() && config.channel_check.is_some() {
            Some(monitor.spawn().map_err(|source| EngineError::Io {
                what: "spawning the channel monitor",
                source,
            })?)
        } else {
            None
        };
        debug_assert!(running.load(Ordering::Relaxed));
        Ok(Self {
            provider,
            datapath,
            threads,
            monitor,
            channel_state,
            queue_limit,
            info,
            config,
            driver_taken: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The interface as the engine found and serves it.
    pub fn interface(&self) -> &InterfaceInfo {
        &self.info
    }

    /// Serve at most `limit` RX queues from now on (`None`: every active queue). Queues above
    /// the limit are released before this returns — their frames go to the kernel, established
    /// connections are kept (their frames arrive on the remaining queues) — so that
    /// `ethtool -L` can then shrink the interface, which the kernel refuses while an AF_XDP
    /// socket holds a vanishing queue. Raising the limit binds the extra queues at the channel
    /// monitor's next check (about a second), from the engine's own network namespace.
    pub fn set_queue_limit(&self, limit: Option<u32>) -> Result<(), EngineError> {
        if limit == Some(0) {
            return Err(EngineError::BadQueues(
                "a queue limit of 0: at least one RX queue must be served".into(),
            ));
        }
        self.queue_limit
            .store(limit.unwrap_or(0), Ordering::Release);
        let served = self.datapath.served_count() as u32;
        if let Some(n) = limit.filter(|&n| n < served) {
            self.datapath.serve_queues(n as usize);
            channels::note(
                &self.channel_state,
                format!(
                    "{}: queue limit {n}; serving queues 0..{n} (was 0..{served})",
                    self.info.name
                ),
                true,
            );
        }
        Ok(())
    }

    /// The addresses of the interface the provider serves.
    pub fn addresses(&self) -> &[IpAddr] {
        self.datapath.addrs()
    }

    /// The queue work to run from the application's event loop (`Drive::Application` only;
    /// one driver at a time — dropping it allows another). Until a driver is polled nothing is
    /// received and TCP timers do not run.
    pub fn driver(&self) -> Result<Driver, EngineError> {
        if self.config.drive != Drive::Application {
            return Err(EngineError::NotApplicationDriven);
        }
        if self.driver_taken.swap(true, Ordering::AcqRel) {
            return Err(EngineError::DriverTaken);
        }
        Driver::new(
            self.datapath.clone(),
            self.provider.clone(),
            self.config.clone(),
            self.driver_taken.clone(),
        )
        .map_err(|source| {
            self.driver_taken.store(false, Ordering::Release);
            EngineError::Io {
                what: "duplicating the AF_XDP descriptors",
                source,
            }
        })
    }

    /// The socket provider (WSP calls) running over this datapath.
    pub fn provider(&self) -> &Arc<Provider> {
        &self.provider
    }

    /// Counters from every layer.
    pub fn stats(&self) -> EngineStats {
        let mut stats = self.datapath.stats(&self.provider);
        let state = datapath::lock(&self.channel_state).clone();
        stats.interface = Some(InterfaceStats {
            info: self.info.clone(),
            served_queues: self.datapath.served_count() as u32,
            active_rx_queues: state.active.or(self.info.channels.map(|c| c.active_rx())),
            follows_channels: self.monitor.is_some(),
            queue_changes: state.changes,
            last_change: state.last_message,
        });
        stats
    }

    /// Stop the queue threads and detach. Sockets still open get WSAENETDOWN from then on.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.datapath.set_down();
        // An application-driven loop asleep on the eventfd notices at once.
        self.datapath.wake_all();
        if let Some(m) = self.monitor.take() {
            let _ = m.join();
        }
        let threads: Vec<_> = datapath::lock(&self.threads).drain(..).collect();
        for t in threads {
            let _ = t.join();
        }
        self.datapath.detach();
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Shared flag type for the queue loops.
pub(crate) type Running = Arc<AtomicBool>;
