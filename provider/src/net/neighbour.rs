//! Next-hop MACs and interface facts from the kernel over rtnetlink (DESIGN §4).
//!
//! ARP and ND stay with the kernel: the provider reads the kernel's neighbour table and, when an
//! entry is missing, asks the kernel to resolve it, then polls the table. Everything here is control
//! path (synchronous netlink socket, one request at a time), never per packet: callers cache MACs per
//! flow and the [`Neighbours`] cache absorbs repeats.
//!
//! **How resolution is triggered.** [`Neighbours::resolve`] sends `RTM_NEWNEIGH` with
//! `NLM_F_CREATE`, state `NUD_NONE` and the `NTF_USE` flag for the address on our interface. For
//! `NTF_USE` the kernel's `neigh_add` creates the entry if needed and calls `neigh_event_send` on it
//! instead of updating it, which moves a new entry to `INCOMPLETE` and sends the ARP request /
//! neighbour solicitation exactly as if the kernel itself had a packet to send. An existing valid
//! entry is left as it is (no `NLM_F_REPLACE`). This needs `CAP_NET_ADMIN`, which the provider has
//! anyway (XDP, AF_XDP). If the kernel refuses it (e.g. without the capability) we fall back to
//! sending a zero-length UDP datagram to `ip:9` (discard) from an ordinary kernel socket, which
//! also makes the kernel resolve the next hop, but only along its own route choice and it puts a
//! datagram on the wire; hence it is only the fallback.
//!
//! One IPv6 subtlety: a solicitation the kernel starts without a queued packet is sent from the
//! interface's link-local address and is skipped while that address is still tentative (DAD, the
//! first second or two after the link comes up). `resolve` therefore repeats the trigger every
//! 250 ms until its timeout.

use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr as NlAddr, protocols::NETLINK_ROUTE};

/// How long a found MAC is served from the cache before the table is read again.
pub const POSITIVE_TTL: Duration = Duration::from_secs(5);
/// How long "no usable entry" is served from the cache.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(1);
/// While resolving, the trigger is repeated this often (an entry may have gone FAILED).
const RETRIGGER: Duration = Duration::from_millis(250);
/// Longest sleep between two table polls while resolving.
const MAX_POLL: Duration = Duration::from_millis(50);
/// The cache is pruned of expired entries when it grows beyond this.
const CACHE_PRUNE_AT: usize = 1024;

// NUD states whose link-layer address may be used (include/uapi/linux/neighbour.h).
const NUD_USABLE: u16 = 0x02 /* REACHABLE */
    | 0x04 /* STALE */
    | 0x08 /* DELAY */
    | 0x10 /* PROBE */
    | 0x40 /* NOARP */
    | 0x80 /* PERMANENT */;

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

