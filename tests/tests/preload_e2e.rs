//! Unmodified programs on the provider through `provider run` (LD_PRELOAD, issue 11), against
//! the kernel's TCP in the peer namespace:
//! * a Python echo server (the interpreter's own socket module, unchanged): 4 MiB each way,
//!   byte for byte, then SO_LINGER {1,0} close → exactly one RST on the wire, ECONNRESET;
//! * a C program using plain BSD calls (`tests/c/bsd_linger_rst.c`, built with gcc and no
//!   provider header): poll, read/write, fcntl, SO_LINGER {1,0}, misuse errnos, one RST — and
//!   the same program first on the kernel's sockets, so the errnos it checks are Linux's;
//! * socat (`TCP-LISTEN … PIPE`): an echo through select/poll over a mixed set (its pipe and the
//!   provider socket);
//! * `tests/c/bsd_misuse.c`: every interposed call misused (bad descriptors, NULL pointers,
//!   lengths, flags, families, states); its output under the preload must equal its output on
//!   the kernel's sockets line for line, and the data queued before is still there after.
//!
//! Each checks the program really ran on the provider (the preload's start-up line, and the
//! provider namespace's kernel TCP never saw the port). Needs root, gcc, python3, socat; run by
//! `cargo xtask test`.
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

mod preload_app;

use etherparse::{SlicedPacket, TransportSlice};
use preload_app::{App, kernel_has_no_socket_on, pattern, peer_run, target_dir};
use provider_tests::{Capture, in_peer};
use xtask::lab::{Lab, LabConfig, PEER_V4, PROVIDER_V4};

/// RST segments sent from `port` on the provider side.
fn rsts_from(frames: &[provider_tests::Frame], port: u16) -> usize {
    frames
        .iter()
        .filter_map(|f| SlicedPacket::from_ethernet(&f.data).ok())
        .filter(|p| match &p.transport {
            Some(TransportSlice::Tcp(t)) => t.source_port() == port && t.rst(),
            _ => false,
        })
        .count()
}

/// Echo `total` bytes through the server at `port` (written while read back); the bytes back.
fn echo_through(lab: &Lab, port: u16, total: usize) -> (TcpStream, Vec<u8>) {
    in_peer(lab, move || {
        let s = TcpStream::connect(SocketAddr::from((PROVIDER_V4, port))).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut w = s.try_clone().unwrap();
        let writer = thread::spawn(move || w.write_all(&pattern(total)).expect("kernel write"));
        let mut got = vec![0u8; total];
        (&s).read_exact(&mut got).expect("read the echo");
        writer.join().unwrap();
        (s, got)
    })
}

#[test]
#[ignore = "needs root (namespace lab) and python3; run by `cargo xtask test`"]
fn python_echo_server_unmodified_then_linger_zero_reset() {
    const PORT: u16 = 7400;
    const TOTAL: usize = 4 << 20;
    let lab = Lab::up(&LabConfig::default()).expect("lab up");
    let script = format!(
        r#"
import socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", {PORT}))
s.listen(8)
print("listening", s.getsockname(), flush=True)
c, a = s.accept()
print("accepted", a[0], flush=True)
n = 0
while n < {TOTAL}:
    b = c.recv(65536)
    if not b:
        break
    c.sendall(b)
    n += len(b)
print("echoed", n, flush=True)
c.recv(1)
c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
c.close()
s.close()
print("closed", flush=True)
"#
    );
    let app = App::start(&lab, &["python3", "-c", &script]);
    app.expect_started("listening");
    kernel_has_no_socket_on(&lab, PORT);
    let cap = Capture::start(&lab, &format!("tcp port {PORT}")).expect("capture");
    let (s, got) = echo_through(&lab, PORT, TOTAL);
    assert!(got == pattern(TOTAL), "echoed bytes differ");
    app.expect(&format!("echoed {TOTAL}"));
    let r = in_peer(&lab, move || {
        (&s).write_all(b"x").unwrap();
        let mut b = [0u8; 8];
        (&s).read(&mut b)
    });
    match r {
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "kernel recv: {e}"),
        Ok(n) => panic!("kernel recv returned {n} instead of ECONNRESET"),
    }
    app.expect("closed");
    let frames = cap.stop().expect("capture stop");
    assert_eq!(
        rsts_from(&frames, PORT),
        1,
        "exactly one RST from the program's socket"
    );
    app.wait_success();
}

