//! One underlying socket: its kind, its options and its protocol state, behind one short
//! per-socket lock, plus the condition variable its blocking calls sleep on.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{
    Condvar, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard,
};

use super::error::{WsaError, WspResult};
use super::options::SocketOptions;
use crate::udp::UdpState;

/// `AF_INET` (Windows and Linux).
pub const AF_INET: i32 = 2;
/// `AF_INET6` as Windows numbers it.
pub const AF_INET6: i32 = 23;
/// `AF_INET6` as Linux numbers it (accepted by `wsp_socket` too).
pub const AF_INET6_LINUX: i32 = 10;
/// `SOCK_STREAM`.
pub const SOCK_STREAM: i32 = 1;
/// `SOCK_DGRAM`.
pub const SOCK_DGRAM: i32 = 2;
/// `IPPROTO_TCP`.
pub const IPPROTO_TCP: i32 = 6;
/// `IPPROTO_UDP`.
pub const IPPROTO_UDP: i32 = 17;

/// Address family of a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// From a WSP `af` argument.
    pub fn from_af(af: i32) -> WspResult<Self> {
        match af {
            AF_INET => Ok(Family::V4),
            AF_INET6 | AF_INET6_LINUX => Ok(Family::V6),
            _ => Err(WsaError::WSAEAFNOSUPPORT),
        }
    }

    /// Family of an address.
    pub fn of(addr: &SocketAddr) -> Self {
        match addr {
            SocketAddr::V4(_) => Family::V4,
            SocketAddr::V6(_) => Family::V6,
        }
    }

    /// Family of an IP address.
    pub fn of_ip(ip: &IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The wildcard address of this family (`0.0.0.0` / `::`).
    pub fn unspecified(self) -> IpAddr {
        match self {
            Family::V4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            Family::V6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        }
    }

    /// The Windows `AF_*` value.
    pub fn af(self) -> i32 {
        match self {
            Family::V4 => AF_INET,
            Family::V6 => AF_INET6,
        }
    }
}

/// Socket kind. Datagram sockets exist today; stream sockets arrive with the TCP issue on the
/// same table, which is why every option and call dispatches on this enum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SocketKind {
    /// `SOCK_DGRAM` / UDP.
    Datagram,
    /// `SOCK_STREAM` / TCP (not creatable yet).
    Stream,
}

impl SocketKind {
    /// The `SO_TYPE` value.
    pub fn so_type(self) -> i32 {
        match self {
            SocketKind::Datagram => SOCK_DGRAM,
            SocketKind::Stream => SOCK_STREAM,
        }
    }
}

/// Protocol-specific state.
#[derive(Debug)]
pub enum Proto {
    Udp(UdpState),
    Tcp(crate::api::stream::TcpSock),
}

/// Everything mutable about a socket, behind `SocketEntry::state`.
#[derive(Debug)]
pub struct SocketState {
    /// Set when the last handle was closed: every later call on a copy of the entry fails, and
    /// blocked callers wake up with WSAEINTR.
    pub closed: bool,
    /// A blocking linger close is in progress in some thread: every other call on the socket
    /// gets WSAEINPROGRESS until it ends (DESIGN §7).
    pub closing: bool,
    /// FIONBIO.
    pub nonblocking: bool,
    /// Stored socket options.
    pub options: SocketOptions,
    /// Threads sleeping on `SocketEntry::readable` (so delivery only notifies when someone waits).
    pub waiters: u32,
    /// Protocol state.
    pub proto: Proto,
    /// Bumped by `Provider::cancel_blocking_calls`: a blocking call that sees it move while it
    /// sleeps returns WSAEINTR.
    pub interrupts: u64,
}

impl SocketState {
    /// The UDP state (WSAEOPNOTSUPP on a stream socket: callers dispatch on the kind first).
    pub fn udp(&mut self) -> WspResult<&mut UdpState> {
        match &mut self.proto {
            Proto::Udp(u) => Ok(u),
            Proto::Tcp(_) => Err(WsaError::WSAEOPNOTSUPP),
        }
    }

    /// The TCP state (WSAEOPNOTSUPP on a datagram socket).
    pub fn tcp(&mut self) -> WspResult<&mut crate::api::stream::TcpSock> {
        match &mut self.proto {
            Proto::Tcp(t) => Ok(t),
            Proto::Udp(_) => Err(WsaError::WSAEOPNOTSUPP),
        }
    }
}

/// Socket ids. The counter lives on the heap, not in a static: a program that shares the
/// stack's memory between forked processes (the preload) shares the heap, while each process
/// has its own copy of statics, so a static counter would hand out the same id twice.
fn next_id() -> u64 {
    static COUNTER: std::sync::OnceLock<&'static AtomicU64> = std::sync::OnceLock::new();
    COUNTER
        .get_or_init(|| Box::leak(Box::new(AtomicU64::new(1))))
        .fetch_add(1, Ordering::Relaxed)
}

/// One underlying socket; every handle to it (see `duplicate`) holds the same `Arc`.
#[derive(Debug)]
pub struct SocketEntry {
    /// Process-unique id (the demultiplexer uses it for identity).
    pub id: u64,
    pub family: Family,
    pub kind: SocketKind,
    /// Number of table handles naming this socket; maintained by the table under its lock.
    pub(crate) handles: AtomicU32,
    pub state: Mutex<SocketState>,
    /// Signalled when data arrives or the socket closes.
    pub readable: Condvar,
    /// Stream sockets sleep on this: the TCP engine's events and the last close bump it.
    pub signal: Signal,
}