fn family_of(ip: &IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// A synchronous rtnetlink socket doing one request at a time.
struct Rtnl {
    sock: Socket,
    seq: u32,
}

impl Rtnl {
    fn new() -> io::Result<Self> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&NlAddr::new(0, 0))?;
        Ok(Self { sock, seq: 0 })
    }

    /// Sends `msg` and collects the replies: until `NLMSG_DONE` for a dump, until the ACK otherwise
    /// (`NLM_F_ACK` is added to non-dump requests). A netlink error becomes an `io::Error`.
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut hdr = NetlinkHeader::default();
        hdr.flags = NLM_F_REQUEST | flags | if dump { 0 } else { NLM_F_ACK };
        hdr.sequence_number = seq;
        let mut req = NetlinkMessage::new(hdr, NetlinkPayload::from(msg));
        req.finalize();
        let mut buf = vec![0u8; req.buffer_len()];
        req.serialize(&mut buf);
        self.sock.send(&buf, 0)?;

        let mut out = Vec::new();
        loop {
            let (data, _) = self.sock.recv_from_full()?;
            let mut off = 0usize;
            while let Some(head) = data.get(off..off + 4) {
                let len = u32::from_ne_bytes([head[0], head[1], head[2], head[3]]) as usize;
                let Some(raw) = data.get(off..off + len).filter(|_| len >= 16) else {
                    break;
                };
                // Messages are 4-byte aligned within a datagram.
                off += (len + 3) & !3;
                let msg = match NetlinkMessage::<RouteNetlinkMessage>::deserialize(raw) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::debug!("skipping undecodable rtnetlink message: {e}");
                        continue;
                    }
                };
                if msg.header.sequence_number != seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(_) => Err(e.to_io()),
                        };
                    }
                    NetlinkPayload::InnerMessage(m) => out.push(m),
                    _ => {}
                }
            }
        }
    }

    fn link(&mut self, ifindex: u32) -> io::Result<LinkMessage> {
        let mut m = LinkMessage::default();
        m.header.index = ifindex;
        self.request(RouteNetlinkMessage::GetLink(m), 0)?
            .into_iter()
            .find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) if l.header.index == ifindex => Some(l),
                _ => None,
            })
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such interface"))
    }

    /// The addresses of `ifindex` with their prefix lengths and scopes.
    fn addrs(&mut self, ifindex: u32) -> io::Result<Vec<(IpAddr, u8, AddressScope)>> {
        let replies = self.request(
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        for m in replies {
            let RouteNetlinkMessage::NewAddress(a) = m else {
                continue;
            };
            if a.header.index != ifindex {
                continue;
            }
            // IFA_LOCAL is the local address (IFA_ADDRESS is the peer on point-to-point links);
            // IPv6 sends only IFA_ADDRESS.
            let mut local = None;
            let mut address = None;
            for attr in &a.attributes {
                match attr {
                    AddressAttribute::Local(ip) => local = Some(*ip),
                    AddressAttribute::Address(ip) => address = Some(*ip),
                    _ => {}
                }
            }
            if let Some(ip) = local.or(address) {
                out.push((ip, a.header.prefix_len, a.header.scope));
            }
        }
        Ok(out)
    }

    /// The kernel's route to `dst` out of `ifindex`: its gateway, if it has one.
    fn route_gateway(&mut self, ifindex: u32, dst: IpAddr) -> io::Result<Option<IpAddr>> {
        let mut m = RouteMessage::default();
        m.header.address_family = family_of(&dst);
        m.header.destination_prefix_length = if dst.is_ipv4() { 32 } else { 128 };
        m.attributes.push(RouteAttribute::Destination(dst.into()));
        m.attributes.push(RouteAttribute::Oif(ifindex));
        let replies = self.request(RouteNetlinkMessage::GetRoute(m), 0)?;
        for r in replies {
            let RouteNetlinkMessage::NewRoute(r) = r else {
                continue;
            };
            let gw = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Gateway(RouteAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
                RouteAttribute::Gateway(RouteAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
                _ => None,
            });
            return Ok(gw);
        }
        Err(io::Error::new(
            io::ErrorKind::NetworkUnreachable,
            "no route reply",
        ))
    }
}

/// Next-hop MAC resolution through the kernel's neighbour table for one interface.
pub struct Neighbours {
    ifindex: u32,
    rtnl: Rtnl,
    cache: HashMap<IpAddr, (Option<[u8; 6]>, Instant)>,
    /// Next hop per destination: asking rtnetlink for addresses and routes costs tens of
    /// microseconds, far too much per datagram.
    hops: HashMap<IpAddr, (IpAddr, Instant)>,
    /// Whether the last trigger had to use the UDP fallback (see the module doc).
    used_fallback: bool,
}

impl std::fmt::Debug for Neighbours {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Neighbours")
            .field("ifindex", &self.ifindex)
            .field("cached", &self.cache.len())
            .finish()
    }
}

impl Neighbours {
    /// Opens an rtnetlink socket for resolving next hops on interface `ifindex`.
    pub fn new(ifindex: u32) -> io::Result<Self> {
        Ok(Self {
            ifindex,
            rtnl: Rtnl::new()?,
            cache: HashMap::new(),
            hops: HashMap::new(),
            used_fallback: false,
        })
    }

    /// The interface this resolves on.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The MAC of `ip` on our interface if the kernel has a usable entry (REACHABLE, STALE, DELAY,
    /// PROBE, PERMANENT or NOARP). Answers, including "none", are cached briefly
    /// ([`POSITIVE_TTL`], [`NEGATIVE_TTL`]). Does not trigger resolution.
    pub fn lookup(&mut self, ip: IpAddr) -> io::Result<Option<[u8; 6]>> {
        if let Some(&(mac, at)) = self.cache.get(&ip) {
            let ttl = if mac.is_some() {
                POSITIVE_TTL
            } else {
                NEGATIVE_TTL
            };
            if at.elapsed() < ttl {
                return Ok(mac);
            }
        }
        let mac = self.query(ip)?;
        self.remember(ip, mac);
        Ok(mac)
    }

