//! Memory of a connection's queues: the send and receive byte buffers, the transmit queue, the
//! out-of-order blocks and the queued ACK points (issue 10, "Scale").
//!
//! Every one of them starts empty, with no allocation, and grows on demand (`VecDeque` / `Vec`
//! doubling), up to the bounds the connection sets (SO_SNDBUF, SO_RCVBUF, the reassembly
//! limits) — the kernel's autotuning is the anchor: an idle Linux socket holds no skb memory.
//! What this module adds is the way back: once a queue is **empty** and its capacity is above a
//! small floor ([`KEEP_BYTES`]), its allocation is released. So a connection that moved a burst
//! and then went quiet costs what an idle connection costs (≈1.2 KiB plus its socket), not the
//! high-water mark of its buffers; one that trickles small messages keeps its small allocation
//! and does not pay an allocation per message.
//!
//! The owners call [`release_if_empty`] where a queue drains: the receiver after the
//! application reads (`conn/recv.rs`), the sender after an ACK has been processed
//! (`Sender::release_if_drained`, called from `Conn`'s ACK handling), the reassembler after it
//! hands data over, and the receiver when a sent ACK supersedes its queued ACK points.
use std::collections::VecDeque;

/// Capacity (in bytes of elements) an empty queue may keep: room for a few small messages, so
/// request/response traffic of small messages does not allocate per message.
pub(crate) const KEEP_BYTES: usize = 512;

/// A growable queue whose allocation can be given back.
pub(crate) trait Releasable {
    fn is_empty_queue(&self) -> bool;
    /// Capacity in bytes.
    fn capacity_bytes(&self) -> usize;
    fn release(&mut self);
}

impl<T> Releasable for VecDeque<T> {
    fn is_empty_queue(&self) -> bool {
        self.is_empty()
    }
    fn capacity_bytes(&self) -> usize {
        self.capacity() * std::mem::size_of::<T>()
    }
    fn release(&mut self) {
        *self = VecDeque::new();
    }
}

impl<T> Releasable for Vec<T> {
    fn is_empty_queue(&self) -> bool {
        self.is_empty()
    }
    fn capacity_bytes(&self) -> usize {
        self.capacity() * std::mem::size_of::<T>()
    }
    fn release(&mut self) {
        *self = Vec::new();
    }
}

/// Frees `q`'s allocation if it is empty and holds more than [`KEEP_BYTES`]. True if it did.
pub(crate) fn release_if_empty(q: &mut impl Releasable) -> bool {
    if q.is_empty_queue() && q.capacity_bytes() > KEEP_BYTES {
        q.release();
        true
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_queue_above_the_floor_gives_its_memory_back() {
        let mut q: VecDeque<u8> = VecDeque::new();
        assert_eq!(q.capacity(), 0, "nothing allocated up front");
        q.extend(std::iter::repeat_n(7u8, 64 * 1024));
        assert!(!release_if_empty(&mut q), "not while it holds data");
        q.drain(..);
        assert!(
            q.capacity() >= 64 * 1024,
            "VecDeque keeps its capacity by itself"
        );
        assert!(release_if_empty(&mut q));
        assert_eq!(q.capacity(), 0);
        // Small queues keep their allocation: no allocation per small message.
        q.extend([1u8; 100]);
        q.drain(..);
        let cap = q.capacity();
        assert!(cap > 0 && cap <= KEEP_BYTES);
        assert!(!release_if_empty(&mut q));
        assert_eq!(q.capacity(), cap);
        // Vec and element sizes: the floor is in bytes.
        let mut v: Vec<u64> = Vec::with_capacity(KEEP_BYTES / 8 + 1);
        assert!(release_if_empty(&mut v));
        assert_eq!(v.capacity(), 0);
    }

    /// Scenario: a connection receives a 60 KiB burst and sends a 60 KiB reply; once the
    /// application has read everything and the peer has acknowledged everything, the
    /// connection's queues hold (almost) nothing again — back to what a fresh connection
    /// holds, while it stays ESTABLISHED and usable.
    #[test]
    fn a_connection_that_drained_a_burst_holds_no_buffer_memory() {
        use crate::tcp::TcpConfig;
        use crate::tcp::tests::harness::{F_ACK, F_PSH, Harness, PeerOpts, exp, seg};

        let cfg = TcpConfig {
            delayed_ack: std::time::Duration::ZERO,
            ..TcpConfig::default()
        };
        let (mut h, _l, c) = Harness::passive(cfg, PeerOpts::full());
        let fresh = h.engine.buffer_bytes(c).unwrap();
        assert!(fresh <= KEEP_BYTES, "a fresh connection holds {fresh} B");

        // 60 KiB in, in MSS-sized segments; read it all.
        let mss = 1448usize;
        let total = 42 * mss;
        let mut seq = 1u32;
        while (seq as usize) <= total {
            let n = mss.min(total + 1 - seq as usize);
            h.inject(10, seg(F_ACK | F_PSH).seq(seq).ack(1).len(n));
            seq += n as u32;
        }
        h.drain();
        let peak_rx = h.engine.buffer_bytes(c).unwrap();
        assert!(peak_rx >= total, "received data buffered: {peak_rx} B");
        let mut buf = vec![0u8; total];
        assert_eq!(h.engine.recv(h.now, c, &mut buf), Ok(total));
        let after_read = h.engine.buffer_bytes(c).unwrap();
        assert!(after_read <= KEEP_BYTES, "after the read: {after_read} B");

        // 60 KiB out; the peer acknowledges each flight until everything is acknowledged.
        assert_eq!(h.engine.send(h.now, c, &buf), Ok(total));
        assert!(h.engine.buffer_bytes(c).unwrap() >= total);
        let mut acked = 1u32;
        let mut t = 20;
        while (acked as usize) <= total {
            h.drain();
            let mut end = acked;
            while let Some(s) = h.out.pop_front() {
                end = end.max(s.seq.wrapping_sub(h.iss) + s.payload.len() as u32);
            }
            assert!(end > acked, "the engine sends the rest");
            acked = end;
            t += 1;
            h.inject(t, seg(F_ACK).seq(seq).ack(acked));
        }
        assert_eq!(h.engine.unacked_bytes(c), 0);
        let idle = h.engine.buffer_bytes(c).unwrap();
        assert!(idle <= KEEP_BYTES, "drained and idle: {idle} B held");

        // Still a working connection: a small message goes out, and its buffer is small.
        assert_eq!(h.engine.send(h.now, c, b"ping"), Ok(4));
        h.drain();
        h.expect_now(exp(F_ACK | F_PSH).seq(acked).len(4));
        let small = h.engine.buffer_bytes(c).unwrap();
        println!("fresh {fresh} B, peak {peak_rx} B, idle {idle} B, one small message {small} B");
        assert!(
            small <= 2 * KEEP_BYTES,
            "one small message in flight: {small} B"
        );
    }
}
