//! Overlapped WSPSend / WSPSendTo / WSPRecv / WSPRecvFrom through the C ABI (DESIGN §8), and
//! WSPGetOverlappedResult.
//!
//! Each call with a non-NULL `lpOverlapped` registers the `WSAOVERLAPPED` (by address: one
//! pending operation per structure, a second one gives WSAEINVAL) and issues the Rust
//! overlapped call with a fresh internal [`Overlapped`] whose completion hook runs inline on the
//! completing thread (the issuing thread for an immediate completion, the engine's for a later
//! one, the closing thread for an abort). The hook, in this order:
//! 1. for a receive that was not aborted, copies the received bytes into the caller's `WSABUF`s
//!    (and a datagram's sender into `lpFrom`/`*lpFromlen`) — that memory must stay valid until
//!    completion, as on Windows; a send copied its data at issue time;
//! 2. writes `InternalHigh` (bytes), `Offset` (flags, 0) and `Internal` (0 or the error code);
//! 3. reports through the mechanism chosen at issue: the completion routine (handed to the
//!    provider's completion thread), else the `hEvent` event object (set), else the completion
//!    queue the socket handle is associated with (a packet queued), else nothing
//!    (WSPGetOverlappedResult);
//! 4. unregisters the structure (it may be reused from then on).
//!
//! Steps 2–4 run under the registry lock, so WSPGetOverlappedResult never sees a half-written
//! result and a structure reissued right after its event or queue packet is never refused.
use std::collections::BTreeMap;
use std::ptr::with_exposed_provenance_mut;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use super::events::{CQueue, Packet, associated, event};
use super::types::*;
use super::{ffi_call, is_stream, len_u32, provider, put, wsabufs};
use crate::api::overlapped::Job;
use crate::api::{Completion, Overlapped, Provider, WsaEvent};
use crate::socket::entry::lock;
use crate::socket::{Socket, WsaError, WspResult};

/// Pending operations: `WSAOVERLAPPED` address → operation id.
static OPS: Mutex<BTreeMap<usize, u64>> = Mutex::new(BTreeMap::new());
/// Notified whenever an operation leaves `OPS`.
static OPS_DONE: Condvar = Condvar::new();
static NEXT_OP: AtomicU64 = AtomicU64::new(1);

type Routine = unsafe extern "C" fn(DWORD, DWORD, LPWSAOVERLAPPED, DWORD);

enum Mech {
    Routine(Routine),
    Event(Arc<WsaEvent>),
    Queue(Arc<CQueue>, usize),
    Poll,
}

/// Where a receive's bytes (and a datagram's sender) go at completion: the caller's memory,
/// as exposed addresses (the op moves to the completing thread).
pub(crate) struct RecvTarget {
    bufs: Vec<(usize, usize)>,
    from: Option<(usize, usize)>,
}

/// What the hook tells the issuing thread about an immediate completion.
#[derive(Default)]
struct Fired {
    done: AtomicBool,
    bytes: AtomicUsize,
}

struct Op {
    id: u64,
    ov: usize,
    mech: Mech,
    recv: Option<RecvTarget>,
    fired: Arc<Fired>,
}

/// Write the result fields of a `WSAOVERLAPPED`.
///
/// # Safety
/// `ov` points to a writable `WSAOVERLAPPED`.
unsafe fn set_status(ov: LPWSAOVERLAPPED, status: i32, bytes: usize, flags: u32) {
    // SAFETY: per the contract; unaligned writes of the fields, no reference made.
    unsafe {
        (&raw mut (*ov).InternalHigh).write_unaligned(bytes);
        (&raw mut (*ov).Offset).write_unaligned(flags);
        (&raw mut (*ov).Internal).write_unaligned(status as u32 as usize);
    }
}

impl RecvTarget {
    /// Copy the received bytes (and the sender) into the caller's memory.
    ///
    /// # Safety
    /// The buffers and the `lpFrom`/`lpFromlen` given at issue are still valid (the caller's
    /// contract: until completion).
    unsafe fn deliver(&self, c: &Completion) {
        let mut left = c.bytes;
        for (&(addr, len), src) in self.bufs.iter().zip(&c.buffers) {
            let k = len.min(src.len()).min(left);
            if k > 0 {
                // SAFETY: `addr` had `len` ≥ k writable bytes at issue (contract); `src` is ours.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        src.as_ptr(),
                        with_exposed_provenance_mut::<u8>(addr),
                        k,
                    )
                };
            }
            left -= k;
        }
        if let (Some(from), Some((name, namelen))) = (c.from, self.from) {
            // SAFETY: checked at issue to take the family's address; valid per the contract.
            let _ = unsafe {
                super::write_sockaddr(
                    from,
                    with_exposed_provenance_mut(name),
                    with_exposed_provenance_mut(namelen),
                )
            };
        }
    }
}