    /// The MAC of `ip`, asking the kernel to resolve it when the table has no usable entry and
    /// polling the table until it appears or `timeout` passes (`ErrorKind::TimedOut`). `ip` must be
    /// the next hop itself (see [`Neighbours::next_hop`]).
    pub fn resolve(&mut self, ip: IpAddr, timeout: Duration) -> io::Result<[u8; 6]> {
        let start = Instant::now();
        if let Some(mac) = self.lookup(ip)? {
            return Ok(mac);
        }
        let mut last_trigger = start;
        self.trigger(ip)?;
        let mut pause = Duration::from_millis(1);
        loop {
            if let Some(mac) = self.query(ip)? {
                self.remember(ip, Some(mac));
                return Ok(mac);
            }
            let elapsed = start.elapsed();
            if elapsed >= timeout {
                self.remember(ip, None);
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("neighbour {ip} not resolved within {timeout:?}"),
                ));
            }
            if last_trigger.elapsed() >= RETRIGGER {
                last_trigger = Instant::now();
                self.trigger(ip)?;
            }
            std::thread::sleep(pause.min(timeout - elapsed));
            pause = (pause * 2).min(MAX_POLL);
        }
    }

    /// The next hop for `dst`: `dst` itself when it is inside one of the interface's prefixes,
    /// otherwise the gateway of the kernel's route to `dst` out of this interface (or `dst` when that
    /// route has no gateway, i.e. is on-link).
    /// Answers are cached for [`POSITIVE_TTL`].
    pub fn next_hop(&mut self, dst: IpAddr) -> io::Result<IpAddr> {
        if let Some(&(hop, at)) = self.hops.get(&dst)
            && at.elapsed() < POSITIVE_TTL
        {
            return Ok(hop);
        }
        let hop = self.next_hop_uncached(dst)?;
        if self.hops.len() >= CACHE_PRUNE_AT {
            self.hops.retain(|_, (_, at)| at.elapsed() < POSITIVE_TTL);
        }
        self.hops.insert(dst, (hop, Instant::now()));
        Ok(hop)
    }

    fn next_hop_uncached(&mut self, dst: IpAddr) -> io::Result<IpAddr> {
        let addrs = self.rtnl.addrs(self.ifindex)?;
        if addrs.iter().any(|&(net, len, _)| in_prefix(dst, net, len)) {
            return Ok(dst);
        }
        Ok(self.rtnl.route_gateway(self.ifindex, dst)?.unwrap_or(dst))
    }

    fn remember(&mut self, ip: IpAddr, mac: Option<[u8; 6]>) {
        if self.cache.len() >= CACHE_PRUNE_AT {
            self.cache.retain(|_, (_, at)| at.elapsed() < POSITIVE_TTL);
        }
        self.cache.insert(ip, (mac, Instant::now()));
    }

    /// Reads the kernel table for `ip` on our interface (no cache).
    fn query(&mut self, ip: IpAddr) -> io::Result<Option<[u8; 6]>> {
        let mut req = NeighbourMessage::default();
        req.header.family = family_of(&ip);
        req.header.ifindex = self.ifindex;
        let replies = self
            .rtnl
            .request(RouteNetlinkMessage::GetNeighbour(req), NLM_F_DUMP)?;
        for m in replies {
            let RouteNetlinkMessage::NewNeighbour(n) = m else {
                continue;
            };
            if n.header.ifindex != self.ifindex || u16::from(n.header.state) & NUD_USABLE == 0 {
                continue;
            }
            let mut dst = None;
            let mut lladdr = None;
            for a in &n.attributes {
                match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                        dst = Some(IpAddr::V4(*v4));
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                        dst = Some(IpAddr::V6(*v6));
                    }
                    NeighbourAttribute::LinkLocalAddress(l) => {
                        lladdr = <[u8; 6]>::try_from(&l[..]).ok()
                    }
                    _ => {}
                }
            }
            if dst == Some(ip)
                && let Some(mac) = lladdr
            {
                return Ok(Some(mac));
            }
        }
        Ok(None)
    }

    /// Makes the kernel resolve `ip` on our interface (see the module doc).
    fn trigger(&mut self, ip: IpAddr) -> io::Result<()> {
        let mut m = NeighbourMessage::default();
        m.header.family = family_of(&ip);
        m.header.ifindex = self.ifindex;
        m.header.state = NeighbourState::None;
        m.header.flags = NeighbourFlags::Use;
        m.attributes.push(NeighbourAttribute::Destination(match ip {
            IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
            IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
        }));
        match self
            .rtnl
            .request(RouteNetlinkMessage::NewNeighbour(m), NLM_F_CREATE)
        {
            Ok(_) => {
                self.used_fallback = false;
                Ok(())
            }
            Err(e) => {
                tracing::debug!("RTM_NEWNEIGH NTF_USE for {ip} refused ({e}); UDP fallback");
                self.used_fallback = true;
                udp_poke(ip)
            }
        }
    }
}

