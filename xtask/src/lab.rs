//! The namespace lab (DESIGN §10): two network namespaces joined by a veth pair.
//!
//! ```text
//!  <name>-prov netns                         <name>-peer netns
//!  ┌──────────────────────────┐              ┌──────────────────────────┐
//!  │ <name>-p  198.18.0.1/24  │── veth ──────│ <name>-k  198.18.0.2/24  │
//!  │           2001:2::1/64   │              │           2001:2::2/64   │
//!  │ provider (XDP + AF_XDP)  │              │ kernel peer (sockperf…)  │
//!  └──────────────────────────┘              └──────────────────────────┘
//! ```
//!
//! The veth is created *inside* the provider namespace (`ip -n <prov> link add …`) with its
//! peer end placed straight into the peer namespace, so no interface ever appears in the
//! host namespace, and host interfaces are never touched. Addresses come only from the
//! benchmarking ranges 198.18.0.0/15 (RFC 2544) and 2001:2::/48 (RFC 5180).
//!
//! Names are unique per run (`pv<pid>`, then `pv<pid>_<n>` for further labs of the same
//! process), state is recorded in `/run/provider-lab/<name>.json` so `lab up` and `lab down`
//! can be separate invocations, and [`lab_guard_cleanup_stale`] removes labs whose owning
//! process died.

use std::ffi::OsStr;
use std::fs;
use std::marker::PhantomData;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::cmd;

/// Where lab state files live (tmpfs: gone after a reboot, like the namespaces).
pub const STATE_DIR: &str = "/run/provider-lab";
/// Where `ip netns` keeps its namespace handles.
pub const NETNS_DIR: &str = "/run/netns";
/// Prefix of generated lab names.
pub const NAME_PREFIX: &str = "pv";
/// Suffixes of the two namespaces.
pub const PROVIDER_NS_SUFFIX: &str = "-prov";
pub const PEER_NS_SUFFIX: &str = "-peer";
/// Longest lab name: interface names are `<name>-p` / `<name>-k` and Linux allows 15 chars.
pub const MAX_NAME_LEN: usize = 13;
/// The provider's ephemeral port range, reserved from the kernel in the provider namespace
/// (`net.ipv4.ip_local_reserved_ports`, which also covers IPv6) so the two never collide
/// (DESIGN §4).
pub const PROVIDER_EPHEMERAL_PORTS: (u16, u16) = (61000, 65535);

pub const PROVIDER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const PEER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const PREFIX_V4: u8 = 24;
pub const PROVIDER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0x2, 0, 0, 0, 0, 0, 1);
pub const PEER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0x2, 0, 0, 0, 0, 0, 2);
pub const PREFIX_V6: u8 = 64;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// How to build a lab.
#[derive(Debug, Clone)]
pub struct LabConfig {
    /// Unique per run; at most [`MAX_NAME_LEN`] chars of `[A-Za-z0-9_-]`.
    /// Default: `pv<pid>` for the first lab of a process, `pv<pid>_<n>` after that.
    pub name: String,
    /// veth RX and TX queue count (both ends). Default 1.
    pub queues: u32,
    /// MTU of both veth ends. Default 1500.
    pub mtu: u32,
    /// Make the veth pair the plain way a user would — a bare `ip link add … type veth` (the
    /// kernel then allocates one queue per CPU and activates one), no offloads turned off —
    /// instead of the lab's matched queue counts and offloads off. `queues` is ignored.
    pub plain: bool,
    /// After creating the pair, activate this many RX and TX queues on both ends
    /// (`ethtool -L IF rx N tx N`): fewer active than allocated, as on server NICs.
    pub active_queues: Option<u32>,
    /// Leave TX checksumming on on the provider's veth (the lab turns it off otherwise): the
    /// device then "offloads" checksums — veth hands the peer partial checksums, as a NIC
    /// would fill them in — for the kernel stack and the provider's AF_XDP TX metadata alike.
    pub provider_tx_checksum: bool,
    /// Keep the namespaces when the [`Lab`] is dropped, and record no owner so
    /// [`lab_guard_cleanup_stale`] leaves it alone (used by `cargo xtask lab up`).
    /// Default: false, or true if `PROVIDER_LAB_KEEP=1` (to inspect a failed test's lab).
    pub keep: bool,
}

