//! `cargo xtask …` — bootstrap, build, lab, tests (DESIGN §9).

use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Args, Parser, Subcommand};
use xtask::lab::{self, Lab, LabConfig};
use xtask::test::TestOptions;
use xtask::{cmd, setup};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Provider build, lab and test orchestration"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Idempotent bootstrap: nightly check, rust-src, bpf-linker 0.10.4, apt packages, bpffs.
    Setup,
    /// Setup, then `cargo build --release -p provider`.
    Build,
    /// The namespace lab (two netns joined by a veth pair).
    Lab {
        #[command(subcommand)]
        cmd: LabCmd,
    },
    /// Everything CI runs: setup, stale-lab cleanup, fmt, clippy, unit tests, root/lab tests.
    Test(TestArgs),
    /// The main job on the built-in lab (not yet implemented).
    Demo(Rest),
    /// Run the provider on a real interface (not yet implemented).
    Run(Rest),
    /// Benchmark kernel vs provider in the lab (not yet implemented).
    Bench {
        name: String,
        #[command(flatten)]
        rest: Rest,
    },
    /// Packet-rate generator (not yet implemented).
    Pktgen(Rest),
    /// Show provider statistics (not yet implemented).
    Stats(Rest),
}

#[derive(Args)]
struct Rest {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    args: Vec<String>,
}

#[derive(Args)]
struct TestArgs {
    /// Skip `cargo fmt --check` and clippy.
    #[arg(long)]
    quick: bool,
    /// Test name filter passed to the test harness.
    #[arg(long)]
    filter: Option<String>,
    /// Only these packages (repeatable); default the whole workspace.
    #[arg(short, long = "package")]
    package: Vec<String>,
}

#[derive(Subcommand)]
enum LabCmd {
    /// Create a lab that lives until `lab down`.
    Up {
        /// Lab name (≤ 13 chars); default pv<pid>.
        #[arg(long)]
        name: Option<String>,
        /// veth RX/TX queues.
        #[arg(long, default_value_t = 1)]
        queues: u32,
        #[arg(long, default_value_t = 1500)]
        mtu: u32,
    },
    /// Delete a lab (the only persistent one if --name is omitted), or all stale labs.
    Down {
        #[arg(long, conflicts_with = "all_stale")]
        name: Option<String>,
        /// Delete every lab whose owning process is gone.
        #[arg(long)]
        all_stale: bool,
    },
    /// List labs (state files and namespaces that look like ours).
    Status {
        #[arg(long)]
        name: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli.cmd) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn not_yet(what: &str) -> Result<ExitCode> {
    eprintln!("cargo xtask {what}: not yet implemented");
    Ok(ExitCode::from(2))
}

fn dispatch(cmd: Cmd) -> Result<ExitCode> {
    match cmd {
        Cmd::Setup => {
            setup::run()?;
        }
        Cmd::Build => {
            setup::run()?;
            cmd::run(cmd::cargo().args(["build", "--release", "-p", "provider"]))?;
        }
        Cmd::Lab { cmd } => lab_cmd(cmd)?,
        Cmd::Test(a) => xtask::test::run(&TestOptions {
            quick: a.quick,
            filter: a.filter,
            packages: a.package,
        })?,
        Cmd::Demo(_) => return not_yet("demo"),
        Cmd::Run(_) => return not_yet("run"),
        Cmd::Bench { name, .. } => return not_yet(&format!("bench {name}")),
        Cmd::Pktgen(_) => return not_yet("pktgen"),
        Cmd::Stats(_) => return not_yet("stats"),
    }
    Ok(ExitCode::SUCCESS)
}

fn lab_cmd(cmd: LabCmd) -> Result<()> {
    match cmd {
        LabCmd::Up { name, queues, mtu } => {
            let cfg = LabConfig {
                name: name.unwrap_or_else(lab::unique_name),
                queues,
                mtu,
                keep: true,
            };
            let l = Lab::up(&cfg)?;
            println!("lab {} is up (queues {}, mtu {})", l.name, l.queues, l.mtu);
            println!(
                "  provider: netns {:<14} if {:<15} {}/{} {}/{}",
                l.provider_ns,
                l.provider_if,
                l.provider_v4,
                l.prefix_v4,
                l.provider_v6,
                l.prefix_v6
            );
            println!(
                "  peer:     netns {:<14} if {:<15} {}/{} {}/{}",
                l.peer_ns, l.peer_if, l.peer_v4, l.prefix_v4, l.peer_v6, l.prefix_v6
            );
            println!("  shell:    ip netns exec {} bash", l.provider_ns);
            println!("  remove:   cargo xtask lab down --name {}", l.name);
        }
        LabCmd::Down { name, all_stale } => {
            if all_stale {
                let removed = lab::lab_guard_cleanup_stale()?;
                if removed.is_empty() {
                    println!("no stale labs");
                } else {
                    println!("removed: {}", removed.join(" "));
                }
                return Ok(());
            }
            let name = match name {
                Some(n) => n,
                None => {
                    let persistent: Vec<_> = Lab::status(None)?
                        .into_iter()
                        .filter(|s| s.owner == "persistent")
                        .map(|s| s.name)
                        .collect();
                    match persistent.as_slice() {
                        [] => bail!("no lab made by `lab up` found; see `cargo xtask lab status`"),
                        [one] => one.clone(),
                        many => bail!("several labs: {}; pick one with --name", many.join(" ")),
                    }
                }
            };
            Lab::down_by_name(&name)?;
            println!("lab {name} is down");
        }
        LabCmd::Status { name, json } => {
            let labs = Lab::status(name.as_deref())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&labs)?);
                return Ok(());
            }
            if labs.is_empty() {
                println!("no labs");
                return Ok(());
            }
            println!(
                "{:<14} {:<10} {:>8} {:>6} {:>6} {:>6} {:>6}",
                "name", "owner", "pid", "prov", "peer", "state", "queues"
            );
            let yn = |b: bool| if b { "yes" } else { "no" };
            for s in labs {
                println!(
                    "{:<14} {:<10} {:>8} {:>6} {:>6} {:>6} {:>6}",
                    s.name,
                    s.owner,
                    s.owner_pid.map_or("-".into(), |p| p.to_string()),
                    yn(s.provider_ns_exists),
                    yn(s.peer_ns_exists),
                    yn(s.has_state),
                    s.queues.map_or("-".into(), |q| q.to_string()),
                );
            }
        }
    }
    Ok(())
}
