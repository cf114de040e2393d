//! Root tests of the namespace lab: `cargo test -p xtask -- --include-ignored` as root.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use xtask::lab::{self, Lab, LabConfig};

fn ns_gone(l: &Lab) -> bool {
    !Path::new(lab::NETNS_DIR).join(&l.provider_ns).exists()
        && !Path::new(lab::NETNS_DIR).join(&l.peer_ns).exists()
}

fn netns_ino(path: &str) -> u64 {
    std::fs::metadata(path).unwrap().ino()
}

#[test]
#[ignore = "needs root"]
fn two_queue_lab_pings_v4_v6_and_tears_down() {
    let cfg = LabConfig {
        queues: 2,
        keep: false,
        ..LabConfig::default()
    };
    let l = Lab::up(&cfg).expect("lab up");
    let (p, k) = (l.provider_ns.clone(), l.peer_ns.clone());
    let state = Path::new(lab::STATE_DIR).join(format!("{}.json", l.name));
    assert!(state.exists(), "state file recorded");

    let v4 = l
        .exec(&p, &["ping", "-c", "1", "-W", "2", &l.peer_v4.to_string()])
        .unwrap();
    assert!(v4.status.success(), "ping {}: {v4:?}", l.peer_v4);
    let v6 = l
        .exec(
            &p,
            &["ping", "-6", "-c", "1", "-W", "2", &l.peer_v6.to_string()],
        )
        .unwrap();
    assert!(v6.status.success(), "ping {}: {v6:?}", l.peer_v6);
    // And the other way, through the Command helper.
    let back = l
        .peer_cmd("ping")
        .args(["-c", "1", "-W", "2", &l.provider_v4.to_string()])
        .output()
        .unwrap();
    assert!(back.status.success(), "ping from peer: {back:?}");

    for (ns, ifname) in [(&p, &l.provider_if), (&k, &l.peer_if)] {
        let queues = l
            .exec_ok(ns, &["ls", &format!("/sys/class/net/{ifname}/queues")])
            .unwrap();
        let rx: Vec<_> = queues
            .split_whitespace()
            .filter(|q| q.starts_with("rx-"))
            .collect();
        assert_eq!(rx, ["rx-0", "rx-1"], "{ifname}: {queues}");
        let channels = l.exec_ok(ns, &["ethtool", "-l", ifname]).unwrap();
        let current = channels.split("Current hardware settings:").nth(1).unwrap();
        assert!(
            current
                .lines()
                .any(|x| x.split_whitespace().eq(["RX:", "2"])),
            "{ifname}: {channels}"
        );
    }

    // Offloads off on the peer (DESIGN §10), reserved ports in the provider netns.
    let features = l.exec_ok(&k, &["ethtool", "-k", &l.peer_if]).unwrap();
    for f in [
        "tx-checksumming: off",
        "tcp-segmentation-offload: off",
        "generic-segmentation-offload: off",
        "generic-receive-offload: off",
    ] {
        assert!(features.contains(f), "{f}: {features}");
    }
    let reserved = l
        .exec_ok(&p, &["sysctl", "-n", "net.ipv4.ip_local_reserved_ports"])
        .unwrap();
    assert_eq!(reserved.trim(), "61000-65535");
    assert_ne!(l.provider_mac().unwrap(), l.peer_mac().unwrap());
    assert!(l.ifindex(&p, &l.provider_if).unwrap() > 1);

    l.down().unwrap();
    assert!(ns_gone(&l), "namespaces deleted");
    assert!(!state.exists(), "state file deleted");
    l.down().expect("down is idempotent");
}

#[test]
#[ignore = "needs root"]
fn enter_provider_ns_switches_thread_and_restores() {
    let l = Lab::up(&LabConfig::default()).unwrap();
    let host = netns_ino("/proc/thread-self/ns/net");
    {
        let _g = l.enter_provider_ns().unwrap();
        assert_eq!(
            netns_ino("/proc/thread-self/ns/net"),
            netns_ino(l.provider_ns_path().to_str().unwrap())
        );
        // 198.18.0.1 exists only inside the lab.
        std::net::UdpSocket::bind((l.provider_v4, 0)).expect("bind lab address in provider ns");
    }
    assert_eq!(netns_ino("/proc/thread-self/ns/net"), host, "restored");
    drop(l);
}

#[test]
#[ignore = "needs root"]
fn drop_deletes_and_parallel_labs_do_not_collide() {
    let a = Lab::up(&LabConfig::default()).unwrap();
    let b = Lab::up(&LabConfig::default()).unwrap();
    assert_ne!(a.name, b.name);
    assert_ne!(a.provider_ns, b.provider_ns);
    let names = Lab::status(None).unwrap();
    for l in [&a, &b] {
        let s = names.iter().find(|s| s.name == l.name).expect("listed");
        assert_eq!(s.owner, "alive");
        assert!(s.provider_ns_exists && s.peer_ns_exists && s.has_state);
    }
    let (pa, pb) = (a.provider_ns.clone(), b.provider_ns.clone());
    drop(a);
    drop(b);
    for ns in [pa, pb] {
        assert!(!Path::new(lab::NETNS_DIR).join(ns).exists());
    }
}

#[test]
#[ignore = "needs root"]
fn up_refuses_existing_namespace_and_leaves_it_alone() {
    let name = lab::unique_name();
    let foreign = format!("{name}{}", lab::PEER_NS_SUFFIX);
    let out = std::process::Command::new("ip")
        .args(["netns", "add", &foreign])
        .output()
        .unwrap();
    assert!(out.status.success());
    let cfg = LabConfig {
        name: name.clone(),
        ..LabConfig::default()
    };
    let err = Lab::up(&cfg).unwrap_err();
    assert!(format!("{err:#}").contains("already exists"), "{err:#}");
    assert!(
        Path::new(lab::NETNS_DIR).join(&foreign).exists(),
        "not ours: kept"
    );
    assert!(
        !Path::new(lab::NETNS_DIR)
            .join(format!("{name}{}", lab::PROVIDER_NS_SUFFIX))
            .exists()
    );
    std::process::Command::new("ip")
        .args(["netns", "del", &foreign])
        .status()
        .unwrap();
}

#[test]
#[ignore = "needs root"]
fn stale_cleanup_removes_labs_of_dead_owners_only() {
    let dead = {
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let pid = c.id();
        c.wait().unwrap();
        pid
    };
    let stale = Lab::up(&LabConfig::default()).unwrap();
    let live = Lab::up(&LabConfig::default()).unwrap();
    // Pretend `stale` was made by a process that has exited.
    let path = Path::new(lab::STATE_DIR).join(format!("{}.json", stale.name));
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    v["owner_pid"] = dead.into();
    v["owner_start"] = serde_json::Value::Null;
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();

    let removed = lab::lab_guard_cleanup_stale().unwrap();
    assert!(removed.contains(&stale.name), "{removed:?}");
    assert!(!removed.contains(&live.name));
    assert!(ns_gone(&stale));
    assert!(!path.exists());
    assert!(Path::new(lab::NETNS_DIR).join(&live.provider_ns).exists());
}
