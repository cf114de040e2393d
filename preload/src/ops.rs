//! The socket operations on provider descriptors, in safe Rust over slices and addresses:
//! `calls` does the pointer checking and the C signatures. Errors are Linux errno values.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use provider::api::{Provider, Readiness};
use provider::socket::WsaError;
use provider::socket::options as wo;

use crate::errno::from_wsa;
use crate::fdtable::{Doorbell, ProvSock};
use crate::real;
use crate::stack::{self, LingerNonblocking, Stack};

pub type R<T> = Result<T, i32>;

fn w<T>(r: Result<T, WsaError>) -> R<T> {
    r.map_err(from_wsa)
}

fn int(v: i32) -> [u8; 4] {
    v.to_ne_bytes()
}

/// An option of the kernel socket at `fd`, as an int (0 if it cannot be read).
fn kernel_int_opt(fd: i32, level: i32, name: i32) -> i32 {
    let mut v: i32 = 0;
    let mut len = 4 as libc::socklen_t;
    let getsockopt =
        crate::real!(getsockopt: fn(i32, i32, i32, *mut libc::c_void, *mut libc::socklen_t) -> i32);
    // SAFETY: a 4-byte out buffer and its length, both live locals.
    let r = unsafe {
        getsockopt(
            fd,
            level,
            name,
            &mut v as *mut i32 as *mut libc::c_void,
            &mut len,
        )
    };
    if r == 0 { v } else { 0 }
}

/// IPV6_V6ONLY on the kernel socket at `fd`.
pub fn v6only(fd: i32) -> bool {
    kernel_int_opt(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY) != 0
}

/// What kind of kernel socket `fd` is, if the provider could take it: (stream?, family).
pub fn kernel_socket_kind(fd: i32) -> Option<(bool, i32)> {
    let domain = kernel_int_opt(fd, libc::SOL_SOCKET, libc::SO_DOMAIN);
    let ty = kernel_int_opt(fd, libc::SOL_SOCKET, libc::SO_TYPE);
    let proto = kernel_int_opt(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL);
    if domain != libc::AF_INET && domain != libc::AF_INET6 {
        return None;
    }
    match ty {
        libc::SOCK_STREAM if proto == 0 || proto == libc::IPPROTO_TCP => Some((true, domain)),
        libc::SOCK_DGRAM if proto == 0 || proto == libc::IPPROTO_UDP => Some((false, domain)),
        _ => None,
    }
}

/// A doorbell pair: the eventfd to put at the application's number, and our private duplicate.
fn new_doorbell() -> R<(i32, Arc<Doorbell>)> {
    let ev = real::sys_eventfd();
    if ev < 0 {
        return Err(real::errno());
    }
    let bell = real::sys_dup_cloexec(ev);
    if bell < 0 {
        let e = real::errno();
        real::sys_close(ev);
        return Err(e);
    }
    Ok((ev, Arc::new(Doorbell::new(bell))))
}

