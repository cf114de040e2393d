//! The tokio types (`provider::aio`) end to end in the namespace lab, against the Linux
//! kernel's TCP/UDP in the peer namespace (issue 5 item 4). The provider runs in-process (its
//! engine threads live in the provider namespace); tokio runtimes drive the provider side, std
//! sockets on threads in the peer namespace are the kernel side. Needs root; run by
//! `cargo xtask test`.
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::process::Stdio;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use provider::aio::{TcpListener, TcpStream, UdpSocket};
use provider::api::Provider;
use provider::engine::{Drive, Engine, EngineError};
use provider_tests::spawn_in_peer;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use xtask::lab::{Lab, LabConfig, PEER_V4, PEER_V6, PROVIDER_V4, PROVIDER_V6};

struct Setup {
    // Field order: the engine stops before the lab goes.
    engine: Engine,
    lab: Lab,
}

fn start() -> Setup {
    let lab = Lab::up(&LabConfig {
        queues: 1,
        ..LabConfig::default()
    })
    .expect("lab up");
    let engine = provider_tests::start_engine(&lab, |_| {});
    Setup { engine, lab }
}

fn provider(s: &Setup) -> Arc<Provider> {
    s.engine.provider().clone()
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn provider_ip(v6: bool) -> IpAddr {
    if v6 {
        PROVIDER_V6.into()
    } else {
        PROVIDER_V4.into()
    }
}

fn peer_ip(v6: bool) -> IpAddr {
    if v6 { PEER_V6.into() } else { PEER_V4.into() }
}

const MIB: u64 = 1 << 20;

fn transfer_mib() -> u64 {
    std::env::var("PROVIDER_TEST_TOKIO_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

/// The byte at stream offset `i` (seeded so the two directions differ).
fn fill(buf: &mut [u8], offset: u64, seed: u8) {
    for (k, b) in buf.iter_mut().enumerate() {
        *b = ((offset + k as u64) % 251) as u8 ^ seed;
    }
}

/// Write `total` pattern bytes to `w` with tokio; returns their SHA-256.
async fn async_write_pattern(mut w: impl AsyncWrite + Unpin, total: u64, seed: u8) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut off = 0u64;
    while off < total {
        let n = (total - off).min(buf.len() as u64) as usize;
        fill(&mut buf[..n], off, seed);
        h.update(&buf[..n]);
        w.write_all(&buf[..n]).await.expect("provider write");
        off += n as u64;
    }
    w.shutdown().await.expect("provider shutdown");
    h.finalize().into()
}

/// Read to EOF with tokio; returns (bytes, SHA-256).
async fn async_read_all(mut r: impl AsyncRead + Unpin) -> (u64, [u8; 32]) {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf).await.expect("provider read");
        if n == 0 {
            return (total, h.finalize().into());
        }
        h.update(&buf[..n]);
        total += n as u64;
    }
}

fn write_pattern(w: &mut impl Write, total: u64, seed: u8) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut off = 0u64;
    while off < total {
        let n = (total - off).min(buf.len() as u64) as usize;
        fill(&mut buf[..n], off, seed);
        h.update(&buf[..n]);
        w.write_all(&buf[..n]).expect("kernel write");
        off += n as u64;
    }
    h.finalize().into()
}

