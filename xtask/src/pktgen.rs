//! `cargo xtask pktgen`: a UDP packet-rate generator (DESIGN §12).
//!
//! When the kernel has pktgen (`/proc/net/pktgen` exists) it is driven through its proc
//! files; otherwise (this kernel: no pktgen module, DESIGN §11) `provider pktgen` generates
//! live frames in the kernel with `BPF_PROG_TEST_RUN` + `BPF_F_TEST_XDP_LIVE_FRAMES`, out of
//! the given interface. With `--lab NAME` the generator runs in the lab's peer namespace on
//! the peer veth, aimed at the provider veth's MAC.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::Value;

use crate::cmd;
use crate::demo::fmt_mac;
use crate::lab::{Lab, NsGuard};
use crate::proc::{self, Proc};
use crate::provider_bin;

/// The source port generated frames carry.
pub const SRC_PORT: u16 = 40000;

#[derive(Debug, Clone)]
pub struct PktgenOptions {
    pub lab: Option<String>,
    pub iface: Option<String>,
    pub dst: SocketAddr,
    /// Source address (iface mode; default: the interface's first address of dst's family).
    pub src: Option<SocketAddr>,
    /// Destination MAC (iface mode; default: the kernel's neighbour entry for dst).
    pub dst_mac: Option<String>,
    /// UDP payload bytes.
    pub size: usize,
    pub seconds: u64,
    pub batch: Option<u32>,
}

/// What a generator run reports.
#[derive(Debug, Clone, Serialize)]
pub struct GenResult {
    pub generator: &'static str,
    pub frames: u64,
    pub seconds: f64,
    pub pps: f64,
    pub frame_len: u64,
}

/// Frame length without FCS for a UDP payload of `size` bytes.
pub fn frame_len(dst: &SocketAddr, size: usize) -> usize {
    14 + if dst.is_ipv4() { 20 } else { 40 } + 8 + size
}

/// Where the generator runs and what it aims at.
pub struct Target {
    /// Namespace handle to enter (lab mode), None for the current one.
    pub ns: Option<PathBuf>,
    /// `ip netns exec` name for child processes (lab mode).
    pub ns_name: Option<String>,
    pub iface: String,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub dst_mac: String,
}

impl Target {
    /// The lab's peer veth → the provider veth.
    pub fn lab(lab: &Lab, dst: SocketAddr) -> Result<Target> {
        let src_ip = match dst.ip() {
            IpAddr::V4(_) => IpAddr::V4(lab.peer_v4),
            IpAddr::V6(_) => IpAddr::V6(lab.peer_v6),
        };
        Ok(Target {
            ns: Some(lab.peer_ns_path()),
            ns_name: Some(lab.peer_ns.clone()),
            iface: lab.peer_if.clone(),
            src: SocketAddr::new(src_ip, SRC_PORT),
            dst,
            dst_mac: fmt_mac(lab.provider_mac()?),
        })
    }

    fn command(&self, program: &Path, cpu: Option<u32>) -> Command {
        let mut c = match &self.ns_name {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]);
                c
            }
            None => Command::new("env"),
        };
        if let Some(cpu) = cpu {
            c.args(["taskset", "-c", &cpu.to_string()]);
        }
        c.arg(program);
        c
    }
}

