//! `cargo xtask bench async` (issue 5 item 6): the tokio types on the provider against the same
//! tokio code on kernel sockets, one run, one lab, the same unmodified clients in the peer
//! namespace; the server process pinned to CPU 0, the client to CPU 1.
//!
//! 1. `examples/tokio_sockperf` (a sockperf TCP server written once against tokio's
//!    `AsyncRead + AsyncWrite`; `--iface` runs it on `provider::aio`, `--kernel` on
//!    `tokio::net`) with `sockperf ping-pong -m 64` (RTT p50/p99/p99.9, `--full-rtt`) and
//!    `sockperf throughput -m 64` (message rate).
//! 2. `examples/http_server` (hyper 1; provider or `--kernel`) with `wrk -t1 -c32` on `GET /`:
//!    requests/s. Skipped with a note if `wrk` is missing (`cargo xtask setup` installs it).
//!
//! The provider runs twice: with the datapath on the runtime's own thread (`--drive
//! application`, `provider::aio::drive`; the default) and on the engine's queue threads
//! (`--drive threads`), both pinned to the same one server CPU as the kernel server.
//!
//! Every measurement runs `--rounds` times (the order of the stacks alternates per round); the
//! table shows the median, `bench-results/async.json` every run.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::bench::{median, unix_now, write_result};
use crate::bench_tcp::{CLIENT_CPU, SERVER_CPU, parse_msg_rate, parse_ping_pong, strip_ansi};
use crate::lab::{Lab, LabConfig};
use crate::proc::{self, Proc};
use crate::{cmd, provider_bin};

#[derive(Debug, Clone)]
pub struct AsyncBenchOptions {
    /// Seconds per sockperf / wrk run.
    pub seconds: u64,
    /// Rounds; each metric is the median.
    pub rounds: u32,
    /// wrk connections.
    pub connections: u32,
}