fn read_all(r: &mut impl Read) -> (u64, [u8; 32]) {
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

/// Kernel side of a full-duplex transfer: write `total` bytes (then FIN) while reading to EOF.
fn kernel_duplex(k: std::net::TcpStream, total: u64) -> ([u8; 32], (u64, [u8; 32])) {
    let mut w = k.try_clone().unwrap();
    let writer = thread::spawn(move || {
        let h = write_pattern(&mut w, total, 0x55);
        w.shutdown(std::net::Shutdown::Write).unwrap();
        h
    });
    let mut r = k;
    let got = read_all(&mut r);
    (writer.join().unwrap(), got)
}

/// Provider side of a full-duplex transfer over split halves used concurrently.
async fn provider_duplex(mut s: TcpStream, total: u64) -> ([u8; 32], (u64, [u8; 32])) {
    let (r, w) = s.split();
    tokio::join!(async_write_pattern(w, total, 0xaa), async_read_all(r))
}

/// Kernel client → provider (tokio) server; both directions at once, hashes compared.
fn kernel_client_provider_server(s: &Setup, rt: &tokio::runtime::Runtime, v6: bool, port: u16) {
    let p = provider(s);
    let total = transfer_mib() * MIB;
    let at = SocketAddr::new(provider_ip(v6), port);
    let l = rt.block_on(async { TcpListener::bind(&p, at) }).unwrap();
    let t = Instant::now();
    // The kernel side on its own thread; the runtime (maybe current-thread) on this one.
    let kernel = spawn_in_peer(&s.lab, move || {
        kernel_duplex(std::net::TcpStream::connect(at).expect("connect"), total)
    });
    let (p_sent, p_got) = rt.block_on(async move {
        let (c, from) = l.accept().await.unwrap();
        assert_eq!(c.peer_addr().unwrap(), from);
        assert_eq!(c.local_addr().unwrap(), at);
        provider_duplex(c, total).await
    });
    let (k_sent, k_got) = kernel.join().unwrap();
    println!(
        "{} kernel client ↔ provider server: {} MiB each way in {:?}",
        if v6 { "v6" } else { "v4" },
        total / MIB,
        t.elapsed()
    );
    assert_eq!(p_got, (total, k_sent), "kernel → provider");
    assert_eq!(k_got, (total, p_sent), "provider → kernel");
}

/// Provider (tokio) client → kernel server; both directions at once.
fn provider_client_kernel_server(s: &Setup, rt: &tokio::runtime::Runtime, v6: bool, port: u16) {
    let p = provider(s);
    let total = transfer_mib() * MIB;
    let at = SocketAddr::new(peer_ip(v6), port);
    let (tx, rx) = std::sync::mpsc::channel();
    let kernel = spawn_in_peer(&s.lab, move || {
        let l = std::net::TcpListener::bind(at).unwrap();
        tx.send(()).unwrap();
        let (k, _) = l.accept().unwrap();
        kernel_duplex(k, total)
    });
    rx.recv().unwrap();
    let t = Instant::now();
    let (p_sent, p_got) = rt.block_on(async {
        let c = TcpStream::connect(&p, at).await.expect("provider connect");
        assert_eq!(c.peer_addr().unwrap(), at);
        provider_duplex(c, total).await
    });
    let (k_sent, k_got) = kernel.join().unwrap();
    println!(
        "{} provider client ↔ kernel server: {} MiB each way in {:?}",
        if v6 { "v6" } else { "v4" },
        total / MIB,
        t.elapsed()
    );
    assert_eq!(p_got, (total, k_sent), "kernel → provider");
    assert_eq!(k_got, (total, p_sent), "provider → kernel");
}

#[test]
#[ignore = "needs root and network namespaces"]
fn large_transfers_hashed_both_directions_split_halves() {
    let s = start();
    let rt = current_thread();
    kernel_client_provider_server(&s, &rt, false, 7101);
    provider_client_kernel_server(&s, &rt, true, 7102);
    let rt = multi_thread();
    kernel_client_provider_server(&s, &rt, true, 7103);
    provider_client_kernel_server(&s, &rt, false, 7104);
}

/// 100 provider-side streams at once on `rt`: a tokio echo server on the provider for 100
/// kernel clients, and at the same time 100 tokio clients against a kernel echo server.
fn hundred_streams(s: &Setup, rt: &tokio::runtime::Runtime, port: u16) {
    const N: usize = 100;
    const EACH: usize = 64 * 1024;
    let p = provider(s);
    let at = SocketAddr::new(PROVIDER_V4.into(), port);
    let peer_at = SocketAddr::new(PEER_V4.into(), port);
    let l = rt.block_on(async { TcpListener::bind(&p, at) }).unwrap();
    let server = async move {
        let mut tasks = Vec::new();
        for _ in 0..N {
            let (c, _) = l.accept().await.expect("accept");
            tasks.push(tokio::spawn(async move {
                let (mut r, mut w) = c.into_split();
                tokio::io::copy(&mut r, &mut w).await.expect("echo");
                w.shutdown().await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    };
    // Kernel echo server for the provider's clients.
    let (tx, rx) = std::sync::mpsc::channel();
    let kernel_server = spawn_in_peer(&s.lab, move || {
        let l = std::net::TcpListener::bind(peer_at).unwrap();
        tx.send(()).unwrap();
        let mut ts = Vec::new();
        for _ in 0..N {
            let (mut k, _) = l.accept().unwrap();
            ts.push(
                thread::Builder::new()
                    .stack_size(128 * 1024)
                    .spawn(move || {
                        let mut w = k.try_clone().unwrap();
                        std::io::copy(&mut k, &mut w).unwrap();
                        w.shutdown(std::net::Shutdown::Write).unwrap();
                    })
                    .unwrap(),
            );
        }
        for t in ts {
            t.join().unwrap();
        }
    });
    rx.recv().unwrap();
    let provider_clients = {
        let p = p.clone();
        async move {
            let tasks: Vec<_> = (0..N)
                .map(|i| {
                    let p = p.clone();
                    tokio::spawn(async move {
                        let mut c = TcpStream::connect(&p, peer_at).await.expect("connect");
                        let data: Vec<u8> = (0..EACH).map(|j| (j * 13 + i) as u8).collect();
                        let (mut r, mut w) = c.split();
                        let mut back = Vec::with_capacity(EACH);
                        let (wr, rd) = tokio::join!(
                            async {
                                w.write_all(&data).await?;
                                w.shutdown().await
                            },
                            r.read_to_end(&mut back)
                        );
                        wr.unwrap();
                        rd.unwrap();
                        back == data
                    })
                })
                .collect();
            let mut ok = 0;
            for t in tasks {
                ok += usize::from(t.await.unwrap());
            }
            ok
        }
    };
    let kernel_clients = spawn_in_peer(&s.lab, move || {
        let streams: Vec<_> = (0..N)
            .map(|_| std::net::TcpStream::connect(at).expect("kernel connect"))
            .collect();
        let ts: Vec<_> = streams
            .into_iter()
            .enumerate()
            .map(|(i, mut k)| {
                thread::Builder::new()
                    .stack_size(128 * 1024)
                    .spawn(move || {
                        let data: Vec<u8> = (0..EACH).map(|j| (j * 7 + i) as u8).collect();
                        let mut w = k.try_clone().unwrap();
                        let d2 = data.clone();
                        let writer = thread::spawn(move || {
                            w.write_all(&d2).unwrap();
                            w.shutdown(std::net::Shutdown::Write).unwrap();
                        });
                        let mut back = Vec::with_capacity(EACH);
                        k.read_to_end(&mut back).unwrap();
                        writer.join().unwrap();
                        back == data
                    })
                    .unwrap()
            })
            .collect();
        ts.into_iter()
            .map(|t| t.join().unwrap())
            .filter(|ok| *ok)
            .count()
    });
    let ((), provider_ok) = rt.block_on(async { tokio::join!(server, provider_clients) });
    let kernel_ok = kernel_clients.join().unwrap();
    kernel_server.join().unwrap();
    assert_eq!(kernel_ok, N, "every kernel client echoed byte for byte");
    assert_eq!(provider_ok, N, "every provider client echoed byte for byte");
}

#[test]
#[ignore = "needs root and network namespaces"]
fn hundred_concurrent_streams_current_thread_and_multi_thread() {
    let s = start();
    let t = Instant::now();
    hundred_streams(&s, &current_thread(), 7110);
    println!("current-thread: 2 × 100 streams in {:?}", t.elapsed());
    let t = Instant::now();
    hundred_streams(&s, &multi_thread(), 7111);
    println!("multi-thread: 2 × 100 streams in {:?}", t.elapsed());
}

/// Accept one kernel connection on the provider; the kernel side runs `kernel` on it.
fn with_accepted<T: Send + 'static>(
    s: &Setup,
    rt: &tokio::runtime::Runtime,
    port: u16,
    kernel: impl FnOnce(std::net::TcpStream) -> T + Send + 'static,
    provider_side: impl AsyncFnOnce(TcpStream),
) -> T {
    let p = provider(s);
    let at = SocketAddr::new(PROVIDER_V4.into(), port);
    let l = rt.block_on(async { TcpListener::bind(&p, at) }).unwrap();
    let k = spawn_in_peer(&s.lab, move || std::net::TcpStream::connect(at).map(kernel));
    rt.block_on(async {
        // Bounded: if the kernel's connect failed, nothing will arrive.
        match tokio::time::timeout(Duration::from_secs(20), l.accept()).await {
            Ok(r) => provider_side(r.unwrap().0).await,
            Err(_) if k.is_finished() => {}
            Err(_) => connect_failed(s, at, "no connection accepted within 20 s"),
        }
    });
    match k.join().unwrap() {
        Ok(v) => v,
        Err(e) => connect_failed(s, at, e),
    }
}

/// Who refused a kernel connect: the provider's XDP verdicts and stats, and the provider
/// namespace's kernel TCP counters (a SYN the XDP program passed on is reset by that kernel).
fn connect_failed(s: &Setup, at: SocketAddr, why: impl std::fmt::Display) -> ! {
    let counters = match s
        .lab
        .provider_cmd("nstat")
        .args(["-az", "TcpOutRsts", "TcpPassiveOpens", "TcpInSegs"])
        .output()
    {
        Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
        Err(e) => format!("nstat: {e}"),
    };
    panic!(
        "kernel connect to {at}: {why}\nprovider: {:?}\nprovider-namespace kernel: {counters}",
        s.engine.stats()
    )
}

#[test]
#[ignore = "needs root and network namespaces"]
fn drop_follows_linger_reset_or_graceful() {
    let s = start();
    let rt = current_thread();
    let p = provider(&s);

    // linger 0: dropping the stream resets; the kernel peer's read gets ECONNRESET.
    let err = with_accepted(
        &s,
        &rt,
        7120,
        |mut k| {
            let mut b = [0u8; 64];
            k.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            loop {
                match k.read(&mut b) {
                    Ok(0) => return None,
                    Ok(_) => continue,
                    Err(e) => return Some(e.kind()),
                }
            }
        },
        async |c| {
            c.set_linger(Some(Duration::ZERO)).unwrap();
            let mut c = c;
            c.write_all(b"some bytes then a reset").await.unwrap();
            drop(c);
        },
    );
    assert_eq!(err, Some(std::io::ErrorKind::ConnectionReset));
    assert_eq!(p.stats().close_hard, 1);

    // Default: dropping with 8 MiB still queued sends all of it, then FIN.
    let total = 8 * MIB;
    let got = with_accepted(
        &s,
        &rt,
        7121,
        |mut k| {
            // Let the provider queue and drop first.
            thread::sleep(Duration::from_millis(300));
            read_all(&mut k)
        },
        async |mut c| {
            let mut buf = vec![0u8; total as usize];
            fill(&mut buf, 0, 7);
            // The socket buffer takes only part of it: write what fits within 100 ms, drop.
            let _ = tokio::time::timeout(Duration::from_millis(100), c.write_all(&buf)).await;
            drop(c);
        },
    );
    assert!(got.0 > 0 && got.0 <= total);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; got.0 as usize];
    fill(&mut buf, 0, 7);
    h.update(&buf);
    assert_eq!(
        got.1,
        <[u8; 32]>::from(h.finalize()),
        "every queued byte, then EOF"
    );
    // All of it queued before the drop (write_all completed), graceful.
    let got = with_accepted(
        &s,
        &rt,
        7122,
        |mut k| {
            thread::sleep(Duration::from_millis(300));
            read_all(&mut k)
        },
        async |mut c| {
            c.write_all(&vec![0x42u8; 512 * 1024]).await.unwrap();
            drop(c);
        },
    );
    assert_eq!(got.0, 512 * 1024);
    assert!(p.stats().close_graceful >= 2);

    // Timed linger: `close().await` resolves once everything is acknowledged; the runtime keeps
    // running meanwhile (a timer fires during the close).
    let got = with_accepted(
        &s,
        &rt,
        7123,
        |mut k| {
            thread::sleep(Duration::from_millis(200));
            read_all(&mut k)
        },
        async |mut c| {
            c.set_linger(Some(Duration::from_secs(5))).unwrap();
            c.write_all(&vec![1u8; 2 << 20]).await.unwrap();
            let ticks = async {
                let mut n = 0u32;
                loop {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    n += 1;
                    if n > 1000 {
                        return n;
                    }
                }
            };
            tokio::select! {
                r = c.close() => r.unwrap(),
                _ = ticks => panic!("linger close did not finish"),
            }
        },
    );
    assert_eq!(got.0, 2 << 20);
    assert_eq!(p.stats().close_linger_timeout_reset, 0);
}

#[test]
#[ignore = "needs root and network namespaces"]
fn udp_echo_both_ways() {
    let s = start();
    let rt = current_thread();
    let p = provider(&s);
    const N: u32 = 1000;
    // Provider (tokio) echo server, kernel client.
    let at = SocketAddr::new(PROVIDER_V4.into(), 7130);
    let sock = UdpSocket::bind(&p, at).unwrap();
    let server = async move {
        let mut buf = vec![0u8; 2048];
        let mut n = 0;
        while n < N {
            let (len, from) = sock.recv_from(&mut buf).await.unwrap();
            sock.send_to(&buf[..len], from).await.unwrap();
            n += 1;
        }
    };
    let kernel = spawn_in_peer(&s.lab, move || {
        let k = std::net::UdpSocket::bind((PEER_V4, 0)).unwrap();
        k.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut ok = 0;
        let mut buf = [0u8; 2048];
        for i in 0..N {
            let msg = format!("datagram {i} {}", "x".repeat((i % 1000) as usize));
            k.send_to(msg.as_bytes(), at).unwrap();
            if let Ok((n, from)) = k.recv_from(&mut buf)
                && from == at
                && &buf[..n] == msg.as_bytes()
            {
                ok += 1;
            }
        }
        ok
    });
    rt.block_on(server);
    let echoed = kernel.join().unwrap();
    assert_eq!(echoed, N);

    // Kernel echo server, provider (tokio) client, IPv6.
    let peer_at = SocketAddr::new(PEER_V6.into(), 7131);
    let (tx, rx) = std::sync::mpsc::channel();
    let kernel = spawn_in_peer(&s.lab, move || {
        let k = std::net::UdpSocket::bind(peer_at).unwrap();
        tx.send(()).unwrap();
        let mut buf = [0u8; 2048];
        for _ in 0..=N {
            let (n, from) = k.recv_from(&mut buf).unwrap();
            k.send_to(&buf[..n], from).unwrap();
        }
    });
    rx.recv().unwrap();
    let ok = rt.block_on(async {
        let c = UdpSocket::bind(&p, SocketAddr::new(PROVIDER_V6.into(), 0)).unwrap();
        let mut buf = vec![0u8; 2048];
        // Right after the lab comes up the peer's IPv6 neighbour entry may not resolve yet
        // (the datapath resolves synchronously, 1 s at most, then reports WSAEHOSTUNREACH).
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut ok = loop {
            match c.send_to(b"probe", peer_at).await {
                Ok(_) => break 0,
                Err(e)
                    if e.kind() == std::io::ErrorKind::HostUnreachable
                        && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("send_to {peer_at}: {e}"),
            }
        };
        let (n, _) = c.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"probe");
        for i in 0..N {
            let msg = i.to_be_bytes();
            c.send_to(&msg, peer_at).await.unwrap();
            let (n, from) = tokio::time::timeout(Duration::from_secs(2), c.recv_from(&mut buf))
                .await
                .expect("echo within 2 s")
                .unwrap();
            assert_eq!(from, peer_at);
            ok += u32::from(buf[..n] == msg);
        }
        ok
    });
    kernel.join().unwrap();
    assert_eq!(ok, N);
}

/// `target/<profile>/examples/http_server` (`cargo xtask test` builds it).
fn http_example() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let bin = dir.join("examples").join("http_server");
    assert!(
        bin.exists(),
        "{} missing: `cargo build -p provider --examples` first (`cargo xtask test` does)",
        bin.display()
    );
    bin
}

#[test]
#[ignore = "needs root and network namespaces"]
fn http_example_serves_curl_from_the_kernel_peer() {
    let lab = Lab::up(&LabConfig {
        queues: 1,
        ..LabConfig::default()
    })
    .expect("lab up");
    let listen = format!("{PROVIDER_V4}:8080,[{PROVIDER_V6}]:8080");
    let mut child = lab
        .provider_cmd(http_example())
        .args(["--iface", &lab.provider_if, "--listen", &listen])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn http_server");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(line.starts_with("ready "), "{line:?}");
    let curl = |args: &[&str]| {
        let o = lab
            .peer_cmd("curl")
            .args(["-sS", "--max-time", "10"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "curl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    };
    let v4 = format!("http://{PROVIDER_V4}:8080");
    let v6 = format!("http://[{PROVIDER_V6}]:8080");
    assert_eq!(curl(&[&format!("{v4}/")]), "hello from the provider\n");
    assert_eq!(
        curl(&["-g", &format!("{v6}/")]),
        "hello from the provider\n"
    );
    assert_eq!(
        curl(&[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("{v4}/nope")
        ]),
        "404"
    );
    // 4 MiB body, and 50 requests over one keep-alive connection.
    let body = curl(&[&format!("{v4}/bytes/4194304")]);
    assert_eq!(body.len(), 4 << 20);
    assert!(
        body.bytes()
            .enumerate()
            .all(|(i, b)| b == b'a' + (i % 26) as u8)
    );
    let urls: Vec<String> = (0..50).map(|_| format!("{v4}/")).collect();
    let mut args = vec!["-w", "%{num_connects}\n"];
    args.extend(urls.iter().map(String::as_str));
    let many = curl(&args);
    assert_eq!(many.matches("hello from the provider\n").count(), 50);
    let connects: u32 = many.lines().filter_map(|l| l.parse::<u32>().ok()).sum();
    assert_eq!(connects, 1, "keep-alive: one connection for 50 requests");
    // SIGTERM: a clean stop that reports its request count.
    std::process::Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert!(child.wait().unwrap().success());
    assert!(rest.contains("requests 54"), "{rest:?}");
}

/// `Drive::Application`: no queue threads; `aio::drive` runs the datapath as a task on the
/// test's runtime (current-thread, then multi-thread). The same transfers and concurrent
/// streams as above must pass, and the driver is handed out once at a time.
#[test]
#[ignore = "needs root and network namespaces"]
fn application_driven_engine_transfers_and_streams() {
    // Two RX queues: the one driver task serves both.
    let lab = Lab::up(&LabConfig {
        queues: 2,
        ..LabConfig::default()
    })
    .expect("lab up");
    let engine = provider_tests::start_engine(&lab, |c| c.drive = Drive::Application);
    let s = Setup { engine, lab };
    assert_eq!(s.engine.stats().queues.len(), 2, "two AF_XDP sockets");

    let driver = s.engine.driver().expect("a driver");
    assert!(matches!(s.engine.driver(), Err(EngineError::DriverTaken)));
    let rt = current_thread();
    let task = rt.spawn(provider::aio::drive(driver));
    kernel_client_provider_server(&s, &rt, false, 7121);
    provider_client_kernel_server(&s, &rt, true, 7122);
    let t = Instant::now();
    hundred_streams(&s, &rt, 7123);
    println!(
        "application-driven current-thread: 2 × 100 streams in {:?}",
        t.elapsed()
    );
    for q in s.engine.stats().queues {
        assert!(q.rx_frames > 0, "queue {} received nothing", q.queue);
    }
    // Dropping the task (with its runtime) drops the driver: another may be taken.
    task.abort();
    drop(rt);

    let rt = multi_thread();
    let driver = s
        .engine
        .driver()
        .expect("the driver again after the first was dropped");
    rt.spawn(provider::aio::drive(driver));
    kernel_client_provider_server(&s, &rt, true, 7124);
    hundred_streams(&s, &rt, 7125);

    // A threaded engine has no driver to give.
    let threaded = start();
    assert!(matches!(
        threaded.engine.driver(),
        Err(EngineError::NotApplicationDriven)
    ));
}
