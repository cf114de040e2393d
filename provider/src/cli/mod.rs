//! The `provider` binary's subcommands.
mod bench_close;
mod bench_tcp;
mod cat;
mod mmsg;
mod run_app;
mod scale;
mod script;
mod sockperf;
mod tools;
mod wsp;
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use clap::{Args, Parser, Subcommand};
use provider::{
    api::{AF_INET, AF_INET6, IPPROTO_UDP, Provider, ProviderConfig, SOCK_DGRAM},
    engine::{Engine, EngineConfig},
    socket::WsaError,
    tcp::CcAlgorithm,
    xdp::AttachMode,
    xsk::BindMode,
};

#[derive(Parser)]
#[command(
    name = "provider",
    version,
    about = "Kernel-bypass socket provider (XDP + AF_XDP)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// UDP echo server on the provider: every datagram goes back to its sender.
    Echo(EchoArgs),
    /// Benchmark: ns/packet of `steer` against a bare XDP_PASS program (BPF_PROG_TEST_RUN).
    BenchXdp(tools::BenchXdpArgs),
    /// Packet generator: in-kernel live frames sent out of an interface with XDP_TX.
    Pktgen(tools::PktgenArgs),
    /// Benchmark sink: count UDP datagrams on a kernel socket (recvmmsg).
    KernelSink(tools::KernelSinkArgs),
    /// Benchmark sink: count UDP datagrams through the provider.
    ProviderSink(tools::ProviderSinkArgs),
    /// TCP benchmark: accept one connection through the provider, read to EOF, report.
    TcpSink(bench_tcp::TcpSinkArgs),
    /// TCP benchmark: connect through the provider, send N bytes, shut down, report.
    TcpSource(bench_tcp::TcpSourceArgs),
    /// TCP benchmark: accept one connection on a kernel socket, read to EOF, report.
    KernelTcpSink(bench_tcp::KernelTcpSinkArgs),
    /// TCP benchmark: connect a kernel socket, send N bytes, shut down, report.
    KernelTcpSource(bench_tcp::KernelTcpSourceArgs),
    /// TCP benchmark: accept, read to EOF, close, in a loop (provider) until SIGTERM.
    AcceptClose(bench_tcp::AcceptCloseArgs),
    /// TCP benchmark: accept, read to EOF, close, in a loop (kernel sockets) until SIGTERM.
    KernelAcceptClose(bench_tcp::KernelAcceptCloseArgs),
    /// TCP benchmark client: K kernel sockets connect and close in a loop; conns/s.
    KernelConnectLoop(bench_tcp::KernelConnectLoopArgs),
    /// netcat-like: listen or connect (TCP or UDP), stdin → socket → stdout.
    Cat(cat::CatArgs),
    /// Server for the unmodified `sockperf` client (ping-pong, throughput, under-load), UDP and TCP.
    SockperfServer(sockperf::SockperfArgs),
    /// Run WSP calls from a file or stdin, one per line; print each result as a JSON line.
    Script(script::ScriptArgs),
    /// Benchmark (run by `cargo xtask bench close`): hard-close RST latency, graceful close of
    /// a backlog, closes per second — kernel sockets, then provider sockets, kernel peers.
    BenchClose(bench_close::BenchCloseArgs),
    /// Kernel clients for `bench-close`, in their own process (internal).
    #[command(hide = true)]
    BenchClosePeer(bench_close::BenchClosePeerArgs),
    /// Scale test/benchmark server: accept and hold N connections through the provider, then
    /// echo / measure / close on commands from stdin (JSON lines out).
    ScaleServer(scale::ScaleServerArgs),
    /// The same on kernel sockets (`cargo xtask bench scale` compares the two).
    KernelScaleServer(scale::KernelScaleServerArgs),
    /// Run an unmodified program with its sockets on the provider (LD_PRELOAD):
    /// `provider run --iface IF [--ports 80,8000-8100] -- APP ARGS…`.
    Run(run_app::RunArgs),
}