/// Move the kernel socket at `fd` onto the provider: a provider socket with the kernel
/// socket's options, and an eventfd in its place at the same number.
pub fn handover(st: &Stack, fd: i32, stream: bool, family: i32) -> R<Arc<ProvSock>> {
    let p = &st.provider;
    let af = if family == libc::AF_INET6 {
        provider::api::AF_INET6
    } else {
        provider::api::AF_INET
    };
    let s = if stream {
        w(p.wsp_socket(af, provider::api::SOCK_STREAM, provider::api::IPPROTO_TCP))?
    } else {
        w(p.wsp_socket(af, provider::api::SOCK_DGRAM, provider::api::IPPROTO_UDP))?
    };
    // The options the application set on the kernel socket before bind/connect.
    let fcntl = crate::real!(fcntl: fn(i32, i32, ...) -> i32);
    // SAFETY: F_GETFL / F_GETFD take no argument.
    let (fl, fdfl) = unsafe { (fcntl(fd, libc::F_GETFL), fcntl(fd, libc::F_GETFD)) };
    let nonblocking = fl >= 0 && fl & libc::O_NONBLOCK != 0;
    let set = |level, name, v: &[u8]| {
        let _ = p.wsp_set_sock_opt(s, level, name, v);
    };
    if kernel_int_opt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR) != 0 {
        set(wo::SOL_SOCKET, wo::SO_REUSEADDR, &int(1));
    }
    if kernel_int_opt(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE) != 0 {
        set(wo::SOL_SOCKET, wo::SO_KEEPALIVE, &int(1));
    }
    if stream && kernel_int_opt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY) != 0 {
        set(wo::IPPROTO_TCP, wo::TCP_NODELAY, &int(1));
    }
    if stream {
        let mut l = libc::linger {
            l_onoff: 0,
            l_linger: 0,
        };
        let mut len = std::mem::size_of::<libc::linger>() as libc::socklen_t;
        let getsockopt = crate::real!(getsockopt: fn(i32, i32, i32, *mut libc::c_void, *mut libc::socklen_t) -> i32);
        // SAFETY: a struct linger out buffer and its length, both live locals.
        let r = unsafe {
            getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                &mut l as *mut _ as *mut libc::c_void,
                &mut len,
            )
        };
        if r == 0 && l.l_onoff != 0 {
            set(wo::SOL_SOCKET, wo::SO_LINGER, &linger_bytes(&l));
        }
    }
    if nonblocking {
        let _ = p.wsp_ioctl(s, wo::FIONBIO, &mut 1);
    }
    let (ev, doorbell) = match new_doorbell() {
        Ok(x) => x,
        Err(e) => {
            let _ = p.wsp_close_socket(s);
            return Err(e);
        }
    };
    let ps = Arc::new(ProvSock {
        sock: s,
        dgram: !stream,
        family,
        doorbell,
        nonblocking: AtomicBool::new(nonblocking),
        read_shut: AtomicBool::new(false),
    });
    stack::table().insert(fd, ps.clone());
    let cloexec = if fdfl >= 0 && fdfl & libc::FD_CLOEXEC != 0 {
        libc::O_CLOEXEC
    } else {
        0
    };
    // The kernel socket at `fd` is closed by this, atomically replaced by the eventfd.
    if real::sys_dup3(ev, fd, cloexec) < 0 {
        let e = real::errno();
        stack::table().remove(fd);
        real::sys_close(ev);
        let _ = p.wsp_close_socket(s);
        return Err(e);
    }
    real::sys_close(ev);
    Ok(ps)
}

/// A Linux `struct linger` as the provider's Winsock LINGER (u16 fields; longer times clamp).
pub fn linger_bytes(l: &libc::linger) -> [u8; 4] {
    let on = u16::from(l.l_onoff != 0);
    let secs = u16::try_from(l.l_linger.max(0)).unwrap_or(u16::MAX);
    let mut b = [0u8; 4];
    b[..2].copy_from_slice(&on.to_ne_bytes());
    b[2..].copy_from_slice(&secs.to_ne_bytes());
    b
}

fn provider_linger(p: &Provider, ps: &ProvSock) -> (bool, u16) {
    let mut b = [0u8; 4];
    if p.wsp_get_sock_opt(ps.sock, wo::SOL_SOCKET, wo::SO_LINGER, &mut b)
        .is_err()
    {
        return (false, 0);
    }
    (
        u16::from_ne_bytes([b[0], b[1]]) != 0,
        u16::from_ne_bytes([b[2], b[3]]),
    )
}

