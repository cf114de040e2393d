//! [`TcpListener`] and [`TcpStream`] over the provider's TCP engine.
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{Closing, Handle, io_error};
use crate::api::{AF_INET, AF_INET6, IPPROTO_TCP, Provider, SD_SEND, SOCK_STREAM, SOMAXCONN};
use crate::socket::options::{SO_LINGER, SOL_SOCKET, TCP_NODELAY};
use crate::socket::{Linger, Socket, WsaError};

fn af(addr: &SocketAddr) -> i32 {
    if addr.is_ipv4() { AF_INET } else { AF_INET6 }
}

/// A listening stream socket. Dropping it closes the socket, which resets every connection
/// still waiting in its accept queue (DESIGN §7).
#[derive(Debug)]
pub struct TcpListener {
    h: Handle,
}

impl TcpListener {
    /// Create, bind and listen (backlog `SOMAXCONN`). Port 0 picks an ephemeral port
    /// ([`local_addr`](Self::local_addr) tells which). Nothing to wait for, so not `async`.
    pub fn bind(provider: &Arc<Provider>, addr: SocketAddr) -> io::Result<Self> {
        Self::bind_with_backlog(provider, addr, SOMAXCONN)
    }

    /// [`bind`](Self::bind) with an explicit backlog.
    pub fn bind_with_backlog(
        provider: &Arc<Provider>,
        addr: SocketAddr,
        backlog: i32,
    ) -> io::Result<Self> {
        let s = provider
            .wsp_socket(af(&addr), SOCK_STREAM, IPPROTO_TCP)
            .map_err(io_error)?;
        let h = Handle::new(provider, s)?;
        h.call(|p, s| p.wsp_bind(s, addr))?;
        h.call(|p, s| p.wsp_listen(s, backlog))?;
        Ok(TcpListener { h })
    }

    /// The next established connection and its peer. Accepted streams start with the
    /// listener's options (TCP_NODELAY, SO_LINGER, …) and nonblocking.
    pub async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        poll_fn(|cx| self.poll_accept(cx)).await
    }

    /// Poll for the next connection (wakes the task when one is ready).
    pub fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(TcpStream, SocketAddr)>> {
        let (s, peer) = ready!(self.h.poll_io(cx, |p, s| p.wsp_accept(s)))?;
        Poll::Ready(Ok((
            TcpStream::from_handle(Handle::new(&self.h.provider, s)?),
            peer,
        )))
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.h.call(|p, s| p.wsp_get_sock_name(s))
    }

    /// The provider this listener runs on.
    pub fn provider(&self) -> &Arc<Provider> {
        &self.h.provider
    }

    /// The WSP handle (nonblocking; owned by this listener — do not close it).
    pub fn as_raw_socket(&self) -> Socket {
        self.h.socket
    }
}

/// The state the halves of a stream share; the socket closes when the last one goes.
#[derive(Debug)]
struct Shared {
    h: Handle,
    /// SD_SEND done (a second `poll_shutdown` is a no-op, as for tokio).
    write_shut: AtomicBool,
}

impl Shared {
    fn poll_read(&self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        // Zeroes the unfilled part once per buffer (tokio tracks what is initialised); the
        // engine then copies straight from its receive buffer into it.
        let dst = buf.initialize_unfilled();
        let n = ready!(self.h.poll_io(cx, |p, s| p.wsp_recv(s, dst)))?;
        buf.advance(n);
        Poll::Ready(Ok(()))
    }

    fn poll_write(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        self.h.poll_io(cx, |p, s| p.wsp_send(s, buf))
    }

    fn poll_write_vectored(
        &self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // As many slices as fit now; pending only if not a byte fits.
        let mut done = 0;
        for b in bufs.iter().filter(|b| !b.is_empty()) {
            let r = if done == 0 {
                ready!(self.poll_write(cx, b))
            } else {
                match self.h.call(|p, s| p.wsp_send(s, b)) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    r => r,
                }
            };
            match r {
                Ok(n) => {
                    done += n;
                    if n < b.len() {
                        break;
                    }
                }
                Err(e) if done == 0 => return Poll::Ready(Err(e)),
                Err(_) => break,
            }
        }
        Poll::Ready(Ok(done))
    }

    fn shutdown(&self) -> io::Result<()> {
        if self.write_shut.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.h.call(|p, s| p.wsp_shutdown(s, SD_SEND))
    }
}

