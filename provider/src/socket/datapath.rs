//! The seam between the socket table and the packet path.
//!
//! The socket layer never touches rings: it asks a `Datapath` to steer endpoints and to send
//! datagrams, and the engine calls back into the table (`api::Provider::deliver_udp`) with what
//! arrived. The real implementation is `engine::Engine`; unit tests use an in-memory loopback.
use std::net::{IpAddr, SocketAddr};

use provider_common::SteerKey;

use super::error::WsaError;

/// Where a segment built by a [`Datapath::send_l4_batch`] source goes, and its length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L4Out {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub len: usize,
    /// Where the segment's checksum field is when it holds only the pseudo-header sum (the
    /// source was told [`Datapath::tx_checksum_offload`]): the datapath has the device finish
    /// it, or finishes it itself.
    pub partial_checksum_at: Option<usize>,
}

pub trait Datapath: Send + Sync + 'static {
    /// Start steering frames for this local endpoint to the provider (STEER map insert).
    fn steer_add(&self, key: SteerKey) -> Result<(), WsaError>;
    /// Stop steering this endpoint; frames for it go to the kernel again.
    fn steer_remove(&self, key: SteerKey);
    /// Send one UDP datagram from `src` to `dst`: the datapath builds Ethernet/IP/UDP with
    /// checksums and the next-hop MAC, and puts the frame on a TX ring. Errors: WSAENETDOWN
    /// (datapath stopped), WSAEHOSTUNREACH (no neighbour), WSAENOBUFS (TX ring full),
    /// WSAEMSGSIZE (larger than the MTU allows).
    fn send_udp(&self, src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Result<(), WsaError>;
    /// Queue one IP packet carrying `l4` (a complete transport segment, checksum included) from
    /// `src` to `dst` with protocol `proto`; the datapath adds Ethernet and IP headers. Not
    /// visible on the wire before `flush_tx`. Must not call back into the provider.
    fn send_ip(&self, src: IpAddr, dst: IpAddr, proto: u8, l4: &[u8]) -> Result<(), WsaError>;
    /// `send_ip` from TCP shard `shard`: a datapath with a TX queue per shard sends it there,
    /// so shards never share a TX ring (or its lock).
    fn send_ip_on(
        &self,
        shard: usize,
        src: IpAddr,
        dst: IpAddr,
        proto: u8,
        l4: &[u8],
    ) -> Result<(), WsaError> {
        let _ = shard;
        self.send_ip(src, dst, proto, l4)
    }
    /// Queue the segments `next` produces, from TCP shard `shard`: `next(buf)` writes one
    /// complete `proto` segment (checksum included) at the front of `buf` and says where it
    /// goes, or returns None when it has nothing more. The XDP datapath hands `next` the TX
    /// frame itself, so the segment is written once, in place; this default writes it into
    /// `scratch` and copies it with `send_ip_on`. Returns how many segments were produced. May
    /// stop before `next` is exhausted when the TX ring stays full (what `next` did not produce
    /// stays with it). Not visible before `flush_tx`; must not call back into the provider.
    fn send_l4_batch(
        &self,
        shard: usize,
        proto: u8,
        scratch: &mut [u8],
        next: &mut dyn FnMut(&mut [u8]) -> Option<L4Out>,
    ) -> usize {
        send_l4_copying(self, shard, proto, scratch, next)
    }
    /// Whether segments given to `send_l4_batch` may leave their checksum to the device
    /// ([`L4Out::partial_checksum_at`]). Other sends always carry complete checksums.
    fn tx_checksum_offload(&self) -> bool {
        false
    }
    /// Push every queued packet to the wire.
    fn flush_tx(&self);
    /// A TCP timer earlier than the last one published exists: have the timer thread re-read
    /// `Provider::tcp_next_timeout`.
    fn wake(&self);
    /// As `wake`, for the thread that runs TCP shard `shard` (its timers, and segments other
    /// queues handed to it). Datapaths with one timer thread need not override it.
    fn wake_shard(&self, shard: usize) {
        let _ = shard;
        self.wake();
    }
    /// Addresses of the provider's interface; binding any other specific address is
    /// WSAEADDRNOTAVAIL.
    fn local_addrs(&self) -> Vec<IpAddr>;
    /// Largest UDP payload one frame carries for this family (MTU minus headers).
    fn max_udp_payload(&self, v6: bool) -> usize;
    /// False once the datapath is down (link gone, ring error, provider stopped).
    fn is_up(&self) -> bool;
}

/// [`Datapath::send_l4_batch`] through a scratch buffer and `send_ip_on` (one copy per segment).
pub fn send_l4_copying<D: Datapath + ?Sized>(
    dp: &D,
    shard: usize,
    proto: u8,
    scratch: &mut [u8],
    next: &mut dyn FnMut(&mut [u8]) -> Option<L4Out>,
) -> usize {
    let mut n = 0;
    while let Some(out) = next(scratch) {
        n += 1;
        let l4 = &mut scratch[..out.len];
        if let Some(at) = out.partial_checksum_at {
            crate::net::checksum::finish_partial(l4, at);
        }
        if let Err(err) = dp.send_ip_on(shard, out.src, out.dst, proto, l4) {
            tracing::debug!(%err, dst = %out.dst, "segment not sent");
        }
    }
    n
}
