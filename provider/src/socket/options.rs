//! Socket options (DESIGN §6): level/name constants as Winsock numbers them, the stored
//! per-socket values, and `setsockopt`/`getsockopt` over raw byte buffers the way Winsock takes
//! them (`optval` + `optlen`).
//!
//! Rules, in the order they are checked:
//! 1. a level we do not know → `WSAEINVAL` ("level is not valid", Winsock `setsockopt`);
//! 2. a name unknown at a known level → `WSAENOPROTOOPT`;
//! 3. an option that means nothing for this socket kind → `WSAENOPROTOOPT` — for datagram
//!    sockets: `SO_LINGER`, `SO_DONTLINGER` (Windows behaviour), `SO_KEEPALIVE`, `TCP_NODELAY`;
//!    read-only options (`SO_ERROR`, `SO_TYPE`) given to set → `WSAENOPROTOOPT`;
//! 4. a buffer shorter than the option (4 bytes for every option here) → `WSAEFAULT`;
//! 5. a negative `SO_SNDBUF`/`SO_RCVBUF` → `WSAEINVAL`.
//!
//! Integers and `BOOL`s are 4-byte native-endian `int`s; any nonzero `BOOL` is TRUE. `LINGER` is
//! two native-endian `u_short`s. Longer buffers are accepted; only the first bytes are used.
use super::entry::SocketKind;
use super::error::{WsaError, WspResult};

/// Socket-level options.
pub const SOL_SOCKET: i32 = 0xffff;
/// IP-level options (none supported yet; a known level).
pub const IPPROTO_IP: i32 = 0;
/// TCP-level options.
pub const IPPROTO_TCP: i32 = 6;
/// UDP-level options (none supported yet; a known level).
pub const IPPROTO_UDP: i32 = 17;
/// IPv6-level options (none supported yet; a known level).
pub const IPPROTO_IPV6: i32 = 41;

pub const SO_REUSEADDR: i32 = 0x0004;
pub const SO_KEEPALIVE: i32 = 0x0008;
pub const SO_LINGER: i32 = 0x0080;
/// `~SO_LINGER` as Winsock defines it.
pub const SO_DONTLINGER: i32 = !SO_LINGER;
pub const SO_SNDBUF: i32 = 0x1001;
pub const SO_RCVBUF: i32 = 0x1002;
pub const SO_ERROR: i32 = 0x1007;
pub const SO_TYPE: i32 = 0x1008;
/// Read only: 1 while the socket listens.
pub const SO_ACCEPTCONN: i32 = 0x0002;
pub const TCP_NODELAY: i32 = 0x0001;
/// Provider extension, Linux's `TCP_CORK` (Winsock has none): while set, only full segments
/// go out; clearing it sends what is queued at once. Linux's 200 ms cork ceiling is not kept.
pub const TCP_CORK: i32 = 0x7001;

/// `FIONBIO` ioctl: nonzero argument → nonblocking.
pub const FIONBIO: u32 = 0x8004_667E;
/// `FIONREAD` ioctl: bytes readable (for datagram sockets: size of the first queued datagram).
pub const FIONREAD: u32 = 0x4004_667F;
/// Provider extension, Linux's `SIOCOUTQ` (Winsock has none): bytes sent and not yet
/// acknowledged, or queued and not yet sent (stream sockets; 0 before a connection).
pub const SIOCOUTQ: u32 = 0x4004_7001;

/// Winsock `LINGER`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Linger {
    pub l_onoff: u16,
    /// Seconds.
    pub l_linger: u16,
}

impl Linger {
    /// The 4-byte wire form.
    pub fn to_bytes(self) -> [u8; 4] {
        let a = self.l_onoff.to_ne_bytes();
        let b = self.l_linger.to_ne_bytes();
        [a[0], a[1], b[0], b[1]]
    }

