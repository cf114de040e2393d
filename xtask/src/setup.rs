//! `cargo xtask setup`: idempotent bootstrap of a fresh machine (DESIGN §9, §11).
//!
//! A fresh machine of this kind has rustup (stable + an installed `nightly`), cargo, gcc,
//! python3 and apt. Every step first checks (cheaply) whether it is already satisfied, so a
//! second run only spends time on a handful of `--version` calls.

use std::fmt;
use std::path::Path;
use std::process::Command;

use anyhow::{Result, bail};

use crate::cmd;

/// bpf-linker must be exactly this version. 0.10.4 links rustc's own libLLVM 22 (shipped with
/// the installed nightly), so it needs nothing else; 0.11+ links a *system* LLVM, which these
/// machines do not have. It must also match the LLVM the nightly emits (checked below).
pub const BPF_LINKER_VERSION: &str = "0.10.4";

/// The LLVM major version the installed nightly must report (`rustc +nightly -vV`).
pub const NIGHTLY_LLVM_MAJOR: &str = "22";

/// Debian packages the lab, tests and benchmarks use (DESIGN §10–§12). `iputils-ping`: the
/// lab tests ping across the veth, and a fresh machine of this kind has no `ping`.
pub const APT_PACKAGES: &[&str] = &[
    "iproute2",
    "ethtool",
    "nftables",
    "tcpdump",
    "python3-scapy",
    "sockperf",
    "iperf3",
    "socat",
    "curl",
    "wrk",
    "procps",
    "iputils-ping",
    // The preload's application tests and `bench apps` (issue 11). Their services must never
    // run on the host: see `apt` (policy-rc.d while installing, disabled after).
    "nginx-light",
    "redis-server",
    "redis-tools",
];

/// Packages that ship a service the host must not run.
const SERVICES: &[&str] = &["nginx.service", "redis-server.service"];

const POLICY_RC: &str = "/usr/sbin/policy-rc.d";

const BPFFS: &str = "/sys/fs/bpf";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Was already satisfied.
    Present,
    /// Missing; this run installed / fixed it.
    Installed,
    /// Missing and needs root to fix.
    NeedsRoot,
    /// Tried and failed.
    Failed,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Present => "already there",
            Outcome::Installed => "installed",
            Outcome::NeedsRoot => "NEEDS ROOT",
            Outcome::Failed => "FAILED",
        })
    }
}

#[derive(Debug, Clone)]
pub struct Row {
    pub step: &'static str,
    pub outcome: Outcome,
    pub detail: String,
}

#[derive(Debug, Default, Clone)]
pub struct Report {
    pub rows: Vec<Row>,
}

impl Report {
    fn push(&mut self, step: &'static str, outcome: Outcome, detail: impl Into<String>) {
        self.rows.push(Row {
            step,
            outcome,
            detail: detail.into(),
        });
    }

    pub fn ok(&self) -> bool {
        self.rows
            .iter()
            .all(|r| matches!(r.outcome, Outcome::Present | Outcome::Installed))
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = self.rows.iter().map(|r| r.step.len()).max().unwrap_or(4);
        writeln!(f, "{:<w$}  {:<13}  detail", "step", "state")?;
        for r in &self.rows {
            writeln!(
                f,
                "{:<w$}  {:<13}  {}",
                r.step,
                r.outcome.to_string(),
                r.detail
            )?;
        }
        Ok(())
    }
}

/// Runs every step, prints the table, and fails if anything is still missing.
pub fn run() -> Result<Report> {
    run_with(false)
}

/// Like [`run`]; with `tolerate_needs_root`, steps that only root can fix (apt, bpffs) are
/// reported but do not fail the run (non-root `cargo xtask test` skips the lab tests anyway).
pub fn run_with(tolerate_needs_root: bool) -> Result<Report> {
    let root = crate::is_root();
    let mut report = Report::default();

    check_nightly(&mut report)?;
    rust_src(&mut report);
    bpf_linker(&mut report);
    cargo_fuzz(&mut report);
    apt(&mut report, root);
    bpffs(&mut report, root);

    print!("{report}");
    let failed_any = report.rows.iter().any(|r| r.outcome == Outcome::Failed);
    if !report.ok() && (failed_any || !tolerate_needs_root) {
        let needs_root: Vec<_> = report
            .rows
            .iter()
            .filter(|r| r.outcome == Outcome::NeedsRoot)
            .map(|r| r.step)
            .collect();
        let failed: Vec<_> = report
            .rows
            .iter()
            .filter(|r| r.outcome == Outcome::Failed)
            .map(|r| r.step)
            .collect();
        let mut msg = String::from("setup incomplete");
        if !failed.is_empty() {
            msg.push_str(&format!("; failed: {}", failed.join(", ")));
        }
        if !needs_root.is_empty() {
            msg.push_str(&format!(
                "; these steps need root (apt-get install, mount bpffs): {} — rerun `sudo -E cargo xtask setup`",
                needs_root.join(", ")
            ));
        }
        bail!(msg);
    }
    if !report.ok() {
        eprintln!(
            "warning: some steps need root (apt-get install, mount bpffs); continuing without them"
        );
    }
    Ok(report)
}

