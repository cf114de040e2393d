//! [`UdpSocket`] over the provider's UDP demultiplexer.
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use super::{Handle, io_error};
use crate::api::{AF_INET, AF_INET6, IPPROTO_UDP, Provider, SOCK_DGRAM};
use crate::socket::Socket;

/// A bound datagram socket. Sends never wait (UDP sends are not buffered: the datagram goes to
/// the TX ring or fails, e.g. WSAENOBUFS); receives wait for a datagram.
#[derive(Debug)]
pub struct UdpSocket {
    h: Handle,
}

impl UdpSocket {
    /// Create and bind (port 0: an ephemeral port). Not `async`: nothing to wait for.
    pub fn bind(provider: &Arc<Provider>, addr: SocketAddr) -> io::Result<Self> {
        let af = if addr.is_ipv4() { AF_INET } else { AF_INET6 };
        let s = provider
            .wsp_socket(af, SOCK_DGRAM, IPPROTO_UDP)
            .map_err(io_error)?;
        let h = Handle::new(provider, s)?;
        h.call(|p, s| p.wsp_bind(s, addr))?;
        Ok(UdpSocket { h })
    }

    /// Send one datagram to `to`; returns its length.
    pub async fn send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        poll_fn(|cx| self.poll_send_to(cx, buf, to)).await
    }

    /// Poll form of [`send_to`](Self::send_to) (always ready).
    pub fn poll_send_to(
        &self,
        cx: &mut Context<'_>,
        buf: &[u8],
        to: SocketAddr,
    ) -> Poll<io::Result<usize>> {
        self.h.poll_io(cx, |p, s| p.wsp_send_to(s, buf, to))
    }

    /// The next datagram and its sender. A datagram larger than `buf` is truncated to it (the
    /// rest is discarded, as tokio on Linux does).
    pub async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        poll_fn(|cx| self.poll_recv_from(cx, buf)).await
    }

    /// Poll form of [`recv_from`](Self::recv_from).
    pub fn poll_recv_from(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<(usize, SocketAddr)>> {
        let m = ready!(self.h.poll_io(cx, |p, s| p.wsp_recv_msg(s, buf)))?;
        Poll::Ready(Ok((m.len, m.from)))
    }

    /// The bound address (the wildcard address if bound to it).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.h.call(|p, s| p.wsp_get_sock_name(s))
    }

    /// The provider this socket runs on.
    pub fn provider(&self) -> &Arc<Provider> {
        &self.h.provider
    }

    /// The WSP handle (nonblocking; owned by this socket — do not close it).
    pub fn as_raw_socket(&self) -> Socket {
        self.h.socket
    }
}
