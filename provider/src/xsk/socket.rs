//! The `Xsk` type: one UMEM plus one AF_XDP socket bound to (ifindex, queue).
use std::cell::Cell;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::ring::{Consumer, Mmap, Producer, RingLayout};
use super::umem::{FreeList, Umem};
use super::{BindMode, BusyPollApplied, BusyPollKnobs, XskConfig, XskStatistics, sys};

/// How long [`Xsk::new`] keeps retrying a bind that fails with `EBUSY`.
const BIND_BUSY_RETRY: Duration = Duration::from_secs(1);
/// Upper bound on kicks per [`Xsk::flush`] (copy mode sends at most 32 frames per kick).
const MAX_KICKS_PER_FLUSH: usize = 256;

/// One UMEM and one AF_XDP socket bound to (ifindex, queue). See the module docs.
///
/// `Send` (it may move between threads) but not `Sync`. Dropping it unmaps the rings, closes the
/// socket and then unmaps the UMEM (field order below).
pub struct Xsk {
    // Field order is drop order: rings first, then the socket, then the UMEM area.
    rx: Consumer<libc::xdp_desc>,
    tx: Producer<libc::xdp_desc>,
    fill: Producer<u64>,
    comp: Consumer<u64>,
    fd: OwnedFd,
    umem: Umem,
    /// TX frames that are ours and unused.
    tx_free: FreeList,
    /// RX frames that are ours because the fill ring had no room for them.
    rx_spare: FreeList,
    /// TX frames taken from `tx_free` and not completed yet (reserved, published or in flight).
    tx_outstanding: usize,
    tx_frames: usize,
    mode: BindMode,
    ifindex: u32,
    queue: u32,
    need_wakeup: bool,
    /// System calls made to kick TX (`sendto`) and RX (`recvfrom`, fill-ring wake-up).
    kicks: KickCounts,
    /// Bytes of `xsk_tx_metadata` registered in front of each TX frame's data (0: none).
    tx_meta_len: usize,
    /// Whether frames may carry a checksum request (metadata registered and a copy-mode bind).
    csum_offload: bool,
    busy_poll: BusyPollApplied,
    _not_sync: PhantomData<Cell<()>>,
}

/// `xdp_desc.options`: the frame carries `xsk_tx_metadata` in front of its data.
const XDP_TX_METADATA: u32 = 1 << 1;
/// `xsk_tx_metadata.flags`: checksum offload requested.
const XDP_TXMD_FLAGS_CHECKSUM: u64 = 1 << 1;
/// `sizeof(struct xsk_tx_metadata)` since 6.14 (flags, then the request: csum_start,
/// csum_offset, launch_time); 6.8's shorter layout is a prefix of it.
const TX_METADATA_LEN: usize = 24;

/// A checksum the kernel (or the device) is to finish: the one's-complement sum from `start`
/// to the end of the frame is stored at `start + offset`. Offsets are from the frame's first
/// byte; the field must hold the pseudo-header sum (Linux `CHECKSUM_PARTIAL`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxChecksum {
    pub start: u16,
    pub offset: u16,
}

/// What a [`Xsk::send_within`] builder wrote: the frame's byte range in the UMEM frame, and
/// the checksum it leaves to the kernel, if any (then at least [`Xsk::tx_metadata_len`] bytes
/// in front of the range must be free).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxFrame {
    pub range: std::ops::Range<usize>,
    pub checksum: Option<TxChecksum>,
}

impl TxFrame {
    /// A complete frame (checksums already written).
    pub fn plain(range: std::ops::Range<usize>) -> TxFrame {
        TxFrame {
            range,
            checksum: None,
        }
    }
}

/// `xsk_tx_metadata` with a checksum request, in the bytes right before a frame's data.
fn write_tx_metadata(meta: &mut [u8], c: TxChecksum) {
    meta.fill(0);
    meta[..8].copy_from_slice(&XDP_TXMD_FLAGS_CHECKSUM.to_ne_bytes());
    meta[8..10].copy_from_slice(&c.start.to_ne_bytes());
    meta[10..12].copy_from_slice(&c.offset.to_ne_bytes());
}

/// What [`Xsk::send_within`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxBuild {
    /// A descriptor is reserved for the built frame.
    Queued,
    /// No free TX frame or the TX ring is full: reap completions, flush, retry.
    NoRoom,
    /// The builder wrote nothing; the frame went back to the free list.
    Cancelled,
}

