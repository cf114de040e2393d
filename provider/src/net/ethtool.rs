//! Interface channel counts through the `SIOCETHTOOL` ioctl (`ETHTOOL_GCHANNELS`).
//!
//! An AF_XDP socket can only bind to a queue below the device's *active* RX count
//! (`real_num_rx_queues`, what `ethtool -l` calls "current hardware settings"), not below the
//! allocated maximum that rtnetlink reports as `IFLA_NUM_RX_QUEUES`: a plain veth on a 2-CPU
//! machine allocates 2 and runs 1, and server NICs allocate far more than they run. The ioctl is
//! answered in the calling thread's network namespace (the socket it goes through lives there),
//! which is what the provider serves; sysfs would answer for the namespace `/sys` was mounted in.
//!
//! The driver's name (`ETHTOOL_GDRVINFO`) tells the engine whether frames can carry partial
//! checksums (veth). This is the FFI module of `net/`: its `unsafe` blocks are the ioctl.
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `ETHTOOL_GCHANNELS` from `include/uapi/linux/ethtool.h`.
const ETHTOOL_GCHANNELS: u32 = 0x0000_003c;

/// `struct ethtool_channels` (include/uapi/linux/ethtool.h): nine `__u32`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct EthtoolChannels {
    cmd: u32,
    max_rx: u32,
    max_tx: u32,
    max_other: u32,
    max_combined: u32,
    rx_count: u32,
    tx_count: u32,
    other_count: u32,
    combined_count: u32,
}

/// `ETHTOOL_GDRVINFO`.
const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;

/// `struct ethtool_drvinfo`: the command, five 32-byte strings, 12 reserved bytes, five `__u32`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct EthtoolDrvinfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

/// An interface's channel configuration as `ethtool -l` shows it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Channels {
    /// RX-only channels in use.
    pub rx: u32,
    /// TX-only channels in use.
    pub tx: u32,
    /// Combined (RX + TX) channels in use.
    pub combined: u32,
    /// Pre-set maxima (RX-only, combined).
    pub max_rx: u32,
    pub max_combined: u32,
}

impl Channels {
    /// Active RX queues, as the kernel counts them for AF_XDP binding: every channel that
    /// receives (RX-only plus combined).
    pub fn active_rx(&self) -> u32 {
        self.rx + self.combined
    }

    /// Most RX queues `ethtool -L` could make active.
    pub fn max_active_rx(&self) -> u32 {
        self.max_rx + self.max_combined
    }

    /// The `ethtool -L` command that would make `want` RX queues active on `iface`: drivers
    /// with combined channels take `combined`, the others `rx` (veth also wants `tx`).
    pub fn remedy(&self, iface: &str, want: u32) -> String {
        if self.max_combined > 0 && self.max_rx == 0 {
            format!("ethtool -L {iface} combined {want}")
        } else {
            format!("ethtool -L {iface} rx {want} tx {want}")
        }
    }
}

/// The channel counts of interface `name` (`ETHTOOL_GCHANNELS`). Fails with `EOPNOTSUPP` when the
/// driver does not report channels.
pub fn channels(name: &str) -> io::Result<Channels> {
    let mut ch = EthtoolChannels {
        cmd: ETHTOOL_GCHANNELS,
        ..Default::default()
    };
    ethtool_ioctl(name, &mut ch)?;
    Ok(Channels {
        rx: ch.rx_count,
        tx: ch.tx_count,
        combined: ch.combined_count,
        max_rx: ch.max_rx,
        max_combined: ch.max_combined,
    })
}

/// The driver of interface `name` (`ETHTOOL_GDRVINFO`; "veth", "mlx5_core", "ixgbe", …).
pub fn driver(name: &str) -> io::Result<String> {
    let mut info = EthtoolDrvinfo {
        cmd: ETHTOOL_GDRVINFO,
        ..Default::default()
    };
    ethtool_ioctl(name, &mut info)?;
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    Ok(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

/// Marker for the `#[repr(C)]` ethtool command structs this module passes to the kernel.
trait EthtoolCmd: Copy {}
impl EthtoolCmd for EthtoolChannels {}
impl EthtoolCmd for EthtoolDrvinfo {}

/// One `SIOCETHTOOL` request for interface `name` in the calling thread's namespace: the kernel
/// reads the command word at the start of `data` and fills in the rest.
fn ethtool_ioctl<T: EthtoolCmd>(name: &str, data: &mut T) -> io::Result<()> {
    let c = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in interface name"))?;
    let bytes = c.as_bytes_with_nul();
    if bytes.len() > libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name longer than IFNAMSIZ",
        ));
    }
    // SAFETY: an `ifreq` is plain old data for which all-zero bytes are valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in ifr.ifr_name.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = std::ptr::from_mut(data).cast();
    // SAFETY: plain socket(2) call; the descriptor is owned by `sock` right after.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: SIOCETHTOOL reads `ifr` (name + data pointer) and reads/writes one command struct
    // through `ifru_data`, which points at `data`: a #[repr(C)] struct with the kernel's layout
    // for the command in its first word (only the two structs above implement `EthtoolCmd`),
    // alive and exclusively borrowed for the duration of the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &mut ifr) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_kernel() {
        assert_eq!(std::mem::size_of::<EthtoolChannels>(), 36);
        assert_eq!(std::mem::size_of::<EthtoolDrvinfo>(), 196);
    }

    #[test]
    fn loopback_reports_no_driver() {
        // lo has no get_drvinfo; the engine then keeps strict checksums.
        assert_eq!(
            driver("lo").unwrap_err().raw_os_error(),
            Some(libc::EOPNOTSUPP)
        );
    }

    #[test]
    fn active_counts_rx_and_combined() {
        let c = Channels {
            rx: 1,
            tx: 2,
            combined: 3,
            max_rx: 4,
            max_combined: 8,
        };
        assert_eq!(c.active_rx(), 4);
        assert_eq!(c.max_active_rx(), 12);
    }

    #[test]
    fn remedy_names_the_right_channel_kind() {
        let veth = Channels {
            rx: 1,
            tx: 1,
            max_rx: 4,
            ..Default::default()
        };
        assert_eq!(veth.remedy("va", 2), "ethtool -L va rx 2 tx 2");
        let nic = Channels {
            combined: 4,
            max_combined: 63,
            ..Default::default()
        };
        assert_eq!(nic.remedy("eth1", 8), "ethtool -L eth1 combined 8");
    }

    #[test]
    fn bad_names_are_errors_not_panics() {
        assert!(channels("no-such-if-xyz").is_err());
        assert!(channels("a\0b").is_err());
        assert!(channels(&"x".repeat(40)).is_err());
    }

    #[test]
    fn loopback_has_no_channels() {
        // lo implements no get_channels: the caller must fall back (see engine::queues).
        let err = channels("lo").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EOPNOTSUPP));
    }
}
