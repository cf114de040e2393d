//! The C ABI (DESIGN §6, §8; issue 5 item 5): the WSP calls with their Winsock SPI signatures
//! (Ws2spi.h), exported from the `provider` cdylib (`libprovider.so`) and declared in the
//! cbindgen-generated `include/provider.h`.
//!
//! # Conventions (exactly as the WSP signatures)
//! * `int` calls return `0`, or `SOCKET_ERROR` (-1) with the Winsock code in `*lpErrno`;
//!   `SOCKET` calls return the handle, or `INVALID_SOCKET` (`~0`) with the code in `*lpErrno`.
//! * `lpErrno == NULL`: the call does nothing and fails (there is nowhere to report why).
//! * Every other pointer argument is checked: NULL where something must be read or written, a
//!   `namelen`/`*lpNamelen` shorter than the family's `sockaddr_in`/`sockaddr_in6`, an option
//!   buffer shorter than the option, or a `WSABUF` with `buf == NULL` and `len > 0` → WSAEFAULT.
//! * Before `provider_start` and after `provider_stop` every call fails with WSANOTINITIALISED
//!   (10093).
//! * No Rust panic crosses the boundary: every export runs under `catch_unwind`; a panic becomes
//!   WSAENETDOWN ("the network subsystem has failed").
//! * Addresses are Windows `sockaddr_in` / `sockaddr_in6` with AF_INET = 2, AF_INET6 = 23 (Linux's
//!   10 is accepted on input), ports and IPv4 addresses in network byte order.
//!
//! # Asynchronous I/O ([`overlapped`], [`events`])
//! * Overlapped WSPSend/WSPSendTo/WSPRecv/WSPRecvFrom (`lpOverlapped != NULL`): 0 when done at
//!   once (still reported, as Windows), else SOCKET_ERROR with WSA_IO_PENDING; reported through
//!   `lpCompletionRoutine` (run on the provider's `provider-completion` thread — not an APC of
//!   the issuing thread: the deviation from Windows), else the `hEvent` event object, else the
//!   completion queue the socket handle is associated with, else only WSPGetOverlappedResult.
//!   `WSAOVERLAPPED.Internal` holds WSA_IO_PENDING / 0 / the error code, `InternalHigh` the
//!   bytes. Sends copy their data at issue; receive buffers (and `lpFrom`) must stay valid until
//!   completion, and are filled before anything is reported. Close aborts pending operations
//!   with WSA_OPERATION_ABORTED through each mechanism, writing nothing into receive buffers.
//! * Event objects (`provider_create_event`, …, `provider_wait_for_multiple_events`) and
//!   completion queues (`provider_create_completion_queue`, `provider_associate_completion_queue`,
//!   `provider_get_queued_completion`) are opaque handles checked against a registry.
//! * WSPEventSelect / WSPEnumNetworkEvents (FD_READ, FD_WRITE, FD_ACCEPT, FD_CONNECT, FD_CLOSE),
//!   WSPCancelBlockingCall.
//!
//! # Not yet (documented per call)
//! * Overlapped WSPIoctl (`lpOverlapped != NULL` → WSAEOPNOTSUPP). `lpThreadId` is accepted and
//!   ignored (routines run on the provider's completion thread). Pending operations of sockets
//!   still open at `provider_stop` are marked WSA_OPERATION_ABORTED in their `WSAOVERLAPPED`
//!   but reported through no mechanism: close sockets first.
//! * `WSPDuplicateSocket` proper (a `WSAPROTOCOL_INFOW` for another process) is not offered:
//!   `WSPDuplicateSocketLite` gives a second handle in this process.
//! * Conditional accept (`lpfnCondition`), socket groups, QOS and connect data.
//!
//! All `unsafe` of the ABI lives in this module and its submodules.
#![allow(non_snake_case, non_camel_case_types, clippy::too_many_arguments)]

pub mod events;
pub mod overlapped;
pub mod types;

use std::ffi::{CStr, c_char, c_void};
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

pub use events::{
    WSPCancelBlockingCall, WSPEnumNetworkEvents, WSPEventSelect,
    provider_associate_completion_queue, provider_close_completion_queue, provider_close_event,
    provider_create_completion_queue, provider_create_event, provider_get_queued_completion,
    provider_reset_event, provider_set_event, provider_wait_for_multiple_events,
};
pub use overlapped::WSPGetOverlappedResult;
pub use types::*;

use crate::api::Provider;
use crate::engine::{Engine, EngineConfig, EngineError};
use crate::socket::{Socket, WsaError};

/// The running engine (owned here so `provider_stop` can stop it).
static ENGINE: Mutex<Option<Engine>> = Mutex::new(None);
/// The provider every call uses; `None` before start and after stop.
static PROVIDER: RwLock<Option<Arc<Provider>>> = RwLock::new(None);

/// The current provider, or WSANOTINITIALISED.
fn provider() -> Result<Arc<Provider>, i32> {
    PROVIDER
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
        .ok_or(WSANOTINITIALISED)
}