fn rustup_nightly(args: &[&str]) -> Command {
    let mut c = Command::new("rustup");
    c.args(["run", "nightly"]).args(args);
    c
}

/// DESIGN §11: the nightly must emit LLVM 22 to match bpf-linker 0.10.4. We never install a
/// newer nightly: from about 1.99 on they emit LLVM 23 and would need a bpf-linker linked
/// against a system LLVM these machines do not have.
fn check_nightly(report: &mut Report) -> Result<()> {
    let out = cmd::output(&mut rustup_nightly(&["rustc", "-vV"]));
    let text = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) => bail!(
            "`rustc +nightly -vV` failed: {}\n\
             The eBPF crate needs the installed `nightly` toolchain whose rustc emits LLVM {NIGHTLY_LLVM_MAJOR} \
             (DESIGN §11; e.g. rustc 1.97.0-nightly 2026-05-19, LLVM 22.1.4). Install that dated nightly \
             and name it `nightly`; a current nightly emits LLVM 23, which bpf-linker {BPF_LINKER_VERSION} cannot link.",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => bail!("cannot run rustup (needed for the nightly eBPF build): {e:#}"),
    };
    let llvm = text
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version:"))
        .map(str::trim)
        .unwrap_or("")
        .to_owned();
    let release = text
        .lines()
        .find_map(|l| l.strip_prefix("release:"))
        .map(str::trim)
        .unwrap_or("?")
        .to_owned();
    if llvm.split('.').next() != Some(NIGHTLY_LLVM_MAJOR) {
        bail!(
            "the `nightly` toolchain (rustc {release}) reports LLVM version {llvm:?}, but the eBPF build needs LLVM {NIGHTLY_LLVM_MAJOR}.\n\
             Why (DESIGN §11): bpf-linker {BPF_LINKER_VERSION} links rustc's own libLLVM {NIGHTLY_LLVM_MAJOR}; bitcode from a \
             nightly with another LLVM cannot be linked by it, and bpf-linker 0.11+ needs a system LLVM these machines lack.\n\
             Setup deliberately does NOT install a newer nightly. Point `nightly` at a toolchain with LLVM {NIGHTLY_LLVM_MAJOR} \
             (e.g. `rustup toolchain link nightly <path>` or the dated nightly-2026-05-19) and rerun."
        );
    }
    report.push(
        "nightly LLVM",
        Outcome::Present,
        format!("rustc {release}, LLVM {llvm}"),
    );
    Ok(())
}

fn rust_src(report: &mut Report) {
    const STEP: &str = "rust-src (nightly)";
    let sysroot = cmd::capture(&mut rustup_nightly(&["rustc", "--print", "sysroot"]));
    let present = match &sysroot {
        Ok(s) => Path::new(s.trim())
            .join("lib/rustlib/src/rust/library/core")
            .is_dir(),
        Err(_) => false,
    };
    if present {
        report.push(STEP, Outcome::Present, "");
        return;
    }
    let r = cmd::run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]));
    match r {
        Ok(()) => report.push(STEP, Outcome::Installed, "rustup component add"),
        Err(e) => report.push(STEP, Outcome::Failed, format!("{e:#}")),
    }
}

fn bpf_linker_version() -> Option<(std::path::PathBuf, String)> {
    let path = cmd::which("bpf-linker")?;
    let out = cmd::capture(Command::new(&path).arg("--version")).ok()?;
    // "bpf-linker 0.10.4"
    let v = out.split_whitespace().nth(1).unwrap_or("").to_owned();
    Some((path, v))
}

fn bpf_linker(report: &mut Report) {
    const STEP: &str = "bpf-linker";
    let in_path = |p: &Path| {
        std::env::var_os("PATH")
            .map(|path| std::env::split_paths(&path).any(|d| p.parent() == Some(d.as_path())))
            .unwrap_or(false)
    };
    if let Some((path, v)) = bpf_linker_version()
        && v == BPF_LINKER_VERSION
    {
        let mut detail = format!("{v} at {}", path.display());
        if !in_path(&path) {
            detail.push_str(" (not in PATH; xtask adds it for builds)");
        }
        report.push(STEP, Outcome::Present, detail);
        return;
    }
    // `--locked`: the crate's own lock file; cargo replaces a different installed version.
    let r = cmd::run(cmd::cargo().args([
        "install",
        &format!("bpf-linker@{BPF_LINKER_VERSION}"),
        "--locked",
    ]));
    if let Err(e) = r {
        report.push(STEP, Outcome::Failed, format!("{e:#}"));
        return;
    }
    match bpf_linker_version() {
        Some((_, v)) if v == BPF_LINKER_VERSION => {
            report.push(STEP, Outcome::Installed, format!("cargo install {v}"))
        }
        Some((path, v)) => report.push(
            STEP,
            Outcome::Failed,
            format!(
                "installed {BPF_LINKER_VERSION} into {}, but {} ({v}) comes first in PATH",
                cmd::cargo_home_bin().display(),
                path.display()
            ),
        ),
        None => report.push(STEP, Outcome::Failed, "installed but not found"),
    }
}