/// How often the kernel had to be kicked: with `need_wakeup`, ideally far fewer than frames.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct KickCounts {
    pub tx: u64,
    pub rx: u64,
}

fn invalid_input(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.to_string())
}

fn validate(cfg: &XskConfig) -> io::Result<()> {
    for (name, size) in [
        ("rx_size", cfg.rx_size),
        ("tx_size", cfg.tx_size),
        ("fill_size", cfg.fill_size),
        ("comp_size", cfg.comp_size),
    ] {
        if size == 0 || !size.is_power_of_two() {
            return Err(invalid_input(&format!(
                "{name} must be a non-zero power of two, got {size}"
            )));
        }
    }
    if !cfg.frame_size.is_power_of_two() || cfg.frame_size < 2048 {
        return Err(invalid_input(
            "frame_size must be a power of two of at least 2048",
        ));
    }
    if cfg.frame_count < 2 {
        return Err(invalid_input("frame_count must be at least 2"));
    }
    Ok(())
}

/// The four ring layouts, tolerating kernels that report the pre-5.4 struct without `flags`.
fn mmap_offsets(fd: &OwnedFd) -> io::Result<[RingLayout; 4]> {
    let (off, len) =
        sys::get_xdp_opt::<libc::xdp_mmap_offsets>(fd.as_fd(), libc::XDP_MMAP_OFFSETS)?;
    let conv = |o: &libc::xdp_ring_offset| RingLayout {
        producer: o.producer,
        consumer: o.consumer,
        flags: o.flags,
        desc: o.desc,
    };
    if len == std::mem::size_of::<libc::xdp_mmap_offsets>() {
        return Ok([conv(&off.rx), conv(&off.tx), conv(&off.fr), conv(&off.cr)]);
    }
    let (v1, len1) =
        sys::get_xdp_opt::<libc::xdp_mmap_offsets_v1>(fd.as_fd(), libc::XDP_MMAP_OFFSETS)?;
    if len1 != std::mem::size_of::<libc::xdp_mmap_offsets_v1>() {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("unexpected XDP_MMAP_OFFSETS length {len}"),
        ));
    }
    // Old layout: the flags word follows the consumer index.
    let conv1 = |o: &libc::xdp_ring_offset_v1| RingLayout {
        producer: o.producer,
        consumer: o.consumer,
        flags: o.consumer + 4,
        desc: o.desc,
    };
    Ok([conv1(&v1.rx), conv1(&v1.tx), conv1(&v1.fr), conv1(&v1.cr)])
}

fn map_ring<T>(fd: &OwnedFd, layout: &RingLayout, size: u32, pgoff: u64) -> io::Result<Arc<Mmap>> {
    let len = layout
        .map_len::<T>(size)
        .ok_or_else(|| invalid_input("ring too large"))?;
    Mmap::shared(fd.as_fd(), len, pgoff).map(Arc::new)
}

fn is_errno(e: &io::Error, codes: &[i32]) -> bool {
    e.raw_os_error().is_some_and(|c| codes.contains(&c))
}

