//! Level-triggered readiness of a socket, and a way to be told when it may have changed: what a
//! `poll`/`select`/`epoll` over provider sockets needs (the preload library, issue 11).
//!
//! The protocol is the [`Signal`](crate::socket::entry::Signal)'s: read the generation, compute
//! readiness, and if nothing wanted is ready register a waker against that generation
//! ([`Provider::watch`]); a refused registration means an event came in between — compute again.

use std::task::Waker;

use super::Provider;
use super::stream::Role;
use crate::socket::entry::Proto;
use crate::socket::{Socket, WspResult};
use crate::tcp::TcpState;

/// What a socket could do without blocking now (POLLIN / POLLOUT / POLLHUP / POLLERR).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Readiness {
    /// A recv (or accept on a listener) would not block: data, a queued connection, the peer's
    /// FIN or an error.
    pub readable: bool,
    /// A send would not block: connected with send-buffer room (a UDP socket always), or an
    /// error that a send would report.
    pub writable: bool,
    /// The peer closed its sending side (POLLRDHUP): FIN received or the connection is gone.
    pub peer_closed: bool,
    /// Both directions are finished (POLLHUP).
    pub hung_up: bool,
    /// A pending error (POLLERR; SO_ERROR reads it).
    pub error: bool,
}

impl Provider {
    /// Readiness of `s` now, with the socket's signal generation read before it was computed
    /// (pass it to [`Provider::watch`]).
    pub fn readiness(&self, s: Socket) -> WspResult<(u64, Readiness)> {
        let e = self.table.get(s)?;
        let seen = e.signal.generation();
        let mut st = e.lock_open()?;
        let mut r = Readiness::default();
        match &mut st.proto {
            Proto::Udp(u) => {
                r.readable = !u.queue.is_empty();
                r.writable = true;
            }
            Proto::Tcp(t) => match t.role {
                Role::Idle => {
                    // Linux: an unconnected stream socket polls as POLLOUT | POLLHUP.
                    r.writable = true;
                    r.hung_up = true;
                }
                Role::Failed(_) => {
                    r.readable = true;
                    r.writable = true;
                    r.error = true;
                    r.hung_up = true;
                }
                Role::Listening(_) => {
                    let listeners = t.listeners.clone();
                    r.readable = listeners.iter().any(|l| {
                        let inner = self.shard_lock(l.shard());
                        inner.engine.accept_pending(*l)
                    });
                }
                Role::Connecting(id) | Role::Connected(id) => {
                    let send_shut = t.send_shut;
                    let inner = self.shard_lock(id.shard());
                    let engine = &inner.engine;
                    let state = engine.state(id);
                    let err = engine.error(id);
                    let fin = matches!(
                        state,
                        Some(
                            TcpState::CloseWait
                                | TcpState::LastAck
                                | TcpState::Closing
                                | TcpState::TimeWait
                                | TcpState::Closed
                        ) | None
                    );
                    let open = matches!(state, Some(TcpState::Established | TcpState::CloseWait));
                    r.error = err.is_some();
                    r.peer_closed = fin || r.error;
                    r.readable = engine.recv_available(id) > 0 || r.peer_closed;
                    r.writable = r.error || (open && !send_shut && engine.send_space(id) > 0);
                    r.hung_up = r.error
                        || matches!(state, Some(TcpState::Closed) | None)
                        || (fin && send_shut);
                }
            },
        }
        Ok((seen, r))
    }

    /// Wake `waker` at the next event on `s`, unless one happened since generation `seen`
    /// (then false: compute readiness again). The waker is woken once and forgotten.
    pub fn watch(&self, s: Socket, seen: u64, waker: &Waker) -> WspResult<bool> {
        let e = self.table.get(s)?;
        Ok(e.signal.register(seen, waker))
    }
}
