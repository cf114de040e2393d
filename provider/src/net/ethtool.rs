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
    // for the command in its first word (every `EthtoolCmd` type is such a struct; the RSS
    // buffer's kernel writes stay inside it because its sizes are checked before the call),
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

/// `ETHTOOL_GRSSH`: the RSS hash function, key and indirection table.
const ETHTOOL_GRSSH: u32 = 0x0000_0046;

/// `struct ethtool_rxfh` without its flexible `rss_config[]` (24 bytes). `input_xfrm` was
/// `rsvd8[0]` before Linux 6.8; older kernels leave it as we sent it (zero). The kernel rejects
/// non-zero reserved fields.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct EthtoolRxfh {
    cmd: u32,
    rss_context: u32,
    indir_size: u32,
    key_size: u32,
    hfunc: u8,
    input_xfrm: u8,
    rsvd8: [u8; 2],
    rsvd32: u32,
}

/// Largest indirection table [`rss`] reads (entries). Drivers use 64 to 2048 today (ice's PF
/// table is 2048); this leaves room without an unbounded allocation.
const RXFH_MAX_INDIR: u32 = 8192;
/// Largest hash key [`rss`] reads (bytes; NICs use 40 or 52).
const RXFH_MAX_KEY: u32 = 256;
/// `rss_config[]` capacity in `u32` words: the table, then the key.
const RXFH_WORDS: usize = (RXFH_MAX_INDIR + RXFH_MAX_KEY / 4) as usize;

/// `struct ethtool_rxfh` with room for its `rss_config[]`: `indir_size` `u32` queue numbers
/// followed by `key_size` key bytes.
///
/// For `ETHTOOL_GRSSH` the kernel writes the header, then `hdr.indir_size * 4 + hdr.key_size`
/// bytes of `rss_config` — the sizes *we* put in the header, after checking they equal the
/// device's (otherwise `EINVAL`, before writing anything past the header). So this struct must
/// only reach the ioctl with sizes that fit `rss_config`; [`EthtoolRxfhBuf::request`] is the only
/// constructor used and enforces that.
#[repr(C)]
#[derive(Clone, Copy)]
struct EthtoolRxfhBuf {
    hdr: EthtoolRxfh,
    rss_config: [u32; RXFH_WORDS],
}

impl EthtoolRxfhBuf {
    /// A `GRSSH` request for a table of `indir_size` entries and a `key_size`-byte key, or `None`
    /// if they do not fit the buffer.
    fn request(indir_size: u32, key_size: u32) -> Option<Box<Self>> {
        if indir_size > RXFH_MAX_INDIR || key_size > RXFH_MAX_KEY {
            return None;
        }
        Some(Box::new(EthtoolRxfhBuf {
            hdr: EthtoolRxfh {
                cmd: ETHTOOL_GRSSH,
                indir_size,
                key_size,
                ..Default::default()
            },
            rss_config: [0; RXFH_WORDS],
        }))
    }

    fn indirection(&self) -> Vec<u32> {
        self.rss_config[..self.hdr.indir_size as usize].to_vec()
    }

    /// The key bytes, which follow the table in memory order.
    fn key(&self) -> Vec<u8> {
        let words = &self.rss_config[self.hdr.indir_size as usize..];
        words
            .iter()
            .flat_map(|w| w.to_ne_bytes())
            .take(self.hdr.key_size as usize)
            .collect()
    }
}

// Header-only GRSSH (both sizes zero): the kernel writes just the header.
impl EthtoolCmd for EthtoolRxfh {}
// Sized GRSSH: see `EthtoolRxfhBuf` for why its writes stay inside the struct.
impl EthtoolCmd for EthtoolRxfhBuf {}

/// Whether a GRSSH error means "this device has no RSS to report" rather than a failure.
fn rss_unsupported(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EOPNOTSUPP | libc::EINVAL | libc::ENODEV)
    )
}