/// Install `p` as the global provider without an engine (unit tests over a loopback datapath).
#[cfg(test)]
pub(crate) fn install(p: Option<Arc<Provider>>) {
    *PROVIDER.write().unwrap_or_else(PoisonError::into_inner) = p;
    overlapped::forget_all();
    events::forget_all_sockets();
}

fn code(e: WsaError) -> i32 {
    e.code()
}

/// Run `f` for an export: no panic escapes, an error code goes to `*lp_errno` and `fail` is
/// returned. `lp_errno == NULL` → `fail` without running `f`.
///
/// # Safety
/// `lp_errno` is NULL or points to a writable `int`.
unsafe fn ffi_call<T>(lp_errno: *mut i32, fail: T, f: impl FnOnce() -> Result<T, i32>) -> T {
    if lp_errno.is_null() {
        return fail;
    }
    let r = catch_unwind(AssertUnwindSafe(f)).unwrap_or(Err(WSAENETDOWN));
    match r {
        Ok(v) => v,
        Err(c) => {
            // SAFETY: non-NULL (checked above); the caller guarantees a writable int.
            unsafe { lp_errno.write_unaligned(c) };
            fail
        }
    }
}

/// `int` call: 0 or SOCKET_ERROR.
///
/// # Safety
/// As [`ffi_call`].
unsafe fn int_call(lp_errno: *mut i32, f: impl FnOnce() -> Result<(), i32>) -> i32 {
    // SAFETY: forwarded contract.
    unsafe { ffi_call(lp_errno, SOCKET_ERROR, || f().map(|()| 0)) }
}

/// WSPIoctl has no overlapped form here: a non-NULL `lpOverlapped` gives WSAEOPNOTSUPP.
fn reject_overlapped(ov: LPWSAOVERLAPPED) -> Result<(), i32> {
    if ov.is_null() {
        Ok(())
    } else {
        Err(WSAEOPNOTSUPP)
    }
}

/// Write through an out-pointer that must not be NULL (WSAEFAULT).
///
/// # Safety
/// `p` is NULL or points to a writable `T`.
unsafe fn put<T>(p: *mut T, v: T) -> Result<(), i32> {
    if p.is_null() {
        return Err(WSAEFAULT);
    }
    // SAFETY: non-NULL; caller guarantees writability.
    unsafe { p.write_unaligned(v) };
    Ok(())
}

/// Check a `WSABUF` array: NULL array with a nonzero count, or a NULL `buf` with `len > 0`, is
/// WSAEFAULT.
///
/// # Safety
/// `lp` is NULL or points to `count` readable `WSABUF`s.
unsafe fn wsabufs<'a>(lp: *const WSABUF, count: u32) -> Result<&'a [WSABUF], i32> {
    if count == 0 {
        return Ok(&[]);
    }
    if lp.is_null() {
        return Err(WSAEFAULT);
    }
    // SAFETY: non-NULL, `count` elements per the caller's contract.
    let bufs = unsafe { std::slice::from_raw_parts(lp, count as usize) };
    if bufs.iter().any(|b| b.buf.is_null() && b.len > 0) {
        return Err(WSAEFAULT);
    }
    Ok(bufs)
}

/// The bytes of one `WSABUF` (empty for `len == 0`).
///
/// # Safety
/// `b.buf` points to `b.len` readable bytes (or `len == 0`), valid for `'a`.
unsafe fn buf_ref<'a>(b: &WSABUF) -> &'a [u8] {
    if b.len == 0 {
        return &[];
    }
    // SAFETY: non-NULL (checked by `wsabufs`) and `len` readable bytes (caller's contract).
    unsafe { std::slice::from_raw_parts(b.buf.cast::<u8>(), b.len as usize) }
}

/// The bytes of one `WSABUF`, writable.
///
/// # Safety
/// `b.buf` points to `b.len` writable bytes (or `len == 0`), valid for `'a`, not aliased.
unsafe fn buf_mut<'a>(b: &WSABUF) -> &'a mut [u8] {
    if b.len == 0 {
        return &mut [];
    }
    // SAFETY: non-NULL (checked by `wsabufs`), `len` writable bytes (caller's contract).
    unsafe { std::slice::from_raw_parts_mut(b.buf.cast::<u8>(), b.len as usize) }
}

/// Gather the buffers and hand them to `send` as one slice (no copy for a single buffer).
///
/// # Safety
/// As [`wsabufs`] and [`buf_ref`].
unsafe fn gather<R>(
    lp: *const WSABUF,
    count: u32,
    send: impl FnOnce(&[u8]) -> Result<R, i32>,
) -> Result<R, i32> {
    // SAFETY: forwarded contract.
    let bufs = unsafe { wsabufs(lp, count)? };
    match bufs {
        [] => send(&[]),
        // SAFETY: forwarded contract.
        [one] => send(unsafe { buf_ref(one) }),
        many => {
            let mut all = Vec::with_capacity(many.iter().map(|b| b.len as usize).sum());
            for b in many {
                // SAFETY: forwarded contract.
                all.extend_from_slice(unsafe { buf_ref(b) });
            }
            send(&all)
        }
    }
}

