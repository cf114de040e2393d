//! The AF_XDP layer (DESIGN §3): one UMEM and one AF_XDP socket per (interface, RX queue), with
//! its fill, completion, RX and TX rings, on `libc` only.
//!
//! ```text
//!            fill ring ──► kernel ──► RX ring          (frames 0 .. n/2: receive side)
//!  Xsk ──►                                     ──► Xsk
//!            TX ring   ──► kernel ──► completion ring  (frames n/2 .. n: transmit side)
//! ```
//!
//! * [`Xsk::new`] creates the socket, maps and registers the UMEM, sizes and maps the rings,
//!   **stocks the fill ring completely**, then binds (zero-copy if asked or possible, else copy;
//!   retrying a few times on `EBUSY` while a previous socket on the queue finishes closing).
//! * Receive: [`Xsk::recv_batch`] hands each frame to a closure and recycles it to the fill ring
//!   in the same call; no frame ever leaves the socket.
//! * Transmit: [`Xsk::send_with`] / [`Xsk::send`] write frames into free TX frames and reserve
//!   descriptors; [`Xsk::flush`] publishes them and kicks the kernel when it asked for that
//!   (`need_wakeup`); [`Xsk::reap_completions`] returns sent frames to the free list.
//! * [`Xsk::fd`] is pollable (`POLLIN` when the RX ring has frames, `POLLOUT` when TX has room),
//!   so an engine can sleep in `poll`/`AsyncFd` or busy-poll.
//!
//! An `Xsk` is `Send` but not `Sync`: each ring has exactly one user-space producer or consumer.
//! Share it between threads behind a lock (the TX producer lock of DESIGN §3).
//!
//! Unsafe code is confined to `ring.rs` (ring and mapping memory), `umem.rs` (frame slices) and
//! `sys.rs` (system calls); every block carries a `SAFETY:` comment.
mod ring;
mod socket;
mod sys;
mod umem;

pub use socket::{KickCounts, Poller, TxBuild, TxChecksum, TxFrame, Xsk};
/// `poll(2)` on one descriptor, retried on EINTR (also used for the aya-log ring).
pub(crate) use sys::poll_one;

/// How to bind the socket to the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum BindMode {
    /// Try zero-copy; fall back to copy mode if the driver refuses (`EOPNOTSUPP`/`EINVAL`).
    #[default]
    Auto,
    /// Copy mode (`XDP_COPY`): works on every driver with XDP, veth included.
    Copy,
    /// Zero-copy mode (`XDP_ZEROCOPY`): fails unless the driver supports it.
    ZeroCopy,
}

/// Sizes and options for [`Xsk::new`]. Ring sizes must be non-zero powers of two; `frame_size`
/// a power of two of at least 2048 (and at most the page size, aligned mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XskConfig {
    /// Bytes per UMEM frame (default 2048).
    pub frame_size: u32,
    /// Frames in the UMEM (default 4096): the first half serve RX via the fill ring, the rest TX.
    pub frame_count: u32,
    /// RX ring entries (default 2048).
    pub rx_size: u32,
    /// TX ring entries (default 2048).
    pub tx_size: u32,
    /// Fill ring entries (default 2048).
    pub fill_size: u32,
    /// Completion ring entries (default 2048).
    pub comp_size: u32,
    /// Bind mode (default [`BindMode::Auto`]).
    pub mode: BindMode,
    /// Bind with `XDP_USE_NEED_WAKEUP` and kick only when a ring's flag asks (default true).
    /// When false, every [`Xsk::flush`] with pending descriptors kicks.
    pub need_wakeup: bool,
    /// Ask for AF_XDP TX checksum offload (default true): the UMEM is registered with room for
    /// `xsk_tx_metadata` in front of each TX frame, and frames whose builder asks for it carry
    /// a checksum request. Used only where it is safe: a copy-mode bind (the kernel's generic
    /// path finishes the checksum, in the device or in software); zero-copy binds compute
    /// checksums in software (the driver's `xsk-features` are not probed). See
    /// [`Xsk::tx_checksum_offload`].
    pub tx_checksum_offload: bool,
    /// Kernel busy-polling knobs set on the socket after the bind (default: none).
    pub busy_poll: Option<BusyPollKnobs>,
}

/// `SO_BUSY_POLL` / `SO_PREFER_BUSY_POLL` / `SO_BUSY_POLL_BUDGET` for an XSK: with them a
/// `poll` or kick on the socket runs the queue's NAPI in the calling thread for up to `usecs`
/// before sleeping, and (with the device's `napi_defer_hard_irqs`) the kernel prefers that to
/// interrupts. The device sysctls are the host's to set; the provider never changes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BusyPollKnobs {
    pub usecs: u32,
    pub budget: u16,
    pub prefer: bool,
}

/// What the kernel accepted of [`BusyPollKnobs`] (each false where `setsockopt` failed, e.g. a
/// kernel before 5.11 has no `SO_PREFER_BUSY_POLL`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct BusyPollApplied {
    pub busy_poll: bool,
    pub prefer_busy_poll: bool,
    pub budget: bool,
}

impl Default for XskConfig {
    fn default() -> XskConfig {
        XskConfig {
            frame_size: 2048,
            frame_count: 4096,
            rx_size: 2048,
            tx_size: 2048,
            fill_size: 2048,
            comp_size: 2048,
            mode: BindMode::Auto,
            need_wakeup: true,
            tx_checksum_offload: true,
            busy_poll: None,
        }
    }
}

/// The socket's `XDP_STATISTICS` counters (fields a kernel does not report stay 0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct XskStatistics {
    /// Frames dropped for reasons other than invalid descriptors (e.g. no fill entry, RX full).
    pub rx_dropped: u64,
    /// Invalid descriptors found on the fill ring.
    pub rx_invalid_descs: u64,
    /// Invalid descriptors found on the TX ring.
    pub tx_invalid_descs: u64,
    /// Frames dropped because the RX ring was full.
    pub rx_ring_full: u64,
    /// Times the kernel found the fill ring empty.
    pub rx_fill_ring_empty_descs: u64,
    /// Times the kernel found the TX ring empty when asked to send.
    pub tx_ring_empty_descs: u64,
}

#[cfg(test)]
mod tests;
