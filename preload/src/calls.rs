//! The exported BSD socket calls. Each checks whether its descriptor is a provider socket (one
//! atomic load when it is not) and forwards everything else to libc untouched. Pointer
//! arguments are checked as the kernel checks them (EFAULT, EINVAL) before any use; a panic
//! inside becomes EIO rather than crossing into the application.
#![allow(clippy::missing_safety_doc)]

use std::ffi::{c_int, c_ulong, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use libc::{msghdr, pollfd, sockaddr, socklen_t, ssize_t};

use crate::fdtable::ProvSock;
use crate::ops::{self, R};
use crate::real::{self, set_errno};
use crate::sockaddr as sa;
use crate::stack::{self, Stack};

type Fd = c_int;

fn guarded(f: impl FnOnce() -> R<isize>) -> isize {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            set_errno(e);
            -1
        }
        Err(_) => {
            set_errno(libc::EIO);
            -1
        }
    }
}

/// The provider socket at `fd` and the stack, if `fd` is one.
fn lookup(fd: Fd) -> Option<(&'static Stack, Arc<ProvSock>)> {
    let ps = stack::table().get(fd)?;
    Some((stack::get()?, ps))
}

fn buf_mut<'a>(p: *mut c_void, len: usize) -> R<&'a mut [u8]> {
    if len == 0 {
        return Ok(&mut []);
    }
    if p.is_null() {
        return Err(libc::EFAULT);
    }
    // SAFETY: the caller passed `len` writable bytes at `p` (as the syscall contract says).
    Ok(unsafe { std::slice::from_raw_parts_mut(p as *mut u8, len) })
}

fn buf<'a>(p: *const c_void, len: usize) -> R<&'a [u8]> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(libc::EFAULT);
    }
    // SAFETY: the caller passed `len` readable bytes at `p`.
    Ok(unsafe { std::slice::from_raw_parts(p as *const u8, len) })
}

// ------------------------------------------------------------------ bind / connect / listen

