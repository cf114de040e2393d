//! The C types of the ABI, laid out as Windows defines them (Ws2def.h, Ws2spi.h), and the
//! conversions between Windows socket addresses and [`SocketAddr`].
//!
//! This file is part of what cbindgen reads for `include/provider.h`: keep every item here
//! `#[repr(C)]` or a plain alias, and the doc comments meaningful to a C reader.
use std::ffi::{c_char, c_void};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// A socket handle: 64 bits (slot index + generation, DESIGN §6). Never 0, never `INVALID_SOCKET`.
pub type SOCKET = u64;
/// `int *`: where every call stores its Winsock error code on failure.
pub type LPINT = *mut i32;
/// Windows `DWORD` (32 bits).
pub type DWORD = u32;
/// `DWORD *`.
pub type LPDWORD = *mut u32;
/// Windows `ULONG` (32 bits, also on 64-bit Windows).
pub type ULONG = u32;
/// Windows `u_short`.
pub type u_short = u16;
/// Windows `ULONG_PTR` / `DWORD_PTR` (pointer-sized).
pub type DWORD_PTR = usize;
/// Windows `HANDLE`: here an opaque handle of an event object or a completion queue made by
/// `provider_create_event` / `provider_create_completion_queue` (never a pointer to memory).
pub type HANDLE = *mut c_void;
/// `WSAEVENT`: an event object handle.
pub type WSAEVENT = HANDLE;
/// `HANDLE *`.
pub type LPHANDLE = *mut HANDLE;
/// Windows `BOOL`: nonzero is TRUE (1), 0 is FALSE.
pub type BOOL = i32;
/// Windows `LONG` / `long` (32 bits on Windows, so `int32_t` here, not the LP64 C `long`).
pub type LONG = i32;
/// Windows `ULONG_PTR` (pointer-sized): completion keys.
pub type ULONG_PTR = usize;
/// Windows `GROUP` (socket groups are not supported: pass 0).
pub type GROUP = u32;
/// `LPWSAPROTOCOL_INFOW`: opaque here; the provider has one protocol per (af, type), so the
/// calls take NULL (a non-NULL pointer gives WSAEINVAL).
pub type LPWSAPROTOCOL_INFOW = *mut c_void;
/// `LPQOS`: quality of service is not supported; accepted and ignored.
pub type LPQOS = *mut c_void;
/// `LPCONDITIONPROC` (conditional accept): must be NULL (non-NULL gives WSAEOPNOTSUPP).
pub type LPCONDITIONPROC = *mut c_void;

/// `SOCKET_ERROR`: what the `int` calls return on failure (the code is in `*lpErrno`).
pub const SOCKET_ERROR: i32 = -1;
/// `INVALID_SOCKET` (`~0`): what the `SOCKET` calls return on failure.
pub const INVALID_SOCKET: SOCKET = u64::MAX;