impl Default for LabConfig {
    fn default() -> Self {
        LabConfig {
            name: unique_name(),
            queues: 1,
            mtu: 1500,
            plain: false,
            active_queues: None,
            provider_tx_checksum: false,
            keep: std::env::var("PROVIDER_LAB_KEEP").is_ok_and(|v| v == "1"),
        }
    }
}

/// A fresh lab name for this process: `pv<pid>`, then `pv<pid>_1`, `pv<pid>_2`, …
pub fn unique_name() -> String {
    let pid = std::process::id();
    match COUNTER.fetch_add(1, Ordering::Relaxed) {
        0 => format!("{NAME_PREFIX}{pid}"),
        n => format!("{NAME_PREFIX}{pid}_{n}"),
    }
}

/// The pid encoded in a generated lab name (`pv<pid>` or `pv<pid>_<n>`), if it is one.
pub fn pid_from_name(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NAME_PREFIX)?;
    let (digits, tail) = match rest.split_once('_') {
        Some((d, t)) => (d, Some(t)),
        None => (rest, None),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if let Some(t) = tail
        && (t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    digits.parse().ok()
}

/// Checks a lab name (length and characters).
pub fn validate_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        bail!(
            "lab name {name:?} must be 1..={MAX_NAME_LEN} characters (interface names are <name>-p/<name>-k, max 15)"
        );
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        bail!("lab name {name:?} may contain only letters, digits, '_' and '-'");
    }
    Ok(())
}

/// A running lab. Dropping it deletes the namespaces unless `keep` is set.
#[derive(Debug, Serialize, Deserialize)]
pub struct Lab {
    pub name: String,
    pub provider_ns: String,
    pub peer_ns: String,
    pub provider_if: String,
    pub peer_if: String,
    pub provider_v4: Ipv4Addr,
    pub peer_v4: Ipv4Addr,
    pub provider_v6: Ipv6Addr,
    pub peer_v6: Ipv6Addr,
    pub prefix_v4: u8,
    pub prefix_v6: u8,
    pub queues: u32,
    pub mtu: u32,
    /// Made the plain way ([`LabConfig::plain`]).
    #[serde(default)]
    pub plain: bool,
    /// [`LabConfig::provider_tx_checksum`].
    #[serde(default)]
    pub provider_tx_checksum: bool,
    /// Queues activated with `ethtool -L` ([`LabConfig::active_queues`]).
    #[serde(default)]
    pub active_queues: Option<u32>,
    pub keep: bool,
    #[serde(skip)]
    torn_down: AtomicBool,
}

/// What is written to `/run/provider-lab/<name>.json`.
#[derive(Debug, Serialize, Deserialize)]
pub struct LabState {
    pub lab: Lab,
    /// The process that owns the lab (it is stale once that process is gone); `None` for a
    /// lab made by `cargo xtask lab up`, which lives until `lab down`.
    pub owner_pid: Option<u32>,
    /// Start time of the owner (field 22 of /proc/<pid>/stat), to survive pid reuse.
    pub owner_start: Option<u64>,
    pub created_unix: u64,
}

/// One line of `lab status`.
#[derive(Debug, Clone, Serialize)]
pub struct LabStatus {
    pub name: String,
    pub provider_ns_exists: bool,
    pub peer_ns_exists: bool,
    pub has_state: bool,
    pub owner_pid: Option<u32>,
    /// `persistent` (no owner), `alive`, `stale` (owner gone), or `unknown`.
    pub owner: &'static str,
    pub queues: Option<u32>,
}

fn ns_exists(ns: &str) -> bool {
    Path::new(NETNS_DIR).join(ns).exists()
}

fn state_path(name: &str) -> PathBuf {
    Path::new(STATE_DIR).join(format!("{name}.json"))
}

fn ip(args: &[&str]) -> Result<String> {
    cmd::capture(Command::new("ip").args(args))
}

/// Runs `ip netns exec <ns> <args…>`, errors on a non-zero exit.
fn ns_run(ns: &str, args: &[&str]) -> Result<String> {
    cmd::capture(Command::new("ip").args(["netns", "exec", ns]).args(args))
}