/// Runs `provider pktgen` for `seconds` (pinned to `cpu` if given) and parses its result.
pub fn live_frames(
    bin: &Path,
    t: &Target,
    size: usize,
    seconds: u64,
    batch: Option<u32>,
    cpu: Option<u32>,
) -> Result<GenResult> {
    let mut c = t.command(bin, cpu);
    c.args(["pktgen", "--iface", &t.iface, "--dst-mac", &t.dst_mac])
        .args(["--src", &t.src.to_string(), "--dst", &t.dst.to_string()])
        .args([
            "--size",
            &size.to_string(),
            "--seconds",
            &seconds.to_string(),
        ]);
    if let Some(b) = batch {
        c.args(["--batch", &b.to_string()]);
    }
    let mut p = Proc::spawn("provider pktgen", &mut c)?;
    p.wait_success(Duration::from_secs(seconds + 30))?;
    let mut lines = Vec::new();
    while let Some(l) = p.next_line(Duration::from_millis(200))? {
        lines.push(l);
    }
    let v = proc::last_json(&lines).with_context(|| {
        format!(
            "provider pktgen printed no JSON result; stdout: {:?}",
            lines.iter().map(|l| &l.text).collect::<Vec<_>>()
        )
    })?;
    let f = |k: &str| v.get(k).and_then(Value::as_f64);
    Ok(GenResult {
        generator: "provider pktgen (XDP live frames)",
        frames: f("frames").unwrap_or(0.0) as u64,
        seconds: f("seconds").unwrap_or(seconds as f64),
        pps: f("pps").context("no pps in provider pktgen result")?,
        frame_len: f("frame_len").map_or(frame_len(&t.dst, size) as u64, |x| x as u64),
    })
}

/// True when the kernel has pktgen.
pub fn kernel_pktgen_available() -> bool {
    Path::new("/proc/net/pktgen").exists()
}

/// Writes one pktgen command (each command is one write(2)).
fn pg_write(file: &Path, command: &str) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .open(file)
        .with_context(|| format!("open {}", file.display()))?;
    f.write_all(command.as_bytes())
        .with_context(|| format!("pktgen: `{command}` > {}", file.display()))
}

/// Drives kernel pktgen on thread 0 (`kpktgend_0`) for `seconds`. pktgen is per network
/// namespace: its proc files are read through `/proc/thread-self/net`, with the thread
/// inside `t.ns` when given.
pub fn kernel_pktgen(t: &Target, size: usize, seconds: u64) -> Result<GenResult> {
    let pg = PathBuf::from("/proc/thread-self/net/pktgen");
    let dev = pg.join(&t.iface);
    let (thread, ctrl) = (pg.join("kpktgend_0"), pg.join("pgctrl"));
    let enter = |ns: &Option<PathBuf>| ns.as_deref().map(NsGuard::enter).transpose();
    let _g = enter(&t.ns)?;
    pg_write(&thread, "rem_device_all")?;
    pg_write(&thread, &format!("add_device {}", t.iface))?;
    let dst_cmd = match t.dst.ip() {
        IpAddr::V4(a) => format!("dst {a}"),
        IpAddr::V6(a) => format!("dst6 {a}"),
    };
    let src_cmd = match t.src.ip() {
        IpAddr::V4(a) => format!("src_min {a}"),
        IpAddr::V6(a) => format!("src6 {a}"),
    };
    for c in [
        "count 0".to_owned(), // until stopped
        "delay 0".to_owned(),
        format!("pkt_size {}", frame_len(&t.dst, size)),
        dst_cmd,
        src_cmd,
        format!("dst_mac {}", t.dst_mac),
        format!("udp_src_min {}", t.src.port()),
        format!("udp_src_max {}", t.src.port()),
        format!("udp_dst_min {}", t.dst.port()),
        format!("udp_dst_max {}", t.dst.port()),
    ] {
        pg_write(&dev, &c)?;
    }
    if let IpAddr::V4(a) = t.src.ip() {
        pg_write(&dev, &format!("src_max {a}"))?;
    }
    // `start` blocks until pktgen stops: run it on its own thread (in the same namespace).
    let ns = t.ns.clone();
    let ctrl2 = ctrl.clone();
    let runner = std::thread::spawn(move || -> Result<()> {
        let _g = enter(&ns)?;
        pg_write(&ctrl2, "start")
    });
    let slept = proc::sleep(Duration::from_secs(seconds));
    pg_write(&ctrl, "stop")?;
    let _ = runner.join();
    slept?;
    let report = std::fs::read_to_string(&dev)?;
    pg_write(&thread, "rem_device_all")?;
    // "Result: OK: <usec>(c…+d…) usec, <n> (<len>byte,0frags)\n  <pps>pps <Mb>Mb/sec …"
    let after = report
        .split("Result:")
        .nth(1)
        .with_context(|| format!("no Result in pktgen report:\n{report}"))?;
    let pps = after
        .split_whitespace()
        .find_map(|w| w.strip_suffix("pps")?.parse::<f64>().ok())
        .with_context(|| format!("no pps in pktgen result: {after}"))?;
    let frames = after
        .split(',')
        .nth(1)
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    Ok(GenResult {
        generator: "kernel pktgen",
        frames,
        seconds: seconds as f64,
        pps,
        frame_len: frame_len(&t.dst, size) as u64,
    })
}

