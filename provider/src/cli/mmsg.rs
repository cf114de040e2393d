//! `recvmmsg` on a kernel UDP socket: the fastest way the kernel stack delivers datagrams, used
//! as the fair baseline in `bench udp-rx`. The only FFI in the binary.
use std::{net::UdpSocket, os::fd::AsRawFd};

pub struct RecvBatch {
    bufs: Vec<Vec<u8>>,
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers inside iovecs/headers point into `bufs`/`iovecs`, owned by the same
// struct and never shared; moving the struct does not move the heap buffers they point to.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    pub fn new(count: usize, size: usize) -> Self {
        let mut bufs: Vec<Vec<u8>> = (0..count).map(|_| vec![0u8; size]).collect();
        let mut iovecs: Vec<libc::iovec> = bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        let headers = iovecs
            .iter_mut()
            .map(|iov| {
                // SAFETY: mmsghdr is plain old data; all-zero is a valid empty header.
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_iov = iov;
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        Self {
            bufs,
            iovecs,
            headers,
        }
    }

    /// Receive up to a batch of datagrams (waits up to the socket's read timeout); returns how
    /// many arrived.
    pub fn recv(&mut self, sock: &UdpSocket) -> usize {
        debug_assert_eq!(self.bufs.len(), self.iovecs.len());
        // SAFETY: headers point at iovecs that point at live buffers of the stated lengths; the
        // kernel writes at most vlen headers and their buffers.
        let n = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                self.headers.as_mut_ptr(),
                self.headers.len() as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        n.max(0) as usize
    }
}
