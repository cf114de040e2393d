//! Start-up failures (issue 9): each one is one `provider: …` line on stderr that names the
//! cause and the remedy, exit status 1, and nothing left attached to the interface. Run against
//! the real binary in the namespace lab. Needs root; run by `cargo xtask test`.
use std::time::Duration;

use provider_tests::{Finished, ProviderProcess, attached_xdp_prog, in_peer, run_provider};
use xtask::lab::{Lab, LabConfig, PROVIDER_V4};

const LIMIT: Duration = Duration::from_secs(20);

fn lab(cfg: LabConfig) -> Lab {
    Lab::up(&cfg).expect("lab up")
}

/// The one `provider: …` line of a failed start, after checking the exit status.
fn failure_line(f: &Finished) -> String {
    assert_eq!(
        f.status.code(),
        Some(1),
        "exit status; stderr:\n{}",
        f.stderr
    );
    let lines: Vec<&str> = f
        .stderr
        .lines()
        .filter(|l| l.starts_with("provider: "))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "exactly one error line; stderr:\n{}",
        f.stderr
    );
    println!("{}", lines[0]);
    lines[0].to_string()
}

fn echo_args(lab: &Lab) -> Vec<String> {
    ["echo", "--iface", &lab.provider_if, "--udp", "7"]
        .map(String::from)
        .to_vec()
}

fn run(lab: &Lab, wrap: &[&str], extra: &[&str]) -> Finished {
    let mut args = echo_args(lab);
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_provider(lab, wrap, &args, LIMIT)
}

#[test]
#[ignore = "needs root and network namespaces"]
fn missing_interface() {
    let lab = lab(LabConfig::default());
    let f = run_provider(
        &lab,
        &[],
        &["echo", "--iface", "nope0", "--udp", "7"],
        LIMIT,
    );
    let line = failure_line(&f);
    assert!(
        line.contains("interface nope0 not found in this network namespace")
            && line.contains("ip link show"),
        "{line}"
    );
    assert_eq!(attached_xdp_prog(&lab), None);
}

#[test]
#[ignore = "needs root and network namespaces"]
fn interface_down() {
    let lab = lab(LabConfig::default());
    lab.exec_ok(
        &lab.provider_ns,
        &["ip", "link", "set", &lab.provider_if, "down"],
    )
    .unwrap();
    let line = failure_line(&run(&lab, &[], &[]));
    assert!(
        line.contains(&format!(
            "interface {0} is down: bring it up with `ip link set {0} up`",
            lab.provider_if
        )),
        "{line}"
    );
    assert_eq!(attached_xdp_prog(&lab), None);
}

#[test]
#[ignore = "needs root and network namespaces"]
fn no_address_at_all_and_none_of_the_requested_family() {
    let lab = lab(LabConfig::default());
    let pif = lab.provider_if.clone();
    lab.exec_ok(
        &lab.provider_ns,
        &["ip", "-6", "addr", "flush", "dev", &pif],
    )
    .unwrap();
    // IPv4 is left: asking for IPv6 only names the family and the way out.
    let line = failure_line(&run(&lab, &[], &["--family", "v6"]));
    assert!(
        line.contains(&format!("interface {pif} has no IPv6 address"))
            && line.contains("--family v4"),
        "{line}"
    );
    assert_eq!(attached_xdp_prog(&lab), None, "detached after the check");
    lab.exec_ok(&lab.provider_ns, &["ip", "addr", "flush", "dev", &pif])
        .unwrap();
    let line = failure_line(&run(&lab, &[], &[]));
    assert!(
        line.contains(&format!("interface {pif} has no IP address"))
            && line.contains("ip addr add"),
        "{line}"
    );
    assert_eq!(attached_xdp_prog(&lab), None);
}

#[test]
#[ignore = "needs root and network namespaces"]
fn not_root() {
    let lab = lab(LabConfig::default());
    // An unprivileged user with no capabilities at all (util-linux setpriv).
    let wrap = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
    ];
    let line = failure_line(&run(&lab, &wrap, &[]));
    assert!(
        line.contains("not permitted")
            && line.contains("(missing: CAP_NET_ADMIN, CAP_NET_RAW, CAP_BPF)")
            && line.contains("run it as root"),
        "{line}"
    );
    assert_eq!(attached_xdp_prog(&lab), None);
}

