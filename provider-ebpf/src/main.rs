//! `steer`: the XDP program that hands the provider's flows to its AF_XDP sockets.
//!
//! Parses Ethernet (one 802.1Q tag), IPv4 (any IHL) or IPv6 (fixed header), then TCP or UDP, and
//! decides whether the destination endpoint is ours from the port's `PORTS` entry (wildcard bit and
//! inline specific addresses), falling back to the `STEER` hash only for a port with more specific
//! addresses than fit inline. Ours is redirected to the AF_XDP socket of the RX queue the frame
//! came in on; everything else — and ours with no socket bound on that queue — goes on to the
//! kernel (DESIGN §2). Every read is bounds-checked right before it happens.
//!
//! `parse_redirect` is the benchmark's reference: the same parse, then an unconditional redirect —
//! the floor any steering program pays.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{Array, HashMap, PerCpuArray, XskMap},
    programs::XdpContext,
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
    vlan::VlanHdr,
};
use provider_common::{
    FAMILY_V4, FAMILY_V6, PORT_INLINE_V4, PORT_INLINE_V6, PORT_SPILLED, PORT_WILDCARD,
    PORTS_CAPACITY, PROTO_TCP, PROTO_UDP, PortEntry, STEER_CAPACITY, SteerKey, SteerValue,
    XSKS_CAPACITY, port_index, stat,
};

#[map]
static STEER: HashMap<SteerKey, SteerValue> = HashMap::with_max_entries(STEER_CAPACITY, 0);

/// Per (family, proto, port): wildcard bit, inline specific addresses and the spilled bit, kept by
/// userspace (`provider::xdp::ports`). The one map lookup most frames pay.
#[map]
static PORTS: Array<PortEntry> = Array::with_max_entries(PORTS_CAPACITY, 0);

#[map]
static XSKS: XskMap = XskMap::with_max_entries(XSKS_CAPACITY, 0);

/// Set to 1 at load time (`--log-malformed`) to log each malformed frame through aya-log. Off by
/// default: a per-packet log line costs ≈20 ns and fills the log ring under attack (DESIGN §11).
#[unsafe(no_mangle)]
static LOG_MALFORMED: u8 = 0;

#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

/// Why a frame was passed instead of steered.
enum Pass {
    NotOurs,
    Malformed,
    Fragment,
    ExtHeader,
}

#[xdp]
pub fn steer(ctx: XdpContext) -> u32 {
    match classify(&ctx) {
        Ok(dst) => {
            if is_ours(&dst) {
                match XSKS.redirect(ctx.rx_queue_index(), xdp_action::XDP_PASS as u64) {
                    Ok(action) => {
                        count(stat::STEERED);
                        action
                    }
                    Err(action) => {
                        count(stat::REDIRECT_FAILED);
                        action
                    }
                }
            } else {
                count(stat::PASSED_NOT_OURS);
                xdp_action::XDP_PASS
            }
        }
        Err(reason) => {
            if matches!(reason, Pass::Malformed) && log_malformed() {
                aya_log_ebpf::warn!(&ctx, "malformed frame, {} bytes, passed", frame_len(&ctx));
            }
            count(match reason {
                Pass::NotOurs => stat::PASSED_NOT_OURS,
                Pass::Malformed => stat::PASSED_MALFORMED,
                Pass::Fragment => stat::PASSED_FRAGMENT,
                Pass::ExtHeader => stat::PASSED_EXT_HEADER,
            });
            xdp_action::XDP_PASS
        }
    }
}

/// The benchmark's reference for `steer`: the same parse and bounds checks, then a redirect of
/// every well-formed TCP/UDP frame to the RX queue's AF_XDP socket (falling back to `XDP_PASS`
/// like `steer`), with no lookup and no counters. What `steer` costs above this is the price of
/// deciding "ours?".
#[xdp]
pub fn parse_redirect(ctx: XdpContext) -> u32 {
    match classify(&ctx) {
        Ok(_) => match XSKS.redirect(ctx.rx_queue_index(), xdp_action::XDP_PASS as u64) {
            Ok(action) | Err(action) => action,
        },
        Err(_) => xdp_action::XDP_PASS,
    }
}

/// The benchmark baseline: does nothing but pass.
#[xdp]
pub fn pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// The live-frame generator's program: every frame it is given leaves through the interface it
/// was injected on (BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES, DESIGN §11).
#[xdp]
pub fn xmit(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}