/// The completion hook (see the module docs).
fn complete(op: Op, c: Completion) -> Option<Job> {
    let ov: LPWSAOVERLAPPED = with_exposed_provenance_mut(op.ov);
    if lock(&OPS).get(&op.ov) != Some(&op.id) {
        // Forgotten by provider_stop: the caller no longer expects anything.
        return None;
    }
    let status = c.error.map_or(0, WsaError::code);
    if let Some(t) = &op.recv
        && c.error != Some(WsaError::WSA_OPERATION_ABORTED)
    {
        // SAFETY: the receive buffers stay valid until completion (WSPRecv's contract).
        unsafe { t.deliver(&c) };
    }
    op.fired.bytes.store(c.bytes, Ordering::SeqCst);
    op.fired.done.store(true, Ordering::SeqCst);
    {
        let mut ops = lock(&OPS);
        // SAFETY: the WSAOVERLAPPED stays valid until completion (contract of every call).
        unsafe { set_status(ov, status, c.bytes, c.flags) };
        match &op.mech {
            Mech::Event(e) => e.set(),
            Mech::Queue(q, key) => q.post(Packet {
                bytes: c.bytes,
                key: *key,
                ov: op.ov,
                error: status,
            }),
            Mech::Routine(_) | Mech::Poll => {}
        }
        if ops.get(&op.ov) == Some(&op.id) {
            ops.remove(&op.ov);
        }
        OPS_DONE.notify_all();
    }
    match op.mech {
        Mech::Routine(f) => {
            let (bytes, flags, addr) = (len_u32(c.bytes), c.flags, op.ov);
            Some(Box::new(move || {
                let ov: LPWSAOVERLAPPED = with_exposed_provenance_mut(addr);
                // SAFETY: the application's completion routine, called as its type says.
                unsafe { f(status as DWORD, bytes, ov, flags) }
            }))
        }
        _ => None,
    }
}

/// Issue an overlapped operation for `ov` (non-NULL): choose the mechanism, register, and run
/// `start` (the Rust overlapped call) with the internal descriptor.
/// `Ok(())`: completed at once (`*lp_bytes`, `*lp_flags` set if non-NULL; also reported through
/// the mechanism); `Err(WSA_IO_PENDING)`: completes later; another error: failed at once and
/// reported nowhere — except WSAEMSGSIZE of a datagram receive, which is a completion (buffers
/// filled, counts set, reported).
///
/// # Safety
/// `ov` points to a `WSAOVERLAPPED` that stays valid until completion; `lp_bytes`, `lp_flags`
/// are NULL or writable; `recv`'s memory stays valid until completion.
unsafe fn issue(
    s: SOCKET,
    ov: LPWSAOVERLAPPED,
    routine: LPWSAOVERLAPPED_COMPLETION_ROUTINE,
    recv: Option<RecvTarget>,
    lp_bytes: LPDWORD,
    lp_flags: LPDWORD,
    start: impl FnOnce(&Overlapped) -> WspResult<usize>,
) -> Result<(), i32> {
    let mech = match routine {
        Some(f) => Mech::Routine(f),
        None => {
            // SAFETY: `ov` is readable (contract).
            let h = unsafe { (&raw const (*ov).hEvent).read_unaligned() };
            if !h.is_null() {
                // Windows: a handle with its low bit set is the event without it.
                Mech::Event(event(h.map_addr(|a| a & !1))?)
            } else if let Some((q, key)) = associated(s) {
                Mech::Queue(q, key)
            } else {
                Mech::Poll
            }
        }
    };
    let key = ov.expose_provenance();
    let id = NEXT_OP.fetch_add(1, Ordering::Relaxed);
    {
        let mut ops = lock(&OPS);
        if ops.contains_key(&key) {
            return Err(WSAEINVAL);
        }
        ops.insert(key, id);
        // SAFETY: writable (contract).
        unsafe { set_status(ov, WSA_IO_PENDING, 0, 0) };
    }
    if let Mech::Event(e) = &mech {
        e.reset();
    }
    let fired = Arc::new(Fired::default());
    let op = Op {
        id,
        ov: key,
        mech,
        recv,
        fired: Arc::clone(&fired),
    };
    let r = start(&Overlapped::with_hook(move |c| complete(op, c)));
    let (r, bytes) = match r {
        Ok(n) => (Ok(()), n),
        Err(WsaError::WSA_IO_PENDING) => return Err(WSA_IO_PENDING),
        Err(e) if fired.done.load(Ordering::SeqCst) => {
            (Err(e.code()), fired.bytes.load(Ordering::SeqCst))
        }
        Err(e) => {
            // Failed at once: reported nowhere (as Windows); the structure is free again.
            let mut ops = lock(&OPS);
            if ops.get(&key) == Some(&id) {
                ops.remove(&key);
            }
            // SAFETY: writable (contract).
            unsafe { set_status(ov, e.code(), 0, 0) };
            OPS_DONE.notify_all();
            return Err(e.code());
        }
    };
    // Completed at once: the hook has run.
    if !lp_bytes.is_null() {
        // SAFETY: non-NULL, writable (contract).
        unsafe { put(lp_bytes, len_u32(bytes))? };
    }
    if !lp_flags.is_null() {
        // SAFETY: non-NULL, writable (contract).
        unsafe { put(lp_flags, 0)? };
    }
    r
}

