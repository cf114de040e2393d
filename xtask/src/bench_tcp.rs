//! `cargo xtask bench tcp` (DESIGN §12): the kernel's TCP and the provider's, side by side in one
//! run, in the same lab, with the same kernel-stack clients in the peer namespace; the server
//! side (kernel or provider) pinned to CPU 0, the peer's client pinned to CPU 1.
//!
//! 1. Latency and message rate with the unmodified Debian `sockperf` client: `ping-pong` 64 B
//!    (RTT p50/p99/p99.9, `--full-rtt`) and `throughput` 64 B and 1400 B (message rate; once
//!    with sockperf's default Nagle, once with `--tcp-avoid-nodelay`) against `sockperf server
//!    --tcp` (kernel) and `provider sockperf-server --tcp` (provider).
//! 2. Bulk transfer, each direction: `provider kernel-tcp-source` in the peer → `tcp-sink` /
//!    `kernel-tcp-sink` in the provider namespace, and `tcp-source` / `kernel-tcp-source` in the
//!    provider namespace → `kernel-tcp-sink` in the peer. The rate is the sink's (accept → EOF).
//! 3. Connections per second: `provider kernel-connect-loop` (K threads connect + close) in the
//!    peer against `accept-close` / `kernel-accept-close`. The client closes first, so TIME_WAIT
//!    stays with the kernel peer; the peer namespace gets `tcp_tw_reuse=1`,
//!    `tcp_tw_reuse_delay=1` ms and ports 10000–65000 so the client's TIME_WAIT never caps the
//!    rate (without them the kernel client tops out near 32 k connects/s).
//!
//! Every measurement runs `--rounds` times (default 3), kernel and provider alternating which
//! goes first; the table shows the median, the JSON every run. With `--perf`, each provider
//! process runs under `perf record -g` (bench-results/perf/tcp-<run>.data).
//!
//! Targets (reported, never enforced): p50 ≤ 0.7× kernel, message rate ≥ 1.5× kernel, bulk ≥
//! kernel, connections/s ≥ 2× kernel. A measurement that fails is reported as failed in the
//! table (with a numbered note) and the JSON; the others still run.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::bench::{unix_now, write_result};
use crate::lab::{Lab, LabConfig};
use crate::proc::{self, Proc};
use crate::provider_bin;

/// CPU of the server side (kernel server or the whole provider process).
pub const SERVER_CPU: &str = "0";
/// CPU of the peer's client.
pub const CLIENT_CPU: &str = "1";

/// Target ratios provider / kernel.
pub const P50_MAX_RATIO: f64 = 0.7;
pub const P99_MAX_RATIO: f64 = 0.7;
pub const P999_MAX_RATIO: f64 = 1.0;
pub const MSG_RATE_MIN_RATIO: f64 = 1.5;
pub const BULK_MIN_RATIO: f64 = 1.2;
pub const CPS_MIN_RATIO: f64 = 2.0;

/// Ports, one per run so no run meets another's leftovers.
const PORT_SOCKPERF_KERNEL: u16 = 11111;
const PORT_SOCKPERF_PROVIDER: u16 = 11112;
const PORT_BULK: u16 = 5201;
const PORT_CPS_KERNEL: u16 = 5301;
const PORT_CPS_PROVIDER: u16 = 5302;

#[derive(Debug, Clone)]
pub struct TcpBenchOptions {
    /// Seconds per sockperf run and per connection-rate run.
    pub seconds: u64,
    /// Bytes per bulk run.
    pub bytes: u64,
    /// Connections in flight in the connect loop.
    pub parallel: usize,
    /// Rounds; each metric is the median over rounds, kernel and provider alternating.
    pub rounds: u32,
    /// Record every provider-side provider process with `perf record -g`.
    pub perf: bool,
    /// Run every provider process with `--busy-poll` (it spins instead of sleeping when idle).
    pub busy_poll: bool,
    /// RX queues of the lab's veth (the provider serves them all: one TCP shard each).
    pub queues: u32,
    /// `--spin-us` for every provider process (None: the provider's default adaptive poll).
    pub spin_us: Option<u64>,
    /// `--tx-checksum offload|software` for every provider process (None: its default).
    pub tx_checksum: Option<String>,
    /// Leave TX checksumming on on the lab's provider-side veth (both stacks offload).
    pub device_tx_checksum: bool,
}

impl Default for TcpBenchOptions {
    fn default() -> Self {
        TcpBenchOptions {
            seconds: 5,
            bytes: 2 << 30,
            parallel: 8,
            rounds: 3,
            perf: false,
            busy_poll: false,
            queues: 1,
            spin_us: None,
            tx_checksum: None,
            device_tx_checksum: false,
        }
    }
}

/// Which stack serves in the provider namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stack {
    Kernel,
    Provider,
}

impl Stack {
    fn name(self) -> &'static str {
        match self {
            Stack::Kernel => "kernel",
            Stack::Provider => "provider",
        }
    }
}

/// One measured number, or why there is none.
pub type Measured = std::result::Result<f64, String>;

/// How a metric is judged.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// provider / kernel ≤ x (lower is better).
    AtMost(f64),
    /// provider / kernel ≥ x (higher is better).
    AtLeast(f64),
    /// Reported only.
    None,
}

impl Target {
    fn text(self) -> String {
        match self {
            Target::AtMost(x) => format!("≤ {x}×"),
            Target::AtLeast(x) => format!("≥ {x}×"),
            Target::None => "—".into(),
        }
    }

    fn met(self, ratio: f64) -> Option<bool> {
        if !ratio.is_finite() {
            return match self {
                Target::None => None,
                _ => Some(false),
            };
        }
        match self {
            Target::AtMost(x) => Some(ratio <= x),
            Target::AtLeast(x) => Some(ratio >= x),
            Target::None => None,
        }
    }
}