/// `AF_INET`.
pub const AF_INET: i32 = 2;
/// `AF_INET6` as Windows numbers it (Linux's 10 is accepted on input too).
pub const AF_INET6: i32 = 23;
/// `SOCK_STREAM`.
pub const SOCK_STREAM: i32 = 1;
/// `SOCK_DGRAM`.
pub const SOCK_DGRAM: i32 = 2;
/// `IPPROTO_TCP`.
pub const IPPROTO_TCP: i32 = 6;
/// `IPPROTO_UDP`.
pub const IPPROTO_UDP: i32 = 17;
/// `SOL_SOCKET` (Windows value).
pub const SOL_SOCKET: i32 = 0xffff;
/// `SO_REUSEADDR`.
pub const SO_REUSEADDR: i32 = 0x0004;
/// `SO_KEEPALIVE`.
pub const SO_KEEPALIVE: i32 = 0x0008;
/// `SO_LINGER`: value is a `struct linger`.
pub const SO_LINGER: i32 = 0x0080;
/// `SO_DONTLINGER` (`~SO_LINGER`): value is a BOOL (int).
pub const SO_DONTLINGER: i32 = !0x0080;
/// `SO_SNDBUF`.
pub const SO_SNDBUF: i32 = 0x1001;
/// `SO_RCVBUF`.
pub const SO_RCVBUF: i32 = 0x1002;
/// `SO_ERROR` (read-and-clear).
pub const SO_ERROR: i32 = 0x1007;
/// `SO_TYPE`.
pub const SO_TYPE: i32 = 0x1008;
/// `TCP_NODELAY` (level `IPPROTO_TCP`).
pub const TCP_NODELAY: i32 = 0x0001;
/// `FIONBIO`: in-buffer is a `u_long` (4 bytes); nonzero → nonblocking.
pub const FIONBIO: u32 = 0x8004_667E;
/// `FIONREAD`: out-buffer gets a `u_long` (4 bytes), the readable byte count.
pub const FIONREAD: u32 = 0x4004_667F;
/// `SD_RECEIVE` for `WSPShutdown`.
pub const SD_RECEIVE: i32 = 0;
/// `SD_SEND`.
pub const SD_SEND: i32 = 1;
/// `SD_BOTH`.
pub const SD_BOTH: i32 = 2;
/// `SOMAXCONN` for `WSPListen`.
pub const SOMAXCONN: i32 = 0x7fff_ffff;
/// `WSA_FLAG_OVERLAPPED` for `WSPSocket`'s `dwFlags` (accepted; every socket can do both).
pub const WSA_FLAG_OVERLAPPED: u32 = 0x01;
/// `MSG_OOB` (not supported: WSAEOPNOTSUPP).
pub const MSG_OOB: u32 = 0x1;
/// `MSG_PEEK` (not supported yet: WSAEOPNOTSUPP).
pub const MSG_PEEK: u32 = 0x2;
/// `MSG_DONTROUTE` (accepted and ignored on send).
pub const MSG_DONTROUTE: u32 = 0x4;

/// `WSANOTINITIALISED`: a call made before `provider_start` (or after `provider_stop`).
pub const WSANOTINITIALISED: i32 = 10093;
/// `WSAEFAULT`: a NULL or too-short pointer argument.
pub const WSAEFAULT: i32 = 10014;
/// `WSAEINVAL`.
pub const WSAEINVAL: i32 = 10022;
/// `WSAEOPNOTSUPP`: also what WSPIoctl gives with a non-NULL `lpOverlapped`.
pub const WSAEOPNOTSUPP: i32 = 10045;
/// `WSAEINTR`: a blocking call interrupted by a close in another thread.
pub const WSAEINTR: i32 = 10004;
/// `WSAEWOULDBLOCK`.
pub const WSAEWOULDBLOCK: i32 = 10035;
/// `WSAENOTSOCK`: not a (live) socket handle.
pub const WSAENOTSOCK: i32 = 10038;
/// `WSAENOTCONN`.
pub const WSAENOTCONN: i32 = 10057;
/// `WSAECONNABORTED`.
pub const WSAECONNABORTED: i32 = 10053;
/// `WSAECONNRESET`.
pub const WSAECONNRESET: i32 = 10054;

/// `WSA_INVALID_HANDLE`: a NULL, garbage or closed event / completion queue handle.
pub const WSA_INVALID_HANDLE: i32 = 6;
/// `WSA_OPERATION_ABORTED`: a pending overlapped operation ended by the close of its socket.
pub const WSA_OPERATION_ABORTED: i32 = 995;
/// `WSA_IO_INCOMPLETE`: `WSPGetOverlappedResult` with `fWait` FALSE on a pending operation.
pub const WSA_IO_INCOMPLETE: i32 = 996;
/// `WSA_IO_PENDING`: an overlapped operation was started and completes later; also the value
/// of `WSAOVERLAPPED.Internal` while it is pending.
pub const WSA_IO_PENDING: i32 = 997;

