//! The seam between the socket table and the packet path.
//!
//! The socket layer never touches rings: it asks a `Datapath` to steer endpoints and to send
//! datagrams, and the engine calls back into the table (`api::Provider::deliver_udp`) with what
//! arrived. The real implementation is `engine::Engine`; unit tests use an in-memory loopback.
use std::net::{IpAddr, SocketAddr};

use provider_common::SteerKey;

use super::error::WsaError;

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
    /// Addresses of the provider's interface; binding any other specific address is
    /// WSAEADDRNOTAVAIL.
    fn local_addrs(&self) -> Vec<IpAddr>;
    /// Largest UDP payload one frame carries for this family (MTU minus headers).
    fn max_udp_payload(&self, v6: bool) -> usize;
    /// False once the datapath is down (link gone, ring error, provider stopped).
    fn is_up(&self) -> bool;
}