/// Median of the runs that succeeded; if none did, the first failure.
pub fn aggregate(runs: &[Measured]) -> Measured {
    let ok: Vec<f64> = runs
        .iter()
        .filter_map(|m| m.as_ref().ok().copied())
        .collect();
    if ok.is_empty() {
        return Err(runs
            .iter()
            .find_map(|m| m.as_ref().err().cloned())
            .unwrap_or_else(|| "not run".into()));
    }
    Ok(crate::bench::median(&ok))
}

/// One line of the table: every round's measurement for both stacks.
#[derive(Debug, Clone)]
pub struct Row {
    pub metric: String,
    pub unit: &'static str,
    pub kernel_runs: Vec<Measured>,
    pub provider_runs: Vec<Measured>,
    pub target: Target,
}

impl Row {
    pub fn kernel(&self) -> Measured {
        aggregate(&self.kernel_runs)
    }

    pub fn provider(&self) -> Measured {
        aggregate(&self.provider_runs)
    }

    pub fn ratio(&self) -> f64 {
        match (self.kernel(), self.provider()) {
            (Ok(k), Ok(p)) if k > 0.0 => p / k,
            _ => f64::NAN,
        }
    }

    /// `Some(true/false)` for a judged metric; a failed measurement is "not met".
    pub fn met(&self) -> Option<bool> {
        self.target.met(self.ratio())
    }

    fn json(&self) -> Value {
        let v = |m: &Measured| m.as_ref().ok().copied();
        let runs = |r: &[Measured]| -> Vec<Value> {
            r.iter()
                .map(|m| match m {
                    Ok(x) => json!(x),
                    Err(e) => json!({ "error": e }),
                })
                .collect()
        };
        let ratio = self.ratio();
        json!({
            "metric": self.metric, "unit": self.unit,
            "kernel": v(&self.kernel()), "provider": v(&self.provider()),
            "kernel_runs": runs(&self.kernel_runs), "provider_runs": runs(&self.provider_runs),
            "ratio": ratio.is_finite().then_some(ratio),
            "target": self.target.text(), "met": self.met(),
        })
    }
}

// ------------------------------------------------------------------ sockperf output

/// Removes ANSI colour sequences (`ESC [ … m`) sockperf puts around some lines.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The summary of a `sockperf ping-pong` run (µs; RTT with `--full-rtt`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PingPong {
    pub avg: f64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub observations: u64,
}

fn number_after<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let rest = &line[line.find(key)? + key.len()..];
    rest.trim_start()
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .next()
        .filter(|s| !s.is_empty())
}

/// Parses `sockperf ping-pong` output: `percentile 50.000 =   60.034`, `avg-rtt=61.813` (or
/// `avg-lat=`), `<MAX> observation = …`, `Total 25053 observations`.
pub fn parse_ping_pong(output: &str) -> Result<PingPong> {
    let text = strip_ansi(output);
    let mut pct = std::collections::HashMap::new();
    let (mut avg, mut max, mut obs) = (None, None, None);
    for line in text.lines() {
        if let Some(i) = line.find("> percentile ") {
            let rest = &line[i + "> percentile ".len()..];
            if let Some((p, v)) = rest.split_once('=')
                && let (Ok(p), Ok(v)) = (p.trim().parse::<f64>(), v.trim().parse::<f64>())
            {
                pct.insert((p * 1000.0).round() as u64, v);
            }
        } else if line.contains("<MAX> observation") {
            max = line
                .split_once('=')
                .and_then(|(_, v)| v.trim().parse().ok());
        } else if let Some(v) =
            number_after(line, "avg-rtt=").or_else(|| number_after(line, "avg-lat="))
        {
            avg = v.parse().ok();
        } else if let Some(v) = number_after(line, "Total ")
            && line.contains("observations")
        {
            obs = v.parse().ok();
        }
    }
    let get = |p: u64| {
        pct.get(&p)
            .copied()
            .with_context(|| format!("no percentile {} in sockperf output", p as f64 / 1000.0))
    };
    Ok(PingPong {
        avg: avg.context("no avg-rtt/avg-lat in sockperf output")?,
        p50: get(50_000)?,
        p99: get(99_000)?,
        p999: get(99_900)?,
        max: max.unwrap_or(f64::NAN),
        observations: obs.unwrap_or(0),
    })
}

/// Parses `Summary: Message Rate is 590008 [msg/sec]` from `sockperf throughput`.
pub fn parse_msg_rate(output: &str) -> Result<f64> {
    let text = strip_ansi(output);
    text.lines()
        .find_map(|l| number_after(l, "Message Rate is "))
        .context("no `Message Rate is` in sockperf output")?
        .parse()
        .context("bad message rate")
}

// ------------------------------------------------------------------ processes

/// Output of a client that ran to completion.
struct ClientOutput {
    stdout: String,
    stderr: String,
}

/// Runs a client to completion within `timeout`; errors (with its stderr) if it fails.
fn run_client(name: &str, cmd: &mut Command, timeout: Duration) -> Result<ClientOutput> {
    let mut p = Proc::spawn(name, cmd)?;
    let status = p.wait_exit(timeout)?;
    let mut stdout = Vec::new();
    while let Some(l) = p.next_line(Duration::from_millis(300))? {
        stdout.push(l.text);
    }
    let stderr = p.stderr_tail();
    match status {
        Some(s) if s.success() => Ok(ClientOutput {
            stdout: stdout.join("\n"),
            stderr,
        }),
        Some(s) => bail!("{name} failed ({s}): {}", last_lines(&stderr, &stdout)),
        None => {
            p.stop();
            bail!(
                "{name} did not finish within {timeout:?}: {}",
                last_lines(&stderr, &stdout)
            )
        }
    }
}

