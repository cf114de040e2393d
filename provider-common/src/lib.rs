//! Types shared by the XDP program (`provider-ebpf`) and userspace (`provider`).
//!
//! Everything here is `#[repr(C)]`, padding-free and plain old data, so the same bytes mean the
//! same thing on both sides of a BPF map.
#![no_std]

/// `SteerKey::family` for IPv4.
pub const FAMILY_V4: u8 = 4;
/// `SteerKey::family` for IPv6.
pub const FAMILY_V6: u8 = 6;
/// `SteerKey::proto` for TCP (IANA protocol number).
pub const PROTO_TCP: u8 = 6;
/// `SteerKey::proto` for UDP (IANA protocol number).
pub const PROTO_UDP: u8 = 17;

/// Key of the `STEER` map: one local endpoint the provider owns.
///
/// An endpoint bound to the wildcard address is stored with `addr` all zero. `STEER` holds every
/// endpoint, but the XDP program looks a key up in it only for a spilled port (`PORT_SPILLED`):
/// wildcard endpoints and up to `PORT_INLINE_V4` / `PORT_INLINE_V6` specific addresses per port
/// are answered by the port's `PortEntry` in `PORTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct SteerKey {
    /// Local address: IPv4 in the first 4 bytes (rest zero), or IPv6.
    pub addr: [u8; 16],
    /// Local port in host byte order.
    pub port: u16,
    /// `PROTO_TCP` or `PROTO_UDP`.
    pub proto: u8,
    /// `FAMILY_V4` or `FAMILY_V6`.
    pub family: u8,
}

impl SteerKey {
    pub const fn v4(proto: u8, addr: [u8; 4], port: u16) -> Self {
        let mut a = [0u8; 16];
        a[0] = addr[0];
        a[1] = addr[1];
        a[2] = addr[2];
        a[3] = addr[3];
        Self {
            addr: a,
            port,
            proto,
            family: FAMILY_V4,
        }
    }

    pub const fn v6(proto: u8, addr: [u8; 16], port: u16) -> Self {
        Self {
            addr,
            port,
            proto,
            family: FAMILY_V6,
        }
    }
}

/// Value of the `STEER` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct SteerValue {
    /// Reserved for per-endpoint behaviour; 0 today.
    pub flags: u32,
}

/// `PortEntry::flags` bit: some endpoint on this (family, proto, port) is bound to the wildcard
/// address, so every frame to the port is ours whatever its destination address.
pub const PORT_WILDCARD: u8 = 1;
/// `PortEntry::flags` bit: the port has more specific addresses than `PortEntry` holds inline;
/// an address found in no inline slot must still be looked up in `STEER`.
pub const PORT_SPILLED: u8 = 2;
/// Entries of the `PORTS` array: 2 families × 2 protocols × 65536 ports.
pub const PORTS_CAPACITY: u32 = 4 * 65536;
/// Specific IPv4 addresses one `PortEntry` holds inline (one per `PortEntry::addrs` word).
pub const PORT_INLINE_V4: usize = 8;
/// Specific IPv6 addresses one `PortEntry` holds inline (four `PortEntry::addrs` words each).
pub const PORT_INLINE_V6: usize = 2;

/// Value of the `PORTS` array: everything the XDP program needs to decide "ours?" for a
/// (family, proto, port) without a hash lookup in the common cases.
///
/// A port whose specific addresses all fit inline is decided by comparing the frame's
/// destination against at most `PORT_INLINE_V4` IPv4 words (or `PORT_INLINE_V6` IPv6 addresses)
/// in the entry the array access already points at; only a port with more specific addresses than that sets
/// `PORT_SPILLED` and costs a `STEER` lookup for destinations found in no slot. `STEER` itself
/// still holds every endpoint (it is the registry `steered_keys` reads), so the inline slots are a
/// copy of some of its keys, never the only record.
///
/// Userspace rewrites an entry in place while the program may be reading it on another CPU (an
/// array update is a plain copy, not an atomic swap), so each rewrite changes either only bytes of
/// slots whose `valid` bit is clear, or only one bit of `flags` / `valid`: a concurrent reader then
/// sees the old or the new answer for every address, never a torn one (see
/// `provider::xdp::ports`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct PortEntry {
    /// `PORT_WILDCARD` | `PORT_SPILLED`.
    pub flags: u8,
    /// Bit i set: inline slot i holds a steered address (bits 0..`PORT_INLINE_V4` for IPv4,
    /// 0..`PORT_INLINE_V6` for IPv6).
    pub valid: u8,
    /// Explicit padding so the type has none (Pod) and `addrs` is 8-byte aligned.
    pub _pad: [u8; 6],
    /// Inline addresses as they appear on the wire, read as native-endian words: IPv4 slot i is
    /// word i, IPv6 slot j is words 4j..4j+4.
    pub addrs: [u32; 8],
}

