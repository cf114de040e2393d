//! The asynchronous surface (issue 5 items 1–3: WSPEventSelect, overlapped I/O, close
//! interaction) end to end in the namespace lab against kernel peers. The provider runs
//! in-process (as in tcp_e2e.rs); the kernel side uses std sockets in the peer namespace.
//! Needs root; run by `cargo xtask test`.
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use provider::api::{
    AF_INET, CompletionQueue, FD_ACCEPT, FD_CLOSE, FD_READ, FD_WRITE, IPPROTO_TCP, IPPROTO_UDP,
    Overlapped, Provider, SOCK_DGRAM, SOCK_STREAM, WsaEvent,
};
use provider::engine::Engine;
use provider::socket::{Socket, WsaError};
use provider_tests::in_peer;
use sha2::{Digest, Sha256};
use xtask::lab::{Lab, LabConfig, PEER_V4, PROVIDER_V4};

const T: Duration = Duration::from_secs(10);

struct Setup {
    // Field order: the engine stops before the lab goes.
    engine: Engine,
    lab: Lab,
}

fn start() -> Setup {
    let lab = Lab::up(&LabConfig::default()).expect("lab up");
    let engine = provider_tests::start_engine(&lab, |_| {});
    Setup { engine, lab }
}

fn provider(s: &Setup) -> Arc<Provider> {
    s.engine.provider().clone()
}

fn tcp(p: &Provider) -> Socket {
    p.wsp_socket(AF_INET, SOCK_STREAM, IPPROTO_TCP).unwrap()
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8 ^ seed).collect()
}

fn sha(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

/// A provider listener driven only by WSPEventSelect: FD_ACCEPT → accept, FD_READ → drain,
/// FD_CLOSE → report its code. Kernel clients: one graceful, one reset (SO_LINGER 0).
#[test]
#[ignore = "needs root and network namespaces"]
fn event_select_server_with_kernel_clients_graceful_and_reset() {
    let s = start();
    let p = provider(&s);
    let at = SocketAddr::new(IpAddr::V4(PROVIDER_V4), 7500);
    let l = tcp(&p);
    p.wsp_bind(l, at).unwrap();
    p.wsp_listen(l, 8).unwrap();
    let ev = WsaEvent::new();
    p.wsp_event_select(l, ev.clone(), FD_ACCEPT | FD_READ | FD_WRITE | FD_CLOSE)
        .unwrap();
    let data = pattern(4 << 20, 0x5a);
    let want = sha(&data);

    for reset in [false, true] {
        let d = data.clone();
        let kernel = thread::spawn({
            let lab_peer = s.lab.peer_ns_path();
            move || {
                let _in = xtask::lab::NsGuard::enter(&lab_peer).unwrap();
                let mut k = TcpStream::connect(at).expect("kernel connect");
                if reset {
                    k.write_all(&d[..1000]).unwrap();
                    // SO_LINGER {1, 0}: close sends RST.
                    let lg = libc::linger {
                        l_onoff: 1,
                        l_linger: 0,
                    };
                    use std::os::fd::AsRawFd;
                    // SAFETY: valid fd and a correctly sized linger struct.
                    let r = unsafe {
                        libc::setsockopt(
                            k.as_raw_fd(),
                            libc::SOL_SOCKET,
                            libc::SO_LINGER,
                            (&lg as *const libc::linger).cast(),
                            std::mem::size_of::<libc::linger>() as u32,
                        )
                    };
                    assert_eq!(r, 0);
                    thread::sleep(Duration::from_millis(200));
                } else {
                    k.write_all(&d).unwrap();
                }
            }
        });
        // The event loop.
        let deadline = Instant::now() + T;
        let mut conn: Option<Socket> = None;
        let mut got = Vec::new();
        let close_code = loop {
            assert!(Instant::now() < deadline, "event loop timed out");
            ev.wait(Some(Duration::from_millis(100)));
            ev.reset();
            if conn.is_none() {
                let n = p.wsp_enum_network_events(l, None).unwrap();
                if n.has(FD_ACCEPT) || n.events == 0 {
                    match p.wsp_accept(l) {
                        Ok((c, _)) => conn = Some(c),
                        Err(WsaError::WSAEWOULDBLOCK) => continue,
                        Err(e) => panic!("accept {e:?}"),
                    }
                }
            }
            let Some(c) = conn else { continue };
            let n = p.wsp_enum_network_events(c, None).unwrap();
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                match p.wsp_recv(c, &mut buf) {
                    Ok(0) => break,
                    Ok(k) => got.extend_from_slice(&buf[..k]),
                    Err(_) => break,
                }
            }
            if n.has(FD_CLOSE) {
                // Drain what is left after FD_CLOSE.
                while let Ok(k) = p.wsp_recv(c, &mut buf) {
                    if k == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..k]);
                }
                p.wsp_close_socket(c).unwrap();
                break n.error(FD_CLOSE);
            }
        };
        kernel.join().unwrap();
        if reset {
            assert_eq!(close_code, WsaError::WSAECONNRESET.code());
        } else {
            assert_eq!(close_code, 0);
            assert_eq!(got.len(), data.len());
            assert_eq!(sha(&got), want);
        }
    }
    p.wsp_close_socket(l).unwrap();
}

