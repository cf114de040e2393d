//! Lab and build orchestration for the provider (DESIGN §9, §10, §11).
//!
//! The binary (`cargo xtask …`) is a thin clap front end; everything else lives here so the
//! end-to-end tests crate can reuse the namespace lab ([`lab::Lab`]) and the bootstrap
//! ([`setup::run`]).

pub mod bench;
pub mod bench_apps;
pub mod bench_async;
pub mod bench_tcp;
pub mod cmd;
pub mod demo;
pub mod demo_tcp;
pub mod lab;
pub mod pktgen;
pub mod proc;
pub mod provider_bin;
pub mod run;
pub mod scale;
pub mod setup;
pub mod stats;
pub mod test;

pub use lab::{Lab, LabConfig, NsGuard, lab_guard_cleanup_stale};

/// True when the effective user is root (lab, apt and bpffs steps need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The workspace root (parent of this crate's folder), so commands work from any cwd.
pub fn workspace_root() -> std::path::PathBuf {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(|| manifest.to_path_buf())
}
