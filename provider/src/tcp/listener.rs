//! Listening endpoints: a bounded SYN queue (half-open connections, SYN_RECEIVED) and a bounded
//! accept queue (established, not yet accepted).
//!
//! Overflow policy: a SYN that finds the accept queue full (`backlog` entries), or the engine-wide
//! SYN queue full (`TcpConfig::syn_backlog` half-open connections), is answered with
//! `RST|ACK <SEQ=0><ACK=SEG.SEQ+1>` at once, so the client fails fast with ECONNREFUSED rather than
//! retrying into a full queue (no SYN cookies). A handshake that completes while the accept
//! queue is (again) full is reset as well.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;

use super::types::ConnId;

#[derive(Debug)]
pub(crate) struct Listener {
    pub(crate) local: SocketAddr,
    pub(crate) backlog: usize,
    /// Half-open connections (SYN_RECEIVED) owned by this listener.
    pub(crate) syn_queue: HashSet<ConnId>,
    /// Established connections waiting for `accept`.
    pub(crate) accept_queue: VecDeque<ConnId>,
}

impl Listener {
    pub(crate) fn new(local: SocketAddr, backlog: usize) -> Self {
        Self {
            local,
            backlog: backlog.max(1),
            syn_queue: HashSet::new(),
            accept_queue: VecDeque::new(),
        }
    }

    /// Whether a new SYN may be taken, given the engine-wide half-open count and bound.
    pub(crate) fn admits_syn(&self, half_open: usize, syn_backlog: usize) -> bool {
        self.accept_queue.len() < self.backlog && half_open < syn_backlog
    }

    /// Moves a completed handshake from the SYN queue to the accept queue; false if full.
    pub(crate) fn complete(&mut self, id: ConnId) -> bool {
        self.syn_queue.remove(&id);
        if self.accept_queue.len() >= self.backlog {
            return false;
        }
        self.accept_queue.push_back(id);
        true
    }

    /// Forgets a connection that died before it was accepted.
    pub(crate) fn forget(&mut self, id: ConnId) {
        self.syn_queue.remove(&id);
        self.accept_queue.retain(|&c| c != id);
    }
}