/// Overlapped echo through one completion queue: a kernel client sends, the provider echoes
/// with overlapped receives and sends, the kernel compares hashes.
#[test]
#[ignore = "needs root and network namespaces"]
fn overlapped_echo_through_a_completion_queue() {
    let s = start();
    let p = provider(&s);
    let at = SocketAddr::new(IpAddr::V4(PROVIDER_V4), 7510);
    let l = tcp(&p);
    p.wsp_bind(l, at).unwrap();
    p.wsp_listen(l, 8).unwrap();
    let total = 8 << 20;
    let client = thread::spawn({
        let ns = s.lab.peer_ns_path();
        move || {
            let _in = xtask::lab::NsGuard::enter(&ns).unwrap();
            let mut k = TcpStream::connect(at).expect("kernel connect");
            let data = pattern(total, 0x33);
            let mut r = k.try_clone().unwrap();
            let reader = thread::spawn(move || {
                let mut got = Vec::new();
                r.read_to_end(&mut got).unwrap();
                got
            });
            k.write_all(&data).unwrap();
            k.shutdown(std::net::Shutdown::Write).unwrap();
            let got = reader.join().unwrap();
            (sha(&data), got.len(), sha(&got))
        }
    });
    let (c, _) = p.wsp_accept(l).unwrap();
    let q = CompletionQueue::new();
    const RECV: u64 = 1;
    const SEND: u64 = 2;
    let rov = Overlapped::with_queue(q.clone(), RECV);
    let sov = Overlapped::with_queue(q.clone(), SEND);
    let _ = p.wsp_recv_overlapped(c, vec![vec![0; 64 * 1024]], &rov);
    let mut echoed = 0usize;
    loop {
        let k = q.get_queued_completion(Some(T)).expect("completion");
        match k.key {
            RECV => {
                assert_eq!(k.error, None);
                if k.bytes == 0 {
                    break;
                }
                let mut b = k.buffers.into_iter().next().unwrap();
                b.truncate(k.bytes);
                // One operation per descriptor: wait for the previous send.
                if sov.is_pending() {
                    let s2 = q.get_queued_completion(Some(T)).expect("send completion");
                    assert_eq!((s2.key, s2.error), (SEND, None));
                }
                match p.wsp_send_overlapped(c, vec![b], &sov) {
                    Ok(n) => {
                        echoed += n;
                        // Immediate success is queued too: consume it.
                        let s2 = q.get_queued_completion(Some(T)).unwrap();
                        assert_eq!(s2.key, SEND);
                    }
                    Err(WsaError::WSA_IO_PENDING) => {
                        let s2 = q.get_queued_completion(Some(T)).expect("send completion");
                        assert_eq!((s2.key, s2.error), (SEND, None));
                        echoed += s2.bytes;
                    }
                    Err(e) => panic!("send {e:?}"),
                }
                let _ = p.wsp_recv_overlapped(c, vec![vec![0; 64 * 1024]], &rov);
            }
            other => panic!("unexpected key {other}"),
        }
    }
    assert_eq!(echoed, total);
    p.wsp_shutdown(c, provider::api::SD_SEND).unwrap();
    let (sent_hash, got_len, got_hash) = client.join().unwrap();
    assert_eq!((got_len, got_hash), (total, sent_hash));
    p.wsp_close_socket(c).unwrap();
    p.wsp_close_socket(l).unwrap();
}

