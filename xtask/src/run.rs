//! `cargo xtask run -- <provider args…>`: run the provider on a real interface.
//!
//! Setup, release build, then `exec` of `target/release/provider <args…>` (xtask is replaced
//! by the provider, so Ctrl-C and SIGTERM reach it directly). For a real NIC, e.g.
//! `sudo -E cargo xtask run -- echo --iface eth1 --udp 7`; the lab has `cargo xtask demo`.

use std::os::unix::process::CommandExt;
use std::process::Command;

use anyhow::{Result, bail};

use crate::{cmd, provider_bin};

pub fn run(args: &[String]) -> Result<()> {
    // clap normally eats the `--`; tolerate one that got through.
    let args = match args.first() {
        Some(a) if a == "--" => &args[1..],
        _ => args,
    };
    if args.is_empty() {
        bail!(
            "usage: cargo xtask run -- <provider subcommand> --iface IF …\n  e.g. cargo xtask run -- echo --iface eth1 --udp 7\n  (runs target/release/provider on a real interface; see `target/release/provider --help`)"
        );
    }
    let wants_iface = !matches!(args[0].as_str(), "bench-xdp" | "help" | "--help" | "-h");
    if wants_iface
        && !args
            .iter()
            .any(|a| a == "--iface" || a.starts_with("--iface="))
    {
        eprintln!("warning: no --iface given; the provider runs on a real interface (--iface IF)");
    }
    if !crate::is_root() {
        eprintln!(
            "warning: not root: XDP and AF_XDP need root (or CAP_NET_ADMIN, CAP_BPF, CAP_NET_RAW)"
        );
    }
    let bin = provider_bin::setup_and_build()?;
    let mut c = Command::new(&bin);
    c.args(args);
    eprintln!("==> exec {}", cmd::display(&c));
    let err = c.exec();
    Err(anyhow::Error::from(err).context(format!("exec {}", bin.display())))
}