fn build_c(source: &str, name: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = target_dir().join(name);
    let st = Command::new("gcc")
        .args([
            "-Wall",
            "-Wextra",
            "-Werror",
            "-O2",
            "-D_FORTIFY_SOURCE=2",
            "-o",
        ])
        .arg(&out)
        .arg(root.join("c").join(source))
        .status()
        .expect("run gcc");
    assert!(st.success(), "gcc failed: {st}");
    out
}

#[test]
#[ignore = "needs root (namespace lab) and gcc; run by `cargo xtask test`"]
fn c_program_with_plain_bsd_calls_linger_zero_sends_one_rst() {
    const PORT: u16 = 7401;
    let exe = build_c("bsd_linger_rst.c", "bsd-linger-rst");
    let lab = Lab::up(&LabConfig::default()).expect("lab up");
    // The reference: the same program on the kernel's sockets, with no preload, must pass its
    // own misuse checks too, so the errnos it expects are Linux's.
    let mut reference = lab
        .provider_cmd(&exe)
        .arg((PORT + 10).to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the reference run");
    let mut first = String::new();
    BufReader::new(reference.stdout.as_mut().unwrap())
        .read_line(&mut first)
        .expect("reference output");
    assert_eq!(
        first.trim(),
        "ready",
        "the program fails on the kernel: {first}"
    );
    exchange_and_expect_reset(&lab, PORT + 10);
    let st = reference.wait().expect("wait reference");
    assert!(st.success(), "the program fails on the kernel: {st}");

    let app = App::start(&lab, &[exe.to_str().unwrap(), &PORT.to_string()]);
    app.expect_started("ready");
    kernel_has_no_socket_on(&lab, PORT);
    let cap = Capture::start(&lab, &format!("tcp port {PORT}")).expect("capture");
    exchange_and_expect_reset(&lab, PORT);
    app.expect("reset");
    let frames = cap.stop().expect("capture stop");
    assert_eq!(rsts_from(&frames, PORT), 1, "exactly one RST");
    app.wait_success();
}

/// "hello" echoed, then "close now" answered by the server's linger-0 close: ECONNRESET.
fn exchange_and_expect_reset(lab: &Lab, port: u16) {
    let r = in_peer(lab, move || {
        let mut s = TcpStream::connect(SocketAddr::from((PROVIDER_V4, port))).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(b"hello").unwrap();
        let mut b = [0u8; 5];
        s.read_exact(&mut b).expect("echo");
        assert_eq!(&b, b"hello");
        s.write_all(b"close now").unwrap();
        let mut rest = [0u8; 8];
        s.read(&mut rest)
    });
    match r {
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "kernel recv: {e}"),
        Ok(n) => panic!("kernel recv returned {n} instead of ECONNRESET"),
    }
}

#[test]
#[ignore = "needs root (namespace lab) and socat; run by `cargo xtask test`"]
fn socat_echo_through_a_pipe_on_the_provider() {
    const PORT: u16 = 7402;
    const TOTAL: usize = 1 << 20;
    let lab = Lab::up(&LabConfig::default()).expect("lab up");
    let app = App::start(
        &lab,
        &[
            "socat",
            "-d",
            "-d",
            &format!("TCP-LISTEN:{PORT},reuseaddr"),
            "PIPE",
        ],
    );
    app.expect_started("listening on");
    kernel_has_no_socket_on(&lab, PORT);
    let (s, got) = echo_through(&lab, PORT, TOTAL);
    assert!(got == pattern(TOTAL), "socat echoed bytes differ");
    // Our FIN: socat sees EOF and exits cleanly; the peer reads EOF.
    let eof = in_peer(&lab, move || {
        s.shutdown(Shutdown::Write).unwrap();
        let mut b = Vec::new();
        (&s).read_to_end(&mut b).map(|_| b.len())
    });
    assert_eq!(eof.expect("read to EOF"), 0);
    app.wait_success();
}