/// A provider client on a connection to a kernel server has receives pending through every
/// mechanism — event, completion routine, completion queue, none (a thread blocked in
/// WSPGetOverlappedResult) — issued from four threads, plus a blocking WSPRecv on a fifth.
/// Close: each overlapped one completes with WSA_OPERATION_ABORTED through its own mechanism,
/// the blocking call returns WSAEINTR, nothing is written into the buffers, the kernel sees EOF.
#[test]
#[ignore = "needs root and network namespaces"]
fn close_aborts_overlapped_receives_against_a_kernel_server() {
    let s = start();
    let p = provider(&s);
    let peer = SocketAddr::new(IpAddr::V4(PEER_V4), 7520);
    let (tx, rx) = mpsc::channel();
    let server = thread::spawn({
        let ns = s.lab.peer_ns_path();
        move || {
            let _in = xtask::lab::NsGuard::enter(&ns).unwrap();
            let l = TcpListener::bind(peer).unwrap();
            tx.send(()).unwrap();
            let (mut k, _) = l.accept().unwrap();
            k.set_read_timeout(Some(T)).unwrap();
            let mut b = Vec::new();
            k.read_to_end(&mut b).map(|_| b.len())
        }
    });
    rx.recv().unwrap();
    let c = tcp(&p);
    p.wsp_connect(c, peer).expect("connect");

    let ev = WsaEvent::new();
    let by_event = Overlapped::with_event(ev.clone());
    let (rtx, rrx) = mpsc::channel();
    let by_routine = Overlapped::with_routine(move |k| rtx.send((k.error, k.buffers)).unwrap());
    let queue = CompletionQueue::new();
    let by_queue = Overlapped::with_queue(queue.clone(), 42);
    let by_nothing = Overlapped::new();
    // Each issued from its own thread.
    thread::scope(|sc| {
        for ov in [&by_event, &by_routine, &by_queue, &by_nothing] {
            let p = &p;
            sc.spawn(move || {
                assert_eq!(
                    p.wsp_recv_overlapped(c, vec![vec![0xAA; 100]; 2], ov),
                    Err(WsaError::WSA_IO_PENDING)
                );
            });
        }
    });
    let waiter = thread::spawn({
        let (p, ov) = (p.clone(), by_nothing.clone());
        move || p.wsp_get_overlapped_result(c, &ov, true)
    });
    let blocking = thread::spawn({
        let p = p.clone();
        move || p.wsp_recv(c, &mut [0u8; 64])
    });
    thread::sleep(Duration::from_millis(100));
    assert!(!waiter.is_finished() && !blocking.is_finished());

    p.wsp_close_socket(c).unwrap();
    let aborted = Err(WsaError::WSA_OPERATION_ABORTED);
    assert!(ev.wait(Some(T)), "event set");
    assert_eq!(by_event.result(false), aborted);
    let (err, bufs) = rrx.recv_timeout(T).expect("routine ran");
    assert_eq!(err, Some(WsaError::WSA_OPERATION_ABORTED));
    let q = queue.get_queued_completion(Some(T)).expect("queued");
    assert_eq!(
        (q.key, q.error),
        (42, Some(WsaError::WSA_OPERATION_ABORTED))
    );
    assert_eq!(waiter.join().unwrap(), aborted);
    assert_eq!(blocking.join().unwrap(), Err(WsaError::WSAEINTR));
    // The buffers come back untouched.
    for returned in [bufs, q.buffers, by_event.take_buffers()] {
        assert_eq!(
            returned,
            vec![vec![0xAA; 100]; 2],
            "an aborted receive wrote nothing"
        );
    }
    assert!(queue.is_empty(), "one completion per operation");
    assert_eq!(server.join().unwrap().expect("kernel EOF"), 0);
}

/// Overlapped WSPRecvFrom completes with a kernel sender's datagram and its address; FD_READ
/// is recorded for the next one.
#[test]
#[ignore = "needs root and network namespaces"]
fn udp_overlapped_recv_from_a_kernel_sender() {
    let s = start();
    let p = provider(&s);
    let at = SocketAddr::new(IpAddr::V4(PROVIDER_V4), 7530);
    let u = p.wsp_socket(AF_INET, SOCK_DGRAM, IPPROTO_UDP).unwrap();
    p.wsp_bind(u, at).unwrap();
    let ev = WsaEvent::new();
    let ov = Overlapped::with_event(ev.clone());
    assert_eq!(
        p.wsp_recv_from_overlapped(u, vec![vec![0; 4], vec![0; 1500]], &ov),
        Err(WsaError::WSA_IO_PENDING)
    );
    let sel = WsaEvent::new();
    p.wsp_event_select(u, sel.clone(), FD_READ).unwrap();
    let from = in_peer(&s.lab, move || {
        let k = UdpSocket::bind(SocketAddr::new(IpAddr::V4(PEER_V4), 0)).unwrap();
        k.send_to(b"datagram-one", at).unwrap();
        thread::sleep(Duration::from_millis(50));
        k.send_to(b"two", at).unwrap();
        k.local_addr().unwrap()
    });
    assert!(ev.wait(Some(T)));
    assert_eq!(ov.result(false), Ok((12, 0)));
    assert_eq!(ov.from(), Some(from));
    assert_eq!(&ov.take_buffers().concat()[..12], b"datagram-one");
    assert!(sel.wait(Some(T)), "FD_READ for the second datagram");
    assert!(
        p.wsp_enum_network_events(u, Some(&sel))
            .unwrap()
            .has(FD_READ)
    );
    p.wsp_close_socket(u).unwrap();
}
