//! The tokio types over the loopback datapath (the real TCP engine, no network).
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::api::loopback::LoopbackDatapath;
use crate::api::{Provider, ProviderConfig};

fn setup() -> Arc<Provider> {
    let mut cfg = ProviderConfig::default();
    cfg.tcp.time_wait = Duration::from_millis(200);
    cfg.tcp.delayed_ack = Duration::from_millis(5);
    LoopbackDatapath::provider(cfg).0
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

fn multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap()
}

fn data(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
}

async fn pair(p: &Arc<Provider>, at: &str) -> (TcpListener, TcpStream, TcpStream) {
    let l = TcpListener::bind(p, addr(at)).unwrap();
    let (c, a) = tokio::join!(TcpStream::connect(p, addr(at)), l.accept());
    let (c, a) = (c.unwrap(), a.unwrap());
    assert_eq!(a.1, c.local_addr().unwrap());
    assert_eq!(c.peer_addr().unwrap(), addr(at));
    (l, c, a.0)
}

#[test]
fn transfer_both_ways_current_thread() {
    let p = setup();
    current_thread().block_on(async {
        let (_l, mut c, mut s) = pair(&p, "198.18.0.1:9000").await;
        let up = data(3 << 20, 1);
        let down = data(2 << 20, 2);
        let (u2, d2) = (up.clone(), down.clone());
        let client = async move {
            let (mut r, mut w) = c.split();
            let wr = async {
                w.write_all(&u2).await.unwrap();
                w.shutdown().await.unwrap();
            };
            let mut got = Vec::new();
            let rd = r.read_to_end(&mut got);
            let (_, n) = tokio::join!(wr, rd);
            n.unwrap();
            got
        };
        let server = async move {
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            s.write_all(&d2).await.unwrap();
            s.shutdown().await.unwrap();
            got
        };
        let (c_got, s_got) = tokio::join!(client, server);
        assert!(s_got == up, "client → server");
        assert!(c_got == down, "server → client");
    });
}

#[test]
fn many_streams_multi_thread_owned_halves() {
    let p = setup();
    multi_thread().block_on(async {
        let l = Arc::new(TcpListener::bind(&p, addr("198.18.0.1:9001")).unwrap());
        let n = 50;
        let server = {
            let l = l.clone();
            tokio::spawn(async move {
                let mut tasks = Vec::new();
                for _ in 0..n {
                    let (s, _) = l.accept().await.unwrap();
                    tasks.push(tokio::spawn(async move {
                        let (mut r, mut w) = s.into_split();
                        tokio::io::copy(&mut r, &mut w).await.unwrap();
                        w.shutdown().await.unwrap();
                    }));
                }
                for t in tasks {
                    t.await.unwrap();
                }
            })
        };
        let mut clients = Vec::new();
        for i in 0..n {
            let p = p.clone();
            clients.push(tokio::spawn(async move {
                let mut c = TcpStream::connect(&p, addr("198.18.0.1:9001"))
                    .await
                    .unwrap();
                let d = data(64 * 1024, i as u8);
                let (mut r, mut w) = c.split();
                let d2 = d.clone();
                let wr = async move {
                    w.write_all(&d2).await.unwrap();
                    w.shutdown().await.unwrap();
                };
                let mut back = Vec::new();
                let (_, rr) = tokio::join!(wr, r.read_to_end(&mut back));
                rr.unwrap();
                back == d
            }));
        }
        for c in clients {
            assert!(c.await.unwrap(), "echoed byte for byte");
        }
        server.await.unwrap();
    });
}

#[test]
fn drop_linger_zero_resets_default_drop_is_graceful() {
    let p = setup();
    current_thread().block_on(async {
        let (_l, c, mut s) = pair(&p, "198.18.0.1:9002").await;
        c.set_linger(Some(Duration::ZERO)).unwrap();
        assert_eq!(c.linger().unwrap(), Some(Duration::ZERO));
        drop(c);
        let mut b = [0u8; 16];
        let e = s.read(&mut b).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");

        let (_l2, mut c, mut s) = pair(&p, "198.18.0.1:9003").await;
        let d = data(1 << 20, 3);
        c.write_all(&d).await.unwrap();
        drop(c);
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert!(got == d, "all bytes, then EOF");
    });
}

#[test]
fn timed_linger_close_waits_off_the_runtime() {
    let p = setup();
    current_thread().block_on(async {
        let (_l, mut c, mut s) = pair(&p, "198.18.0.1:9004").await;
        c.set_linger(Some(Duration::from_millis(1500))).unwrap();
        assert_eq!(c.linger().unwrap(), Some(Duration::from_secs(2)));
        let d = data(256 * 1024, 4);
        c.write_all(&d).await.unwrap();
        let reader = async move {
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            got
        };
        let (closed, got) = tokio::join!(c.close(), reader);
        closed.unwrap();
        assert!(got == d);
        let st = p.stats();
        assert_eq!(st.close_linger_timeout_reset, 0);
        assert!(st.close_graceful >= 1);
    });
}

#[test]
fn connect_refused_and_nodelay() {
    let p = setup();
    current_thread().block_on(async {
        let e = TcpStream::connect(&p, addr("198.18.0.1:9099"))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
        assert_eq!(wsa_error(&e), Some(WsaError::WSAECONNREFUSED));
        let (_l, c, _s) = pair(&p, "[2001:db8::1]:9005").await;
        assert!(!c.nodelay().unwrap());
        c.set_nodelay(true).unwrap();
        assert!(c.nodelay().unwrap());
    });
}

#[test]
fn udp_echo() {
    let p = setup();
    current_thread().block_on(async {
        let a = UdpSocket::bind(&p, addr("198.18.0.1:9100")).unwrap();
        let b = UdpSocket::bind(&p, addr("198.18.0.1:0")).unwrap();
        let b_addr = b.local_addr().unwrap();
        let echo = async {
            let mut buf = [0u8; 2048];
            for _ in 0..100 {
                let (n, from) = a.recv_from(&mut buf).await.unwrap();
                a.send_to(&buf[..n], from).await.unwrap();
            }
        };
        let client = async {
            let mut buf = [0u8; 2048];
            for i in 0..100u32 {
                let msg = i.to_be_bytes();
                b.send_to(&msg, addr("198.18.0.1:9100")).await.unwrap();
                let (n, from) = b.recv_from(&mut buf).await.unwrap();
                assert_eq!(&buf[..n], &msg);
                assert_eq!(from, addr("198.18.0.1:9100"));
            }
        };
        tokio::join!(echo, client);
        assert_ne!(b_addr.port(), 0);
    });
}

#[test]
fn pending_read_is_woken_not_polled() {
    // A read waiting on an idle connection registers one waker and stays asleep.
    let p = setup();
    current_thread().block_on(async {
        let (_l, mut c, s) = pair(&p, "198.18.0.1:9006").await;
        let mut b = [0u8; 8];
        let r = tokio::time::timeout(Duration::from_millis(100), c.read(&mut b)).await;
        assert!(r.is_err(), "nothing to read");
        let entry = p.socket_entry(c.as_raw_socket()).unwrap();
        assert!(entry.signal.registered() <= 1);
        drop(s);
        assert_eq!(
            c.read(&mut b).await.unwrap(),
            0,
            "EOF after the peer's drop"
        );
    });
}
