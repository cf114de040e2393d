//! The C ABI end to end (issue 5 item 5): the C examples in `provider/examples/c/` are
//! compiled with gcc against `include/provider.h` and `libprovider.so`, run in the lab's
//! provider namespace, and talk to kernel TCP in the peer namespace.
//! * `echo.c`: a kernel client echoes through the C server, then the C client's SO_LINGER
//!   {1, 0} close makes the kernel peer's recv fail with ECONNRESET.
//! * `async_echo.c`: several concurrent kernel clients echo through the overlapped C server
//!   (FD_ACCEPT event select, completion queue), then a pending overlapped recv is aborted by
//!   close (WSA_OPERATION_ABORTED through its completion routine, buffer untouched).
//!
//! Needs root and gcc; run by `cargo xtask test`.
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use provider_tests::{in_peer, spawn_in_peer};
use xtask::lab::{Lab, LabConfig, PEER_V4, PROVIDER_V4};

const LISTEN_PORT: u16 = 7300;
const PEER_PORT: u16 = 7301;
const TOTAL: usize = 1 << 20;

/// `target/<profile>` (the test executable is in `target/<profile>/deps`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

/// The folder holding `libprovider.so`: `cargo build -p provider` puts it in `target/<profile>`,
/// a build of the binaries only (`--bins`, as `cargo xtask test` does) leaves it in `deps/`.
fn lib_dir() -> PathBuf {
    let t = target_dir();
    [t.clone(), t.join("deps")]
        .into_iter()
        .find(|d| d.join("libprovider.so").exists())
        .unwrap_or_else(|| {
            panic!(
                "libprovider.so missing under {}: run `cargo build -p provider`",
                t.display()
            )
        })
}

/// gcc `provider/examples/c/<source>` into `target/<profile>/<name>`; returns the executable.
fn build_example(source: &str, name: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let lib = lib_dir();
    let out = target_dir().join(name);
    let status = Command::new("gcc")
        .args(["-Wall", "-Wextra", "-Werror", "-O2", "-pthread", "-I"])
        .arg(root.join("provider/include"))
        .arg(root.join("provider/examples/c").join(source))
        .arg("-L")
        .arg(&lib)
        .arg("-lprovider")
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-o")
        .arg(&out)
        .status()
        .expect("run gcc");
    assert!(status.success(), "gcc failed: {status}");
    out
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

#[test]
#[ignore = "needs root (namespace lab) and gcc; run by `cargo xtask test`"]
fn c_example_echo_and_linger0_reset() {
    let exe = build_example("echo.c", "echo-c");
    let lab = Lab::up(&LabConfig::default()).expect("lab up");

    // The kernel listener for step 3 exists before the C program connects.
    let listener = in_peer(&lab, || {
        TcpListener::bind(SocketAddr::from((PEER_V4, PEER_PORT))).expect("kernel bind")
    });

    let mut child = lab
        .provider_cmd(&exe)
        .args([
            lab.provider_if.as_str(),
            &LISTEN_PORT.to_string(),
            &PEER_V4.to_string(),
            &PEER_PORT.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn echo-c");
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("[echo-c] {line}");
            let _ = tx.send(line);
        }
    });
    let expect_line = |prefix: &str| {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("echo-c did not print {prefix:?}"));
        assert!(
            line.starts_with(prefix),
            "expected {prefix:?}, got {line:?}"
        );
        line
    };
    expect_line("ready");

    // A kernel client echoes 1 MiB through the C server.
    let echoed = in_peer(&lab, || {
        let s = TcpStream::connect(SocketAddr::from((PROVIDER_V4, LISTEN_PORT))).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut w = s.try_clone().unwrap();
        let writer = thread::spawn(move || {
            w.write_all(&pattern(TOTAL)).expect("kernel write");
            w.shutdown(Shutdown::Write).unwrap();
        });
        let mut got = Vec::with_capacity(TOTAL);
        (&s).read_to_end(&mut got).expect("kernel read echo");
        writer.join().unwrap();
        got
    });
    assert_eq!(echoed.len(), TOTAL);
    assert!(echoed == pattern(TOTAL), "echoed bytes differ");
    assert_eq!(expect_line("echoed"), format!("echoed {TOTAL}"));

    // The C client connects, sends "hello", gets "ack", closes with linger {1, 0}: RST.
    let peer = spawn_in_peer(&lab, move || {
        let (mut s, _) = listener.accept().expect("kernel accept");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut hello = [0u8; 5];
        s.read_exact(&mut hello).expect("read hello");
        assert_eq!(&hello, b"hello");
        s.write_all(b"ack").unwrap();
        let mut rest = [0u8; 16];
        s.read(&mut rest)
    });
    let r = peer.join().unwrap();
    match r {
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "kernel recv: {e}"),
        Ok(n) => panic!("kernel recv returned {n} bytes instead of ECONNRESET"),
    }
    expect_line("reset");
    let status = child.wait().expect("wait echo-c");
    assert!(status.success(), "echo-c exited with {status}");
}