/// Deletes a namespace, first killing processes still inside it (they were started in the
/// lab, and would otherwise keep the namespace and its veth alive after `ip netns del`).
/// Tolerates a namespace that is already gone.
fn delete_ns(ns: &str) -> Result<()> {
    if !ns_exists(ns) {
        return Ok(());
    }
    if let Ok(pids) = ip(&["netns", "pids", ns]) {
        let me = std::process::id();
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
        {
            if pid != me && pid > 1 {
                // SAFETY: kill(2) with a specific pid; no memory involved.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        }
    }
    match ip(&["netns", "del", ns]) {
        Ok(_) => Ok(()),
        Err(_) if !ns_exists(ns) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Start time of a process in clock ticks since boot, or None if it does not exist.
fn proc_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may contain spaces and ')' — the fields after the last ')' are fixed.
    let after = &stat[stat.rfind(')')? + 1..];
    // after[0] is field 3 (state); starttime is field 22.
    after.split_whitespace().nth(19)?.parse().ok()
}

fn pid_alive(pid: u32, start: Option<u64>) -> bool {
    match (proc_start_time(pid), start) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(now), Some(then)) => now == then,
    }
}

impl Lab {
    /// Creates the lab. Needs root. On any error, everything this call created is deleted.
    pub fn up(cfg: &LabConfig) -> Result<Lab> {
        validate_name(&cfg.name)?;
        if !crate::is_root() {
            bail!("the lab needs root (network namespaces, veth, sysctl); run as root");
        }
        if cfg.queues == 0 || cfg.queues > 64 {
            bail!("queues must be 1..=64, got {}", cfg.queues);
        }
        if !(1280..=65535).contains(&cfg.mtu) {
            bail!(
                "mtu must be 1280..=65535 (the lab carries IPv6), got {}",
                cfg.mtu
            );
        }
        let name = cfg.name.clone();
        let lab = Lab {
            provider_ns: format!("{name}{PROVIDER_NS_SUFFIX}"),
            peer_ns: format!("{name}{PEER_NS_SUFFIX}"),
            provider_if: format!("{name}-p"),
            peer_if: format!("{name}-k"),
            provider_v4: PROVIDER_V4,
            peer_v4: PEER_V4,
            provider_v6: PROVIDER_V6,
            peer_v6: PEER_V6,
            prefix_v4: PREFIX_V4,
            prefix_v6: PREFIX_V6,
            queues: cfg.queues,
            mtu: cfg.mtu,
            plain: cfg.plain,
            provider_tx_checksum: cfg.provider_tx_checksum,
            active_queues: cfg.active_queues,
            keep: cfg.keep,
            torn_down: AtomicBool::new(false),
            name,
        };
        for ns in [&lab.provider_ns, &lab.peer_ns] {
            if ns_exists(ns) {
                // Not ours: never delete it. `torn_down` stops Drop from touching it.
                lab.torn_down.store(true, Ordering::Relaxed);
                bail!(
                    "namespace {ns} already exists (lab {} is in use?)",
                    lab.name
                );
            }
        }
        if state_path(&lab.name).exists() {
            lab.torn_down.store(true, Ordering::Relaxed);
            bail!(
                "lab state {} already exists; `cargo xtask lab down --name {}` first",
                state_path(&lab.name).display(),
                lab.name
            );
        }
        // Record the owner first, so that even a crash half-way leaves a trail for
        // lab_guard_cleanup_stale.
        let built = lab.save().and_then(|()| lab.build());
        if let Err(e) = built {
            // We checked that neither namespace existed, so everything named here is ours.
            let _ = lab.down();
            return Err(e.context(format!("bringing lab {} up failed (cleaned up)", lab.name)));
        }
        Ok(lab)
    }

    fn build(&self) -> Result<()> {
        let (p, k) = (self.provider_ns.as_str(), self.peer_ns.as_str());
        let (pif, kif) = (self.provider_if.as_str(), self.peer_if.as_str());
        let q = self.queues.to_string();
        let mtu = self.mtu.to_string();

        ip(&["netns", "add", p])?;
        ip(&["netns", "add", k])?;
        // Created inside the provider namespace, peer end straight into the peer namespace:
        // nothing ever appears in the host namespace.
        if self.plain {
            #[rustfmt::skip]
            ip(&["-n", p, "link", "add", "name", pif, "type", "veth", "peer", "name", kif, "netns", k])?;
            if self.mtu != 1500 {
                ip(&["-n", p, "link", "set", pif, "mtu", &mtu])?;
                ip(&["-n", k, "link", "set", kif, "mtu", &mtu])?;
            }
        } else {
            #[rustfmt::skip]
            ip(&[
                "-n", p, "link", "add", "name", pif, "mtu", &mtu,
                "numtxqueues", &q, "numrxqueues", &q,
                "type", "veth", "peer", "name", kif, "mtu", &mtu,
                "numtxqueues", &q, "numrxqueues", &q, "netns", k,
            ])?;
        }
        if let Some(n) = self.active_queues {
            let n = n.to_string();
            ns_run(p, &["ethtool", "-L", pif, "rx", &n, "tx", &n])?;
            ns_run(k, &["ethtool", "-L", kif, "rx", &n, "tx", &n])?;
        }
        for (ns, ifname, v4, v6) in [
            (p, pif, self.provider_v4, self.provider_v6),
            (k, kif, self.peer_v4, self.peer_v6),
        ] {
            // Per-netns sysctls; `ip netns exec` gives the command this namespace's /proc/sys.
            // rp_filter: the effective value is max(all, iface), so clear both.
            ns_run(
                ns,
                &[
                    "sysctl",
                    "-qw",
                    "net.ipv4.conf.all.rp_filter=0",
                    "net.ipv4.conf.default.rp_filter=0",
                    &format!("net.ipv4.conf.{ifname}.rp_filter=0"),
                    "net.ipv6.conf.all.disable_ipv6=0",
                    &format!("net.ipv6.conf.{ifname}.disable_ipv6=0"),
                ],
            )?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{v4}/{}", self.prefix_v4),
                "dev",
                ifname,
            ])?;
            ip(&[
                "-n",
                ns,
                "-6",
                "addr",
                "add",
                &format!("{v6}/{}", self.prefix_v6),
                "dev",
                ifname,
                "nodad",
            ])?;
        }
        // We build our own checksums and want real-sized segments: no offloads that would
        // leave partial checksums or 64 KB super-segments (DESIGN §10). A plain lab keeps the
        // kernel's defaults, as users do.
        if !self.plain {
            ns_run(
                k,
                &[
                    "ethtool", "-K", kif, "tx", "off", "tso", "off", "gso", "off", "gro", "off",
                ],
            )?;
            let tx = if self.provider_tx_checksum {
                "on"
            } else {
                "off"
            };
            ns_run(
                p,
                &["ethtool", "-K", pif, "tx", tx, "tso", "off", "gso", "off"],
            )?;
        }
        let (lo, hi) = PROVIDER_EPHEMERAL_PORTS;
        ns_run(
            p,
            &[
                "sysctl",
                "-qw",
                &format!("net.ipv4.ip_local_reserved_ports={lo}-{hi}"),
            ],
        )?;
        ip(&["-n", p, "link", "set", pif, "up"])?;
        ip(&["-n", k, "link", "set", kif, "up"])?;
        self.wait_carrier(Duration::from_secs(3))
    }

    fn wait_carrier(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let up = |ns: &str, ifname: &str| {
                ip(&["-n", ns, "-o", "link", "show", "dev", ifname])
                    .is_ok_and(|s| s.contains("LOWER_UP") && s.contains("state UP"))
            };
            if up(&self.provider_ns, &self.provider_if) && up(&self.peer_ns, &self.peer_if) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("veth {}/{} did not come up", self.provider_if, self.peer_if);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Deletes both namespaces (which removes the veth) and the state file. Idempotent;
    /// tolerates parts that are already gone.
    pub fn down(&self) -> Result<()> {
        self.torn_down.store(true, Ordering::Relaxed);
        let mut errors = Vec::new();
        for ns in [&self.provider_ns, &self.peer_ns] {
            if let Err(e) = delete_ns(ns) {
                errors.push(format!("{ns}: {e:#}"));
            }
        }
        match fs::remove_file(state_path(&self.name)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => errors.push(format!("state file: {e}")),
        }
        if errors.is_empty() {
            Ok(())
        } else {
            bail!("lab {} down: {}", self.name, errors.join("; "))
        }
    }

    /// Deletes lab `name` whether or not its state file survives (`cargo xtask lab down`).
    pub fn down_by_name(name: &str) -> Result<()> {
        validate_name(name)?;
        if let Ok(lab) = Lab::load(name) {
            return lab.down();
        }
        for ns in [
            format!("{name}{PROVIDER_NS_SUFFIX}"),
            format!("{name}{PEER_NS_SUFFIX}"),
        ] {
            delete_ns(&ns)?;
        }
        Ok(())
    }

    /// Writes the state file (owner = this process unless `keep`).
    pub fn save(&self) -> Result<()> {
        let (owner_pid, owner_start) = if self.keep {
            (None, None)
        } else {
            let pid = std::process::id();
            (Some(pid), proc_start_time(pid))
        };
        let state = LabState {
            lab: self.clone_data(),
            owner_pid,
            owner_start,
            created_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        };
        fs::create_dir_all(STATE_DIR).with_context(|| format!("create {STATE_DIR}"))?;
        let path = state_path(&self.name);
        let tmp = path.with_extension("json.tmp");
        fs::write(&tmp, serde_json::to_vec_pretty(&state)?)
            .with_context(|| format!("write {}", tmp.display()))?;
        fs::rename(&tmp, &path).with_context(|| format!("write {}", path.display()))?;
        Ok(())
    }

    /// Reads the state file of lab `name`. The returned `Lab` is not owned by the caller:
    /// `keep` is set so dropping it leaves the lab alone; call [`Lab::down`] to delete it.
    pub fn load(name: &str) -> Result<Lab> {
        Ok(Self::load_state(name)?.lab)
    }

    pub fn load_state(name: &str) -> Result<LabState> {
        validate_name(name)?;
        let path = state_path(name);
        let bytes = fs::read(&path).with_context(|| format!("no lab state {}", path.display()))?;
        let mut state: LabState =
            serde_json::from_slice(&bytes).with_context(|| format!("parse {}", path.display()))?;
        state.lab.keep = true;
        Ok(state)
    }

    fn clone_data(&self) -> Lab {
        Lab {
            name: self.name.clone(),
            provider_ns: self.provider_ns.clone(),
            peer_ns: self.peer_ns.clone(),
            provider_if: self.provider_if.clone(),
            peer_if: self.peer_if.clone(),
            provider_v4: self.provider_v4,
            peer_v4: self.peer_v4,
            provider_v6: self.provider_v6,
            peer_v6: self.peer_v6,
            prefix_v4: self.prefix_v4,
            prefix_v6: self.prefix_v6,
            queues: self.queues,
            mtu: self.mtu,
            plain: self.plain,
            provider_tx_checksum: self.provider_tx_checksum,
            active_queues: self.active_queues,
            keep: self.keep,
            torn_down: AtomicBool::new(true),
        }
    }

    /// Runs `ip netns exec <ns> cmd…` and returns its output whatever the exit status
    /// (check `status` yourself, or use [`Lab::exec_ok`]).
    pub fn exec(&self, ns: &str, cmd: &[&str]) -> Result<Output> {
        let (prog, args) = cmd.split_first().context("exec: empty command")?;
        cmd::output(
            Command::new("ip")
                .args(["netns", "exec", ns, prog])
                .args(args),
        )
    }

    /// Like [`Lab::exec`] but fails on a non-zero exit; returns stdout.
    pub fn exec_ok(&self, ns: &str, cmd: &[&str]) -> Result<String> {
        ns_run(ns, cmd)
    }

    /// `ip netns exec <peer_ns> <program>`; add arguments, spawn as usual.
    pub fn peer_cmd(&self, program: impl AsRef<OsStr>) -> Command {
        ns_command(&self.peer_ns, program.as_ref())
    }

    /// tcpdump on the peer's veth, writing every frame matching `filter` (pcap filter words) to
    /// `pcap` as it arrives, with nanosecond timestamps.
    pub fn peer_capture_cmd(&self, pcap: &Path, filter: &[&str]) -> Command {
        let mut c = self.peer_cmd("tcpdump");
        c.args([
            "-i",
            &self.peer_if,
            "-U",
            "--immediate-mode",
            "-nn",
            "-Z",
            "root",
        ])
        .args(["--time-stamp-precision=nano", "-w"])
        .arg(pcap)
        .args(filter);
        c
    }

    /// `ip netns exec <provider_ns> <program>`.
    pub fn provider_cmd(&self, program: impl AsRef<OsStr>) -> Command {
        ns_command(&self.provider_ns, program.as_ref())
    }

    /// Path of the provider namespace handle (`/run/netns/<provider_ns>`).
    pub fn provider_ns_path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.provider_ns)
    }

    /// Path of the peer namespace handle.
    pub fn peer_ns_path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.peer_ns)
    }

    /// Moves the *current thread* into the provider namespace (sockets, netlink and
    /// `if_nametoindex` then see the lab). The guard moves it back on drop. Note: `/sys`
    /// still shows the host's view; use [`Lab::provider_cmd`] for sysfs.
    pub fn enter_provider_ns(&self) -> Result<NsGuard> {
        NsGuard::enter(&self.provider_ns_path())
    }

    /// Same for the peer namespace.
    pub fn enter_peer_ns(&self) -> Result<NsGuard> {
        NsGuard::enter(&self.peer_ns_path())
    }

    /// MAC address of an interface inside a namespace.
    pub fn mac(&self, ns: &str, ifname: &str) -> Result<[u8; 6]> {
        let s = ip(&["-n", ns, "-j", "link", "show", "dev", ifname])?;
        let v: serde_json::Value = serde_json::from_str(&s)?;
        let addr = v[0]["address"]
            .as_str()
            .with_context(|| format!("no address for {ifname} in {ns}"))?;
        parse_mac(addr)
    }

    pub fn provider_mac(&self) -> Result<[u8; 6]> {
        self.mac(&self.provider_ns, &self.provider_if)
    }

    pub fn peer_mac(&self) -> Result<[u8; 6]> {
        self.mac(&self.peer_ns, &self.peer_if)
    }

    /// Interface index inside its namespace.
    pub fn ifindex(&self, ns: &str, ifname: &str) -> Result<u32> {
        let s = ip(&["-n", ns, "-j", "link", "show", "dev", ifname])?;
        let v: serde_json::Value = serde_json::from_str(&s)?;
        v[0]["ifindex"]
            .as_u64()
            .map(|i| i as u32)
            .with_context(|| format!("no ifindex for {ifname} in {ns}"))
    }

    /// Drop `percent` % of the frames the peer veth sends and receives (nftables on the peer,
    /// DESIGN §10); 0 removes every impairment.
    pub fn set_peer_loss(&self, percent: u8) -> Result<()> {
        self.set_peer_impairment(percent, 0)
    }

    /// Drop `loss` % of the frames the peer veth receives and sends, and duplicate `dup` % of
    /// those it sends (netdev-family nftables hooks on the peer veth; no netem on these
    /// kernels). `(0, 0)` removes every impairment.
    pub fn set_peer_impairment(&self, loss: u8, dup: u8) -> Result<()> {
        let _ = self.exec(
            &self.peer_ns,
            &["nft", "delete", "table", "netdev", "provider_lab"],
        );
        if loss == 0 && dup == 0 {
            return Ok(());
        }
        let kif = &self.peer_if;
        let drop_rule = if loss > 0 {
            format!("numgen random mod 100 < {loss} drop;")
        } else {
            String::new()
        };
        let dup_rule = if dup > 0 {
            format!(" numgen random mod 100 < {dup} dup to \"{kif}\";")
        } else {
            String::new()
        };
        let rules = format!(
            "table netdev provider_lab {{\n\
             chain in {{ type filter hook ingress device \"{kif}\" priority 0; {drop_rule} }}\n\
             chain out {{ type filter hook egress device \"{kif}\" priority 0; {drop_rule}{dup_rule} }}\n\
             }}\n"
        );
        let tmp = std::env::temp_dir().join(format!("{}-impair.nft", self.name));
        fs::write(&tmp, rules)?;
        let r = ns_run(&self.peer_ns, &["nft", "-f", &tmp.to_string_lossy()]);
        let _ = fs::remove_file(&tmp);
        r.map(drop)
    }

    /// Status of one lab (`Some(name)`) or of every lab this machine knows of: state files
    /// plus namespaces that look like ours.
    pub fn status(name: Option<&str>) -> Result<Vec<LabStatus>> {
        let names = match name {
            Some(n) => {
                validate_name(n)?;
                vec![n.to_owned()]
            }
            None => known_lab_names(),
        };
        Ok(names.into_iter().map(|n| lab_status(&n)).collect())
    }
}