/// The RSS configuration of interface `name` (`ETHTOOL_GRSSH`, default context 0): hash
/// function, key and indirection table.
///
/// `Ok(None)` when the device has none to report: the driver does not implement it (`lo`, veth
/// and the like answer `EOPNOTSUPP`; some drivers answer `EINVAL` or `ENODEV`), or it reports an
/// empty table or no key (virtio_net without the RSS feature). A nonexistent interface is an error
/// (`ENODEV`), as in [`channels`]. A table or key larger than this reader's limits (8192 entries,
/// 256 bytes) is an `Unsupported` error.
///
/// Two calls, as `ethtool -x` does: the first learns the sizes, the second fetches the data. If
/// the sizes change in between (`ethtool -L` / `-X` racing us) the kernel answers `EINVAL` with
/// the new sizes, and the read is retried.
pub fn rss(name: &str) -> io::Result<Option<super::rss::RssConfig>> {
    let mut hdr = EthtoolRxfh {
        cmd: ETHTOOL_GRSSH,
        ..Default::default()
    };
    if let Err(e) = ethtool_ioctl(name, &mut hdr) {
        return if rss_unsupported(&e) && super::neighbour::ifindex(name).is_ok() {
            Ok(None)
        } else {
            Err(e)
        };
    }
    for _ in 0..4 {
        if hdr.indir_size == 0 || hdr.key_size == 0 {
            return Ok(None);
        }
        let mut buf = EthtoolRxfhBuf::request(hdr.indir_size, hdr.key_size).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "{name}: RSS table of {} entries / key of {} bytes exceeds what is read",
                    hdr.indir_size, hdr.key_size
                ),
            )
        })?;
        match ethtool_ioctl(name, &mut *buf) {
            Ok(()) => {
                return Ok(Some(super::rss::RssConfig {
                    key: buf.key(),
                    indirection: buf.indirection(),
                    hfunc: super::rss::HashFunction::from_ethtool(u32::from(buf.hdr.hfunc)),
                    input_xfrm: buf.hdr.input_xfrm,
                }));
            }
            Err(e)
                if e.raw_os_error() == Some(libc::EINVAL)
                    && (buf.hdr.indir_size, buf.hdr.key_size) != (hdr.indir_size, hdr.key_size) =>
            {
                // The device's sizes changed since the first call; the kernel wrote the new ones.
                hdr.indir_size = buf.hdr.indir_size;
                hdr.key_size = buf.hdr.key_size;
            }
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other(format!(
        "{name}: RSS table size kept changing while being read"
    )))
}

#[cfg(test)]
mod rss_tests {
    use super::*;

    #[test]
    fn rxfh_layout_matches_the_kernel() {
        assert_eq!(std::mem::size_of::<EthtoolRxfh>(), 24);
        assert_eq!(std::mem::offset_of!(EthtoolRxfh, hfunc), 16);
        assert_eq!(std::mem::offset_of!(EthtoolRxfh, input_xfrm), 17);
        assert_eq!(std::mem::offset_of!(EthtoolRxfh, rsvd32), 20);
        assert_eq!(std::mem::offset_of!(EthtoolRxfhBuf, rss_config), 24);
    }

    #[test]
    fn oversized_requests_are_refused() {
        assert!(EthtoolRxfhBuf::request(RXFH_MAX_INDIR, RXFH_MAX_KEY).is_some());
        assert!(EthtoolRxfhBuf::request(RXFH_MAX_INDIR + 1, 40).is_none());
        assert!(EthtoolRxfhBuf::request(128, RXFH_MAX_KEY + 1).is_none());
    }

    #[test]
    fn key_follows_the_table() {
        let mut buf = EthtoolRxfhBuf::request(2, 6).unwrap();
        buf.rss_config[0] = 3;
        buf.rss_config[1] = 1;
        buf.rss_config[2] = u32::from_ne_bytes([0x6d, 0x5a, 0x56, 0xda]);
        buf.rss_config[3] = u32::from_ne_bytes([0x25, 0x5b, 0xff, 0xff]);
        assert_eq!(buf.indirection(), vec![3, 1]);
        assert_eq!(buf.key(), vec![0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b]);
    }

    #[test]
    fn loopback_has_no_rss() {
        // lo implements no get_rxfh: the engine then uses RssConfig::software.
        assert_eq!(rss("lo").unwrap(), None);
    }

    #[test]
    fn missing_interfaces_are_errors() {
        let err = rss("no-such-if-xyz").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENODEV));
        assert!(rss("a\0b").is_err());
    }
}
