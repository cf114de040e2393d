//! `cargo xtask demo`: the main job on the built-in lab (DESIGN §9, §10).
//!
//! setup → release build → lab up → `provider echo --udp 7` in the provider namespace →
//! `tcpdump` on the peer veth → kernel UDP sockets in the peer namespace send "hello" and 200
//! random-size datagrams over IPv4 and IPv6 and check every echo byte for byte → one datagram
//! to a port the provider does not own must reach a *kernel* socket in the provider
//! namespace (steering is selective) → report (wire, round trips, XDP verdicts, engine and
//! ring counters) → provider stopped, lab down. Every child and the lab are guards, so they
//! are cleaned up on every exit path; any failed check makes the command fail.

use std::fmt::Write as _;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::lab::{Lab, LabConfig, NsGuard};
use crate::proc::{self, Proc};
use crate::provider_bin;
use crate::stats::{self, u64_at};

/// The provider's echo port.
pub const ECHO_PORT: u16 = 7;
/// A port nothing in the provider owns: its datagram must go to the kernel.
pub const KERNEL_PORT: u16 = 9999;
/// Random-size datagrams per family.
pub const RANDOM_DATAGRAMS: usize = 200;
pub const HELLO: &[u8] = b"hello from the kernel peer";

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Result<TempDir> {
        let p = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).with_context(|| format!("create {}", p.display()))?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// xorshift64*: random sizes and payloads without a dependency.
pub struct Rng(u64);

impl Rng {
    pub fn seeded() -> Rng {
        let t = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Rng((t ^ (u64::from(std::process::id()) << 32)) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform-ish in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// A kernel UDP socket created inside the namespace at `ns` (it stays there; the thread
/// comes back).
fn udp_in_ns(ns: &Path, bind: SocketAddr) -> Result<UdpSocket> {
    let _g = NsGuard::enter(ns)?;
    UdpSocket::bind(bind).with_context(|| format!("bind {bind} in {}", ns.display()))
}

#[derive(Default)]
struct RoundTrips {
    family: &'static str,
    hello: Option<String>,
    sent: usize,
    exact: usize,
    lost: usize,
    unexpected: usize,
    refused: bool,
    gave_up: bool,
    rtts: Vec<Duration>,
}

enum Echo {
    Exact(Duration),
    Lost,
    Refused,
}

/// Sends `payload` and waits for the identical datagram; non-matching datagrams are counted
/// in `unexpected` and skipped.
fn echo_once(
    s: &UdpSocket,
    payload: &[u8],
    timeout: Duration,
    unexpected: &mut usize,
) -> Result<Echo> {
    let t0 = Instant::now();
    match s.send(payload) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => return Ok(Echo::Refused),
        Err(e) => return Err(e).context("send"),
    }
    let mut buf = vec![0u8; 65536];
    loop {
        proc::check_interrupted()?;
        let left = timeout.saturating_sub(t0.elapsed());
        if left.is_zero() {
            return Ok(Echo::Lost);
        }
        s.set_read_timeout(Some(left))?;
        match s.recv(&mut buf) {
            Ok(n) if &buf[..n] == payload => return Ok(Echo::Exact(t0.elapsed())),
            Ok(_) => *unexpected += 1,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Ok(Echo::Lost);
            }
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => return Ok(Echo::Refused),
            Err(e) => return Err(e).context("recv"),
        }
    }
}

fn round_trips(lab: &Lab, family: &'static str, rng: &mut Rng) -> Result<RoundTrips> {
    let (local, remote, max) = match family {
        "IPv4" => (
            IpAddr::V4(lab.peer_v4),
            IpAddr::V4(lab.provider_v4),
            lab.mtu as usize - 28,
        ),
        _ => (
            IpAddr::V6(lab.peer_v6),
            IpAddr::V6(lab.provider_v6),
            lab.mtu as usize - 48,
        ),
    };
    let s = udp_in_ns(&lab.peer_ns_path(), SocketAddr::new(local, 0))?;
    s.connect(SocketAddr::new(remote, ECHO_PORT))?;
    let mut r = RoundTrips {
        family,
        ..Default::default()
    };
    // The first datagram also waits for ARP / neighbour discovery, both ways.
    r.sent += 1;
    match echo_once(&s, HELLO, Duration::from_secs(3), &mut r.unexpected)? {
        Echo::Exact(d) => {
            r.exact += 1;
            r.rtts.push(d);
            r.hello = Some(String::from_utf8_lossy(HELLO).into_owned());
        }
        Echo::Lost => r.lost += 1,
        Echo::Refused => {
            r.refused = true;
            return Ok(r);
        }
    }
    let mut consecutive_lost = usize::from(r.lost > 0);
    for _ in 0..RANDOM_DATAGRAMS {
        let len = rng.range(1, max);
        let payload = rng.bytes(len);
        r.sent += 1;
        match echo_once(&s, &payload, Duration::from_millis(500), &mut r.unexpected)? {
            Echo::Exact(d) => {
                r.exact += 1;
                r.rtts.push(d);
                consecutive_lost = 0;
            }
            Echo::Lost => {
                r.lost += 1;
                consecutive_lost += 1;
                if consecutive_lost >= 5 {
                    r.gave_up = true;
                    break;
                }
            }
            Echo::Refused => {
                r.refused = true;
                break;
            }
        }
    }
    Ok(r)
}

struct KernelPortResult {
    got: Option<(Vec<u8>, SocketAddr)>,
    error: Option<String>,
}

/// One datagram from the peer to `KERNEL_PORT`, received by a kernel socket in the provider
/// namespace.
fn kernel_port(lab: &Lab) -> Result<KernelPortResult> {
    let rx = udp_in_ns(
        &lab.provider_ns_path(),
        SocketAddr::new(IpAddr::V4(lab.provider_v4), KERNEL_PORT),
    )?;
    rx.set_read_timeout(Some(Duration::from_secs(3)))?;
    let tx = udp_in_ns(
        &lab.peer_ns_path(),
        SocketAddr::new(IpAddr::V4(lab.peer_v4), 0),
    )?;
    tx.send_to(
        b"for the kernel, not the provider",
        SocketAddr::new(IpAddr::V4(lab.provider_v4), KERNEL_PORT),
    )?;
    let mut buf = [0u8; 2048];
    Ok(match rx.recv_from(&mut buf) {
        Ok((n, from)) => KernelPortResult {
            got: Some((buf[..n].to_vec(), from)),
            error: None,
        },
        Err(e) => KernelPortResult {
            got: None,
            error: Some(e.to_string()),
        },
    })
}

struct Checks(Vec<(bool, String)>);

impl Checks {
    fn check(&mut self, ok: bool, what: impl Into<String>) {
        self.0.push((ok, what.into()));
    }
    fn failed(&self) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(ok, _)| !ok)
            .map(|(_, w)| w.as_str())
            .collect()
    }
}

