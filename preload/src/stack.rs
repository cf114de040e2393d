//! The process's provider: started at the first socket that is the provider's, configured by
//! the environment `provider run` sets, and which addresses go to it.
//!
//! | variable | meaning |
//! |---|---|
//! | `PROVIDER_IFACE` | interface to serve; unset: every call goes to the kernel |
//! | `PROVIDER_PORTS` | `80,443,8000-8100`: only binds to these local ports are the provider's (default: every port) |
//! | `PROVIDER_LINGER_NONBLOCKING` | `linux` (default): close of a nonblocking socket with SO_LINGER {1,n} blocks as Linux does; `wsp`: it fails with EWOULDBLOCK and the descriptor stays open (the WSPCloseSocket rule) |
//! | `PROVIDER_QUIET` | set: no start-up line on stderr |
//! | `PROVIDER_DRIVE` | `threads`: the engine's own queue threads; default: application-driven (`drive`) |

use std::cell::Cell;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use provider::api::Provider;
use provider::engine::{Engine, EngineConfig};

use crate::fdtable::FdTable;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LingerNonblocking {
    Linux,
    Wsp,
}

pub struct Stack {
    pub provider: Arc<Provider>,
    pub addrs: Vec<IpAddr>,
    pub ports: Option<Vec<(u16, u16)>>,
    pub linger_nonblocking: LingerNonblocking,
}

static ENGINE: Mutex<Option<Engine>> = Mutex::new(None);
static STACK: OnceLock<Option<Stack>> = OnceLock::new();
static TABLE: OnceLock<FdTable> = OnceLock::new();
/// The process that started the engine: its threads, and the XDP attachment, are that
/// process's; forked children share the stack (see `shm`, `process`) but never stop it.
static ENGINE_PID: AtomicI32 = AtomicI32::new(0);

thread_local! {
    /// This thread is inside the library (starting the stack, probing a route): its own socket
    /// calls go to the kernel.
    static INSIDE: Cell<bool> = const { Cell::new(false) };
}

pub fn table() -> &'static FdTable {
    TABLE.get_or_init(FdTable::new)
}

pub fn inside() -> bool {
    INSIDE.with(Cell::get)
}

/// Run `f` with this thread's socket calls going straight to the kernel.
pub fn as_inside<R>(f: impl FnOnce() -> R) -> R {
    let was = INSIDE.with(|c| c.replace(true));
    let r = f();
    INSIDE.with(|c| c.set(was));
    r
}

/// How long the exit of the process that runs the engine waits for gracefully closed
/// connections to deliver their data and FIN.
const EXIT_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

extern "C" fn stop_at_exit() {
    // As the kernel does when a process exits: each provider descriptor it still holds is
    // closed (graceful, or as its SO_LINGER says).
    for fd in table().fds() {
        // SAFETY: closing a descriptor of this process, as exit would.
        unsafe { crate::calls::close(fd) };
    }
    if ENGINE_PID.load(Ordering::Relaxed) != crate::process::pid() {
        // A forked child: the engine is the starting process's, and serves the others still.
        return;
    }
    // The kernel goes on sending after a process exits; here the engine dies with it, so it
    // first lets the connections closed gracefully (here or earlier) finish, for a while.
    if let Some(st) = running() {
        let end = std::time::Instant::now() + EXIT_DRAIN;
        while st.provider.tcp_counts().1 > 0 && std::time::Instant::now() < end {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
    let engine = ENGINE.lock().unwrap_or_else(PoisonError::into_inner).take();
    drop(engine);
}

/// Whether the environment asks for the provider at all (cheap; no start).
pub fn configured() -> bool {
    if STACK.get().is_some_and(Option::is_some) {
        return true;
    }
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("PROVIDER_IFACE").is_some_and(|v| !v.is_empty()))
}

/// The running stack, started on first use; `None` if not configured or failed to start (said
/// once on stderr: the program then runs on the kernel). A forked child uses its parent's.
pub fn get() -> Option<&'static Stack> {
    if !configured() {
        return None;
    }
    STACK.get_or_init(|| as_inside(start)).as_ref()
}

/// Tests only: serve this process from `provider` (a loopback datapath: no interface, no
/// root) instead of starting an engine; before the first call that asks for the stack.
#[doc(hidden)]
pub fn install_for_tests(provider: Arc<Provider>, addrs: Vec<IpAddr>) -> bool {
    STACK
        .set(Some(Stack {
            provider,
            addrs,
            ports: None,
            linger_nonblocking: LingerNonblocking::Linux,
        }))
        .is_ok()
}

/// The stack if it was started (never starts it).
pub fn running() -> Option<&'static Stack> {
    STACK.get().and_then(Option::as_ref)
}