impl Xsk {
    /// Creates the socket and UMEM (half the frames for RX/fill, half for TX), sizes and maps the
    /// rings, stocks the fill ring completely, and binds to (`ifindex`, `queue`) in `cfg.mode`
    /// (with `XDP_USE_NEED_WAKEUP` if `cfg.need_wakeup`). A bind failing with `EBUSY` is retried
    /// for about a second (a previous socket on the queue may still be closing).
    ///
    /// Errors: `InvalidInput` for a bad configuration (checked before any system call), else the
    /// OS error of the failing step (`EOPNOTSUPP` for zero-copy on a driver without it, `EPERM`
    /// without CAP_NET_RAW, `ENODEV` for a wrong ifindex, `EINVAL` for a wrong queue…).
    pub fn new(ifindex: u32, queue: u32, cfg: &XskConfig) -> io::Result<Xsk> {
        validate(cfg)?;
        let fd = sys::xdp_socket()?;
        let umem = Umem::new(cfg.frame_size, cfg.frame_count)?;
        let tx_meta_len = if cfg.tx_checksum_offload {
            match umem.register(fd.as_fd(), TX_METADATA_LEN as u32) {
                Ok(()) => TX_METADATA_LEN,
                // A kernel before 6.8 has no TX metadata: register plainly (a failed
                // registration leaves the socket without a UMEM, so it may be retried).
                Err(e) if is_errno(&e, &[libc::EINVAL, libc::EOPNOTSUPP]) => {
                    tracing::debug!(error = %e, "no AF_XDP TX metadata: software TX checksums");
                    umem.register(fd.as_fd(), 0)?;
                    0
                }
                Err(e) => return Err(e),
            }
        } else {
            umem.register(fd.as_fd(), 0)?;
            0
        };

        let c_int = |v: u32| v as libc::c_int;
        sys::set_xdp_opt(fd.as_fd(), libc::XDP_UMEM_FILL_RING, &c_int(cfg.fill_size))?;
        sys::set_xdp_opt(
            fd.as_fd(),
            libc::XDP_UMEM_COMPLETION_RING,
            &c_int(cfg.comp_size),
        )?;
        sys::set_xdp_opt(fd.as_fd(), libc::XDP_RX_RING, &c_int(cfg.rx_size))?;
        sys::set_xdp_opt(fd.as_fd(), libc::XDP_TX_RING, &c_int(cfg.tx_size))?;

        let [rx_l, tx_l, fr_l, cr_l] = mmap_offsets(&fd)?;
        let rx_map =
            map_ring::<libc::xdp_desc>(&fd, &rx_l, cfg.rx_size, libc::XDP_PGOFF_RX_RING as u64)?;
        let tx_map =
            map_ring::<libc::xdp_desc>(&fd, &tx_l, cfg.tx_size, libc::XDP_PGOFF_TX_RING as u64)?;
        let fr_map = map_ring::<u64>(&fd, &fr_l, cfg.fill_size, libc::XDP_UMEM_PGOFF_FILL_RING)?;
        let cr_map = map_ring::<u64>(
            &fd,
            &cr_l,
            cfg.comp_size,
            libc::XDP_UMEM_PGOFF_COMPLETION_RING,
        )?;

        let rx_frames = cfg.frame_count / 2;
        let tx_frames = cfg.frame_count - rx_frames;
        let mut xsk = Xsk {
            rx: Consumer::new(rx_map, rx_l, cfg.rx_size)?,
            tx: Producer::new(tx_map, tx_l, cfg.tx_size)?,
            fill: Producer::new(fr_map, fr_l, cfg.fill_size)?,
            comp: Consumer::new(cr_map, cr_l, cfg.comp_size)?,
            fd,
            tx_free: FreeList::range(cfg.frame_size, rx_frames, tx_frames),
            rx_spare: FreeList::range(cfg.frame_size, 0, rx_frames),
            umem,
            tx_outstanding: 0,
            kicks: KickCounts::default(),
            tx_frames: tx_frames as usize,
            mode: cfg.mode,
            ifindex,
            queue,
            need_wakeup: cfg.need_wakeup,
            tx_meta_len,
            csum_offload: false,
            busy_poll: BusyPollApplied::default(),
            _not_sync: PhantomData,
        };
        // Stock the fill ring before binding: frames that arrive before it has entries are dropped.
        xsk.refill();
        xsk.mode = xsk.bind(cfg)?;
        // Zero-copy drivers may ignore the request (their `xsk-features` are not probed), so
        // only the generic copy path, which always honours it, gets checksum requests.
        xsk.csum_offload = tx_meta_len > 0 && xsk.mode == BindMode::Copy;
        if let Some(knobs) = cfg.busy_poll {
            xsk.busy_poll = xsk.set_busy_poll(knobs);
        }
        Ok(xsk)
    }