/// The destination endpoint of a parsed frame. The address stays in the frame: only a port with
/// specific addresses needs it, so misses and wildcard ports never load it.
struct Dst {
    family: u8,
    proto: u8,
    /// Host byte order.
    port: u16,
    /// The destination address in the frame: 4 bytes (IPv4) or 16 (IPv6), inside the IP header
    /// that `classify` bounds-checked.
    addr: *const u8,
}

/// Ours iff the port has a wildcard endpoint, or the destination address is one of the port's
/// specific addresses: inline in its `PORTS` entry, or (spilled port only) in `STEER`.
#[inline(always)]
fn is_ours(dst: &Dst) -> bool {
    let Some(entry) = PORTS.get(port_index(dst.family, dst.proto, dst.port)) else {
        return false;
    };
    let flags = entry.flags;
    if flags & PORT_WILDCARD != 0 {
        return true;
    }
    let valid = entry.valid;
    if valid == 0 && flags & PORT_SPILLED == 0 {
        // No endpoint on this port: the common not-ours case stops here, address never read.
        return false;
    }
    if dst.family == FAMILY_V4 {
        // SAFETY: `addr` points at the IPv4 destination, inside the header `classify_v4` checked;
        // an unaligned read, as the frame gives no alignment.
        let word = unsafe { core::ptr::read_unaligned(dst.addr as *const u32) };
        // Constant bound: LLVM unrolls it into PORT_INLINE_V4 compares, no loop for the verifier.
        for i in 0..PORT_INLINE_V4 {
            if valid & (1 << i) != 0 && entry.addrs[i] == word {
                return true;
            }
        }
        flags & PORT_SPILLED != 0
            && STEER
                .get_ptr(SteerKey::v4(dst.proto, word.to_ne_bytes(), dst.port))
                .is_some()
    } else {
        let p = dst.addr as *const u32;
        // SAFETY: `addr` points at the 16-byte IPv6 destination, inside the header
        // `classify_v6` checked; unaligned reads, as the frame gives no alignment.
        let w = unsafe {
            [
                core::ptr::read_unaligned(p),
                core::ptr::read_unaligned(p.add(1)),
                core::ptr::read_unaligned(p.add(2)),
                core::ptr::read_unaligned(p.add(3)),
            ]
        };
        for j in 0..PORT_INLINE_V6 {
            let s = &entry.addrs[4 * j..4 * j + 4];
            if valid & (1 << j) != 0 && s[0] == w[0] && s[1] == w[1] && s[2] == w[2] && s[3] == w[3]
            {
                return true;
            }
        }
        flags & PORT_SPILLED != 0 && STEER.get_ptr(spilled_v6_key(dst, &w)).is_some()
    }
}

/// The `STEER` key of an IPv6 destination given as the words `is_ours` compared.
#[inline(always)]
fn spilled_v6_key(dst: &Dst, w: &[u32; 4]) -> SteerKey {
    let mut addr = [0u8; 16];
    for (chunk, word) in addr.chunks_exact_mut(4).zip(w) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    SteerKey::v6(dst.proto, addr, dst.port)
}

#[inline(always)]
fn log_malformed() -> bool {
    // SAFETY: a plain read of a global the loader may have rewritten; volatile so the compiler
    // does not fold the initial 0 into the code.
    unsafe { core::ptr::read_volatile(&LOG_MALFORMED) != 0 }
}

#[inline(always)]
fn count(index: u32) {
    if let Some(counter) = STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *counter += 1 };
    }
}

/// Pointer to a `T` at `offset`, or `None` if the frame is too short.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

#[inline(always)]
fn frame_len(ctx: &XdpContext) -> usize {
    ctx.data_end() - ctx.data()
}

#[inline(always)]
fn classify(ctx: &XdpContext) -> Result<Dst, Pass> {
    let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(Pass::Malformed)?;
    // SAFETY: ptr_at checked the header lies inside the frame.
    let mut ether_type = u16::from_be(unsafe { (*eth).ether_type });
    let mut l3 = EthHdr::LEN;
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        let vlan: *const VlanHdr = ptr_at(ctx, l3).ok_or(Pass::Malformed)?;
        // SAFETY: bounds checked by ptr_at.
        ether_type = u16::from_be(unsafe { (*vlan).ether_type });
        l3 += VlanHdr::LEN;
        if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
            // A second tag (QinQ) is not ours to unwrap.
            return Err(Pass::NotOurs);
        }
    }
    match ether_type {
        ETH_P_IPV4 => classify_v4(ctx, l3),
        ETH_P_IPV6 => classify_v6(ctx, l3),
        _ => Err(Pass::NotOurs),
    }
}