/// `WSA_WAIT_EVENT_0`: `provider_wait_for_multiple_events` returns this + the index.
pub const WSA_WAIT_EVENT_0: DWORD = 0;
/// `WSA_WAIT_IO_COMPLETION` (never returned: completion routines run on the provider's
/// completion thread, not in alertable waits).
pub const WSA_WAIT_IO_COMPLETION: DWORD = 0xC0;
/// `WSA_WAIT_TIMEOUT` (WAIT_TIMEOUT, 258): also the `*lpErrno` of a timed-out
/// `provider_get_queued_completion`.
pub const WSA_WAIT_TIMEOUT: DWORD = 258;
/// `WSA_WAIT_FAILED`.
pub const WSA_WAIT_FAILED: DWORD = 0xFFFF_FFFF;
/// `WSA_INFINITE`: wait without a timeout.
pub const WSA_INFINITE: DWORD = 0xFFFF_FFFF;
/// `WSA_MAXIMUM_WAIT_EVENTS`: most handles one wait takes.
pub const WSA_MAXIMUM_WAIT_EVENTS: DWORD = 64;

/// `FD_READ`: data (a datagram) to read; re-enabled by any receive.
pub const FD_READ: LONG = 1 << FD_READ_BIT;
/// `FD_WRITE`: send space after connect/accept, or after a send that gave WSAEWOULDBLOCK.
pub const FD_WRITE: LONG = 1 << FD_WRITE_BIT;
/// `FD_OOB` (accepted, never recorded: no urgent data).
pub const FD_OOB: LONG = 1 << FD_OOB_BIT;
/// `FD_ACCEPT`: a connection to accept; re-enabled by WSPAccept.
pub const FD_ACCEPT: LONG = 1 << FD_ACCEPT_BIT;
/// `FD_CONNECT`: the connect attempt ended (error 0, WSAECONNREFUSED, WSAETIMEDOUT).
pub const FD_CONNECT: LONG = 1 << FD_CONNECT_BIT;
/// `FD_CLOSE`: the connection closed (error 0: peer's FIN, WSAECONNRESET, WSAECONNABORTED).
pub const FD_CLOSE: LONG = 1 << FD_CLOSE_BIT;
/// Index of FD_READ's code in `WSANETWORKEVENTS.iErrorCode`.
pub const FD_READ_BIT: LONG = 0;
/// Index of FD_WRITE's code.
pub const FD_WRITE_BIT: LONG = 1;
/// Index of FD_OOB's code.
pub const FD_OOB_BIT: LONG = 2;
/// Index of FD_ACCEPT's code.
pub const FD_ACCEPT_BIT: LONG = 3;
/// Index of FD_CONNECT's code.
pub const FD_CONNECT_BIT: LONG = 4;
/// Index of FD_CLOSE's code.
pub const FD_CLOSE_BIT: LONG = 5;
/// Length of `WSANETWORKEVENTS.iErrorCode`.
pub const FD_MAX_EVENTS: usize = 10;

/// `WSANETWORKEVENTS`: what `WSPEnumNetworkEvents` reports.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WSANETWORKEVENTS {
    /// The FD_* events recorded since the last call.
    pub lNetworkEvents: LONG,
    /// Per event, its error code (0: none), indexed by FD_*_BIT.
    pub iErrorCode: [i32; FD_MAX_EVENTS],
}
/// `WSANETWORKEVENTS *`.
pub type LPWSANETWORKEVENTS = *mut WSANETWORKEVENTS;
/// `WSAEAFNOSUPPORT`.
pub const WSAEAFNOSUPPORT: i32 = 10047;
/// `WSAEALREADY`: `provider_start` while running.
pub const WSAEALREADY: i32 = 10037;
/// `WSAENETDOWN`: `provider_start` could not bring the datapath up; also an internal error
/// (a Rust panic caught at the ABI boundary).
pub const WSAENETDOWN: i32 = 10050;
/// `WSAEMSGSIZE`: a datagram larger than the buffers (they are filled, the rest discarded).
pub const WSAEMSGSIZE: i32 = 10040;