/// A new descriptor for an accepted provider socket `s`.
pub fn install_accepted(
    st: &Stack,
    s: provider::socket::Socket,
    family: i32,
    flags: i32,
) -> R<i32> {
    let p = &st.provider;
    let nonblocking = flags & libc::SOCK_NONBLOCK != 0;
    // Linux: an accepted socket is blocking unless accept4 asks (it does not inherit O_NONBLOCK).
    let _ = p.wsp_ioctl(s, wo::FIONBIO, &mut u32::from(nonblocking));
    let (ev, doorbell) = match new_doorbell() {
        Ok(x) => x,
        Err(e) => {
            let _ = p.wsp_close_socket(s);
            return Err(e);
        }
    };
    if flags & libc::SOCK_CLOEXEC == 0 {
        // SAFETY: clearing FD_CLOEXEC on our new eventfd.
        unsafe { libc::syscall(libc::SYS_fcntl, ev, libc::F_SETFD, 0) };
    }
    stack::table().insert(
        ev,
        Arc::new(ProvSock {
            sock: s,
            dgram: false,
            family,
            doorbell,
            nonblocking: AtomicBool::new(nonblocking),
            read_shut: AtomicBool::new(false),
        }),
    );
    Ok(ev)
}

pub fn readiness(p: &Provider, ps: &ProvSock) -> (u64, Readiness) {
    match p.readiness(ps.sock) {
        Ok(x) => x,
        // Closed under us: report it as hung up and in error, as a dead socket polls.
        Err(_) => (
            0,
            Readiness {
                readable: true,
                writable: true,
                peer_closed: true,
                hung_up: true,
                error: true,
            },
        ),
    }
}

pub fn recv(st: &Stack, ps: &ProvSock, buf: &mut [u8], flags: i32) -> R<usize> {
    let p = &st.provider;
    if flags & libc::MSG_ERRQUEUE != 0 {
        // The provider queues no errors (no IP_RECVERR): Linux's answer for an empty queue.
        return Err(libc::EAGAIN);
    }
    if flags & libc::MSG_OOB != 0 && !ps.dgram {
        // No urgent byte is ever held out of band: Linux's answer when there is none.
        return Err(libc::EINVAL);
    }
    if flags & libc::MSG_OOB != 0 {
        return Err(libc::EOPNOTSUPP);
    }
    if ps.read_shut.load(Ordering::Relaxed) {
        return Ok(0);
    }
    let blocking = !ps.nonblocking.load(Ordering::Relaxed);
    if flags & libc::MSG_DONTWAIT != 0 && blocking && !readiness(p, ps).1.readable {
        return Err(libc::EAGAIN);
    }
    if blocking {
        crate::drive::release_kicks();
    }
    if ps.dgram {
        return recv_from(st, ps, buf, flags).map(|(n, _, _)| n);
    }
    // Only a connection waits (a listener or a socket never connected fails at once).
    if blocking
        && flags & libc::MSG_DONTWAIT == 0
        && !buf.is_empty()
        && p.wsp_get_peer_name(ps.sock).is_ok()
    {
        crate::drive::wait_until(p, ps, |r| {
            r.readable || r.peer_closed || r.hung_up || r.error
        });
    }
    if flags & libc::MSG_PEEK != 0 {
        // MSG_PEEK|MSG_WAITALL peeks what is there (Linux would wait for all of it).
        return p.wsp_recv_peek(ps.sock, buf).map_err(from_wsa);
    }
    let waitall = flags & libc::MSG_WAITALL != 0 && blocking && flags & libc::MSG_DONTWAIT == 0;
    let mut got = 0;
    loop {
        match p.wsp_recv(ps.sock, &mut buf[got..]) {
            Ok(0) => return Ok(got),
            Ok(n) => {
                got += n;
                if !waitall || got == buf.len() {
                    return Ok(got);
                }
            }
            Err(e) if got > 0 && e != WsaError::WSAEWOULDBLOCK => return Ok(got),
            // Linux reports ENOTCONN for recv on a socket that never connected.
            Err(e) => return Err(from_wsa(e)),
        }
    }
}

