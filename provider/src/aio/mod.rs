//! tokio types over the provider (DESIGN §8, issue 5 item 4): [`TcpListener`], [`TcpStream`]
//! (`AsyncRead + AsyncWrite`, split halves) and [`UdpSocket`], usable from any tokio runtime
//! (current-thread or multi-thread) — they need no reactor of their own.
//!
//! # How they wait
//!
//! Every type owns one WSP handle, switched to nonblocking mode (FIONBIO) when created; accepted
//! sockets inherit it from the listener. A poll reads the socket's [`Signal`] generation, tries
//! the nonblocking WSP call, and on `WSAEWOULDBLOCK` registers the task's waker on the signal
//! *against the generation read before the attempt* ([`Signal::register`]). If an engine event
//! moved the generation in between, registration is refused and the call is retried at once, so
//! no wake-up is lost; otherwise the task sleeps until the engine's next event on that socket
//! (`tcp_event` / `deliver_udp` notify the signal). Nothing spins, and data moves straight
//! between the socket buffers and the caller's buffer (no extra copy).
//!
//! # Who runs the datapath
//!
//! By default the engine's queue threads receive and run the TCP engine, and wake the tasks
//! through their wakers. With [`Drive::Application`](crate::engine::Drive::Application) the
//! runtime itself runs that work: spawn [`drive`] on it (see there) — on a current-thread runtime
//! everything then happens on one thread, with no cross-thread wake-ups.
//!
//! # Drop
//!
//! Dropping a [`TcpStream`] (the last of its halves) closes the socket the way its linger
//! setting says (DESIGN §7): by default gracefully (queued data, then FIN; the peer reads every
//! byte then EOF); with `set_linger(Some(Duration::ZERO))` hard (RST; the peer gets
//! ECONNRESET); with `set_linger(Some(n))`, n > 0, the blocking linger close (wait for every
//! byte and the FIN to be acknowledged, RST after n seconds) runs on a thread of its own, so
//! drop never blocks the runtime. [`TcpStream::close`] does the same and awaits the outcome.
//!
//! [`Signal`]: crate::socket::entry::Signal
//! [`Signal::register`]: crate::socket::entry::Signal::register
mod drive;
mod tcp;
#[cfg(test)]
mod tests;
mod udp;

use std::io;
use std::sync::Arc;
use std::task::{Context, Poll};

pub use drive::drive;
pub use tcp::{OwnedReadHalf, OwnedWriteHalf, ReadHalf, TcpListener, TcpStream, WriteHalf};
pub use udp::UdpSocket;

use crate::api::Provider;
use crate::socket::options::{FIONBIO, SO_LINGER, SOL_SOCKET};
use crate::socket::{Socket, SocketEntry, WsaError, WspResult};

/// A `WsaError` as an `io::Error` of the matching kind; the `WsaError` stays reachable through
/// `io::Error::get_ref` (downcast) for callers that want the Winsock code.
pub fn io_error(e: WsaError) -> io::Error {
    use io::ErrorKind as K;
    let kind = match e {
        WsaError::WSAEWOULDBLOCK => K::WouldBlock,
        WsaError::WSAECONNRESET | WsaError::WSAENETRESET => K::ConnectionReset,
        WsaError::WSAECONNABORTED => K::ConnectionAborted,
        WsaError::WSAECONNREFUSED => K::ConnectionRefused,
        WsaError::WSAETIMEDOUT => K::TimedOut,
        WsaError::WSAENOTCONN => K::NotConnected,
        WsaError::WSAEADDRINUSE => K::AddrInUse,
        WsaError::WSAEADDRNOTAVAIL => K::AddrNotAvailable,
        WsaError::WSAESHUTDOWN => K::BrokenPipe,
        WsaError::WSAEINTR | WsaError::WSA_OPERATION_ABORTED => K::Interrupted,
        WsaError::WSAENETDOWN => K::NetworkDown,
        WsaError::WSAENETUNREACH => K::NetworkUnreachable,
        WsaError::WSAEHOSTUNREACH => K::HostUnreachable,
        WsaError::WSAEINVAL | WsaError::WSAEFAULT | WsaError::WSAEMSGSIZE => K::InvalidInput,
        WsaError::WSAEAFNOSUPPORT | WsaError::WSAEOPNOTSUPP => K::Unsupported,
        WsaError::WSAENOBUFS => K::OutOfMemory,
        _ => K::Other,
    };
    io::Error::new(kind, e)
}

