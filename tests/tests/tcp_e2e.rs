//! TCP through the provider, end to end in the namespace lab against the Linux kernel's TCP in
//! the peer namespace (issue 3). The provider runs in-process here (its engine threads live in
//! the provider namespace); the kernel side uses std sockets on threads in the peer namespace.
//! Needs root; run by `cargo xtask test`.
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use provider::api::{AF_INET, AF_INET6, IPPROTO_TCP, Provider, SD_SEND, SOCK_STREAM};
use provider::engine::Engine;
use provider::socket::Socket;
use provider_tests::in_peer;
use sha2::{Digest, Sha256};
use xtask::lab::{Lab, LabConfig, PEER_V4, PEER_V6, PROVIDER_V4, PROVIDER_V6};

struct Setup {
    // Field order: the engine stops before the lab goes.
    engine: Engine,
    lab: Lab,
}

fn start(queues: u32) -> Setup {
    let lab = Lab::up(&LabConfig {
        queues,
        ..LabConfig::default()
    })
    .expect("lab up");
    let engine = provider_tests::start_engine(&lab, |_| {});
    Setup { engine, lab }
}

fn provider(s: &Setup) -> Arc<Provider> {
    s.engine.provider().clone()
}

/// The byte at stream offset `i` (so corruption or loss is visible anywhere).
fn pattern(i: u64) -> u8 {
    (i % 251) as u8
}

fn fill(buf: &mut [u8], offset: u64) {
    for (k, b) in buf.iter_mut().enumerate() {
        *b = pattern(offset + k as u64);
    }
}

