//! `provider run --iface IF -- APP ARGS…`: run an unmodified program with its sockets on the
//! provider, through `libprovider_preload.so` in `LD_PRELOAD` (see the preload crate).

use std::os::unix::process::CommandExt;
use std::path::PathBuf;

use clap::{Args, ValueEnum};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LingerNonblocking {
    /// close(2) with SO_LINGER {1,n} on a nonblocking socket blocks for up to n s, as on Linux.
    Linux,
    /// It fails with EWOULDBLOCK and the descriptor stays open (the WSPCloseSocket rule); call
    /// close again later.
    Wsp,
}

#[derive(Args)]
pub struct RunArgs {
    /// Interface whose traffic the program's sockets use (XDP attaches here at its first
    /// provider socket).
    #[arg(long)]
    iface: String,
    /// Only binds to these local ports go to the provider, e.g. `80,8000-8100` (default: every
    /// port on the interface's addresses and the wildcard).
    #[arg(long)]
    ports: Option<String>,
    /// What close(2) does for SO_LINGER {1,n} on a nonblocking socket.
    #[arg(long, value_enum, default_value = "linux")]
    linger_nonblocking: LingerNonblocking,
    /// The preload library (default: `libprovider_preload.so` next to this binary).
    #[arg(long)]
    preload: Option<PathBuf>,
    /// The program and its arguments.
    #[arg(trailing_var_arg = true, required = true, num_args = 1..)]
    command: Vec<String>,
}

fn default_preload() -> Result<PathBuf, Box<dyn std::error::Error>> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().ok_or("the provider binary has no directory")?;
    // `cargo test` runs binaries from target/<profile>/deps; the library is one level up.
    for d in [dir.to_path_buf(), dir.join("..")] {
        let p = d.join("libprovider_preload.so");
        if p.exists() {
            return Ok(p.canonicalize()?);
        }
    }
    Err(format!(
        "libprovider_preload.so not found next to {} (build it: `cargo xtask build`, or pass --preload)",
        exe.display()
    )
    .into())
}

pub fn run_app(args: RunArgs) -> Result<(), Box<dyn std::error::Error>> {
    let preload = match args.preload {
        Some(p) if p.exists() => p.canonicalize()?,
        Some(p) => return Err(format!("--preload {}: no such file", p.display()).into()),
        None => default_preload()?,
    };
    if !std::path::Path::new("/sys/class/net")
        .join(&args.iface)
        .exists()
    {
        return Err(format!("no interface {:?} in this network namespace", args.iface).into());
    }
    let mut ld = preload.display().to_string();
    if let Some(prev) = std::env::var_os("LD_PRELOAD").filter(|v| !v.is_empty()) {
        ld = format!("{ld}:{}", prev.to_string_lossy());
    }
    let mut cmd = std::process::Command::new(&args.command[0]);
    cmd.args(&args.command[1..])
        .env("LD_PRELOAD", ld)
        .env("PROVIDER_IFACE", &args.iface)
        .env(
            "PROVIDER_LINGER_NONBLOCKING",
            match args.linger_nonblocking {
                LingerNonblocking::Linux => "linux",
                LingerNonblocking::Wsp => "wsp",
            },
        );
    match &args.ports {
        Some(p) => cmd.env("PROVIDER_PORTS", p),
        None => cmd.env_remove("PROVIDER_PORTS"),
    };
    // exec: the program replaces this process (same PID, signals and exit status go to it).
    let err = cmd.exec();
    Err(format!("cannot run {:?}: {err}", args.command[0]).into())
}