/// `WSABUF`: one buffer of a scatter/gather array.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct WSABUF {
    /// Length in bytes.
    pub len: ULONG,
    /// The bytes (may be NULL only if `len` is 0).
    pub buf: *mut c_char,
}
/// `WSABUF *`.
pub type LPWSABUF = *mut WSABUF;

/// `WSAOVERLAPPED`, laid out as on Windows: one overlapped operation at a time. It must stay
/// valid (not freed, not moved) until the operation has completed.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct WSAOVERLAPPED {
    /// Status, written by the provider: WSA_IO_PENDING while pending, then 0 (success) or the
    /// operation's error code (WSA_OPERATION_ABORTED after close, WSAECONNRESET, WSAEMSGSIZE, …).
    pub Internal: DWORD_PTR,
    /// Bytes transferred, written by the provider at completion.
    pub InternalHigh: DWORD_PTR,
    /// Written by the provider at completion: the operation's MSG_* out flags (always 0).
    pub Offset: DWORD,
    /// Not used by the provider.
    pub OffsetHigh: DWORD,
    /// Event object (`provider_create_event`) set on completion, or NULL. Not read when a
    /// completion routine is given (free for the application then, as Windows). As Windows, a
    /// handle with its low bit set names the event with that bit cleared.
    pub hEvent: HANDLE,
}
/// `WSAOVERLAPPED *`.
pub type LPWSAOVERLAPPED = *mut WSAOVERLAPPED;

/// `LPWSAOVERLAPPED_COMPLETION_ROUTINE`: `void (*)(DWORD dwError, DWORD cbTransferred,
/// LPWSAOVERLAPPED lpOverlapped, DWORD dwFlags)`. Ignored when `lpOverlapped` is NULL (Winsock).
/// Runs on the provider's completion thread (`provider-completion`), one routine at a time in
/// completion order — not as an APC in the issuing thread's alertable wait (the deviation from
/// Windows). It may issue new overlapped operations; it must not block for long.
pub type LPWSAOVERLAPPED_COMPLETION_ROUTINE =
    Option<unsafe extern "C" fn(DWORD, DWORD, LPWSAOVERLAPPED, DWORD)>;

/// `WSATHREADID`: which thread a completion routine runs on. Accepted and ignored (may be NULL).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct WSATHREADID {
    pub ThreadHandle: HANDLE,
    pub Reserved: DWORD_PTR,
}
/// `WSATHREADID *`.
pub type LPWSATHREADID = *mut WSATHREADID;

/// `struct linger` for `SO_LINGER` (4 bytes). `{1, 0}` closes with a reset.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct linger {
    /// Nonzero: linger on close.
    pub l_onoff: u_short,
    /// Seconds.
    pub l_linger: u_short,
}

/// Generic `struct sockaddr` (16 bytes). `sa_family` is AF_INET (2) or AF_INET6 (23).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct sockaddr {
    pub sa_family: u_short,
    pub sa_data: [c_char; 14],
}

/// `IN_ADDR`: the address in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct in_addr {
    pub s_addr: u32,
}

/// `struct sockaddr_in` (16 bytes). Port and address in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct sockaddr_in {
    pub sin_family: u16,
    pub sin_port: u_short,
    pub sin_addr: in_addr,
    pub sin_zero: [c_char; 8],
}

/// `IN6_ADDR`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct in6_addr {
    pub s6_addr: [u8; 16],
}

/// `struct sockaddr_in6` (28 bytes). Port in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct sockaddr_in6 {
    pub sin6_family: u16,
    pub sin6_port: u_short,
    pub sin6_flowinfo: ULONG,
    pub sin6_addr: in6_addr,
    pub sin6_scope_id: ULONG,
}

const SIN_LEN: i32 = size_of::<sockaddr_in>() as i32;
const SIN6_LEN: i32 = size_of::<sockaddr_in6>() as i32;

