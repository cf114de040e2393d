//! Thin, checked wrappers over the AF_XDP socket system calls (no ring or UMEM memory here).
use std::io;
use std::mem::{MaybeUninit, size_of};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr;

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// A new, unbound AF_XDP socket (close-on-exec).
pub(crate) fn xdp_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain system call with constant arguments; a non-negative result is a fresh fd
    // that nothing else owns, so `OwnedFd` may take it.
    let fd = cvt(unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: see above.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `setsockopt(SOL_XDP, opt, value)` for any plain-data value.
pub(crate) fn set_xdp_opt<T: Copy>(
    fd: BorrowedFd<'_>,
    opt: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: `value` is a live, initialised `T` of exactly the length passed; the kernel only
    // reads it.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            opt,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// `getsockopt(SOL_XDP, opt)` into a zero-initialised `T`; returns the value and the length the
/// kernel wrote (older kernels write shorter, older versions of some structs).
///
/// `T` must be a plain C struct for which all-zero bytes are a valid value (libc's XDP structs).
/// `setsockopt(SOL_SOCKET, opt, value)` for an `int` option.
pub(crate) fn set_socket_int(
    fd: BorrowedFd<'_>,
    opt: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `value` is a live c_int of exactly the length passed; the kernel only reads it.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

pub(crate) fn get_xdp_opt<T: Copy>(fd: BorrowedFd<'_>, opt: libc::c_int) -> io::Result<(T, usize)> {
    let mut value = MaybeUninit::<T>::zeroed();
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: the buffer is `len` writable bytes; the kernel writes at most `len` bytes and
    // updates `len`.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            opt,
            value.as_mut_ptr().cast(),
            &mut len,
        )
    })?;
    // SAFETY: the buffer started all-zero, which callers guarantee is a valid `T` (integer-only C
    // structs), and the kernel only overwrote bytes with more integer data.
    Ok((unsafe { value.assume_init() }, len as usize))
}

/// `bind` to (ifindex, queue) with the given `XDP_*` bind flags.
pub(crate) fn bind(fd: BorrowedFd<'_>, ifindex: u32, queue: u32, flags: u16) -> io::Result<()> {
    let addr = libc::sockaddr_xdp {
        sxdp_family: libc::AF_XDP as u16,
        sxdp_flags: flags,
        sxdp_ifindex: ifindex,
        sxdp_queue_id: queue,
        sxdp_shared_umem_fd: 0,
    };
    // SAFETY: `addr` is a fully initialised sockaddr_xdp of the length passed.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_xdp).cast(),
            size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// The TX kick: `sendto(fd, NULL, 0, MSG_DONTWAIT, NULL, 0)`.
pub(crate) fn kick_tx(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: a zero-length send with null buffer and address is the documented AF_XDP wake-up;
    // the kernel dereferences neither pointer.
    let rc = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            ptr::null(),
            0,
            libc::MSG_DONTWAIT,
            ptr::null(),
            0,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The fill-ring kick: `recvfrom(fd, NULL, 0, MSG_DONTWAIT, NULL, NULL)`.
pub(crate) fn kick_rx(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: zero-length receive with null buffer and address; the kernel writes nothing.
    let rc = unsafe {
        libc::recvfrom(
            fd.as_raw_fd(),
            ptr::null_mut(),
            0,
            libc::MSG_DONTWAIT,
            ptr::null_mut(),
            ptr::null_mut(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `poll` one fd; returns the revents (0 on timeout). `timeout_ms < 0` waits forever.
pub(crate) fn poll_one(fd: BorrowedFd<'_>, events: i16, timeout_ms: i32) -> io::Result<i16> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd, count 1.
        let rc = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if rc >= 0 {
            return Ok(pfd.revents);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