fn parse_ports(s: &str) -> Option<Vec<(u16, u16)>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        out.push((a.trim().parse().ok()?, b.trim().parse().ok()?));
    }
    Some(out)
}

fn start() -> Option<Stack> {
    let iface = std::env::var("PROVIDER_IFACE").ok()?;
    let quiet = std::env::var_os("PROVIDER_QUIET").is_some();
    let ports = match std::env::var("PROVIDER_PORTS") {
        Ok(p) if !p.trim().is_empty() => match parse_ports(&p) {
            Some(v) => Some(v),
            None => {
                eprintln!(
                    "provider-preload: PROVIDER_PORTS={p:?} is not a list of ports/ranges; using the kernel"
                );
                return None;
            }
        },
        _ => None,
    };
    let linger_nonblocking = match std::env::var("PROVIDER_LINGER_NONBLOCKING").as_deref() {
        Ok("wsp") => LingerNonblocking::Wsp,
        _ => LingerNonblocking::Linux,
    };
    // The engine runs helper programs (ethtool); they, and programs this one executes, must
    // not load this library again (each would try to attach the interface): LD_PRELOAD goes.
    // SAFETY: env mutation while other threads may read it; done once, at the first socket
    // that is ours, before the engine starts its threads.
    unsafe { std::env::remove_var("LD_PRELOAD") };
    let mut config = EngineConfig::new(&iface);
    let app_driven = std::env::var("PROVIDER_DRIVE").as_deref() != Ok("threads");
    if app_driven {
        config.drive = provider::engine::Drive::Application;
    }
    let engine = match Engine::start(config) {
        Ok(e) => e,
        Err(e) => {
            eprintln!(
                "provider-preload: cannot start on {iface}: {e}; this program uses the kernel's sockets"
            );
            return None;
        }
    };
    if app_driven {
        match engine.driver() {
            Ok(d) => crate::drive::install(d),
            Err(e) => {
                eprintln!(
                    "provider-preload: no driver for {iface}: {e}; this program uses the kernel's sockets"
                );
                return None;
            }
        }
    }
    let provider = engine.provider().clone();
    let addrs = engine.addresses().to_vec();
    *ENGINE.lock().unwrap_or_else(PoisonError::into_inner) = Some(engine);
    ENGINE_PID.store(crate::process::pid(), Ordering::Relaxed);
    // SAFETY: registering a plain extern "C" function with libc.
    unsafe { libc::atexit(stop_at_exit) };
    if !quiet {
        eprintln!(
            "provider-preload: serving {iface} ({addrs:?}) in pid {}",
            std::process::id()
        );
    }
    Some(Stack {
        provider,
        addrs,
        ports,
        linger_nonblocking,
    })
}

impl Stack {
    fn port_is_ours(&self, port: u16) -> bool {
        match &self.ports {
            None => true,
            // An ephemeral bind (port 0) is ours only if every port is.
            Some(_) if port == 0 => false,
            Some(r) => r.iter().any(|&(a, b)| (a..=b).contains(&port)),
        }
    }

    /// A bind to `local` is the provider's: the interface's address or the wildcard, on a port
    /// that is ours.
    pub fn binds(&self, local: SocketAddr) -> bool {
        let ip = local.ip();
        (ip.is_unspecified() || self.addrs.contains(&ip)) && self.port_is_ours(local.port())
    }

    /// An unbound socket connecting to (or sending to) `remote` is the provider's when the
    /// kernel would leave through the interface: its source address for `remote` is one of
    /// the interface's (asked with a connected UDP socket, which sends nothing).
    pub fn reaches(&self, remote: SocketAddr) -> bool {
        if remote.ip().is_loopback() || remote.ip().is_unspecified() || remote.ip().is_multicast() {
            return false;
        }
        as_inside(|| {
            let probe = match remote {
                SocketAddr::V4(_) => std::net::UdpSocket::bind("0.0.0.0:0"),
                SocketAddr::V6(_) => std::net::UdpSocket::bind("[::]:0"),
            };
            let Ok(probe) = probe else { return false };
            let port = if remote.port() == 0 { 9 } else { remote.port() };
            probe.connect(SocketAddr::new(remote.ip(), port)).is_ok()
                && probe
                    .local_addr()
                    .is_ok_and(|a| self.addrs.contains(&a.ip()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_lists_parse_and_bad_ones_are_refused() {
        assert_eq!(
            parse_ports("80, 8000-8002"),
            Some(vec![(80, 80), (8000, 8002)])
        );
        assert_eq!(parse_ports(""), Some(vec![]));
        assert_eq!(parse_ports("http"), None);
        assert_eq!(parse_ports("70000"), None);
    }
}
