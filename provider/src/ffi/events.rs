//! Event objects, completion queues and network events through the C ABI (DESIGN §8).
//!
//! Event objects (`provider_create_event`, the WSACreateEvent analogue: manual-reset, initially
//! not set) and completion queues (`provider_create_completion_queue`, the I/O completion port
//! analogue) are named by opaque `HANDLE`s: numbers looked up in a registry, never pointers. A
//! NULL, garbage or closed handle — or a queue handle where an event is expected — is refused
//! (WSA_INVALID_HANDLE, FALSE or WSA_WAIT_FAILED), never undefined behaviour. Handle values are
//! not reused. Neither object needs a running provider.
use std::collections::{BTreeMap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::types::*;
use super::{code, ffi_call, int_call, is_stream, provider, put};
use crate::api::WsaEvent;
use crate::socket::Socket;
use crate::socket::entry::lock;

enum Obj {
    Event(Arc<WsaEvent>),
    Queue(Arc<CQueue>),
}

/// Handle value → object.
static HANDLES: Mutex<BTreeMap<usize, Obj>> = Mutex::new(BTreeMap::new());
/// Next handle number (shifted left by 4: the low bits of a handle are 0, so Windows' "low bit
/// set on hEvent" convention can be honoured).
static NEXT_HANDLE: AtomicUsize = AtomicUsize::new(1);
/// Socket handle → (its completion queue, key).
static ASSOC: Mutex<BTreeMap<SOCKET, (Arc<CQueue>, usize)>> = Mutex::new(BTreeMap::new());

fn new_handle(o: Obj) -> HANDLE {
    let h = NEXT_HANDLE.fetch_add(1, Ordering::Relaxed) << 4;
    lock(&HANDLES).insert(h, o);
    std::ptr::without_provenance_mut(h)
}

/// The event object `h` names (WSA_INVALID_HANDLE if none).
pub(crate) fn event(h: HANDLE) -> Result<Arc<WsaEvent>, i32> {
    match lock(&HANDLES).get(&h.addr()) {
        Some(Obj::Event(e)) => Ok(Arc::clone(e)),
        _ => Err(WSA_INVALID_HANDLE),
    }
}

/// The completion queue `h` names (WSA_INVALID_HANDLE if none).
fn queue(h: HANDLE) -> Result<Arc<CQueue>, i32> {
    match lock(&HANDLES).get(&h.addr()) {
        Some(Obj::Queue(q)) => Ok(Arc::clone(q)),
        _ => Err(WSA_INVALID_HANDLE),
    }
}

/// The completion queue socket handle `s` is associated with, and its key.
pub(crate) fn associated(s: SOCKET) -> Option<(Arc<CQueue>, usize)> {
    lock(&ASSOC).get(&s).cloned()
}

/// The socket handle is closed: forget its association (its pending operations keep theirs).
pub(crate) fn forget_socket(s: SOCKET) {
    lock(&ASSOC).remove(&s);
}

/// `provider_stop`: associations belong to the provider's sockets.
pub(crate) fn forget_all_sockets() {
    lock(&ASSOC).clear();
}

/// One completion in a queue.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Packet {
    pub bytes: usize,
    pub key: usize,
    pub ov: usize,
    /// 0 or the operation's error code.
    pub error: i32,
}

#[derive(Default)]
struct CqState {
    packets: VecDeque<Packet>,
    closed: bool,
}

/// A completion queue (the completion-port analogue). Leaf lock.
#[derive(Default)]
pub(crate) struct CQueue {
    st: Mutex<CqState>,
    cv: Condvar,
}

impl CQueue {
    /// Queue a completion (dropped if the queue was closed).
    pub(crate) fn post(&self, p: Packet) {
        let mut st = lock(&self.st);
        if !st.closed {
            st.packets.push_back(p);
            self.cv.notify_one();
        }
    }