/// The Winsock code inside an `io::Error` made by [`io_error`], if any.
pub fn wsa_error(e: &io::Error) -> Option<WsaError> {
    e.get_ref()?.downcast_ref::<WsaError>().copied()
}

/// One WSP handle plus the socket entry whose signal its tasks wait on.
#[derive(Debug)]
pub(crate) struct Handle {
    pub(crate) provider: Arc<Provider>,
    pub(crate) socket: Socket,
    pub(crate) entry: Arc<SocketEntry>,
    /// False once `close_now` ran (drop then does nothing).
    open: bool,
}

impl Handle {
    /// Wrap `socket` (already created) and switch it to nonblocking mode. On failure the
    /// socket is closed.
    pub(crate) fn new(provider: &Arc<Provider>, socket: Socket) -> io::Result<Self> {
        let setup = || -> WspResult<Arc<SocketEntry>> {
            provider.wsp_ioctl(socket, FIONBIO, &mut 1)?;
            provider.socket_entry(socket)
        };
        match setup() {
            Ok(entry) => Ok(Handle {
                provider: provider.clone(),
                socket,
                entry,
                open: true,
            }),
            Err(e) => {
                let _ = provider.wsp_close_socket(socket);
                Err(io_error(e))
            }
        }
    }

    /// Run the nonblocking `op` until it does not would-block; on would-block register the
    /// task's waker against the generation read before the attempt (see the module docs).
    pub(crate) fn poll_io<T>(
        &self,
        cx: &mut Context<'_>,
        mut op: impl FnMut(&Provider, Socket) -> WspResult<T>,
    ) -> Poll<io::Result<T>> {
        loop {
            let seen = self.entry.signal.generation();
            match op(&self.provider, self.socket) {
                Err(WsaError::WSAEWOULDBLOCK) => {
                    if self.entry.signal.register(seen, cx.waker()) {
                        return Poll::Pending;
                    }
                }
                r => return Poll::Ready(r.map_err(io_error)),
            }
        }
    }

    pub(crate) fn call<T>(
        &self,
        op: impl FnOnce(&Provider, Socket) -> WspResult<T>,
    ) -> io::Result<T> {
        op(&self.provider, self.socket).map_err(io_error)
    }
}

/// How a close went when it could not finish at once.
pub(crate) enum Closing {
    /// Done (the result of `wsp_close_socket`).
    Done(WspResult<()>),
    /// A timed linger with unacknowledged data: the blocking close must run off the runtime.
    Linger(Arc<Provider>, Socket),
}

impl Handle {
    /// Close per the socket's linger setting (DESIGN §7, nonblocking row): graceful, hard, or —
    /// SO_LINGER {1, n > 0} with data still unacknowledged — `Closing::Linger`, after switching
    /// the socket back to blocking mode so the caller can run the blocking linger close.
    pub(crate) fn close_now(&mut self) -> Closing {
        if !std::mem::replace(&mut self.open, false) {
            return Closing::Done(Ok(()));
        }
        match self.provider.wsp_close_socket(self.socket) {
            Err(WsaError::WSAEWOULDBLOCK) => {
                let _ = self.provider.wsp_ioctl(self.socket, FIONBIO, &mut 0);
                Closing::Linger(self.provider.clone(), self.socket)
            }
            r => Closing::Done(r),
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        if let Closing::Linger(p, s) = self.close_now() {
            // The blocking linger close may take up to l_linger seconds: never on the runtime.
            let p2 = p.clone();
            let spawned = std::thread::Builder::new()
                .name("provider-linger".into())
                .spawn(move || {
                    let _ = p2.wsp_close_socket(s);
                });
            if let Err(err) = spawned {
                tracing::warn!(%err, "no thread for a linger close; closing hard");
                let hard = crate::socket::Linger {
                    l_onoff: 1,
                    l_linger: 0,
                };
                let _ = p.wsp_set_sock_opt(s, SOL_SOCKET, SO_LINGER, &hard.to_bytes());
                let _ = p.wsp_close_socket(s);
            }
        }
    }
}