impl Default for AsyncBenchOptions {
    fn default() -> Self {
        AsyncBenchOptions {
            seconds: 5,
            rounds: 3,
            connections: 32,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Stack {
    Kernel,
    /// The datapath on the runtime's thread (`--drive application`, the examples' default).
    Provider,
    /// The engine's queue threads run the datapath (`--drive threads`).
    ProviderThreads,
}

impl Stack {
    fn name(self) -> &'static str {
        match self {
            Stack::Kernel => "kernel",
            Stack::Provider => "provider",
            Stack::ProviderThreads => "provider-threads",
        }
    }
}

/// `cargo build --release -p provider --examples`; the examples directory.
fn build_examples() -> Result<PathBuf> {
    eprintln!("==> cargo build --release -p provider --examples");
    cmd::run(cmd::cargo().args(["build", "--release", "-p", "provider", "--examples"]))?;
    let dir = provider_bin::target_dir().join("release/examples");
    for ex in ["tokio_sockperf", "http_server"] {
        if !dir.join(ex).is_file() {
            bail!("{} missing after the build", dir.join(ex).display());
        }
    }
    Ok(dir)
}

/// Start `example` pinned to the server CPU in the provider namespace and wait for `ready`.
fn server(lab: &Lab, dir: &Path, example: &str, stack: Stack, listen: &str) -> Result<Proc> {
    let mut c = lab.provider_cmd("taskset");
    c.args(["-c", SERVER_CPU]).arg(dir.join(example));
    match stack {
        Stack::Kernel => c.arg("--kernel"),
        Stack::Provider => c.args(["--iface", &lab.provider_if, "--drive", "application"]),
        Stack::ProviderThreads => c.args(["--iface", &lab.provider_if, "--drive", "threads"]),
    };
    c.args(["--listen", listen]);
    let mut p = Proc::spawn(&format!("{example} ({})", stack.name()), &mut c)?;
    p.wait_ready(Duration::from_secs(30))?;
    proc::sleep(Duration::from_millis(300))?;
    Ok(p)
}

/// Run a client pinned to the client CPU in the peer namespace; its stdout.
pub(crate) fn client(lab: &Lab, program: &str, args: &[&str], timeout: Duration) -> Result<String> {
    let mut c: Command = lab.peer_cmd("taskset");
    c.args(["-c", CLIENT_CPU, program]).args(args);
    let mut p = Proc::spawn(program, &mut c)?;
    let status = p.wait_exit(timeout)?;
    let mut out = Vec::new();
    while let Some(l) = p.next_line(Duration::from_millis(300))? {
        out.push(l.text);
    }
    match status {
        Some(s) if s.success() => Ok(out.join("\n")),
        Some(s) => bail!("{program} failed ({s}): {}", p.stderr_tail()),
        None => {
            p.stop();
            bail!("{program} did not finish within {timeout:?}")
        }
    }
}

/// `Requests/sec:  12345.67` from wrk.
pub fn parse_wrk(output: &str) -> Result<f64> {
    strip_ansi(output)
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .context("no `Requests/sec:` in wrk output")?
        .trim()
        .parse()
        .context("bad wrk requests/s")
}

/// One stack, one round: every metric by name.
fn measure(
    lab: &Lab,
    dir: &Path,
    stack: Stack,
    opts: &AsyncBenchOptions,
    round: u32,
) -> Vec<(&'static str, Result<f64>)> {
    let mut out = Vec::new();
    let ip = lab.provider_v4.to_string();
    let secs = opts.seconds.to_string();
    let timeout = Duration::from_secs(opts.seconds + 30);
    let port = (12000 + round * 10 + stack as u32).to_string();
    match server(lab, dir, "tokio_sockperf", stack, &format!("{ip}:{port}")) {
        Ok(mut srv) => {
            eprintln!("    sockperf ping-pong -m 64 ({})", stack.name());
            let pp = client(
                lab,
                "sockperf",
                &[
                    "ping-pong",
                    "--tcp",
                    "-i",
                    &ip,
                    "-p",
                    &port,
                    "-t",
                    &secs,
                    "-m",
                    "64",
                    "--full-rtt",
                ],
                timeout,
            )
            .and_then(|o| parse_ping_pong(&o));
            match pp {
                Ok(p) => {
                    out.push(("rtt_p50_us", Ok(p.p50)));
                    out.push(("rtt_p99_us", Ok(p.p99)));
                    out.push(("rtt_p999_us", Ok(p.p999)));
                }
                Err(e) => {
                    let m = format!("{e:#}");
                    for k in ["rtt_p50_us", "rtt_p99_us", "rtt_p999_us"] {
                        out.push((k, Err(anyhow::anyhow!("{m}"))));
                    }
                }
            }
            eprintln!("    sockperf throughput -m 64 ({})", stack.name());
            let tp = client(
                lab,
                "sockperf",
                &[
                    "throughput",
                    "--tcp",
                    "-i",
                    &ip,
                    "-p",
                    &port,
                    "-t",
                    &secs,
                    "-m",
                    "64",
                ],
                timeout,
            )
            .and_then(|o| parse_msg_rate(&o));
            out.push(("msg_rate_per_s", tp));
            srv.stop();
        }
        Err(e) => {
            let m = format!("{e:#}");
            for k in ["rtt_p50_us", "rtt_p99_us", "rtt_p999_us", "msg_rate_per_s"] {
                out.push((k, Err(anyhow::anyhow!("{m}"))));
            }
        }
    }
    let _ = proc::sleep(Duration::from_millis(500));
    if cmd::which("wrk").is_none() {
        out.push((
            "http_requests_per_s",
            Err(anyhow::anyhow!(
                "wrk is not installed (`cargo xtask setup` installs it)"
            )),
        ));
        return out;
    }
    let port = (8100 + round * 10 + stack as u32).to_string();
    let rps =
        server(lab, dir, "http_server", stack, &format!("{ip}:{port}")).and_then(|mut srv| {
            eprintln!("    wrk -c{} GET / ({})", opts.connections, stack.name());
            let url = format!("http://{ip}:{port}/");
            let c = opts.connections.to_string();
            let r = client(
                lab,
                "wrk",
                &["-t1", "-c", &c, "-d", &format!("{secs}s"), &url],
                timeout,
            )
            .and_then(|o| parse_wrk(&o));
            srv.stop();
            r
        });
    out.push(("http_requests_per_s", rps));
    let _ = proc::sleep(Duration::from_millis(500));
    out
}

const METRICS: &[(&str, &str, bool)] = &[
    ("rtt_p50_us", "sockperf ping-pong 64 B RTT p50 (µs)", false),
    ("rtt_p99_us", "sockperf ping-pong 64 B RTT p99 (µs)", false),
    (
        "rtt_p999_us",
        "sockperf ping-pong 64 B RTT p99.9 (µs)",
        false,
    ),
    ("msg_rate_per_s", "sockperf throughput 64 B (msg/s)", true),
    ("http_requests_per_s", "wrk GET / (requests/s)", true),
];

pub fn run(opts: &AsyncBenchOptions) -> Result<()> {
    provider_bin::require_root("bench async")?;
    if opts.seconds < 1 || opts.rounds == 0 || opts.rounds > 50 || opts.connections == 0 {
        bail!("--seconds ≥ 1, --rounds 1..=50, --connections ≥ 1");
    }
    if cmd::which("sockperf").is_none() {
        bail!("sockperf is not installed (`cargo xtask setup` installs it)");
    }
    proc::install_signal_flag();
    crate::setup::run()?;
    let dir = build_examples()?;
    eprintln!("==> lab up (1 queue)");
    let lab = Lab::up(&LabConfig {
        queues: 1,
        ..LabConfig::default()
    })?;
    let mut samples: std::collections::BTreeMap<(&str, Stack), Vec<f64>> = Default::default();
    let mut failures: Vec<String> = Vec::new();
    let mut raw = Vec::new();
    for round in 0..opts.rounds {
        let order = if round % 2 == 0 {
            [Stack::Kernel, Stack::Provider, Stack::ProviderThreads]
        } else {
            [Stack::ProviderThreads, Stack::Provider, Stack::Kernel]
        };
        for stack in order {
            eprintln!("==> round {}/{}: {}", round + 1, opts.rounds, stack.name());
            let mut run = serde_json::Map::new();
            for (k, v) in measure(&lab, &dir, stack, opts, round) {
                match v {
                    Ok(x) => {
                        samples.entry((k, stack)).or_default().push(x);
                        run.insert(k.into(), json!(x));
                    }
                    Err(e) => {
                        let m = format!("{} {k}: {e:#}", stack.name());
                        if !failures.contains(&m) {
                            failures.push(m);
                        }
                        run.insert(k.into(), Value::Null);
                    }
                }
            }
            raw.push(json!({ "round": round, "stack": stack.name(), "metrics": run }));
        }
    }
    let fmt = |v: Option<f64>| v.map_or_else(|| "failed".to_string(), |x| format!("{x:.1}"));
    let mut table = format!(
        "{:<42} {:>14} {:>14} {:>8} {:>16} {:>8}\n",
        "metric (median)", "kernel tokio", "provider aio", "ratio", "queue threads", "ratio"
    );
    let mut summary = serde_json::Map::new();
    for &(key, label, _higher_better) in METRICS {
        let get = |s: Stack| samples.get(&(key, s)).map(|v| median(v));
        let (k, p, t) = (
            get(Stack::Kernel),
            get(Stack::Provider),
            get(Stack::ProviderThreads),
        );
        let ratio = |x: Option<f64>| match (k, x) {
            (Some(k), Some(x)) if k > 0.0 => format!("{:.2}", x / k),
            _ => "-".into(),
        };
        table += &format!(
            "{label:<42} {:>14} {:>14} {:>8} {:>16} {:>8}\n",
            fmt(k),
            fmt(p),
            ratio(p),
            fmt(t),
            ratio(t)
        );
        summary.insert(
            key.into(),
            json!({ "kernel": k, "provider": p, "provider_threads": t }),
        );
    }
    println!("\n{table}");
    for f in &failures {
        println!("note: {f}");
    }
    write_result(
        "async",
        &json!({
            "bench": "async",
            "time": unix_now(),
            "seconds": opts.seconds,
            "rounds": opts.rounds,
            "wrk_connections": opts.connections,
            "median": summary,
            "runs": raw,
            "failures": failures,
        }),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk() {
        let out = "Running 5s test @ http://198.18.0.1:8100/\n  1 threads and 32 connections\n\
                   Requests/sec:  41234.56\nTransfer/sec:      4.80MB\n";
        assert_eq!(parse_wrk(out).unwrap(), 41234.56);
        assert!(parse_wrk("nothing").is_err());
    }
}