fn ns_command(ns: &str, program: &OsStr) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).arg(program);
    c
}

fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    let parts: Vec<_> = s.split(':').collect();
    if parts.len() != 6 {
        bail!("bad MAC {s:?}");
    }
    for (m, p) in mac.iter_mut().zip(parts) {
        *m = u8::from_str_radix(p, 16).with_context(|| format!("bad MAC {s:?}"))?;
    }
    Ok(mac)
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.keep || self.torn_down.load(Ordering::Relaxed) {
            return;
        }
        if let Err(e) = self.down() {
            eprintln!("warning: {e:#}");
        }
    }
}

/// Lab names from state files and from namespaces named `<name>-prov` / `<name>-peer`
/// where `<name>` is a generated name (`pv<pid>[_n]`) or has a state file.
fn known_lab_names() -> Vec<String> {
    let mut names = std::collections::BTreeSet::new();
    if let Ok(dir) = fs::read_dir(STATE_DIR) {
        for e in dir.flatten() {
            let f = e.file_name().to_string_lossy().into_owned();
            if let Some(n) = f.strip_suffix(".json") {
                names.insert(n.to_owned());
            }
        }
    }
    if let Ok(dir) = fs::read_dir(NETNS_DIR) {
        for e in dir.flatten() {
            let f = e.file_name().to_string_lossy().into_owned();
            let base = f
                .strip_suffix(PROVIDER_NS_SUFFIX)
                .or_else(|| f.strip_suffix(PEER_NS_SUFFIX));
            if let Some(b) = base
                && pid_from_name(b).is_some()
            {
                names.insert(b.to_owned());
            }
        }
    }
    names.into_iter().collect()
}