/// A datagram: (bytes copied, sender, full datagram length).
pub fn recv_from(
    st: &Stack,
    ps: &ProvSock,
    buf: &mut [u8],
    flags: i32,
) -> R<(usize, SocketAddr, usize)> {
    let p = &st.provider;
    if !ps.dgram {
        let n = recv(st, ps, buf, flags)?;
        let peer = w(p.wsp_get_peer_name(ps.sock))?;
        return Ok((n, peer, n));
    }
    if flags & libc::MSG_ERRQUEUE != 0 {
        return Err(libc::EAGAIN);
    }
    if flags & libc::MSG_OOB != 0 {
        return Err(libc::EOPNOTSUPP);
    }
    if flags & libc::MSG_DONTWAIT != 0
        && !ps.nonblocking.load(Ordering::Relaxed)
        && !readiness(p, ps).1.readable
    {
        return Err(libc::EAGAIN);
    }
    if !ps.nonblocking.load(Ordering::Relaxed) && flags & libc::MSG_DONTWAIT == 0 {
        crate::drive::wait_until(p, ps, |r| r.readable || r.error);
    }
    // Linux truncates silently (MSG_TRUNC in recvmsg), where Winsock says WSAEMSGSIZE.
    let m = if flags & libc::MSG_PEEK != 0 {
        w(p.wsp_recv_msg_peek(ps.sock, buf))?
    } else {
        w(p.wsp_recv_msg(ps.sock, buf))?
    };
    Ok((m.len, m.from, m.datagram_len))
}

/// SIGPIPE as Linux raises it for a send on a stream that can no longer send.
fn pipe(flags: i32, e: i32) -> i32 {
    if e == libc::EPIPE && flags & libc::MSG_NOSIGNAL == 0 {
        // SAFETY: raising a signal in this thread, as the kernel's send would.
        unsafe { libc::raise(libc::SIGPIPE) };
    }
    e
}

pub fn send(st: &Stack, ps: &ProvSock, buf: &[u8], flags: i32) -> R<usize> {
    let p = &st.provider;
    if flags & libc::MSG_OOB != 0 {
        return Err(libc::EOPNOTSUPP);
    }
    if ps.dgram {
        // Connected UDP is not offered yet: a datagram needs its destination.
        return Err(libc::EDESTADDRREQ);
    }
    let blocking = !ps.nonblocking.load(Ordering::Relaxed);
    if flags & libc::MSG_DONTWAIT != 0 && blocking && !readiness(p, ps).1.writable {
        return Err(libc::EAGAIN);
    }
    if blocking {
        crate::drive::release_kicks();
    }
    let mut sent = 0;
    loop {
        match p.wsp_send(ps.sock, &buf[sent..]) {
            Ok(n) => {
                sent += n;
                // A blocking send returns when all of it is queued (Linux).
                if sent == buf.len() || !blocking || flags & libc::MSG_DONTWAIT != 0 {
                    return Ok(sent);
                }
            }
            Err(e) if sent > 0 => {
                let _ = e;
                return Ok(sent);
            }
            Err(WsaError::WSAECONNRESET) => return Err(libc::ECONNRESET),
            // Linux: a listener "can no longer send" (EPIPE and SIGPIPE).
            Err(WsaError::WSAENOTCONN) if listening(p, ps) => {
                return Err(pipe(flags, libc::EPIPE));
            }
            Err(e) => return Err(pipe(flags, from_wsa(e))),
        }
    }
}

pub fn send_to(
    st: &Stack,
    ps: &ProvSock,
    buf: &[u8],
    to: Option<SocketAddr>,
    flags: i32,
) -> R<usize> {
    match (ps.dgram, to) {
        // Linux refuses port 0 before routing (Winsock says WSAEADDRNOTAVAIL).
        (true, Some(to)) if to.port() == 0 => Err(libc::EINVAL),
        (true, Some(to)) => w(st.provider.wsp_send_to(ps.sock, buf, to)),
        (true, None) => Err(libc::EDESTADDRREQ),
        // Linux ignores the address on a connected stream socket.
        (false, _) => send(st, ps, buf, flags),
    }
}