/// `provider_stop`: pending operations will never complete; mark them WSA_OPERATION_ABORTED
/// (nothing else is reported) and free their structures for reuse.
pub(crate) fn forget_all() {
    let mut ops = lock(&OPS);
    for (&addr, _) in ops.iter() {
        // SAFETY: registered structures stay valid while pending (contract).
        unsafe {
            set_status(
                with_exposed_provenance_mut(addr),
                WSA_OPERATION_ABORTED,
                0,
                0,
            )
        };
    }
    ops.clear();
    OPS_DONE.notify_all();
}

/// Overlapped send (WSPSend, or WSPSendTo with `to`): the data is copied now.
///
/// # Safety
/// As WSPSend / WSPSendTo with a non-NULL `lpOverlapped`.
pub(crate) unsafe fn send(
    p: &Provider,
    s: SOCKET,
    lpBuffers: LPWSABUF,
    dwBufferCount: DWORD,
    lpNumberOfBytesSent: LPDWORD,
    to: Option<(*const sockaddr, i32)>,
    lpOverlapped: LPWSAOVERLAPPED,
    lpCompletionRoutine: LPWSAOVERLAPPED_COMPLETION_ROUTINE,
) -> Result<(), i32> {
    let sock = Socket::from_raw(s);
    // SAFETY: forwarded contract on the buffers.
    let bufs: Vec<Vec<u8>> = unsafe { wsabufs(lpBuffers, dwBufferCount)? }
        .iter()
        // SAFETY: forwarded contract.
        .map(|b| unsafe { super::buf_ref(b) }.to_vec())
        .collect();
    let to = match to {
        Some((name, len)) if !is_stream(p, sock)? => {
            // SAFETY: forwarded contract.
            Some(unsafe { super::read_sockaddr(name, len)? })
        }
        _ => None,
    };
    // SAFETY: forwarded contract.
    unsafe {
        issue(
            s,
            lpOverlapped,
            lpCompletionRoutine,
            None,
            lpNumberOfBytesSent,
            std::ptr::null_mut(),
            |ov| match to {
                Some(to) => p.wsp_send_to_overlapped(sock, bufs, to, ov),
                None => p.wsp_send_overlapped(sock, bufs, ov),
            },
        )
    }
}