    /// The oldest completion, waiting up to `timeout` (None: forever): WSA_WAIT_TIMEOUT, or
    /// WSA_INVALID_HANDLE once the queue is closed.
    fn get(&self, timeout: Option<Duration>) -> Result<Packet, i32> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut st = lock(&self.st);
        loop {
            if st.closed {
                return Err(WSA_INVALID_HANDLE);
            }
            if let Some(p) = st.packets.pop_front() {
                return Ok(p);
            }
            match deadline {
                None => st = self.cv.wait(st).unwrap_or_else(PoisonError::into_inner),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Err(WSA_WAIT_TIMEOUT as i32);
                    }
                    st = self
                        .cv
                        .wait_timeout(st, d - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            }
        }
    }

    fn close(&self) {
        let mut st = lock(&self.st);
        st.closed = true;
        st.packets.clear();
        self.cv.notify_all();
    }
}

fn timeout_of(ms: DWORD) -> Option<Duration> {
    (ms != WSA_INFINITE).then(|| Duration::from_millis(u64::from(ms)))
}

/// Run `f` with no panic escaping (`fail` then).
fn guarded<T>(fail: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(fail)
}

// ---------------------------------------------------------------------------------------------
// Event objects.

/// WSACreateEvent: a new manual-reset event object, not set. NULL on failure.
#[unsafe(no_mangle)]
pub extern "C" fn provider_create_event() -> WSAEVENT {
    guarded(std::ptr::null_mut(), || {
        new_handle(Obj::Event(WsaEvent::new()))
    })
}

/// WSASetEvent: TRUE, or FALSE for an invalid handle. Wakes every waiter.
#[unsafe(no_mangle)]
pub extern "C" fn provider_set_event(hEvent: WSAEVENT) -> BOOL {
    guarded(0, || {
        event(hEvent).map_or(0, |e| {
            e.set();
            1
        })
    })
}

/// WSAResetEvent: TRUE, or FALSE for an invalid handle.
#[unsafe(no_mangle)]
pub extern "C" fn provider_reset_event(hEvent: WSAEVENT) -> BOOL {
    guarded(0, || {
        event(hEvent).map_or(0, |e| {
            e.reset();
            1
        })
    })
}

/// WSACloseEvent: TRUE, or FALSE for an invalid handle (or a queue's). The handle is invalid
/// afterwards; a socket selected on it or an operation issued with it keeps the object alive.
#[unsafe(no_mangle)]
pub extern "C" fn provider_close_event(hEvent: WSAEVENT) -> BOOL {
    guarded(0, || {
        let mut h = lock(&HANDLES);
        match h.get(&hEvent.addr()) {
            Some(Obj::Event(_)) => {
                h.remove(&hEvent.addr());
                1
            }
            _ => 0,
        }
    })
}

