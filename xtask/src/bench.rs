//! `cargo xtask bench <name>` (DESIGN §12): benchmarks print a table with the ratio and write
//! `bench-results/<name>.json`. They are measurements, never assertions: a missed target is
//! reported, not an error.
//!
//! - `xdp`: cost of the XDP steering program per packet (`provider bench-xdp`, i.e.
//!   `BPF_PROG_TEST_RUN` repeat mode) on each path, IPv4 and IPv6, against the `parse_redirect`
//!   reference (same parse, unconditional redirect) and a bare `XDP_PASS`, in the same run.
//! - `udp-rx`: UDP receive rate of a kernel socket vs the provider in the same lab, same
//!   generator, pinned CPUs (sink on CPU 0, generator on CPU 1).
//! - `tcp`: sockperf latency and message rate, bulk Gb/s each way and connections/s, kernel
//!   vs provider in one run (see [`crate::bench_tcp`]).
//! - `close`: WSPCloseSocket vs kernel close(2) — hard-close RST latency on the wire, graceful
//!   close of a 1 MiB backlog, closes per second (`bench_close.rs`).
//! - `scale`: memory per idle established connection, 100 k connections from the kernel
//!   client, kernel server vs provider (`scale.rs`).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::lab::{Lab, LabConfig};
use crate::pktgen::{self, GenResult, Target};
use crate::proc::{self, Proc};
use crate::provider_bin;
use crate::stats::u64_at;

#[path = "bench_close.rs"]
mod close_bench;
pub use close_bench::{CloseOptions, HARD_CLOSE_P50_MAX_NS, close};

/// Known benchmark names, for the error on an unknown one.
pub const NAMES: &[&str] = &["xdp", "udp-rx", "tcp", "close", "async", "apps", "scale"];

/// Target ratios from the issues (reported, not enforced). `steer` is held against the
/// `parse_redirect` reference (its own parse plus an unconditional redirect), not the bare pass.
pub const XDP_STEER_MAX_RATIO: f64 = 1.2;
pub const UDP_RX_MIN_RATIO: f64 = 3.0;

pub fn unknown(name: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "unknown benchmark {name:?}; known benchmarks: {}",
        NAMES.join(", ")
    )
}