fn lab_status(name: &str) -> LabStatus {
    let state = Lab::load_state(name).ok();
    let (owner_pid, owner, queues) = match &state {
        Some(s) => match s.owner_pid {
            None => (None, "persistent", Some(s.lab.queues)),
            Some(pid) if pid_alive(pid, s.owner_start) => (Some(pid), "alive", Some(s.lab.queues)),
            Some(pid) => (Some(pid), "stale", Some(s.lab.queues)),
        },
        None => match pid_from_name(name) {
            Some(pid) if pid_alive(pid, None) => (Some(pid), "alive", None),
            Some(pid) => (Some(pid), "stale", None),
            None => (None, "unknown", None),
        },
    };
    LabStatus {
        name: name.to_owned(),
        provider_ns_exists: ns_exists(&format!("{name}{PROVIDER_NS_SUFFIX}")),
        peer_ns_exists: ns_exists(&format!("{name}{PEER_NS_SUFFIX}")),
        has_state: state.is_some(),
        owner_pid,
        owner,
        queues,
    }
}

/// Deletes labs whose owning process is gone: the owner recorded in the state file, or for
/// namespaces without one, the pid in a generated name (`pv<pid>…`). Persistent labs (`lab
/// up`) and namespaces that are not ours are left alone. Returns the names removed.
pub fn lab_guard_cleanup_stale() -> Result<Vec<String>> {
    let mut removed = Vec::new();
    let mut errors = Vec::new();
    for st in Lab::status(None)? {
        if st.owner != "stale" {
            continue;
        }
        let mut r = Ok(());
        for ns in [
            format!("{}{PROVIDER_NS_SUFFIX}", st.name),
            format!("{}{PEER_NS_SUFFIX}", st.name),
        ] {
            r = r.and(delete_ns(&ns));
        }
        match fs::remove_file(state_path(&st.name)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => r = r.and(Err(e.into())),
        }
        match r {
            Ok(()) => removed.push(st.name),
            Err(e) => errors.push(format!("{}: {e:#}", st.name)),
        }
    }
    if !errors.is_empty() {
        bail!("stale lab cleanup: {}", errors.join("; "));
    }
    Ok(removed)
}

