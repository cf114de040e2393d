//! Userspace side of the `PORTS` array: what each (family, proto, port) entry holds, and the order
//! of in-place rewrites that keeps a concurrently reading XDP program right.
//!
//! An entry answers "ours?" for its port: the wildcard bit, up to `PORT_INLINE_V4` IPv4 (or
//! `PORT_INLINE_V6` IPv6) specific addresses inline, and `PORT_SPILLED` when the port has more
//! specific addresses than that, the rest being found in `STEER` only. `STEER` holds every
//! endpoint whatever the entry says, so the caller inserts a key into `STEER` before `add` and
//! deletes it after `remove`: an address in transit between a slot and the spilled set is always
//! matched by one of the two.
//!
//! `bpf_map_update_elem` on an array copies the new value over the old one in place while the
//! program may be reading it on another CPU, so a reader can see any mix of old and new bytes.
//! Every rewrite here therefore changes either only the bytes of slots whose `valid` bit is clear
//! in both the old and the new entry (the program never compares those), or exactly one bit of
//! `flags` / `valid` (a byte, which is read whole). A frame racing a bind or close so sees the
//! port as it was or as it is going to be, never a torn address; endpoints the change does not
//! touch stay matched throughout.
use std::collections::{BTreeSet, HashMap};

use provider_common::{
    FAMILY_V4, PORT_INLINE_V4, PORT_INLINE_V6, PORT_SPILLED, PORT_WILDCARD, PortEntry, SteerKey,
    port_index,
};

/// One port's entry as the kernel has it, and the specific addresses that did not fit inline.
#[derive(Clone, Debug, Default)]
struct PortState {
    entry: PortEntry,
    /// Specific addresses of this port that are in `STEER` only (no free slot when they came).
    spilled: BTreeSet<[u8; 16]>,
}

/// Mirror of every non-empty `PORTS` entry, indexed like the array (`port_index`).
#[derive(Debug, Default)]
pub(crate) struct Ports {
    ports: HashMap<u32, PortState>,
}

impl Ports {
    /// Record `key` (not present yet) and write the entry changes that make it ours, in order,
    /// through `write(index, entry)`. On a failed write the mirror keeps its old state and the old
    /// entry is written back (best effort) before the error is returned.
    pub(crate) fn add<E>(
        &mut self,
        key: &SteerKey,
        write: impl FnMut(u32, &PortEntry) -> Result<(), E>,
    ) -> Result<(), E> {
        self.change(key, write, |state, key, writes| {
            let mut entry = state.entry;
            if is_wildcard(key) {
                entry.flags |= PORT_WILDCARD;
                writes.push(entry);
            } else if let Some(slot) = free_slot(key.family, entry.valid) {
                put_slot(&mut entry, key.family, slot, &key.addr, writes);
            } else {
                state.spilled.insert(key.addr);
                if entry.flags & PORT_SPILLED == 0 {
                    entry.flags |= PORT_SPILLED;
                    writes.push(entry);
                }
            }
        })
    }

    /// Forget `key` (present) and write the entry changes that stop it being ours, in order. A
    /// freed slot takes in one spilled address, if any, so inline slots stay full while the port
    /// has addresses to fill them. Failure handling as in `add`.
    pub(crate) fn remove<E>(
        &mut self,
        key: &SteerKey,
        write: impl FnMut(u32, &PortEntry) -> Result<(), E>,
    ) -> Result<(), E> {
        self.change(key, write, |state, key, writes| {
            let mut entry = state.entry;
            if is_wildcard(key) {
                entry.flags &= !PORT_WILDCARD;
                writes.push(entry);
            } else if let Some(slot) = find_slot(&entry, key.family, &key.addr) {
                entry.valid &= !(1 << slot);
                writes.push(entry);
                // Move one spilled address into the freed slot. It stays in STEER (and the port
                // stays spilled) until it is inline, so it is matched at every step.
                if let Some(addr) = state.spilled.pop_first() {
                    put_slot(&mut entry, key.family, slot, &addr, writes);
                }
            } else {
                state.spilled.remove(&key.addr);
            }
            if state.spilled.is_empty() && entry.flags & PORT_SPILLED != 0 {
                entry.flags &= !PORT_SPILLED;
                writes.push(entry);
            }
            // Nothing left on the port: clear the stale slot bytes too (all slots are invalid
            // already, so this write changes nothing a reader compares).
            if entry.flags == 0 && entry.valid == 0 && entry != PortEntry::default() {
                writes.push(PortEntry::default());
            }
        })
    }