#[test]
#[ignore = "needs root (namespace lab) and sockperf; run by `cargo xtask test`"]
fn real_sockperf_server_measured_by_the_sockperf_client() {
    const PORT: u16 = 7403;
    let lab = Lab::up(&LabConfig::default()).expect("lab up");
    let port = PORT.to_string();
    // sockperf's default multiplexer is epoll: this runs through the interposed epoll calls.
    let app = App::start(
        &lab,
        &["sockperf", "server", "--tcp", "-i", "0.0.0.0", "-p", &port],
    );
    app.expect_started("PORT =");
    kernel_has_no_socket_on(&lab, PORT);
    let pp = peer_run(
        &lab,
        &[
            "sockperf",
            "ping-pong",
            "--tcp",
            "-i",
            "198.18.0.1",
            "-p",
            &port,
            "-t",
            "2",
            "-m",
            "64",
        ],
    );
    assert!(
        pp.contains("Summary: Latency is"),
        "no latency summary: {pp}"
    );
    assert!(!pp.contains("ERROR"), "sockperf reported errors: {pp}");
    let tp = peer_run(
        &lab,
        &[
            "sockperf",
            "throughput",
            "--tcp",
            "-i",
            "198.18.0.1",
            "-p",
            &port,
            "-t",
            "2",
            "-m",
            "1400",
        ],
    );
    assert!(
        tp.contains("Summary: Message Rate is"),
        "no rate summary: {tp}"
    );
}

#[test]
#[ignore = "needs root (namespace lab) and iperf3; run by `cargo xtask test`"]
fn iperf3_server_one_gib_each_way() {
    const PORT: u16 = 7404;
    let lab = Lab::up(&LabConfig::default()).expect("lab up");
    let port = PORT.to_string();
    // `-B`: an IPv4 listener (iperf3's default `::` wildcard is dual-stack, which stays the
    // kernel's — see the README).
    let app = App::start(
        &lab,
        &[
            "iperf3",
            "-s",
            "-B",
            "198.18.0.1",
            "-p",
            &port,
            "--forceflush",
        ],
    );
    app.expect_started("Server listening");
    kernel_has_no_socket_on(&lab, PORT);
    for reverse in [false, true] {
        let mut cmd = vec!["iperf3", "-c", "198.18.0.1", "-p", &port, "-n", "1G", "-J"];
        if reverse {
            cmd.push("-R");
        }
        let out = peer_run(&lab, &cmd);
        let v: serde_json::Value =
            serde_json::from_str(&out[out.find('{').expect("json")..]).expect("iperf3 -J output");
        assert!(v.get("error").is_none(), "iperf3 error: {}", v["error"]);
        let sent = v["end"]["sum_sent"]["bytes"]
            .as_u64()
            .expect("sum_sent.bytes");
        let received = v["end"]["sum_received"]["bytes"]
            .as_u64()
            .expect("sum_received.bytes");
        // The receiver's summary stops at the test's end marker, a little short of the total.
        assert!(
            sent >= 1 << 30,
            "reverse={reverse}: sent {sent} bytes, want 1 GiB"
        );
        assert!(
            received >= (1u64 << 30) * 99 / 100,
            "reverse={reverse}: received {received} of {sent}"
        );
    }
}

/// Echo `len` bytes on an open connection; the connection stays open.
fn echo_on(s: &TcpStream, len: usize) -> Vec<u8> {
    let mut w = s.try_clone().unwrap();
    let writer = thread::spawn(move || w.write_all(&pattern(len)).expect("kernel write"));
    let mut got = vec![0u8; len];
    let mut r = s;
    r.read_exact(&mut got).expect("read the echo");
    writer.join().unwrap();
    got
}