/// Stream `total` bytes of the pattern into `w`; returns their SHA-256.
fn write_pattern(mut w: impl FnMut(&[u8]), total: u64) -> [u8; 32] {
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

fn provider_send_all(p: &Provider, s: Socket, data: &[u8]) {
    let n = p.wsp_send(s, data).expect("wsp_send");
    assert_eq!(n, data.len());
}

/// Read to EOF from the provider socket; returns (bytes, SHA-256).
fn provider_read_all(p: &Provider, s: Socket) -> (u64, [u8; 32]) {
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

fn kernel_read_all(mut r: impl Read) -> (u64, [u8; 32]) {
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

fn tcp_socket(p: &Provider, v6: bool) -> Socket {
    p.wsp_socket(
        if v6 { AF_INET6 } else { AF_INET },
        SOCK_STREAM,
        IPPROTO_TCP,
    )
    .unwrap()
}

/// TCP_MAXSEG of a kernel socket: the MSS it sends with.
fn kernel_mss(k: &TcpStream) -> i32 {
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

/// Kernel client → provider server: `total` bytes each way, hashes compared.
fn kernel_client_to_provider_server(s: &Setup, v6: bool, port: u16, total: u64) {
    let p = provider(s);
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
    let (sent, got) = in_peer(&s.lab, move || {
        let mut k = TcpStream::connect(SocketAddr::new(ip, port)).expect("kernel connect");
        // The provider's SYN-ACK advertised the family's MSS (MTU 1500 − 40 / − 60); the
        // kernel's effective MSS is that minus the 12-byte timestamp option.
        assert_eq!(
            kernel_mss(&k),
            if v6 { 1440 - 12 } else { 1460 - 12 },
            "MSS the kernel uses toward the provider"
        );
        let sent = write_pattern(|b| k.write_all(b).unwrap(), total);
        k.shutdown(std::net::Shutdown::Write).unwrap();
        let got = kernel_read_all(&mut k);
        (sent, got)
    });
    let (server_got, server_sent) = server.join().unwrap();
    assert_eq!(server_got, (total, sent), "kernel → provider");
    assert_eq!(got, (total, server_sent), "provider → kernel");
}

/// Provider client → kernel server: `total` bytes each way.
fn provider_client_to_kernel_server(s: &Setup, v6: bool, port: u16, total: u64) {
    let p = provider(s);
    let peer: IpAddr = if v6 { PEER_V6.into() } else { PEER_V4.into() };
    let (tx, rx) = std::sync::mpsc::channel();
    let ns = s.lab.peer_ns_path();
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
    let c = tcp_socket(&p, v6);
    p.wsp_connect(c, SocketAddr::new(peer, port))
        .expect("provider connect");
    let sent = write_pattern(|b| provider_send_all(&p, c, b), total);
    p.wsp_shutdown(c, SD_SEND).unwrap();
    let got = provider_read_all(&p, c);
    p.wsp_close_socket(c).unwrap();
    let (server_got, server_sent) = server.join().unwrap();
    assert_eq!(server_got, (total, sent), "provider → kernel");
    assert_eq!(got, (total, server_sent), "kernel → provider");
}

const MIB: u64 = 1 << 20;

#[test]
#[ignore = "needs root and network namespaces"]
fn kernel_client_provider_server_v4_v6() {
    let s = start(1);
    let t = Instant::now();
    kernel_client_to_provider_server(&s, false, 7001, 1024 * MIB);
    println!("v4 1 GiB each way in {:?}", t.elapsed());
    let t = Instant::now();
    kernel_client_to_provider_server(&s, true, 7002, 1024 * MIB);
    println!("v6 1 GiB each way in {:?}", t.elapsed());
}

#[test]
#[ignore = "needs root and network namespaces"]
fn provider_client_kernel_server_v4_v6() {
    let s = start(1);
    let t = Instant::now();
    provider_client_to_kernel_server(&s, false, 7003, 1024 * MIB);
    println!("v4 1 GiB each way in {:?}", t.elapsed());
    let t = Instant::now();
    provider_client_to_kernel_server(&s, true, 7004, 1024 * MIB);
    println!("v6 1 GiB each way in {:?}", t.elapsed());
}

#[test]
#[ignore = "needs root and network namespaces"]
fn thousand_concurrent_connections_echo_64k_each() {
    const EACH: usize = 64 * 1024;
    let conns: usize = std::env::var("PROVIDER_TEST_CONNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let s = start(1);
    let p = provider(&s);
    let l = tcp_socket(&p, false);
    p.wsp_bind(l, SocketAddr::new(PROVIDER_V4.into(), 7010))
        .unwrap();
    p.wsp_listen(l, conns as i32).unwrap();
    let server = {
        let p = p.clone();
        thread::spawn(move || {
            let mut workers = Vec::with_capacity(conns);
            for _ in 0..conns {
                let (c, _) = p.wsp_accept(l).expect("accept");
                let p = p.clone();
                workers.push(
                    thread::Builder::new()
                        .stack_size(128 * 1024)
                        .spawn(move || {
                            let mut buf = vec![0u8; 16 * 1024];
                            loop {
                                let n = p.wsp_recv(c, &mut buf).expect("server recv");
                                if n == 0 {
                                    break;
                                }
                                provider_send_all(&p, c, &buf[..n]);
                            }
                            p.wsp_close_socket(c).unwrap();
                        })
                        .unwrap(),
                );
            }
            for w in workers {
                w.join().unwrap();
            }
        })
    };
    // All connections open first, then every one echoes its own 64 KiB.
    let ok = in_peer(&s.lab, move || {
        let streams: Vec<TcpStream> = (0..conns)
            .map(|_| TcpStream::connect((PROVIDER_V4, 7010)).expect("kernel connect"))
            .collect();
        let workers: Vec<_> = streams
            .into_iter()
            .enumerate()
            .map(|(i, mut k)| {
                thread::Builder::new()
                    .stack_size(128 * 1024)
                    .spawn(move || {
                        let data: Vec<u8> = (0..EACH).map(|j| (j * 7 + i) as u8).collect();
                        let mut w = k.try_clone().unwrap();
                        let d2 = data.clone();
                        let writer = thread::Builder::new()
                            .stack_size(64 * 1024)
                            .spawn(move || {
                                w.write_all(&d2).unwrap();
                                w.shutdown(std::net::Shutdown::Write).unwrap();
                            })
                            .unwrap();
                        let mut back = Vec::with_capacity(EACH);
                        k.read_to_end(&mut back).unwrap();
                        writer.join().unwrap();
                        back == data
                    })
                    .unwrap()
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap())
            .filter(|ok| *ok)
            .count()
    });
    server.join().unwrap();
    assert_eq!(
        ok, conns,
        "every connection echoed its 64 KiB byte for byte"
    );
    p.wsp_close_socket(l).unwrap();
}

/// 5 % random loss each way and 1 % duplication on the peer's veth (nftables): every byte
/// arrives exactly once, in both directions, over IPv4 and IPv6.
#[test]
#[ignore = "needs root and network namespaces"]
fn transfers_survive_five_percent_loss_one_percent_duplication() {
    let s = start(1);
    s.lab.set_peer_impairment(5, 1).unwrap();
    let mib: u64 = std::env::var("PROVIDER_TEST_LOSSY_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128);
    let t = Instant::now();
    kernel_client_to_provider_server(&s, false, 7005, mib * MIB);
    println!("v4 {mib} MiB each way under loss in {:?}", t.elapsed());
    let t = Instant::now();
    provider_client_to_kernel_server(&s, true, 7006, mib * MIB);
    println!("v6 {mib} MiB each way under loss in {:?}", t.elapsed());
}