/// Bytes a `sockaddr_*` for `addr` takes.
pub(crate) fn sockaddr_len(addr: &SocketAddr) -> i32 {
    if addr.is_ipv4() { SIN_LEN } else { SIN6_LEN }
}

/// Read a Windows socket address. WSAEFAULT for NULL or `namelen` shorter than the family's
/// structure, WSAEAFNOSUPPORT for another family.
///
/// # Safety
/// `name` is NULL or points to `namelen` readable bytes.
pub(crate) unsafe fn read_sockaddr(name: *const sockaddr, namelen: i32) -> Result<SocketAddr, i32> {
    if name.is_null() || namelen < 2 {
        return Err(WSAEFAULT);
    }
    // SAFETY: non-NULL and at least 2 readable bytes (caller's contract); unaligned read.
    let family = unsafe { std::ptr::read_unaligned(name.cast::<u16>()) };
    match i32::from(family) {
        AF_INET => {
            if namelen < SIN_LEN {
                return Err(WSAEFAULT);
            }
            // SAFETY: `namelen` ≥ sizeof(sockaddr_in) readable bytes; unaligned read.
            let sin = unsafe { std::ptr::read_unaligned(name.cast::<sockaddr_in>()) };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Ok(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        AF_INET6 | 10 => {
            if namelen < SIN6_LEN {
                return Err(WSAEFAULT);
            }
            // SAFETY: `namelen` ≥ sizeof(sockaddr_in6) readable bytes; unaligned read.
            let sin6 = unsafe { std::ptr::read_unaligned(name.cast::<sockaddr_in6>()) };
            Ok(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                u32::from_be(sin6.sin6_flowinfo),
                sin6.sin6_scope_id,
            )))
        }
        _ => Err(WSAEAFNOSUPPORT),
    }
}

/// Check that `name`/`namelen` can take an address of `need` bytes: WSAEFAULT if either is
/// NULL or `*namelen < need`.
///
/// # Safety
/// `namelen` is NULL or points to a readable `int`.
pub(crate) unsafe fn check_sockaddr_out(
    name: *mut sockaddr,
    namelen: *const i32,
    need: i32,
) -> Result<(), i32> {
    if name.is_null() || namelen.is_null() {
        return Err(WSAEFAULT);
    }
    // SAFETY: non-NULL, caller guarantees it points to an int.
    if unsafe { namelen.read_unaligned() } < need {
        return Err(WSAEFAULT);
    }
    Ok(())
}

/// Write `addr` as a Windows socket address and set `*namelen` to its size. WSAEFAULT if either
/// pointer is NULL or `*namelen` is too short (nothing is written then).
///
/// # Safety
/// `name` is NULL or points to `*namelen` writable bytes; `namelen` is NULL or points to a
/// readable and writable `int`.
pub(crate) unsafe fn write_sockaddr(
    addr: SocketAddr,
    name: *mut sockaddr,
    namelen: *mut i32,
) -> Result<(), i32> {
    let need = sockaddr_len(&addr);
    // SAFETY: caller's contract, forwarded.
    unsafe { check_sockaddr_out(name, namelen, need)? };
    match addr {
        SocketAddr::V4(a) => {
            let sin = sockaddr_in {
                sin_family: AF_INET as u16,
                sin_port: a.port().to_be(),
                sin_addr: in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: checked above that `*namelen` ≥ sizeof(sockaddr_in) bytes are writable.
            unsafe { std::ptr::write_unaligned(name.cast::<sockaddr_in>(), sin) };
        }
        SocketAddr::V6(a) => {
            let sin6 = sockaddr_in6 {
                sin6_family: AF_INET6 as u16,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo().to_be(),
                sin6_addr: in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: checked above that `*namelen` ≥ sizeof(sockaddr_in6) bytes are writable.
            unsafe { std::ptr::write_unaligned(name.cast::<sockaddr_in6>(), sin6) };
        }
    }
    // SAFETY: non-NULL (checked), caller guarantees a writable int.
    unsafe { namelen.write_unaligned(need) };
    Ok(())
}