impl PortEntry {
    /// A wire-order IPv4 address as an IPv4 slot of `addrs` stores it.
    #[inline(always)]
    pub const fn v4_word(addr: [u8; 4]) -> u32 {
        u32::from_ne_bytes(addr)
    }

    /// A wire-order IPv6 address as the four words of an IPv6 slot (`addrs[4j..4j + 4]`).
    #[inline(always)]
    pub const fn v6_words(addr: [u8; 16]) -> [u32; 4] {
        [
            u32::from_ne_bytes([addr[0], addr[1], addr[2], addr[3]]),
            u32::from_ne_bytes([addr[4], addr[5], addr[6], addr[7]]),
            u32::from_ne_bytes([addr[8], addr[9], addr[10], addr[11]]),
            u32::from_ne_bytes([addr[12], addr[13], addr[14], addr[15]]),
        ]
    }
}

/// Index into `PORTS`. The array answers "is this frame ours?" with one inlined array access for
/// ports we do not own, wildcard-bound ports and ports with up to `PORT_INLINE_V4` /
/// `PORT_INLINE_V6` specific addresses; only a spilled port (more than that) also pays a hash
/// lookup.
#[inline(always)]
pub const fn port_index(family: u8, proto: u8, port: u16) -> u32 {
    (((family == FAMILY_V6) as u32) << 17) | (((proto == PROTO_UDP) as u32) << 16) | port as u32
}

/// Indices of the per-CPU `STATS` array: one counter per verdict and reason.
pub mod stat {
    /// Ours, redirected into the AF_XDP socket of the RX queue.
    pub const STEERED: u32 = 0;
    /// Not an endpoint in `STEER` (or not TCP/UDP over IP): passed to the kernel.
    pub const PASSED_NOT_OURS: u32 = 1;
    /// Truncated or inconsistent headers: passed to the kernel, which will count and drop them.
    pub const PASSED_MALFORMED: u32 = 2;
    /// IPv4 fragment: passed (reassembly is the kernel's job).
    pub const PASSED_FRAGMENT: u32 = 3;
    /// IPv6 with an extension header: passed.
    pub const PASSED_EXT_HEADER: u32 = 4;
    /// Ours, but no AF_XDP socket is bound on this queue: fell back to the kernel.
    pub const REDIRECT_FAILED: u32 = 5;
    /// Number of counters.
    pub const COUNT: u32 = 6;

    /// Human-readable names, indexed by counter.
    pub const NAMES: [&str; COUNT as usize] = [
        "steered",
        "passed_not_ours",
        "passed_malformed",
        "passed_fragment",
        "passed_ext_header",
        "redirect_failed",
    ];
}

/// Name of the steering program inside the object file.
pub const PROG_STEER: &str = "steer";
/// Name of the bare `XDP_PASS` program used as the benchmark baseline.
pub const PROG_PASS: &str = "pass";
/// Name of the benchmark reference: `steer`'s parse, then an unconditional redirect.
pub const PROG_PARSE_REDIRECT: &str = "parse_redirect";
/// Name of the `XDP_TX` program the live-frame generator runs.
pub const PROG_XMIT: &str = "xmit";
/// Map names.
pub const MAP_STEER: &str = "STEER";
pub const MAP_XSKS: &str = "XSKS";
pub const MAP_STATS: &str = "STATS";
pub const MAP_PORTS: &str = "PORTS";
/// Capacity of the `STEER` map.
pub const STEER_CAPACITY: u32 = 65536;
/// Capacity of the `XSKS` map (highest RX queue index + 1 the provider can serve).
pub const XSKS_CAPACITY: u32 = 256;

#[cfg(feature = "user")]
// SAFETY: both types are repr(C), padding-free (checked by bytemuck's derive) and valid for any
// bit pattern, which is exactly what aya requires of map keys and values.
unsafe impl aya::Pod for SteerKey {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for SteerValue {}
#[cfg(feature = "user")]
// SAFETY: as above (`_pad` makes the padding explicit, and bytemuck's derive checks there is none
// left).
unsafe impl aya::Pod for PortEntry {}
