//! The engine: ties the XDP program, one AF_XDP socket per RX queue, the network layer and the
//! socket table together (DESIGN §1, §3 "Engine loop").
//!
//! `Engine::start` loads and attaches `steer`, binds an `Xsk` on every RX queue, registers each in
//! XSKS, and runs one thread per queue that drains RX, hands datagrams to the socket table, reaps
//! TX completions and sleeps in `poll` when idle — or, with [`Drive::Application`], leaves that
//! work to a [`Driver`] the application polls from its own event loop. Application threads transmit through
//! `XdpDatapath::send_udp`, which builds the frame in place in a UMEM frame under the queue's lock.
mod datapath;
mod driver;
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
pub use stats::{EngineCounters, EngineStats, QueueStats};
use thiserror::Error;

use crate::{
    api::{Provider, ProviderConfig},
    net::neighbour,
    xdp::{AttachMode, Steering, XdpError},
    xsk::{Xsk, XskConfig},
};

#[derive(Debug, Error)]
pub enum EngineError {
    #[error("interface {0:?} not found")]
    NoInterface(String),
    #[error("XDP: {0}")]
    Xdp(#[from] XdpError),
    #[error("AF_XDP socket on queue {queue}: {source}")]
    Xsk { queue: u32, source: io::Error },
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

/// How the engine runs.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Interface the provider serves.
    pub interface: String,
    /// XDP attach mode (native with SKB fallback by default).
    pub attach: AttachMode,
    /// Serve only the first `queues` RX queues (default: all of them).
    pub queues: Option<u32>,
    /// AF_XDP ring and UMEM sizes, copy/zero-copy.
    pub xsk: XskConfig,
    /// Queue threads or an application-driven [`Driver`].
    pub drive: Drive,
    /// Spin instead of sleeping when idle: queue threads spin on their rings; `aio::drive`
    /// keeps polling, yielding to the runtime's other tasks in between.
    pub busy_poll: bool,
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
            xsk: XskConfig::default(),
            drive: Drive::Threads,
            busy_poll: false,
            rx_batch: 64,
            log_malformed: false,
            provider: ProviderConfig::default(),
        }
    }
}

/// A running provider on one interface. Dropping it stops the queue threads, unregisters the
/// sockets and detaches the XDP program, so the interface's traffic goes to the kernel again.
pub struct Engine {
    provider: Arc<Provider>,
    datapath: Arc<XdpDatapath>,
    threads: Vec<JoinHandle<()>>,
    config: EngineConfig,
    /// A [`Driver`] exists (Drive::Application).
    driver_taken: Arc<AtomicBool>,
}

impl Engine {
    /// Start the datapath on `config.interface` and return the socket provider running over it.
    pub fn start(config: EngineConfig) -> Result<Self, EngineError> {
        let ifindex = neighbour::ifindex(&config.interface)
            .map_err(|_| EngineError::NoInterface(config.interface.clone()))?;
        let available = neighbour::num_rx_queues(&config.interface)
            .map_err(|source| EngineError::Io {
                what: "counting RX queues",
                source,
            })?
            .max(1);
        let nqueues = config.queues.map_or(available, |q| q.clamp(1, available));
        let mac = neighbour::interface_mac(ifindex).map_err(|source| EngineError::Io {
            what: "reading the interface MAC",
            source,
        })?;
        let mtu = neighbour::interface_mtu(ifindex).map_err(|source| EngineError::Io {
            what: "reading the interface MTU",
            source,
        })?;
        let addrs: Vec<IpAddr> =
            neighbour::interface_addrs(ifindex, false).map_err(|source| EngineError::Io {
                what: "reading interface addresses",
                source,
            })?;

        let mut steering = Steering::load_with(config.log_malformed)?;
        let mut xsks = Vec::with_capacity(nqueues as usize);
        for queue in 0..nqueues {
            let xsk = Xsk::new(ifindex, queue, &config.xsk)
                .map_err(|source| EngineError::Xsk { queue, source })?;
            steering.set_xsk(queue, &xsk.fd())?;
            xsks.push(Mutex::new(xsk));
        }
        // Attach last: by now every queue has a socket with a stocked fill ring.
        let mode = steering.attach(crate::xdp::Prog::Steer, ifindex, config.attach)?;
        tracing::info!(interface = %config.interface, ifindex, queues = nqueues, ?mode, "datapath up");

        let neighbours = neighbour::Neighbours::new(ifindex).map_err(|source| EngineError::Io {
            what: "opening rtnetlink",
            source,
        })?;
        let waker = wake::Waker::new().map_err(|source| EngineError::Io {
            what: "creating the timer eventfd",
            source,
        })?;
        let interface = datapath::Interface {
            ifindex,
            mac,
            mtu,
            addrs,
        };
        let datapath = Arc::new(XdpDatapath::new(
            interface, steering, xsks, neighbours, waker,
        ));
        let provider = Arc::new(Provider::new(datapath.clone(), config.provider.clone()));
        let running = datapath.running_flag();
        let mut threads = Vec::new();
        let nthreads = if config.drive == Drive::Threads {
            nqueues
        } else {
            0
        };
        for queue in 0..nthreads {
            let dp = datapath.clone();
            let prov = provider.clone();
            let cfg = config.clone();
            let handle = std::thread::Builder::new()
                .name(format!("provider-q{queue}"))
                .spawn(move || queue::run(queue, &dp, &prov, &cfg))
                .map_err(|source| EngineError::Io {
                    what: "spawning a queue thread",
                    source,
                })?;
            threads.push(handle);
        }
        debug_assert!(running.load(Ordering::Relaxed));
        Ok(Self {
            provider,
            datapath,
            threads,
            config,
            driver_taken: Arc::new(AtomicBool::new(false)),
        })
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
        self.datapath.stats(&self.provider)
    }

    /// Stop the queue threads and detach. Sockets still open get WSAENETDOWN from then on.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.datapath.set_down();
        // An application-driven loop asleep on the eventfd notices at once.
        self.datapath.waker.wake();
        for t in self.threads.drain(..) {
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
