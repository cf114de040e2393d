//! Which descriptors are provider sockets.
//!
//! A provider socket keeps a real descriptor number: at hand-over the application's kernel
//! socket is replaced (`dup3`) by an eventfd, so numbers stay unique, `close` of any number
//! works, and the kernel's poll machinery can sleep on it. The eventfd is the socket's
//! *doorbell*: the provider rings it (through a waker registered on the socket's signal) when the
//! socket's state may have changed; readiness itself is always computed from the provider.
//!
//! Lookups are lock-free for descriptors that are not the provider's (a bitmap), so ordinary
//! files, pipes and kernel sockets pay one atomic load per call.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::task::Wake;

use provider::socket::Socket;

use crate::real;

/// The doorbell's private descriptor (a duplicate of the application-visible eventfd): wakers
/// may outlive the application's descriptor, and must never write into a reused number.
#[derive(Debug)]
pub struct Doorbell {
    pub fd: i32,
}

impl Drop for Doorbell {
    fn drop(&mut self) {
        real::sys_close(self.fd);
    }
}

impl Wake for Doorbell {
    fn wake(self: Arc<Self>) {
        real::ring(self.fd);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        real::ring(self.fd);
    }
}

/// One descriptor naming a provider socket (each `dup` has its own provider handle).
#[derive(Debug)]
pub struct ProvSock {
    pub sock: Socket,
    pub dgram: bool,
    pub family: i32,
    pub doorbell: Arc<Doorbell>,
    /// O_NONBLOCK as the application set it (mirrors the provider's FIONBIO).
    pub nonblocking: AtomicBool,
    /// shutdown(SHUT_RD): reads return 0 (Linux; Winsock's SD_RECEIVE would reset instead).
    pub read_shut: AtomicBool,
}

const BITMAP_FDS: usize = 1 << 20;

impl Default for FdTable {
    fn default() -> Self {
        Self::new()
    }
}

pub struct FdTable {
    bits: Box<[AtomicU64]>,
    map: RwLock<HashMap<i32, Arc<ProvSock>>>,
}

impl FdTable {
    pub fn new() -> Self {
        Self {
            bits: (0..BITMAP_FDS / 64).map(|_| AtomicU64::new(0)).collect(),
            map: RwLock::new(HashMap::new()),
        }
    }

    fn bit(&self, fd: i32) -> Option<(&AtomicU64, u64)> {
        let i = usize::try_from(fd).ok()?;
        let w = self.bits.get(i / 64)?;
        Some((w, 1u64 << (i % 64)))
    }

    pub fn get(&self, fd: i32) -> Option<Arc<ProvSock>> {
        if fd < 0 {
            return None;
        }
        if let Some((w, m)) = self.bit(fd)
            && w.load(Ordering::Acquire) & m == 0
        {
            return None;
        }
        self.map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&fd)
            .cloned()
    }

    /// Record `fd` as `s`, returning what it named before (a `dup2` over a provider socket).
    pub fn insert(&self, fd: i32, s: Arc<ProvSock>) -> Option<Arc<ProvSock>> {
        let mut map = self.map.write().unwrap_or_else(PoisonError::into_inner);
        let old = map.insert(fd, s);
        if let Some((w, m)) = self.bit(fd) {
            w.fetch_or(m, Ordering::Release);
        }
        old
    }

    pub fn remove(&self, fd: i32) -> Option<Arc<ProvSock>> {
        let mut map = self.map.write().unwrap_or_else(PoisonError::into_inner);
        if let Some((w, m)) = self.bit(fd) {
            w.fetch_and(!m, Ordering::Release);
        }
        map.remove(&fd)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn len(&self) -> usize {
        self.map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(sock: u64) -> Arc<ProvSock> {
        Arc::new(ProvSock {
            sock: Socket::from_raw(sock),
            dgram: false,
            family: libc::AF_INET,
            doorbell: Arc::new(Doorbell { fd: -1 }),
            nonblocking: AtomicBool::new(false),
            read_shut: AtomicBool::new(false),
        })
    }

    #[test]
    fn insert_get_remove_and_dup2_over_an_entry() {
        let t = FdTable::new();
        assert!(t.get(5).is_none());
        assert!(t.get(-1).is_none());
        assert!(t.insert(5, entry(1)).is_none());
        assert_eq!(t.get(5).unwrap().sock, Socket::from_raw(1));
        assert!(t.get(4).is_none() && t.get(6).is_none());
        // dup2 onto 5: the old entry comes back to be closed.
        assert_eq!(t.insert(5, entry(2)).unwrap().sock, Socket::from_raw(1));
        assert_eq!(t.get(5).unwrap().sock, Socket::from_raw(2));
        assert_eq!(t.remove(5).unwrap().sock, Socket::from_raw(2));
        assert!(t.get(5).is_none());
        // Numbers past the bitmap still work (map only).
        let big = BITMAP_FDS as i32 + 7;
        t.insert(big, entry(3));
        assert_eq!(t.get(big).unwrap().sock, Socket::from_raw(3));
        assert_eq!(t.len(), 1);
    }
}