fn trim(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}

fn micros(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1e6)
}

/// Waits until `path` was rewritten after `after` (the provider rewrites it every 500 ms),
/// then reads it.
fn fresh_stats(path: &Path, after: SystemTime) -> Result<Value> {
    let end = Instant::now() + Duration::from_secs(3);
    loop {
        let fresh = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t > after);
        if fresh || Instant::now() > end {
            if !path.exists() {
                bail!("the provider wrote no stats file {}", path.display());
            }
            return stats::read(path);
        }
        proc::sleep(Duration::from_millis(100))?;
    }
}

/// `cargo xtask demo`.
pub fn run() -> Result<()> {
    provider_bin::require_root("demo")?;
    proc::install_signal_flag();
    let bin = provider_bin::setup_and_build()?;

    eprintln!("==> lab up");
    let lab = Lab::up(&LabConfig {
        queues: 1,
        ..LabConfig::default()
    })?;
    let tmp = TempDir::new("provider-demo")?;
    let stats_file = tmp.0.join("stats.json");
    let provider_mac = fmt_mac(lab.provider_mac()?);
    let peer_mac = fmt_mac(lab.peer_mac()?);

    eprintln!("==> tcpdump on {} (peer namespace)", lab.peer_if);
    let mut tcpdump = Proc::spawn(
        "tcpdump",
        lab.peer_cmd("tcpdump")
            .args(["-l", "-n", "-e", "-i", &lab.peer_if, "udp"]),
    )?;
    tcpdump.wait_stderr("listening on", Duration::from_secs(10))?;

    eprintln!(
        "==> provider echo --udp {ECHO_PORT} on {} (provider namespace)",
        lab.provider_if
    );
    let mut provider = Proc::spawn(
        "provider echo",
        lab.provider_cmd(&bin)
            .args(["echo", "--iface", &lab.provider_if])
            .args(["--udp", &ECHO_PORT.to_string(), "--family", "both"])
            .arg("--stats-file")
            .arg(&stats_file),
    )?;
    let ready = provider.wait_ready(Duration::from_secs(30))?;

    eprintln!("==> round trips from kernel sockets in the peer namespace");
    let mut rng = Rng::seeded();
    let v4 = round_trips(&lab, "IPv4", &mut rng)?;
    let v6 = round_trips(&lab, "IPv6", &mut rng)?;
    eprintln!("==> datagram to port {KERNEL_PORT} (not the provider's)");
    let kp = kernel_port(&lab)?;
    let done = SystemTime::now();
    // Stats are rewritten every 500 ms; take one written after the traffic.
    let stats = fresh_stats(&stats_file, done);

    eprintln!("==> stopping the provider and tcpdump");
    let provider_status = provider.stop();
    let provider_err = provider.stderr_tail();
    tcpdump.stop();
    let mut wire = Vec::new();
    while let Some(l) = tcpdump.next_line(Duration::from_millis(300))? {
        wire.push(l.text);
    }
    let tcpdump_err = tcpdump.stderr_tail();

    eprintln!("==> TCP: the four WSPCloseSocket rows against the kernel client");
    let (tcp_report, tcp_checks) = match crate::demo_tcp::run(&lab, &bin, &tmp.0) {
        Ok(r) => r,
        Err(e) => (
            format!("\n=== TCP part: could not run: {e:#}\n"),
            vec![(false, "TCP part ran".to_string())],
        ),
    };

    // ---- report ----
    let mut checks = Checks(Vec::new());
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n=== provider demo: lab {} ===\n  provider: netns {} if {} {} {} mac {provider_mac}\n  peer:     netns {} if {} {} {} mac {peer_mac}\n  provider said: {}",
        lab.name,
        lab.provider_ns,
        lab.provider_if,
        lab.provider_v4,
        lab.provider_v6,
        lab.peer_ns,
        lab.peer_if,
        lab.peer_v4,
        lab.peer_v6,
        ready.text
    );

    let _ = writeln!(
        out,
        "\n--- what crossed the wire (tcpdump -n -e -i {} udp, peer side): {} UDP frames ---",
        lab.peer_if,
        wire.len()
    );
    let pv4 = lab.provider_v4.to_string();
    let pv6 = lab.provider_v6.to_string();
    let cats: [(&str, String); 5] = [
        ("peer → provider:7 IPv4", format!("> {pv4}.{ECHO_PORT}:")),
        ("provider:7 → peer IPv4", format!(" {pv4}.{ECHO_PORT} >")),
        ("peer → provider:7 IPv6", format!("> {pv6}.{ECHO_PORT}:")),
        ("provider:7 → peer IPv6", format!(" {pv6}.{ECHO_PORT} >")),
        (
            "peer → kernel port (not steered)",
            format!("> {pv4}.{KERNEL_PORT}:"),
        ),
    ];
    let mut counts = Vec::new();
    for (title, needle) in &cats {
        let lines: Vec<&String> = wire
            .iter()
            .filter(|l| l.contains(needle.as_str()))
            .collect();
        counts.push(lines.len());
        let _ = writeln!(out, "  {title:<34} {:>5} frames", lines.len());
        for l in lines.iter().take(2) {
            let _ = writeln!(out, "      {}", trim(l, 150));
        }
    }
    let echoes_from_provider_mac = wire
        .iter()
        .filter(|l| {
            l.contains(&format!(" {pv4}.{ECHO_PORT} >"))
                || l.contains(&format!(" {pv6}.{ECHO_PORT} >"))
        })
        .all(|l| l.contains(&format!("{provider_mac} > {peer_mac}")));
    let _ = writeln!(
        out,
        "  (echo frames carry the provider veth's MAC {provider_mac} as source: {})",
        if echoes_from_provider_mac {
            "yes"
        } else {
            "NO"
        }
    );
    checks.check(counts[1] > 0, "IPv4 echoes from port 7 seen on the wire");
    checks.check(counts[3] > 0, "IPv6 echoes from port 7 seen on the wire");
    checks.check(
        counts[4] > 0,
        "datagram to the kernel port seen on the wire",
    );

    let _ = writeln!(
        out,
        "\n--- round trips: kernel UDP sockets in the peer namespace → provider echo on UDP {ECHO_PORT} ---"
    );
    let _ = writeln!(
        out,
        "  {:<6} {:<6} {:>5} {:>7} {:>5} {:>10}  rtt µs min/median/p99/max",
        "family", "hello", "sent", "exact", "lost", "unexpected"
    );
    for r in [&v4, &v6] {
        let mut rtts = r.rtts.clone();
        rtts.sort();
        let pick = |q: f64| {
            rtts.get(((rtts.len() as f64 - 1.0) * q).round() as usize)
                .map_or("-".into(), |d| micros(*d))
        };
        let _ = writeln!(
            out,
            "  {:<6} {:<6} {:>5} {:>7} {:>5} {:>10}  {}/{}/{}/{}{}",
            r.family,
            if r.hello.is_some() { "ok" } else { "FAIL" },
            r.sent,
            r.exact,
            r.lost,
            r.unexpected,
            pick(0.0),
            pick(0.5),
            pick(0.99),
            pick(1.0),
            if r.refused {
                "  (ICMP port unreachable: the kernel got the datagram, not the provider)"
            } else if r.gave_up {
                "  (gave up after 5 losses in a row)"
            } else {
                ""
            }
        );
        if let Some(h) = &r.hello {
            let _ = writeln!(out, "         echoed back: {h:?}");
        }
        checks.check(
            r.hello.is_some(),
            format!("{}: \"hello from the kernel peer\" echoed", r.family),
        );
        checks.check(
            r.exact == 1 + RANDOM_DATAGRAMS && r.lost == 0 && r.unexpected == 0,
            format!(
                "{}: all {} datagrams (1 + {RANDOM_DATAGRAMS} random sizes) echoed byte-exact ({} exact, {} lost, {} unexpected)",
                r.family,
                1 + RANDOM_DATAGRAMS,
                r.exact,
                r.lost,
                r.unexpected
            ),
        );
    }

    let _ = writeln!(
        out,
        "\n--- steering is selective: UDP to {}:{KERNEL_PORT} (no provider socket) ---",
        lab.provider_v4
    );
    match (&kp.got, &kp.error) {
        (Some((data, from)), _) => {
            let _ = writeln!(
                out,
                "  a kernel socket in the provider namespace received {:?} from {from}",
                String::from_utf8_lossy(data)
            );
            checks.check(
                from.ip() == IpAddr::V4(lab.peer_v4),
                "datagram to a port the provider does not own reached the kernel socket",
            );
        }
        (None, e) => {
            let _ = writeln!(
                out,
                "  the kernel socket received nothing ({})",
                e.as_deref().unwrap_or("?")
            );
            checks.check(
                false,
                "datagram to a port the provider does not own reached the kernel socket",
            );
        }
    }

    let sent_to_provider = (v4.sent + v6.sent) as u64;
    match &stats {
        Ok(v) => {
            let _ = writeln!(
                out,
                "\n--- provider statistics ({}, written by the provider) ---",
                stats_file.display()
            );
            for l in stats::render(v).lines() {
                let _ = writeln!(out, "  {l}");
            }
            let steered = u64_at(v, &["xdp", "steered"]);
            checks.check(
                steered.is_some_and(|s| s >= sent_to_provider),
                format!(
                    "XDP steered every datagram sent to port {ECHO_PORT} (steered {}, sent {sent_to_provider})",
                    steered.map_or("?".into(), |s| s.to_string())
                ),
            );
            let redirect_failed = u64_at(v, &["xdp", "redirect_failed"]);
            checks.check(
                redirect_failed == Some(0),
                format!(
                    "no XDP redirect failures (redirect_failed {})",
                    redirect_failed.map_or("?".into(), |s| s.to_string())
                ),
            );
        }
        Err(e) => {
            let _ = writeln!(out, "\n--- provider statistics: unavailable: {e:#}");
            checks.check(false, "provider statistics file readable");
        }
    }

    checks.check(
        provider_status.success(),
        format!("provider exited cleanly on SIGTERM ({provider_status})"),
    );

    out.push_str(&tcp_report);
    for (ok, what) in tcp_checks {
        checks.check(ok, what);
    }

    let _ = writeln!(out, "\n--- checks ---");
    for (ok, what) in &checks.0 {
        let _ = writeln!(out, "  {}  {what}", if *ok { "ok  " } else { "FAIL" });
    }
    print!("{out}");

    let failed = checks.failed();
    if !failed.is_empty() {
        if !provider_err.is_empty() {
            eprintln!("\n--- provider stderr (last lines) ---\n{provider_err}");
        }
        if wire.is_empty() && !tcpdump_err.is_empty() {
            eprintln!("\n--- tcpdump stderr ---\n{tcpdump_err}");
        }
        bail!(
            "demo: {} check(s) failed: {}",
            failed.len(),
            failed.join("; ")
        );
    }
    println!("\ndemo ok; lab {} is being removed", lab.name);
    drop(tcpdump);
    drop(provider);
    drop(tmp);
    lab.down()
}

pub fn fmt_mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_ranges_and_macs() {
        let mut r = Rng::seeded();
        for _ in 0..1000 {
            let n = r.range(1, 1472);
            assert!((1..=1472).contains(&n));
        }
        assert_eq!(r.bytes(17).len(), 17);
        assert_eq!(fmt_mac([2, 0, 0xa, 0xff, 0x10, 1]), "02:00:0a:ff:10:01");
        assert_eq!(trim("abcdef", 4), "abc…");
        assert_eq!(trim("abc", 4), "abc");
    }
}
