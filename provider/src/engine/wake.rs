//! Waking the timer thread: an eventfd the queue-0 thread polls beside its AF_XDP socket, so a
//! TCP timer that an application call makes earlier (a delayed ACK, a retransmission) is not
//! late by a whole idle poll. The only FFI in the engine.
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

/// The write end (any thread).
#[derive(Debug)]
pub struct Waker {
    fd: OwnedFd,
}

impl Waker {
    pub fn new() -> io::Result<Self> {
        // SAFETY: eventfd takes no pointers; a non-negative return is a fresh descriptor we own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by eventfd and is owned by nobody else.
        Ok(Self {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Make the next (or current) `wait` return.
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our eventfd; EAGAIN (counter saturated)
        // means a wake-up is pending anyway.
        unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Clear pending wake-ups.
    pub(super) fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from our nonblocking eventfd.
        unsafe { libc::read(self.fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }

    /// Sleep until `xsk` is readable, a wake-up arrives, or `timeout_ms` passes (-1: forever).
    /// Returns whether the AF_XDP socket is readable.
    pub fn wait(&self, xsk: impl AsFd, timeout_ms: i32) -> bool {
        let mut fds = [
            libc::pollfd {
                fd: xsk.as_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds on the stack; poll does not keep the pointer.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms) };
        if n > 0 && fds[1].revents & libc::POLLIN != 0 {
            self.drain();
        }
        n > 0 && fds[0].revents & libc::POLLIN != 0
    }
}

/// `Waker::wait` on several AF_XDP sockets and wakers at once (an application-driven
/// `Driver`); drains the wakers that fired.
pub fn wait_any<F: AsFd>(xsks: &[F], wakers: &[&Waker], timeout_ms: i32) {
    let mut fds: Vec<libc::pollfd> = xsks
        .iter()
        .map(|x| x.as_fd().as_raw_fd())
        .chain(wakers.iter().map(|w| w.fd.as_raw_fd()))
        .map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `fds` is a live array of `fds.len()` pollfds; poll does not keep the pointer.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if n > 0 {
        for (p, w) in fds[xsks.len()..].iter().zip(wakers) {
            if p.revents & libc::POLLIN != 0 {
                w.drain();
            }
        }
    }
}

impl AsFd for Waker {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