#[unsafe(no_mangle)]
pub unsafe extern "C" fn bind(fd: Fd, addr: *const sockaddr, len: socklen_t) -> c_int {
    let real_bind = crate::real!(bind: fn(c_int, *const sockaddr, socklen_t) -> c_int);
    if let Some((st, ps)) = lookup(fd) {
        return guarded(|| {
            // SAFETY: `addr` is checked for NULL and `len` inside.
            let a = unsafe { sa::read_for(ps.family, addr, len) }?;
            st.provider
                .wsp_bind(ps.sock, a)
                .map_err(crate::errno::from_wsa)?;
            Ok(0)
        }) as c_int;
    }
    if !stack::configured() || stack::inside() {
        // SAFETY: forwarding the caller's arguments unchanged.
        return unsafe { real_bind(fd, addr, len) };
    }
    // SAFETY: as above; a bad pointer makes `read` fail and the kernel report it.
    let Ok(a) = (unsafe { sa::read(addr, len) }) else {
        // SAFETY: forwarding unchanged.
        return unsafe { real_bind(fd, addr, len) };
    };
    let Some(kind) = ops::kernel_socket_kind(fd) else {
        // SAFETY: forwarding unchanged.
        return unsafe { real_bind(fd, addr, len) };
    };
    if a.is_ipv6() != (kind.1 == libc::AF_INET6) {
        // Another family's address: the kernel's error (EAFNOSUPPORT) is the answer.
        // SAFETY: forwarding unchanged.
        return unsafe { real_bind(fd, addr, len) };
    }
    // A dual-stack wildcard (AF_INET6 on `::` without IPV6_V6ONLY, Linux's default) also takes
    // IPv4 as mapped addresses, which the provider does not serve: it stays the kernel's.
    if kind.1 == libc::AF_INET6 && a.ip().is_unspecified() && !ops::v6only(fd) {
        // SAFETY: forwarding unchanged.
        return unsafe { real_bind(fd, addr, len) };
    }
    match stack::get() {
        Some(st) if st.binds(a) => guarded(|| {
            let ps = ops::handover(st, fd, kind.0, kind.1)?;
            st.provider
                .wsp_bind(ps.sock, a)
                .map_err(crate::errno::from_wsa)?;
            Ok(0)
        }) as c_int,
        // SAFETY: forwarding unchanged.
        _ => unsafe { real_bind(fd, addr, len) },
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect(fd: Fd, addr: *const sockaddr, len: socklen_t) -> c_int {
    let real_connect = crate::real!(connect: fn(c_int, *const sockaddr, socklen_t) -> c_int);
    let ps = match lookup(fd) {
        Some(x) => Some(x),
        None if stack::configured() && !stack::inside() => {
            // SAFETY: checked inside; a bad pointer is forwarded for the kernel to report.
            // The stack starts only for a TCP socket connecting where the interface reaches.
            let want = match (unsafe { sa::read(addr, len) }, ops::kernel_socket_kind(fd)) {
                (Ok(a), Some(kind)) if kind.0 => Some((a, kind)),
                _ => None,
            };
            match want
                .and_then(|(a, kind)| stack::get().filter(|st| st.reaches(a)).map(|st| (st, kind)))
            {
                Some((st, kind)) => match ops::handover(st, fd, kind.0, kind.1) {
                    Ok(ps) => Some((st, ps)),
                    Err(e) => {
                        set_errno(e);
                        return -1;
                    }
                },
                None => None,
            }
        }
        None => None,
    };
    let Some((st, ps)) = ps else {
        // SAFETY: forwarding the caller's arguments unchanged.
        return unsafe { real_connect(fd, addr, len) };
    };
    guarded(|| {
        // SAFETY: checked for NULL and length inside.
        let a = unsafe { sa::read_for(ps.family, addr, len) }?;
        // A blocking connect sleeps until the SYN is answered: the SYN must go out now.
        crate::drive::release_kicks();
        match st.provider.wsp_connect(ps.sock, a) {
            Ok(()) => Ok(0),
            Err(provider::socket::WsaError::WSAEWOULDBLOCK) => Err(libc::EINPROGRESS),
            // Linux: a listening socket counts as connected here.
            Err(provider::socket::WsaError::WSAEINVAL) if ops::listening(&st.provider, &ps) => {
                Err(libc::EISCONN)
            }
            Err(e) => Err(crate::errno::from_wsa(e)),
        }
    }) as c_int
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn listen(fd: Fd, backlog: c_int) -> c_int {
    match lookup(fd) {
        Some((st, ps)) => guarded(|| {
            st.provider
                .wsp_listen(ps.sock, backlog.clamp(1, provider::api::SOMAXCONN))
                .map_err(crate::errno::from_wsa)?;
            Ok(0)
        }) as c_int,
        // SAFETY: forwarding unchanged.
        None => unsafe { crate::real!(listen: fn(c_int, c_int) -> c_int)(fd, backlog) },
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn accept4(
    fd: Fd,
    addr: *mut sockaddr,
    len: *mut socklen_t,
    flags: c_int,
) -> c_int {
    let Some((st, ps)) = lookup(fd) else {
        // SAFETY: forwarding unchanged.
        return unsafe {
            crate::real!(accept4: fn(c_int, *mut sockaddr, *mut socklen_t, c_int) -> c_int)(
                fd, addr, len, flags,
            )
        };
    };
    guarded(|| {
        if flags & !(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) != 0 {
            return Err(libc::EINVAL);
        }
        if !addr.is_null() && len.is_null() {
            return Err(libc::EFAULT);
        }
        if !ps.nonblocking.load(Ordering::Relaxed) && ops::listening(&st.provider, &ps) {
            crate::drive::wait_until(&st.provider, &ps, |r| r.readable || r.error);
        }
        let (s, remote) = st
            .provider
            .wsp_accept(ps.sock)
            .map_err(crate::errno::from_wsa)?;
        let nfd = ops::install_accepted(st, s, ps.family, flags)?;
        // SAFETY: `addr`/`len` are the caller's out parameters (NULL allowed).
        unsafe { sa::write(remote, addr, len) }?;
        Ok(nfd as isize)
    }) as c_int
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn accept(fd: Fd, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    if stack::table().get(fd).is_none() {
        // SAFETY: forwarding unchanged.
        return unsafe {
            crate::real!(accept: fn(c_int, *mut sockaddr, *mut socklen_t) -> c_int)(fd, addr, len)
        };
    }
    // SAFETY: same contract as accept.
    unsafe { accept4(fd, addr, len, 0) }
}

// ------------------------------------------------------------------ data

#[unsafe(no_mangle)]
pub unsafe extern "C" fn recv(fd: Fd, p: *mut c_void, n: usize, flags: c_int) -> ssize_t {
    match lookup(fd) {
        Some((st, ps)) => guarded(|| ops::recv(st, &ps, buf_mut(p, n)?, flags).map(|v| v as isize)),
        // SAFETY: forwarding unchanged.
        None => unsafe {
            crate::real!(recv: fn(c_int, *mut c_void, usize, c_int) -> ssize_t)(fd, p, n, flags)
        },
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn read(fd: Fd, p: *mut c_void, n: usize) -> ssize_t {
    match lookup(fd) {
        Some((st, ps)) => guarded(|| ops::recv(st, &ps, buf_mut(p, n)?, 0).map(|v| v as isize)),
        // SAFETY: forwarding unchanged.
        None => unsafe { crate::real!(read: fn(c_int, *mut c_void, usize) -> ssize_t)(fd, p, n) },
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn __read_chk(fd: Fd, p: *mut c_void, n: usize, buflen: usize) -> ssize_t {
    if n > buflen {
        // glibc's fortify check.
        // SAFETY: forwarding to libc's own check, which aborts.
        return unsafe {
            crate::real!(__read_chk: fn(c_int, *mut c_void, usize, usize) -> ssize_t)(
                fd, p, n, buflen,
            )
        };
    }
    // SAFETY: same contract as read.
    unsafe { read(fd, p, n) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn __recv_chk(
    fd: Fd,
    p: *mut c_void,
    n: usize,
    buflen: usize,
    flags: c_int,
) -> ssize_t {
    if n > buflen {
        // SAFETY: libc's own check, which aborts.
        return unsafe {
            crate::real!(__recv_chk: fn(c_int, *mut c_void, usize, usize, c_int) -> ssize_t)(
                fd, p, n, buflen, flags,
            )
        };
    }
    // SAFETY: same contract as recv.
    unsafe { recv(fd, p, n, flags) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn recvfrom(
    fd: Fd,
    p: *mut c_void,
    n: usize,
    flags: c_int,
    from: *mut sockaddr,
    fromlen: *mut socklen_t,
) -> ssize_t {
    match lookup(fd) {
        Some((st, ps)) => guarded(|| {
            let (got, src, full) = ops::recv_from(st, &ps, buf_mut(p, n)?, flags)?;
            if ps.dgram || !from.is_null() {
                // SAFETY: the caller's out parameters (NULL allowed).
                unsafe { sa::write(src, from, fromlen) }?;
            }
            Ok(if flags & libc::MSG_TRUNC != 0 {
                full
            } else {
                got
            } as isize)
        }),
        // SAFETY: forwarding unchanged.
        None => unsafe {
            crate::real!(recvfrom: fn(c_int, *mut c_void, usize, c_int, *mut sockaddr, *mut socklen_t) -> ssize_t)(
                fd, p, n, flags, from, fromlen,
            )
        },
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn __recvfrom_chk(
    fd: Fd,
    p: *mut c_void,
    n: usize,
    buflen: usize,
    flags: c_int,
    from: *mut sockaddr,
    fromlen: *mut socklen_t,
) -> ssize_t {
    if n > buflen {
        // SAFETY: libc's own check, which aborts.
        return unsafe {
            crate::real!(__recvfrom_chk: fn(c_int, *mut c_void, usize, usize, c_int, *mut sockaddr, *mut socklen_t) -> ssize_t)(
                fd, p, n, buflen, flags, from, fromlen,
            )
        };
    }
    // SAFETY: same contract as recvfrom.
    unsafe { recvfrom(fd, p, n, flags, from, fromlen) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn send(fd: Fd, p: *const c_void, n: usize, flags: c_int) -> ssize_t {
    match lookup(fd) {
        Some((st, ps)) => guarded(|| ops::send(st, &ps, buf(p, n)?, flags).map(|v| v as isize)),
        // SAFETY: forwarding unchanged.
        None => unsafe {
            crate::real!(send: fn(c_int, *const c_void, usize, c_int) -> ssize_t)(fd, p, n, flags)
        },
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn write(fd: Fd, p: *const c_void, n: usize) -> ssize_t {
    match lookup(fd) {
        Some((st, ps)) => guarded(|| ops::send(st, &ps, buf(p, n)?, 0).map(|v| v as isize)),
        // SAFETY: forwarding unchanged.
        None => unsafe {
            crate::real!(write: fn(c_int, *const c_void, usize) -> ssize_t)(fd, p, n)
        },
    }
}

/// sendfile(2) and its 64-bit-offset name (the same call on 64-bit Linux).
unsafe fn sendfile_any(out_fd: Fd, in_fd: Fd, offset: *mut libc::off_t, count: usize) -> ssize_t {
    match lookup(out_fd) {
        Some((st, ps)) => guarded(|| {
            // SAFETY: a non-NULL offset points at the caller's off_t (the syscall contract).
            let off = unsafe { offset.as_mut() };
            if stack::table().get(in_fd).is_some() {
                // Linux reads sendfile's input through the page cache: not from a socket.
                return Err(libc::EINVAL);
            }
            ops::sendfile(st, &ps, in_fd, off, count).map(|v| v as isize)
        }),
        // SAFETY: forwarding unchanged.
        None => unsafe {
            crate::real!(sendfile: fn(c_int, c_int, *mut libc::off_t, usize) -> ssize_t)(
                out_fd, in_fd, offset, count,
            )
        },
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendfile(
    out_fd: Fd,
    in_fd: Fd,
    offset: *mut libc::off_t,
    count: usize,
) -> ssize_t {
    // SAFETY: same contract.
    unsafe { sendfile_any(out_fd, in_fd, offset, count) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendfile64(
    out_fd: Fd,
    in_fd: Fd,
    offset: *mut libc::off_t,
    count: usize,
) -> ssize_t {
    // SAFETY: same contract.
    unsafe { sendfile_any(out_fd, in_fd, offset, count) }
}

/// The provider socket at `fd`; or, for a kernel UDP socket sending to an address the
/// interface reaches (`to`), the provider socket it is handed over to now (an unbound UDP
/// socket's first send decides, as its implicit bind would).
///
/// # Safety
/// `to` is NULL or points to `tolen` readable bytes.
unsafe fn lookup_or_send_handover(
    fd: Fd,
    to: *const sockaddr,
    tolen: socklen_t,
) -> R<Option<(&'static Stack, Arc<ProvSock>)>> {
    if let Some(x) = lookup(fd) {
        return Ok(Some(x));
    }
    if !stack::configured() || stack::inside() || to.is_null() {
        return Ok(None);
    }
    // SAFETY: checked inside; a bad address stays the kernel's to report.
    let want = match (unsafe { sa::read(to, tolen) }, ops::kernel_socket_kind(fd)) {
        (Ok(a), Some((false, fam))) => Some((a, fam)),
        _ => None,
    };
    match want.and_then(|(a, fam)| stack::get().filter(|st| st.reaches(a)).map(|st| (st, fam))) {
        Some((st, fam)) => ops::handover(st, fd, false, fam).map(|ps| Some((st, ps))),
        None => Ok(None),
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendto(
    fd: Fd,
    p: *const c_void,
    n: usize,
    flags: c_int,
    to: *const sockaddr,
    tolen: socklen_t,
) -> ssize_t {
    let real_sendto = crate::real!(sendto: fn(c_int, *const c_void, usize, c_int, *const sockaddr, socklen_t) -> ssize_t);
    // SAFETY: `to` is NULL or the caller's address of `tolen` bytes.
    let found = match unsafe { lookup_or_send_handover(fd, to, tolen) } {
        Ok(found) => found,
        Err(e) => {
            set_errno(e);
            return -1;
        }
    };
    match found {
        Some((st, ps)) => guarded(|| {
            let dest = if to.is_null() {
                None
            } else {
                // SAFETY: checked for NULL and length inside.
                Some(unsafe { sa::read_for(ps.family, to, tolen) }?)
            };
            ops::send_to(st, &ps, buf(p, n)?, dest, flags).map(|v| v as isize)
        }),
        // SAFETY: forwarding unchanged.
        None => unsafe { real_sendto(fd, p, n, flags, to, tolen) },
    }
}

/// The iovecs of a msghdr: as readv's, but more than UIO_MAXIOV is EMSGSIZE (Linux).
fn msg_iovecs<'a>(iov: *const libc::iovec, cnt: usize) -> R<&'a [libc::iovec]> {
    if cnt > libc::UIO_MAXIOV as usize {
        return Err(libc::EMSGSIZE);
    }
    iovecs(iov, cnt)
}

/// The iovecs of a readv/writev/msghdr as slices.
fn iovecs<'a>(iov: *const libc::iovec, cnt: usize) -> R<&'a [libc::iovec]> {
    if cnt > libc::UIO_MAXIOV as usize {
        return Err(libc::EINVAL);
    }
    if cnt == 0 {
        return Ok(&[]);
    }
    if iov.is_null() {
        return Err(libc::EFAULT);
    }
    // SAFETY: the caller passed `cnt` iovecs at `iov`.
    Ok(unsafe { std::slice::from_raw_parts(iov, cnt) })
}

fn recv_iov(st: &Stack, ps: &ProvSock, iov: &[libc::iovec], flags: c_int) -> R<usize> {
    let mut total = 0;
    for v in iov {
        let b = buf_mut(v.iov_base, v.iov_len)?;
        if b.is_empty() {
            continue;
        }
        // Only the first read may block; later ones take what is already there.
        let f = if total > 0 {
            flags | libc::MSG_DONTWAIT
        } else {
            flags
        };
        match ops::recv(st, ps, b, f) {
            Ok(n) => {
                total += n;
                if n < v.iov_len {
                    break;
                }
            }
            Err(_) if total > 0 => break,
            Err(e) => return Err(e),
        }
    }
    Ok(total)
}

fn send_iov(st: &Stack, ps: &ProvSock, iov: &[libc::iovec], flags: c_int) -> R<usize> {
    let mut total = 0;
    for v in iov {
        let b = buf(v.iov_base, v.iov_len)?;
        match ops::send(st, ps, b, flags) {
            Ok(n) => {
                total += n;
                if n < b.len() {
                    break;
                }
            }
            Err(_) if total > 0 => break,
            Err(e) => return Err(e),
        }
    }
    Ok(total)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn readv(fd: Fd, iov: *const libc::iovec, cnt: c_int) -> ssize_t {
    match lookup(fd) {
        Some((st, ps)) => guarded(|| {
            let v = iovecs(iov, usize::try_from(cnt).map_err(|_| libc::EINVAL)?)?;
            if ps.dgram {
                return Err(libc::EOPNOTSUPP);
            }
            recv_iov(st, &ps, v, 0).map(|n| n as isize)
        }),
        // SAFETY: forwarding unchanged.
        None => unsafe {
            crate::real!(readv: fn(c_int, *const libc::iovec, c_int) -> ssize_t)(fd, iov, cnt)
        },
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn writev(fd: Fd, iov: *const libc::iovec, cnt: c_int) -> ssize_t {
    match lookup(fd) {
        Some((st, ps)) => guarded(|| {
            let v = iovecs(iov, usize::try_from(cnt).map_err(|_| libc::EINVAL)?)?;
            send_iov(st, &ps, v, 0).map(|n| n as isize)
        }),
        // SAFETY: forwarding unchanged.
        None => unsafe {
            crate::real!(writev: fn(c_int, *const libc::iovec, c_int) -> ssize_t)(fd, iov, cnt)
        },
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn recvmsg(fd: Fd, msg: *mut msghdr, flags: c_int) -> ssize_t {
    match lookup(fd) {
        Some((st, ps)) => guarded(|| {
            if msg.is_null() {
                return Err(libc::EFAULT);
            }
            // SAFETY: non-NULL; the caller's msghdr.
            let m = unsafe { &mut *msg };
            let v = msg_iovecs(m.msg_iov, m.msg_iovlen)?;
            m.msg_controllen = 0;
            m.msg_flags = 0;
            if ps.dgram {
                // One datagram into the first buffer (the common single-iovec case).
                let first = v.iter().find(|x| x.iov_len > 0);
                let b = match first {
                    Some(x) => buf_mut(x.iov_base, x.iov_len)?,
                    None => &mut [],
                };
                let (n, src, full) = ops::recv_from(st, &ps, b, flags)?;
                if full > n {
                    m.msg_flags |= libc::MSG_TRUNC;
                }
                // SAFETY: the caller's name buffer and length field.
                unsafe { sa::write(src, m.msg_name as *mut sockaddr, &mut m.msg_namelen) }?;
                return Ok(n as isize);
            }
            m.msg_namelen = 0;
            recv_iov(st, &ps, v, flags).map(|n| n as isize)
        }),
        // SAFETY: forwarding unchanged.
        None => unsafe {
            crate::real!(recvmsg: fn(c_int, *mut msghdr, c_int) -> ssize_t)(fd, msg, flags)
        },
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendmsg(fd: Fd, msg: *const msghdr, flags: c_int) -> ssize_t {
    let to = if msg.is_null() {
        (std::ptr::null(), 0)
    } else {
        // SAFETY: non-NULL; the caller's msghdr.
        let m = unsafe { &*msg };
        (m.msg_name as *const sockaddr, m.msg_namelen)
    };
    // SAFETY: the caller's name buffer of `msg_namelen` bytes (or NULL).
    let found = match unsafe { lookup_or_send_handover(fd, to.0, to.1) } {
        Ok(found) => found,
        Err(e) => {
            set_errno(e);
            return -1;
        }
    };
    match found {
        Some((st, ps)) => guarded(|| {
            if msg.is_null() {
                return Err(libc::EFAULT);
            }
            // SAFETY: non-NULL; the caller's msghdr.
            let m = unsafe { &*msg };
            let v = msg_iovecs(m.msg_iov, m.msg_iovlen)?;
            if ps.dgram {
                let mut data = Vec::new();
                for x in v {
                    data.extend_from_slice(buf(x.iov_base, x.iov_len)?);
                }
                let dest = if m.msg_name.is_null() {
                    None
                } else {
                    // SAFETY: the caller's name buffer of `msg_namelen` bytes.
                    Some(unsafe {
                        sa::read_for(ps.family, m.msg_name as *const sockaddr, m.msg_namelen)
                    }?)
                };
                return ops::send_to(st, &ps, &data, dest, flags).map(|n| n as isize);
            }
            send_iov(st, &ps, v, flags).map(|n| n as isize)
        }),
        // SAFETY: forwarding unchanged.
        None => unsafe {
            crate::real!(sendmsg: fn(c_int, *const msghdr, c_int) -> ssize_t)(fd, msg, flags)
        },
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendmmsg(
    fd: Fd,
    vec: *mut libc::mmsghdr,
    vlen: libc::c_uint,
    flags: c_int,
) -> c_int {
    let first = if vec.is_null() || vlen == 0 {
        (std::ptr::null(), 0)
    } else {
        // SAFETY: non-NULL; the caller's first message.
        let m = unsafe { &(*vec).msg_hdr };
        (m.msg_name as *const sockaddr, m.msg_namelen)
    };
    // SAFETY: the caller's name buffer of `msg_namelen` bytes (or NULL).
    if let Err(e) = unsafe { lookup_or_send_handover(fd, first.0, first.1) } {
        set_errno(e);
        return -1;
    }
    if stack::table().get(fd).is_none() {
        // SAFETY: forwarding unchanged.
        return unsafe {
            crate::real!(sendmmsg: fn(c_int, *mut libc::mmsghdr, libc::c_uint, c_int) -> c_int)(
                fd, vec, vlen, flags,
            )
        };
    }
    if vec.is_null() && vlen > 0 {
        set_errno(libc::EFAULT);
        return -1;
    }
    // Linux caps vlen at UIO_MAXIOV; one sendmsg per message, and an error after the first
    // message ends the batch with the count sent.
    let n = vlen.min(1024) as usize;
    for i in 0..n {
        // SAFETY: `vec` holds `vlen` messages (the caller's contract).
        let m = unsafe { &mut *vec.add(i) };
        // SAFETY: as sendmsg(2); `m.msg_hdr` is the caller's message.
        let r = unsafe { sendmsg(fd, &m.msg_hdr, flags) };
        if r < 0 {
            return if i == 0 { -1 } else { i as c_int };
        }
        m.msg_len = r as libc::c_uint;
    }
    n as c_int
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn recvmmsg(
    fd: Fd,
    vec: *mut libc::mmsghdr,
    vlen: libc::c_uint,
    flags: c_int,
    timeout: *mut libc::timespec,
) -> c_int {
    if stack::table().get(fd).is_none() {
        // SAFETY: forwarding unchanged.
        return unsafe {
            crate::real!(recvmmsg: fn(c_int, *mut libc::mmsghdr, libc::c_uint, c_int, *mut libc::timespec) -> c_int)(
                fd, vec, vlen, flags, timeout,
            )
        };
    }
    if vec.is_null() && vlen > 0 {
        set_errno(libc::EFAULT);
        return -1;
    }
    let deadline = match timespec_timeout(timeout) {
        Ok(t) => t.map(|t| Instant::now() + t),
        Err(e) => {
            set_errno(e);
            return -1;
        }
    };
    let n = vlen.min(1024) as usize;
    let mut got = 0;
    while got < n {
        // As Linux: MSG_WAITFORONE makes every receive after the first nonblocking, and the
        // timeout is looked at only between messages.
        let mut f = flags & !libc::MSG_WAITFORONE;
        if got > 0
            && (flags & libc::MSG_WAITFORONE != 0 || deadline.is_some_and(|d| Instant::now() >= d))
        {
            f |= libc::MSG_DONTWAIT;
        }
        // SAFETY: `vec` holds `vlen` messages (the caller's contract).
        let m = unsafe { &mut *vec.add(got) };
        // SAFETY: as recvmsg(2); `m.msg_hdr` is the caller's message.
        let r = unsafe { recvmsg(fd, &mut m.msg_hdr, f) };
        if r < 0 {
            return if got == 0 { -1 } else { got as c_int };
        }
        m.msg_len = r as libc::c_uint;
        got += 1;
    }
    got as c_int
}

// ------------------------------------------------------------------ shutdown / close / dup

#[unsafe(no_mangle)]
pub unsafe extern "C" fn shutdown(fd: Fd, how: c_int) -> c_int {
    match lookup(fd) {
        Some((st, ps)) => guarded(|| {
            if !(0..=2).contains(&how) {
                return Err(libc::EINVAL);
            }
            if how == libc::SHUT_WR && ops::listening(&st.provider, &ps) {
                // Linux: a listener has nothing to send; SHUT_WR leaves it listening.
                return Ok(0);
            }
            if how == libc::SHUT_RD || how == libc::SHUT_RDWR {
                ps.read_shut.store(true, Ordering::Relaxed);
            }
            if how == libc::SHUT_WR || how == libc::SHUT_RDWR {
                st.provider
                    .wsp_shutdown(ps.sock, provider::api::SD_SEND)
                    .map_err(crate::errno::from_wsa)?;
            } else {
                // SHUT_RD alone still checks the socket is connected, as Linux does.
                st.provider
                    .wsp_get_peer_name(ps.sock)
                    .map_err(crate::errno::from_wsa)?;
            }
            Ok(0)
        }) as c_int,
        // SAFETY: forwarding unchanged.
        None => unsafe { crate::real!(shutdown: fn(c_int, c_int) -> c_int)(fd, how) },
    }
}

/// Release the provider handle of a descriptor that is going away (close, or dup2 over it).
fn release(fd: Fd) -> R<bool> {
    let Some(ps) = stack::table().get(fd) else {
        return Ok(true);
    };
    if let Some(st) = stack::get()
        && !ops::close(st, &ps)?
    {
        return Ok(false);
    }
    stack::table().remove(fd);
    Ok(true)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn close(fd: Fd) -> c_int {
    let real_close = crate::real!(close: fn(c_int) -> c_int);
    if stack::table().get(fd).is_none() {
        crate::epoll::forget_instance(fd);
        // SAFETY: forwarding unchanged.
        return unsafe { real_close(fd) };
    }
    match catch_unwind(|| release(fd)) {
        Ok(Ok(true)) | Err(_) => {
            crate::epoll::forget_fd(fd);
            stack::table().remove(fd);
            // SAFETY: closing the placeholder eventfd at the application's number.
            unsafe { real_close(fd) }
        }
        Ok(Ok(false)) => {
            set_errno(libc::EWOULDBLOCK);
            -1
        }
        Ok(Err(e)) => {
            set_errno(e);
            -1
        }
    }
}

fn duplicate_into(old: Fd, new: Fd) {
    // Only a provider descriptor has anything to duplicate (never start the stack here).
    let Some(ps) = stack::table().get(old) else {
        return;
    };
    let Some(st) = stack::get() else {
        return;
    };
    if let Ok(s) = st.provider.duplicate(ps.sock) {
        stack::table().insert(new, ps.inherit(s));
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup(old: Fd) -> c_int {
    // SAFETY: forwarding unchanged.
    let new = unsafe { crate::real!(dup: fn(c_int) -> c_int)(old) };
    if new >= 0 {
        duplicate_into(old, new);
    }
    new
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup3(old: Fd, new: Fd, flags: c_int) -> c_int {
    if old != new && stack::table().get(new).is_some() && stack::table().get(old).is_some()
        || (old != new && stack::table().get(new).is_some())
    {
        let _ = release(new);
        stack::table().remove(new);
    }
    // SAFETY: forwarding unchanged.
    let r = unsafe { crate::real!(dup3: fn(c_int, c_int, c_int) -> c_int)(old, new, flags) };
    if r >= 0 && old != new {
        duplicate_into(old, new);
    }
    r
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup2(old: Fd, new: Fd) -> c_int {
    if old == new {
        // SAFETY: forwarding unchanged (dup2 to itself only checks `old`).
        return unsafe { crate::real!(dup2: fn(c_int, c_int) -> c_int)(old, new) };
    }
    // SAFETY: same contract.
    unsafe { dup3(old, new, 0) }
}

// ------------------------------------------------------------------ names and options

#[unsafe(no_mangle)]
pub unsafe extern "C" fn getsockname(fd: Fd, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    match lookup(fd) {
        Some((st, ps)) => guarded(|| {
            if addr.is_null() || len.is_null() {
                return Err(libc::EFAULT);
            }
            let a = match st.provider.wsp_get_sock_name(ps.sock) {
                Ok(a) => a,
                // Linux reports the unspecified address for an unbound socket.
                Err(_) if ps.family == libc::AF_INET6 => "[::]:0".parse().expect("literal"),
                Err(_) => "0.0.0.0:0".parse().expect("literal"),
            };
            // SAFETY: the caller's out parameters, non-NULL.
            unsafe { sa::write(a, addr, len) }?;
            Ok(0)
        }) as c_int,
        // SAFETY: forwarding unchanged.
        None => unsafe {
            crate::real!(getsockname: fn(c_int, *mut sockaddr, *mut socklen_t) -> c_int)(
                fd, addr, len,
            )
        },
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn getpeername(fd: Fd, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    match lookup(fd) {
        Some((st, ps)) => guarded(|| {
            if addr.is_null() || len.is_null() {
                return Err(libc::EFAULT);
            }
            let a = st
                .provider
                .wsp_get_peer_name(ps.sock)
                .map_err(crate::errno::from_wsa)?;
            // SAFETY: the caller's out parameters, non-NULL.
            unsafe { sa::write(a, addr, len) }?;
            Ok(0)
        }) as c_int,
        // SAFETY: forwarding unchanged.
        None => unsafe {
            crate::real!(getpeername: fn(c_int, *mut sockaddr, *mut socklen_t) -> c_int)(
                fd, addr, len,
            )
        },
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn setsockopt(
    fd: Fd,
    level: c_int,
    name: c_int,
    val: *const c_void,
    len: socklen_t,
) -> c_int {
    let Some((st, ps)) = lookup(fd) else {
        // SAFETY: forwarding unchanged.
        return unsafe {
            crate::real!(setsockopt: fn(c_int, c_int, c_int, *const c_void, socklen_t) -> c_int)(
                fd, level, name, val, len,
            )
        };
    };
    guarded(|| {
        ops::opt_level_fits(&ps, level, libc::ENOPROTOOPT)?;
        let v = buf(val, len as usize)?;
        let p = &st.provider;
        if (level, name) == (libc::SOL_SOCKET, libc::SO_LINGER) {
            if v.len() < std::mem::size_of::<libc::linger>() {
                return Err(libc::EINVAL);
            }
            // SAFETY: `v` holds a whole struct linger (checked above).
            let l = unsafe { std::ptr::read_unaligned(v.as_ptr() as *const libc::linger) };
            p.wsp_set_sock_opt(
                ps.sock,
                provider::socket::options::SOL_SOCKET,
                provider::socket::options::SO_LINGER,
                &ops::linger_bytes(&l),
            )
            .map_err(crate::errno::from_wsa)?;
            return Ok(0);
        }
        match ops::provider_opt(level, name) {
            Some((pl, pn)) => {
                if v.len() < 4 {
                    return Err(libc::EINVAL);
                }
                p.wsp_set_sock_opt(ps.sock, pl, pn, &v[..4])
                    .map_err(crate::errno::from_wsa)?;
                Ok(0)
            }
            // Options the provider does not model are accepted and have no effect (the README
            // lists them); any other is ENOPROTOOPT, as Linux says for an unknown one.
            None if ops::ignored_opt(&ps, level, name) => Ok(0),
            None => Err(libc::ENOPROTOOPT),
        }
    }) as c_int
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn getsockopt(
    fd: Fd,
    level: c_int,
    name: c_int,
    val: *mut c_void,
    len: *mut socklen_t,
) -> c_int {
    let Some((st, ps)) = lookup(fd) else {
        // SAFETY: forwarding unchanged.
        return unsafe {
            crate::real!(getsockopt: fn(c_int, c_int, c_int, *mut c_void, *mut socklen_t) -> c_int)(
                fd, level, name, val, len,
            )
        };
    };
    guarded(|| {
        if len.is_null() {
            return Err(libc::EFAULT);
        }
        // SAFETY: non-NULL; the caller's length.
        let room = unsafe { std::ptr::read_unaligned(len) };
        if (room as i32) < 0 {
            return Err(libc::EINVAL);
        }
        let room = room as usize;
        ops::opt_level_fits(&ps, level, libc::EOPNOTSUPP)?;
        let out = buf_mut(val, room)?;
        let p = &st.provider;
        let value: Vec<u8> = match (level, name) {
            (libc::SOL_SOCKET, libc::SO_TYPE) => (if ps.dgram {
                libc::SOCK_DGRAM
            } else {
                libc::SOCK_STREAM
            })
            .to_ne_bytes()
            .to_vec(),
            (libc::SOL_SOCKET, libc::SO_DOMAIN) => ps.family.to_ne_bytes().to_vec(),
            (libc::SOL_SOCKET, libc::SO_PROTOCOL) => (if ps.dgram {
                libc::IPPROTO_UDP
            } else {
                libc::IPPROTO_TCP
            })
            .to_ne_bytes()
            .to_vec(),
            (libc::SOL_SOCKET, libc::SO_LINGER) => {
                let mut b = [0u8; 4];
                p.wsp_get_sock_opt(
                    ps.sock,
                    provider::socket::options::SOL_SOCKET,
                    provider::socket::options::SO_LINGER,
                    &mut b,
                )
                .map_err(crate::errno::from_wsa)?;
                let l = libc::linger {
                    l_onoff: i32::from(u16::from_ne_bytes([b[0], b[1]])),
                    l_linger: i32::from(u16::from_ne_bytes([b[2], b[3]])),
                };
                let mut v = l.l_onoff.to_ne_bytes().to_vec();
                v.extend_from_slice(&l.l_linger.to_ne_bytes());
                v
            }
            (libc::SOL_SOCKET, libc::SO_ERROR) => {
                let mut b = [0u8; 4];
                p.wsp_get_sock_opt(
                    ps.sock,
                    provider::socket::options::SOL_SOCKET,
                    provider::socket::options::SO_ERROR,
                    &mut b,
                )
                .map_err(crate::errno::from_wsa)?;
                let code = i32::from_ne_bytes(b);
                let e =
                    provider::socket::WsaError::from_code(code).map_or(0, crate::errno::from_wsa);
                e.to_ne_bytes().to_vec()
            }
            _ => match ops::provider_opt(level, name) {
                Some((pl, pn)) => {
                    let mut b = [0u8; 4];
                    p.wsp_get_sock_opt(ps.sock, pl, pn, &mut b)
                        .map_err(crate::errno::from_wsa)?;
                    b.to_vec()
                }
                None => return Err(libc::ENOPROTOOPT),
            },
        };
        let n = value.len().min(out.len());
        out[..n].copy_from_slice(&value[..n]);
        // SAFETY: non-NULL; the caller's length.
        unsafe { std::ptr::write_unaligned(len, n as socklen_t) };
        Ok(0)
    }) as c_int
}

fn set_nonblocking(st: &Stack, ps: &ProvSock, on: bool) -> R<()> {
    st.provider
        .wsp_ioctl(
            ps.sock,
            provider::socket::options::FIONBIO,
            &mut u32::from(on),
        )
        .map_err(crate::errno::from_wsa)?;
    ps.nonblocking.store(on, Ordering::Relaxed);
    Ok(())
}

/// fcntl: the third argument is read as one integer register, which is how the x86-64 and
/// aarch64 C ABIs pass the optional argument of every command that has one.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fcntl(fd: Fd, cmd: c_int, arg: c_ulong) -> c_int {
    let real_fcntl = crate::real!(fcntl: fn(c_int, c_int, ...) -> c_int);
    let Some((st, ps)) = lookup(fd) else {
        // SAFETY: forwarding unchanged.
        return unsafe { real_fcntl(fd, cmd, arg) };
    };
    match cmd {
        libc::F_GETFL => {
            libc::O_RDWR
                | if ps.nonblocking.load(Ordering::Relaxed) {
                    libc::O_NONBLOCK
                } else {
                    0
                }
        }
        libc::F_SETFL => guarded(|| {
            set_nonblocking(st, &ps, arg as c_int & libc::O_NONBLOCK != 0)?;
            Ok(0)
        }) as c_int,
        libc::F_DUPFD | libc::F_DUPFD_CLOEXEC => {
            // SAFETY: forwarding unchanged.
            let new = unsafe { real_fcntl(fd, cmd, arg) };
            if new >= 0 {
                duplicate_into(fd, new);
            }
            new
        }
        // SAFETY: F_GETFD / F_SETFD and the rest apply to the descriptor itself.
        _ => unsafe { real_fcntl(fd, cmd, arg) },
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn fcntl64(fd: Fd, cmd: c_int, arg: c_ulong) -> c_int {
    if stack::table().get(fd).is_none() {
        // SAFETY: forwarding unchanged.
        return unsafe { crate::real!(fcntl64: fn(c_int, c_int, ...) -> c_int)(fd, cmd, arg) };
    }
    // SAFETY: same contract.
    unsafe { fcntl(fd, cmd, arg) }
}

/// ioctl on provider sockets: FIONBIO, FIONREAD (SIOCINQ), SIOCOUTQ, SIOCATMARK (never at a
/// mark: no urgent data is held); anything else is ENOTTY there, as Linux says.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ioctl(fd: Fd, req: c_ulong, arg: *mut c_void) -> c_int {
    let Some((st, ps)) = lookup(fd) else {
        // SAFETY: forwarding unchanged.
        return unsafe { crate::real!(ioctl: fn(c_int, c_ulong, ...) -> c_int)(fd, req, arg) };
    };
    guarded(|| {
        let p = arg as *mut c_int;
        let write = |v: u32| {
            if p.is_null() {
                return Err(libc::EFAULT);
            }
            // SAFETY: non-NULL; these requests write an int.
            unsafe { std::ptr::write_unaligned(p, c_int::try_from(v).unwrap_or(c_int::MAX)) };
            Ok(0)
        };
        let provider_ioctl = |code: u32| {
            let mut n = 0u32;
            st.provider
                .wsp_ioctl(ps.sock, code, &mut n)
                .map_err(crate::errno::from_wsa)?;
            Ok::<u32, i32>(n)
        };
        let stream_listening = || !ps.dgram && ops::listening(&st.provider, &ps);
        match req {
            libc::FIONBIO => {
                if p.is_null() {
                    return Err(libc::EFAULT);
                }
                // SAFETY: non-NULL; FIONBIO takes an int.
                let on = unsafe { std::ptr::read_unaligned(p) } != 0;
                set_nonblocking(st, &ps, on)?;
                Ok(0)
            }
            // Linux: a listener has no queues to measure.
            libc::FIONREAD | libc::TIOCOUTQ if stream_listening() => Err(libc::EINVAL),
            libc::FIONREAD => write(provider_ioctl(provider::socket::options::FIONREAD)?),
            libc::TIOCOUTQ if ps.dgram => write(0),
            libc::TIOCOUTQ => write(provider_ioctl(provider::socket::options::SIOCOUTQ)?),
            SIOCATMARK if !ps.dgram => write(0),
            _ => Err(libc::ENOTTY),
        }
    }) as c_int
}

/// `SIOCATMARK` (linux/sockios.h; the libc crate lacks it).
const SIOCATMARK: c_ulong = 0x8905;

// ------------------------------------------------------------------ poll / select

fn revents(r: &provider::api::Readiness, events: i16) -> i16 {
    let mut out = 0i16;
    if r.readable {
        out |= libc::POLLIN | libc::POLLRDNORM;
    }
    if r.writable {
        out |= libc::POLLOUT | libc::POLLWRNORM;
    }
    if r.peer_closed {
        out |= libc::POLLRDHUP;
    }
    // POLLHUP and POLLERR are reported whether asked for or not.
    let always =
        (if r.hung_up { libc::POLLHUP } else { 0 }) | (if r.error { libc::POLLERR } else { 0 });
    (out & events) | always
}

/// poll over a mixed set: provider readiness computed here, kernel descriptors by the kernel,
/// sleeping in one kernel poll in which each provider socket is its doorbell.
fn poll_mixed(
    fds: &mut [pollfd],
    timeout: Option<Duration>,
    sigmask: *const libc::sigset_t,
) -> R<usize> {
    let real_ppoll = crate::real!(ppoll: fn(*mut pollfd, libc::nfds_t, *const libc::timespec, *const libc::sigset_t) -> c_int);
    let _pass = crate::drive::wait_pass();
    let provs: Vec<(usize, Arc<ProvSock>)> = fds
        .iter()
        .enumerate()
        .filter_map(|(i, p)| stack::table().get(p.fd).map(|s| (i, s)))
        .collect();
    let st = stack::get().ok_or(libc::EBADF)?;
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut kernel: Vec<pollfd> = fds.to_vec();
    // The AF_XDP descriptors too, after the caller's: a frame wakes this thread, which then
    // receives it itself (`drive`).
    let drive = crate::drive::get();
    if let Some(d) = drive {
        kernel.extend(d.xsk_fds().iter().map(|&fd| pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        }));
    }
    loop {
        if let Some(d) = drive {
            d.assist();
        }
        for (_, ps) in &provs {
            real::drain(ps.doorbell.fd);
        }
        let mut computed = vec![0i16; provs.len()];
        let mut any = false;
        for (k, (i, ps)) in provs.iter().enumerate() {
            loop {
                let (seen, r) = ops::readiness(&st.provider, ps);
                computed[k] = revents(&r, fds[*i].events);
                if computed[k] != 0 {
                    any = true;
                    break;
                }
                let waker = std::task::Waker::from(ps.doorbell.clone());
                if st.provider.watch(ps.sock, seen, &waker).unwrap_or(true) {
                    break;
                }
            }
        }
        for (k, (i, _)) in provs.iter().enumerate() {
            kernel[*i].events = libc::POLLIN;
            let _ = k;
        }
        let wait_ms = if any {
            0
        } else {
            match deadline {
                None => -1,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    c_int::try_from(
                        left.as_millis()
                            .div_ceil(1)
                            .max(u128::from(!left.is_zero())),
                    )
                    .unwrap_or(c_int::MAX)
                }
            }
        };
        for p in kernel.iter_mut() {
            p.revents = 0;
        }
        let ts = (wait_ms >= 0).then(|| libc::timespec {
            tv_sec: libc::time_t::from(wait_ms / 1000),
            tv_nsec: libc::c_long::from(wait_ms % 1000) * 1_000_000,
        });
        let tsp = ts
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        let _waiting = drive.filter(|_| wait_ms != 0).map(|d| d.waiting());
        // SAFETY: `kernel` is a live array of `len` pollfds; `tsp` is NULL or a live local; the
        // signal mask is the caller's (NULL or valid, as ppoll requires).
        let n = unsafe {
            real_ppoll(
                kernel.as_mut_ptr(),
                kernel.len() as libc::nfds_t,
                tsp,
                sigmask,
            )
        };
        if n < 0 {
            return Err(real::errno());
        }
        let mut count = 0;
        let mut is_prov = vec![false; fds.len()];
        for (k, (i, _)) in provs.iter().enumerate() {
            is_prov[*i] = true;
            fds[*i].revents = computed[k];
        }
        for (i, p) in fds.iter_mut().enumerate() {
            if !is_prov[i] {
                p.revents = kernel[i].revents;
            }
            if p.revents != 0 {
                count += 1;
            }
        }
        if count > 0 || any {
            return Ok(count);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(0);
        }
        // Only doorbells rang: compute again.
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn poll(fds: *mut pollfd, n: libc::nfds_t, timeout: c_int) -> c_int {
    crate::drive::release_kicks();
    let real_poll = crate::real!(poll: fn(*mut pollfd, libc::nfds_t, c_int) -> c_int);
    if stack::table().is_empty() || n == 0 || fds.is_null() {
        // SAFETY: forwarding unchanged.
        return unsafe { real_poll(fds, n, timeout) };
    }
    // SAFETY: the caller passed `n` pollfds at `fds` (non-NULL).
    let set = unsafe { std::slice::from_raw_parts_mut(fds, n as usize) };
    if !set.iter().any(|p| stack::table().get(p.fd).is_some()) {
        // SAFETY: forwarding unchanged.
        return unsafe { real_poll(fds, n, timeout) };
    }
    let t = u64::try_from(timeout).ok().map(Duration::from_millis);
    guarded(|| poll_mixed(set, t, std::ptr::null()).map(|c| c as isize)) as c_int
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn __poll_chk(
    fds: *mut pollfd,
    n: libc::nfds_t,
    timeout: c_int,
    fdslen: usize,
) -> c_int {
    if (n as usize).saturating_mul(std::mem::size_of::<pollfd>()) > fdslen {
        // SAFETY: libc's own check, which aborts.
        return unsafe {
            crate::real!(__poll_chk: fn(*mut pollfd, libc::nfds_t, c_int, usize) -> c_int)(
                fds, n, timeout, fdslen,
            )
        };
    }
    // SAFETY: same contract as poll.
    unsafe { poll(fds, n, timeout) }
}

/// A `struct timespec` timeout: None for NULL (wait forever), EINVAL if negative or not
/// normalised, as the kernel says.
fn timespec_timeout(t: *const libc::timespec) -> R<Option<Duration>> {
    if t.is_null() {
        return Ok(None);
    }
    // SAFETY: non-NULL; the caller's timespec.
    let t = unsafe { *t };
    if t.tv_sec < 0 || !(0..1_000_000_000).contains(&t.tv_nsec) {
        return Err(libc::EINVAL);
    }
    Ok(Some(
        Duration::from_secs(t.tv_sec as u64) + Duration::from_nanos(t.tv_nsec as u64),
    ))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ppoll(
    fds: *mut pollfd,
    n: libc::nfds_t,
    tmo: *const libc::timespec,
    sigmask: *const libc::sigset_t,
) -> c_int {
    let real_ppoll = crate::real!(ppoll: fn(*mut pollfd, libc::nfds_t, *const libc::timespec, *const libc::sigset_t) -> c_int);
    crate::drive::release_kicks();
    if stack::table().is_empty() || n == 0 || fds.is_null() {
        // SAFETY: forwarding unchanged.
        return unsafe { real_ppoll(fds, n, tmo, sigmask) };
    }
    // SAFETY: the caller passed `n` pollfds at `fds` (non-NULL).
    let set = unsafe { std::slice::from_raw_parts_mut(fds, n as usize) };
    if !set.iter().any(|p| stack::table().get(p.fd).is_some()) {
        // SAFETY: forwarding unchanged.
        return unsafe { real_ppoll(fds, n, tmo, sigmask) };
    }
    guarded(|| {
        let t = timespec_timeout(tmo)?;
        poll_mixed(set, t, sigmask).map(|c| c as isize)
    }) as c_int
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn select(
    nfds: c_int,
    r: *mut libc::fd_set,
    w: *mut libc::fd_set,
    e: *mut libc::fd_set,
    tv: *mut libc::timeval,
) -> c_int {
    let timeout = || {
        if tv.is_null() {
            return Ok(None);
        }
        // SAFETY: non-NULL; the caller's timeval.
        let t = unsafe { *tv };
        if t.tv_sec < 0 || t.tv_usec < 0 {
            return Err(libc::EINVAL);
        }
        Ok(Some(
            Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64),
        ))
    };
    let start = Instant::now();
    // SAFETY: the caller's select arguments, checked by `select_mixed`.
    match unsafe { select_mixed(nfds, r, w, e, timeout, std::ptr::null()) } {
        Some(n) => {
            if !tv.is_null() && (n >= 0 || real::errno() == libc::EINTR) {
                // Linux's select writes back the time it did not sleep (pselect does not).
                // SAFETY: non-NULL; the caller's timeval, read above.
                let t = unsafe { &mut *tv };
                let given = Duration::from_secs(t.tv_sec.max(0) as u64)
                    + Duration::from_micros(t.tv_usec.max(0) as u64);
                let left = given.saturating_sub(start.elapsed());
                t.tv_sec = left.as_secs() as libc::time_t;
                t.tv_usec = libc::suseconds_t::from(left.subsec_micros() as i32);
            }
            n
        }
        // SAFETY: forwarding unchanged.
        None => unsafe {
            crate::real!(select: fn(c_int, *mut libc::fd_set, *mut libc::fd_set, *mut libc::fd_set, *mut libc::timeval) -> c_int)(
                nfds, r, w, e, tv,
            )
        },
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn pselect(
    nfds: c_int,
    r: *mut libc::fd_set,
    w: *mut libc::fd_set,
    e: *mut libc::fd_set,
    tmo: *const libc::timespec,
    sigmask: *const libc::sigset_t,
) -> c_int {
    // SAFETY: the caller's pselect arguments, checked by `select_mixed`.
    match unsafe { select_mixed(nfds, r, w, e, || timespec_timeout(tmo), sigmask) } {
        Some(n) => n,
        // SAFETY: forwarding unchanged.
        None => unsafe {
            crate::real!(pselect: fn(c_int, *mut libc::fd_set, *mut libc::fd_set, *mut libc::fd_set, *const libc::timespec, *const libc::sigset_t) -> c_int)(
                nfds, r, w, e, tmo, sigmask,
            )
        },
    }
}

/// select/pselect over sets holding a provider socket; None when they hold none (forward).
///
/// # Safety
/// The fd_set pointers are NULL or the caller's sets, as select(2) requires.
unsafe fn select_mixed(
    nfds: c_int,
    r: *mut libc::fd_set,
    w: *mut libc::fd_set,
    e: *mut libc::fd_set,
    timeout: impl FnOnce() -> R<Option<Duration>>,
    sigmask: *const libc::sigset_t,
) -> Option<c_int> {
    crate::drive::release_kicks();
    if stack::table().is_empty() || !(0..=libc::FD_SETSIZE as c_int).contains(&nfds) {
        return None;
    }
    // SAFETY: FD_ISSET on the caller's sets (NULL sets are skipped).
    let isset = |s: *mut libc::fd_set, fd: c_int| !s.is_null() && unsafe { libc::FD_ISSET(fd, s) };
    let mut set = Vec::new();
    let mut any_provider = false;
    for fd in 0..nfds {
        let mut ev = 0;
        if isset(r, fd) {
            ev |= libc::POLLIN;
        }
        if isset(w, fd) {
            ev |= libc::POLLOUT;
        }
        if isset(e, fd) {
            ev |= libc::POLLPRI;
        }
        if ev != 0 {
            any_provider |= stack::table().get(fd).is_some();
            set.push(pollfd {
                fd,
                events: ev,
                revents: 0,
            });
        }
    }
    if !any_provider {
        return None;
    }
    let res = guarded(|| poll_mixed(&mut set, timeout()?, sigmask).map(|c| c as isize));
    if res < 0 {
        return Some(-1);
    }
    let mut count = 0;
    // SAFETY: FD_ZERO / FD_SET on the caller's non-NULL sets.
    unsafe {
        for s in [r, w, e] {
            if !s.is_null() {
                libc::FD_ZERO(s);
            }
        }
        for p in &set {
            let bad = p.revents & (libc::POLLERR | libc::POLLHUP) != 0;
            if !r.is_null()
                && p.events & libc::POLLIN != 0
                && (p.revents & libc::POLLIN != 0 || bad)
            {
                libc::FD_SET(p.fd, r);
                count += 1;
            }
            if !w.is_null()
                && p.events & libc::POLLOUT != 0
                && (p.revents & libc::POLLOUT != 0 || p.revents & libc::POLLERR != 0)
            {
                libc::FD_SET(p.fd, w);
                count += 1;
            }
            if !e.is_null() && p.events & libc::POLLPRI != 0 && p.revents & libc::POLLPRI != 0 {
                libc::FD_SET(p.fd, e);
                count += 1;
            }
        }
    }
    Some(count)
}

// ------------------------------------------------------------------ epoll

#[unsafe(no_mangle)]
pub unsafe extern "C" fn epoll_ctl(
    epfd: Fd,
    op: c_int,
    fd: Fd,
    ev: *mut libc::epoll_event,
) -> c_int {
    let Some((_, ps)) = lookup(fd) else {
        // SAFETY: forwarding unchanged.
        return unsafe {
            crate::real!(epoll_ctl: fn(c_int, c_int, c_int, *mut libc::epoll_event) -> c_int)(
                epfd, op, fd, ev,
            )
        };
    };
    guarded(|| {
        let e = if ev.is_null() {
            None
        } else {
            // SAFETY: non-NULL; the caller's epoll_event.
            Some(unsafe { std::ptr::read_unaligned(ev) })
        };
        if e.is_none() && op != libc::EPOLL_CTL_DEL {
            return Err(libc::EFAULT);
        }
        crate::epoll::ctl(epfd, op, fd, ps, e)?;
        Ok(0)
    }) as c_int
}

fn epoll_wait_common(
    epfd: Fd,
    events: *mut libc::epoll_event,
    max: c_int,
    timeout: R<Option<Duration>>,
    sigmask: *const libc::sigset_t,
) -> Option<c_int> {
    crate::drive::release_kicks();
    if !crate::epoll::any() {
        return None;
    }
    if max <= 0 {
        set_errno(libc::EINVAL);
        return Some(-1);
    }
    if events.is_null() {
        set_errno(libc::EFAULT);
        return Some(-1);
    }
    // SAFETY: the caller passed room for `max` events.
    let out = unsafe { std::slice::from_raw_parts_mut(events, max as usize) };
    let t = match timeout {
        Ok(t) => t,
        Err(e) => {
            set_errno(e);
            return Some(-1);
        }
    };
    let r = crate::epoll::wait(epfd, out, t, sigmask)?;
    Some(guarded(|| r.map(|n| n as isize)) as c_int)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn epoll_wait(
    epfd: Fd,
    events: *mut libc::epoll_event,
    max: c_int,
    timeout: c_int,
) -> c_int {
    match epoll_wait_common(epfd, events, max, Ok(ms_timeout(timeout)), std::ptr::null()) {
        Some(r) => r,
        // SAFETY: forwarding unchanged.
        None => unsafe {
            crate::real!(epoll_wait: fn(c_int, *mut libc::epoll_event, c_int, c_int) -> c_int)(
                epfd, events, max, timeout,
            )
        },
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn epoll_pwait(
    epfd: Fd,
    events: *mut libc::epoll_event,
    max: c_int,
    timeout: c_int,
    sigmask: *const libc::sigset_t,
) -> c_int {
    match epoll_wait_common(epfd, events, max, Ok(ms_timeout(timeout)), sigmask) {
        Some(r) => r,
        // SAFETY: forwarding unchanged.
        None => unsafe {
            crate::real!(epoll_pwait: fn(c_int, *mut libc::epoll_event, c_int, c_int, *const libc::sigset_t) -> c_int)(
                epfd, events, max, timeout, sigmask,
            )
        },
    }
}

/// A poll-style timeout in ms: negative waits forever.
fn ms_timeout(ms: c_int) -> Option<Duration> {
    u64::try_from(ms).ok().map(Duration::from_millis)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn epoll_pwait2(
    epfd: Fd,
    events: *mut libc::epoll_event,
    max: c_int,
    tmo: *const libc::timespec,
    sigmask: *const libc::sigset_t,
) -> c_int {
    match epoll_wait_common(epfd, events, max, timespec_timeout(tmo), sigmask) {
        Some(r) => r,
        // SAFETY: forwarding unchanged.
        None => unsafe {
            crate::real!(epoll_pwait2: fn(c_int, *mut libc::epoll_event, c_int, *const libc::timespec, *const libc::sigset_t) -> c_int)(
                epfd, events, max, tmo, sigmask,
            )
        },
    }
}
