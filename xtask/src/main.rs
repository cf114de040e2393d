//! `cargo xtask …` — bootstrap, build, lab, tests (DESIGN §9).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Args, Parser, Subcommand};
use xtask::lab::{self, Lab, LabConfig};
use xtask::pktgen::PktgenOptions;
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
    /// Setup, then `cargo build --release -p provider -p provider-preload`.
    Build,
    /// The namespace lab (two netns joined by a veth pair).
    Lab {
        #[command(subcommand)]
        cmd: LabCmd,
    },
    /// Everything CI runs: setup, stale-lab cleanup, fmt, clippy, unit tests, root/lab tests.
    Test(TestArgs),
    /// The main job on the built-in lab: provider UDP echo vs kernel peer, v4 + v6, checked
    /// byte for byte, with the wire capture, XDP verdicts and engine/ring counters.
    Demo,
    /// Run `target/release/provider <args…>` on a real NIC (after setup and a release build),
    /// e.g. `cargo xtask run -- echo --iface eth1 --udp 7`.
    Run(Rest),
    /// Run an unmodified program on the provider: `cargo xtask run-app -- --iface IF -- APP
    /// ARGS…` (= `provider run …`, after setup and a release build).
    RunApp(Rest),
    /// Benchmark the provider against the kernel (xdp, udp-rx, tcp, close); results in
    /// bench-results/.
    Bench {
        #[command(subcommand)]
        which: BenchCmd,
    },
    /// UDP packet-rate generator: kernel pktgen when /proc/net/pktgen exists, else
    /// `provider pktgen` (XDP live frames).
    Pktgen(PktgenArgs),
    /// Show the statistics of running providers (/run/provider/*.json) as tables.
    Stats {
        /// A stats file (e.g. one given to `provider echo --stats-file`); default: every
        /// /run/provider/<iface>-<pid>.json whose pid is alive.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Refresh every second until Ctrl-C.
        #[arg(long)]
        watch: bool,
    },
}

