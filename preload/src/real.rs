//! The C library's own functions, behind the ones this library exports (`dlsym(RTLD_NEXT)`),
//! and the few raw system calls the library makes on its own descriptors (doorbells), which
//! must never come back through the interposed entry points.
//!
//! All `unsafe` of symbol lookup lives here.

use std::ffi::{CStr, c_void};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Address of the next definition of `name` after this library (libc's), cached in `slot`.
pub fn resolve(slot: &AtomicUsize, name: &CStr) -> usize {
    let p = slot.load(Ordering::Relaxed);
    if p != 0 {
        return p;
    }
    // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name only reads the loader's tables.
    let p = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) } as usize;
    if p == 0 {
        // Every symbol we interpose is in glibc; without it nothing can be forwarded.
        let msg = b"provider-preload: a libc symbol is missing (dlsym RTLD_NEXT)\n";
        // SAFETY: writing a static buffer to stderr (not `syscall`: that is ours, and looks
        // symbols up here).
        unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
        std::process::abort();
    }
    slot.store(p, Ordering::Relaxed);
    p
}

/// A symbol name literal with its NUL as a `CStr`.
pub fn cstr(s: &'static str) -> &'static CStr {
    CStr::from_bytes_with_nul(s.as_bytes()).expect("symbol literal ends with NUL")
}

/// `real!(name: fn(args) -> ret)` evaluates to libc's `name` as a function pointer.
#[macro_export]
macro_rules! real {
    ($name:ident : fn($($a:ty),* $(,)?) -> $r:ty) => {{
        static SLOT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let p = $crate::real::resolve(
            &SLOT,
            $crate::real::cstr(concat!(stringify!($name), "\0")),
        );
        // SAFETY: `p` is libc's definition of this symbol, whose C signature is the one given.
        #[allow(unused_unsafe)]
        let f = unsafe { std::mem::transmute::<usize, unsafe extern "C" fn($($a),*) -> $r>(p) };
        f
    }};
    ($name:ident : fn($($a:ty),* , ...) -> $r:ty) => {{
        static SLOT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let p = $crate::real::resolve(
            &SLOT,
            $crate::real::cstr(concat!(stringify!($name), "\0")),
        );
        // SAFETY: as above; a variadic C function.
        #[allow(unused_unsafe)]
        let f = unsafe { std::mem::transmute::<usize, unsafe extern "C" fn($($a),* , ...) -> $r>(p) };
        f
    }};
}

/// close(2) without going through the interposed `close`.
pub fn sys_close(fd: i32) {
    // SAFETY: closing a descriptor this library owns.
    unsafe { libc::syscall(libc::SYS_close, fd) };
}

/// dup3(2) without the interposed `dup3`; -1 on error (errno set).
pub fn sys_dup3(old: i32, new: i32, flags: i32) -> i32 {
    // SAFETY: plain descriptor operation.
    unsafe { libc::syscall(libc::SYS_dup3, old, new, flags) as i32 }
}

/// dup(2) without the interposed `dup`, close-on-exec; -1 on error.
pub fn sys_dup_cloexec(fd: i32) -> i32 {
    // SAFETY: plain descriptor operation.
    unsafe { libc::syscall(libc::SYS_fcntl, fd, libc::F_DUPFD_CLOEXEC, 0) as i32 }
}

/// A new nonblocking, close-on-exec eventfd; -1 on error.
pub fn sys_eventfd() -> i32 {
    // SAFETY: creates a descriptor; no memory is passed.
    unsafe {
        libc::syscall(
            libc::SYS_eventfd2,
            0,
            libc::EFD_NONBLOCK | libc::EFD_CLOEXEC,
        ) as i32
    }
}

/// Add 1 to an eventfd (a doorbell ring); a full counter is already readable, so errors are moot.
pub fn ring(fd: i32) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live local to a descriptor this library owns.
    unsafe { libc::syscall(libc::SYS_write, fd, &one as *const u64 as *const c_void, 8) };
}

/// Reset an eventfd to 0 (drain a doorbell).
pub fn drain(fd: i32) {
    let mut v: u64 = 0;
    // SAFETY: reads 8 bytes into a live local; the eventfd is nonblocking.
    unsafe { libc::syscall(libc::SYS_read, fd, &mut v as *mut u64 as *mut c_void, 8) };
}

pub fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

pub fn set_errno(e: i32) {
    // SAFETY: __errno_location returns the calling thread's errno slot.
    unsafe { *libc::__errno_location() = e };
}