/// Receive into the buffers through `recv` (one slice; scattered afterwards if several).
/// `recv` returns (bytes written, extra result).
///
/// # Safety
/// As [`wsabufs`] and [`buf_mut`].
unsafe fn scatter<R>(
    lp: *const WSABUF,
    count: u32,
    recv: impl FnOnce(&mut [u8]) -> Result<(usize, R), i32>,
) -> Result<(usize, R), i32> {
    // SAFETY: forwarded contract.
    let bufs = unsafe { wsabufs(lp, count)? };
    match bufs {
        [] => recv(&mut []),
        // SAFETY: forwarded contract.
        [one] => recv(unsafe { buf_mut(one) }),
        many => {
            let mut tmp = vec![0u8; many.iter().map(|b| b.len as usize).sum()];
            let (n, r) = recv(&mut tmp)?;
            let mut off = 0;
            for b in many {
                if off >= n {
                    break;
                }
                // SAFETY: forwarded contract.
                let dst = unsafe { buf_mut(b) };
                let k = dst.len().min(n - off);
                dst[..k].copy_from_slice(&tmp[off..off + k]);
                off += k;
            }
            Ok((n, r))
        }
    }
}

fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn is_stream(p: &Provider, s: Socket) -> Result<bool, i32> {
    let mut v = [0u8; 4];
    p.wsp_get_sock_opt(s, SOL_SOCKET, SO_TYPE, &mut v)
        .map_err(code)?;
    Ok(i32::from_ne_bytes(v) == SOCK_STREAM)
}

// ---------------------------------------------------------------------------------------------
// Start / stop.

/// Start the provider on interface `iface` (run it in the network namespace that owns the
/// interface; root or CAP_NET_ADMIN + CAP_BPF needed). One provider per process.
///
/// Returns 0, or SOCKET_ERROR with `*lpErrno`: WSAEFAULT (NULL `iface`), WSAEINVAL (`iface` not
/// UTF-8, no such interface, no address on it), WSAEACCES (not root / missing capabilities),
/// WSAEADDRINUSE (another XDP program or AF_XDP socket holds the interface), WSAEALREADY
/// (already running), WSAENETDOWN (the interface is down or the datapath could not start). The
/// reason is printed on stderr as one line.
///
/// # Safety
/// `iface` is NULL or a NUL-terminated string; `lpErrno` is NULL or points to a writable `int`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn provider_start(iface: *const c_char, lpErrno: LPINT) -> i32 {
    // SAFETY: `lpErrno` per the contract above.
    unsafe {
        int_call(lpErrno, || {
            if iface.is_null() {
                return Err(WSAEFAULT);
            }
            // SAFETY: non-NULL, NUL-terminated per the contract.
            let iface = CStr::from_ptr(iface).to_str().map_err(|_| WSAEINVAL)?;
            let mut engine = ENGINE.lock().unwrap_or_else(PoisonError::into_inner);
            if engine.is_some() {
                return Err(WSAEALREADY);
            }
            let e = Engine::start(EngineConfig::new(iface)).map_err(|err| {
                eprintln!("provider_start({iface}): {err}");
                start_error_code(&err)
            })?;
            *PROVIDER.write().unwrap_or_else(PoisonError::into_inner) =
                Some(Arc::clone(e.provider()));
            *engine = Some(e);
            Ok(())
        })
    }
}

/// The WSA code `provider_start` reports for a start-up failure (the line on stderr says more).
fn start_error_code(err: &EngineError) -> i32 {
    match err {
        EngineError::NoInterface(_) | EngineError::NoAddress(_) | EngineError::BadQueues(_) => {
            WSAEINVAL
        }
        EngineError::NotPermitted(_) => WsaError::WSAEACCES.code(),
        EngineError::XdpBusy { .. } => WsaError::WSAEADDRINUSE.code(),
        EngineError::Xsk { source, .. } if source.raw_os_error() == Some(libc::EBUSY) => {
            WsaError::WSAEADDRINUSE.code()
        }
        EngineError::Xsk { source, .. } if source.raw_os_error() == Some(libc::EPERM) => {
            WsaError::WSAEACCES.code()
        }
        _ => WSAENETDOWN,
    }
}

/// Stop the provider: calls fail with WSANOTINITIALISED from now on, the datapath stops and
/// the interface's traffic goes back to the kernel. Close the sockets first: a call blocked in
/// another thread is not woken. Returns 0, or SOCKET_ERROR if the provider was not running.
#[unsafe(no_mangle)]
pub extern "C" fn provider_stop() -> i32 {
    catch_unwind(|| {
        let mut engine = ENGINE.lock().unwrap_or_else(PoisonError::into_inner);
        *PROVIDER.write().unwrap_or_else(PoisonError::into_inner) = None;
        overlapped::forget_all();
        events::forget_all_sockets();
        match engine.take() {
            Some(e) => {
                e.stop();
                0
            }
            None => SOCKET_ERROR,
        }
    })
    .unwrap_or(SOCKET_ERROR)
}

// ---------------------------------------------------------------------------------------------
// The WSP calls.

