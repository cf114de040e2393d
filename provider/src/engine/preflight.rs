//! Start-up checks. Everything that can stop [`Engine::start`](super::Engine::start) is checked
//! here, before anything is loaded or attached, and each failure is one [`EngineError`] line that
//! names the cause and the remedy — never a bare errno. The checks also decide what to serve:
//! which RX queues (the *active* ones, DESIGN §3), the UMEM frame size and the MTU the engine
//! can actually receive.
use std::io;
use std::net::IpAddr;

use super::{EngineConfig, EngineError};
use crate::net::{
    LinkFacts,
    ethtool::{self, Channels},
    frame::Checksums,
    neighbour,
};

/// `XDP_PACKET_HEADROOM`: the kernel keeps this much of every RX frame in front of the packet.
const XDP_PACKET_HEADROOM: u32 = 256;
/// Ethernet header plus one 802.1Q tag: what a frame adds to the MTU.
const L2_OVERHEAD: u32 = 14 + 4;
/// Largest UMEM frame in aligned mode (one page).
const MAX_FRAME_SIZE: u32 = 4096;

/// Capabilities (bit numbers of `include/uapi/linux/capability.h`).
const CAP_NET_ADMIN: u32 = 12;
const CAP_NET_RAW: u32 = 13;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// What the checks found and decided.
#[derive(Clone, Debug)]
pub(super) struct Plan {
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub link: LinkFacts,
    /// The MTU the engine works with: the link's, or less when a UMEM frame cannot hold it.
    pub mtu: u32,
    pub addrs: Vec<IpAddr>,
    /// The channel counts (`None`: the driver reports none; queues are then probed by binding).
    pub channels: Option<Channels>,
    /// How many RX queues to serve at start (queues 0..serve).
    pub serve: u32,
    /// Most queues the engine may ever serve (slots allocated at start).
    pub capacity: u32,
    /// UMEM frame size chosen for the MTU.
    pub frame_size: u32,
    pub driver: Option<String>,
    pub checksums: Checksums,
}

/// Run every check for `config`, in the order a user would fix them.
pub(super) fn check(config: &EngineConfig) -> Result<Plan, EngineError> {
    let iface = config.interface.as_str();
    let ifindex = neighbour::ifindex(iface).map_err(|_| EngineError::NoInterface(iface.into()))?;
    check_privileges(read_effective_caps())?;
    let link = neighbour::link_facts(ifindex).map_err(|source| EngineError::Io {
        what: "reading the interface (rtnetlink)",
        source,
    })?;
    if !link.up {
        return Err(EngineError::InterfaceDown(iface.into()));
    }
    if !link.carrier {
        tracing::warn!(
            interface = iface,
            "interface has no carrier (a veth whose peer is down?): nothing will arrive until it has"
        );
    }
    if let Some(x) = link.xdp {
        return Err(EngineError::XdpBusy {
            iface: iface.into(),
            prog_id: x.prog_id,
            mode: x.mode,
        });
    }
    let addrs = neighbour::interface_addrs(ifindex, false).map_err(|source| EngineError::Io {
        what: "reading interface addresses",
        source,
    })?;
    if addrs.is_empty() {
        return Err(EngineError::NoAddress(iface.into()));
    }
    let mac = neighbour::interface_mac(ifindex).map_err(|source| EngineError::Io {
        what: "reading the interface MAC",
        source,
    })?;

    let channels = match ethtool::channels(iface) {
        Ok(c) if c.active_rx() > 0 => Some(c),
        Ok(_) => None,
        Err(e) if is_unsupported(&e) => None,
        Err(source) => {
            return Err(EngineError::Io {
                what: "reading the channel counts (SIOCETHTOOL)",
                source,
            });
        }
    };
    let serve = plan_queues(iface, config.queues, channels, link.allocated_rx_queues)?;
    let capacity = channels
        .map_or(0, |c| c.max_active_rx())
        .max(link.allocated_rx_queues)
        .max(serve)
        .min(provider_common::XSKS_CAPACITY);

    let (frame_size, mtu) = fit_frames(config.xsk.frame_size, link.mtu);
    if mtu < link.mtu {
        let (mss4, mss6) = (mtu - 40, mtu - 60);
        tracing::warn!(
            "interface {iface} has MTU {}, more than one {frame_size}-byte UMEM frame receives \
             ({} bytes after the kernel's headroom): the provider uses MTU {mtu} — TCP MSS \
             clamped to {mss4} (IPv4) / {mss6} (IPv6), UDP datagrams up to {} / {} bytes; \
             larger frames from the peer are dropped (XDP_STATISTICS rx_dropped)",
            link.mtu,
            frame_size - XDP_PACKET_HEADROOM,
            mtu - 28,
            mtu - 48,
        );
    } else if frame_size != config.xsk.frame_size {
        tracing::info!(
            interface = iface,
            mtu = link.mtu,
            frame_size,
            "UMEM frames enlarged to hold the MTU"
        );
    }
    let driver = ethtool::driver(iface).ok();
    let accept_partial = config
        .partial_checksums
        .unwrap_or(driver.as_deref() == Some("veth"));
    let checksums = if accept_partial {
        Checksums::AcceptPartial
    } else {
        Checksums::Verify
    };
    Ok(Plan {
        driver,
        checksums,
        ifindex,
        mac,
        link,
        mtu,
        addrs,
        channels,
        serve,
        capacity,
        frame_size,
    })
}

