//! Finding and building the `provider` binary. xtask never links the provider crate (it
//! has to build before `setup` installs the eBPF toolchain); it runs the binary.

use std::path::PathBuf;

use anyhow::{Result, bail};

use crate::cmd;

/// Environment variable naming a ready-made provider binary: when set, nothing is built
/// (handy to try a binary from another tree, or to run xtask against a stand-in).
pub const OVERRIDE_ENV: &str = "XTASK_PROVIDER_BIN";

/// Cargo's target directory (`CARGO_TARGET_DIR`, relative to the workspace root, else
/// `<root>/target`).
pub fn target_dir() -> PathBuf {
    let root = crate::workspace_root();
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => root.join(d),
        None => root.join("target"),
    }
}

/// `cargo build --release -p provider --bins` and the path of `target/release/provider`,
/// or the binary named by [`OVERRIDE_ENV`].
pub fn build_release() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(OVERRIDE_ENV) {
        let p = std::path::absolute(PathBuf::from(p))?;
        if !p.is_file() {
            bail!("{OVERRIDE_ENV}={} is not a file", p.display());
        }
        eprintln!("using {} ({OVERRIDE_ENV}); not building", p.display());
        return Ok(p);
    }
    eprintln!("==> cargo build --release -p provider --bins");
    cmd::run(cmd::cargo().args(["build", "--release", "-p", "provider", "--bins"]))?;
    // The preload library too (`provider run` finds it next to the binary); a build of its own,
    // since `--bins` would skip a library-only crate.
    cmd::run(cmd::cargo().args(["build", "--release", "-p", "provider-preload"]))?;
    let p = target_dir().join("release/provider");
    if !p.is_file() {
        bail!(
            "the build succeeded but {} does not exist (no `provider` binary target?)",
            p.display()
        );
    }
    Ok(p)
}

/// Setup (idempotent) then [`build_release`]: what every command that runs the provider does
/// first, so they work on a fresh machine.
pub fn setup_and_build() -> Result<PathBuf> {
    eprintln!("==> cargo xtask setup");
    crate::setup::run()?;
    build_release()
}

/// Fails early with a clear message when not root (XDP, AF_XDP and namespaces need it).
pub fn require_root(what: &str) -> Result<()> {
    if !crate::is_root() {
        bail!("`cargo xtask {what}` needs root (XDP, AF_XDP, network namespaces); rerun as root");
    }
    Ok(())
}

/// Where benchmark results go: `<workspace>/bench-results/`.
pub fn bench_results_dir() -> Result<PathBuf> {
    let d = crate::workspace_root().join("bench-results");
    std::fs::create_dir_all(&d)?;
    Ok(d)
}