/// WSPSocket. `lpProtocolInfo` must be NULL and `g` 0 (WSAEINVAL otherwise); `dwFlags` is
/// accepted and ignored (WSA_FLAG_OVERLAPPED included: every socket can do both).
/// Codes: WSAEAFNOSUPPORT, WSAESOCKTNOSUPPORT, WSAEPROTONOSUPPORT, WSAEMFILE.
///
/// # Safety
/// `lpErrno` is NULL or points to a writable `int`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn WSPSocket(
    af: i32,
    r#type: i32,
    protocol: i32,
    lpProtocolInfo: LPWSAPROTOCOL_INFOW,
    g: GROUP,
    dwFlags: DWORD,
    lpErrno: LPINT,
) -> SOCKET {
    let _ = dwFlags;
    // SAFETY: `lpErrno` per the contract above.
    unsafe {
        ffi_call(lpErrno, INVALID_SOCKET, || {
            if !lpProtocolInfo.is_null() || g != 0 {
                return Err(WSAEINVAL);
            }
            let p = provider()?;
            Ok(p.wsp_socket(af, r#type, protocol).map_err(code)?.raw())
        })
    }
}

/// WSPBind. `name` is a `sockaddr_in`/`sockaddr_in6`; `namelen` shorter than it → WSAEFAULT.
///
/// # Safety
/// `name` is NULL or points to `namelen` readable bytes; `lpErrno` as for every call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn WSPBind(
    s: SOCKET,
    name: *const sockaddr,
    namelen: i32,
    lpErrno: LPINT,
) -> i32 {
    // SAFETY: pointers per the contract above.
    unsafe {
        int_call(lpErrno, || {
            let p = provider()?;
            let addr = read_sockaddr(name, namelen)?;
            p.wsp_bind(Socket::from_raw(s), addr).map_err(code)
        })
    }
}

/// WSPListen.
///
/// # Safety
/// `lpErrno` is NULL or points to a writable `int`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn WSPListen(s: SOCKET, backlog: i32, lpErrno: LPINT) -> i32 {
    // SAFETY: `lpErrno` per the contract above.
    unsafe {
        int_call(lpErrno, || {
            provider()?
                .wsp_listen(Socket::from_raw(s), backlog)
                .map_err(code)
        })
    }
}

/// WSPAccept. `addr` may be NULL (then `addrlen` is ignored); otherwise `addrlen` must be
/// non-NULL and `*addrlen` at least the listener family's `sockaddr_in`/`sockaddr_in6` size
/// (WSAEFAULT, checked before a connection is taken), and receives the size written.
/// `lpfnCondition` must be NULL (conditional accept: WSAEOPNOTSUPP); `dwCallbackData` is ignored.
///
/// # Safety
/// `addr` is NULL or points to `*addrlen` writable bytes; `addrlen` is NULL or points to a
/// readable and writable `int`; `lpErrno` as for every call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn WSPAccept(
    s: SOCKET,
    addr: *mut sockaddr,
    addrlen: LPINT,
    lpfnCondition: LPCONDITIONPROC,
    dwCallbackData: DWORD_PTR,
    lpErrno: LPINT,
) -> SOCKET {
    let _ = dwCallbackData;
    // SAFETY: pointers per the contract above.
    unsafe {
        ffi_call(lpErrno, INVALID_SOCKET, || {
            if !lpfnCondition.is_null() {
                return Err(WSAEOPNOTSUPP);
            }
            let p = provider()?;
            let s = Socket::from_raw(s);
            if !addr.is_null() {
                let local = p.wsp_get_sock_name(s).map_err(code)?;
                check_sockaddr_out(addr, addrlen, sockaddr_len(&local))?;
            }
            let (new, remote) = p.wsp_accept(s).map_err(code)?;
            if !addr.is_null() {
                write_sockaddr(remote, addr, addrlen)?;
            }
            Ok(new.raw())
        })
    }
}

/// WSPConnect. `name`/`namelen` as for WSPBind. `lpCallerData`, `lpCalleeData`, `lpSQOS`,
/// `lpGQOS` are accepted and ignored (TCP carries no connect data; no QOS).
///
/// # Safety
/// `name` is NULL or points to `namelen` readable bytes; `lpErrno` as for every call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn WSPConnect(
    s: SOCKET,
    name: *const sockaddr,
    namelen: i32,
    lpCallerData: LPWSABUF,
    lpCalleeData: LPWSABUF,
    lpSQOS: LPQOS,
    lpGQOS: LPQOS,
    lpErrno: LPINT,
) -> i32 {
    let _ = (lpCallerData, lpCalleeData, lpSQOS, lpGQOS);
    // SAFETY: pointers per the contract above.
    unsafe {
        int_call(lpErrno, || {
            let p = provider()?;
            let to = read_sockaddr(name, namelen)?;
            p.wsp_connect(Socket::from_raw(s), to).map_err(code)
        })
    }
}