#[derive(Args)]
struct Rest {
    /// Arguments for the provider binary (after `--`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

#[derive(Subcommand)]
enum BenchCmd {
    /// XDP steering program cost per packet vs bare XDP_PASS (BPF_PROG_TEST_RUN).
    Xdp {
        #[arg(long)]
        repeat: Option<u64>,
        #[arg(long)]
        rounds: Option<u64>,
    },
    /// UDP receive rate: kernel socket vs provider, same lab, same generator, pinned CPUs.
    UdpRx {
        /// Seconds per run.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// UDP payload bytes (18: 60-byte IPv4 frames, the packet-rate case).
        #[arg(long, default_value_t = 18)]
        size: usize,
    },
    /// WSPCloseSocket vs kernel close(2): hard-close → RST latency, graceful close of a
    /// backlog, closes per second.
    Close {
        /// Hard closes timed one by one (RST latency percentiles).
        #[arg(long, default_value_t = 1000)]
        closes: usize,
        /// Connections established, then closed back to back, per mode.
        #[arg(long, default_value_t = 10_000)]
        conns: usize,
        /// Graceful closes of a backlog timed.
        #[arg(long, default_value_t = 20)]
        backlog_reps: usize,
        /// Backlog bytes sent right before each graceful close.
        #[arg(long, default_value_t = 1 << 20)]
        backlog_bytes: usize,
    },
    /// TCP: sockperf latency / message rate, bulk Gb/s each way, connections/s — kernel vs
    /// provider, same lab, same kernel-stack clients, pinned CPUs.
    Tcp {
        /// Seconds per sockperf run and per connection-rate run.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Bytes per bulk run (each direction, each stack).
        #[arg(long, default_value_t = 2 << 30)]
        bytes: u64,
        /// Connections in flight in the connect/close loop.
        #[arg(long, default_value_t = 8)]
        parallel: usize,
        /// Rounds (kernel and provider alternate); each metric is the median over rounds.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Record the provider processes with `perf record -g` (bench-results/perf/).
        #[arg(long)]
        perf: bool,
        /// Run the provider processes with `--busy-poll` (spin instead of sleeping when idle).
        #[arg(long)]
        busy_poll: bool,
        /// RX queues of the lab veth; the provider serves every one (one TCP shard each).
        #[arg(long, default_value_t = 1)]
        queues: u32,
        /// Pass `--spin-us N` to the provider processes (default: the provider's own default).
        #[arg(long)]
        spin_us: Option<u64>,
        /// Pass `--tx-checksum offload|software` to the provider processes (default: theirs,
        /// offload where the kernel allows it).
        #[arg(long, value_parser = ["offload", "software"])]
        tx_checksum: Option<String>,
        /// Leave TX checksumming on on the lab's provider-side veth (the lab turns it off by
        /// default): the kernel server and the provider's TX metadata both offload.
        #[arg(long)]
        device_tx_checksum: bool,
    },
    /// tokio on the provider (`provider::aio`) vs the same tokio code on kernel sockets:
    /// sockperf latency / message rate against a tokio sockperf server, wrk requests/s
    /// against the hyper example.
    Async {
        /// Seconds per sockperf / wrk run.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Rounds (kernel and provider alternate); each metric is the median over rounds.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// wrk connections.
        #[arg(long, default_value_t = 32)]
        connections: u32,
    },
    /// Unmodified servers from Debian packages (nginx, redis-server, sockperf server) on the
    /// provider through the preload vs on the kernel: wrk, redis-benchmark, sockperf.
    Apps {
        /// Seconds per wrk / sockperf run (redis-benchmark: 40 000 requests per second of it).
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Rounds (kernel and provider alternate); each metric is the median over rounds.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Client connections (wrk, redis-benchmark).
        #[arg(long, default_value_t = 32)]
        connections: u32,
    },
    /// Scale: N idle established connections from the kernel client, served by kernel sockets
    /// and by the provider; memory per connection for each.
    Scale {
        /// Connections held at once.
        #[arg(long, default_value_t = 100_000)]
        conns: usize,
        /// Rounds (kernel and provider alternate); medians reported.
        #[arg(long, default_value_t = 1)]
        rounds: u32,
    },
    #[command(external_subcommand)]
    Other(Vec<String>),
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("where").required(true).args(["lab", "iface"])))]
struct PktgenArgs {
    /// Generate from this lab's peer namespace towards the provider veth.
    #[arg(long)]
    lab: Option<String>,
    /// Generate out of this interface (host namespace).
    #[arg(long)]
    iface: Option<String>,
    /// Destination IP:PORT (IPv6 as [addr]:port).
    #[arg(long)]
    dst: SocketAddr,
    /// Source IP:PORT (--iface only; default: the interface's address, port 40000).
    #[arg(long)]
    src: Option<SocketAddr>,
    /// Destination MAC (--iface only; default: the kernel's neighbour entry for --dst).
    #[arg(long)]
    dst_mac: Option<String>,
    /// UDP payload bytes (18: 60-byte IPv4 frames).
    #[arg(long, default_value_t = 18)]
    size: usize,
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Frames per BPF_PROG_TEST_RUN call (provider pktgen only).
    #[arg(long)]
    batch: Option<u32>,
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
        /// Make the veth the plain way (bare `ip link add`, offloads on; --queues ignored).
        #[arg(long)]
        plain: bool,
        /// Activate only this many RX/TX queues (`ethtool -L`) of the allocated ones.
        #[arg(long)]
        active: Option<u32>,
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

fn dispatch(cmd: Cmd) -> Result<ExitCode> {
    match cmd {
        Cmd::Setup => {
            setup::run()?;
        }
        Cmd::Build => {
            setup::run()?;
            cmd::run(cmd::cargo().args([
                "build",
                "--release",
                "-p",
                "provider",
                "-p",
                "provider-preload",
            ]))?;
        }
        Cmd::Lab { cmd } => lab_cmd(cmd)?,
        Cmd::Test(a) => xtask::test::run(&TestOptions {
            quick: a.quick,
            filter: a.filter,
            packages: a.package,
        })?,
        Cmd::Demo => xtask::demo::run()?,
        Cmd::Run(r) => xtask::run::run(&r.args)?,
        Cmd::RunApp(r) => {
            let args = match r.args.first() {
                Some(a) if a == "--" => &r.args[1..],
                _ => &r.args[..],
            };
            let mut all = vec!["run".to_string()];
            all.extend_from_slice(args);
            xtask::run::run(&all)?
        }
        Cmd::Bench { which } => match which {
            BenchCmd::Xdp { repeat, rounds } => xtask::bench::xdp(repeat, rounds)?,
            BenchCmd::UdpRx { seconds, size } => xtask::bench::udp_rx(seconds, size)?,
            BenchCmd::Close {
                closes,
                conns,
                backlog_reps,
                backlog_bytes,
            } => xtask::bench::close(&xtask::bench::CloseOptions {
                closes,
                conns,
                backlog_reps,
                backlog_bytes,
            })?,
            BenchCmd::Tcp {
                seconds,
                bytes,
                parallel,
                rounds,
                perf,
                busy_poll,
                queues,
                spin_us,
                tx_checksum,
                device_tx_checksum,
            } => xtask::bench_tcp::tcp(&xtask::bench_tcp::TcpBenchOptions {
                seconds,
                bytes,
                parallel,
                rounds,
                perf,
                busy_poll,
                queues,
                spin_us,
                tx_checksum,
                device_tx_checksum,
            })?,
            BenchCmd::Async {
                seconds,
                rounds,
                connections,
            } => xtask::bench_async::run(&xtask::bench_async::AsyncBenchOptions {
                seconds,
                rounds,
                connections,
            })?,
            BenchCmd::Apps {
                seconds,
                rounds,
                connections,
            } => xtask::bench_apps::run(&xtask::bench_apps::AppsBenchOptions {
                seconds,
                rounds,
                connections,
            })?,
            BenchCmd::Scale { conns, rounds } => {
                xtask::scale::bench(&xtask::scale::BenchOptions { conns, rounds })?
            }
            BenchCmd::Other(args) => {
                return Err(xtask::bench::unknown(
                    args.first().map_or("", String::as_str),
                ));
            }
        },
        Cmd::Pktgen(a) => xtask::pktgen::run(&PktgenOptions {
            lab: a.lab,
            iface: a.iface,
            dst: a.dst,
            src: a.src,
            dst_mac: a.dst_mac,
            size: a.size,
            seconds: a.seconds,
            batch: a.batch,
        })?,
        Cmd::Stats { file, watch } => xtask::stats::run(file.as_deref(), watch)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn lab_cmd(cmd: LabCmd) -> Result<()> {
    match cmd {
        LabCmd::Up {
            name,
            queues,
            mtu,
            plain,
            active,
        } => {
            let cfg = LabConfig {
                name: name.unwrap_or_else(lab::unique_name),
                queues,
                mtu,
                keep: true,
                plain,
                active_queues: active,
                provider_tx_checksum: false,
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