pub(crate) fn write_result(name: &str, v: &Value) -> Result<()> {
    let path = provider_bin::bench_results_dir()?.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(v)?)
        .with_context(|| format!("write {}", path.display()))?;
    println!("results written to {}", path.display());
    Ok(())
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `cargo xtask bench xdp [--repeat N] [--rounds R]`.
pub fn xdp(repeat: Option<u64>, rounds: Option<u64>) -> Result<()> {
    provider_bin::require_root("bench xdp")?;
    proc::install_signal_flag();
    let bin = provider_bin::setup_and_build()?;
    let mut c = std::process::Command::new(&bin);
    c.arg("bench-xdp");
    if let Some(r) = repeat {
        c.args(["--repeat", &r.to_string()]);
    }
    if let Some(r) = rounds {
        c.args(["--rounds", &r.to_string()]);
    }
    let mut p = Proc::spawn("provider bench-xdp", &mut c)?;
    p.wait_success(Duration::from_secs(300))?;
    let mut lines = Vec::new();
    while let Some(l) = p.next_line(Duration::from_millis(200))? {
        lines.push(l);
    }
    let v = proc::last_json(&lines).context("provider bench-xdp printed no JSON line")?;
    let f = |k: &str| {
        v.get(k)
            .and_then(Value::as_f64)
            .with_context(|| format!("bench-xdp result has no {k}: {v}"))
    };
    let pass = f("pass_ns")?;
    let reference = [f("parse_redirect_v4_ns")?, f("parse_redirect_v6_ns")?];
    let cases = v
        .get("cases")
        .and_then(Value::as_array)
        .with_context(|| format!("bench-xdp result has no cases: {v}"))?;
    println!(
        "\nXDP program cost, BPF_PROG_TEST_RUN repeat={}, best of {} rounds",
        v.get("repeat").map_or("?".into(), Value::to_string),
        v.get("rounds").map_or("?".into(), Value::to_string)
    );
    println!(
        "  {:<52} {:>9} {:>9} {:>11}  target ≤ {XDP_STEER_MAX_RATIO}× parse_redirect",
        "program", "ns/packet", "vs pass", "vs p_redir"
    );
    println!(
        "  {:<52} {:>9.1} {:>8.2}× {:>11}",
        "bare XDP_PASS", pass, 1.0, ""
    );
    for (fam, r) in ["v4", "v6"].iter().zip(reference) {
        println!(
            "  {:<52} {:>9.1} {:>8.2}× {:>10.2}×",
            format!("parse_redirect {fam} (reference)"),
            r,
            r / pass,
            1.0
        );
    }
    let mut worst = 0f64;
    let mut rows = Vec::new();
    for c in cases {
        let label = c.get("label").and_then(Value::as_str).unwrap_or("?");
        let ns = c.get("ns").and_then(Value::as_f64).unwrap_or(f64::NAN);
        let vs_ref = c
            .get("vs_parse_redirect")
            .and_then(Value::as_f64)
            .unwrap_or(f64::NAN);
        let in_target = c.get("in_target").and_then(Value::as_bool).unwrap_or(true);
        let verdict = if !in_target {
            "— (STEER hash fallback, outside the target)"
        } else if vs_ref <= XDP_STEER_MAX_RATIO {
            worst = worst.max(vs_ref);
            "met"
        } else {
            worst = worst.max(vs_ref);
            "NOT met"
        };
        println!(
            "  {:<52} {:>9.1} {:>8.2}× {:>10.2}×  {verdict}",
            format!("steer, {label}"),
            ns,
            ns / pass,
            vs_ref
        );
        let mut row = c.clone();
        row["target_met"] = json!(in_target.then_some(vs_ref <= XDP_STEER_MAX_RATIO));
        rows.push(row);
    }
    let met = worst <= XDP_STEER_MAX_RATIO;
    println!(
        "  target: steer ≤ {XDP_STEER_MAX_RATIO}× parse_redirect on every targeted path — {} \
         (worst {worst:.2}×)",
        if met { "met" } else { "NOT met" }
    );
    write_result(
        "xdp",
        &json!({
            "bench": "xdp",
            "unix_time": unix_now(),
            "raw": v,
            "pass_ns": pass,
            "parse_redirect_v4_ns": reference[0],
            "parse_redirect_v6_ns": reference[1],
            "cases": rows,
            "steer_hit_ns": f("steer_hit_ns").ok(),
            "steer_hit_wildcard_ns": f("steer_hit_wildcard_ns").ok(),
            "steer_miss_ns": f("steer_miss_ns").ok(),
            "target": "steer ≤ target_max_ratio × parse_redirect (same family), every in_target case",
            "target_max_ratio": XDP_STEER_MAX_RATIO,
            "target_worst_ratio": worst,
            "target_met": met,
        }),
    )
}

/// One sink measurement: the sink's pps lines while the generator ran.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SinkRun {
    pub sink: &'static str,
    /// Median of the pps samples taken while the generator ran, first and last dropped.
    pub pps: f64,
    pub samples: Vec<f64>,
    pub received: u64,
    pub generator: GenResult,
    /// The sink's closing counters (provider-sink: engine stats), if it printed them.
    pub final_stats: Option<Value>,
}

/// How much longer than the generator the sinks run (generator start-up, settling).
pub const SINK_EXTRA_SECS: u64 = 4;