/// WSPSend on a connected stream socket: the buffers are sent in order as one write.
/// `*lpNumberOfBytesSent` gets the count. `dwFlags`: 0 or MSG_DONTROUTE (ignored); anything else
/// → WSAEOPNOTSUPP.
///
/// Overlapped (`lpOverlapped != NULL`): the data is copied at once; returns 0 if every byte is
/// in the send buffer at once (`*lpNumberOfBytesSent` set if not NULL; the completion is still
/// reported), else SOCKET_ERROR with WSA_IO_PENDING and the completion is reported through
/// `lpCompletionRoutine` (on the provider's completion thread), else `lpOverlapped->hEvent`,
/// else the socket's completion queue, else only WSPGetOverlappedResult. WSAEINVAL: the
/// `WSAOVERLAPPED` has an operation pending; WSA_INVALID_HANDLE: a bad `hEvent`. `lpThreadId`
/// is ignored.
///
/// # Safety
/// `lpBuffers` is NULL or points to `dwBufferCount` `WSABUF`s whose `buf` point to `len`
/// readable bytes; `lpNumberOfBytesSent` NULL or writable; `lpOverlapped` NULL or a
/// `WSAOVERLAPPED` valid until the operation completes; `lpErrno` as for every call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn WSPSend(
    s: SOCKET,
    lpBuffers: LPWSABUF,
    dwBufferCount: DWORD,
    lpNumberOfBytesSent: LPDWORD,
    dwFlags: DWORD,
    lpOverlapped: LPWSAOVERLAPPED,
    lpCompletionRoutine: LPWSAOVERLAPPED_COMPLETION_ROUTINE,
    lpThreadId: LPWSATHREADID,
    lpErrno: LPINT,
) -> i32 {
    let _ = lpThreadId;
    // SAFETY: pointers per the contract above.
    unsafe {
        int_call(lpErrno, || {
            if dwFlags & !MSG_DONTROUTE != 0 {
                return Err(WSAEOPNOTSUPP);
            }
            if !lpOverlapped.is_null() {
                let p = provider()?;
                return overlapped::send(
                    &p,
                    s,
                    lpBuffers,
                    dwBufferCount,
                    lpNumberOfBytesSent,
                    None,
                    lpOverlapped,
                    lpCompletionRoutine,
                );
            }
            if lpNumberOfBytesSent.is_null() {
                return Err(WSAEFAULT);
            }
            let p = provider()?;
            let n = gather(lpBuffers, dwBufferCount, |b| {
                p.wsp_send(Socket::from_raw(s), b).map_err(code)
            })?;
            put(lpNumberOfBytesSent, len_u32(n))
        })
    }
}

/// WSPSendTo: a datagram gathered from the buffers, to `lpTo` (a `sockaddr_in`/`sockaddr_in6`,
/// `iTolen` too short → WSAEFAULT). On a stream socket `lpTo` is ignored (WSPSend).
/// Flags and overlapped parameters as for WSPSend (a datagram send completes at once).
///
/// # Safety
/// As WSPSend; `lpTo` is NULL or points to `iTolen` readable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn WSPSendTo(
    s: SOCKET,
    lpBuffers: LPWSABUF,
    dwBufferCount: DWORD,
    lpNumberOfBytesSent: LPDWORD,
    dwFlags: DWORD,
    lpTo: *const sockaddr,
    iTolen: i32,
    lpOverlapped: LPWSAOVERLAPPED,
    lpCompletionRoutine: LPWSAOVERLAPPED_COMPLETION_ROUTINE,
    lpThreadId: LPWSATHREADID,
    lpErrno: LPINT,
) -> i32 {
    let _ = lpThreadId;
    // SAFETY: pointers per the contract above.
    unsafe {
        int_call(lpErrno, || {
            if dwFlags & !MSG_DONTROUTE != 0 {
                return Err(WSAEOPNOTSUPP);
            }
            if !lpOverlapped.is_null() {
                let p = provider()?;
                return overlapped::send(
                    &p,
                    s,
                    lpBuffers,
                    dwBufferCount,
                    lpNumberOfBytesSent,
                    Some((lpTo, iTolen)),
                    lpOverlapped,
                    lpCompletionRoutine,
                );
            }
            if lpNumberOfBytesSent.is_null() {
                return Err(WSAEFAULT);
            }
            let p = provider()?;
            let s = Socket::from_raw(s);
            let n = if is_stream(&p, s)? {
                gather(lpBuffers, dwBufferCount, |b| p.wsp_send(s, b).map_err(code))?
            } else {
                let to = read_sockaddr(lpTo, iTolen)?;
                gather(lpBuffers, dwBufferCount, |b| {
                    p.wsp_send_to(s, b, to).map_err(code)
                })?
            };
            put(lpNumberOfBytesSent, len_u32(n))
        })
    }
}

