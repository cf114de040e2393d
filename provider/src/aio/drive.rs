//! [`drive`]: the engine's queue work as a task on the application's tokio runtime.
use std::future::poll_fn;
use std::io;
use std::os::fd::OwnedFd;
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::engine::{Driver, Progress};

/// Longest idle sleep, so an engine stop is noticed even without a wake-up.
const IDLE: Duration = Duration::from_millis(50);

/// Batches handled before yielding to the runtime's other tasks while traffic keeps coming.
const BATCHES_PER_YIELD: u32 = 4;

/// Run `driver` (from [`Engine::driver`](crate::engine::Engine::driver), an engine started with
/// [`Drive::Application`](crate::engine::Drive::Application)) until the engine stops. Spawn it
/// on the runtime that runs the provider's sockets:
///
/// ```no_run
/// # use provider::engine::{Drive, Engine, EngineConfig};
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// let mut config = EngineConfig::new("eth0");
/// config.drive = Drive::Application;
/// let engine = Engine::start(config)?;
/// tokio::spawn(provider::aio::drive(engine.driver()?));
/// let listener = provider::aio::TcpListener::bind(engine.provider(), "0.0.0.0:80".parse()?)?;
/// # Ok(()) }
/// ```
///
/// After traffic the task keeps polling for `EngineConfig::spin_after_traffic`, yielding to the
/// other tasks in between, before it sleeps; with `EngineConfig::busy_poll` it never sleeps
/// (one core busy, no wake-up latency).
///
/// The runtime needs its IO and time drivers (`enable_all`). On a current-thread runtime,
/// reception, the TCP engine and the application's tasks all run on one thread and wake each
/// other without system calls. The task waits on the AF_XDP sockets and the timer eventfd
/// through the runtime's reactor, so it costs nothing while idle.
pub async fn drive(mut driver: Driver) -> io::Result<()> {
    let mut fds = register(&driver)?;
    let mut epoch = driver.queue_epoch();
    let mut spin = driver.spin();
    let mut batches = 0;
    while driver.is_running() {
        driver.kick();
        let progress = driver.poll();
        if driver.queue_epoch() != epoch {
            // The served queues changed (ethtool -L): wait on the new set of sockets.
            fds = register(&driver)?;
            epoch = driver.queue_epoch();
        }
        let first_waker = driver.socket_count();
        let until = match progress {
            Progress::Busy => {
                spin.traffic();
                batches += 1;
                if batches >= BATCHES_PER_YIELD {
                    batches = 0;
                    tokio::task::yield_now().await;
                }
                continue;
            }
            Progress::Idle { .. } if spin.keep_polling() => {
                // Spin (always with busy_poll, else for a while after traffic): no sleep, so
                // no wake-up latency (an idle core in a VM can take hundreds of µs to wake);
                // the other tasks run between polls.
                batches = 0;
                tokio::task::yield_now().await;
                continue;
            }
            Progress::Idle { until } => until,
        };
        batches = 0;
        let limit = Instant::now() + IDLE;
        let deadline = until.map_or(limit, |u| u.min(limit));
        let sleep = tokio::time::sleep_until(deadline.into());
        tokio::pin!(sleep);
        let woken = poll_fn(|cx| {
            // Sends of the application's tasks wake this task to kick for them (see
            // `Driver::defer_kicks`).
            driver.defer_kicks(cx.waker());
            let mut ready = driver.kick();
            let mut woken = false;
            for (i, fd) in fds.iter().enumerate() {
                if let Poll::Ready(guard) = fd.poll_read_ready(cx) {
                    // Cleared before the next poll drains the ring, so frames arriving after
                    // the drain raise readiness again (edge-triggered reactor).
                    guard?.clear_ready();
                    ready = true;
                    woken |= i >= first_waker;
                }
            }
            if ready || sleep.as_mut().poll(cx).is_ready() {
                Poll::Ready(Ok::<_, io::Error>(woken))
            } else {
                Poll::Pending
            }
        })
        .await?;
        if woken {
            driver.clear_wake();
        }
    }
    driver.end_deferred_kicks();
    Ok(())
}

/// The driver's descriptors (every served queue's socket, then the timer eventfd) in the
/// runtime's reactor.
fn register(driver: &Driver) -> io::Result<Vec<AsyncFd<OwnedFd>>> {
    driver
        .fds()
        .map(|fd| {
            let owned = fd.try_clone_to_owned()?;
            // SAFETY: `owned` is a descriptor of our own (a dup); the AsyncFd owns it, and nothing
            // closes or replaces it while registered — it is closed when the AsyncFd drops.
            unsafe { AsyncFd::register_with_interest(owned, Interest::READABLE) }
                .map_err(|e| e.into_parts().1)
        })
        .collect()
}