/// A connected stream socket: `AsyncRead + AsyncWrite`. Writes complete once the bytes are in
/// the socket's send buffer (flush is a no-op); `poll_shutdown` is SD_SEND (FIN after queued
/// data). Dropping it follows its linger setting (see the module docs).
#[derive(Debug)]
pub struct TcpStream {
    shared: Arc<Shared>,
}

impl TcpStream {
    fn from_handle(h: Handle) -> Self {
        TcpStream {
            shared: Arc::new(Shared {
                h,
                write_shut: AtomicBool::new(false),
            }),
        }
    }

    /// Connect to `addr` (binding an ephemeral port first). Dropping the future mid-handshake
    /// closes the socket.
    pub async fn connect(provider: &Arc<Provider>, addr: SocketAddr) -> io::Result<Self> {
        let s = provider
            .wsp_socket(af(&addr), SOCK_STREAM, IPPROTO_TCP)
            .map_err(io_error)?;
        let h = Handle::new(provider, s)?;
        match h.provider.wsp_connect(s, addr) {
            Ok(()) | Err(WsaError::WSAEWOULDBLOCK) => {}
            Err(e) => return Err(io_error(e)),
        }
        // Nonblocking connect: WSAEALREADY while the handshake runs, WSAEISCONN once done.
        poll_fn(|cx| {
            h.poll_io(cx, |p, s| match p.wsp_connect(s, addr) {
                Err(WsaError::WSAEALREADY) => Err(WsaError::WSAEWOULDBLOCK),
                Err(WsaError::WSAEISCONN) => Ok(()),
                r => r,
            })
        })
        .await?;
        Ok(Self::from_handle(h))
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.shared.h.call(|p, s| p.wsp_get_peer_name(s))
    }