/// The receive both WSPRecv and WSPRecvFrom do. Returns bytes and, for a datagram, the sender.
///
/// # Safety
/// As WSPRecv.
unsafe fn recv_common(
    p: &Provider,
    s: Socket,
    lpBuffers: LPWSABUF,
    dwBufferCount: DWORD,
    lpNumberOfBytesRecvd: LPDWORD,
    lpFlags: LPDWORD,
    from_check: impl FnOnce(bool) -> Result<(), i32>,
) -> Result<Option<SocketAddr>, i32> {
    if lpNumberOfBytesRecvd.is_null() || lpFlags.is_null() {
        return Err(WSAEFAULT);
    }
    // SAFETY: non-NULL; the caller guarantees a readable DWORD.
    if unsafe { lpFlags.read_unaligned() } != 0 {
        // MSG_PEEK, MSG_OOB, MSG_WAITALL, MSG_PARTIAL: not supported.
        return Err(WSAEOPNOTSUPP);
    }
    let stream = is_stream(p, s)?;
    from_check(stream)?;
    // SAFETY: forwarded contract on the buffers.
    let (n, from) = unsafe {
        scatter(lpBuffers, dwBufferCount, |b| {
            if stream {
                Ok((p.wsp_recv(s, b).map_err(code)?, None))
            } else {
                let m = p.wsp_recv_msg(s, b).map_err(code)?;
                Ok((m.len, Some((m.from, m.truncated()))))
            }
        })?
    };
    // SAFETY: both non-NULL (checked above), caller guarantees writability.
    unsafe {
        put(lpNumberOfBytesRecvd, len_u32(n))?;
        put(lpFlags, 0)?;
    }
    match from {
        // The buffers are filled and the rest of the datagram is gone (Winsock): the byte
        // count is set, the call fails with WSAEMSGSIZE.
        Some((_, true)) => Err(WSAEMSGSIZE),
        Some((from, false)) => Ok(Some(from)),
        None => Ok(None),
    }
}

/// WSPRecv. Stream: `*lpNumberOfBytesRecvd = 0` with success is the peer's graceful close.
/// Datagram: one datagram scattered over the buffers; larger than them → buffers filled, count
/// set, SOCKET_ERROR with WSAEMSGSIZE. `*lpFlags` must be 0 on input (MSG_PEEK/MSG_OOB/
/// MSG_WAITALL/MSG_PARTIAL → WSAEOPNOTSUPP) and is 0 on output.
///
/// Overlapped (`lpOverlapped != NULL`): returns 0 if data (or the EOF) is there at once
/// (buffers filled, `*lpNumberOfBytesRecvd` set if not NULL, `*lpFlags` 0; the completion is
/// still reported), else SOCKET_ERROR with WSA_IO_PENDING. **The buffers must stay valid until
/// completion** (as Windows): the received bytes are copied into them before the completion is
/// reported (routine, `hEvent`, completion queue, WSPGetOverlappedResult — see WSPSend); an
/// operation aborted by WSPCloseSocket (WSA_OPERATION_ABORTED) writes nothing into them.
/// `lpThreadId` is ignored.
///
/// # Safety
/// `lpBuffers` is NULL or points to `dwBufferCount` `WSABUF`s whose `buf` point to `len`
/// writable bytes (until completion when overlapped); `lpNumberOfBytesRecvd`, `lpFlags` NULL
/// or readable and writable; `lpOverlapped` NULL or a `WSAOVERLAPPED` valid until the operation
/// completes; `lpErrno` as for every call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn WSPRecv(
    s: SOCKET,
    lpBuffers: LPWSABUF,
    dwBufferCount: DWORD,
    lpNumberOfBytesRecvd: LPDWORD,
    lpFlags: LPDWORD,
    lpOverlapped: LPWSAOVERLAPPED,
    lpCompletionRoutine: LPWSAOVERLAPPED_COMPLETION_ROUTINE,
    lpThreadId: LPWSATHREADID,
    lpErrno: LPINT,
) -> i32 {
    let _ = lpThreadId;
    // SAFETY: pointers per the contract above.
    unsafe {
        int_call(lpErrno, || {
            let p = provider()?;
            if !lpOverlapped.is_null() {
                return overlapped::recv(
                    &p,
                    s,
                    lpBuffers,
                    dwBufferCount,
                    lpNumberOfBytesRecvd,
                    lpFlags,
                    None,
                    lpOverlapped,
                    lpCompletionRoutine,
                );
            }
            recv_common(
                &p,
                Socket::from_raw(s),
                lpBuffers,
                dwBufferCount,
                lpNumberOfBytesRecvd,
                lpFlags,
                |_| Ok(()),
            )
            .map(|_| ())
        })
    }
}

