//! The socket table: a bounded slab of generation-counted slots (DESIGN §6).
//!
//! Lookups take a read lock for a few instructions and clone an `Arc`; opening, duplicating and
//! closing take the write lock just as briefly. A slot freed by a close goes to the back of a
//! FIFO free list, so a slot's generation advances as slowly as the table allows.
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

use super::entry::{SocketEntry, read, write};
use super::error::{WsaError, WspResult};
use super::handle::{FIRST_GENERATION, Socket, next_generation};

/// Default capacity: handles open at once.
pub const DEFAULT_CAPACITY: usize = 65536;

#[derive(Debug)]
struct Slot {
    generation: u32,
    entry: Option<Arc<SocketEntry>>,
}

#[derive(Debug)]
struct Slab {
    slots: Vec<Slot>,
    free: VecDeque<u32>,
    live: usize,
}

/// What `remove` tells the caller.
#[derive(Debug)]
pub struct Removed {
    /// The socket the handle named.
    pub entry: Arc<SocketEntry>,
    /// True if that was its last handle: the caller must release the socket.
    pub last: bool,
}

/// The handle table.
#[derive(Debug)]
pub struct SocketTable {
    capacity: usize,
    slab: RwLock<Slab>,
}

impl SocketTable {
    /// A table holding at most `capacity` handles (clamped to `1..=u32::MAX`).
    pub fn new(capacity: usize) -> Self {
        SocketTable {
            capacity: capacity.clamp(1, u32::MAX as usize),
            slab: RwLock::new(Slab {
                slots: Vec::new(),
                free: VecDeque::new(),
                live: 0,
            }),
        }
    }

    /// Maximum number of handles.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Number of live handles.
    pub fn len(&self) -> usize {
        read(&self.slab).live
    }

    /// True if no handle is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A new handle for `entry`. WSAEMFILE when the table is full.
    pub fn insert(&self, entry: Arc<SocketEntry>) -> WspResult<Socket> {
        let mut slab = write(&self.slab);
        self.insert_locked(&mut slab, entry)
    }

    fn insert_locked(&self, slab: &mut Slab, entry: Arc<SocketEntry>) -> WspResult<Socket> {
        let slot = match slab.free.pop_front() {
            Some(i) => i,
            None if slab.slots.len() < self.capacity => {
                slab.slots.push(Slot {
                    generation: FIRST_GENERATION,
                    entry: None,
                });
                (slab.slots.len() - 1) as u32
            }
            None => return Err(WsaError::WSAEMFILE),
        };
        entry.handles.fetch_add(1, Ordering::Relaxed);
        let s = &mut slab.slots[slot as usize];
        s.entry = Some(entry);
        let handle = Socket::new(slot, s.generation);
        slab.live += 1;
        Ok(handle)
    }

    fn lookup(slab: &Slab, handle: Socket) -> WspResult<&Arc<SocketEntry>> {
        match slab.slots.get(handle.slot() as usize) {
            Some(Slot {
                generation,
                entry: Some(e),
            }) if *generation == handle.generation() => Ok(e),
            _ => Err(WsaError::WSAENOTSOCK),
        }
    }

    /// The socket a handle names; WSAENOTSOCK for anything stale, closed or made up.
    pub fn get(&self, handle: Socket) -> WspResult<Arc<SocketEntry>> {
        Self::lookup(&read(&self.slab), handle).map(Arc::clone)
    }

    /// A second handle for the socket `handle` names; the socket lives until both are closed.
    /// Lookup and insert happen under one write lock, so a concurrent last close cannot slip in
    /// between and leave a handle to a released socket.
    pub fn duplicate(&self, handle: Socket) -> WspResult<Socket> {
        let mut slab = write(&self.slab);
        let entry = Arc::clone(Self::lookup(&slab, handle)?);
        self.insert_locked(&mut slab, entry)
    }

    /// Release a handle. Afterwards the handle is stale for good (the slot's generation moves on).
    pub fn remove(&self, handle: Socket) -> WspResult<Removed> {
        let mut slab = write(&self.slab);
        let idx = handle.slot() as usize;
        let entry = match slab.slots.get_mut(idx) {
            Some(s) if s.generation == handle.generation() && s.entry.is_some() => {
                s.generation = next_generation(s.generation);
                s.entry.take()
            }
            _ => None,
        };
        let Some(entry) = entry else {
            return Err(WsaError::WSAENOTSOCK);
        };
        slab.free.push_back(handle.slot());
        slab.live -= 1;
        let last = entry.handles.fetch_sub(1, Ordering::Relaxed) == 1;
        Ok(Removed { entry, last })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::socket::entry::{Family, Proto, SocketKind};
    use crate::socket::handle::INVALID_SOCKET;
    use crate::socket::options::SocketOptions;
    use crate::udp::UdpState;

    fn entry() -> Arc<SocketEntry> {
        Arc::new(SocketEntry::new(
            Family::V4,
            SocketKind::Datagram,
            SocketOptions::new(1 << 20, 1 << 20),
            Proto::Udp(UdpState::default()),
        ))
    }

    #[test]
    fn insert_get_remove_and_stale_handles() {
        let t = SocketTable::new(4);
        let a = t.insert(entry()).unwrap();
        assert_ne!(a.raw(), 0);
        assert!(t.get(a).is_ok());
        for bogus in [
            0,
            u64::MAX,
            INVALID_SOCKET.raw(),
            0xdead_beef,
            a.raw() ^ (1 << 32),
        ] {
            assert_eq!(
                t.get(Socket::from_raw(bogus)).unwrap_err(),
                WsaError::WSAENOTSOCK
            );
        }
        let r = t.remove(a).unwrap();
        assert!(r.last);
        assert_eq!(t.get(a).unwrap_err(), WsaError::WSAENOTSOCK);
        assert_eq!(t.remove(a).unwrap_err(), WsaError::WSAENOTSOCK);
        // The slot is reused with a new generation; the old handle stays dead.
        let b = t.insert(entry()).unwrap();
        assert_eq!(b.slot(), a.slot());
        assert_ne!(b.generation(), a.generation());
        assert_eq!(t.get(a).unwrap_err(), WsaError::WSAENOTSOCK);
        assert!(t.get(b).is_ok());
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn capacity_and_duplicates() {
        let t = SocketTable::new(2);
        let a = t.insert(entry()).unwrap();
        let d = t.duplicate(a).unwrap();
        assert!(Arc::ptr_eq(&t.get(a).unwrap(), &t.get(d).unwrap()));
        assert_eq!(t.insert(entry()).unwrap_err(), WsaError::WSAEMFILE);
        assert_eq!(t.duplicate(a).unwrap_err(), WsaError::WSAEMFILE);
        assert!(!t.remove(a).unwrap().last);
        assert_eq!(t.get(d).unwrap().handle_count(), 1);
        assert!(t.remove(d).unwrap().last);
        assert!(t.is_empty());
        assert_eq!(t.duplicate(d).unwrap_err(), WsaError::WSAENOTSOCK);
    }
}