/// Datapath settings every subcommand shares.
#[derive(Args, Clone)]
pub struct DatapathArgs {
    /// Interface to serve (XDP attaches here).
    #[arg(long)]
    iface: String,
    /// XDP attach mode: native with SKB fallback (auto), native only, or SKB only.
    #[arg(long, value_enum, default_value = "auto")]
    attach: AttachMode,
    /// AF_XDP bind mode.
    #[arg(long, value_enum, default_value = "auto")]
    xsk_mode: XskMode,
    /// Serve only the first N RX queues (default: every active RX queue — `ethtool -l`
    /// "current" — following `ethtool -L` while running). More than are active is an error.
    #[arg(long)]
    queues: Option<u32>,
    /// Spin on the rings instead of sleeping in poll.
    #[arg(long)]
    busy_poll: bool,
    /// Adaptive polling: after traffic, keep polling (yielding the CPU) this many µs before
    /// sleeping in poll; 0 sleeps at once. Ignored with --busy-poll.
    #[arg(long, default_value_t = provider::engine::DEFAULT_SPIN.as_micros() as u64)]
    spin_us: u64,
    /// Queue threads spin for --spin-us too (default: only an application-driven loop does).
    #[arg(long)]
    spin_threads: bool,
    /// TCP checksums on transmit: left to the kernel / device through AF_XDP TX metadata where
    /// the kernel (≥ 6.8) and the bind mode allow it (offload), or always computed here.
    #[arg(long, value_enum, default_value = "offload")]
    tx_checksum: TxChecksumMode,
    /// Set SO_BUSY_POLL (this many µs), SO_PREFER_BUSY_POLL and SO_BUSY_POLL_BUDGET 64 on the
    /// AF_XDP sockets: the kernel then polls the queue's NAPI in the provider's poll or kick
    /// instead of waiting for an interrupt. 0 (default): not set, unless --busy-poll (50 µs).
    /// Pair with the device's napi_defer_hard_irqs / gro_flush_timeout, which are the host's.
    #[arg(long, default_value_t = 0)]
    kernel_busy_poll_us: u32,
    /// Log every malformed frame the XDP program passes (diagnostic; costs ≈20 ns per such frame).
    #[arg(long)]
    log_malformed: bool,
    /// Write a JSON stats snapshot here every 500 ms (read by `cargo xtask stats`); default
    /// /run/provider/<iface>-<pid>.json.
    #[arg(long)]
    stats_file: Option<PathBuf>,
    #[command(flatten)]
    settings: ProviderSettings,
}

