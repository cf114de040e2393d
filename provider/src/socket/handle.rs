//! The `SOCKET` handle (DESIGN §6).
//!
//! A handle is `(generation << 32) | slot`: the slot indexes the socket table, the generation
//! counts how often that slot has been reused. A handle whose slot was closed (or reused since)
//! no longer matches the slot's generation, so it reliably gets `WSAENOTSOCK` instead of
//! silently reaching some other socket (Windows may reuse a value at once; we do not).
//!
//! Generations run over `1..=u32::MAX - 1`, so a handle is never `0` and never `u64::MAX`
//! ([`INVALID_SOCKET`]).
use std::fmt;

/// A socket handle as the WSP calls see it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(transparent)]
pub struct Socket(u64);

/// `INVALID_SOCKET`: what the C ABI returns from `WSPSocket` on failure. Never a valid handle.
pub const INVALID_SOCKET: Socket = Socket(u64::MAX);

/// First generation a slot gets.
pub(crate) const FIRST_GENERATION: u32 = 1;

impl Socket {
    /// Any 64-bit value, e.g. one that came through the C ABI. Validity is checked by the table.
    pub const fn from_raw(raw: u64) -> Self {
        Socket(raw)
    }

    /// The 64-bit value the C ABI hands out.
    pub const fn raw(self) -> u64 {
        self.0
    }

    pub(crate) const fn new(slot: u32, generation: u32) -> Self {
        Socket(((generation as u64) << 32) | slot as u64)
    }

    /// The slot index part.
    pub const fn slot(self) -> u32 {
        self.0 as u32
    }

    /// The generation part.
    pub const fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }
}

/// The generation after `g`, skipping 0 and `u32::MAX` (see the module doc).
pub(crate) const fn next_generation(g: u32) -> u32 {
    if g >= u32::MAX - 1 {
        FIRST_GENERATION
    } else {
        g + 1
    }
}

impl fmt::Debug for Socket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Socket({}#{})", self.slot(), self.generation())
    }
}

impl fmt::Display for Socket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_and_generations() {
        let s = Socket::new(7, 3);
        assert_eq!(s.slot(), 7);
        assert_eq!(s.generation(), 3);
        assert_eq!(Socket::from_raw(s.raw()), s);
        assert_eq!(next_generation(1), 2);
        assert_eq!(next_generation(u32::MAX - 2), u32::MAX - 1);
        assert_eq!(next_generation(u32::MAX - 1), FIRST_GENERATION);
        // The largest possible handle is still not INVALID_SOCKET, the smallest not 0.
        assert_ne!(Socket::new(u32::MAX, u32::MAX - 1), INVALID_SOCKET);
        assert_ne!(Socket::new(0, FIRST_GENERATION).raw(), 0);
    }
}