/// Overlapped receive (WSPRecv, or WSPRecvFrom with `from`).
///
/// # Safety
/// As WSPRecv / WSPRecvFrom with a non-NULL `lpOverlapped`; the buffers, `lpFrom` and
/// `lpFromlen` stay valid until completion.
pub(crate) unsafe fn recv(
    p: &Provider,
    s: SOCKET,
    lpBuffers: LPWSABUF,
    dwBufferCount: DWORD,
    lpNumberOfBytesRecvd: LPDWORD,
    lpFlags: LPDWORD,
    from: Option<(*mut sockaddr, LPINT)>,
    lpOverlapped: LPWSAOVERLAPPED,
    lpCompletionRoutine: LPWSAOVERLAPPED_COMPLETION_ROUTINE,
) -> Result<(), i32> {
    if lpFlags.is_null() {
        return Err(WSAEFAULT);
    }
    // SAFETY: non-NULL, readable (contract).
    if unsafe { lpFlags.read_unaligned() } != 0 {
        return Err(WSAEOPNOTSUPP);
    }
    let sock = Socket::from_raw(s);
    // SAFETY: forwarded contract on the buffers.
    let bufs = unsafe { wsabufs(lpBuffers, dwBufferCount)? };
    let stream = is_stream(p, sock)?;
    let from = match from {
        Some((name, namelen)) if !stream && !name.is_null() => {
            let local = p.wsp_get_sock_name(sock).map_err(WsaError::code)?;
            // SAFETY: forwarded contract.
            unsafe {
                super::check_sockaddr_out(name, namelen, super::sockaddr_len(&local))?;
            }
            Some((name.expose_provenance(), namelen.expose_provenance()))
        }
        _ => None,
    };
    let target = RecvTarget {
        bufs: bufs
            .iter()
            .map(|b| (b.buf.expose_provenance(), b.len as usize))
            .collect(),
        from,
    };
    let rbufs: Vec<Vec<u8>> = bufs.iter().map(|b| vec![0u8; b.len as usize]).collect();
    // SAFETY: forwarded contract.
    unsafe {
        issue(
            s,
            lpOverlapped,
            lpCompletionRoutine,
            Some(target),
            lpNumberOfBytesRecvd,
            lpFlags,
            |ov| {
                if stream {
                    p.wsp_recv_overlapped(sock, rbufs, ov)
                } else {
                    p.wsp_recv_from_overlapped(sock, rbufs, ov)
                }
            },
        )
    }
}

/// WSPGetOverlappedResult: the result of the overlapped operation issued with `lpOverlapped`.
/// While it is pending: with `fWait` the call sleeps until it completes, else FALSE with
/// WSA_IO_INCOMPLETE. Once complete: `*lpcbTransfer` = bytes, `*lpdwFlags` = 0, and TRUE, or
/// FALSE with the operation's error (WSA_OPERATION_ABORTED after close, …; `*lpcbTransfer`
/// still set). The result is read from the structure (`Internal`, `InternalHigh`), so it stays
/// readable after the socket is closed; `s` is not checked. A structure never issued through
/// the provider → WSAEINVAL; NULL pointers → WSAEFAULT.
///
/// # Safety
/// `lpOverlapped` is NULL or a `WSAOVERLAPPED` issued through this provider (or at least
/// readable); `lpcbTransfer`, `lpdwFlags` NULL or writable; `lpErrno` as for every call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn WSPGetOverlappedResult(
    s: SOCKET,
    lpOverlapped: LPWSAOVERLAPPED,
    lpcbTransfer: LPDWORD,
    fWait: BOOL,
    lpdwFlags: LPDWORD,
    lpErrno: LPINT,
) -> BOOL {
    let _ = s;
    // SAFETY: pointers per the contract above.
    unsafe {
        ffi_call(lpErrno, 0, || {
            if lpOverlapped.is_null() || lpcbTransfer.is_null() || lpdwFlags.is_null() {
                return Err(WSAEFAULT);
            }
            provider()?;
            let key = lpOverlapped.addr();
            let (status, bytes, flags) = {
                let mut ops = lock(&OPS);
                while ops.contains_key(&key) {
                    if fWait == 0 {
                        return Err(WSA_IO_INCOMPLETE);
                    }
                    ops = OPS_DONE.wait(ops).unwrap_or_else(PoisonError::into_inner);
                }
                // SAFETY: readable (contract); read under the lock the hook writes under.
                (
                    (&raw const (*lpOverlapped).Internal).read_unaligned(),
                    (&raw const (*lpOverlapped).InternalHigh).read_unaligned(),
                    (&raw const (*lpOverlapped).Offset).read_unaligned(),
                )
            };
            if status == WSA_IO_PENDING as usize {
                return Err(WSAEINVAL);
            }
            put(lpcbTransfer, len_u32(bytes))?;
            put(lpdwFlags, flags)?;
            match status {
                0 => Ok(1),
                e => Err(e as i32),
            }
        })
    }
}
