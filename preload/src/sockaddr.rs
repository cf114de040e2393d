//! `struct sockaddr` in and out of the application's memory. All pointer reads and writes of
//! addresses live here.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// The address at `addr` (`len` bytes), or the errno Linux gives: EFAULT for NULL, EINVAL for a
/// short length, EAFNOSUPPORT for another family.
///
/// # Safety
/// `addr` is NULL or points to `len` readable bytes.
pub unsafe fn read(addr: *const libc::sockaddr, len: libc::socklen_t) -> Result<SocketAddr, i32> {
    if addr.is_null() {
        return Err(libc::EFAULT);
    }
    if (len as usize) < std::mem::size_of::<libc::sa_family_t>() {
        return Err(libc::EINVAL);
    }
    // SAFETY: at least the family field is readable (checked above); unaligned reads throughout.
    let family = unsafe { std::ptr::read_unaligned(addr as *const libc::sa_family_t) };
    match i32::from(family) {
        libc::AF_INET => {
            if (len as usize) < std::mem::size_of::<libc::sockaddr_in>() {
                return Err(libc::EINVAL);
            }
            // SAFETY: `len` covers a sockaddr_in.
            let a = unsafe { std::ptr::read_unaligned(addr as *const libc::sockaddr_in) };
            Ok(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            if (len as usize) < std::mem::size_of::<libc::sockaddr_in6>() {
                return Err(libc::EINVAL);
            }
            // SAFETY: `len` covers a sockaddr_in6.
            let a = unsafe { std::ptr::read_unaligned(addr as *const libc::sockaddr_in6) };
            Ok(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                u32::from_be(a.sin6_flowinfo),
                a.sin6_scope_id,
            )))
        }
        _ => Err(libc::EAFNOSUPPORT),
    }
}

/// The address at `addr` for a socket of `family`, with Linux's checks in Linux's order: EFAULT
/// for NULL, EINVAL for a length short of the socket's own sockaddr, EAFNOSUPPORT for an
/// address of another family.
///
/// # Safety
/// As [`read`].
pub unsafe fn read_for(
    family: i32,
    addr: *const libc::sockaddr,
    len: libc::socklen_t,
) -> Result<SocketAddr, i32> {
    if addr.is_null() {
        return Err(libc::EFAULT);
    }
    let least = if family == libc::AF_INET6 {
        // SIN6_LEN_RFC2133: the sockaddr_in6 without its scope id.
        24
    } else {
        std::mem::size_of::<libc::sockaddr_in>()
    };
    if (len as usize) < least {
        return Err(libc::EINVAL);
    }
    // SAFETY: `len` covers the family field (checked above).
    let got = unsafe { std::ptr::read_unaligned(addr as *const libc::sa_family_t) };
    if i32::from(got) != family {
        return Err(libc::EAFNOSUPPORT);
    }
    // SAFETY: as the caller promised.
    unsafe { read(addr, len) }
}

/// Write `a` to `addr` / `*len` as accept/getsockname/recvfrom do: truncated to the caller's
/// length, `*len` set to the full size. NULL `addr` (with NULL `len`) writes nothing.
///
/// # Safety
/// `addr` and `len` are NULL or valid for writes (`*len` bytes at `addr`).
pub unsafe fn write(
    a: SocketAddr,
    addr: *mut libc::sockaddr,
    len: *mut libc::socklen_t,
) -> Result<(), i32> {
    if addr.is_null() {
        return Ok(());
    }
    if len.is_null() {
        return Err(libc::EFAULT);
    }
    // SAFETY: `len` is non-NULL and the caller's.
    let room = unsafe { std::ptr::read_unaligned(len) } as usize;
    if (room as i32) < 0 {
        return Err(libc::EINVAL);
    }
    let mut buf = [0u8; std::mem::size_of::<libc::sockaddr_in6>()];
    let full = match a {
        SocketAddr::V4(v4) => {
            let s = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*v4.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            let n = std::mem::size_of::<libc::sockaddr_in>();
            // SAFETY: `buf` is larger than a sockaddr_in.
            unsafe { std::ptr::write_unaligned(buf.as_mut_ptr() as *mut libc::sockaddr_in, s) };
            n
        }
        SocketAddr::V6(v6) => {
            let s = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo().to_be(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            let n = std::mem::size_of::<libc::sockaddr_in6>();
            // SAFETY: `buf` is exactly a sockaddr_in6.
            unsafe { std::ptr::write_unaligned(buf.as_mut_ptr() as *mut libc::sockaddr_in6, s) };
            n
        }
    };
    // SAFETY: the caller's buffer holds `room` bytes; we copy at most that.
    unsafe {
        std::ptr::copy_nonoverlapping(buf.as_ptr(), addr as *mut u8, room.min(full));
        std::ptr::write_unaligned(len, full as libc::socklen_t);
    }
    Ok(())
}
