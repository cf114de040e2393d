//! The C ABI end to end (issue 5 item 5): `provider/examples/c/echo.c` is compiled with gcc
//! against `include/provider.h` and `libprovider.so`, runs in the lab's provider namespace, and
//! talks to kernel TCP in the peer namespace: a kernel client echoes through the C server, then
//! the C client's SO_LINGER {1, 0} close makes the kernel peer's recv fail with ECONNRESET.
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

/// gcc the example; returns the executable.
fn build_example() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let lib = lib_dir();
    let out = target_dir().join("echo-c");
    let status = Command::new("gcc")
        .args(["-Wall", "-Wextra", "-Werror", "-O2", "-I"])
        .arg(root.join("provider/include"))
        .arg(root.join("provider/examples/c/echo.c"))
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
    let exe = build_example();
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
