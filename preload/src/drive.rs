//! Who runs the engine's queue work (receive, deliver, TCP timers, TX completions).
//!
//! Queue threads would cost every received segment two thread hops before the application
//! sees it (queue thread, then the application's wake-up), and on a small machine those hops
//! cost more than the protocol work. So the engine is application-driven (`Drive::Application`,
//! one `Driver` for the process tree, behind a lock in the shared arena), and the work runs on
//! whichever thread is about to wait:
//! * an application thread entering `epoll_wait`/`poll`/`select` first polls the driver (if no
//!   one else is), and sleeps with the AF_XDP descriptors in its set, so a frame wakes it
//!   directly and it receives it itself — the kernel's own shape, where the softirq runs in
//!   the context of the interrupted application;
//! * a background thread of the process that started the engine ("provider-drive") receives
//!   and runs the TCP timers while no application thread waits with the AF_XDP descriptors
//!   (a busy server still gets its ACKs and retransmissions), and otherwise only backs the
//!   waiters' timer runs up, looking every `BACKGROUND_RECHECK_MS`.
//!
//!
//! A blocking `recv`/`recvfrom`/`accept` on a provider socket waits the same way
//! (`wait_until`): it drives the engine and sleeps on its doorbell and the AF_XDP descriptors,
//! so a server blocked in `recv` (the real sockperf server) receives its own segments instead
//! of being woken by the background thread.
//!
//! Between two waits an application thread holds its TX kicks (`TxKicker::hold`): an event
//! loop answering k ready connections then costs one kick, paid as it enters its next wait,
//! instead of k. Any call that may sleep elsewhere (a blocking provider call, a wait on kernel
//! descriptors only, fork) releases first; the background thread backs the rest up.
//!
//! `PROVIDER_DRIVE=threads` keeps the engine's own queue threads instead.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError, TryLockError};
use std::time::Instant;

use provider::engine::{Driver, Progress, TxKicker};

pub struct Drive {
    driver: Mutex<Driver>,
    /// The descriptors to wait on: AF_XDP sockets (first `xsks`), then the timer eventfds.
    fds: Vec<i32>,
    xsks: usize,
    /// Application threads now asleep with the AF_XDP descriptors in their set.
    app_waiters: AtomicU32,
    kicker: TxKicker,
    /// Application threads holding their TX kicks: the background thread then looks every
    /// `BACKGROUND_RECHECK_MS` for frames a holder left behind when it went to sleep elsewhere.
    holders: AtomicU32,
}

/// While application threads wait on the AF_XDP descriptors, the background thread looks at
/// least this often whether they still do (they are busy when they do not, and then it
/// receives). Ringing it at every waiter's wake-up instead would cost a thread switch per
/// request, the very thing this module avoids.
const BACKGROUND_RECHECK_MS: i32 = 5;

static DRIVE: OnceLock<&'static Drive> = OnceLock::new();

/// Install the driver (at engine start) and start the background thread.
pub fn install(driver: Driver) {
    let fds: Vec<i32> = {
        use std::os::fd::AsRawFd;
        driver.fds().map(|f| f.as_raw_fd()).collect()
    };
    let xsks = driver.socket_count();
    let kicker = driver.tx_kicker();
    let d: &'static Drive = Box::leak(Box::new(Drive {
        driver: Mutex::new(driver),
        fds,
        xsks,
        app_waiters: AtomicU32::new(0),
        kicker,
        holders: AtomicU32::new(0),
    }));
    if DRIVE.set(d).is_err() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("provider-drive".into())
        .spawn(move || background(d));
    if spawned.is_err() {
        let msg = b"provider-preload: cannot start the drive thread\n";
        // SAFETY: writing a static buffer to stderr.
        unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
    }
}

pub fn get() -> Option<&'static Drive> {
    DRIVE.get().copied()
}

fn idle_ms(until: Option<Instant>) -> i32 {
    match until {
        None => -1,
        Some(t) => {
            let left = t.saturating_duration_since(Instant::now());
            i32::try_from(left.as_micros().div_ceil(1000)).unwrap_or(i32::MAX)
        }
    }
}

/// Poll until idle with the driver held; the next timer.
fn run(d: &mut Driver) -> Option<Instant> {
    loop {
        match d.poll() {
            Progress::Busy => {}
            Progress::Idle { until } => return until,
        }
    }
}