/// WSAWaitForMultipleEvents: wait until any of the `cEvents` events is set (`fWaitAll`: all of
/// them at once), for at most `dwTimeout` ms (WSA_INFINITE: forever). Returns
/// WSA_WAIT_EVENT_0 + the lowest index set (any) or WSA_WAIT_EVENT_0 (all), WSA_WAIT_TIMEOUT,
/// or WSA_WAIT_FAILED (`cEvents` 0 or above WSA_MAXIMUM_WAIT_EVENTS, NULL `lphEvents`, an
/// invalid handle). Events are manual-reset: nothing is reset. The thread sleeps (no polling).
/// `fAlertable` is accepted and ignored: completion routines run on the provider's completion
/// thread, so WSA_WAIT_IO_COMPLETION is never returned.
///
/// # Safety
/// `lphEvents` is NULL or points to `cEvents` readable handles.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn provider_wait_for_multiple_events(
    cEvents: DWORD,
    lphEvents: *const WSAEVENT,
    fWaitAll: BOOL,
    dwTimeout: DWORD,
    fAlertable: BOOL,
) -> DWORD {
    let _ = fAlertable;
    if cEvents == 0 || cEvents > WSA_MAXIMUM_WAIT_EVENTS || lphEvents.is_null() {
        return WSA_WAIT_FAILED;
    }
    // SAFETY: non-NULL, `cEvents` readable handles per the contract.
    let handles = unsafe { std::slice::from_raw_parts(lphEvents, cEvents as usize) };
    guarded(WSA_WAIT_FAILED, || {
        let Ok(events) = handles
            .iter()
            .map(|&h| event(h))
            .collect::<Result<Vec<_>, _>>()
        else {
            return WSA_WAIT_FAILED;
        };
        match WsaEvent::wait_multiple(&events, fWaitAll != 0, timeout_of(dwTimeout)) {
            Some(i) => WSA_WAIT_EVENT_0 + i as DWORD,
            None => WSA_WAIT_TIMEOUT,
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Completion queues.

/// CreateIoCompletionPort (new port): a completion queue, or NULL on failure.
#[unsafe(no_mangle)]
pub extern "C" fn provider_create_completion_queue() -> HANDLE {
    guarded(std::ptr::null_mut(), || {
        new_handle(Obj::Queue(Arc::new(CQueue::default())))
    })
}

/// CreateIoCompletionPort (associate): the overlapped operations issued on socket handle `s`
/// from now on with neither a completion routine nor an `hEvent` complete into `queue`, tagged
/// `key`. Codes: WSA_INVALID_HANDLE (queue), WSAENOTSOCK, WSAEINVAL (the handle is already
/// associated; as Windows, an association lasts until the socket is closed). The association
/// belongs to this handle, not to handles duplicated from it.
///
/// # Safety
/// `lpErrno` is NULL or points to a writable `int`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn provider_associate_completion_queue(
    queue_handle: HANDLE,
    s: SOCKET,
    key: ULONG_PTR,
    lpErrno: LPINT,
) -> i32 {
    // SAFETY: `lpErrno` per the contract above.
    unsafe {
        int_call(lpErrno, || {
            let p = provider()?;
            let q = queue(queue_handle)?;
            // Validates the handle (WSAENOTSOCK).
            is_stream(&p, Socket::from_raw(s))?;
            let mut a = lock(&ASSOC);
            if a.contains_key(&s) {
                return Err(WSAEINVAL);
            }
            a.insert(s, (q, key));
            Ok(())
        })
    }
}

/// GetQueuedCompletionStatus: the oldest completion of `queue`, waiting up to `dwTimeoutMs`
/// (WSA_INFINITE: forever).
/// * TRUE: an operation succeeded; `*lpBytes`, `*lpKey`, `*lpOverlapped` are set.
/// * FALSE with `*lpOverlapped` non-NULL: an operation failed; the outputs are set and
///   `*lpErrno` is its error (WSA_OPERATION_ABORTED after close, WSAECONNRESET, …).
/// * FALSE with `*lpOverlapped` NULL: nothing dequeued; `*lpErrno` is WSA_WAIT_TIMEOUT, or
///   WSA_INVALID_HANDLE (invalid queue, or the queue was closed while waiting).
///
/// NULL `lpBytes`, `lpKey` or `lpOverlapped` → WSAEFAULT.
///
/// # Safety
/// `lpBytes`, `lpKey`, `lpOverlapped` are NULL or writable; `lpErrno` as for every call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn provider_get_queued_completion(
    queue_handle: HANDLE,
    lpBytes: LPDWORD,
    lpKey: *mut ULONG_PTR,
    lpOverlapped: *mut LPWSAOVERLAPPED,
    dwTimeoutMs: DWORD,
    lpErrno: LPINT,
) -> BOOL {
    // SAFETY: pointers per the contract above.
    unsafe {
        ffi_call(lpErrno, 0, || {
            if lpBytes.is_null() || lpKey.is_null() || lpOverlapped.is_null() {
                return Err(WSAEFAULT);
            }
            put(lpOverlapped, std::ptr::null_mut())?;
            let p = queue(queue_handle)?.get(timeout_of(dwTimeoutMs))?;
            put(lpBytes, super::len_u32(p.bytes))?;
            put(lpKey, p.key)?;
            put(lpOverlapped, std::ptr::with_exposed_provenance_mut(p.ov))?;
            if p.error != 0 { Err(p.error) } else { Ok(1) }
        })
    }
}

/// CloseHandle on a queue: TRUE, or FALSE for an invalid handle (or an event's). Threads
/// waiting in `provider_get_queued_completion` return FALSE with WSA_INVALID_HANDLE; later
/// completions of sockets associated with it are dropped.
#[unsafe(no_mangle)]
pub extern "C" fn provider_close_completion_queue(queue_handle: HANDLE) -> BOOL {
    guarded(0, || {
        let mut h = lock(&HANDLES);
        match h.get(&queue_handle.addr()) {
            Some(Obj::Queue(q)) => {
                q.close();
                h.remove(&queue_handle.addr());
                1
            }
            _ => 0,
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Network events.

/// WSPEventSelect: record the FD_* events of `lNetworkEvents` on `s` and set `hEventObject`
/// when one is recorded (rules: README "Event select and overlapped I/O"). Makes the socket
/// nonblocking. `lNetworkEvents` 0 cancels the selection (`hEventObject` may then be NULL).
/// Codes: WSA_INVALID_HANDLE, WSAENOTSOCK.
///
/// # Safety
/// `lpErrno` is NULL or points to a writable `int`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn WSPEventSelect(
    s: SOCKET,
    hEventObject: WSAEVENT,
    lNetworkEvents: LONG,
    lpErrno: LPINT,
) -> i32 {
    // SAFETY: `lpErrno` per the contract above.
    unsafe {
        int_call(lpErrno, || {
            let p = provider()?;
            let ev = if lNetworkEvents == 0 && hEventObject.is_null() {
                WsaEvent::new()
            } else {
                event(hEventObject)?
            };
            p.wsp_event_select(Socket::from_raw(s), ev, lNetworkEvents as u32)
                .map_err(code)
        })
    }
}

/// WSPEnumNetworkEvents: the events recorded on `s` since the last call, with their error
/// codes, into `*lpNetworkEvents` (NULL → WSAEFAULT); clears the record. `hEventObject` may be
/// NULL; if given it is reset (WSA_INVALID_HANDLE if invalid).
///
/// # Safety
/// `lpNetworkEvents` is NULL or writable; `lpErrno` as for every call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn WSPEnumNetworkEvents(
    s: SOCKET,
    hEventObject: WSAEVENT,
    lpNetworkEvents: LPWSANETWORKEVENTS,
    lpErrno: LPINT,
) -> i32 {
    // SAFETY: pointers per the contract above.
    unsafe {
        int_call(lpErrno, || {
            if lpNetworkEvents.is_null() {
                return Err(WSAEFAULT);
            }
            let p = provider()?;
            let ev = if hEventObject.is_null() {
                None
            } else {
                Some(event(hEventObject)?)
            };
            let ne = p
                .wsp_enum_network_events(Socket::from_raw(s), ev.as_deref())
                .map_err(code)?;
            put(
                lpNetworkEvents,
                WSANETWORKEVENTS {
                    lNetworkEvents: ne.events as LONG,
                    iErrorCode: ne.errors,
                },
            )
        })
    }
}

/// WSPCancelBlockingCall (Winsock 1.1): there are no blocking hooks, so the calling thread never
/// has a blocking call to cancel: always SOCKET_ERROR with WSAEINVAL (or WSANOTINITIALISED).
///
/// # Safety
/// `lpErrno` is NULL or points to a writable `int`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn WSPCancelBlockingCall(lpErrno: LPINT) -> i32 {
    // SAFETY: `lpErrno` per the contract above.
    unsafe {
        int_call(lpErrno, || {
            provider()?.wsp_cancel_blocking_call().map_err(code)
        })
    }
}