/// Restores the thread's original network namespace on drop. Not `Send`: it belongs to the
/// thread that entered.
pub struct NsGuard {
    original: OwnedFd,
    _not_send: PhantomData<*const ()>,
}

impl NsGuard {
    /// `setns(CLONE_NEWNET)` of the current thread into the namespace at `path`.
    pub fn enter(path: &Path) -> Result<NsGuard> {
        let original: OwnedFd = fs::File::open("/proc/thread-self/ns/net")
            .context("open /proc/thread-self/ns/net")?
            .into();
        let target: OwnedFd = fs::File::open(path)
            .with_context(|| format!("open {}", path.display()))?
            .into();
        // SAFETY: both fds are valid for the call; setns only affects this thread's netns.
        let rc = unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("setns into {}", path.display()));
        }
        Ok(NsGuard {
            original,
            _not_send: PhantomData,
        })
    }
}

impl Drop for NsGuard {
    fn drop(&mut self) {
        // SAFETY: `original` is a valid netns fd owned by the guard.
        let rc = unsafe { libc::setns(self.original.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            // Continuing in the wrong namespace would be worse than stopping.
            panic!(
                "cannot restore the original network namespace: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_names_are_unique_short_and_parse_back() {
        let a = unique_name();
        let b = unique_name();
        assert_ne!(a, b);
        for n in [&a, &b] {
            validate_name(n).unwrap();
            assert_eq!(pid_from_name(n), Some(std::process::id()));
        }
        // Worst case pid (pid_max 4194304) with a 3-digit counter still fits.
        validate_name("pv4194304_999").unwrap();
    }

    #[test]
    fn pid_parsing_rejects_foreign_names() {
        assert_eq!(pid_from_name("pv123"), Some(123));
        assert_eq!(pid_from_name("pv123_4"), Some(123));
        assert_eq!(pid_from_name("pv"), None);
        assert_eq!(pid_from_name("pvx12"), None);
        assert_eq!(pid_from_name("pv12_"), None);
        assert_eq!(pid_from_name("pv12_a"), None);
        assert_eq!(pid_from_name("mylab"), None);
    }

    #[test]
    fn name_validation() {
        assert!(validate_name("").is_err());
        assert!(validate_name("abcdefghijklmn").is_err()); // 14
        assert!(validate_name("a b").is_err());
        assert!(validate_name("a/b").is_err());
        validate_name("lab-1_x").unwrap();
    }

    #[test]
    fn addresses_stay_in_benchmarking_ranges() {
        for a in [PROVIDER_V4, PEER_V4] {
            let o = a.octets();
            assert!(
                o[0] == 198 && (o[1] & 0xfe) == 18,
                "{a} outside 198.18.0.0/15"
            );
        }
        for a in [PROVIDER_V6, PEER_V6] {
            let s = a.segments();
            assert!(
                s[0] == 0x2001 && s[1] == 0x2 && s[2] == 0,
                "{a} outside 2001:2::/48"
            );
        }
    }

    #[test]
    fn mac_parsing() {
        assert_eq!(
            parse_mac("02:00:0a:ff:10:01").unwrap(),
            [2, 0, 0x0a, 0xff, 0x10, 1]
        );
        assert!(parse_mac("02:00").is_err());
    }

    #[test]
    fn own_process_is_alive_with_matching_start_time() {
        let pid = std::process::id();
        let start = proc_start_time(pid);
        assert!(start.is_some());
        assert!(pid_alive(pid, start));
        assert!(!pid_alive(pid, start.map(|s| s + 1)));
    }
}