    /// The local address of the connection.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.shared.h.call(|p, s| p.wsp_get_sock_name(s))
    }

    /// TCP_NODELAY.
    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        let v = i32::from(nodelay).to_ne_bytes();
        self.shared
            .h
            .call(|p, s| p.wsp_set_sock_opt(s, IPPROTO_TCP, TCP_NODELAY, &v))
    }

    /// TCP_NODELAY.
    pub fn nodelay(&self) -> io::Result<bool> {
        let mut v = [0u8; 4];
        self.shared
            .h
            .call(|p, s| p.wsp_get_sock_opt(s, IPPROTO_TCP, TCP_NODELAY, &mut v))?;
        Ok(i32::from_ne_bytes(v) != 0)
    }

    /// SO_LINGER, as drop will apply it: `None` (default) → graceful close; `Some(ZERO)` →
    /// hard close (RST); `Some(d)` → wait up to `d` (whole seconds, rounded up, at most
    /// 65535) for every byte and the FIN to be acknowledged, then RST — on a separate thread.
    pub fn set_linger(&self, linger: Option<Duration>) -> io::Result<()> {
        let l = match linger {
            None => Linger::default(),
            Some(d) => {
                let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
                Linger {
                    l_onoff: 1,
                    l_linger: u16::try_from(secs).unwrap_or(u16::MAX),
                }
            }
        };
        self.shared
            .h
            .call(|p, s| p.wsp_set_sock_opt(s, SOL_SOCKET, SO_LINGER, &l.to_bytes()))
    }

    /// SO_LINGER (see [`set_linger`](Self::set_linger)).
    pub fn linger(&self) -> io::Result<Option<Duration>> {
        let mut v = [0u8; 4];
        self.shared
            .h
            .call(|p, s| p.wsp_get_sock_opt(s, SOL_SOCKET, SO_LINGER, &mut v))?;
        let l = Linger::from_bytes(&v).map_err(io_error)?;
        Ok((l.l_onoff != 0).then(|| Duration::from_secs(l.l_linger.into())))
    }

    /// SD_SEND now (FIN after queued data), without going through `AsyncWriteExt::shutdown`.
    pub fn shutdown_write(&self) -> io::Result<()> {
        self.shared.shutdown()
    }

    /// Close now and wait for the outcome, following the linger setting: a timed linger with
    /// data unacknowledged runs the blocking close on the blocking pool and resolves when it
    /// ends (everything acknowledged, or RST after the linger time). `Err` only if the close
    /// itself failed (e.g. WSAENETDOWN: the datapath is down, no FIN/RST could go out).
    pub async fn close(self) -> io::Result<()> {
        let mut shared = match Arc::try_unwrap(self.shared) {
            Ok(s) => s,
            // Split halves still alive: this half just goes; the last one closes.
            Err(_) => return Ok(()),
        };
        match shared.h.close_now() {
            Closing::Done(r) => r.map_err(io_error),
            Closing::Linger(p, s) => tokio::task::spawn_blocking(move || p.wsp_close_socket(s))
                .await
                .map_err(io::Error::other)?
                .map_err(io_error),
        }
    }

    /// Borrowed halves, usable concurrently (e.g. with `tokio::join!`).
    pub fn split(&mut self) -> (ReadHalf<'_>, WriteHalf<'_>) {
        (ReadHalf(&self.shared), WriteHalf(&self.shared))
    }

    /// Owned halves, movable to different tasks. The socket closes (per its linger setting)
    /// when both are gone. Unlike tokio's, dropping the write half does not shut it down: call
    /// `shutdown` for the FIN.
    pub fn into_split(self) -> (OwnedReadHalf, OwnedWriteHalf) {
        (
            OwnedReadHalf(self.shared.clone()),
            OwnedWriteHalf(self.shared),
        )
    }

    /// The provider this stream runs on.
    pub fn provider(&self) -> &Arc<Provider> {
        &self.shared.h.provider
    }

    /// The WSP handle (nonblocking; owned by this stream — do not close it).
    pub fn as_raw_socket(&self) -> Socket {
        self.shared.h.socket
    }
}

impl AsyncRead for TcpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.shared.poll_read(cx, buf)
    }
}

impl AsyncWrite for TcpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.shared.poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.shared.poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.shared.shutdown())
    }
}

macro_rules! halves {
    ($read:ty, $write:ty) => {
        impl AsyncRead for $read {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                self.0.poll_read(cx, buf)
            }
        }

        impl AsyncWrite for $write {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                self.0.poll_write(cx, buf)
            }
            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                self.0.poll_write_vectored(cx, bufs)
            }
            fn is_write_vectored(&self) -> bool {
                true
            }
            fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
            fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(self.0.shutdown())
            }
        }
    };
}

/// The read half of [`TcpStream::split`].
#[derive(Debug)]
pub struct ReadHalf<'a>(&'a Shared);
/// The write half of [`TcpStream::split`].
#[derive(Debug)]
pub struct WriteHalf<'a>(&'a Shared);
/// The read half of [`TcpStream::into_split`].
#[derive(Debug)]
pub struct OwnedReadHalf(Arc<Shared>);
/// The write half of [`TcpStream::into_split`].
#[derive(Debug)]
pub struct OwnedWriteHalf(Arc<Shared>);

halves!(ReadHalf<'_>, WriteHalf<'_>);
halves!(OwnedReadHalf, OwnedWriteHalf);

impl OwnedReadHalf {
    /// Put the stream back together (error: the halves are of different streams).
    pub fn reunite(self, w: OwnedWriteHalf) -> Result<TcpStream, (OwnedReadHalf, OwnedWriteHalf)> {
        if Arc::ptr_eq(&self.0, &w.0) {
            drop(w);
            Ok(TcpStream { shared: self.0 })
        } else {
            Err((self, w))
        }
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.0.h.call(|p, s| p.wsp_get_peer_name(s))
    }
}

impl OwnedWriteHalf {
    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.0.h.call(|p, s| p.wsp_get_peer_name(s))
    }
}