/// A wake-up channel that cannot lose a wake-up: a waiter reads the generation, checks its
/// condition (taking whatever locks it needs), and sleeps only while the generation is
/// unchanged. Its mutex is a leaf lock — nothing else is taken while it is held — so it can be
/// signalled from anywhere, including while other socket or engine locks are held.
///
/// Async tasks use the same protocol with [`Signal::register`] instead of [`Signal::wait`]: read
/// the generation, try the operation, and on would-block register the task's waker against the
/// generation read before the attempt. `register` refuses (returns false) if the generation has
/// moved since — the caller retries at once — so an event between the attempt and the
/// registration is never lost. `notify` wakes (and forgets) every registered waker; the wakers
/// run after the signal's lock is released.
#[derive(Debug, Default)]
pub struct Signal {
    state: Mutex<SignalState>,
    cv: Condvar,
}

#[derive(Debug, Default)]
struct SignalState {
    generation: u64,
    waiters: u32,
    /// Async tasks waiting for the next notify (one entry per distinct waker).
    wakers: Vec<std::task::Waker>,
}

impl Signal {
    /// The current generation; pass it to `wait` after checking the condition.
    pub fn generation(&self) -> u64 {
        lock(&self.state).generation
    }

    /// Wake every waiter (a system call only if someone sleeps) and every registered waker.
    pub fn notify(&self) {
        let wakers = {
            let mut st = lock(&self.state);
            st.generation = st.generation.wrapping_add(1);
            if st.waiters > 0 {
                self.cv.notify_all();
            }
            if st.wakers.is_empty() {
                return;
            }
            std::mem::take(&mut st.wakers)
        };
        for w in wakers {
            w.wake();
        }
    }

    /// Register `waker` to be woken by the next `notify`, unless the generation already moved
    /// past `seen` (then nothing is registered and the result is false: retry the operation).
    /// Registering the same waker again (`Waker::will_wake`) keeps one entry.
    pub fn register(&self, seen: u64, waker: &std::task::Waker) -> bool {
        let mut st = lock(&self.state);
        if st.generation != seen {
            return false;
        }
        if !st.wakers.iter().any(|w| w.will_wake(waker)) {
            st.wakers.push(waker.clone());
        }
        true
    }

    /// Registered wakers (for tests and diagnostics).
    pub fn registered(&self) -> usize {
        lock(&self.state).wakers.len()
    }

    /// Sleep until the generation differs from `seen` or `timeout` passes.
    pub fn wait(&self, seen: u64, timeout: Option<std::time::Duration>) {
        let mut st = lock(&self.state);
        if st.generation != seen {
            return;
        }
        st.waiters += 1;
        match timeout {
            None => {
                while st.generation == seen {
                    st = self.cv.wait(st).unwrap_or_else(PoisonError::into_inner);
                }
            }
            Some(t) => {
                let deadline = std::time::Instant::now() + t;
                while st.generation == seen {
                    let now = std::time::Instant::now();
                    if now >= deadline {
                        break;
                    }
                    st = self
                        .cv
                        .wait_timeout(st, deadline - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            }
        }
        st.waiters -= 1;
    }
}

impl SocketEntry {
    pub fn new(family: Family, kind: SocketKind, options: SocketOptions, proto: Proto) -> Self {
        SocketEntry {
            id: next_id(),
            family,
            kind,
            handles: AtomicU32::new(0),
            state: Mutex::new(SocketState {
                closed: false,
                closing: false,
                nonblocking: false,
                options,
                waiters: 0,
                proto,
                interrupts: 0,
            }),
            readable: Condvar::new(),
            signal: Signal::default(),
        }
    }

    /// Lock the state; a socket closed under us reads as "not a socket".
    pub fn lock_open(&self) -> WspResult<MutexGuard<'_, SocketState>> {
        let st = lock(&self.state);
        if st.closed {
            Err(WsaError::WSAENOTSOCK)
        } else if st.closing {
            Err(WsaError::WSAEINPROGRESS)
        } else {
            Ok(st)
        }
    }

    /// Number of live handles naming this socket.
    pub fn handle_count(&self) -> u32 {
        self.handles.load(Ordering::Relaxed)
    }
}

/// Lock a mutex, ignoring poisoning: no code path panics while holding our locks, and if a
/// datapath implementation did, the protected data is still consistent (every mutation is a
/// single step), so refusing service forever would be worse.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Read-lock, ignoring poisoning (see [`lock`]).
pub fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

/// Write-lock, ignoring poisoning (see [`lock`]).
pub fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod signal_tests {
    use super::Signal;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Wake, Waker};

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn register_refuses_a_moved_generation_and_notify_wakes_once() {
        let s = Signal::default();
        let c = Arc::new(Count(AtomicUsize::new(0)));
        let w = Waker::from(c.clone());
        let g = s.generation();
        s.notify();
        assert!(!s.register(g, &w), "generation moved: caller must retry");
        let g = s.generation();
        assert!(s.register(g, &w));
        assert!(s.register(g, &w), "same waker again");
        assert_eq!(s.registered(), 1);
        s.notify();
        assert_eq!(c.0.load(Ordering::SeqCst), 1);
        assert_eq!(s.registered(), 0);
        s.notify();
        assert_eq!(c.0.load(Ordering::SeqCst), 1, "wakers are one-shot");
    }

    #[test]
    fn blocking_wait_still_works_alongside_wakers() {
        let s = Arc::new(Signal::default());
        let g = s.generation();
        let s2 = s.clone();
        let t = std::thread::spawn(move || s2.wait(g, None));
        std::thread::sleep(std::time::Duration::from_millis(20));
        s.notify();
        t.join().unwrap();
    }
}