/// WSPRecvFrom: as WSPRecv, and for a datagram socket the sender goes to `lpFrom` (if not NULL;
/// then `lpFromlen` must be non-NULL with `*lpFromlen` at least the socket family's
/// `sockaddr_in`/`sockaddr_in6` size, checked before receiving → WSAEFAULT) and its size to
/// `*lpFromlen`. For a stream socket `lpFrom`/`lpFromlen` are ignored (Winsock).
/// Overlapped as WSPRecv; the sender of a datagram received later is written to `lpFrom` /
/// `*lpFromlen` at completion, so they too must stay valid until then.
///
/// # Safety
/// As WSPRecv; `lpFrom` is NULL or points to `*lpFromlen` writable bytes, `lpFromlen` NULL or
/// a readable and writable `int` (until completion when overlapped).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn WSPRecvFrom(
    s: SOCKET,
    lpBuffers: LPWSABUF,
    dwBufferCount: DWORD,
    lpNumberOfBytesRecvd: LPDWORD,
    lpFlags: LPDWORD,
    lpFrom: *mut sockaddr,
    lpFromlen: LPINT,
    lpOverlapped: LPWSAOVERLAPPED,
    lpCompletionRoutine: LPWSAOVERLAPPED_COMPLETION_ROUTINE,
    lpThreadId: LPWSATHREADID,
    lpErrno: LPINT,
) -> i32 {
    let _ = lpThreadId;
    // SAFETY: pointers per the contract above.
    unsafe {
        int_call(lpErrno, || {
            let p = provider()?;
            if !lpOverlapped.is_null() {
                return overlapped::recv(
                    &p,
                    s,
                    lpBuffers,
                    dwBufferCount,
                    lpNumberOfBytesRecvd,
                    lpFlags,
                    Some((lpFrom, lpFromlen)),
                    lpOverlapped,
                    lpCompletionRoutine,
                );
            }
            let s = Socket::from_raw(s);
            let from = recv_common(
                &p,
                s,
                lpBuffers,
                dwBufferCount,
                lpNumberOfBytesRecvd,
                lpFlags,
                |stream| {
                    if stream || lpFrom.is_null() {
                        return Ok(());
                    }
                    // An unbound datagram socket fails here with WSAEINVAL, as the receive
                    // itself would.
                    let local = p.wsp_get_sock_name(s).map_err(code)?;
                    // `lpFromlen` per the contract above (inside the enclosing unsafe block).
                    check_sockaddr_out(lpFrom, lpFromlen, sockaddr_len(&local))
                },
            )?;
            if let Some(from) = from
                && !lpFrom.is_null()
            {
                // SAFETY: per the contract above; the length was checked before receiving.
                write_sockaddr(from, lpFrom, lpFromlen)?;
            }
            Ok(())
        })
    }
}

/// WSPShutdown (`how`: SD_RECEIVE 0, SD_SEND 1, SD_BOTH 2).
///
/// # Safety
/// `lpErrno` is NULL or points to a writable `int`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn WSPShutdown(s: SOCKET, how: i32, lpErrno: LPINT) -> i32 {
    // SAFETY: `lpErrno` per the contract above.
    unsafe {
        int_call(lpErrno, || {
            provider()?
                .wsp_shutdown(Socket::from_raw(s), how)
                .map_err(code)
        })
    }
}

/// WSPCloseSocket, with the linger semantics of DESIGN §7 (SO_LINGER {1, 0}: reset at once).
/// When the last handle of the socket closes, its pending overlapped operations complete with
/// WSA_OPERATION_ABORTED through their mechanisms (possibly before this call returns); the
/// handle's completion queue association ends.
///
/// # Safety
/// `lpErrno` is NULL or points to a writable `int`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn WSPCloseSocket(s: SOCKET, lpErrno: LPINT) -> i32 {
    // SAFETY: `lpErrno` per the contract above.
    unsafe {
        int_call(lpErrno, || {
            provider()?
                .wsp_close_socket(Socket::from_raw(s))
                .map_err(code)?;
            events::forget_socket(s);
            Ok(())
        })
    }
}

/// WSPSetSockOpt. `optval` must be non-NULL and `optlen` at least the option's size (4 bytes:
/// an `int`/BOOL, or a `struct linger` for SO_LINGER) → WSAEFAULT.
/// Codes: WSAEINVAL (level), WSAENOPROTOOPT (name, read-only, not for this socket type).
///
/// # Safety
/// `optval` is NULL or points to `optlen` readable bytes; `lpErrno` as for every call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn WSPSetSockOpt(
    s: SOCKET,
    level: i32,
    optname: i32,
    optval: *const c_char,
    optlen: i32,
    lpErrno: LPINT,
) -> i32 {
    // SAFETY: pointers per the contract above.
    unsafe {
        int_call(lpErrno, || {
            if optval.is_null() || optlen < 0 {
                return Err(WSAEFAULT);
            }
            let p = provider()?;
            // SAFETY: non-NULL, `optlen` readable bytes per the contract.
            let v = std::slice::from_raw_parts(optval.cast::<u8>(), optlen as usize);
            p.wsp_set_sock_opt(Socket::from_raw(s), level, optname, v)
                .map_err(code)
        })
    }
}

/// WSPGetSockOpt. `optval` and `optlen` must be non-NULL and `*optlen` at least the option's
/// size (WSAEFAULT); `*optlen` receives the size written.
///
/// # Safety
/// `optval` is NULL or points to `*optlen` writable bytes; `optlen` NULL or a readable and
/// writable `int`; `lpErrno` as for every call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn WSPGetSockOpt(
    s: SOCKET,
    level: i32,
    optname: i32,
    optval: *mut c_char,
    optlen: LPINT,
    lpErrno: LPINT,
) -> i32 {
    // SAFETY: pointers per the contract above.
    unsafe {
        int_call(lpErrno, || {
            if optval.is_null() || optlen.is_null() {
                return Err(WSAEFAULT);
            }
            let len = optlen.read_unaligned();
            if len < 0 {
                return Err(WSAEFAULT);
            }
            let p = provider()?;
            // SAFETY: non-NULL, `*optlen` writable bytes per the contract.
            let out = std::slice::from_raw_parts_mut(optval.cast::<u8>(), len as usize);
            let n = p
                .wsp_get_sock_opt(Socket::from_raw(s), level, optname, out)
                .map_err(code)?;
            put(optlen, i32::try_from(n).unwrap_or(i32::MAX))
        })
    }
}