/// close(2) of a provider descriptor: Ok(true) closed, Ok(false) kept (WSP linger rule).
pub fn close(st: &Stack, ps: &ProvSock) -> R<bool> {
    let p = &st.provider;
    let (on, secs) = provider_linger(p, ps);
    if on && secs > 0 {
        // A linger close waits for the peer's ACK of frames this thread may hold back.
        crate::drive::release_kicks();
    }
    if on
        && secs > 0
        && ps.nonblocking.load(Ordering::Relaxed)
        && st.linger_nonblocking == LingerNonblocking::Linux
    {
        // Linux's close blocks for the linger time even on a nonblocking socket.
        let _ = p.wsp_ioctl(ps.sock, wo::FIONBIO, &mut 0);
    }
    match p.wsp_close_socket(ps.sock) {
        Err(WsaError::WSAEWOULDBLOCK) => Err(libc::EWOULDBLOCK),
        // Any other outcome (a linger timeout that reset, a socket already gone) closes the
        // descriptor: Linux's close reports neither.
        _ => Ok(true),
    }
}

/// An option level the socket has (TCP options on a UDP socket, IPv6 ones on an IPv4 socket
/// and the like fail with `e`, as Linux's setsockopt says ENOPROTOOPT and its getsockopt on
/// a UDP socket EOPNOTSUPP for a TCP option).
pub fn opt_level_fits(ps: &ProvSock, level: i32, e: i32) -> R<()> {
    let fits = match level {
        libc::IPPROTO_TCP => !ps.dgram,
        libc::IPPROTO_UDP => ps.dgram,
        libc::IPPROTO_IPV6 => ps.family == libc::AF_INET6,
        _ => true,
    };
    if fits {
        Ok(())
    } else if level == libc::IPPROTO_TCP {
        Err(e)
    } else {
        Err(libc::ENOPROTOOPT)
    }
}

/// Linux options the provider accepts and does not act on (listed in the README).
pub fn ignored_opt(ps: &ProvSock, level: i32, name: i32) -> bool {
    match level {
        libc::SOL_SOCKET => matches!(
            name,
            libc::SO_REUSEPORT
                | libc::SO_BROADCAST
                | libc::SO_PRIORITY
                | libc::SO_RCVLOWAT
                | libc::SO_SNDLOWAT
                | libc::SO_RCVTIMEO
                | libc::SO_SNDTIMEO
                | libc::SO_OOBINLINE
                | libc::SO_TIMESTAMP
                | libc::SO_MARK
                | libc::SO_BUSY_POLL
                | libc::SO_INCOMING_CPU
                | libc::SO_ZEROCOPY
        ),
        libc::IPPROTO_TCP => matches!(
            name,
            libc::TCP_QUICKACK
                | libc::TCP_DEFER_ACCEPT
                | libc::TCP_KEEPIDLE
                | libc::TCP_KEEPINTVL
                | libc::TCP_KEEPCNT
                | libc::TCP_FASTOPEN
                | libc::TCP_USER_TIMEOUT
                | libc::TCP_MAXSEG
                | libc::TCP_CONGESTION
                | libc::TCP_NOTSENT_LOWAT
                | libc::TCP_LINGER2
                | libc::TCP_SYNCNT
                | libc::TCP_WINDOW_CLAMP
        ),
        libc::IPPROTO_IP => matches!(
            name,
            libc::IP_TOS
                | libc::IP_TTL
                | libc::IP_RECVERR
                | libc::IP_PKTINFO
                | libc::IP_MTU_DISCOVER
                | libc::IP_FREEBIND
                | libc::IP_TRANSPARENT
                | libc::IP_BIND_ADDRESS_NO_PORT
                | libc::IP_RECVTOS
        ),
        libc::IPPROTO_IPV6 => {
            ps.family == libc::AF_INET6
                && matches!(
                    name,
                    libc::IPV6_V6ONLY
                        | libc::IPV6_TCLASS
                        | libc::IPV6_UNICAST_HOPS
                        | libc::IPV6_RECVPKTINFO
                        | libc::IPV6_RECVERR
                        | libc::IPV6_MTU_DISCOVER
                )
        }
        libc::IPPROTO_UDP => matches!(name, libc::UDP_SEGMENT | libc::UDP_GRO),
        _ => false,
    }
}