#[test]
#[ignore = "needs root (namespace lab) and python3; run by `cargo xtask test`"]
fn forked_workers_accept_on_the_parents_listener() {
    // The parent binds and listens; a first child only closes its copy of the listener (as a
    // redis persistence child does) and exits; then two workers accept on the parent's
    // listener, as nginx's do. Each worker is kept busy by one connection held open, so the
    // second connection must be another worker's: two pids must serve.
    const PORT: u16 = 7460;
    let lab = Lab::up(&LabConfig::default()).expect("lab up");
    let script = format!(
        r#"
import os, socket
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", {PORT}))
s.listen(16)
p = os.fork()
if p == 0:
    s.close()
    os._exit(0)
os.waitpid(p, 0)
kids = []
for w in range(2):
    p = os.fork()
    if p == 0:
        s.settimeout(4)
        try:
            while True:
                c, a = s.accept()
                c.settimeout(None)
                while True:
                    b = c.recv(65536)
                    if not b:
                        break
                    c.sendall(b)
                c.close()
                print("worker", os.getpid(), "served", flush=True)
        except socket.timeout:
            pass
        os._exit(0)
    kids.append(p)
print("listening", flush=True)
for p in kids:
    os.waitpid(p, 0)
s.close()
print("done", flush=True)
"#
    );
    let app = App::start(&lab, &["python3", "-c", &script]);
    app.expect_started("listening");
    kernel_has_no_socket_on(&lab, PORT);
    const LEN: usize = 256 << 10;
    in_peer(&lab, move || {
        let addr = SocketAddr::from((PROVIDER_V4, PORT));
        let first = TcpStream::connect(addr).expect("connect 1");
        first
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        assert!(echo_on(&first, LEN) == pattern(LEN), "first echo differs");
        let second = TcpStream::connect(addr).expect("connect 2");
        second
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        assert!(echo_on(&second, LEN) == pattern(LEN), "second echo differs");
        for s in [&second, &first] {
            s.shutdown(Shutdown::Write).unwrap();
            let mut rest = Vec::new();
            (&*s).read_to_end(&mut rest).expect("read to the end");
            assert!(rest.is_empty());
        }
    });
    let mut pids = std::collections::HashSet::new();
    for _ in 0..2 {
        let seen = app.expect("served");
        let l = seen.last().unwrap();
        pids.insert(l.split_whitespace().nth(1).unwrap().to_string());
    }
    assert_eq!(pids.len(), 2, "two workers served: {pids:?}");
    app.expect("done");
    app.wait_success();
}

/// The client side of `bsd_batch_calls.c`: "ping" in two pieces, "pong" back, then "file?"
/// and the file to the end.
fn batch_calls_client(lab: &Lab, port: u16, file: Vec<u8>) {
    in_peer(lab, move || {
        let mut s = TcpStream::connect(SocketAddr::from((PROVIDER_V4, port))).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(b"pi").unwrap();
        thread::sleep(Duration::from_millis(100));
        s.write_all(b"ng").unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).expect("pong");
        assert_eq!(&b, b"pong");
        s.write_all(b"file?").unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).expect("the file");
        assert!(
            got == file,
            "sendfile's bytes differ ({} of {})",
            got.len(),
            file.len()
        );
    });
}

