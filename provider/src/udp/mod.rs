//! UDP: per-socket datagram state and the local-endpoint demultiplexer.
//!
//! Nothing here blocks or sends; the api layer wraps these structures in the per-socket lock
//! and does the waking and the datapath calls.
use std::collections::VecDeque;
use std::net::SocketAddr;

pub mod demux;

pub use demux::UdpDemux;

/// Bytes charged against `SO_RCVBUF` per queued datagram on top of its payload, so that a flood
/// of empty datagrams is bounded too (the queue entry itself costs about this much).
pub const DATAGRAM_OVERHEAD: usize = 64;

/// Default ephemeral port range (the lab reserves it from the kernel with
/// `net.ipv4.ip_local_reserved_ports`).
pub const DEFAULT_EPHEMERAL: std::ops::RangeInclusive<u16> = 61000..=65535;

/// One received datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Datagram {
    pub from: SocketAddr,
    pub payload: Box<[u8]>,
}

/// The receive queue of one socket, bounded in bytes by `SO_RCVBUF`: a datagram is queued if
/// `charged + payload + DATAGRAM_OVERHEAD <= rcvbuf`, else dropped (the caller counts it).
#[derive(Debug, Default)]
pub struct RecvQueue {
    items: VecDeque<Datagram>,
    charged: usize,
}

impl RecvQueue {
    fn cost(len: usize) -> usize {
        len.saturating_add(DATAGRAM_OVERHEAD)
    }

    /// Queue a copy of `payload`; false (and nothing queued) if it would exceed `limit`.
    pub fn push(&mut self, from: SocketAddr, payload: &[u8], limit: usize) -> bool {
        let cost = Self::cost(payload.len());
        if self.charged.saturating_add(cost) > limit {
            return false;
        }
        self.charged += cost;
        self.items.push_back(Datagram {
            from,
            payload: payload.into(),
        });
        true
    }

    /// Take the oldest datagram.
    pub fn pop(&mut self) -> Option<Datagram> {
        let d = self.items.pop_front()?;
        self.charged -= Self::cost(d.payload.len());
        Some(d)
    }

    /// The oldest datagram, left queued (MSG_PEEK).
    pub fn front(&self) -> Option<&Datagram> {
        self.items.front()
    }

    /// Payload size of the oldest datagram (what FIONREAD reports for UDP).
    pub fn front_len(&self) -> Option<usize> {
        self.items.front().map(|d| d.payload.len())
    }

    /// Number of queued datagrams.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Bytes charged against the limit right now.
    pub fn charged(&self) -> usize {
        self.charged
    }

    /// Discard everything (close).
    pub fn clear(&mut self) {
        self.items.clear();
        self.charged = 0;
    }
}

/// The UDP part of a socket.
#[derive(Debug, Default)]
pub struct UdpState {
    /// The bound local endpoint (the wildcard address if bound to it); `None` until bind or the
    /// first send.
    pub local: Option<SocketAddr>,
    pub queue: RecvQueue,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_bounds_and_order() {
        let from: SocketAddr = "198.18.0.2:9".parse().unwrap();
        let mut q = RecvQueue::default();
        let limit = 2 * (10 + DATAGRAM_OVERHEAD);
        assert!(q.push(from, &[1; 10], limit));
        assert!(q.push(from, &[2; 10], limit));
        assert!(!q.push(from, &[], limit));
        assert_eq!(q.len(), 2);
        assert_eq!(q.front_len(), Some(10));
        assert_eq!(q.pop().unwrap().payload[0], 1);
        assert!(q.push(from, &[3; 10], limit));
        assert_eq!(q.pop().unwrap().payload[0], 2);
        assert_eq!(q.pop().unwrap().payload[0], 3);
        assert_eq!(q.charged(), 0);
        assert!(q.pop().is_none());
        assert!(!q.push(from, &[], 0), "SO_RCVBUF 0 queues nothing");
    }
}