#[inline(always)]
fn classify_v4(ctx: &XdpContext, l3: usize) -> Result<Dst, Pass> {
    let ip: *const Ipv4Hdr = ptr_at(ctx, l3).ok_or(Pass::Malformed)?;
    // SAFETY: bounds checked by ptr_at.
    let (vihl, tot_len, frags, proto) = unsafe {
        (
            (*ip).vihl,
            u16::from_be_bytes((*ip).tot_len) as usize,
            u16::from_be_bytes((*ip).frags),
            (*ip).proto,
        )
    };
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN || tot_len < ihl || l3 + tot_len > frame_len(ctx) {
        return Err(Pass::Malformed);
    }
    // More-fragments flag or a non-zero offset: a fragment.
    if frags & 0x3fff != 0 {
        return Err(Pass::Fragment);
    }
    let port = l4_dst_port(ctx, l3 + ihl, tot_len - ihl, proto)?;
    Ok(Dst {
        family: FAMILY_V4,
        proto,
        port,
        // SAFETY: a field address inside the checked header; nothing is read here.
        addr: unsafe { &raw const (*ip).dst_addr } as *const u8,
    })
}

#[inline(always)]
fn classify_v6(ctx: &XdpContext, l3: usize) -> Result<Dst, Pass> {
    let ip: *const Ipv6Hdr = ptr_at(ctx, l3).ok_or(Pass::Malformed)?;
    // SAFETY: bounds checked by ptr_at.
    let (vcf0, payload_len, next) = unsafe {
        (
            (*ip).vcf[0],
            u16::from_be_bytes((*ip).payload_len) as usize,
            (*ip).next_hdr,
        )
    };
    if vcf0 >> 4 != 6 || l3 + Ipv6Hdr::LEN + payload_len > frame_len(ctx) {
        return Err(Pass::Malformed);
    }
    if next != PROTO_TCP && next != PROTO_UDP {
        return Err(if is_ext_header(next) {
            Pass::ExtHeader
        } else {
            Pass::NotOurs
        });
    }
    let port = l4_dst_port(ctx, l3 + Ipv6Hdr::LEN, payload_len, next)?;
    Ok(Dst {
        family: FAMILY_V6,
        proto: next,
        port,
        // SAFETY: a field address inside the checked header; nothing is read here.
        addr: unsafe { &raw const (*ip).dst_addr } as *const u8,
    })
}

/// IPv6 extension headers (RFC 8200 §4 and the IANA registry) that may precede TCP/UDP.
#[inline(always)]
fn is_ext_header(next: u8) -> bool {
    matches!(
        next,
        0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 | 253 | 254
    )
}

/// Destination port of the TCP or UDP header at `l4`, checked against the IP payload length.
#[inline(always)]
fn l4_dst_port(ctx: &XdpContext, l4: usize, l4_len: usize, proto: u8) -> Result<u16, Pass> {
    match proto {
        PROTO_UDP => {
            let udp: *const UdpHdr = ptr_at(ctx, l4).ok_or(Pass::Malformed)?;
            // SAFETY: bounds checked by ptr_at.
            let (dst, len) = unsafe { ((*udp).dst, u16::from_be_bytes((*udp).len) as usize) };
            if len < UdpHdr::LEN || len > l4_len {
                return Err(Pass::Malformed);
            }
            Ok(u16::from_be_bytes(dst))
        }
        PROTO_TCP => {
            let tcp: *const TcpHdr = ptr_at(ctx, l4).ok_or(Pass::Malformed)?;
            // SAFETY: bounds checked by ptr_at.
            let (dst, doff) = unsafe { ((*tcp).dest, (*tcp).doff() as usize) };
            if doff * 4 < TcpHdr::LEN || doff * 4 > l4_len {
                return Err(Pass::Malformed);
            }
            Ok(u16::from_be_bytes(dst))
        }
        _ => Err(Pass::NotOurs),
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