#[test]
#[ignore = "needs root and network namespaces"]
fn another_xdp_program_already_attached() {
    let lab = lab(LabConfig::default());
    // The other program is a first provider; it keeps serving.
    let first = ProviderProcess::start(&lab, &["echo", "--udp", "7"]).unwrap();
    let id = attached_xdp_prog(&lab).expect("the first provider attached");
    let line = failure_line(&run(&lab, &[], &[]));
    assert!(
        line.contains(&format!(
            "interface {} already has XDP program id {id} attached (native mode)",
            lab.provider_if
        )) && line.contains("cannot share it")
            && line.contains("xdp off"),
        "{line}"
    );
    assert_eq!(
        attached_xdp_prog(&lab),
        Some(id),
        "the first one is untouched"
    );
    let echoed = in_peer(&lab, || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.send_to(b"still there?", (PROVIDER_V4, 7)).unwrap();
        let mut b = [0u8; 64];
        s.recv(&mut b).map(|n| b[..n].to_vec())
    });
    assert_eq!(echoed.expect("echo").as_slice(), b"still there?");
    drop(first);
}

#[test]
#[ignore = "needs root and network namespaces"]
fn more_queues_than_active() {
    let lab = lab(LabConfig {
        queues: 4,
        active_queues: Some(2),
        ..LabConfig::default()
    });
    let line = failure_line(&run(&lab, &[], &["--queues", "3"]));
    assert!(
        line.contains(&format!(
            "--queues 3: interface {} has 2 active RX queues (4 allocated",
            lab.provider_if
        )) && line.contains(&format!("ethtool -L {} rx 3 tx 3", lab.provider_if)),
        "{line}"
    );
    assert_eq!(attached_xdp_prog(&lab), None);
}

#[test]
#[ignore = "needs root and network namespaces"]
fn queue_bind_failure_names_the_queue() {
    let lab = lab(LabConfig::default());
    // Another AF_XDP socket (ours, in this process) already holds queue 0.
    let ifindex = lab.ifindex(&lab.provider_ns, &lab.provider_if).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let ns = lab.provider_ns_path();
    let holder = std::thread::spawn(move || {
        let _in = xtask::lab::NsGuard::enter(&ns).unwrap();
        let xsk = provider::xsk::Xsk::new(ifindex, 0, &provider::xsk::XskConfig::default());
        tx.send(xsk.is_ok()).unwrap();
        let _ = done_rx.recv();
        drop(xsk);
    });
    assert!(rx.recv().unwrap(), "the holder bound queue 0");
    let line = failure_line(&run(&lab, &[], &[]));
    assert!(
        line.contains(&format!(
            "AF_XDP bind to RX queue 0 of {}: the queue is already served by another AF_XDP socket",
            lab.provider_if
        )) && line.contains("1 active RX queue"),
        "{line}"
    );
    assert_eq!(attached_xdp_prog(&lab), None);
    done_tx.send(()).unwrap();
    holder.join().unwrap();
}

#[test]
#[ignore = "needs root and network namespaces"]
fn jumbo_mtu_is_clamped_to_a_frame_and_said_so() {
    let lab = lab(LabConfig {
        mtu: 9000,
        ..LabConfig::default()
    });
    let mut p = ProviderProcess::start(&lab, &["echo", "--udp", "7"]).unwrap();
    let stats = p.stats().unwrap();
    assert_eq!(stats["interface"]["link_mtu"], 9000);
    assert_eq!(stats["interface"]["mtu"], 4096 - 256 - 18);
    assert_eq!(stats["interface"]["frame_size"], 4096);
    assert!(p.terminate().unwrap().success());
    // The warning itself, from a run that exits at once (`--family v6` with the v6 address
    // flushed), so its stderr can be read whole.
    lab.exec_ok(
        &lab.provider_ns,
        &["ip", "-6", "addr", "flush", "dev", &lab.provider_if],
    )
    .unwrap();
    let f = run(&lab, &[], &["--family", "v6"]);
    assert!(
        f.stderr.contains(
            "MTU 9000, more than one 4096-byte UMEM frame receives (3840 bytes after the kernel's headroom): the provider uses MTU 3822 — TCP MSS clamped to 3782 (IPv4) / 3762 (IPv6)"
        ),
        "{}",
        f.stderr
    );
}