/// Whether a provider stream socket listens (SO_ACCEPTCONN).
pub fn listening(p: &Provider, ps: &ProvSock) -> bool {
    let mut b = [0u8; 4];
    p.wsp_get_sock_opt(ps.sock, wo::SOL_SOCKET, wo::SO_ACCEPTCONN, &mut b)
        .is_ok_and(|_| i32::from_ne_bytes(b) != 0)
}

/// A Linux socket option as the provider's (level, name), or None if the provider does not
/// keep it.
pub fn provider_opt(level: i32, name: i32) -> Option<(i32, i32)> {
    match (level, name) {
        (libc::SOL_SOCKET, libc::SO_REUSEADDR) => Some((wo::SOL_SOCKET, wo::SO_REUSEADDR)),
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE) => Some((wo::SOL_SOCKET, wo::SO_KEEPALIVE)),
        (libc::SOL_SOCKET, libc::SO_SNDBUF) => Some((wo::SOL_SOCKET, wo::SO_SNDBUF)),
        (libc::SOL_SOCKET, libc::SO_RCVBUF) => Some((wo::SOL_SOCKET, wo::SO_RCVBUF)),
        (libc::SOL_SOCKET, libc::SO_ERROR) => Some((wo::SOL_SOCKET, wo::SO_ERROR)),
        (libc::SOL_SOCKET, libc::SO_ACCEPTCONN) => Some((wo::SOL_SOCKET, wo::SO_ACCEPTCONN)),
        (libc::IPPROTO_TCP, libc::TCP_NODELAY) => Some((wo::IPPROTO_TCP, wo::TCP_NODELAY)),
        (libc::IPPROTO_TCP, libc::TCP_CORK) => Some((wo::IPPROTO_TCP, wo::TCP_CORK)),
        _ => None,
    }
}

/// How much of a file `sendfile` reads and sends at a time.
const SENDFILE_CHUNK: usize = 64 << 10;

/// sendfile(2) onto a provider socket, by copying: the file's bytes are read (`pread` at
/// `offset`, or `read` at the file position, which then ends just past what was sent) and
/// sent a chunk at a time. As Linux: the bytes sent, or the error if none were; a nonblocking
/// socket sends what fits.
pub fn sendfile(
    st: &Stack,
    ps: &ProvSock,
    in_fd: i32,
    mut offset: Option<&mut i64>,
    count: usize,
) -> R<usize> {
    let pread = crate::real!(pread: fn(i32, *mut libc::c_void, usize, libc::off_t) -> isize);
    let read = crate::real!(read: fn(i32, *mut libc::c_void, usize) -> isize);
    let lseek = crate::real!(lseek: fn(i32, libc::off_t, i32) -> libc::off_t);
    let mut chunk = vec![0u8; count.min(SENDFILE_CHUNK)];
    let mut done = 0usize;
    while done < count {
        let want = (count - done).min(chunk.len());
        let got = match offset.as_deref() {
            // SAFETY: `chunk` has room for `want` bytes.
            Some(&off) => unsafe { pread(in_fd, chunk.as_mut_ptr().cast(), want, off) },
            // SAFETY: as above.
            None => unsafe { read(in_fd, chunk.as_mut_ptr().cast(), want) },
        };
        if got < 0 {
            let e = real::errno();
            return if done > 0 { Ok(done) } else { Err(e) };
        }
        let got = got as usize;
        if got == 0 {
            break;
        }
        let sent = send(st, ps, &chunk[..got], 0);
        let n = *sent.as_ref().unwrap_or(&0);
        match offset.as_deref_mut() {
            Some(off) => *off += n as i64,
            None if n < got => {
                // Give back what was read but not sent.
                // SAFETY: plain descriptor operation.
                unsafe { lseek(in_fd, -((got - n) as libc::off_t), libc::SEEK_CUR) };
            }
            None => {}
        }
        match sent {
            Ok(_) => {
                done += n;
                if n < got {
                    break;
                }
            }
            Err(e) if done == 0 => return Err(e),
            Err(_) => break,
        }
    }
    Ok(done)
}