    fn set_busy_poll(&self, knobs: BusyPollKnobs) -> BusyPollApplied {
        let fd = self.fd.as_fd();
        let set = |opt, v: u32, name: &str| match sys::set_socket_int(fd, opt, v as libc::c_int) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(error = %e, option = name, "busy-poll option refused");
                false
            }
        };
        BusyPollApplied {
            busy_poll: set(libc::SO_BUSY_POLL, knobs.usecs, "SO_BUSY_POLL"),
            prefer_busy_poll: set(
                libc::SO_PREFER_BUSY_POLL,
                u32::from(knobs.prefer),
                "SO_PREFER_BUSY_POLL",
            ),
            budget: set(
                libc::SO_BUSY_POLL_BUDGET,
                u32::from(knobs.budget),
                "SO_BUSY_POLL_BUDGET",
            ),
        }
    }

    /// Whether [`TxFrame::checksum`] requests reach the kernel (else the builder must have
    /// written complete checksums).
    pub fn tx_checksum_offload(&self) -> bool {
        self.csum_offload
    }

    /// Bytes a builder must leave free in front of a frame that carries a checksum request.
    pub fn tx_metadata_len(&self) -> usize {
        self.tx_meta_len
    }

    /// What the kernel accepted of the configured busy-poll knobs.
    pub fn busy_poll(&self) -> BusyPollApplied {
        self.busy_poll
    }

    fn bind(&self, cfg: &XskConfig) -> io::Result<BindMode> {
        let wake = if cfg.need_wakeup {
            libc::XDP_USE_NEED_WAKEUP
        } else {
            0
        };
        let mut mode = match cfg.mode {
            BindMode::Copy => BindMode::Copy,
            BindMode::Auto | BindMode::ZeroCopy => BindMode::ZeroCopy,
        };
        let deadline = Instant::now() + BIND_BUSY_RETRY;
        loop {
            let flags = wake
                | match mode {
                    BindMode::ZeroCopy => libc::XDP_ZEROCOPY,
                    _ => libc::XDP_COPY,
                };
            match sys::bind(self.fd.as_fd(), self.ifindex, self.queue, flags) {
                Ok(()) => return Ok(mode),
                Err(e)
                    if cfg.mode == BindMode::Auto
                        && mode == BindMode::ZeroCopy
                        && is_errno(&e, &[libc::EOPNOTSUPP, libc::EINVAL]) =>
                {
                    tracing::debug!(ifindex = self.ifindex, queue = self.queue, error = %e,
                        "zero-copy bind refused, falling back to copy mode");
                    mode = BindMode::Copy;
                }
                Err(e) if is_errno(&e, &[libc::EBUSY]) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Moves spare RX frames into the fill ring and publishes them. Returns how many moved.
    fn refill(&mut self) -> usize {
        let mut moved = 0;
        while let Some(addr) = self.rx_spare.pop() {
            if !self.fill.push(addr) {
                self.rx_spare.push(addr);
                break;
            }
            moved += 1;
        }
        if moved > 0 {
            self.fill.submit();
        }
        moved
    }

    /// The socket fd: pollable (`POLLIN` when the RX ring has frames, `POLLOUT` when the TX ring
    /// has room; in copy mode a poll also drives pending TX).
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// `poll` the socket for `events` (`libc::POLLIN`, `libc::POLLOUT`) for up to `timeout_ms`
    /// milliseconds (negative: forever); returns the revents, 0 on timeout.
    pub fn poll(&self, events: i16, timeout_ms: i32) -> io::Result<i16> {
        sys::poll_one(self.fd.as_fd(), events, timeout_ms)
    }

    /// A duplicate of the socket's descriptor for sleeping on RX readiness without holding the
    /// `Xsk` (the engine's queue thread polls while senders use the TX ring).
    pub fn poller(&self) -> io::Result<Poller> {
        Ok(Poller(self.fd.try_clone()?))
    }

    /// The mode actually bound: [`BindMode::Copy`] or [`BindMode::ZeroCopy`].
    pub fn mode(&self) -> BindMode {
        self.mode
    }

    pub fn queue(&self) -> u32 {
        self.queue
    }

    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Consumes up to `max` RX descriptors, calls `f` with each frame's bytes, releases them and
    /// gives the frames straight back to the fill ring in one batch (kicking with
    /// `recvfrom(MSG_DONTWAIT)` if the fill ring asks for a wake-up). Returns the number of
    /// descriptors consumed. Makes no system call when the RX ring is empty.
    pub fn recv_batch(&mut self, max: usize, mut f: impl FnMut(&[u8])) -> usize {
        let want = u32::try_from(max).unwrap_or(u32::MAX);
        let n = self.rx.available(want).min(want);
        if n == 0 {
            return 0;
        }
        for _ in 0..n {
            let Some(desc) = self.rx.pop() else { break };
            // SAFETY: the kernel handed this frame to us through the RX ring and gets it back only
            // through the fill ring below, after `f` returned.
            if let Some(bytes) = unsafe { self.umem.frame(desc.addr, desc.len as usize) } {
                f(bytes);
            } else {
                tracing::warn!(
                    addr = desc.addr,
                    len = desc.len,
                    "invalid RX descriptor ignored"
                );
            }
            let base = self.umem.frame_base(desc.addr);
            if self.umem.in_one_frame(base, 1) {
                self.rx_spare.push(base);
            }
        }
        self.rx.release();
        if self.refill() > 0 && self.fill.needs_wakeup() {
            // A failed kick only delays reception until the next kick or poll.
            self.kicks.rx += 1;
            let _ = sys::kick_rx(self.fd.as_fd());
        }
        n as usize
    }

    /// Takes a free TX frame, lets `build` write a frame into it in place (the slice is
    /// `min(max_len, frame_size)` bytes long) and reserves a TX descriptor for the length `build`
    /// returns. `0` (or a length larger than the slice) cancels and returns the frame.
    ///
    /// Returns false if no TX frame is free or the TX ring is full (reap completions, flush, and
    /// retry) or if `build` cancelled. Nothing reaches the kernel before [`Xsk::flush`].
    pub fn send_with(&mut self, max_len: usize, build: impl FnOnce(&mut [u8]) -> usize) -> bool {
        // The kernel wants `tx_metadata_len` bytes in front of every frame once the UMEM has
        // TX metadata, whether or not this frame carries any.
        let at = self.tx_meta_len;
        let cap = max_len.min(self.umem.frame_size() as usize - at);
        matches!(
            self.send_within(|buf| {
                let buf = &mut buf[at..at + cap];
                let len = build(buf);
                (len > 0 && len <= cap).then(|| TxFrame::plain(at..at + len))
            }),
            TxBuild::Queued
        )
    }

    /// Takes a free TX frame and lets `build` write a frame anywhere inside it (the slice is the
    /// whole UMEM frame): `build` returns the byte range the frame occupies, and the TX
    /// descriptor points at that range, so a builder can write the payload at a fixed offset
    /// first and the headers in front of it afterwards, without moving the payload. `None` (or
    /// an empty or out-of-frame range, or one starting in the first
    /// [`Xsk::tx_metadata_len`] bytes, which the kernel reserves) cancels and returns the frame.
    ///
    /// Nothing reaches the kernel before [`Xsk::flush`].
    pub fn send_within(&mut self, build: impl FnOnce(&mut [u8]) -> Option<TxFrame>) -> TxBuild {
        if self.tx.free(1) == 0 {
            return TxBuild::NoRoom;
        }
        let Some(addr) = self.tx_free.pop() else {
            return TxBuild::NoRoom;
        };
        let cap = self.umem.frame_size() as usize;
        let meta_len = self.tx_meta_len;
        let offload = self.csum_offload;
        // SAFETY: `addr` came from the TX free list, so the frame is ours until we put its
        // descriptor on the TX ring below; `&mut self.umem` makes the slice unique.
        let built = match unsafe { self.umem.frame_mut(addr, cap) } {
            Some(buf) => build(buf).and_then(|f| {
                let r = &f.range;
                // Every frame needs the metadata room in front (the kernel checks it).
                if r.start >= r.end || r.end > cap || r.start < meta_len {
                    return None;
                }
                let mut options = 0;
                if let Some(c) = f.checksum {
                    // A request the socket cannot carry would leave a wrong checksum.
                    if !offload {
                        return None;
                    }
                    write_tx_metadata(&mut buf[r.start - meta_len..r.start], c);
                    options = XDP_TX_METADATA;
                }
                Some((r.clone(), options))
            }),
            None => None,
        };
        let Some((range, options)) = built else {
            self.tx_free.push(addr);
            return TxBuild::Cancelled;
        };
        let desc = libc::xdp_desc {
            addr: addr + range.start as u64,
            len: range.len() as u32,
            options,
        };
        // Cannot fail: `free(1)` above reported room and nothing pushed since.
        let pushed = self.tx.push(desc);
        debug_assert!(pushed);
        self.tx_outstanding += 1;
        TxBuild::Queued
    }

    /// Copies `frame` into a free TX frame (see [`Xsk::send_with`]). False if there is no room or
    /// the frame is empty or larger than a UMEM frame.
    pub fn send(&mut self, frame: &[u8]) -> bool {
        self.send_with(frame.len(), |buf| {
            if buf.len() < frame.len() {
                return 0;
            }
            buf[..frame.len()].copy_from_slice(frame);
            frame.len()
        })
    }

    /// Publishes the reserved TX descriptors (one Release store) and, if the kernel has anything
    /// to send, kicks it with `sendto(MSG_DONTWAIT)` when the TX ring's need-wakeup flag is set
    /// (always, if need_wakeup is off). In copy mode a kick sends a bounded batch, so kicks repeat
    /// while the kernel keeps making progress.
    ///
    /// `EAGAIN`/`EBUSY`/`ENOBUFS`/`EINTR` from a kick are not errors (the frames stay queued; a
    /// later flush or poll sends them). `ENETDOWN`, `ENXIO` and anything else are returned.
    pub fn flush(&mut self) -> io::Result<()> {
        self.tx.submit();
        for _ in 0..MAX_KICKS_PER_FLUSH {
            let before = self.tx.unconsumed();
            if before == 0 || (self.need_wakeup && !self.tx.needs_wakeup()) {
                return Ok(());
            }
            self.kicks.tx += 1;
            match sys::kick_tx(self.fd.as_fd()) {
                Ok(()) => {}
                Err(e) if is_errno(&e, &[libc::EAGAIN, libc::EWOULDBLOCK]) => {}
                Err(e) if is_errno(&e, &[libc::EBUSY, libc::ENOBUFS, libc::EINTR]) => {
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
            // Zero-copy kicks only schedule the driver; copy mode sends inside the call, so keep
            // kicking while that drains the ring.
            if self.mode == BindMode::ZeroCopy || self.tx.unconsumed() >= before {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Moves completed TX frames back to the free list; returns how many.
    pub fn reap_completions(&mut self) -> usize {
        let n = self.comp.available(self.comp.size());
        let mut done = 0;
        for _ in 0..n {
            let Some(addr) = self.comp.pop() else { break };
            let base = self.umem.frame_base(addr);
            if self.umem.in_one_frame(base, 1) && self.tx_outstanding > 0 {
                self.tx_free.push(base);
                self.tx_outstanding -= 1;
                done += 1;
            } else {
                tracing::warn!(addr, "unexpected completion address ignored");
            }
        }
        if n > 0 {
            self.comp.release();
        }
        done
    }

    /// Kick system calls made so far.
    pub fn kicks(&self) -> KickCounts {
        self.kicks
    }

    /// TX frames taken by `send`/`send_with` and not completed yet (reserved, published or in
    /// flight).
    pub fn pending_tx(&self) -> usize {
        self.tx_outstanding
    }

    /// TX frames free for `send`/`send_with`.
    pub fn free_tx_frames(&self) -> usize {
        self.tx_free.len()
    }

    /// TX frames in the UMEM (half of `frame_count`, rounded up).
    pub fn tx_frames(&self) -> usize {
        self.tx_frames
    }

    /// All frames in the UMEM (`frame_count`).
    pub fn total_frames(&self) -> usize {
        self.umem.frame_count() as usize
    }

    /// The socket's `XDP_STATISTICS`.
    pub fn statistics(&self) -> io::Result<XskStatistics> {
        let (s, _len) =
            sys::get_xdp_opt::<libc::xdp_statistics>(self.fd.as_fd(), libc::XDP_STATISTICS)?;
        Ok(XskStatistics {
            rx_dropped: s.rx_dropped,
            rx_invalid_descs: s.rx_invalid_descs,
            tx_invalid_descs: s.tx_invalid_descs,
            rx_ring_full: s.rx_ring_full,
            rx_fill_ring_empty_descs: s.rx_fill_ring_empty_descs,
            tx_ring_empty_descs: s.tx_ring_empty_descs,
        })
    }
}

impl std::fmt::Debug for Xsk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Xsk")
            .field("fd", &self.fd.as_raw_fd())
            .field("ifindex", &self.ifindex)
            .field("queue", &self.queue)
            .field("mode", &self.mode)
            .field("pending_tx", &self.tx_outstanding)
            .field("free_tx_frames", &self.tx_free.len())
            .finish()
    }
}

#[cfg(test)]
pub(super) fn validate_config(cfg: &XskConfig) -> io::Result<()> {
    validate(cfg)
}

/// See [`Xsk::poller`].
#[derive(Debug)]
pub struct Poller(OwnedFd);

impl AsFd for Poller {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl Poller {
    /// Sleep until RX has frames or `timeout_ms` passes; true if readable.
    pub fn wait_readable(&self, timeout_ms: i32) -> bool {
        sys::poll_one(self.0.as_fd(), libc::POLLIN, timeout_ms)
            .is_ok_and(|revents| revents & libc::POLLIN != 0)
    }
}