    /// From the wire form; WSAEFAULT if shorter than 4 bytes.
    pub fn from_bytes(b: &[u8]) -> WspResult<Self> {
        match b {
            [a0, a1, b0, b1, ..] => Ok(Linger {
                l_onoff: u16::from_ne_bytes([*a0, *a1]),
                l_linger: u16::from_ne_bytes([*b0, *b1]),
            }),
            _ => Err(WsaError::WSAEFAULT),
        }
    }
}

/// The options one socket stores. Shared by every socket kind; what a kind accepts is decided by
/// [`SocketOptions::set`] / [`SocketOptions::get`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketOptions {
    pub reuse_addr: bool,
    pub keepalive: bool,
    /// `l_onoff == 0` ⇔ SO_DONTLINGER (the default).
    pub linger: Linger,
    pub sndbuf: usize,
    /// Bound on queued received bytes (see `udp::RecvQueue`).
    pub rcvbuf: usize,
    pub nodelay: bool,
    /// [`TCP_CORK`].
    pub cork: bool,
    /// Pending per-socket error for `SO_ERROR` (0 = none); read-and-clear.
    pub error: i32,
}

impl SocketOptions {
    /// Defaults: every flag off, DONTLINGER, the given buffer sizes.
    pub fn new(rcvbuf: usize, sndbuf: usize) -> Self {
        SocketOptions {
            reuse_addr: false,
            keepalive: false,
            linger: Linger::default(),
            sndbuf,
            rcvbuf,
            nodelay: false,
            cork: false,
            error: 0,
        }
    }

    /// `setsockopt`.
    pub fn set(&mut self, kind: SocketKind, level: i32, name: i32, optval: &[u8]) -> WspResult<()> {
        let opt = Opt::classify(level, name)?;
        opt.check_kind(kind)?;
        match opt {
            Opt::ReuseAddr => self.reuse_addr = read_int(optval)? != 0,
            Opt::KeepAlive => self.keepalive = read_int(optval)? != 0,
            Opt::NoDelay => self.nodelay = read_int(optval)? != 0,
            Opt::Cork => self.cork = read_int(optval)? != 0,
            Opt::Linger => self.linger = Linger::from_bytes(optval)?,
            Opt::DontLinger => {
                // TRUE ⇔ l_onoff = 0; FALSE turns lingering on with the stored interval.
                self.linger.l_onoff = u16::from(read_int(optval)? == 0);
            }
            Opt::SndBuf => self.sndbuf = read_size(optval)?,
            Opt::RcvBuf => self.rcvbuf = read_size(optval)?,
            Opt::Error | Opt::Type => return Err(WsaError::WSAENOPROTOOPT),
        }
        Ok(())
    }