fn last_lines(stderr: &str, stdout: &[String]) -> String {
    let mut lines: Vec<&str> = stderr
        .lines()
        .chain(stdout.iter().map(String::as_str))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let keep = lines.len().saturating_sub(4);
    lines.drain(..keep);
    strip_ansi(&lines.join(" | "))
}

/// Polls `ss` in `ns` until something listens on TCP `port`.
fn wait_listening(lab: &Lab, ns: &str, port: u16, timeout: Duration) -> Result<()> {
    let end = Instant::now() + timeout;
    let filter = format!("sport = :{port}");
    loop {
        let out = lab.exec(ns, &["ss", "-Hltn", &filter])?;
        if !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
            return Ok(());
        }
        if Instant::now() > end {
            bail!("nothing listens on TCP port {port} in {ns} after {timeout:?}");
        }
        proc::sleep(Duration::from_millis(50))?;
    }
}

/// The final JSON object (with a `tool` field) a provider tool printed, from its stdout lines.
fn final_json(lines: &[String]) -> Option<Value> {
    lines
        .iter()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .find(|v| v.get("tool").is_some())
}

/// Every stdout line left in `p` (waits for the readers to finish once it exited).
fn drain_stdout(p: &mut Proc) -> Result<Vec<String>> {
    let mut v = Vec::new();
    while let Some(l) = p.next_line(Duration::from_millis(300))? {
        v.push(l.text);
    }
    Ok(v)
}

/// Builds commands: pinned, in a namespace, optionally under `perf record`.
struct Runner<'a> {
    lab: &'a Lab,
    bin: PathBuf,
    perf_dir: Option<PathBuf>,
    busy_poll: bool,
    spin_us: Option<u64>,
    tx_checksum: Option<String>,
}

impl Runner<'_> {
    /// `taskset -c 0 [perf record -g -o F --] provider <args>` in the provider namespace.
    fn provider_side(&self, label: &str, stack: Stack, args: &[&str]) -> Command {
        let mut c = self.lab.provider_cmd("taskset");
        c.args(["-c", SERVER_CPU]);
        if stack == Stack::Provider
            && let Some(dir) = &self.perf_dir
        {
            let out = dir.join(format!("tcp-{label}.data"));
            c.args(["perf", "record", "-g", "-q", "-o"])
                .arg(out)
                .arg("--");
        }
        c.arg(&self.bin).args(args);
        if stack == Stack::Provider && self.busy_poll {
            c.arg("--busy-poll");
        }
        if stack == Stack::Provider
            && let Some(us) = self.spin_us
        {
            c.arg(format!("--spin-us={us}"));
        }
        if stack == Stack::Provider
            && let Some(mode) = &self.tx_checksum
        {
            c.arg(format!("--tx-checksum={mode}"));
        }
        c
    }

    /// `taskset -c 1 provider <args>` in the peer namespace (the kernel tools).
    fn peer_tool(&self, args: &[&str]) -> Command {
        let mut c = self.lab.peer_cmd("taskset");
        c.args(["-c", CLIENT_CPU]).arg(&self.bin).args(args);
        c
    }

    /// `taskset -c 1 <program> <args>` in the peer namespace.
    fn peer_program(&self, program: &str, args: &[&str]) -> Command {
        let mut c = self.lab.peer_cmd("taskset");
        c.args(["-c", CLIENT_CPU, program]).args(args);
        c
    }

    fn iface(&self) -> &str {
        &self.lab.provider_if
    }
}

/// A provider process needs a moment after the previous one released the queue (AF_XDP bind
/// can fail with EBUSY right after a close, DESIGN §11).
fn settle() -> Result<()> {
    proc::sleep(Duration::from_millis(300))
}

// ------------------------------------------------------------------ 1. sockperf

/// What one sockperf server gave.
#[derive(Debug)]
struct SockperfRuns {
    ping_pong: std::result::Result<PingPong, String>,
    /// Message rates in [`THROUGHPUT_RUNS`] order.
    rates: Vec<Measured>,
    raw: Value,
}

fn sockperf_all_failed(why: &str) -> SockperfRuns {
    SockperfRuns {
        ping_pong: Err(why.to_owned()),
        rates: vec![Err(why.to_owned()); THROUGHPUT_RUNS.len()],
        raw: json!({ "error": why }),
    }
}

fn sockperf_runs(r: &Runner, stack: Stack, seconds: u64, round: u16) -> SockperfRuns {
    match sockperf_runs_inner(r, stack, seconds, round) {
        Ok(runs) => runs,
        Err(e) => sockperf_all_failed(&format!("{e:#}")),
    }
}