#[test]
#[ignore = "needs root (namespace lab) and gcc; run by `cargo xtask test`"]
fn c_program_with_ppoll_pselect_epoll_pwait2_mmsg_and_sendfile() {
    const PORT: u16 = 7470;
    let exe = build_c("bsd_batch_calls.c", "bsd-batch-calls");
    let file = target_dir().join("bsd-batch-calls.data");
    let body = pattern(300_000);
    std::fs::write(&file, &body).unwrap();
    let f = file.to_str().unwrap().to_string();
    let lab = Lab::up(&LabConfig::default()).expect("lab up");
    // The reference run on the kernel's sockets: the errnos it checks are Linux's.
    let echo = udp_echo(&lab, PORT + 11, 2);
    let mut reference = lab
        .provider_cmd(&exe)
        .args([&(PORT + 10).to_string(), &f, &(PORT + 11).to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the reference run");
    let mut out = BufReader::new(reference.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).expect("reference output");
    assert_eq!(
        first.trim(),
        "ready",
        "the program fails on the kernel: {first}"
    );
    batch_calls_client(&lab, PORT + 10, body.clone());
    let rest: Vec<String> = out.lines().map_while(Result::ok).collect();
    let st = reference.wait().expect("wait reference");
    assert!(
        st.success(),
        "the program fails on the kernel: {st} {rest:?}"
    );
    assert!(rest.iter().any(|l| l == "udp backing socket"), "{rest:?}");
    echo.join().expect("echo");

    let echo = udp_echo(&lab, PORT + 1, 2);
    let app = App::start(
        &lab,
        &[
            exe.to_str().unwrap(),
            &PORT.to_string(),
            &f,
            &(PORT + 1).to_string(),
        ],
    );
    app.expect_started("ready");
    kernel_has_no_socket_on(&lab, PORT);
    batch_calls_client(&lab, PORT, body);
    // The unbound UDP socket's first sendmmsg handed it to the provider: its descriptor is the
    // doorbell eventfd now.
    app.expect("udp backing anon_inode:[eventfd]");
    app.expect("done");
    app.wait_success();
    echo.join().expect("echo");
}

/// A UDP echo in the peer namespace on `port`: sends each of `n` datagrams back.
fn udp_echo(lab: &Lab, port: u16, n: usize) -> thread::JoinHandle<()> {
    let ns = lab.peer_ns_path();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let h = thread::spawn(move || {
        let _in_peer = xtask::lab::NsGuard::enter(&ns).expect("enter the peer namespace");
        let s = std::net::UdpSocket::bind(SocketAddr::from((PEER_V4, port))).expect("bind echo");
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        ready_tx.send(()).unwrap();
        let mut b = [0u8; 64];
        for _ in 0..n {
            let (len, from) = s.recv_from(&mut b).expect("a datagram to echo");
            s.send_to(&b[..len], from).expect("echo");
        }
    });
    ready_rx.recv().expect("echo bound");
    h
}

/// The peer side of `bsd_misuse.c`: connect, "hello", then read until the program's "bye".
fn misuse_client(lab: &Lab, port: u16) -> thread::JoinHandle<Vec<u8>> {
    let ns = lab.peer_ns_path();
    thread::spawn(move || {
        let _in_peer = xtask::lab::NsGuard::enter(&ns).expect("enter the peer namespace");
        let mut s = TcpStream::connect(SocketAddr::from((PROVIDER_V4, port))).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        s.write_all(b"hello").unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        got
    })
}

/// The program's case lines ("NAME: r=R errno=E …", "data: …"), in order.
fn case_lines(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.contains(" errno=") || l.starts_with("data:"))
        .cloned()
        .collect()
}

#[test]
#[ignore = "needs root (namespace lab) and gcc; run by `cargo xtask test`"]
fn every_interposed_call_misused_gives_the_kernels_errno() {
    const PORT: u16 = 7480;
    let exe = build_c("bsd_misuse.c", "bsd-misuse");
    let lab = Lab::up(&LabConfig::default()).expect("lab up");
    // The oracle: the same program on the kernel's sockets.
    let mut reference = lab
        .provider_cmd(&exe)
        .arg((PORT + 10).to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the reference run");
    let out = BufReader::new(reference.stdout.take().unwrap());
    let mut lines = out.lines().map_while(Result::ok);
    assert_eq!(lines.next().as_deref(), Some("ready"), "reference start");
    let client = misuse_client(&lab, PORT + 10);
    let kernel: Vec<String> = lines.take_while(|l| l != "done").collect();
    assert_eq!(client.join().expect("client"), b"bye\n", "reference client");
    let st = reference.wait().expect("wait reference");
    assert!(st.success(), "the program fails on the kernel: {st}");
    let kernel = case_lines(&kernel);
    assert!(
        kernel.len() >= 80,
        "the program ran only {} cases on the kernel",
        kernel.len()
    );

    let app = App::start(&lab, &[exe.to_str().unwrap(), &PORT.to_string()]);
    app.expect_started("ready");
    kernel_has_no_socket_on(&lab, PORT);
    let client = misuse_client(&lab, PORT);
    let provider = case_lines(&app.expect("done"));
    assert_eq!(client.join().expect("client"), b"bye\n", "provider client");
    app.wait_success();
    let differ: Vec<String> = kernel
        .iter()
        .zip(&provider)
        .filter(|(k, p)| k != p)
        .map(|(k, p)| format!("kernel   {k}\nprovider {p}"))
        .collect();
    assert!(
        differ.is_empty() && kernel.len() == provider.len(),
        "{} of {} cases differ ({} lines on the kernel, {} on the provider):\n{}",
        differ.len(),
        kernel.len(),
        kernel.len(),
        provider.len(),
        differ.join("\n")
    );
}