/// Median of `samples` (0 when empty).
pub fn median(samples: &[f64]) -> f64 {
    let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The samples read while the generator ran, without the first and last (partial periods).
pub fn window(lines: &[(Instant, Value)], start: Instant, end: Instant) -> Vec<f64> {
    let inside: Vec<f64> = lines
        .iter()
        .filter(|(t, _)| *t >= start && *t <= end)
        .filter_map(|(_, v)| v.get("pps").and_then(Value::as_f64))
        .collect();
    if inside.len() > 2 {
        inside[1..inside.len() - 1].to_vec()
    } else {
        inside
    }
}

/// Starts a sink (already pinned / in its namespace), waits for `ready`, runs the generator
/// pinned to CPU 1, then stops the sink and takes the median rate.
fn measure(
    sink_name: &'static str,
    mut sink: Proc,
    bin: &Path,
    target: &Target,
    size: usize,
    seconds: u64,
) -> Result<SinkRun> {
    sink.wait_ready(Duration::from_secs(30))?;
    // Let the sink settle (XDP attach, fill ring stocked) before frames arrive.
    proc::sleep(Duration::from_millis(300))?;
    let start = Instant::now();
    let generator = pktgen::live_frames(bin, target, size, seconds, None, Some(1))?;
    let end = Instant::now();
    // The sink stops by itself (its --seconds covers the run plus [`SINK_EXTRA_SECS`]) and
    // then prints its final counters; SIGTERM only if it overstays.
    let status = match sink.wait_exit(Duration::from_secs(seconds + SINK_EXTRA_SECS + 15))? {
        Some(s) => s,
        None => sink.stop(),
    };
    let mut lines = Vec::new();
    let mut received = 0;
    while let Some(l) = sink.next_line(Duration::from_millis(300))? {
        if let Ok(v) = serde_json::from_str::<Value>(l.text.trim()) {
            if let Some(c) = v.get("count").and_then(Value::as_u64) {
                received = received.max(c);
            }
            lines.push((l.at, v));
        }
    }
    if lines.is_empty() {
        bail!(
            "{sink_name} printed no samples ({status}); stderr:\n{}",
            sink.stderr_tail()
        );
    }
    let samples = window(&lines, start, end);
    // provider-sink prints the engine's counters as one JSON line on stderr when it ends.
    let final_stats = sink.stderr_tail().lines().rev().find_map(|l| {
        serde_json::from_str::<Value>(l.trim())
            .ok()
            .filter(Value::is_object)
    });
    Ok(SinkRun {
        sink: sink_name,
        pps: median(&samples),
        samples,
        received,
        generator,
        final_stats,
    })
}

/// `cargo xtask bench udp-rx [--seconds S] [--size N]`.
pub fn udp_rx(seconds: u64, size: usize) -> Result<()> {
    provider_bin::require_root("bench udp-rx")?;
    if seconds < 1 {
        bail!("--seconds must be at least 1");
    }
    proc::install_signal_flag();
    let bin = provider_bin::setup_and_build()?;
    eprintln!("==> lab up (1 queue)");
    let lab = Lab::up(&LabConfig {
        queues: 1,
        ..LabConfig::default()
    })?;
    const PORT: u16 = 9;
    let dst = SocketAddr::new(IpAddr::V4(lab.provider_v4), PORT);
    let target = Target::lab(&lab, dst)?;
    let sink_secs = (seconds + SINK_EXTRA_SECS).to_string();
    let pinned = |lab: &Lab| {
        let mut c = lab.provider_cmd("taskset");
        c.args(["-c", "0"]).arg(&bin);
        c
    };

    eprintln!("==> (a) kernel socket sink on CPU 0, generator on CPU 1, {seconds} s");
    let sink = Proc::spawn(
        "provider kernel-sink",
        pinned(&lab)
            .args(["kernel-sink", "--port", &PORT.to_string()])
            .args(["--attach-pass", &lab.provider_if, "--seconds", &sink_secs]),
    )?;
    let kernel = measure(
        "kernel socket (recvmmsg)",
        sink,
        &bin,
        &target,
        size,
        seconds,
    )?;

    eprintln!("==> (b) provider sink on CPU 0, generator on CPU 1, {seconds} s");
    let sink = Proc::spawn(
        "provider provider-sink",
        pinned(&lab)
            .args(["provider-sink", "--iface", &lab.provider_if])
            .args(["--port", &PORT.to_string(), "--seconds", &sink_secs]),
    )?;
    let provider = measure(
        "provider (XDP → AF_XDP → WSP UDP)",
        sink,
        &bin,
        &target,
        size,
        seconds,
    )?;

    let ratio = if kernel.pps > 0.0 {
        provider.pps / kernel.pps
    } else {
        f64::NAN
    };
    let met = ratio >= UDP_RX_MIN_RATIO;
    println!(
        "\nUDP receive rate, lab {} (veth, 1 queue), {} B payload ({} B frames), {seconds} s per run, sink CPU 0, generator CPU 1",
        lab.name, size, kernel.generator.frame_len
    );
    println!(
        "  {:<36} {:>12} {:>14} {:>12}",
        "receiver", "rx pps", "generator pps", "received"
    );
    for r in [&kernel, &provider] {
        println!(
            "  {:<36} {:>12.0} {:>14.0} {:>12}",
            r.sink, r.pps, r.generator.pps, r.received
        );
    }
    // Frames the AF_XDP socket handed to the engine, per second of generation: the datapath's
    // rate before the socket layer (the WSP socket row above includes the copy into the socket
    // queue and the application's receive calls).
    let xsk_pps = provider
        .final_stats
        .as_ref()
        .and_then(|st| u64_at(st, &["engine", "rx_frames"]))
        .map(|n| n as f64 / provider.generator.seconds.max(1e-9));
    if let Some(x) = xsk_pps {
        println!(
            "  {:<36} {:>12.0} {:>14} {:>12}",
            "provider, at the AF_XDP socket", x, "", ""
        );
    }
    if let Some(st) = &provider.final_stats {
        let at = |p: &[&str]| u64_at(st, p).map_or("?".into(), |n| n.to_string());
        let q0 = |k: &str| at(&["queues", "0", "xsk", k]);
        println!(
            "  provider drops: xsk rx_dropped {}, rx_ring_full {}, fill ring empty {}; socket queue full {}",
            q0("rx_dropped"),
            q0("rx_ring_full"),
            q0("rx_fill_ring_empty_descs"),
            at(&["sockets", "udp_dropped_queue_full"])
        );
    }
    println!(
        "  ratio provider / kernel: {ratio:.2}× at the WSP socket, {:.2}× at the AF_XDP socket — target ≥ {UDP_RX_MIN_RATIO}×: {}",
        xsk_pps.map_or(f64::NAN, |x| x / kernel.pps),
        if met { "met" } else { "NOT met" }
    );
    println!(
        "  (rx pps = median of the sink's 250 ms samples while the generator ran, first and last dropped)"
    );
    let result = json!({
        "bench": "udp-rx",
        "unix_time": unix_now(),
        "lab": { "queues": lab.queues, "mtu": lab.mtu },
        "seconds": seconds,
        "payload": size,
        "kernel": kernel,
        "provider": provider,
        "provider_xsk_pps": xsk_pps,
        "ratio": ratio,
        "target_min_ratio": UDP_RX_MIN_RATIO,
        "target_met": met,
    });
    write_result("udp-rx", &result)?;
    lab.down()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_window() {
        assert_eq!(median(&[]), 0.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let lines: Vec<(Instant, Value)> = [
            (0, 1.0),
            (250, 10.0),
            (500, 20.0),
            (750, 30.0),
            (1000, 5.0),
            (1250, 0.0),
        ]
        .into_iter()
        .map(|(ms, pps)| (at(ms), json!({ "pps": pps })))
        .collect();
        // Generator ran from 100 ms to 1100 ms: 250..1000 inside, first and last dropped.
        assert_eq!(window(&lines, at(100), at(1100)), vec![20.0, 30.0]);
        assert!(
            unknown("nope")
                .to_string()
                .contains("xdp, udp-rx, tcp, close")
        );
    }
}