fn is_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOTTY)
    )
}

/// How many queues to serve: `--queues N` if the interface has that many active, else all active
/// ones. Without channel counts the allocated number is an upper bound the bind loop probes.
fn plan_queues(
    iface: &str,
    requested: Option<u32>,
    channels: Option<Channels>,
    allocated: u32,
) -> Result<u32, EngineError> {
    if requested == Some(0) {
        return Err(EngineError::BadQueues(
            "--queues 0: at least one RX queue must be served".into(),
        ));
    }
    let Some(ch) = channels else {
        return Ok(requested.unwrap_or(allocated).min(allocated).max(1));
    };
    let active = ch.active_rx();
    match requested {
        Some(n) if n > active => Err(EngineError::BadQueues(format!(
            "--queues {n}: interface {iface} has {active} active RX queue{} ({allocated} \
             allocated; `ethtool -l {iface}`): serve at most {active}, or activate more with \
             `{}`",
            if active == 1 { "" } else { "s" },
            ch.remedy(iface, n),
        ))),
        Some(n) => Ok(n),
        None => Ok(active),
    }
}

/// The UMEM frame size for an MTU and the MTU it lets the engine receive: a configured 2048-byte
/// frame grows to a page when the MTU needs it; beyond a page the MTU is clamped.
pub(super) fn fit_frames(frame_size: u32, link_mtu: u32) -> (u32, u32) {
    let holds = |fs: u32| fs.saturating_sub(XDP_PACKET_HEADROOM + L2_OVERHEAD);
    let mut fs = frame_size;
    while holds(fs) < link_mtu && fs < MAX_FRAME_SIZE {
        fs *= 2;
    }
    (fs, link_mtu.min(holds(fs)))
}

/// The effective capability set of this process (`CapEff` of /proc/self/status); `None` if it
/// cannot be read, in which case the kernel's own errors have to do.
fn read_effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_cap_eff(&status)
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

/// XDP attach and XSKMAP need CAP_NET_ADMIN, an AF_XDP socket CAP_NET_RAW, loading the program
/// CAP_BPF (or CAP_SYS_ADMIN).
fn check_privileges(caps: Option<u64>) -> Result<(), EngineError> {
    let Some(caps) = caps else { return Ok(()) };
    let has = |bit: u32| caps & (1u64 << bit) != 0;
    let mut missing = Vec::new();
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if !has(CAP_NET_RAW) {
        missing.push("CAP_NET_RAW");
    }
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(EngineError::NotPermitted(missing.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_grow_to_a_page_then_the_mtu_is_clamped() {
        assert_eq!(fit_frames(2048, 1500), (2048, 1500));
        assert_eq!(fit_frames(2048, 1774), (2048, 1774));
        assert_eq!(fit_frames(2048, 1775), (4096, 1775));
        assert_eq!(fit_frames(2048, 9000), (4096, 4096 - 256 - 18));
        assert_eq!(fit_frames(4096, 1280), (4096, 1280));
    }

    #[test]
    fn cap_eff_is_parsed() {
        let status = "Name:\tprovider\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(parse_cap_eff(status), Some(0x1ff_ffff_ffff));
        assert_eq!(parse_cap_eff("Name: x\n"), None);
        assert_eq!(parse_cap_eff("CapEff:\tzz\n"), None);
    }

    #[test]
    fn privileges_name_what_is_missing() {
        assert!(check_privileges(Some(u64::MAX)).is_ok());
        assert!(check_privileges(None).is_ok());
        let err = check_privileges(Some(0)).unwrap_err().to_string();
        assert!(
            err.contains("(missing: CAP_NET_ADMIN, CAP_NET_RAW, CAP_BPF)") && err.contains("root"),
            "{err}"
        );
        // CAP_SYS_ADMIN stands in for CAP_BPF (kernels before 5.8 know only that).
        let sys_admin = (1 << CAP_NET_ADMIN) | (1 << CAP_NET_RAW) | (1 << CAP_SYS_ADMIN);
        assert!(check_privileges(Some(sys_admin)).is_ok());
        let err = check_privileges(Some(1 << CAP_NET_ADMIN))
            .unwrap_err()
            .to_string();
        assert!(err.contains("(missing: CAP_NET_RAW, CAP_BPF)"), "{err}");
    }

    #[test]
    fn queues_follow_the_active_count_and_refuse_more() {
        let veth = Channels {
            rx: 2,
            tx: 2,
            max_rx: 4,
            ..Default::default()
        };
        assert_eq!(plan_queues("va", None, Some(veth), 4).unwrap(), 2);
        assert_eq!(plan_queues("va", Some(1), Some(veth), 4).unwrap(), 1);
        let err = plan_queues("va", Some(3), Some(veth), 4)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("2 active RX queues")
                && err.contains("4 allocated")
                && err.contains("ethtool -L va rx 3 tx 3"),
            "{err}"
        );
        assert!(plan_queues("va", Some(0), Some(veth), 4).is_err());
        // No channel counts: the allocated number bounds a probe.
        assert_eq!(plan_queues("x", None, None, 8).unwrap(), 8);
        assert_eq!(plan_queues("x", Some(2), None, 8).unwrap(), 2);
        assert_eq!(plan_queues("x", Some(9), None, 8).unwrap(), 8);
    }
}