/// cargo-fuzz runs the fuzz smoke test of `cargo xtask test` (libFuzzer targets in `fuzz/`).
/// Any recent version works; `--locked` keeps its own dependency versions.
fn cargo_fuzz(report: &mut Report) {
    const STEP: &str = "cargo-fuzz";
    let present =
        cmd::which("cargo-fuzz").is_some() || cmd::cargo_home_bin().join("cargo-fuzz").exists();
    if present {
        report.push(STEP, Outcome::Present, "cargo fuzz");
        return;
    }
    match cmd::run(cmd::cargo().args(["install", "cargo-fuzz", "--locked"])) {
        Ok(()) => report.push(STEP, Outcome::Installed, "cargo install cargo-fuzz"),
        Err(e) => report.push(STEP, Outcome::Failed, format!("{e:#}")),
    }
}

/// Packages from `APT_PACKAGES` that dpkg does not report as installed.
pub fn missing_packages() -> Vec<&'static str> {
    let out = cmd::output(
        Command::new("dpkg-query")
            .args(["-W", "-f=${Package} ${Status}\\n"])
            .args(APT_PACKAGES),
    );
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !text.lines().any(|l| {
                let mut it = l.splitn(2, ' ');
                // Multi-arch packages may print "name:arch".
                let name = it.next().unwrap_or("");
                let name = name.split(':').next().unwrap_or("");
                name == *p
                    && it
                        .next()
                        .is_some_and(|s| s.trim() == "install ok installed")
            })
        })
        .collect()
}

fn apt(report: &mut Report, root: bool) {
    const STEP: &str = "apt packages";
    let missing = missing_packages();
    if missing.is_empty() {
        report.push(STEP, Outcome::Present, APT_PACKAGES.join(" "));
        return;
    }
    if !root {
        report.push(
            STEP,
            Outcome::NeedsRoot,
            format!("missing: {}", missing.join(" ")),
        );
        return;
    }
    // Debian starts a service when its package is installed unless policy-rc.d says no
    // (exit 101); nginx and redis would then listen on the host. Ours only if there was none.
    let own_policy = !Path::new(POLICY_RC).exists()
        && std::fs::write(
            POLICY_RC,
            "#!/bin/sh\n# cargo xtask setup: no services start while it installs\nexit 101\n",
        )
        .is_ok()
        && std::fs::set_permissions(
            POLICY_RC,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .is_ok();
    let r = cmd::run(Command::new("apt-get").arg("update")).and_then(|()| {
        cmd::run(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "--no-install-recommends"])
                .args(&missing),
        )
    });
    if own_policy {
        let _ = std::fs::remove_file(POLICY_RC);
    }
    // Nor at the next boot.
    if Path::new("/usr/bin/systemctl").exists() || Path::new("/bin/systemctl").exists() {
        let _ = cmd::capture(Command::new("systemctl").arg("disable").args(SERVICES));
    }
    match r {
        Ok(()) => {
            let still = missing_packages();
            if still.is_empty() {
                report.push(STEP, Outcome::Installed, missing.join(" "));
            } else {
                report.push(
                    STEP,
                    Outcome::Failed,
                    format!("still missing: {}", still.join(" ")),
                );
            }
        }
        Err(e) => report.push(STEP, Outcome::Failed, format!("{e:#}")),
    }
}

/// True if a bpf filesystem is mounted at /sys/fs/bpf.
pub fn bpffs_mounted() -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .map(|m| {
            m.lines().any(|l| {
                let f: Vec<_> = l.split_whitespace().collect();
                f.len() >= 3 && f[1] == BPFFS && f[2] == "bpf"
            })
        })
        .unwrap_or(false)
}

fn bpffs(report: &mut Report, root: bool) {
    const STEP: &str = "bpffs";
    if bpffs_mounted() {
        report.push(STEP, Outcome::Present, BPFFS);
        return;
    }
    if !root {
        report.push(
            STEP,
            Outcome::NeedsRoot,
            format!("mount -t bpf bpf {BPFFS}"),
        );
        return;
    }
    match cmd::capture(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS])) {
        Ok(_) if bpffs_mounted() => {
            report.push(STEP, Outcome::Installed, format!("mounted {BPFFS}"))
        }
        Ok(_) => report.push(STEP, Outcome::Failed, "mount succeeded but not visible"),
        Err(e) => report.push(STEP, Outcome::Failed, format!("{e:#}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_ok_only_when_all_present_or_installed() {
        let mut r = Report::default();
        r.push("a", Outcome::Present, "");
        r.push("b", Outcome::Installed, "");
        assert!(r.ok());
        r.push("c", Outcome::NeedsRoot, "");
        assert!(!r.ok());
        let table = r.to_string();
        assert!(table.contains("already there") && table.contains("NEEDS ROOT"));
    }
}