/// Provider-wide settings (`EngineConfig.provider`); unset flags keep the defaults.
#[derive(Args, Clone, Default)]
pub struct ProviderSettings {
    /// TCP TIME_WAIT length in ms (default 60000).
    #[arg(long, value_name = "MS")]
    time_wait_ms: Option<u64>,
    /// Lower bound of the TCP retransmission timeout in ms (default 200).
    #[arg(long, value_name = "MS")]
    min_rto_ms: Option<u64>,
    /// How long a closed (orphaned) TCP connection may take to finish before it is reset, in ms
    /// (default 60000).
    #[arg(long, value_name = "MS")]
    orphan_timeout_ms: Option<u64>,
    /// Initial SO_SNDBUF of new sockets and TCP send buffer, bytes (default 1 MiB).
    #[arg(long, value_name = "BYTES")]
    sndbuf: Option<usize>,
    /// Initial SO_RCVBUF of new sockets and TCP receive buffer, bytes (default 1 MiB).
    #[arg(long, value_name = "BYTES")]
    rcvbuf: Option<usize>,
    /// TCP delayed-ACK timeout in ms; 0 acknowledges at once (default 40).
    #[arg(long, value_name = "MS")]
    delayed_ack_ms: Option<u64>,
    /// TCP congestion control (default cubic).
    #[arg(long, value_enum)]
    cc: Option<Cc>,
    /// Socket handles open at once (default 65536; WSAEMFILE beyond).
    #[arg(long, value_name = "N")]
    max_sockets: Option<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Cc {
    Newreno,
    Cubic,
}

impl ProviderSettings {
    /// Write the flags that were given into `config`.
    pub fn apply(&self, config: &mut ProviderConfig) {
        let ms = Duration::from_millis;
        let tcp = &mut config.tcp;
        if let Some(v) = self.time_wait_ms {
            tcp.time_wait = ms(v);
        }
        if let Some(v) = self.min_rto_ms {
            tcp.min_rto = ms(v);
            // Keep the bounds ordered: the initial and maximum RTO are at least the minimum.
            tcp.initial_rto = tcp.initial_rto.max(tcp.min_rto);
            tcp.max_rto = tcp.max_rto.max(tcp.min_rto);
        }
        if let Some(v) = self.orphan_timeout_ms {
            tcp.orphan_timeout = ms(v);
        }
        if let Some(v) = self.delayed_ack_ms {
            tcp.delayed_ack = ms(v);
        }
        if let Some(cc) = self.cc {
            tcp.cc = match cc {
                Cc::Newreno => CcAlgorithm::NewReno,
                Cc::Cubic => CcAlgorithm::Cubic,
            };
        }
        if let Some(v) = self.sndbuf {
            config.default_sndbuf = v;
            config.tcp.send_buffer = v;
        }
        if let Some(v) = self.max_sockets {
            config.max_sockets = v;
        }
        if let Some(v) = self.rcvbuf {
            config.default_rcvbuf = v;
            config.tcp.recv_buffer = v;
        }
    }
}

impl DatapathArgs {
    fn stats_path(&self) -> PathBuf {
        self.stats_file.clone().unwrap_or_else(|| {
            let dir = PathBuf::from("/run/provider");
            let _ = std::fs::create_dir_all(&dir);
            dir.join(format!("{}-{}.json", self.iface, std::process::id()))
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum TxChecksumMode {
    Offload,
    Software,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum XskMode {
    Auto,
    Copy,
    ZeroCopy,
}

#[derive(Args)]
struct EchoArgs {
    #[command(flatten)]
    datapath: DatapathArgs,
    /// UDP port to echo on (IPv4 and IPv6 wildcard).
    #[arg(long, default_value_t = 7)]
    udp: u16,
    /// Serve only this address family.
    #[arg(long, value_parser = ["v4", "v6", "both"], default_value = "both")]
    family: String,
}

pub fn run() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,netlink_packet_route=error")
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Echo(args) => echo(args),
        Command::BenchXdp(args) => tools::bench_xdp(args),
        Command::Pktgen(args) => tools::pktgen(args),
        Command::KernelSink(args) => tools::kernel_sink(args),
        Command::ProviderSink(args) => tools::provider_sink(args),
        Command::TcpSink(args) => bench_tcp::tcp_sink(args),
        Command::TcpSource(args) => bench_tcp::tcp_source(args),
        Command::KernelTcpSink(args) => bench_tcp::kernel_tcp_sink(args),
        Command::KernelTcpSource(args) => bench_tcp::kernel_tcp_source(args),
        Command::AcceptClose(args) => bench_tcp::accept_close(args),
        Command::KernelAcceptClose(args) => bench_tcp::kernel_accept_close(args),
        Command::KernelConnectLoop(args) => bench_tcp::kernel_connect_loop(args),
        Command::Cat(args) => cat::cat(args),
        Command::SockperfServer(args) => sockperf::sockperf_server(args),
        Command::Script(args) => script::script(args),
        Command::BenchClose(args) => bench_close::bench_close(args),
        Command::BenchClosePeer(args) => bench_close::bench_close_peer(args),
        Command::ScaleServer(args) => scale::scale_server(args),
        Command::KernelScaleServer(args) => scale::kernel_scale_server(args),
        Command::Run(args) => run_app::run_app(args),
    };
    if let Err(err) = result {
        eprintln!("provider: {err}");
        std::process::exit(1);
    }
}

pub fn start(args: &DatapathArgs) -> Result<Engine, Box<dyn std::error::Error>> {
    start_with(args, provider::engine::Drive::Threads)
}

/// [`start`] with the given drive mode (`Drive::Application`: the caller polls the driver).
pub fn start_with(
    args: &DatapathArgs,
    drive: provider::engine::Drive,
) -> Result<Engine, Box<dyn std::error::Error>> {
    let mut config = EngineConfig::new(&args.iface);
    config.drive = drive;
    config.attach = args.attach;
    config.queues = args.queues;
    config.busy_poll = args.busy_poll;
    config.spin_after_traffic = std::time::Duration::from_micros(args.spin_us);
    config.spin_queue_threads = args.spin_threads;
    config.log_malformed = args.log_malformed;
    args.settings.apply(&mut config.provider);
    config.xsk.tx_checksum_offload = args.tx_checksum == TxChecksumMode::Offload;
    let kernel_busy_poll_us = match (args.kernel_busy_poll_us, args.busy_poll) {
        (0, true) => 50,
        (us, _) => us,
    };
    config.xsk.busy_poll = (kernel_busy_poll_us > 0).then_some(provider::xsk::BusyPollKnobs {
        usecs: kernel_busy_poll_us,
        budget: 64,
        prefer: true,
    });
    config.xsk.mode = match args.xsk_mode {
        XskMode::Auto => BindMode::Auto,
        XskMode::Copy => BindMode::Copy,
        XskMode::ZeroCopy => BindMode::ZeroCopy,
    };
    Ok(Engine::start(config)?)
}

/// Fail with one line when the interface has no address of the family a subcommand was asked to
/// serve (`v4`, `v6`; `both` serves whichever the interface has).
pub fn require_family(engine: &Engine, family: &str) -> Result<(), Box<dyn std::error::Error>> {
    let iface = &engine.interface().name;
    let has = |v6: bool| engine.addresses().iter().any(|a| a.is_ipv6() == v6);
    let (v6, name, example, other) = match family {
        "v4" => (false, "IPv4", "198.18.0.1/24", "v6"),
        "v6" => (true, "IPv6", "2001:2::1/64", "v4"),
        _ => return Ok(()),
    };
    if has(v6) {
        return Ok(());
    }
    Err(format!(
        "interface {iface} has no {name} address: add one (`ip addr add {example} dev {iface}`) or serve the other family (--family {other})"
    )
    .into())
}

/// Block until SIGINT or SIGTERM.
fn wait_for_signal() -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    })
}

/// Periodically write the engine's counters to `path` until `stop` is set.
fn spawn_stats_writer(
    engine: &Arc<Engine>,
    path: PathBuf,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let engine = engine.clone();
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            if let Ok(json) = serde_json::to_vec_pretty(&engine.stats()) {
                let tmp = path.with_extension("tmp");
                if std::fs::write(&tmp, json).is_ok() {
                    let _ = std::fs::rename(&tmp, &path);
                }
            }
            for _ in 0..10 {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    })
}