/// The interface's first address of `dst`'s family (iface mode).
fn iface_addr(iface: &str, v6: bool) -> Result<IpAddr> {
    let s = cmd::capture(Command::new("ip").args([
        if v6 { "-6" } else { "-4" },
        "-j",
        "addr",
        "show",
        "dev",
        iface,
        "scope",
        "global",
    ]))?;
    let v: Value = serde_json::from_str(&s)?;
    v[0]["addr_info"][0]["local"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("{iface} has no global address of that family; pass --src"))
}

/// The kernel's neighbour entry for `ip` on `iface` (iface mode).
fn neighbour_mac(iface: &str, ip: IpAddr) -> Result<String> {
    let s = cmd::capture(Command::new("ip").args([
        "-j",
        "neigh",
        "show",
        "to",
        &ip.to_string(),
        "dev",
        iface,
    ]))?;
    let v: Value = serde_json::from_str(&s)?;
    v[0]["lladdr"].as_str().map(str::to_owned).with_context(|| {
        format!("no neighbour entry for {ip} on {iface}; pass --dst-mac (or ping {ip} first)")
    })
}

/// `cargo xtask pktgen`.
pub fn run(o: &PktgenOptions) -> Result<()> {
    provider_bin::require_root("pktgen")?;
    proc::install_signal_flag();
    let lab;
    let target = match (&o.lab, &o.iface) {
        (Some(name), None) => {
            lab = Lab::load(name).with_context(|| {
                format!("lab {name}: start one with `cargo xtask lab up --name {name}`")
            })?;
            Target::lab(&lab, o.dst)?
        }
        (None, Some(iface)) => {
            let src = match o.src {
                Some(s) => s,
                None => SocketAddr::new(iface_addr(iface, o.dst.is_ipv6())?, SRC_PORT),
            };
            let dst_mac = match &o.dst_mac {
                Some(m) => m.clone(),
                None => neighbour_mac(iface, o.dst.ip())?,
            };
            Target {
                ns: None,
                ns_name: None,
                iface: iface.clone(),
                src,
                dst: o.dst,
                dst_mac,
            }
        }
        _ => bail!("give exactly one of --lab NAME or --iface IF"),
    };
    if o.src.is_some_and(|s| s.is_ipv4() != o.dst.is_ipv4()) {
        bail!("--src and --dst must be the same family");
    }
    eprintln!(
        "generating UDP {} → {} (dst mac {}) on {} for {} s, payload {} B",
        target.src, target.dst, target.dst_mac, target.iface, o.seconds, o.size
    );
    let r = if kernel_pktgen_available() {
        kernel_pktgen(&target, o.size, o.seconds)?
    } else {
        eprintln!("no /proc/net/pktgen: using `provider pktgen` (XDP live frames)");
        let bin = provider_bin::setup_and_build()?;
        live_frames(&bin, &target, o.size, o.seconds, o.batch, None)?
    };
    println!(
        "{}: {} frames of {} B in {:.2} s = {:.3} Mpps",
        r.generator,
        r.frames,
        r.frame_len,
        r.seconds,
        r.pps / 1e6
    );
    println!("{}", serde_json::to_string(&r)?);
    Ok(())
}
