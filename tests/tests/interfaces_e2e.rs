//! The provider with its defaults on interfaces made the way users make them (issue 9): a plain
//! veth (allocated queues > active queues, offloads on), fewer active than allocated queues,
//! channel changes while running, jumbo MTU, and a 1280-byte IPv6 link. Against the Linux kernel
//! in the peer namespace. Needs root; run by `cargo xtask test`.
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use provider::api::{AF_INET, AF_INET6, IPPROTO_UDP, Provider, SOCK_DGRAM};
use provider::engine::{Drive, Engine, EngineStats};
use provider::socket::{Socket, WsaError};
use provider_tests::transfer::{
    kernel_client_to_provider_server, provider_client_to_kernel_server,
};
use provider_tests::{attached_xdp_prog, in_peer, in_provider, provider_bin, start_engine};
use xtask::lab::{Lab, LabConfig, PEER_V6, PROVIDER_V4, PROVIDER_V6};

const MIB: u64 = 1 << 20;

struct Setup {
    // Field order: the engine stops before the lab goes.
    engine: Engine,
    lab: Lab,
}

fn start(cfg: LabConfig) -> Setup {
    let lab = Lab::up(&cfg).expect("lab up");
    let engine = start_engine(&lab, |_| {});
    Setup { engine, lab }
}

fn p(s: &Setup) -> Arc<Provider> {
    s.engine.provider().clone()
}

fn stats(s: &Setup) -> EngineStats {
    s.engine.stats()
}

fn served(s: &Setup) -> u32 {
    stats(s).interface.expect("engine stats").served_queues
}

fn rx_per_queue(s: &Setup) -> Vec<(u32, u64)> {
    stats(s)
        .queues
        .iter()
        .map(|q| (q.queue, q.rx_frames))
        .collect()
}

/// A provider UDP echo socket on `port` (IPv4 wildcard), served by a thread until closed.
fn udp_echo(p: &Arc<Provider>, port: u16) -> Socket {
    let s = p.wsp_socket(AF_INET, SOCK_DGRAM, IPPROTO_UDP).unwrap();
    p.wsp_bind(s, SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port))
        .unwrap();
    let p = p.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = p.wsp_recv_from(s, &mut buf) {
            let _ = p.wsp_send_to(s, &buf[..n], from);
        }
    });
    s
}

/// `flows` kernel UDP sockets (distinct source ports, so the peer's TX queue — which picks the
/// veth RX queue — varies) each send one datagram to `target` and wait for its echo. Returns
/// how many came back.
fn udp_flows(lab: &Lab, target: SocketAddr, flows: usize) -> usize {
    in_peer(lab, move || {
        let mut back = 0;
        for i in 0..flows {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            s.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            let msg = format!("flow {i}");
            s.send_to(msg.as_bytes(), target).unwrap();
            let mut b = [0u8; 64];
            if s.recv(&mut b).is_ok_and(|n| &b[..n] == msg.as_bytes()) {
                back += 1;
            }
        }
        back
    })
}

fn ethtool_l(lab: &Lab, ns: &str, ifname: &str, n: u32) -> std::process::Output {
    let n = n.to_string();
    lab.exec(ns, &["ethtool", "-L", ifname, "rx", &n, "tx", &n])
        .expect("run ethtool")
}

fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond()
}

/// A plain veth (`ip link add … type veth`, nothing else) allocates one queue per CPU but runs
/// one; the peer keeps tx-checksumming on, so its frames carry partial checksums. The engine with
/// its defaults serves the one active queue and moves data both ways.
#[test]
#[ignore = "needs root and network namespaces"]
fn plain_veth_with_defaults_serves_its_active_queue_both_ways() {
    let s = start(LabConfig {
        plain: true,
        ..LabConfig::default()
    });
    let st = stats(&s).interface.unwrap();
    println!("{st:?}");
    assert_eq!(st.served_queues, 1, "the one active queue");
    assert_eq!(st.active_rx_queues, Some(1));
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    assert_eq!(
        st.info.allocated_rx_queues, cpus,
        "a plain veth allocates a queue per CPU"
    );
    assert_eq!(st.info.driver.as_deref(), Some("veth"));
    assert!(st.info.partial_checksums);
    let mss = kernel_client_to_provider_server(&s.lab, &p(&s), false, 7101, 64 * MIB);
    assert_eq!(mss, 1460 - 12);
    provider_client_to_kernel_server(&s.lab, &p(&s), true, 7102, 64 * MIB);
    let e = stats(&s).engine;
    assert!(
        e.rx_partial_checksum > 0,
        "the peer's offload-pending checksums were seen and accepted: {e:?}"
    );
    assert_eq!(e.rx_bad_checksum, 0);
}

