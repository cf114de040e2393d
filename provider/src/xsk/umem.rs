//! The UMEM: one anonymous mapping cut into equal, power-of-two frames, registered with the
//! socket (`XDP_UMEM_REG`, aligned mode, no headroom), and the free-list bookkeeping of frames.
//!
//! A frame is named by its byte offset into the area ("address"), the same number that travels in
//! ring descriptors. Ownership of a frame passes with it: while its address sits in the fill or TX
//! ring (or the kernel holds it between fill and RX, or TX and completion) the kernel may write or
//! read it; otherwise it belongs to us. The socket layer tracks that handover; this module only
//! gives access to frames it is told are ours.
use std::io;
use std::os::fd::BorrowedFd;

use super::ring::Mmap;
use super::sys;

pub(crate) struct Umem {
    area: Mmap,
    frame_size: u32,
    frame_count: u32,
}

impl Umem {
    /// Maps `frame_count * frame_size` bytes. `frame_size` must be a power of two ≥ 2048.
    pub(crate) fn new(frame_size: u32, frame_count: u32) -> io::Result<Umem> {
        let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidInput, m.to_string());
        if !frame_size.is_power_of_two() || frame_size < 2048 {
            return Err(bad("frame_size must be a power of two of at least 2048"));
        }
        if frame_count < 2 {
            return Err(bad("frame_count must be at least 2"));
        }
        let len = (frame_size as usize)
            .checked_mul(frame_count as usize)
            .ok_or_else(|| bad("UMEM size overflows"))?;
        Ok(Umem {
            area: Mmap::anonymous(len)?,
            frame_size,
            frame_count,
        })
    }

    /// Registers the area with the socket. `xdp_umem_reg` is zero-initialised first so every
    /// field this libc knows and we do not set is 0. With `tx_metadata_len` > 0 each TX frame
    /// may carry that many bytes of `xsk_tx_metadata` right before its data (kernel ≥ 6.8
    /// with `XDP_UMEM_TX_METADATA_LEN`); a kernel without it refuses with `EINVAL`.
    pub(crate) fn register(&self, fd: BorrowedFd<'_>, tx_metadata_len: u32) -> io::Result<()> {
        let mut reg: libc::xdp_umem_reg = zeroed_umem_reg();
        reg.addr = self.area.as_ptr() as u64;
        reg.len = self.area.len() as u64;
        reg.chunk_size = self.frame_size;
        reg.headroom = 0;
        if tx_metadata_len > 0 {
            reg.flags = libc::XDP_UMEM_TX_METADATA_LEN;
            reg.tx_metadata_len = tx_metadata_len;
        }
        sys::set_xdp_opt(fd, libc::XDP_UMEM_REG, &reg)
    }

    pub(crate) fn frame_size(&self) -> u32 {
        self.frame_size
    }

    pub(crate) fn frame_count(&self) -> u32 {
        self.frame_count
    }

    /// Base address of the frame containing `addr` (copy-mode RX descriptors point past the
    /// frame start by the kernel's headroom).
    pub(crate) fn frame_base(&self, addr: u64) -> u64 {
        addr & !(u64::from(self.frame_size) - 1)
    }

    /// Whether `addr..addr+len` lies inside one frame of the area.
    pub(crate) fn in_one_frame(&self, addr: u64, len: usize) -> bool {
        let Some(end) = addr.checked_add(len as u64) else {
            return false;
        };
        end <= self.area.len() as u64
            && (len == 0 || self.frame_base(addr) == self.frame_base(end - 1))
    }

    /// The frame bytes `addr..addr+len`, or None if they are not inside one frame.
    ///
    /// # Safety
    /// The frame must be ours right now (not in the fill or TX ring, not held by the kernel), so
    /// nothing writes it while the slice lives.
    pub(crate) unsafe fn frame(&self, addr: u64, len: usize) -> Option<&[u8]> {
        if !self.in_one_frame(addr, len) {
            return None;
        }
        // SAFETY: in bounds (checked above); the caller guarantees nobody writes these bytes for
        // the slice's lifetime, and `&self` keeps the mapping alive.
        Some(unsafe { std::slice::from_raw_parts(self.area.as_ptr().add(addr as usize), len) })
    }

    /// Mutable access to the frame bytes `addr..addr+len`, or None if not inside one frame.
    ///
    /// # Safety
    /// As for [`Umem::frame`], and no other reference to these bytes exists while it lives.
    pub(crate) unsafe fn frame_mut(&mut self, addr: u64, len: usize) -> Option<&mut [u8]> {
        if !self.in_one_frame(addr, len) {
            return None;
        }
        // SAFETY: in bounds; `&mut self` plus the caller's ownership guarantee make it unique.
        Some(unsafe { std::slice::from_raw_parts_mut(self.area.as_ptr().add(addr as usize), len) })
    }
}