    /// `getsockopt`: writes the value at the start of `out`, returns its length.
    pub fn get(
        &mut self,
        kind: SocketKind,
        level: i32,
        name: i32,
        out: &mut [u8],
    ) -> WspResult<usize> {
        let opt = Opt::classify(level, name)?;
        opt.check_kind(kind)?;
        match opt {
            Opt::ReuseAddr => write_int(out, i32::from(self.reuse_addr)),
            Opt::KeepAlive => write_int(out, i32::from(self.keepalive)),
            Opt::NoDelay => write_int(out, i32::from(self.nodelay)),
            Opt::Cork => write_int(out, i32::from(self.cork)),
            Opt::Linger => write_bytes(out, &self.linger.to_bytes()),
            Opt::DontLinger => write_int(out, i32::from(self.linger.l_onoff == 0)),
            Opt::SndBuf => write_int(out, clamp_i32(self.sndbuf)),
            Opt::RcvBuf => write_int(out, clamp_i32(self.rcvbuf)),
            Opt::Type => write_int(out, kind.so_type()),
            Opt::Error => {
                let n = write_int(out, self.error)?;
                self.error = 0;
                Ok(n)
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Opt {
    ReuseAddr,
    KeepAlive,
    Linger,
    DontLinger,
    SndBuf,
    RcvBuf,
    Error,
    Type,
    NoDelay,
    Cork,
}

impl Opt {
    fn classify(level: i32, name: i32) -> WspResult<Opt> {
        match level {
            SOL_SOCKET => match name {
                SO_REUSEADDR => Ok(Opt::ReuseAddr),
                SO_KEEPALIVE => Ok(Opt::KeepAlive),
                SO_LINGER => Ok(Opt::Linger),
                SO_DONTLINGER => Ok(Opt::DontLinger),
                SO_SNDBUF => Ok(Opt::SndBuf),
                SO_RCVBUF => Ok(Opt::RcvBuf),
                SO_ERROR => Ok(Opt::Error),
                SO_TYPE => Ok(Opt::Type),
                _ => Err(WsaError::WSAENOPROTOOPT),
            },
            IPPROTO_TCP => match name {
                TCP_NODELAY => Ok(Opt::NoDelay),
                TCP_CORK => Ok(Opt::Cork),
                _ => Err(WsaError::WSAENOPROTOOPT),
            },
            IPPROTO_UDP | IPPROTO_IP | IPPROTO_IPV6 => Err(WsaError::WSAENOPROTOOPT),
            _ => Err(WsaError::WSAEINVAL),
        }
    }

    fn check_kind(self, kind: SocketKind) -> WspResult<()> {
        let ok = match kind {
            SocketKind::Stream => true,
            SocketKind::Datagram => !matches!(
                self,
                Opt::Linger | Opt::DontLinger | Opt::KeepAlive | Opt::NoDelay | Opt::Cork
            ),
        };
        if ok {
            Ok(())
        } else {
            Err(WsaError::WSAENOPROTOOPT)
        }
    }
}

fn read_int(b: &[u8]) -> WspResult<i32> {
    match b {
        [a, b, c, d, ..] => Ok(i32::from_ne_bytes([*a, *b, *c, *d])),
        _ => Err(WsaError::WSAEFAULT),
    }
}

fn read_size(b: &[u8]) -> WspResult<usize> {
    usize::try_from(read_int(b)?).map_err(|_| WsaError::WSAEINVAL)
}

fn write_int(out: &mut [u8], v: i32) -> WspResult<usize> {
    write_bytes(out, &v.to_ne_bytes())
}

fn write_bytes(out: &mut [u8], v: &[u8]) -> WspResult<usize> {
    let dst = out.get_mut(..v.len()).ok_or(WsaError::WSAEFAULT)?;
    dst.copy_from_slice(v);
    Ok(v.len())
}

fn clamp_i32(v: usize) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use SocketKind::{Datagram, Stream};

    fn int(v: i32) -> [u8; 4] {
        v.to_ne_bytes()
    }

    #[test]
    fn constants_match_winsock() {
        assert_eq!(SO_DONTLINGER, -129);
        assert_eq!(FIONBIO, 0x8004667E);
        assert_eq!(FIONREAD, 0x4004667F);
    }

    #[test]
    fn set_get_round_trip() {
        let mut o = SocketOptions::new(1000, 2000);
        let mut out = [0u8; 8];
        assert_eq!(o.get(Datagram, SOL_SOCKET, SO_RCVBUF, &mut out), Ok(4));
        assert_eq!(i32::from_ne_bytes(out[..4].try_into().unwrap()), 1000);
        o.set(Datagram, SOL_SOCKET, SO_RCVBUF, &int(5)).unwrap();
        assert_eq!(o.rcvbuf, 5);
        o.set(Datagram, SOL_SOCKET, SO_REUSEADDR, &int(7)).unwrap();
        assert!(o.reuse_addr);
        o.get(Datagram, SOL_SOCKET, SO_TYPE, &mut out).unwrap();
        assert_eq!(i32::from_ne_bytes(out[..4].try_into().unwrap()), 2);
        o.error = 10054;
        o.get(Datagram, SOL_SOCKET, SO_ERROR, &mut out).unwrap();
        assert_eq!(i32::from_ne_bytes(out[..4].try_into().unwrap()), 10054);
        assert_eq!(o.error, 0);
    }

    #[test]
    fn linger_and_dontlinger_on_streams() {
        let mut o = SocketOptions::new(1, 1);
        let mut out = [0u8; 4];
        o.get(Stream, SOL_SOCKET, SO_DONTLINGER, &mut out).unwrap();
        assert_eq!(out, int(1), "DONTLINGER is TRUE by default");
        let l = Linger {
            l_onoff: 1,
            l_linger: 5,
        };
        o.set(Stream, SOL_SOCKET, SO_LINGER, &l.to_bytes()).unwrap();
        o.get(Stream, SOL_SOCKET, SO_DONTLINGER, &mut out).unwrap();
        assert_eq!(out, int(0));
        o.set(Stream, SOL_SOCKET, SO_DONTLINGER, &int(1)).unwrap();
        assert_eq!(
            o.linger,
            Linger {
                l_onoff: 0,
                l_linger: 5
            }
        );
        o.set(Stream, SOL_SOCKET, SO_DONTLINGER, &int(0)).unwrap();
        assert_eq!(
            o.linger,
            Linger {
                l_onoff: 1,
                l_linger: 5
            }
        );
        o.get(Stream, SOL_SOCKET, SO_LINGER, &mut out).unwrap();
        assert_eq!(
            Linger::from_bytes(&out),
            Ok(Linger {
                l_onoff: 1,
                l_linger: 5
            })
        );
        o.set(Stream, IPPROTO_TCP, TCP_NODELAY, &int(1)).unwrap();
        assert!(o.nodelay);
    }

    #[test]
    fn errors() {
        use WsaError::*;
        let mut o = SocketOptions::new(1, 1);
        let cases: &[(SocketKind, i32, i32, &[u8], WsaError)] = &[
            (Datagram, SOL_SOCKET, 0x7777, &int(1), WSAENOPROTOOPT),
            (Datagram, 12345, SO_RCVBUF, &int(1), WSAEINVAL),
            (Datagram, IPPROTO_UDP, 1, &int(1), WSAENOPROTOOPT),
            (Datagram, SOL_SOCKET, SO_LINGER, &[0; 4], WSAENOPROTOOPT),
            (Datagram, SOL_SOCKET, SO_DONTLINGER, &int(1), WSAENOPROTOOPT),
            (Datagram, SOL_SOCKET, SO_KEEPALIVE, &int(1), WSAENOPROTOOPT),
            (Datagram, IPPROTO_TCP, TCP_NODELAY, &int(1), WSAENOPROTOOPT),
            (Datagram, SOL_SOCKET, SO_TYPE, &int(1), WSAENOPROTOOPT),
            (Datagram, SOL_SOCKET, SO_ERROR, &int(1), WSAENOPROTOOPT),
            (Datagram, SOL_SOCKET, SO_RCVBUF, &[1, 2, 3], WSAEFAULT),
            (Datagram, SOL_SOCKET, SO_REUSEADDR, &[], WSAEFAULT),
            (Datagram, SOL_SOCKET, SO_SNDBUF, &int(-1), WSAEINVAL),
            (Stream, SOL_SOCKET, SO_LINGER, &[1, 0, 0], WSAEFAULT),
        ];
        for (i, (kind, level, name, val, want)) in cases.iter().enumerate() {
            assert_eq!(o.set(*kind, *level, *name, val), Err(*want), "set case {i}");
        }
        let mut short = [0u8; 3];
        assert_eq!(
            o.get(Datagram, SOL_SOCKET, SO_RCVBUF, &mut short),
            Err(WSAEFAULT)
        );
        assert_eq!(
            o.get(Datagram, SOL_SOCKET, SO_LINGER, &mut [0; 4]),
            Err(WSAENOPROTOOPT)
        );
        assert_eq!(
            o.get(Datagram, IPPROTO_TCP, TCP_NODELAY, &mut [0; 4]),
            Err(WSAENOPROTOOPT)
        );
        assert_eq!(o.get(Datagram, -5, SO_TYPE, &mut [0; 4]), Err(WSAEINVAL));
    }
}