/// Each serving subcommand of the binary starts with its defaults on a plain veth and serves.
#[test]
#[ignore = "needs root and network namespaces"]
fn plain_veth_every_subcommand_starts_with_its_defaults() {
    let lab = Lab::up(&LabConfig {
        plain: true,
        ..LabConfig::default()
    })
    .unwrap();
    let iface = lab.provider_if.clone();

    // echo: a datagram comes back.
    let echo = spawn_ready(&lab, &["echo", "--iface", &iface]);
    assert_eq!(
        udp_flows(&lab, SocketAddr::new(PROVIDER_V4.into(), 7), 4),
        4
    );
    echo.stop();

    // cat: what the kernel client sends arrives on stdout.
    let mut cat = spawn_ready(
        &lab,
        &["cat", "--iface", &iface, "--listen", "5000", "--once"],
    );
    drop(cat.child.stdin.take()); // stdin EOF: cat sends nothing and shuts down its side
    in_peer(&lab, || {
        let mut k = TcpStream::connect((PROVIDER_V4, 5000)).unwrap();
        k.write_all(b"hello from the kernel\n").unwrap();
    });
    let (status, stdout) = cat.finish();
    assert!(status.success());
    assert_eq!(stdout, "hello from the kernel\n");

    // script: accept and verify 1 MB of the script's stream pattern.
    let file = std::env::temp_dir().join(format!("iface-script-{}.txt", std::process::id()));
    std::fs::write(
        &file,
        "socket tcp\nbind 0.0.0.0:5001\nlisten\naccept\nrecv_all 1000000\nclose\n",
    )
    .unwrap();
    let file_arg = file.to_string_lossy().to_string();
    let script = spawn_ready(&lab, &["script", "--iface", &iface, "--file", &file_arg]);
    std::thread::sleep(Duration::from_millis(200));
    in_peer(&lab, || {
        let mut k = TcpStream::connect((PROVIDER_V4, 5001)).unwrap();
        let data: Vec<u8> = (0..1_000_000u32).map(|i| i as u8).collect();
        k.write_all(&data).unwrap();
    });
    let (status, stdout) = script.finish();
    let _ = std::fs::remove_file(&file);
    assert!(status.success(), "{stdout}");
    assert!(
        stdout.contains(r#""op":"recv_all""#) && stdout.contains(r#""ret":1000000"#),
        "{stdout}"
    );
    assert!(stdout.contains(r#""verify":"ok""#), "{stdout}");

    // sockperf-server: the real sockperf client measures a second of ping-pong.
    let sp = spawn_ready(&lab, &["sockperf-server", "--iface", &iface, "--tcp"]);
    let client = lab
        .peer_cmd("sockperf")
        .args([
            "ping-pong",
            "--tcp",
            "-i",
            "198.18.0.1",
            "-p",
            "11111",
            "-t",
            "1",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&client.stdout);
    assert!(client.status.success(), "{text}");
    assert!(
        text.contains("avg-latency") || text.contains("Summary"),
        "{text}"
    );
    sp.stop();
    assert_eq!(attached_xdp_prog(&lab), None, "every run detached");
}

/// A provider subcommand started by [`spawn_ready`]: its stdout is relayed by a thread.
struct Running {
    child: Child,
    stdout: std::sync::mpsc::Receiver<String>,
}

impl Running {
    /// Wait for the process to end by itself; its exit status and whole stdout.
    fn finish(mut self) -> (std::process::ExitStatus, String) {
        let status = self.child.wait().unwrap();
        (status, self.stdout.iter().collect())
    }

    /// SIGTERM (by PID) and check the stop was clean.
    fn stop(self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let (st, _) = self.finish();
        assert!(st.success(), "clean stop: {st:?}");
    }
}

/// Start a provider subcommand and wait for its ready line (stdout: echo, script,
/// sockperf-server; stderr: cat).
fn spawn_ready(lab: &Lab, args: &[&str]) -> Running {
    let mut child = lab
        .provider_cmd(provider_bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn provider");
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    let tx = ready_tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            println!("[provider stderr] {line}");
            if line.contains("ready") {
                let _ = tx.send(());
            }
        }
    });
    let stdout = child.stdout.take().unwrap();
    let (out_tx, out_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("[provider stdout] {line}");
            if line.contains("ready") {
                let _ = ready_tx.send(());
            }
            let _ = out_tx.send(line + "\n");
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("{args:?}: no ready line"));
    Running {
        child,
        stdout: out_rx,
    }
}

/// 4 allocated, 2 active: the defaults serve exactly the 2 active queues and both carry
/// steered traffic.
#[test]
#[ignore = "needs root and network namespaces"]
fn fewer_active_than_allocated_both_active_queues_carry_traffic() {
    let s = start(LabConfig {
        queues: 4,
        active_queues: Some(2),
        ..LabConfig::default()
    });
    let st = stats(&s).interface.unwrap();
    assert_eq!((st.served_queues, st.info.allocated_rx_queues), (2, 4));
    let _echo = udp_echo(&p(&s), 9000);
    assert_eq!(
        udp_flows(&s.lab, SocketAddr::new(PROVIDER_V4.into(), 9000), 64),
        64
    );
    let rx = rx_per_queue(&s);
    println!("rx frames per queue: {rx:?}");
    assert_eq!(rx.iter().map(|r| r.0).collect::<Vec<_>>(), [0, 1]);
    assert!(rx.iter().all(|r| r.1 > 0), "both queues received: {rx:?}");
    kernel_client_to_provider_server(&s.lab, &p(&s), false, 7201, 16 * MIB);
}

/// `ethtool -L` while running: growth is followed (a new queue is bound and carries traffic,
/// an established connection lives on); shrinking below a served queue is refused by the
/// kernel itself, and the provider goes on serving.
#[test]
#[ignore = "needs root and network namespaces"]
fn follows_channel_growth_and_survives_a_refused_shrink() {
    channel_changes(Drive::Threads);
}

/// The same with `Drive::Application`: `aio::drive` on a tokio runtime re-registers the new
/// queue's socket with the reactor.
#[test]
#[ignore = "needs root and network namespaces"]
fn application_driven_engine_follows_channel_growth() {
    channel_changes(Drive::Application);
}

fn channel_changes(drive: Drive) {
    let lab = Lab::up(&LabConfig {
        queues: 4,
        active_queues: Some(2),
        ..LabConfig::default()
    })
    .unwrap();
    let engine = start_engine(&lab, move |c| c.drive = drive);
    let runtime = (drive == Drive::Application).then(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.spawn(provider::aio::drive(engine.driver().unwrap()));
        rt
    });
    let s = Setup { engine, lab };
    assert_eq!(served(&s), 2);
    let (pns, kns) = (s.lab.provider_ns.clone(), s.lab.peer_ns.clone());
    let (pif, kif) = (s.lab.provider_if.clone(), s.lab.peer_if.clone());
    // A connection established before the change.
    let (ptx, prx) = std::sync::mpsc::channel();
    let server = {
        let p = p(&s);
        std::thread::spawn(move || {
            let l = provider_tests::transfer::tcp_socket(&p, false);
            p.wsp_bind(l, SocketAddr::new(PROVIDER_V4.into(), 7301))
                .unwrap();
            p.wsp_listen(l, 4).unwrap();
            ptx.send(()).unwrap();
            let (c, _) = p.wsp_accept(l).unwrap();
            let mut buf = [0u8; 4096];
            let mut total = 0;
            loop {
                let n = p.wsp_recv(c, &mut buf).unwrap();
                if n == 0 {
                    break;
                }
                p.wsp_send(c, &buf[..n]).unwrap();
                total += n;
            }
            p.wsp_close_socket(c).unwrap();
            total
        })
    };
    prx.recv().unwrap();
    let ns = s.lab.peer_ns_path();
    let (ctx, crx) = std::sync::mpsc::channel::<()>();
    let client = std::thread::spawn(move || {
        let _in = xtask::lab::NsGuard::enter(&ns).unwrap();
        let mut k = TcpStream::connect((PROVIDER_V4, 7301)).unwrap();
        let mut echo = |msg: &[u8]| {
            use std::io::Read;
            k.write_all(msg).unwrap();
            let mut b = vec![0u8; msg.len()];
            k.read_exact(&mut b).unwrap();
            assert_eq!(b, msg);
        };
        echo(b"before the change");
        crx.recv().unwrap();
        echo(b"after the change");
        k.shutdown(std::net::Shutdown::Write).unwrap();
    });

    // Grow the provider side first (veth refuses a peer with more TX queues than the XDP
    // side has RX queues), then the peer's TX so flows can land on the new queue.
    let out = ethtool_l(&s.lab, &pns, &pif, 3);
    assert!(out.status.success(), "{out:?}");
    assert!(
        wait_until(Duration::from_secs(5), || served(&s) == 3),
        "the provider followed: {:?}",
        stats(&s).interface
    );
    let out = ethtool_l(&s.lab, &kns, &kif, 3);
    assert!(out.status.success(), "{out:?}");
    let st = stats(&s).interface.unwrap();
    assert_eq!(st.queue_changes, 1);
    assert!(
        st.last_change
            .as_deref()
            .unwrap()
            .contains("serving queues 0..3 (was 0..2)")
    );

    let _echo = udp_echo(&p(&s), 9000);
    let target = SocketAddr::new(PROVIDER_V4.into(), 9000);
    assert!(
        wait_until(Duration::from_secs(10), || {
            udp_flows(&s.lab, target, 32);
            rx_per_queue(&s).iter().any(|&(q, n)| q == 2 && n > 0)
        }),
        "the new queue 2 carries steered traffic: {:?}",
        rx_per_queue(&s)
    );
    ctx.send(()).unwrap();
    client.join().unwrap();
    assert_eq!(server.join().unwrap(), 33, "the old connection lived on");

    // Shrink: the kernel refuses while AF_XDP sockets hold queues 1 and 2.
    let out = ethtool_l(&s.lab, &pns, &pif, 1);
    let err = String::from_utf8_lossy(&out.stderr);
    println!("ethtool -L {pif} rx 1 tx 1: {err}");
    assert!(!out.status.success(), "the kernel refused the shrink");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(served(&s), 3, "nothing vanished");
    assert_eq!(udp_flows(&s.lab, target, 16), 16, "still served");
    drop(s);
    drop(runtime);
}

/// A queue without an AF_XDP socket (`--queues 1` on 2 active queues) never black-holes the
/// provider's flows: `steer` finds no XSKS entry and passes them to the kernel.
#[test]
#[ignore = "needs root and network namespaces"]
fn frames_on_an_unserved_queue_fall_back_to_the_kernel() {
    let lab = Lab::up(&LabConfig {
        queues: 2,
        ..LabConfig::default()
    })
    .unwrap();
    let engine = start_engine(&lab, |c| c.queues = Some(1));
    let p = engine.provider().clone();
    assert_eq!(engine.stats().interface.unwrap().served_queues, 1);
    let _echo = udp_echo(&p, 9000);
    // A kernel socket on the same port in the provider namespace gets what queue 1 passes.
    let kernel = in_provider(&lab, || {
        let k = UdpSocket::bind((PROVIDER_V4, 9000)).unwrap();
        k.set_nonblocking(true).unwrap();
        k
    });
    let target = SocketAddr::new(PROVIDER_V4.into(), 9000);
    let echoed = udp_flows(&lab, target, 64);
    let mut to_kernel = HashSet::new();
    let mut b = [0u8; 64];
    while let Ok((n, from)) = kernel.recv_from(&mut b) {
        to_kernel.insert((from, b[..n].to_vec()));
    }
    let xdp = engine.stats().xdp;
    println!(
        "echoed by the provider: {echoed}, reached the kernel: {}, {xdp:?}",
        to_kernel.len()
    );
    assert_eq!(
        echoed + to_kernel.len(),
        64,
        "every datagram went somewhere"
    );
    assert!(!to_kernel.is_empty(), "some flows landed on queue 1");
    assert!(echoed > 0, "some flows landed on queue 0");
    assert_eq!(xdp.redirect_failed, to_kernel.len() as u64);
}

/// MTU 9000: a UMEM frame cannot hold it, so the engine uses 4096-byte frames, clamps its MSS
/// to what a frame receives, and still moves 64 MiB each way.
#[test]
#[ignore = "needs root and network namespaces"]
fn jumbo_mtu_moves_64_mib_each_way() {
    let s = start(LabConfig {
        mtu: 9000,
        ..LabConfig::default()
    });
    let st = stats(&s).interface.unwrap();
    assert_eq!(
        (st.info.link_mtu, st.info.mtu, st.info.frame_size),
        (9000, 3822, 4096)
    );
    let mss = kernel_client_to_provider_server(&s.lab, &p(&s), false, 7401, 64 * MIB);
    assert_eq!(mss, 3782 - 12, "the clamped MSS minus the timestamp option");
    provider_client_to_kernel_server(&s.lab, &p(&s), false, 7402, 64 * MIB);
    let mss6 = kernel_client_to_provider_server(&s.lab, &p(&s), true, 7403, 8 * MIB);
    assert_eq!(mss6, 3762 - 12);
    let drops: u64 = stats(&s).queues.iter().map(|q| q.xsk.rx_dropped).sum();
    assert_eq!(drops, 0, "no frame was too large for a UMEM frame");
}

/// An IPv6 link at the minimum MTU (1280): MSS 1220, datagrams up to 1232 bytes.
#[test]
#[ignore = "needs root and network namespaces"]
fn ipv6_at_mtu_1280() {
    let s = start(LabConfig {
        mtu: 1280,
        ..LabConfig::default()
    });
    assert_eq!(stats(&s).interface.unwrap().info.mtu, 1280);
    let mss = kernel_client_to_provider_server(&s.lab, &p(&s), true, 7501, 16 * MIB);
    assert_eq!(mss, 1220 - 12);
    provider_client_to_kernel_server(&s.lab, &p(&s), true, 7502, 16 * MIB);
    // UDP: the largest datagram fits one frame; one byte more is WSAEMSGSIZE (no fragments).
    let pr = p(&s);
    let u = pr.wsp_socket(AF_INET6, SOCK_DGRAM, IPPROTO_UDP).unwrap();
    let peer = in_peer(&s.lab, || {
        let k = UdpSocket::bind((PEER_V6, 9600)).unwrap();
        k.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        k
    });
    let to = SocketAddr::new(IpAddr::V6(PEER_V6), 9600);
    assert_eq!(pr.wsp_send_to(u, &[7u8; 1232], to), Ok(1232));
    assert_eq!(
        pr.wsp_send_to(u, &[7u8; 1233], to),
        Err(WsaError::WSAEMSGSIZE)
    );
    let mut b = vec![0u8; 2000];
    let (n, from) = peer.recv_from(&mut b).unwrap();
    assert_eq!(n, 1232);
    assert_eq!(from.ip(), IpAddr::V6(PROVIDER_V6));
}

/// The way to shrink under a running provider: lower its queue limit first (the queues above
/// it are released at once), then `ethtool -L` succeeds; connections live on, and with the
/// limit lifted the provider follows the interface again.
#[test]
#[ignore = "needs root and network namespaces"]
fn lowering_the_queue_limit_lets_ethtool_shrink() {
    let s = start(LabConfig {
        queues: 4,
        active_queues: Some(3),
        ..LabConfig::default()
    });
    assert_eq!(served(&s), 3);
    let (pns, kns) = (s.lab.provider_ns.clone(), s.lab.peer_ns.clone());
    let (pif, kif) = (s.lab.provider_if.clone(), s.lab.peer_if.clone());
    let _echo = udp_echo(&p(&s), 9000);
    let target = SocketAddr::new(PROVIDER_V4.into(), 9000);
    assert_eq!(udp_flows(&s.lab, target, 32), 32);

    let out = ethtool_l(&s.lab, &pns, &pif, 1);
    assert!(
        !out.status.success(),
        "refused while queues 1 and 2 are held"
    );
    assert!(s.engine.set_queue_limit(Some(0)).is_err());
    s.engine.set_queue_limit(Some(1)).unwrap();
    assert_eq!(served(&s), 1, "released before set_queue_limit returned");
    let st = stats(&s).interface.unwrap();
    assert!(
        st.last_change
            .as_deref()
            .unwrap()
            .contains("queue limit 1; serving queues 0..1"),
        "{st:?}"
    );
    // The peer first (its TX queues pick our RX queues), then us. The kernel frees a closed
    // socket's hold on its queue a moment later (deferred work): retry briefly.
    assert!(ethtool_l(&s.lab, &kns, &kif, 1).status.success());
    assert!(
        wait_until(Duration::from_secs(3), || ethtool_l(&s.lab, &pns, &pif, 1)
            .status
            .success()),
        "ethtool -L {pif} rx 1 tx 1 succeeds once the provider released the queues"
    );
    kernel_client_to_provider_server(&s.lab, &p(&s), false, 7601, 8 * MIB);
    assert_eq!(udp_flows(&s.lab, target, 16), 16);

    // Limit lifted: the provider follows the interface again.
    s.engine.set_queue_limit(None).unwrap();
    assert!(ethtool_l(&s.lab, &pns, &pif, 2).status.success());
    assert!(
        wait_until(Duration::from_secs(5), || served(&s) == 2),
        "{:?}",
        stats(&s).interface
    );
    assert_eq!(udp_flows(&s.lab, target, 16), 16);
}
