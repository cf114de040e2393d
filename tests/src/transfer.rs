//! Bulk TCP transfers between the provider and the kernel peer, checked by SHA-256: the
//! kernel's side runs on a thread in the lab's peer namespace.
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;

use provider::api::{AF_INET, AF_INET6, IPPROTO_TCP, Provider, SD_SEND, SOCK_STREAM};
use provider::socket::Socket;
use sha2::{Digest, Sha256};
use xtask::lab::{Lab, PEER_V4, PEER_V6, PROVIDER_V4, PROVIDER_V6};

use crate::in_peer;

/// The byte at stream offset `i` (so corruption or loss is visible anywhere).
pub fn pattern(i: u64) -> u8 {
    (i % 251) as u8
}

pub fn fill(buf: &mut [u8], offset: u64) {
    for (k, b) in buf.iter_mut().enumerate() {
        *b = pattern(offset + k as u64);
    }
}

/// Stream `total` bytes of the pattern into `w`; returns their SHA-256.
pub fn write_pattern(mut w: impl FnMut(&[u8]), total: u64) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut off = 0u64;
    while off < total {
        let n = (total - off).min(buf.len() as u64) as usize;
        fill(&mut buf[..n], off);
        h.update(&buf[..n]);
        w(&buf[..n]);
        off += n as u64;
    }
    h.finalize().into()
}

pub fn provider_send_all(p: &Provider, s: Socket, data: &[u8]) {
    let n = p.wsp_send(s, data).expect("wsp_send");
    assert_eq!(n, data.len());
}

/// Read to EOF from the provider socket; returns (bytes, SHA-256).
pub fn provider_read_all(p: &Provider, s: Socket) -> (u64, [u8; 32]) {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = p.wsp_recv(s, &mut buf).expect("wsp_recv");
        if n == 0 {
            return (total, h.finalize().into());
        }
        h.update(&buf[..n]);
        total += n as u64;
    }
}

pub fn kernel_read_all(mut r: impl Read) -> (u64, [u8; 32]) {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf).expect("kernel read");
        if n == 0 {
            return (total, h.finalize().into());
        }
        h.update(&buf[..n]);
        total += n as u64;
    }
}

pub fn tcp_socket(p: &Provider, v6: bool) -> Socket {
    p.wsp_socket(
        if v6 { AF_INET6 } else { AF_INET },
        SOCK_STREAM,
        IPPROTO_TCP,
    )
    .unwrap()
}

/// TCP_MAXSEG of a kernel socket: the MSS it sends with.
pub fn kernel_mss(k: &TcpStream) -> i32 {
    use std::os::fd::AsRawFd;
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: a live socket fd; `v`/`len` are valid for writes of an int and its length.
    let rc = unsafe {
        libc::getsockopt(
            k.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MAXSEG,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "getsockopt TCP_MAXSEG");
    v
}

/// Kernel client → provider server: `total` bytes each way, hashes compared. Returns the MSS
/// the kernel used toward the provider (`TCP_MAXSEG`: the advertised MSS minus options).
pub fn kernel_client_to_provider_server(
    lab: &Lab,
    p: &Arc<Provider>,
    v6: bool,
    port: u16,
    total: u64,
) -> i32 {
    let p = p.clone();
    let ip: IpAddr = if v6 {
        PROVIDER_V6.into()
    } else {
        PROVIDER_V4.into()
    };
    let l = tcp_socket(&p, v6);
    p.wsp_bind(l, SocketAddr::new(ip, port)).unwrap();
    p.wsp_listen(l, 8).unwrap();
    let server = {
        let p = p.clone();
        thread::spawn(move || {
            let (c, _) = p.wsp_accept(l).unwrap();
            // Receive everything, then send the same amount back.
            let got = provider_read_all(&p, c);
            let sent = write_pattern(|b| provider_send_all(&p, c, b), total);
            p.wsp_shutdown(c, SD_SEND).unwrap();
            let mut b = [0u8; 1];
            assert_eq!(p.wsp_recv(c, &mut b), Ok(0));
            p.wsp_close_socket(c).unwrap();
            p.wsp_close_socket(l).unwrap();
            (got, sent)
        })
    };
    let (sent, got, mss) = in_peer(lab, move || {
        let mut k = TcpStream::connect(SocketAddr::new(ip, port)).expect("kernel connect");
        let mss = kernel_mss(&k);
        let sent = write_pattern(|b| k.write_all(b).unwrap(), total);
        k.shutdown(std::net::Shutdown::Write).unwrap();
        let got = kernel_read_all(&mut k);
        (sent, got, mss)
    });
    let (server_got, server_sent) = server.join().unwrap();
    assert_eq!(server_got, (total, sent), "kernel → provider");
    assert_eq!(got, (total, server_sent), "provider → kernel");
    mss
}

/// Provider client → kernel server: `total` bytes each way.
pub fn provider_client_to_kernel_server(
    lab: &Lab,
    p: &Arc<Provider>,
    v6: bool,
    port: u16,
    total: u64,
) {
    let peer: IpAddr = if v6 { PEER_V6.into() } else { PEER_V4.into() };
    let (tx, rx) = std::sync::mpsc::channel();
    let ns = lab.peer_ns_path();
    let server = thread::spawn(move || {
        let _in = xtask::lab::NsGuard::enter(&ns).unwrap();
        let l = TcpListener::bind(SocketAddr::new(peer, port)).unwrap();
        tx.send(()).unwrap();
        let (mut k, _) = l.accept().unwrap();
        let got = kernel_read_all(&mut k);
        let sent = write_pattern(|b| k.write_all(b).unwrap(), total);
        k.shutdown(std::net::Shutdown::Write).unwrap();
        (got, sent)
    });
    rx.recv().unwrap();
    let c = tcp_socket(p, v6);
    p.wsp_connect(c, SocketAddr::new(peer, port))
        .expect("provider connect");
    let sent = write_pattern(|b| provider_send_all(p, c, b), total);
    p.wsp_shutdown(c, SD_SEND).unwrap();
    let got = provider_read_all(p, c);
    p.wsp_close_socket(c).unwrap();
    let (server_got, server_sent) = server.join().unwrap();
    assert_eq!(server_got, (total, sent), "provider → kernel");
    assert_eq!(got, (total, server_sent), "kernel → provider");
}