    /// Run `plan` on a copy of `key`'s port state, write what it asks for, and keep the new state
    /// only if every write succeeded.
    fn change<E>(
        &mut self,
        key: &SteerKey,
        mut write: impl FnMut(u32, &PortEntry) -> Result<(), E>,
        plan: impl FnOnce(&mut PortState, &SteerKey, &mut Vec<PortEntry>),
    ) -> Result<(), E> {
        let index = port_index(key.family, key.proto, key.port);
        let old = self.ports.get(&index).cloned().unwrap_or_default();
        let mut state = old.clone();
        let mut writes = Vec::new();
        plan(&mut state, key, &mut writes);
        for entry in &writes {
            if let Err(err) = write(index, entry) {
                let _ = write(index, &old.entry);
                return Err(err);
            }
        }
        if let Some(last) = writes.last() {
            state.entry = *last;
        }
        if state.entry == PortEntry::default() && state.spilled.is_empty() {
            self.ports.remove(&index);
        } else {
            self.ports.insert(index, state);
        }
        Ok(())
    }

    /// The entry the kernel holds for `index` (all zero for an unused port).
    #[cfg(test)]
    pub(crate) fn entry(&self, index: u32) -> PortEntry {
        self.ports.get(&index).map(|p| p.entry).unwrap_or_default()
    }

    /// How many specific addresses of `index` are spilled (in `STEER` only).
    #[cfg(test)]
    pub(crate) fn spilled(&self, index: u32) -> usize {
        self.ports.get(&index).map_or(0, |p| p.spilled.len())
    }

    /// Ports with a non-empty entry.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.ports.len()
    }
}

/// An all-zero address: the wildcard endpoint of its port.
pub(crate) fn is_wildcard(key: &SteerKey) -> bool {
    let len = if key.family == FAMILY_V4 { 4 } else { 16 };
    key.addr[..len].iter().all(|&b| b == 0)
}

fn slots(family: u8) -> usize {
    if family == FAMILY_V4 {
        PORT_INLINE_V4
    } else {
        PORT_INLINE_V6
    }
}

fn free_slot(family: u8, valid: u8) -> Option<usize> {
    (0..slots(family)).find(|&i| valid & (1 << i) == 0)
}

/// The words slot `slot` of `family` stores `addr` as.
fn slot_words(family: u8, addr: &[u8; 16]) -> ([u32; 4], usize) {
    if family == FAMILY_V4 {
        (
            [
                PortEntry::v4_word([addr[0], addr[1], addr[2], addr[3]]),
                0,
                0,
                0,
            ],
            1,
        )
    } else {
        (PortEntry::v6_words(*addr), 4)
    }
}

fn slot_range(family: u8, slot: usize) -> std::ops::Range<usize> {
    let width = if family == FAMILY_V4 { 1 } else { 4 };
    slot * width..(slot + 1) * width
}

fn find_slot(entry: &PortEntry, family: u8, addr: &[u8; 16]) -> Option<usize> {
    let (words, width) = slot_words(family, addr);
    (0..slots(family)).find(|&i| {
        entry.valid & (1 << i) != 0 && entry.addrs[slot_range(family, i)] == words[..width]
    })
}

/// Fill the free slot `slot` with `addr` in two writes: the address while the slot is still
/// invalid, then its `valid` bit, so no reader ever compares a half-written address.
fn put_slot(
    entry: &mut PortEntry,
    family: u8,
    slot: usize,
    addr: &[u8; 16],
    writes: &mut Vec<PortEntry>,
) {
    let (words, width) = slot_words(family, addr);
    let range = slot_range(family, slot);
    if entry.addrs[range.clone()] != words[..width] {
        entry.addrs[range].copy_from_slice(&words[..width]);
        writes.push(*entry);
    }
    entry.valid |= 1 << slot;
    writes.push(*entry);
}
