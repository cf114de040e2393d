//! Calls on any descriptor that must see a provider socket as the socket it stands for: its
//! kernel file is the doorbell eventfd, which would answer as an eventfd.
//! * `lseek`/`lseek64`: ESPIPE, as for any socket;
//! * `fstat`/`fstat64`: `S_IFSOCK` (programs such as socket-activation checks ask `S_ISSOCK`).
#![allow(clippy::missing_safety_doc)]

use std::ffi::c_int;

use crate::real::set_errno;
use crate::stack;

fn is_provider(fd: c_int) -> bool {
    !stack::table().is_empty() && stack::table().get(fd).is_some()
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn lseek(fd: c_int, off: libc::off_t, whence: c_int) -> libc::off_t {
    if is_provider(fd) {
        set_errno(libc::ESPIPE);
        return -1;
    }
    // SAFETY: forwarding unchanged.
    unsafe { crate::real!(lseek: fn(c_int, libc::off_t, c_int) -> libc::off_t)(fd, off, whence) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn lseek64(fd: c_int, off: libc::off64_t, whence: c_int) -> libc::off64_t {
    if is_provider(fd) {
        set_errno(libc::ESPIPE);
        return -1;
    }
    // SAFETY: forwarding unchanged.
    unsafe {
        crate::real!(lseek64: fn(c_int, libc::off64_t, c_int) -> libc::off64_t)(fd, off, whence)
    }
}

/// What a socket's fstat shows: the type, and no size.
fn as_socket(mode: &mut libc::mode_t, size: &mut libc::off_t) {
    *mode = libc::S_IFSOCK | 0o777;
    *size = 0;
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn fstat(fd: c_int, st: *mut libc::stat) -> c_int {
    // SAFETY: forwarding unchanged; the kernel checks `st`.
    let r = unsafe { crate::real!(fstat: fn(c_int, *mut libc::stat) -> c_int)(fd, st) };
    if r == 0 && is_provider(fd) {
        // SAFETY: the call succeeded, so `st` is the caller's valid struct stat.
        let st = unsafe { &mut *st };
        as_socket(&mut st.st_mode, &mut st.st_size);
    }
    r
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn fstat64(fd: c_int, st: *mut libc::stat64) -> c_int {
    // SAFETY: forwarding unchanged; the kernel checks `st`.
    let r = unsafe { crate::real!(fstat64: fn(c_int, *mut libc::stat64) -> c_int)(fd, st) };
    if r == 0 && is_provider(fd) {
        // SAFETY: the call succeeded, so `st` is the caller's valid struct stat64.
        let st = unsafe { &mut *st };
        as_socket(&mut st.st_mode, &mut st.st_size);
    }
    r
}