fn zeroed_umem_reg() -> libc::xdp_umem_reg {
    // SAFETY: xdp_umem_reg is a C struct of integers only; all-zero is a valid value. This is the
    // "zero-initialise xdp_umem_reg" rule: fields added by newer libc versions stay 0.
    unsafe { std::mem::zeroed() }
}

/// A LIFO of free frame addresses with a fixed capacity (never reallocates on the data path).
pub(crate) struct FreeList {
    frames: Vec<u64>,
}

impl FreeList {
    /// A list holding `count` frames starting at frame index `first`.
    pub(crate) fn range(frame_size: u32, first: u32, count: u32) -> FreeList {
        let mut frames = Vec::with_capacity(count as usize);
        // Reverse so the lowest address is handed out first.
        frames.extend(
            (first..first + count)
                .rev()
                .map(|i| u64::from(i) * u64::from(frame_size)),
        );
        FreeList { frames }
    }

    pub(crate) fn pop(&mut self) -> Option<u64> {
        self.frames.pop()
    }

    pub(crate) fn push(&mut self, addr: u64) {
        self.frames.push(addr);
    }

    pub(crate) fn len(&self) -> usize {
        self.frames.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_geometry() {
        for (fs, fc) in [(1000, 8), (1024, 8), (3000, 8), (2048, 1), (2048, 0)] {
            let e = Umem::new(fs, fc).err().unwrap();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{fs}x{fc}");
        }
    }

    #[test]
    fn frame_bounds_and_base() {
        let mut u = Umem::new(2048, 4).unwrap();
        assert_eq!((u.frame_size(), u.frame_count()), (2048, 4));
        assert_eq!(u.frame_base(2048 + 256), 2048);
        assert_eq!(u.frame_base(4095), 2048);
        assert!(u.in_one_frame(2048 + 256, 2048 - 256));
        assert!(
            !u.in_one_frame(2048 + 256, 2048 - 255),
            "crosses into the next frame"
        );
        assert!(u.in_one_frame(3 * 2048, 2048));
        assert!(!u.in_one_frame(3 * 2048, 2049), "past the end");
        assert!(!u.in_one_frame(u64::MAX - 1, 4));
        // SAFETY: no kernel socket: every frame is ours.
        let f = unsafe { u.frame_mut(4096, 16) }.unwrap();
        f.copy_from_slice(b"0123456789abcdef");
        // SAFETY: as above.
        assert_eq!(unsafe { u.frame(4096 + 10, 6) }.unwrap(), b"abcdef");
        // SAFETY: as above.
        assert!(unsafe { u.frame(8192, 1) }.is_none());
    }

    #[test]
    fn free_list_hands_out_lowest_first_and_counts() {
        let mut l = FreeList::range(2048, 2, 3);
        assert_eq!(l.len(), 3);
        assert_eq!(l.pop(), Some(4096));
        assert_eq!(l.pop(), Some(6144));
        l.push(4096);
        assert_eq!(l.pop(), Some(4096));
        assert_eq!(l.pop(), Some(8192));
        assert_eq!(l.len(), 0);
        assert_eq!(l.pop(), None);
    }
}
