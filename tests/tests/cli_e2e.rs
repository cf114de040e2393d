//! The `provider cat`, `sockperf-server` and `script` subcommands, end to end in the namespace
//! lab against the Linux kernel's stack (and the unmodified `sockperf`, `socat` and `python3`)
//! in the peer namespace. Needs root; run by `cargo xtask test`.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::{Child, ChildStdin, ExitStatus, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use provider_tests::{ProviderProcess, in_peer, provider_bin};
use serde_json::Value;
use xtask::lab::{Lab, LabConfig, NsGuard, PEER_V4, PEER_V6, PROVIDER_V4, PROVIDER_V6};

const WAIT: Duration = Duration::from_secs(20);

fn lab() -> Lab {
    Lab::up(&LabConfig::default()).expect("lab up")
}

/// A `provider` subcommand in the provider namespace with stdin, stdout and stderr piped;
/// stdout and stderr are collected (and echoed to the test output). Killed on drop.
struct Proc {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    stats_file: std::path::PathBuf,
}

fn collect(mut r: impl Read + Send + 'static, tag: &'static str) -> Arc<Mutex<Vec<u8>>> {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let b = buf.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 65536];
        loop {
            match r.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tag == "stderr" || n < 4096 {
                        print!("[{tag}] {}", String::from_utf8_lossy(&chunk[..n]));
                    }
                    b.lock().unwrap().extend_from_slice(&chunk[..n]);
                }
            }
        }
    });
    buf
}

impl Proc {
    /// `provider <sub> <args…> --iface <provider_if> --stats-file …`.
    fn start(lab: &Lab, sub: &str, args: &[&str]) -> Proc {
        let stats_file = std::env::temp_dir().join(format!("provider-cli-{}-{sub}.json", lab.name));
        let mut cmd = lab.provider_cmd(provider_bin());
        cmd.arg(sub)
            .args(args)
            .args(["--iface", &lab.provider_if, "--stats-file"])
            .arg(&stats_file)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn provider");
        let stdin = child.stdin.take();
        let stdout = collect(child.stdout.take().unwrap(), "stdout");
        let stderr = collect(child.stderr.take().unwrap(), "stderr");
        Proc {
            child: Some(child),
            stdin,
            stdout,
            stderr,
            stats_file,
        }
    }

    fn stdout_bytes(&self) -> Vec<u8> {
        self.stdout.lock().unwrap().clone()
    }

    fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Every complete stdout line that is a JSON object.
    fn json_lines(&self) -> Vec<Value> {
        let out = self.stdout_bytes();
        let text = String::from_utf8_lossy(&out);
        let complete = text.rfind('\n').map_or("", |i| &text[..i]);
        complete
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Wait for the first stdout JSON line matching `pred`.
    fn wait_json(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(v) = self.json_lines().into_iter().find(|v| pred(v)) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} on stdout; stderr: {}",
                self.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The result line of script line `no`.
    fn op_line(&self, no: u64) -> Value {
        self.wait_json(&format!("result of line {no}"), |v| {
            v["line"] == no && v.get("op").is_some()
        })
    }

    /// Wait until stderr contains `needle`.
    fn wait_stderr(&self, needle: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.stderr_text().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} on stderr: {}",
                self.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Wait until stdout holds at least `n` bytes.
    fn wait_stdout_len(&self, n: usize) -> Vec<u8> {
        let deadline = Instant::now() + WAIT;
        loop {
            let out = self.stdout_bytes();
            if out.len() >= n {
                return out;
            }
            assert!(
                Instant::now() < deadline,
                "stdout has {} of {n} bytes; stderr: {}",
                out.len(),
                self.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn write(&mut self, s: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(s.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    fn close_stdin(&mut self) {
        self.stdin.take();
    }

    /// Wait for the process to exit by itself.
    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                self.child = None;
                // Let the collector threads drain the pipes.
                std::thread::sleep(Duration::from_millis(100));
                return st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("provider did not exit; stderr: {}", self.stderr_text());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.stats_file);
    }
}

/// Run `f` on a background thread inside the peer namespace; `ready` is signalled by `f`
/// through the sender it gets (e.g. once its socket is bound).
fn peer_bg<T: Send + 'static>(
    lab: &Lab,
    f: impl FnOnce(mpsc::Sender<()>) -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = lab.peer_ns_path();
    let (tx, rx) = mpsc::channel();
    let h = std::thread::spawn(move || {
        let _g = NsGuard::enter(&path).expect("enter peer namespace");
        f(tx)
    });
    rx.recv_timeout(WAIT).expect("peer thread ready");
    h
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| i as u8).collect()
}

fn assert_ok(v: &Value) {
    assert!(v["error"].is_null(), "op failed: {v}");
}

// ---------------------------------------------------------------------------------------------
// script, UDP

#[test]
#[ignore = "needs root and network namespaces"]
fn script_udp_echo_sendto_recvfrom_and_stale_handle() {
    let lab = lab();
    let mut p = Proc::start(&lab, "script", &[]);
    p.wait_json("ready event", |v| v["event"] == "ready");
    p.write(
        "socket udp            # 1\n\
         bind 198.18.0.1:9000  # 2\n\
         setsockopt linger 1 5 # 3: meaningless for UDP → WSAENOPROTOOPT, the script goes on\n\
         ioctl fionread        # 4\n\
         recvfrom 2048         # 5\n\
         udp_echo 3            # 6\n\
         sendto 198.18.0.2:9001 100\n\
         getsockname           # 8\n\
         close                 # 9\n\
         close                 # 10: stale handle\n",
    );
    p.close_stdin();
    // Datagrams sent before the bind would go to the kernel (port unreachable).
    assert_ok(&p.op_line(2));
    let peer = peer_bg(&lab, |ready| {
        let s = UdpSocket::bind((PEER_V4, 9001)).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        ready.send(()).unwrap();
        let target = SocketAddr::from((PROVIDER_V4, 9000));
        // The script's `recvfrom` and `udp_echo 3`.
        s.send_to(&pattern(300), target).unwrap();
        let mut buf = [0u8; 2048];
        for i in 0..3 {
            let msg = format!("datagram {i}");
            s.send_to(msg.as_bytes(), target).unwrap();
            let (n, from) = s.recv_from(&mut buf).expect("echo");
            assert_eq!(from, target);
            assert_eq!(&buf[..n], msg.as_bytes());
        }
        // The script's `sendto 198.18.0.2:9001 100`.
        let (n, from) = s.recv_from(&mut buf).expect("sendto datagram");
        assert_eq!(from, target);
        assert_eq!(&buf[..n], &pattern(100)[..]);
    });
    assert!(p.wait_exit().success());
    peer.join().unwrap();
    let socket = p.op_line(1);
    assert_ok(&socket);
    assert_eq!(socket["ret"], 1);
    assert_eq!(socket["handle"], 1);
    assert_eq!(p.op_line(2)["addr"], "198.18.0.1:9000");
    let linger = p.op_line(3);
    assert_eq!(linger["error"], "WSAENOPROTOOPT");
    assert_eq!(linger["ret"], -1);
    let rf = p.op_line(5);
    assert_ok(&rf);
    assert_eq!(rf["ret"], 300);
    assert_eq!(rf["from"], "198.18.0.2:9001");
    assert_eq!(rf["verify"], "ok");
    let echo = p.op_line(6);
    assert_ok(&echo);
    assert_eq!(echo["ret"], 3);
    assert_eq!(p.op_line(7)["ret"], 100);
    assert_eq!(p.op_line(8)["addr"], "198.18.0.1:9000");
    assert_ok(&p.op_line(9));
    assert_eq!(p.op_line(10)["error"], "WSAENOTSOCK");
    // Timestamps are monotonic and every op line has the fields the tests rely on.
    let ops: Vec<Value> = p
        .json_lines()
        .into_iter()
        .filter(|v| v.get("op").is_some())
        .collect();
    assert_eq!(ops.len(), 10);
    for w in ops.windows(2) {
        assert!(w[0]["t_us"].as_u64().unwrap() <= w[1]["t_us"].as_u64().unwrap());
    }
    for v in &ops {
        for k in ["op", "args", "ret", "error", "t_us", "handle"] {
            assert!(v.get(k).is_some(), "{k} missing in {v}");
        }
    }
    let done = p.wait_json("done event", |v| v["event"] == "done");
    assert_eq!(done["ops"], 10);
    assert_eq!(done["errors"], 2);
}

#[test]
#[ignore = "needs root and network namespaces"]
fn script_udp_v6_from_file() {
    let lab = lab();
    let file = std::env::temp_dir().join(format!("provider-script-{}.txt", lab.name));
    std::fs::write(
        &file,
        "# IPv6 UDP echo\nsocket udp v6\nbind [::]:9000\n\nudp_echo 5\nclose\n",
    )
    .unwrap();
    let mut p = Proc::start(&lab, "script", &["--file", file.to_str().unwrap()]);
    assert_ok(&p.op_line(3));
    let peer = peer_bg(&lab, |ready| {
        let s = UdpSocket::bind((PEER_V6, 9001)).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        ready.send(()).unwrap();
        let target = SocketAddr::from((PROVIDER_V6, 9000));
        let mut buf = [0u8; 2048];
        for i in 0..5u8 {
            s.send_to(&[i; 100], target).unwrap();
            let (n, _) = s.recv_from(&mut buf).expect("echo");
            assert_eq!(&buf[..n], &[i; 100]);
        }
    });
    assert!(p.wait_exit().success());
    peer.join().unwrap();
    let _ = std::fs::remove_file(&file);
    let echo = p.op_line(5);
    assert_ok(&echo);
    assert_eq!(echo["ret"], 5);
    assert_eq!(p.wait_json("done", |v| v["event"] == "done")["errors"], 0);
}

#[test]
#[ignore = "needs root and network namespaces"]
fn script_syntax_error_runs_nothing_and_stop_on_error_stops() {
    let lab = lab();
    let file = std::env::temp_dir().join(format!("provider-script-bad-{}.txt", lab.name));
    std::fs::write(&file, "socket udp\nbind 198.18.0.1:9000\nfrobnicate 3\n").unwrap();
    let mut p = Proc::start(&lab, "script", &["--file", file.to_str().unwrap()]);
    let st = p.wait_exit();
    assert_eq!(st.code(), Some(2), "syntax error exit status");
    assert!(p.json_lines().iter().all(|v| v.get("op").is_none()));
    assert_eq!(
        p.wait_json("syntax_error", |v| v["event"] == "syntax_error")["line"],
        3
    );
    std::fs::write(&file, "socket udp\nclose\nclose\nsleep 1\n").unwrap();
    let mut p = Proc::start(
        &lab,
        "script",
        &["--file", file.to_str().unwrap(), "--stop-on-error"],
    );
    assert_eq!(p.wait_exit().code(), Some(1));
    assert_eq!(p.op_line(3)["error"], "WSAENOTSOCK");
    assert!(p.json_lines().iter().all(|v| v["op"] != "sleep"));
    let _ = std::fs::remove_file(&file);
}

// ---------------------------------------------------------------------------------------------
// cat, UDP

#[test]
#[ignore = "needs root and network namespaces"]
fn cat_udp_connect_to_kernel_echo() {
    let lab = lab();
    let peer = peer_bg(&lab, |ready| {
        let s = UdpSocket::bind((PEER_V4, 9100)).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        ready.send(()).unwrap();
        let mut buf = [0u8; 2048];
        let (n, from) = s.recv_from(&mut buf).expect("datagram from cat");
        s.send_to(&buf[..n], from).unwrap();
        buf[..n].to_vec()
    });
    let mut p = Proc::start(
        &lab,
        "cat",
        &[
            "--udp",
            "--connect",
            "198.18.0.2:9100",
            "--close-after",
            "3000",
        ],
    );
    p.wait_stderr("ready: cat udp to 198.18.0.2:9100");
    p.write("hello over udp\n");
    p.close_stdin();
    assert_eq!(peer.join().unwrap(), b"hello over udp\n");
    assert_eq!(p.wait_stdout_len(15), b"hello over udp\n");
    assert!(p.wait_exit().success());
}

#[test]
#[ignore = "needs root and network namespaces"]
fn cat_udp_listen_replies_to_the_sender() {
    let lab = lab();
    let mut p = Proc::start(&lab, "cat", &["--udp", "--listen", "9200"]);
    p.wait_stderr("ready: cat listening on udp 0.0.0.0:9200");
    // Held until a peer is known.
    p.write("pong\n");
    let got = in_peer(&lab, || {
        let s = UdpSocket::bind((PEER_V4, 0)).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.send_to(b"ping\n", (PROVIDER_V4, 9200)).unwrap();
        let mut buf = [0u8; 64];
        let (n, _) = s.recv_from(&mut buf).expect("reply");
        buf[..n].to_vec()
    });
    assert_eq!(got, b"pong\n");
    assert_eq!(p.wait_stdout_len(5), b"ping\n");
    p.close_stdin();
    assert!(p.wait_exit().success());
}

// ---------------------------------------------------------------------------------------------
// sockperf-server, UDP

/// Run the sockperf client in the peer namespace; returns its stdout + stderr.
fn sockperf(lab: &Lab, args: &[&str]) -> String {
    let out = lab
        .peer_cmd("sockperf")
        .args(args)
        .output()
        .expect("run sockperf");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "sockperf failed: {text}");
    text
}

/// `ReceivedMessages=N` of the `[Valid Duration]` line (round trips measured).
fn valid_round_trips(text: &str) -> u64 {
    let line = text
        .lines()
        .find(|l| l.contains("[Valid Duration]"))
        .unwrap_or_else(|| panic!("no [Valid Duration] line in {text}"));
    line.split("ReceivedMessages=")
        .nth(1)
        .and_then(|s| s.trim().split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no ReceivedMessages in {line}"))
}

/// `Summary: Message Rate is N [msg/sec]`.
fn message_rate(text: &str) -> u64 {
    text.lines()
        .find_map(|l| l.split("Message Rate is ").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no message rate in {text}"))
}

#[test]
#[ignore = "needs root and network namespaces"]
fn sockperf_udp_ping_pong_throughput_under_load() {
    let lab = lab();
    for drive in ["application", "threads"] {
        sockperf_udp(&lab, drive);
    }
}

fn sockperf_udp(lab: &Lab, drive: &str) {
    let _server = ProviderProcess::start(
        lab,
        &[
            "sockperf-server",
            "--port",
            "11111",
            "--udp",
            "--drive",
            drive,
        ],
    )
    .expect("sockperf-server");
    let ip = PROVIDER_V4.to_string();
    let pp = sockperf(lab, &["ping-pong", "-i", &ip, "-p", "11111", "-t", "2"]);
    let n = valid_round_trips(&pp);
    assert!(n > 0, "ping-pong measured no round trips");
    assert!(pp.contains("Summary: Latency is"));
    let pp = sockperf(
        lab,
        &[
            "ping-pong",
            "-i",
            &ip,
            "-p",
            "11111",
            "-t",
            "1",
            "-m",
            "1400",
        ],
    );
    assert!(valid_round_trips(&pp) > 0);
    let tp = sockperf(lab, &["throughput", "-i", &ip, "-p", "11111", "-t", "1"]);
    assert!(message_rate(&tp) > 0);
    let ul = sockperf(
        lab,
        &[
            "under-load",
            "-i",
            &ip,
            "-p",
            "11111",
            "-t",
            "2",
            "--mps",
            "1000",
        ],
    );
    assert!(valid_round_trips(&ul) > 0, "under-load got no replies");
    // sockperf 3.7 takes no IPv6 address: a hand-made ping over IPv6 (flags CLIENT|PONG,
    // 30 bytes) must come back with CLIENT cleared, and a throughput message (CLIENT) not.
    in_peer(lab, || {
        let s = UdpSocket::bind((PEER_V6, 0)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let msg = |seq: u64, flags: u16| {
            let mut m = seq.to_be_bytes().to_vec();
            m.extend_from_slice(&flags.to_be_bytes());
            m.extend_from_slice(&30u32.to_be_bytes());
            m.resize(30, 0x5a);
            m
        };
        s.send_to(&msg(41, 1), (PROVIDER_V6, 11111)).unwrap();
        s.send_to(&msg(42, 3), (PROVIDER_V6, 11111)).unwrap();
        let mut buf = [0u8; 100];
        let (n, _) = s.recv_from(&mut buf).expect("pong over IPv6");
        assert_eq!(&buf[..n], &msg(42, 2)[..]);
    });
}

// ---------------------------------------------------------------------------------------------
// TCP (needs the stream API in `Provider`)

#[test]
#[ignore = "needs root and network namespaces"]
fn script_tcp_listen_accept_recv_all_from_python() {
    let lab = lab();
    let mut p = Proc::start(&lab, "script", &[]);
    p.wait_json("ready event", |v| v["event"] == "ready");
    p.write(
        "socket tcp\n\
         setsockopt reuseaddr 1\n\
         bind 0.0.0.0:5000\n\
         listen 4\n",
    );
    let ev = p.wait_json("listening event", |v| v["event"] == "listening");
    assert_eq!(ev["addr"], "0.0.0.0:5000");
    assert_eq!(ev["handle"], 1);
    // The kernel client: 1 MB of i mod 256, then a graceful close.
    let client = lab
        .peer_cmd("python3")
        .args([
            "-c",
            "import socket\n\
             s = socket.create_connection(('198.18.0.1', 5000))\n\
             s.sendall(bytes(i % 256 for i in range(1000000)))\n\
             s.shutdown(socket.SHUT_WR)\n\
             assert s.recv(1) == b''\n\
             s.close()\n",
        ])
        .spawn()
        .expect("python3");
    p.write(
        "accept               # 5\n\
         getpeername          # 6\n\
         recv_all 1000000     # 7\n\
         recv 10              # 8: EOF\n\
         close                # 9\n\
         use 1                # 10\n\
         close                # 11\n",
    );
    p.close_stdin();
    assert!(p.wait_exit().success());
    let st = wait_child(client);
    assert!(st.success(), "python client failed");
    let acc = p.op_line(5);
    assert_ok(&acc);
    assert_eq!(acc["ret"], 2, "accepted socket is handle 2");
    assert_eq!(acc["handle"], 1);
    assert!(acc["peer"].as_str().unwrap().starts_with("198.18.0.2:"));
    assert_eq!(p.op_line(6)["addr"], acc["peer"]);
    let r = p.op_line(7);
    assert_ok(&r);
    assert_eq!(r["ret"], 1_000_000);
    assert_eq!(r["verify"], "ok");
    let eof = p.op_line(8);
    assert_ok(&eof);
    assert_eq!(eof["ret"], 0);
    assert_ok(&p.op_line(9));
    assert_eq!(p.op_line(10)["ret"], 1);
    assert_ok(&p.op_line(11));
}

fn wait_child(mut c: Child) -> ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(st) = c.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > deadline {
            let _ = c.kill();
            let _ = c.wait();
            panic!("child did not exit");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A kernel `socat` echo server on the peer: `socat TCP-LISTEN:PORT,reuseaddr EXEC:cat`.
fn socat_echo(lab: &Lab, port: u16) -> Child {
    let c = lab
        .peer_cmd("socat")
        .args([&format!("TCP-LISTEN:{port},reuseaddr"), "EXEC:cat"])
        .spawn()
        .expect("socat");
    // Wait for the listener.
    in_peer(lab, move || {
        let deadline = Instant::now() + WAIT;
        while std::fs::read_to_string("/proc/thread-self/net/tcp")
            .unwrap()
            .lines()
            .all(|l| !l.contains(&format!(":{port:04X} 00000000:0000 0A")))
        {
            assert!(Instant::now() < deadline, "socat not listening");
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    c
}

#[test]
#[ignore = "needs root and network namespaces"]
fn script_tcp_connect_to_socat_echo() {
    let lab = lab();
    let socat = socat_echo(&lab, 7000);
    let mut p = Proc::start(&lab, "script", &[]);
    p.write(
        "socket tcp\n\
         setsockopt nodelay 1\n\
         connect 198.18.0.2:7000   # 3\n\
         getpeername               # 4\n\
         sendall 200000            # 5\n\
         shutdown send             # 6\n\
         recv_all 200000           # 7\n\
         recv 100                  # 8: EOF\n\
         send 1                    # 9: after SD_SEND\n\
         close                     # 10\n",
    );
    p.close_stdin();
    assert!(p.wait_exit().success());
    assert_ok(&p.op_line(3));
    assert_eq!(p.op_line(4)["addr"], "198.18.0.2:7000");
    assert_eq!(p.op_line(5)["ret"], 200_000);
    assert_ok(&p.op_line(6));
    let r = p.op_line(7);
    assert_ok(&r);
    assert_eq!(r["ret"], 200_000);
    assert_eq!(r["verify"], "ok");
    assert_eq!(p.op_line(8)["ret"], 0);
    assert_eq!(p.op_line(9)["error"], "WSAESHUTDOWN");
    assert_ok(&p.op_line(10));
    assert!(wait_child(socat).success());
}

#[test]
#[ignore = "needs root and network namespaces"]
fn script_tcp_nonblocking_connect_and_echo() {
    let lab = lab();
    let peer = peer_bg(&lab, |ready| {
        let l = TcpListener::bind((PEER_V4, 7100)).unwrap();
        ready.send(()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let data = pattern(50_000);
        s.write_all(&data).unwrap();
        let mut back = vec![0u8; data.len()];
        s.read_exact(&mut back).unwrap();
        assert_eq!(back, data);
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        rest.len()
    });
    let mut p = Proc::start(&lab, "script", &[]);
    p.write(
        "socket tcp\n\
         ioctl fionbio 1           # 2\n\
         connect 198.18.0.2:7100   # 3: WSAEWOULDBLOCK\n\
         sleep 300\n\
         connect 198.18.0.2:7100   # 5: WSAEISCONN\n\
         ioctl fionbio 0           # 6\n\
         echo 50000                # 7\n\
         close                     # 8\n",
    );
    p.close_stdin();
    assert!(p.wait_exit().success());
    assert_eq!(p.op_line(3)["error"], "WSAEWOULDBLOCK");
    assert_eq!(p.op_line(5)["error"], "WSAEISCONN");
    let e = p.op_line(7);
    assert_ok(&e);
    assert_eq!(e["ret"], 50_000);
    assert_ok(&p.op_line(8));
    assert_eq!(
        peer.join().unwrap(),
        0,
        "graceful close: EOF after the echo"
    );
}

#[test]
#[ignore = "needs root and network namespaces"]
fn cat_tcp_connect_to_socat_echo() {
    let lab = lab();
    let socat = socat_echo(&lab, 7200);
    let mut p = Proc::start(
        &lab,
        "cat",
        &[
            "--connect",
            "198.18.0.2:7200",
            "--nodelay",
            "--linger",
            "off",
        ],
    );
    p.wait_stderr("ready: cat connected to tcp 198.18.0.2:7200");
    let text: String = (0..2000).map(|i| format!("line {i}\n")).collect();
    p.write(&text);
    p.close_stdin();
    let st = p.wait_exit();
    assert!(st.success(), "cat failed: {}", p.stderr_text());
    assert_eq!(String::from_utf8(p.stdout_bytes()).unwrap(), text);
    assert!(wait_child(socat).success());
}

#[test]
#[ignore = "needs root and network namespaces"]
fn cat_tcp_listen_nonblocking_once() {
    let lab = lab();
    let mut p = Proc::start(
        &lab,
        "cat",
        &[
            "--listen",
            "7300",
            "--once",
            "--nonblocking",
            "--rcvbuf",
            "65536",
        ],
    );
    p.wait_stderr("ready: cat listening on tcp 0.0.0.0:7300");
    p.write("from the provider\n");
    p.close_stdin();
    let got = in_peer(&lab, || {
        let mut s = TcpStream::connect((PROVIDER_V4, 7300)).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.write_all(&pattern(300_000)).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got
    });
    assert_eq!(got, b"from the provider\n");
    assert!(p.wait_exit().success(), "cat failed: {}", p.stderr_text());
    assert_eq!(p.stdout_bytes(), pattern(300_000));
}

#[test]
#[ignore = "needs root and network namespaces"]
fn cat_tcp_connect_refused_names_the_error() {
    let lab = lab();
    let mut p = Proc::start(&lab, "cat", &["--connect", "198.18.0.2:7400"]);
    let st = p.wait_exit();
    assert!(!st.success());
    assert!(
        p.stderr_text().contains("connect: WSAECONNREFUSED"),
        "{}",
        p.stderr_text()
    );
}

#[test]
#[ignore = "needs root and network namespaces"]
fn sockperf_tcp_ping_pong_and_throughput() {
    let lab = lab();
    for drive in ["application", "threads"] {
        sockperf_tcp(&lab, drive);
    }
}

fn sockperf_tcp(lab: &Lab, drive: &str) {
    let _server = ProviderProcess::start(
        lab,
        &[
            "sockperf-server",
            "--port",
            "11112",
            "--tcp",
            "--delayed-ack-ms",
            "0",
            "--drive",
            drive,
        ],
    )
    .expect("sockperf-server");
    let ip = PROVIDER_V4.to_string();
    let pp = sockperf(
        lab,
        &["ping-pong", "--tcp", "-i", &ip, "-p", "11112", "-t", "2"],
    );
    assert!(valid_round_trips(&pp) > 0, "TCP ping-pong measured nothing");
    let tp = sockperf(
        lab,
        &[
            "throughput",
            "--tcp",
            "-i",
            &ip,
            "-p",
            "11112",
            "-t",
            "1",
            "-m",
            "1400",
        ],
    );
    assert!(message_rate(&tp) > 0);
    // A second connection after the first ones closed, and large messages split across
    // segments.
    let pp = sockperf(
        lab,
        &[
            "ping-pong",
            "--tcp",
            "-i",
            &ip,
            "-p",
            "11112",
            "-t",
            "1",
            "-m",
            "9000",
        ],
    );
    assert!(valid_round_trips(&pp) > 0);
}

#[test]
#[ignore = "needs root and network namespaces"]
fn cat_tcp_hard_close_resets_the_peer() {
    let lab = lab();
    let peer = peer_bg(&lab, |ready| {
        let l = TcpListener::bind((PEER_V4, 7500)).unwrap();
        ready.send(()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut buf = [0u8; 100];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(_) => continue,
                Err(e) => return Err(e.kind()),
            }
        }
    });
    let mut p = Proc::start(
        &lab,
        "cat",
        &[
            "--connect",
            "198.18.0.2:7500",
            "--linger",
            "0",
            "--shutdown",
            "none",
            "--close-after",
            "0",
        ],
    );
    p.wait_stderr("ready: cat connected");
    p.write("x");
    p.close_stdin();
    assert!(p.wait_exit().success(), "{}", p.stderr_text());
    assert_eq!(
        peer.join().unwrap(),
        Err(std::io::ErrorKind::ConnectionReset),
        "linger 0 close: the peer sees a reset"
    );
}

#[test]
#[ignore = "needs root and network namespaces"]
fn script_provider_wide_flags_and_tcp_v6() {
    let lab = lab();
    let mut p = Proc::start(
        &lab,
        "script",
        &[
            "--rcvbuf",
            "65536",
            "--sndbuf",
            "32768",
            "--time-wait-ms",
            "100",
            "--min-rto-ms",
            "50",
            "--orphan-timeout-ms",
            "2000",
            "--delayed-ack-ms",
            "0",
            "--cc",
            "newreno",
            "--drain-ms",
            "5000",
        ],
    );
    p.write(
        "socket tcp v6             # 1\n\
         getsockopt rcvbuf         # 2\n\
         getsockopt sndbuf         # 3\n\
         getsockopt linger         # 4\n\
         bind [::]:5001            # 5\n\
         listen                    # 6\n",
    );
    p.wait_json("listening", |v| v["event"] == "listening");
    let client = peer_bg(&lab, |ready| {
        ready.send(()).unwrap();
        let mut s = TcpStream::connect((PROVIDER_V6, 5001)).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.write_all(&pattern(100_000)).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got
    });
    p.write(
        "accept                    # 7\n\
         recv_all 100000           # 8\n\
         sendall 70000             # 9\n\
         close                     # 10: active close → TIME_WAIT (100 ms)\n\
         use 1\n\
         close                     # 12\n",
    );
    p.close_stdin();
    assert!(p.wait_exit().success());
    assert_eq!(p.op_line(2)["ret"], 65536);
    assert_eq!(p.op_line(3)["ret"], 32768);
    assert_eq!(p.op_line(4)["linger"], serde_json::json!([0, 0]));
    assert_eq!(p.op_line(8)["verify"], "ok");
    assert_eq!(p.op_line(9)["ret"], 70_000);
    assert_ok(&p.op_line(10));
    assert_eq!(client.join().unwrap(), pattern(70_000));
    let done = p.wait_json("done", |v| v["event"] == "done");
    assert_eq!(
        done["closing"], 0,
        "TIME_WAIT of 100 ms is over within the drain"
    );
    assert!(done["t_us"].as_u64().unwrap() < 4_000_000);
}

/// curl (the kernel's TCP, an unmodified HTTP client) against a tiny HTTP responder made of
/// `provider cat`: the response is cat's stdin, the request lands on its stdout.
#[test]
#[ignore = "needs root and network namespaces"]
fn curl_fetches_from_an_http_responder_on_provider_cat() {
    let lab = lab();
    let body = "hello from the provider\n".repeat(2000);
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut p = Proc::start(
        &lab,
        "cat",
        &["--listen", "8080", "--once", "--close-after", "3000"],
    );
    p.wait_stderr("ready: cat listening on tcp 0.0.0.0:8080");
    p.write(&response);
    p.close_stdin();
    let out = lab
        .peer_cmd("curl")
        .args(["-sS", "--max-time", "10", "http://198.18.0.1:8080/hello"])
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        body,
        "curl got the whole body"
    );
    assert!(p.wait_exit().success(), "cat failed: {}", p.stderr_text());
    let request = String::from_utf8_lossy(&p.stdout_bytes()).to_string();
    assert!(
        request.starts_with("GET /hello HTTP/1.1\r\n"),
        "request seen by cat: {request:?}"
    );
    assert!(request.contains("Host: 198.18.0.1:8080"));
}