const ASYNC_PORT: u16 = 7310;
const ASYNC_CONNS: usize = 8;

/// Client `i`'s bytes: a size and a pattern of its own.
fn client_data(i: usize) -> Vec<u8> {
    let n = 200_000 + i * 37_001;
    (0..n).map(|k| ((k * (i + 3) + i) % 253) as u8).collect()
}

#[test]
#[ignore = "needs root (namespace lab) and gcc; run by `cargo xtask test`"]
fn c_async_example_concurrent_echo_and_abort_on_close() {
    let exe = build_example("async_echo.c", "async-echo-c");
    let lab = Lab::up(&LabConfig::default()).expect("lab up");
    let mut child = lab
        .provider_cmd(&exe)
        .args([
            lab.provider_if.as_str(),
            &ASYNC_PORT.to_string(),
            &ASYNC_CONNS.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn async-echo-c");
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("[async-echo-c] {line}");
            let _ = tx.send(line);
        }
    });
    let next_line = || {
        rx.recv_timeout(Duration::from_secs(60))
            .expect("async-echo-c went quiet")
    };
    assert_eq!(next_line(), "ready");

    // Concurrent kernel clients, each writing its own bytes while reading the echo.
    let echoed = in_peer(&lab, || {
        let streams: Vec<TcpStream> = (0..ASYNC_CONNS)
            .map(|_| {
                let s = TcpStream::connect(SocketAddr::from((PROVIDER_V4, ASYNC_PORT)))
                    .expect("connect");
                s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                s
            })
            .collect();
        let handles: Vec<_> = streams
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                thread::spawn(move || {
                    let mut w = s.try_clone().unwrap();
                    let writer = thread::spawn(move || {
                        w.write_all(&client_data(i)).expect("kernel write");
                        w.shutdown(Shutdown::Write).unwrap();
                    });
                    let mut got = Vec::new();
                    (&s).read_to_end(&mut got).expect("kernel read echo");
                    writer.join().unwrap();
                    got
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    let mut total = 0;
    for (i, got) in echoed.iter().enumerate() {
        let want = client_data(i);
        assert_eq!(got.len(), want.len(), "client {i}: echoed length");
        assert!(*got == want, "client {i}: echoed bytes differ");
        total += want.len();
    }
    // One "conn K echoed N" line per connection (any order), then "echo done".
    let mut reported = 0;
    for _ in 0..ASYNC_CONNS {
        let line = next_line();
        let n: usize = line
            .strip_prefix("conn ")
            .and_then(|r| r.split(" echoed ").nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("expected \"conn K echoed N\", got {line:?}"));
        reported += n;
    }
    assert_eq!(reported, total, "bytes the C server reports echoed");
    assert_eq!(next_line(), "echo done");

    // An idle client: its pending overlapped recv is aborted by the server's close.
    let idle = in_peer(&lab, || {
        let s = TcpStream::connect(SocketAddr::from((PROVIDER_V4, ASYNC_PORT))).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s
    });
    assert_eq!(next_line(), "pending");
    assert_eq!(next_line(), "routine error 995 bytes 0 flags 0");
    assert_eq!(next_line(), "aborted 995 untouched");
    let mut rest = [0u8; 16];
    assert_eq!(
        (&idle).read(&mut rest).expect("idle client read"),
        0,
        "graceful close (EOF)"
    );
    let status = child.wait().expect("wait async-echo-c");
    assert!(status.success(), "async-echo-c exited with {status}");
}