/// WSPIoctl, synchronous: FIONBIO (`lpvInBuffer` a 4-byte `u_long`, nonzero → nonblocking) and
/// FIONREAD (`lpvOutBuffer` gets a 4-byte `u_long`, the readable bytes; `*lpcbBytesReturned`
/// = 4). Short or NULL buffers, or a NULL `lpcbBytesReturned` → WSAEFAULT; other codes →
/// WSAEINVAL. `lpOverlapped != NULL` → WSAEOPNOTSUPP (no overlapped ioctl).
///
/// # Safety
/// `lpvInBuffer` NULL or `cbInBuffer` readable bytes; `lpvOutBuffer` NULL or `cbOutBuffer`
/// writable bytes; `lpcbBytesReturned` NULL or writable; `lpErrno` as for every call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn WSPIoctl(
    s: SOCKET,
    dwIoControlCode: DWORD,
    lpvInBuffer: *mut c_void,
    cbInBuffer: DWORD,
    lpvOutBuffer: *mut c_void,
    cbOutBuffer: DWORD,
    lpcbBytesReturned: LPDWORD,
    lpOverlapped: LPWSAOVERLAPPED,
    lpCompletionRoutine: LPWSAOVERLAPPED_COMPLETION_ROUTINE,
    lpThreadId: LPWSATHREADID,
    lpErrno: LPINT,
) -> i32 {
    let _ = (lpCompletionRoutine, lpThreadId);
    // SAFETY: pointers per the contract above.
    unsafe {
        int_call(lpErrno, || {
            reject_overlapped(lpOverlapped)?;
            if lpcbBytesReturned.is_null() {
                return Err(WSAEFAULT);
            }
            let p = provider()?;
            let s = Socket::from_raw(s);
            match dwIoControlCode {
                FIONBIO => {
                    if lpvInBuffer.is_null() || cbInBuffer < 4 {
                        return Err(WSAEFAULT);
                    }
                    // SAFETY: non-NULL, ≥ 4 readable bytes.
                    let mut arg = lpvInBuffer.cast::<u32>().read_unaligned();
                    p.wsp_ioctl(s, FIONBIO, &mut arg).map_err(code)?;
                    put(lpcbBytesReturned, 0)
                }
                FIONREAD => {
                    if lpvOutBuffer.is_null() || cbOutBuffer < 4 {
                        return Err(WSAEFAULT);
                    }
                    let mut arg = 0;
                    p.wsp_ioctl(s, FIONREAD, &mut arg).map_err(code)?;
                    // SAFETY: non-NULL, ≥ 4 writable bytes.
                    put(lpvOutBuffer.cast::<u32>(), arg)?;
                    put(lpcbBytesReturned, 4)
                }
                other => {
                    let mut arg = 0;
                    p.wsp_ioctl(s, other, &mut arg).map_err(code)
                }
            }
        })
    }
}

/// WSPGetSockName: the bound local address into `name`; `*namelen` must be at least its
/// `sockaddr_in`/`sockaddr_in6` size (WSAEFAULT) and receives the size written.
///
/// # Safety
/// `name` NULL or `*namelen` writable bytes; `namelen` NULL or a readable and writable `int`;
/// `lpErrno` as for every call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn WSPGetSockName(
    s: SOCKET,
    name: *mut sockaddr,
    namelen: LPINT,
    lpErrno: LPINT,
) -> i32 {
    // SAFETY: pointers per the contract above.
    unsafe {
        int_call(lpErrno, || {
            if name.is_null() || namelen.is_null() {
                return Err(WSAEFAULT);
            }
            let a = provider()?
                .wsp_get_sock_name(Socket::from_raw(s))
                .map_err(code)?;
            write_sockaddr(a, name, namelen)
        })
    }
}

/// WSPGetPeerName: as WSPGetSockName, for the connected peer.
///
/// # Safety
/// As WSPGetSockName.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn WSPGetPeerName(
    s: SOCKET,
    name: *mut sockaddr,
    namelen: LPINT,
    lpErrno: LPINT,
) -> i32 {
    // SAFETY: pointers per the contract above.
    unsafe {
        int_call(lpErrno, || {
            if name.is_null() || namelen.is_null() {
                return Err(WSAEFAULT);
            }
            let a = provider()?
                .wsp_get_peer_name(Socket::from_raw(s))
                .map_err(code)?;
            write_sockaddr(a, name, namelen)
        })
    }
}

/// WSPDuplicateSocket, in-process only ("lite"): a second handle to the same socket, or
/// INVALID_SOCKET. The socket is released when its last handle is closed. (The Winsock call
/// fills a `WSAPROTOCOL_INFOW` for another process; sockets here live in one process.)
///
/// # Safety
/// `lpErrno` is NULL or points to a writable `int`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn WSPDuplicateSocketLite(s: SOCKET, lpErrno: LPINT) -> SOCKET {
    // SAFETY: `lpErrno` per the contract above.
    unsafe {
        ffi_call(lpErrno, INVALID_SOCKET, || {
            Ok(provider()?
                .duplicate(Socket::from_raw(s))
                .map_err(code)?
                .raw())
        })
    }
}

#[cfg(test)]
mod tests;