fn background(d: &'static Drive) {
    loop {
        let until = {
            let mut g = d.driver.lock().unwrap_or_else(PoisonError::into_inner);
            if !g.is_running() {
                return;
            }
            g.clear_wake();
            run(&mut g)
        };
        // Frames an application thread held back and then did not push out (it went to sleep
        // in a call that does not release).
        let holders = d.holders.load(Ordering::Acquire) > 0;
        if holders {
            d.kicker.kick_pending();
        }
        // With application waiters, they receive, and their every pass runs the due timers
        // too; this thread then only makes sure of the timers, at their time or within
        // BACKGROUND_RECHECK_MS of a timer armed since (waking for each armed timer would cost
        // a thread switch per request).
        let watch = d.app_waiters.load(Ordering::Acquire) == 0;
        let mut set: Vec<libc::pollfd> = d
            .fds
            .iter()
            .filter(|_| watch)
            .map(|&fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let timeout = match idle_ms(until) {
            -1 if holders => BACKGROUND_RECHECK_MS,
            t if watch && holders => t.min(BACKGROUND_RECHECK_MS),
            t if watch => t,
            -1 => BACKGROUND_RECHECK_MS,
            t => t.min(BACKGROUND_RECHECK_MS),
        };
        let poll = crate::real!(poll: fn(*mut libc::pollfd, libc::nfds_t, i32) -> i32);
        // SAFETY: `set` is a live array of pollfds.
        unsafe { poll(set.as_mut_ptr(), set.len() as libc::nfds_t, timeout) };
    }
}

impl Drive {
    /// Run the queue work now unless another thread is (the application is about to wait).
    pub fn assist(&self) {
        match self.driver.try_lock() {
            Ok(mut g) => {
                run(&mut g);
            }
            Err(TryLockError::Poisoned(p)) => {
                run(&mut p.into_inner());
            }
            Err(TryLockError::WouldBlock) => {}
        }
    }

    /// The AF_XDP descriptors an application waiter adds to its set.
    pub fn xsk_fds(&self) -> &[i32] {
        &self.fds[..self.xsks]
    }

    fn release_kicks(&self) {
        if self.kicker.holding() {
            self.holders.fetch_sub(1, Ordering::AcqRel);
            self.kicker.release();
        }
    }

    /// An application thread goes to sleep with the AF_XDP descriptors in its set.
    pub fn waiting(&self) -> Waiting<'_> {
        self.app_waiters.fetch_add(1, Ordering::AcqRel);
        Waiting(self)
    }
}

/// A blocking call on provider socket `ps` waits here until `ready` holds, running the
/// engine's queue work on this thread meanwhile (a frame wakes this thread, which receives it
/// itself) instead of sleeping in the provider while the background thread receives: one
/// thread hop less per segment. Without an application-driven engine it returns at once and
/// the provider's own blocking call waits.
pub fn wait_until(
    p: &provider::api::Provider,
    ps: &crate::fdtable::ProvSock,
    ready: impl Fn(&provider::api::Readiness) -> bool,
) {
    let Some(d) = get() else {
        return;
    };
    d.release_kicks();
    let poll = crate::real!(poll: fn(*mut libc::pollfd, libc::nfds_t, i32) -> i32);
    loop {
        d.assist();
        let (seen, r) = crate::ops::readiness(p, ps);
        if ready(&r) {
            return;
        }
        let waker = std::task::Waker::from(ps.doorbell.clone());
        if !p.watch(ps.sock, seen, &waker).unwrap_or(false) {
            // Something happened since `seen`: look again.
            continue;
        }
        let mut set = [libc::pollfd {
            fd: -1,
            events: libc::POLLIN,
            revents: 0,
        }; 1 + MAX_WAIT_XSKS];
        set[0].fd = ps.doorbell.fd;
        let xsks = d.xsk_fds();
        let n = 1 + xsks.len().min(MAX_WAIT_XSKS);
        for (slot, &fd) in set[1..n].iter_mut().zip(xsks) {
            slot.fd = fd;
        }
        let _waiting = d.waiting();
        // SAFETY: `set` is a live array of `n` pollfds. A signal (EINTR) just means look again.
        unsafe { poll(set.as_mut_ptr(), n as libc::nfds_t, -1) };
        if set[0].revents != 0 {
            crate::real::drain(ps.doorbell.fd);
        }
    }
}

/// AF_XDP descriptors a blocking call sleeps on (queues beyond are left to the background
/// thread).
const MAX_WAIT_XSKS: usize = 8;

/// This thread is about to sleep or block: push out the TX frames it held back.
pub fn release_kicks() {
    if let Some(d) = get() {
        d.release_kicks();
    }
}

/// Held across an application wait on provider sockets: entering releases the thread's held
/// kicks, leaving (back to the application's event handling) holds them again.
pub struct WaitPass(Option<&'static Drive>);

pub fn wait_pass() -> WaitPass {
    let d = get();
    if let Some(d) = d {
        d.release_kicks();
    }
    WaitPass(d)
}

impl Drop for WaitPass {
    fn drop(&mut self) {
        if let Some(d) = self.0
            && !d.kicker.holding()
        {
            d.holders.fetch_add(1, Ordering::AcqRel);
            d.kicker.hold();
        }
    }
}

/// While alive, the background thread leaves reception to the application waiters.
pub struct Waiting<'a>(&'a Drive);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.app_waiters.fetch_sub(1, Ordering::AcqRel);
    }
}