fn echo(args: EchoArgs) -> Result<(), Box<dyn std::error::Error>> {
    let engine = Arc::new(start(&args.datapath)?);
    require_family(&engine, &args.family)?;
    let provider = engine.provider().clone();
    let mut families = Vec::new();
    if args.family != "v6" {
        families.push((AF_INET, IpAddr::V4(Ipv4Addr::UNSPECIFIED)));
    }
    if args.family != "v4" {
        families.push((AF_INET6, IpAddr::V6(Ipv6Addr::UNSPECIFIED)));
    }
    let mut sockets = Vec::new();
    for (af, any) in families {
        let s = provider.wsp_socket(af, SOCK_DGRAM, IPPROTO_UDP)?;
        provider.wsp_bind(s, SocketAddr::new(any, args.udp))?;
        sockets.push(s);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let stats_path = args.datapath.stats_path();
    let writer = spawn_stats_writer(&engine, stats_path.clone(), stop.clone());
    let workers: Vec<_> = sockets
        .iter()
        .map(|&s| {
            let p = provider.clone();
            std::thread::spawn(move || udp_echo_loop(&p, s))
        })
        .collect();
    println!("ready: udp echo on port {} ({})", args.udp, args.family);
    wait_for_signal()?;
    stop.store(true, Ordering::Relaxed);
    let _ = writer.join();
    for s in sockets {
        let _ = provider.wsp_close_socket(s);
    }
    for w in workers {
        let _ = w.join();
    }
    let stats = engine.stats();
    eprintln!("{}", serde_json::to_string(&stats)?);
    let _ = std::fs::remove_file(&stats_path);
    Ok(())
}

/// Receive and send back until the socket is closed (recv then returns WSAEINTR/WSAENOTSOCK).
fn udp_echo_loop(provider: &Provider, s: provider::socket::Socket) {
    let mut buf = vec![0u8; 65536];
    loop {
        match provider.wsp_recv_from(s, &mut buf) {
            Ok((n, from)) => {
                if let Err(err) = provider.wsp_send_to(s, &buf[..n], from) {
                    tracing::debug!(%err, %from, "echo send failed");
                }
            }
            Err(WsaError::WSAEMSGSIZE) => continue,
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(args: &[&str]) -> ProviderConfig {
        let mut argv = vec!["provider", "script", "--iface", "veth0"];
        argv.extend_from_slice(args);
        let Command::Script(a) = Cli::try_parse_from(argv).unwrap().command else {
            unreachable!()
        };
        let mut config = ProviderConfig::default();
        a.datapath.settings.apply(&mut config);
        config
    }

    #[test]
    fn provider_wide_flags_reach_the_config() {
        assert_eq!(settings(&[]), ProviderConfig::default());
        let c = settings(&[
            "--time-wait-ms",
            "100",
            "--min-rto-ms",
            "5000",
            "--orphan-timeout-ms",
            "2000",
            "--sndbuf",
            "1000",
            "--rcvbuf",
            "2000",
            "--delayed-ack-ms",
            "0",
            "--cc",
            "newreno",
        ]);
        let ms = Duration::from_millis;
        assert_eq!(c.tcp.time_wait, ms(100));
        assert_eq!(c.tcp.min_rto, ms(5000));
        assert_eq!(
            c.tcp.initial_rto,
            ms(5000),
            "initial RTO raised to the minimum"
        );
        assert_eq!(c.tcp.orphan_timeout, ms(2000));
        assert_eq!((c.default_sndbuf, c.tcp.send_buffer), (1000, 1000));
        assert_eq!((c.default_rcvbuf, c.tcp.recv_buffer), (2000, 2000));
        assert_eq!(c.tcp.delayed_ack, Duration::ZERO);
        assert_eq!(c.tcp.cc, CcAlgorithm::NewReno);
    }

    #[test]
    fn every_subcommand_takes_the_provider_wide_flags() {
        for sub in [
            &["echo"][..],
            &["provider-sink", "--port", "9"],
            &["cat", "--listen", "1"],
            &["sockperf-server"],
            &["script"],
        ] {
            let mut argv = vec!["provider"];
            argv.extend_from_slice(sub);
            argv.extend_from_slice(&["--iface", "x", "--time-wait-ms", "1", "--cc", "cubic"]);
            assert!(Cli::try_parse_from(&argv).is_ok(), "{argv:?}");
        }
    }
}