/// Sends a zero-length datagram to `ip:9` (discard) from a kernel socket, so the kernel resolves the
/// next hop towards `ip` itself.
fn udp_poke(ip: IpAddr) -> io::Result<()> {
    let bind: SocketAddr = match ip {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let s = UdpSocket::bind(bind)?;
    s.send_to(&[], SocketAddr::new(ip, 9)).map(|_| ())
}

/// Whether `ip` lies in `net/len` (same family).
fn in_prefix(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let len = u32::from(len.min(32));
            let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let len = u32::from(len.min(128));
            let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// The MAC address of interface `ifindex`.
pub fn interface_mac(ifindex: u32) -> io::Result<[u8; 6]> {
    let link = Rtnl::new()?.link(ifindex)?;
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(mac) => <[u8; 6]>::try_from(&mac[..]).ok(),
            _ => None,
        })
        .ok_or_else(|| invalid("interface has no 6-byte link-layer address"))
}

/// The MTU of interface `ifindex`.
pub fn interface_mtu(ifindex: u32) -> io::Result<u32> {
    let link = Rtnl::new()?.link(ifindex)?;
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Mtu(mtu) => Some(*mtu),
            _ => None,
        })
        .ok_or_else(|| invalid("interface reports no MTU"))
}

/// The IP addresses of interface `ifindex` (IPv4 and IPv6); IPv6 link-local ones (fe80::/10) only
/// when `include_link_local`.
pub fn interface_addrs(ifindex: u32, include_link_local: bool) -> io::Result<Vec<IpAddr>> {
    let addrs = Rtnl::new()?.addrs(ifindex)?;
    Ok(addrs
        .into_iter()
        .filter(|(ip, _, scope)| {
            include_link_local
                || match ip {
                    IpAddr::V4(_) => true,
                    IpAddr::V6(v6) => {
                        *scope != AddressScope::Link && (v6.segments()[0] & 0xffc0) != 0xfe80
                    }
                }
        })
        .map(|(ip, _, _)| ip)
        .collect())
}

/// The index of the interface called `name` (`if_nametoindex`).
pub fn ifindex(name: &str) -> io::Result<u32> {
    let c = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in interface name"))?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call; if_nametoindex only
    // reads it.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(idx)
    }
}

/// An XDP program already attached to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttachedXdp {
    /// The program's id (`bpftool prog show id N`).
    pub prog_id: u32,
    /// "native", "skb", "hw" or "multi".
    pub mode: &'static str,
}

/// What the engine checks about an interface before it starts, from one `RTM_GETLINK`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkFacts {
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Carrier present (`IFF_LOWER_UP`); a veth whose peer is down is up without carrier.
    pub carrier: bool,
    pub mtu: u32,
    /// RX queues allocated (`IFLA_NUM_RX_QUEUES`): the most `ethtool -L` can make active.
    pub allocated_rx_queues: u32,
    /// The XDP program attached now, if any.
    pub xdp: Option<AttachedXdp>,
}