/// Whether this provider binary has the `sockperf-server` subcommand (it lands with the `cli`
/// work; until then the provider's sockperf rows report that it is missing).
fn has_sockperf_server(bin: &std::path::Path) -> bool {
    Command::new(bin)
        .args(["sockperf-server", "--help"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn sockperf_runs_inner(r: &Runner, stack: Stack, seconds: u64, round: u16) -> Result<SockperfRuns> {
    let lab = r.lab;
    if stack == Stack::Provider && !has_sockperf_server(&r.bin) {
        bail!(
            "this provider binary has no `sockperf-server` subcommand (not on this branch yet); not measured"
        );
    }
    let ip = lab.provider_v4.to_string();
    let (port, name) = match stack {
        Stack::Kernel => (PORT_SOCKPERF_KERNEL, "sockperf server (kernel)"),
        Stack::Provider => (PORT_SOCKPERF_PROVIDER, "provider sockperf-server"),
    };
    let port = port + 10 * round;
    let port_s = port.to_string();
    let mut server = match stack {
        Stack::Kernel => {
            let mut c = lab.provider_cmd("taskset");
            c.args(["-c", SERVER_CPU, "sockperf", "server", "--tcp", "-i", &ip])
                .args(["-p", &port_s]);
            let p = Proc::spawn(name, &mut c)?;
            wait_listening(lab, &lab.provider_ns, port, Duration::from_secs(10))?;
            p
        }
        Stack::Provider => {
            let mut p = Proc::spawn(
                name,
                &mut r.provider_side(
                    &format!("sockperf-r{round}"),
                    stack,
                    &[
                        "sockperf-server",
                        "--iface",
                        r.iface(),
                        "--port",
                        &port_s,
                        "--tcp",
                    ],
                ),
            )?;
            p.wait_ready(Duration::from_secs(30))?;
            proc::sleep(Duration::from_millis(300))?;
            p
        }
    };
    let secs = seconds.to_string();
    let timeout = Duration::from_secs(seconds + 30);
    let mut client = |mode: &str, size: &str, extra: &[&str]| -> Result<ClientOutput> {
        let mut args = vec![
            mode, "--tcp", "-i", &ip, "-p", &port_s, "-t", &secs, "-m", size,
        ];
        args.extend_from_slice(extra);
        eprintln!(
            "    sockperf {mode} -m {size} against the {} server",
            stack.name()
        );
        let out = run_client(
            &format!("sockperf {mode} -m {size}"),
            &mut r.peer_program("sockperf", &args),
            timeout,
        )?;
        // A server that died mid-run is worth knowing about even if the client "succeeded".
        if let Some(s) = server.try_status() {
            bail!("the server exited during the run ({s})");
        }
        Ok(out)
    };
    let mut raw = serde_json::Map::new();
    let ping_pong = client("ping-pong", "64", &["--full-rtt"]).and_then(|o| {
        raw.insert("ping_pong_64".into(), o.stdout.clone().into());
        parse_ping_pong(&o.stdout)
            .with_context(|| last_lines(&o.stderr, std::slice::from_ref(&o.stdout)))
    });
    let mut rates = Vec::new();
    for (size, nodelay) in THROUGHPUT_RUNS {
        let extra: &[&str] = if nodelay {
            &["--tcp-avoid-nodelay"]
        } else {
            &[]
        };
        let rate = client("throughput", size, extra).and_then(|o| {
            let key = format!("throughput_{size}{}", if nodelay { "_nodelay" } else { "" });
            raw.insert(key, o.stdout.clone().into());
            parse_msg_rate(&o.stdout)
        });
        rates.push(rate.map_err(|e| format!("{e:#}")));
    }
    let status = server.stop();
    let tail = server.stderr_tail();
    // The provider server prints its counters as JSON on stderr when it stops.
    if let Some(v) = tail
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
    {
        raw.insert("server_counters".into(), v);
    }
    raw.insert("server_exit".into(), status.to_string().into());
    Ok(SockperfRuns {
        ping_pong: ping_pong.map_err(|e| format!("{e:#}")),
        rates,
        raw: Value::Object(raw),
    })
}

// ------------------------------------------------------------------ 2. bulk

/// Direction of a bulk run, seen from the server (provider namespace).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    /// The peer sends, the server receives.
    PeerToServer,
    /// The server sends, the peer receives.
    ServerToPeer,
}

/// One bulk run: the sink's rate, plus both ends' reports.
fn bulk(r: &Runner, stack: Stack, dir: Direction, bytes: u64, port: u16) -> (Measured, Value) {
    match bulk_inner(r, stack, dir, bytes, port) {
        Ok((gbps, raw)) => (Ok(gbps), raw),
        Err(e) => {
            let why = format!("{e:#}");
            (Err(why.clone()), json!({ "error": why }))
        }
    }
}

fn bulk_inner(
    r: &Runner,
    stack: Stack,
    dir: Direction,
    bytes: u64,
    port: u16,
) -> Result<(f64, Value)> {
    let lab = r.lab;
    let port_s = port.to_string();
    let bytes_s = bytes.to_string();
    // Generous: 30 s plus the transfer at 25 MB/s.
    let timeout = Duration::from_secs(30 + bytes / 25_000_000);
    let label = match dir {
        Direction::PeerToServer => format!("bulk-rx-{port}"),
        Direction::ServerToPeer => format!("bulk-tx-{port}"),
    };
    let label = label.as_str();
    let (mut sink, mut source_cmd, sink_name) = match dir {
        Direction::PeerToServer => {
            let args: Vec<&str> = match stack {
                Stack::Kernel => vec!["kernel-tcp-sink", "--port", &port_s],
                Stack::Provider => vec!["tcp-sink", "--iface", r.iface(), "--port", &port_s],
            };
            let sink = Proc::spawn(
                &format!("{} tcp sink", stack.name()),
                &mut r.provider_side(label, stack, &args),
            )?;
            let to = SocketAddr::new(lab.provider_v4.into(), port).to_string();
            let src = r.peer_tool(&["kernel-tcp-source", "--connect", &to, "--bytes", &bytes_s]);
            (sink, src, format!("{} tcp sink", stack.name()))
        }
        Direction::ServerToPeer => {
            let sink = Proc::spawn(
                "peer kernel tcp sink",
                &mut r.peer_tool(&["kernel-tcp-sink", "--port", &port_s]),
            )?;
            let to = SocketAddr::new(lab.peer_v4.into(), port).to_string();
            let src = match stack {
                Stack::Kernel => r.provider_side(
                    label,
                    stack,
                    &["kernel-tcp-source", "--connect", &to, "--bytes", &bytes_s],
                ),
                Stack::Provider => r.provider_side(
                    label,
                    stack,
                    &[
                        "tcp-source",
                        "--iface",
                        r.iface(),
                        "--connect",
                        &to,
                        "--bytes",
                        &bytes_s,
                    ],
                ),
            };
            (sink, src, "peer kernel tcp sink".to_owned())
        }
    };
    sink.wait_ready(Duration::from_secs(30))?;
    if stack == Stack::Provider && dir == Direction::PeerToServer {
        proc::sleep(Duration::from_millis(300))?;
    }
    let source = run_client(
        &format!("{} tcp source", stack.name()),
        &mut source_cmd,
        timeout,
    );
    let sink_done = sink.wait_exit(Duration::from_secs(10))?;
    let sink_lines = drain_stdout(&mut sink)?;
    let progress = sink_lines
        .iter()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .find(|v| v.get("t").is_some());
    let source = match source {
        Ok(o) => o,
        Err(e) => {
            sink.stop();
            let partial = progress.map_or(String::new(), |p| {
                format!(
                    " (sink had {} bytes after {:.1} s)",
                    p["bytes"],
                    p["t"].as_f64().unwrap_or(0.0)
                )
            });
            return Err(e.context(format!("source failed{partial}")));
        }
    };
    if sink_done.is_none() {
        sink.stop();
        bail!(
            "{sink_name} did not finish after the source did; stderr: {}",
            last_lines(&sink.stderr_tail(), &sink_lines)
        );
    }
    let sink_report = final_json(&sink_lines).with_context(|| {
        format!(
            "{sink_name} printed no report: {}",
            last_lines(&sink.stderr_tail(), &sink_lines)
        )
    })?;
    let source_lines: Vec<String> = source.stdout.lines().map(str::to_owned).collect();
    let source_report = final_json(&source_lines);
    let got = sink_report["bytes"].as_u64().unwrap_or(0);
    if got != bytes {
        bail!("{sink_name} received {got} bytes, the source sent {bytes}");
    }
    let gbps = sink_report["gbps"]
        .as_f64()
        .context("sink report without gbps")?;
    Ok((
        gbps,
        json!({ "sink": sink_report, "source": source_report }),
    ))
}

// ------------------------------------------------------------------ 3. connections/s

/// Lets the kernel client in the peer reuse its TIME_WAIT ports at once (timestamps keep that
/// safe) over a wide port range, so the client's own TIME_WAIT never caps the rate. The range
/// starts above the ports the peer's own sinks listen on (5201…): a client socket in TIME_WAIT
/// on such a port would make their bind fail.
fn tune_peer_for_connect_loop(lab: &Lab) -> Result<()> {
    lab.exec_ok(
        &lab.peer_ns,
        &[
            "sysctl",
            "-qw",
            "net.ipv4.tcp_tw_reuse=1",
            "net.ipv4.ip_local_port_range=10000 65000",
        ],
    )?;
    // Linux ≥ 6.14; older kernels reuse after 1 s, which caps the client near 32 k/s.
    let _ = lab.exec(
        &lab.peer_ns,
        &["sysctl", "-qw", "net.ipv4.tcp_tw_reuse_delay=1"],
    );
    Ok(())
}

fn connect_rate(
    r: &Runner,
    stack: Stack,
    seconds: u64,
    parallel: usize,
    round: u16,
) -> (Measured, Value) {
    match connect_rate_inner(r, stack, seconds, parallel, round) {
        Ok((cps, raw)) => (Ok(cps), raw),
        Err(e) => {
            let why = format!("{e:#}");
            (Err(why.clone()), json!({ "error": why }))
        }
    }
}

fn connect_rate_inner(
    r: &Runner,
    stack: Stack,
    seconds: u64,
    parallel: usize,
    round: u16,
) -> Result<(f64, Value)> {
    let lab = r.lab;
    let port = 10 * round
        + match stack {
            Stack::Kernel => PORT_CPS_KERNEL,
            Stack::Provider => PORT_CPS_PROVIDER,
        };
    let port_s = port.to_string();
    let args: Vec<&str> = match stack {
        Stack::Kernel => vec!["kernel-accept-close", "--port", &port_s],
        Stack::Provider => vec!["accept-close", "--iface", r.iface(), "--port", &port_s],
    };
    let mut server = Proc::spawn(
        &format!("{} accept-close", stack.name()),
        &mut r.provider_side(&format!("accept-close-r{round}"), stack, &args),
    )?;
    server.wait_ready(Duration::from_secs(30))?;
    if stack == Stack::Provider {
        proc::sleep(Duration::from_millis(300))?;
    }
    let to = SocketAddr::new(lab.provider_v4.into(), port).to_string();
    let client = run_client(
        "kernel-connect-loop",
        &mut r.peer_tool(&[
            "kernel-connect-loop",
            "--connect",
            &to,
            "--seconds",
            &seconds.to_string(),
            "--parallel",
            &parallel.to_string(),
        ]),
        Duration::from_secs(seconds + 30),
    );
    // Let the last closes finish, then stop the server (it reports on SIGTERM).
    proc::sleep(Duration::from_millis(500))?;
    let alive = server.try_status().is_none();
    server.stop();
    let server_lines = drain_stdout(&mut server)?;
    let server_report = final_json(&server_lines);
    let client = client?;
    if !alive {
        bail!(
            "the server exited during the run: {}",
            last_lines(&server.stderr_tail(), &server_lines)
        );
    }
    let client_lines: Vec<String> = client.stdout.lines().map(str::to_owned).collect();
    let report = final_json(&client_lines).context("kernel-connect-loop printed no report")?;
    let cps = report["cps"].as_f64().context("no cps in the report")?;
    let errors = &report["errors"];
    let failed: u64 = ["refused", "timeouts", "other"]
        .iter()
        .filter_map(|k| errors[k].as_u64())
        .sum();
    if report["connects"].as_u64() == Some(0) {
        bail!("no connection completed ({failed} failed: {errors})");
    }
    Ok((cps, json!({ "client": report, "server": server_report })))
}

// ------------------------------------------------------------------ the bench

/// Metric rows in table order.
const PP_P50: usize = 0;
const PP_P99: usize = 1;
const PP_P999: usize = 2;
/// First of the [`THROUGHPUT_RUNS`] rows.
const TP_FIRST: usize = 3;
const BULK_RX: usize = TP_FIRST + THROUGHPUT_RUNS.len();
const BULK_TX: usize = BULK_RX + 1;
const CPS: usize = BULK_TX + 1;

/// `sockperf throughput` runs: (message size, client TCP_NODELAY). sockperf's throughput mode
/// keeps Nagle on unless `--tcp-avoid-nodelay` is given; both are measured, because with Nagle
/// the client's rate follows the server's ACK turnaround rather than its receive path.
const THROUGHPUT_RUNS: [(&str, bool); 4] =
    [("64", false), ("1400", false), ("64", true), ("1400", true)];

fn empty_rows(bytes: u64, parallel: usize) -> Vec<Row> {
    let row = |metric: String, unit, target| Row {
        metric,
        unit,
        kernel_runs: Vec::new(),
        provider_runs: Vec::new(),
        target,
    };
    let mib = bytes >> 20;
    let mut rows = vec![
        row(
            "ping-pong 64 B RTT p50".into(),
            "µs",
            Target::AtMost(P50_MAX_RATIO),
        ),
        row(
            "ping-pong 64 B RTT p99".into(),
            "µs",
            Target::AtMost(P99_MAX_RATIO),
        ),
        row(
            "ping-pong 64 B RTT p99.9".into(),
            "µs",
            Target::AtMost(P999_MAX_RATIO),
        ),
    ];
    for (size, nodelay) in THROUGHPUT_RUNS {
        rows.push(row(
            format!(
                "throughput {size} B message rate{}",
                if nodelay { ", client NODELAY" } else { "" }
            ),
            "msg/s",
            Target::AtLeast(MSG_RATE_MIN_RATIO),
        ));
    }
    rows.extend([
        row(
            format!("bulk peer → server ({mib} MiB)"),
            "Gb/s",
            Target::AtLeast(BULK_MIN_RATIO),
        ),
        row(
            format!("bulk server → peer ({mib} MiB)"),
            "Gb/s",
            Target::AtLeast(BULK_MIN_RATIO),
        ),
        row(
            format!("connections/s (connect+close, ×{parallel})"),
            "conn/s",
            Target::AtLeast(CPS_MIN_RATIO),
        ),
    ]);
    rows
}

fn push(rows: &mut [Row], i: usize, stack: Stack, m: Measured) {
    match stack {
        Stack::Kernel => rows[i].kernel_runs.push(m),
        Stack::Provider => rows[i].provider_runs.push(m),
    }
}

/// `cargo xtask bench tcp [--seconds S] [--bytes N] [--parallel K] [--rounds R] [--perf]`.
pub fn tcp(opts: &TcpBenchOptions) -> Result<()> {
    provider_bin::require_root("bench tcp")?;
    if opts.seconds < 1 {
        bail!("--seconds must be at least 1");
    }
    if opts.bytes == 0 || opts.parallel == 0 || opts.rounds == 0 || opts.rounds > 50 {
        bail!("--bytes and --parallel must be positive, --rounds 1..=50");
    }
    if crate::cmd::which("sockperf").is_none() {
        bail!("sockperf is not installed (`cargo xtask setup` installs it)");
    }
    proc::install_signal_flag();
    let bin = provider_bin::setup_and_build()?;
    let perf_dir = if opts.perf {
        let d = provider_bin::bench_results_dir()?.join("perf");
        std::fs::create_dir_all(&d)?;
        Some(d)
    } else {
        None
    };
    eprintln!("==> lab up ({} queue(s))", opts.queues);
    let lab = Lab::up(&LabConfig {
        queues: opts.queues,
        provider_tx_checksum: opts.device_tx_checksum,
        ..LabConfig::default()
    })?;
    let r = Runner {
        lab: &lab,
        bin,
        perf_dir,
        busy_poll: opts.busy_poll,
        spin_us: opts.spin_us,
        tx_checksum: opts.tx_checksum.clone(),
    };
    let (s, n, k) = (opts.seconds, opts.bytes, opts.parallel);
    tune_peer_for_connect_loop(&lab)?;
    let mut rows = empty_rows(n, k);
    let mut raw_rounds = Vec::new();
    let mut bulk_port = PORT_BULK;
    for round in 0..opts.rounds as u16 {
        // Alternate which stack goes first, so a drift in the machine's load hits both alike.
        let order = if round % 2 == 0 {
            [Stack::Kernel, Stack::Provider]
        } else {
            [Stack::Provider, Stack::Kernel]
        };
        let tag = format!("round {}/{}", round + 1, opts.rounds);
        let mut raw = serde_json::Map::new();
        for stack in order {
            eprintln!(
                "==> {tag}: sockperf, {s} s per run, {} server",
                stack.name()
            );
            let runs = sockperf_runs(&r, stack, s, round);
            let pp = |f: fn(&PingPong) -> f64| -> Measured {
                runs.ping_pong.as_ref().map(f).map_err(Clone::clone)
            };
            push(&mut rows, PP_P50, stack, pp(|p| p.p50));
            push(&mut rows, PP_P99, stack, pp(|p| p.p99));
            push(&mut rows, PP_P999, stack, pp(|p| p.p999));
            for (i, rate) in runs.rates.iter().enumerate() {
                push(&mut rows, TP_FIRST + i, stack, rate.clone());
            }
            raw.insert(
                format!("sockperf/{}", stack.name()),
                json!({ "ping_pong": runs.ping_pong.as_ref().ok(), "runs": runs.raw }),
            );
            settle()?;
        }
        for (dir, i, what) in [
            (Direction::PeerToServer, BULK_RX, "bulk peer → server"),
            (Direction::ServerToPeer, BULK_TX, "bulk server → peer"),
        ] {
            for stack in order {
                eprintln!(
                    "==> {tag}: {what}, {} MiB, {} server",
                    n >> 20,
                    stack.name()
                );
                bulk_port += 1;
                let (v, b) = bulk(&r, stack, dir, n, bulk_port);
                push(&mut rows, i, stack, v);
                raw.insert(format!("{what}/{}", stack.name()), b);
                settle()?;
            }
        }
        for stack in order {
            eprintln!(
                "==> {tag}: connections/s, {s} s, {k} in flight, {} server",
                stack.name()
            );
            let (v, c) = connect_rate(&r, stack, s, k, round);
            push(&mut rows, CPS, stack, v);
            raw.insert(format!("connections/{}", stack.name()), c);
            settle()?;
        }
        raw_rounds.push(Value::Object(raw));
    }

    println!(
        "\nTCP, lab {} (veth, {} queue(s), MTU {}), server side on CPU {SERVER_CPU}, kernel-stack clients in the peer on CPU {CLIENT_CPU}; {s} s per sockperf / connect run, {} MiB per bulk run, median of {} round(s){}",
        lab.name,
        opts.queues,
        lab.mtu,
        n >> 20,
        opts.rounds,
        match (opts.busy_poll, opts.spin_us) {
            (true, _) => "; provider processes with --busy-poll".to_string(),
            (false, Some(us)) => format!("; provider processes with --spin-us {us}"),
            (false, None) => String::new(),
        } + &opts
            .tx_checksum
            .as_ref()
            .map(|m| format!("; --tx-checksum {m}"))
            .unwrap_or_default()
            + if opts.device_tx_checksum {
                "; provider veth tx-checksumming on"
            } else {
                ""
            }
    );
    print!("{}", render_table(&rows));
    for (i, note) in failure_notes(&rows).iter().enumerate() {
        println!("  [{}] {note}", i + 1);
    }
    println!(
        "  (ratio = provider / kernel; RTT from `sockperf ping-pong --full-rtt`; message rate is the sockperf client's send rate (its throughput mode keeps Nagle on; NODELAY rows add --tcp-avoid-nodelay); bulk = the sink's bytes / (accept → EOF); connections/s counted by the client, which closes first — TIME_WAIT stays on the kernel peer)"
    );
    if let Some(d) = &r.perf_dir {
        println!(
            "  perf recordings of the provider processes: {}/tcp-*.data",
            d.display()
        );
    }
    let result = json!({
        "bench": "tcp",
        "unix_time": unix_now(),
        "lab": { "queues": lab.queues, "mtu": lab.mtu },
        "seconds": s,
        "bulk_bytes": n,
        "parallel": k,
        "rounds": opts.rounds,
        "server_cpu": SERVER_CPU,
        "client_cpu": CLIENT_CPU,
        "perf": opts.perf,
        "busy_poll": opts.busy_poll,
        "spin_us": opts.spin_us,
        "tx_checksum": opts.tx_checksum,
        "device_tx_checksum": opts.device_tx_checksum,
        "rows": rows.iter().map(Row::json).collect::<Vec<_>>(),
        "raw": raw_rounds,
    });
    write_result("tcp", &result)?;
    lab.down()
}

fn fmt_value(v: f64, unit: &str) -> String {
    match unit {
        "µs" => format!("{v:.1}"),
        "Gb/s" => format!("{v:.2}"),
        _ => format!("{v:.0}"),
    }
}

/// Failure reasons in order of first appearance; the same reason is listed once.
fn distinct_failures(rows: &[Row]) -> Vec<String> {
    let mut notes: Vec<String> = Vec::new();
    for row in rows {
        for m in row.kernel_runs.iter().chain(&row.provider_runs) {
            if let Err(e) = m
                && !notes.contains(e)
            {
                notes.push(e.clone());
            }
        }
    }
    notes
}

/// The table: one row per metric. A cell is the median of the runs that worked, followed by
/// the note numbers of runs that failed; `FAILED[n]` if none worked.
pub fn render_table(rows: &[Row]) -> String {
    use std::fmt::Write as _;
    let notes = distinct_failures(rows);
    let note_refs = |runs: &[Measured]| -> String {
        let mut ids: Vec<usize> = runs
            .iter()
            .filter_map(|m| m.as_ref().err())
            .filter_map(|e| notes.iter().position(|x| x == e).map(|i| i + 1))
            .collect();
        ids.dedup();
        ids.iter().map(|i| format!("[{i}]")).collect()
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "  {:<46} {:>7} {:>14} {:>14} {:>8} {:>8}  result",
        "metric", "unit", "kernel", "provider", "ratio", "target"
    );
    for row in rows {
        let cell = |runs: &[Measured]| match aggregate(runs) {
            Ok(v) => format!("{}{}", fmt_value(v, row.unit), note_refs(runs)),
            Err(_) => format!("FAILED{}", note_refs(runs)),
        };
        let ratio = row.ratio();
        let ratio = if ratio.is_finite() {
            format!("{ratio:.2}×")
        } else {
            "—".into()
        };
        let result = match row.met() {
            Some(true) => "met",
            Some(false) => "NOT met",
            None => "",
        };
        let _ = writeln!(
            out,
            "  {:<46} {:>7} {:>14} {:>14} {:>8} {:>8}  {}",
            row.metric,
            row.unit,
            cell(&row.kernel_runs),
            cell(&row.provider_runs),
            ratio,
            row.target.text(),
            result
        );
    }
    out
}

/// The failure notes, numbered as in [`render_table`], each on one line.
pub fn failure_notes(rows: &[Row]) -> Vec<String> {
    distinct_failures(rows)
        .into_iter()
        .map(|e| {
            let one_line = e
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(" | ");
            one_line.chars().take(600).collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PING_PONG: &str = "sockperf: \u{1b}[2;35m== version #3.7-no.git == \u{1b}[0m
sockperf[CLIENT] send on:sockperf: using recvfrom() to block on socket(s)

[ 0] IP = 198.18.0.1      PORT = 11111 # TCP
sockperf: Warmup stage (sending a few dummy messages)...
sockperf: Starting test...
sockperf: Test end (interrupted by timer)
sockperf: Test ended
sockperf: [Total Run] RunTime=2.000 sec; Warm up time=400 msec; SentMessages=31944; ReceivedMessages=31943
sockperf: ========= Printing statistics for Server No: 0
sockperf: [Valid Duration] RunTime=1.550 sec; SentMessages=25053; ReceivedMessages=25053
sockperf: \u{1b}[2;35m====> avg-rtt=61.813 (std-dev=92.867)\u{1b}[0m
sockperf: # dropped messages = 0; # duplicated messages = 0; # out-of-order messages = 0
sockperf: Summary: Round trip is 61.813 usec
sockperf: \u{1b}[2;35mTotal 25053 observations\u{1b}[0m; each percentile contains 250.53 observations
sockperf: ---> <MAX> observation = 4442.350
sockperf: ---> percentile 99.999 = 4442.350
sockperf: ---> percentile 99.990 = 3915.288
sockperf: ---> percentile 99.900 = 1150.662
sockperf: ---> percentile 99.000 =   97.710
sockperf: ---> percentile 90.000 =   67.178
sockperf: ---> percentile 75.000 =   63.332
sockperf: ---> percentile 50.000 =   60.034
sockperf: ---> percentile 25.000 =   51.139
sockperf: ---> <MIN> observation =   17.930
";

    const THROUGHPUT: &str = "sockperf: Total of 1180302 messages sent in 2.000 sec

sockperf: \u{1b}[2;35mNOTE: test was performed, using msg-size=64. For getting maximum throughput consider using --msg-size=1472\u{1b}[0m
sockperf: Summary: Message Rate is 590008 [msg/sec]
sockperf: Summary: BandWidth is 36.011 MBps (288.090 Mbps)
";

    #[test]
    fn parses_real_sockperf_output() {
        let p = parse_ping_pong(PING_PONG).unwrap();
        assert_eq!(
            p,
            PingPong {
                avg: 61.813,
                p50: 60.034,
                p99: 97.71,
                p999: 1150.662,
                max: 4442.35,
                observations: 25053,
            }
        );
        assert_eq!(parse_msg_rate(THROUGHPUT).unwrap(), 590008.0);
        assert!(parse_msg_rate("nothing").is_err());
        assert!(parse_ping_pong(THROUGHPUT).is_err());
        assert_eq!(strip_ansi("a\u{1b}[2;35mb\u{1b}[0mc"), "abc");
    }

    fn row(metric: &str, unit: &'static str, k: &[Measured], p: &[Measured], t: Target) -> Row {
        Row {
            metric: metric.into(),
            unit,
            kernel_runs: k.to_vec(),
            provider_runs: p.to_vec(),
            target: t,
        }
    }

    #[test]
    fn table_ratios_targets_and_failures() {
        let boom = || Err::<f64, String>("boom".into());
        let rows = vec![
            row("p50", "µs", &[Ok(60.0)], &[Ok(30.0)], Target::AtMost(0.7)),
            row(
                "rate",
                "msg/s",
                &[Ok(100.0), Ok(90.0), Ok(200.0)],
                &[Ok(120.0), boom(), Ok(120.0)],
                Target::AtLeast(1.5),
            ),
            row("bulk", "Gb/s", &[Ok(5.0)], &[boom()], Target::AtLeast(1.0)),
            row("p99", "µs", &[Ok(1.0)], &[Ok(2.0)], Target::None),
        ];
        assert_eq!(rows[0].met(), Some(true));
        // Medians: kernel 100, provider 120 (the failed run is left out, but noted).
        assert_eq!(rows[1].kernel(), Ok(100.0));
        assert_eq!(rows[1].provider(), Ok(120.0));
        assert_eq!(rows[1].met(), Some(false));
        assert_eq!(rows[2].met(), Some(false));
        assert_eq!(rows[3].met(), None);
        let t = render_table(&rows);
        assert!(t.contains("0.50×"), "{t}");
        assert!(t.contains("120[1]"), "{t}");
        assert!(t.contains("FAILED[1]"), "{t}");
        assert!(t.contains("NOT met"), "{t}");
        assert_eq!(failure_notes(&rows), vec!["boom".to_owned()]);
        let j = rows[2].json();
        assert_eq!(j["provider_runs"][0]["error"], "boom");
        assert!(j["provider"].is_null());
        assert!(j["ratio"].is_null());
        assert_eq!(aggregate(&[]), Err("not run".into()));
    }
}
