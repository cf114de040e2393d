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
use std::sync::{Arc, PoisonError, RwLock, RwLockWriteGuard};
use std::task::Wake;

use provider::socket::Socket;

use crate::process::{self, Mailbox};
use crate::{real, shm};

/// The doorbell's private descriptor (a duplicate of the application-visible eventfd): wakers
/// may outlive the application's descriptor, and must never write into a reused number. The
/// number is the owner process's (and its later children's): rung or dropped in any other
/// process of the tree, the work goes to the owner's mailbox (`process`).
pub struct Doorbell {
    pub fd: i32,
    owner: &'static Mailbox,
}

impl std::fmt::Debug for Doorbell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Doorbell")
            .field("fd", &self.fd)
            .field("owner", &self.owner.pid)
            .finish()
    }
}

impl Doorbell {
    /// A doorbell on descriptor `fd` of this process.
    pub fn new(fd: i32) -> Self {
        Doorbell {
            fd,
            owner: process::mailbox(),
        }
    }
}

impl Drop for Doorbell {
    fn drop(&mut self) {
        if self.owner.is_mine() {
            real::sys_close(self.fd);
        } else {
            self.owner.close(self.fd);
        }
    }
}

impl Wake for Doorbell {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        if self.owner.is_mine() {
            real::ring(self.fd);
        } else {
            self.owner.ring(self);
        }
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

impl ProvSock {
    /// The same socket under provider handle `sock` (a `dup`, or a forked child's hold).
    pub fn inherit(&self, sock: Socket) -> Arc<ProvSock> {
        Arc::new(ProvSock {
            sock,
            dgram: self.dgram,
            family: self.family,
            doorbell: self.doorbell.clone(),
            nonblocking: AtomicBool::new(self.nonblocking.load(Ordering::Relaxed)),
            read_shut: AtomicBool::new(self.read_shut.load(Ordering::Relaxed)),
        })
    }
}

impl ProvSock {
    /// The same descriptor state with another doorbell (a forked child's own).
    pub fn with_doorbell(&self, doorbell: Arc<Doorbell>) -> Arc<ProvSock> {
        Arc::new(ProvSock {
            sock: self.sock,
            dgram: self.dgram,
            family: self.family,
            doorbell,
            nonblocking: AtomicBool::new(self.nonblocking.load(Ordering::Relaxed)),
            read_shut: AtomicBool::new(self.read_shut.load(Ordering::Relaxed)),
        })
    }
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
    /// Per-process bookkeeping: its memory is private (copied by fork), see `shm`.
    pub fn new() -> Self {
        shm::private(|| Self {
            bits: (0..BITMAP_FDS / 64).map(|_| AtomicU64::new(0)).collect(),
            map: RwLock::new(HashMap::new()),
        })
    }

    /// The map, held still for `fork` (the bitmap stays as it is: the child keeps every
    /// number).
    pub fn lock_for_fork(&self) -> RwLockWriteGuard<'_, HashMap<i32, Arc<ProvSock>>> {
        self.map.write().unwrap_or_else(PoisonError::into_inner)
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
        let old = shm::private(|| map.insert(fd, s));
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
        shm::private(|| map.remove(&fd))
    }

    /// Every provider descriptor now.
    pub fn fds(&self) -> Vec<i32> {
        let map = self.map.read().unwrap_or_else(PoisonError::into_inner);
        shm::private(|| map.keys().copied().collect())
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
            doorbell: Arc::new(Doorbell::new(-1)),
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