/// The facts of interface `ifindex` in the calling thread's network namespace (rtnetlink answers
/// there; sysfs would answer for the namespace /sys was mounted in).
pub fn link_facts(ifindex: u32) -> io::Result<LinkFacts> {
    use netlink_packet_route::link::{LinkFlags, LinkXdp, XdpAttached};
    let link = Rtnl::new()?.link(ifindex)?;
    let flags = link.header.flags;
    let mut facts = LinkFacts {
        up: flags.contains(LinkFlags::Up),
        carrier: flags.contains(LinkFlags::LowerUp),
        mtu: 0,
        allocated_rx_queues: 1,
        xdp: None,
    };
    for a in &link.attributes {
        match a {
            LinkAttribute::Mtu(m) => facts.mtu = *m,
            LinkAttribute::NumRxQueues(n) => facts.allocated_rx_queues = (*n).max(1),
            LinkAttribute::Xdp(xdp) => {
                let mode = xdp.iter().find_map(|x| match x {
                    LinkXdp::Attached(XdpAttached::Driver) => Some("native"),
                    LinkXdp::Attached(XdpAttached::SocketBuffer) => Some("skb"),
                    LinkXdp::Attached(XdpAttached::Hardware) => Some("hw"),
                    LinkXdp::Attached(XdpAttached::Multiple) => Some("multi"),
                    _ => None,
                });
                let prog_id = xdp.iter().find_map(|x| match x {
                    LinkXdp::ProgId(id) | LinkXdp::DrvProgId(id) | LinkXdp::SkbProgId(id)
                        if *id != 0 =>
                    {
                        Some(*id)
                    }
                    _ => None,
                });
                if let (Some(mode), Some(prog_id)) = (mode, prog_id) {
                    facts.xdp = Some(AttachedXdp { prog_id, mode });
                }
            }
            _ => {}
        }
    }
    if facts.mtu == 0 {
        return Err(invalid("interface reports no MTU"));
    }
    Ok(facts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(in_prefix(ip("198.19.251.7"), ip("198.19.251.1"), 24));
        assert!(!in_prefix(ip("198.19.252.7"), ip("198.19.251.1"), 24));
        assert!(in_prefix(ip("1.2.3.4"), ip("9.9.9.9"), 0));
        assert!(in_prefix(ip("9.9.9.9"), ip("9.9.9.9"), 32));
        assert!(in_prefix(
            ip("fd00:198:19:251::2"),
            ip("fd00:198:19:251::1"),
            64
        ));
        assert!(!in_prefix(
            ip("fd00:198:19:252::2"),
            ip("fd00:198:19:251::1"),
            64
        ));
        assert!(in_prefix(ip("::1"), ip("fe80::1"), 0));
        assert!(!in_prefix(ip("198.19.251.7"), ip("::"), 0));
    }

    #[test]
    fn bad_names() {
        assert!(ifindex("no-such-if-xyz").is_err());
        assert!(ifindex("a\0b").is_err());
        assert!(ifindex("../etc").is_err());
        assert!(ifindex("").is_err());
    }

    /// Two namespaces joined by a veth pair, deleted on drop (also when a test panics).
    struct Lab {
        a: String,
        b: String,
        if_a: String,
        if_b: String,
    }

    fn sh(args: &[&str]) -> String {
        let out = std::process::Command::new(args[0])
            .args(&args[1..])
            .output()
            .expect("spawn");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    impl Lab {
        fn new() -> Self {
            let pid = std::process::id();
            let lab = Lab {
                a: format!("net-{pid}-a"),
                b: format!("net-{pid}-b"),
                if_a: format!("vna{pid}"),
                if_b: format!("vnb{pid}"),
            };
            // The guard exists before anything is created, so a failure below still cleans up.
            sh(&["ip", "netns", "add", &lab.a]);
            sh(&["ip", "netns", "add", &lab.b]);
            // The kernel sends a neighbour solicitation it starts on its own (no packet queued)
            // from the link-local address, and not while that is tentative; without DAD on the
            // (new, isolated) lab links it is usable at once instead of after 1-2 s.
            for ns in [&lab.a, &lab.b] {
                for conf in ["all", "default"] {
                    sh(&[
                        "ip",
                        "netns",
                        "exec",
                        ns,
                        "sysctl",
                        "-qw",
                        &format!("net.ipv6.conf.{conf}.accept_dad=0"),
                    ]);
                }
            }
            // Created directly inside the namespaces: the host never sees these interfaces.
            sh(&[
                "ip", "link", "add", &lab.if_a, "netns", &lab.a, "type", "veth", "peer", "name",
                &lab.if_b, "netns", &lab.b,
            ]);
            for (ns, ifn, v4, v6) in [
                (
                    &lab.a,
                    &lab.if_a,
                    "198.19.251.1/24",
                    "fd00:198:19:251::1/64",
                ),
                (
                    &lab.b,
                    &lab.if_b,
                    "198.19.251.2/24",
                    "fd00:198:19:251::2/64",
                ),
            ] {
                sh(&["ip", "-n", ns, "addr", "add", v4, "dev", ifn]);
                sh(&["ip", "-n", ns, "addr", "add", v6, "dev", ifn, "nodad"]);
                sh(&["ip", "-n", ns, "link", "set", ifn, "up"]);
                sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
            }
            // A route through the peer, to exercise the gateway path of next_hop.
            sh(&[
                "ip",
                "-n",
                &lab.a,
                "route",
                "add",
                "198.18.128.0/24",
                "via",
                "198.19.251.2",
            ]);
            lab
        }

        fn mac_of(&self, ns: &str, ifn: &str) -> [u8; 6] {
            let s = sh(&[
                "ip",
                "netns",
                "exec",
                ns,
                "cat",
                &format!("/sys/class/net/{ifn}/address"),
            ]);
            let v: Vec<u8> = s
                .split(':')
                .map(|h| u8::from_str_radix(h, 16).unwrap())
                .collect();
            v.try_into().unwrap()
        }
    }

    impl Drop for Lab {
        fn drop(&mut self) {
            for ns in [&self.a, &self.b] {
                let _ = std::process::Command::new("ip")
                    .args(["netns", "del", ns])
                    .status();
            }
        }
    }

    /// Moves the calling thread into network namespace `name`.
    fn enter_netns(name: &str) {
        use std::os::fd::AsRawFd;
        let f = std::fs::File::open(format!("/var/run/netns/{name}")).unwrap();
        // SAFETY: `f` is an open namespace file descriptor for the duration of the call; setns only
        // changes the calling thread's network namespace.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", io::Error::last_os_error());
    }

    #[test]
    #[ignore = "needs root and network namespaces"]
    fn resolves_through_the_kernel_in_a_veth_lab() {
        let lo = link_facts(ifindex("lo").unwrap()).unwrap();
        assert!(lo.allocated_rx_queues >= 1 && lo.up && lo.xdp.is_none());
        let lab = Lab::new();
        let mac_a = lab.mac_of(&lab.a, &lab.if_a);
        let mac_b = lab.mac_of(&lab.b, &lab.if_b);
        let (ns_a, if_a) = (lab.a.clone(), lab.if_a.clone());
        // A thread of its own enters namespace A, so no other test runs in it afterwards.
        let r = std::thread::spawn(move || {
            enter_netns(&ns_a);
            let idx = ifindex(&if_a).unwrap();
            assert_eq!(interface_mac(idx).unwrap(), mac_a);
            assert_eq!(interface_mtu(idx).unwrap(), 1500);
            let v4: IpAddr = "198.19.251.1".parse().unwrap();
            let v6: IpAddr = "fd00:198:19:251::1".parse().unwrap();
            let addrs = interface_addrs(idx, false).unwrap();
            assert!(addrs.contains(&v4) && addrs.contains(&v6), "{addrs:?}");
            assert!(
                addrs
                    .iter()
                    .all(|a| !matches!(a, IpAddr::V6(x) if x.segments()[0] == 0xfe80))
            );
            let all = interface_addrs(idx, true).unwrap();
            assert!(
                all.iter()
                    .any(|a| matches!(a, IpAddr::V6(x) if x.segments()[0] == 0xfe80)),
                "{all:?}"
            );

            let mut nb = Neighbours::new(idx).unwrap();
            let peer4: IpAddr = "198.19.251.2".parse().unwrap();
            let peer6: IpAddr = "fd00:198:19:251::2".parse().unwrap();
            assert_eq!(nb.next_hop(peer4).unwrap(), peer4);
            assert_eq!(nb.next_hop(peer6).unwrap(), peer6);
            assert_eq!(nb.next_hop("198.18.128.9".parse().unwrap()).unwrap(), peer4);
            for peer in [peer4, peer6] {
                // The table starts without the peer, so resolve has to trigger the kernel.
                assert_eq!(nb.lookup(peer).unwrap(), None, "{peer} already known");
                let t = Instant::now();
                let mac = nb.resolve(peer, Duration::from_secs(5)).unwrap();
                assert_eq!(mac, mac_b, "{peer}");
                assert!(!nb.used_fallback, "as root the NTF_USE trigger must work");
                eprintln!("resolved {peer} in {:?}", t.elapsed());
                // IPv6 takes about 1 s (one RetransTimer) in a freshly made lab; see the report.
                assert!(
                    t.elapsed() < Duration::from_secs(3),
                    "{peer}: {:?}",
                    t.elapsed()
                );
                // Served from the cache now.
                assert_eq!(nb.lookup(peer).unwrap(), Some(mac_b));
            }
            // An on-link address nobody has: a timeout, not a hang.
            let nobody: IpAddr = "198.19.251.77".parse().unwrap();
            let e = nb.resolve(nobody, Duration::from_millis(300)).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        })
        .join();
        drop(lab);
        if let Err(p) = r {
            std::panic::resume_unwind(p);
        }
    }
}
