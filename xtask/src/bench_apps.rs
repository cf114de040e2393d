//! `cargo xtask bench apps` (issue 11 item 4): unmodified servers from Debian packages on the
//! provider (`provider run`, the preload) against the same binaries on the kernel's sockets,
//! one run, one lab, the same clients in the peer namespace; servers pinned to CPU 0, clients
//! to CPU 1.
//!
//! 1. nginx (packaged configuration; one worker, so the master and its worker share the stack
//!    across a fork) with `wrk -t1 -c32` on a 1 KiB file and on a 1 MiB file: requests/s.
//! 2. redis-server (packaged configuration, no persistence) with `redis-benchmark -c 32 -t
//!    set,get`: requests/s each.
//! 3. the real `sockperf server --tcp` with `sockperf ping-pong -m 64` (RTT p50/p99) and
//!    `sockperf throughput -m 64` (message rate).
//!
//! Every measurement runs `--rounds` times (the order of the stacks alternates per round); the
//! table shows the median, `bench-results/apps.json` every run.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::bench::{median, unix_now, write_result};
use crate::bench_async::{client, parse_wrk};
use crate::bench_tcp::{SERVER_CPU, parse_msg_rate, parse_ping_pong, strip_ansi};
use crate::lab::{Lab, LabConfig};
use crate::proc::{self, Proc};
use crate::{cmd, provider_bin};

#[derive(Debug, Clone)]
pub struct AppsBenchOptions {
    /// Seconds per wrk / sockperf run.
    pub seconds: u64,
    /// Rounds; each metric is the median.
    pub rounds: u32,
    /// Client connections (wrk, redis-benchmark).
    pub connections: u32,
}

impl Default for AppsBenchOptions {
    fn default() -> Self {
        AppsBenchOptions {
            seconds: 5,
            rounds: 3,
            connections: 32,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Stack {
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

/// A scratch directory for the servers' files, readable by nginx's unprivileged worker.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Scratch> {
        use std::os::unix::fs::PermissionsExt;
        let d = std::env::temp_dir().join(format!("provider-bench-apps-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("www"))?;
        for p in [&d, &d.join("www")] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))?;
        }
        let small: Vec<u8> = (0..1024u32).map(|i| b'a' + (i % 26) as u8).collect();
        let large: Vec<u8> = (0..1u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for (name, body) in [("1k.bin", small), ("1m.bin", large)] {
            let f = d.join("www").join(name);
            std::fs::write(&f, body)?;
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644))?;
        }
        Ok(Scratch(d))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The packaged nginx.conf with `workers` workers, our pid file and logs, and one server block.
fn nginx_conf(dir: &Path, port: u16, workers: u32) -> Result<PathBuf> {
    let packaged = std::fs::read_to_string("/etc/nginx/nginx.conf")
        .context("/etc/nginx/nginx.conf (`cargo xtask setup` installs nginx-light)")?;
    let mut conf = String::new();
    for line in packaged.lines() {
        let t = line.trim_start();
        let l = if t.starts_with("worker_processes ") {
            format!("worker_processes {workers};")
        } else if t.starts_with("pid ") {
            format!("pid {}/nginx-{port}.pid;", dir.display())
        } else if t.starts_with("error_log ") {
            format!("error_log {}/error.log;", dir.display())
        } else if t.starts_with("access_log ") {
            // Logging every request measures the disk, not the stack.
            "access_log off;".into()
        } else if t.starts_with("include /etc/nginx/sites-enabled/") {
            format!("server {{ listen {port}; root {}/www; }}", dir.display())
        } else {
            line.to_string()
        };
        conf += &l;
        conf.push('\n');
    }
    let path = dir.join(format!("nginx-{port}.conf"));
    std::fs::write(&path, conf)?;
    Ok(path)
}

/// Start `program` pinned to the server CPU in the provider namespace, on `stack`, and wait
/// until it accepts connections on `port`.
fn server(
    lab: &Lab,
    bin: &Path,
    stack: Stack,
    name: &str,
    program: &[&str],
    port: u16,
) -> Result<Proc> {
    let mut c = lab.provider_cmd("taskset");
    c.args(["-c", SERVER_CPU]);
    if stack == Stack::Provider {
        c.arg(bin).args(["run", "--iface", &lab.provider_if, "--"]);
    }
    c.args(program);
    let mut p = Proc::spawn(&format!("{name} ({})", stack.name()), &mut c)?;
    let ip = lab.provider_v4.to_string();
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        proc::check_interrupted()?;
        if let Some(s) = p.try_status() {
            bail!("{name} exited ({s}): {}", p.stderr_tail());
        }
        let probe = lab
            .peer_cmd("bash")
            .args(["-c", &format!("exec 3<>/dev/tcp/{ip}/{port}")])
            .stderr(std::process::Stdio::null())
            .status();
        if probe.is_ok_and(|s| s.success()) {
            break;
        }
        if Instant::now() > end {
            bail!(
                "{name} did not accept on port {port} within 30 s: {}",
                p.stderr_tail()
            );
        }
        proc::sleep(Duration::from_millis(100))?;
    }
    proc::sleep(Duration::from_millis(300))?;
    Ok(p)
}

/// wrk's requests/s, refusing a run with socket errors or non-2xx answers.
fn parse_wrk_clean(out: &str) -> Result<f64> {
    if out.contains("Socket errors") || out.contains("Non-2xx") {
        bail!("wrk saw errors: {}", strip_ansi(out));
    }
    parse_wrk(out)
}

/// `SET: 50658.56 requests per second, p50=0.503 msec` → (SET, GET) from redis-benchmark -q.
pub fn parse_redis_benchmark(out: &str) -> Result<(f64, f64)> {
    let text = strip_ansi(out).replace('\r', "\n");
    let rate = |t: &str| -> Result<f64> {
        text.lines()
            .filter_map(|l| l.trim().strip_prefix(t))
            .filter_map(|rest| rest.trim().split_once(" requests per second"))
            .filter_map(|(n, _)| n.trim().parse().ok())
            .next_back()
            .with_context(|| format!("no `{t} … requests per second` in redis-benchmark output"))
    };
    Ok((rate("SET:")?, rate("GET:")?))
}

type Metrics = Vec<(&'static str, Result<f64>)>;

fn failed(out: &mut Metrics, keys: &[&'static str], e: &anyhow::Error) {
    let m = format!("{e:#}");
    for &k in keys {
        out.push((k, Err(anyhow::anyhow!("{m}"))));
    }
}

fn measure(
    lab: &Lab,
    bin: &Path,
    dir: &Path,
    stack: Stack,
    opts: &AppsBenchOptions,
    round: u32,
) -> Metrics {
    let mut out = Vec::new();
    let ip = lab.provider_v4.to_string();
    let secs = opts.seconds.to_string();
    let conns = opts.connections.to_string();
    let timeout = Duration::from_secs(opts.seconds + 60);
    let base = 13000 + (round * 10 + stack as u32) as u16 * 3;

    // nginx
    const NGINX: &[&str] = &["nginx_1k_rps", "nginx_1m_rps"];
    let port = base;
    let r = nginx_conf(dir, port, 1).and_then(|conf| {
        let conf = conf.to_string_lossy().into_owned();
        server(
            lab,
            bin,
            stack,
            "nginx",
            &["nginx", "-c", &conf, "-g", "daemon off;"],
            port,
        )
    });
    match r {
        Ok(mut srv) => {
            for (key, file) in [("nginx_1k_rps", "1k.bin"), ("nginx_1m_rps", "1m.bin")] {
                eprintln!("    wrk -c{conns} /{file} ({})", stack.name());
                let url = format!("http://{ip}:{port}/{file}");
                let r = client(
                    lab,
                    "wrk",
                    &["-t1", "-c", &conns, "-d", &format!("{secs}s"), &url],
                    timeout,
                )
                .and_then(|o| parse_wrk_clean(&o));
                out.push((key, r));
            }
            srv.stop();
        }
        Err(e) => failed(&mut out, NGINX, &e),
    }
    let _ = proc::sleep(Duration::from_millis(500));

    // redis
    const REDIS: &[&str] = &["redis_set_rps", "redis_get_rps"];
    let port = base + 1;
    let p = port.to_string();
    let d = dir.to_string_lossy().into_owned();
    let pidfile = format!("{d}/redis-{port}.pid");
    let r = server(
        lab,
        bin,
        stack,
        "redis-server",
        &[
            "redis-server",
            "/etc/redis/redis.conf",
            "--bind",
            &ip,
            "--port",
            &p,
            "--daemonize",
            "no",
            "--supervised",
            "no",
            "--protected-mode",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &d,
            "--pidfile",
            &pidfile,
            "--logfile",
            "",
        ],
        port,
    );
    match r {
        Ok(mut srv) => {
            eprintln!(
                "    redis-benchmark -c{conns} -t set,get ({})",
                stack.name()
            );
            let n = (opts.seconds * 40_000).to_string();
            let r = client(
                lab,
                "redis-benchmark",
                &[
                    "-h", &ip, "-p", &p, "-c", &conns, "-n", &n, "-t", "set,get", "-q",
                ],
                timeout,
            )
            .and_then(|o| parse_redis_benchmark(&o));
            match r {
                Ok((set, get)) => {
                    out.push(("redis_set_rps", Ok(set)));
                    out.push(("redis_get_rps", Ok(get)));
                }
                Err(e) => failed(&mut out, REDIS, &e),
            }
            srv.stop();
        }
        Err(e) => failed(&mut out, REDIS, &e),
    }
    let _ = proc::sleep(Duration::from_millis(500));

    // sockperf server
    const SOCKPERF: &[&str] = &["sockperf_p50_us", "sockperf_p99_us", "sockperf_msg_rate"];
    let port = base + 2;
    let p = port.to_string();
    match server(
        lab,
        bin,
        stack,
        "sockperf server",
        &["sockperf", "server", "--tcp", "-i", &ip, "-p", &p],
        port,
    ) {
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
                    &p,
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
                Ok(v) => {
                    out.push(("sockperf_p50_us", Ok(v.p50)));
                    out.push(("sockperf_p99_us", Ok(v.p99)));
                }
                Err(e) => failed(&mut out, &SOCKPERF[..2], &e),
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
                    &p,
                    "-t",
                    &secs,
                    "-m",
                    "64",
                ],
                timeout,
            )
            .and_then(|o| parse_msg_rate(&o));
            out.push(("sockperf_msg_rate", tp));
            srv.stop();
        }
        Err(e) => failed(&mut out, SOCKPERF, &e),
    }
    let _ = proc::sleep(Duration::from_millis(500));
    out
}

/// (key, label, higher is better).
const METRICS: &[(&str, &str, bool)] = &[
    ("nginx_1k_rps", "nginx, wrk GET 1 KiB (requests/s)", true),
    ("nginx_1m_rps", "nginx, wrk GET 1 MiB (requests/s)", true),
    (
        "redis_set_rps",
        "redis, redis-benchmark SET (requests/s)",
        true,
    ),
    (
        "redis_get_rps",
        "redis, redis-benchmark GET (requests/s)",
        true,
    ),
    (
        "sockperf_p50_us",
        "sockperf server, ping-pong 64 B p50 (µs)",
        false,
    ),
    (
        "sockperf_p99_us",
        "sockperf server, ping-pong 64 B p99 (µs)",
        false,
    ),
    (
        "sockperf_msg_rate",
        "sockperf server, throughput 64 B (msg/s)",
        true,
    ),
];

pub fn run(opts: &AppsBenchOptions) -> Result<()> {
    provider_bin::require_root("bench apps")?;
    if opts.seconds < 1 || opts.rounds == 0 || opts.rounds > 50 || opts.connections == 0 {
        bail!("--seconds ≥ 1, --rounds 1..=50, --connections ≥ 1");
    }
    proc::install_signal_flag();
    let bin = provider_bin::setup_and_build()?;
    for tool in [
        "nginx",
        "redis-server",
        "redis-benchmark",
        "wrk",
        "sockperf",
    ] {
        if cmd::which(tool).is_none() {
            bail!("{tool} is not installed (`cargo xtask setup` installs it)");
        }
    }
    let dir = Scratch::new()?;
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
            [Stack::Kernel, Stack::Provider]
        } else {
            [Stack::Provider, Stack::Kernel]
        };
        for stack in order {
            eprintln!("==> round {}/{}: {}", round + 1, opts.rounds, stack.name());
            let mut run = serde_json::Map::new();
            for (k, v) in measure(&lab, &bin, &dir.0, stack, opts, round) {
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
        "{:<46} {:>12} {:>12} {:>8}  {}\n",
        "metric (median)", "kernel", "provider", "ratio", "(ratio > 1 is better)"
    );
    let mut summary = serde_json::Map::new();
    for &(key, label, higher_better) in METRICS {
        let get = |s: Stack| samples.get(&(key, s)).map(|v| median(v));
        let (k, p) = (get(Stack::Kernel), get(Stack::Provider));
        // Latency rows as kernel/provider, so every ratio reads "above 1 is the provider ahead".
        let ratio = match (k, p) {
            (Some(k), Some(p)) if k > 0.0 && p > 0.0 => {
                Some(if higher_better { p / k } else { k / p })
            }
            _ => None,
        };
        table += &format!(
            "{label:<46} {:>12} {:>12} {:>8}\n",
            fmt(k),
            fmt(p),
            ratio.map_or("-".into(), |r| format!("{r:.2}×")),
        );
        summary.insert(
            key.into(),
            json!({ "kernel": k, "provider": p, "ratio": ratio }),
        );
    }
    println!("\n{table}");
    println!(
        "latency rows are kernel ÷ provider; the others provider ÷ kernel. Target: every row ≥ 1.0×, nginx ≥ 1.5×."
    );
    for f in &failures {
        println!("note: {f}");
    }
    write_result(
        "apps",
        &json!({
            "bench": "apps",
            "time": unix_now(),
            "seconds": opts.seconds,
            "rounds": opts.rounds,
            "connections": opts.connections,
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
    fn parses_redis_benchmark_quiet_output_with_progress_lines() {
        let out = " SET: rps=31772.0 (overall: 31645.4) avg_msec=0.899 (overall: 0.899)\r\
                   SET: 50658.56 requests per second, p50=0.503 msec\n\
                   GET: rps=2752.0 (overall: 52923.1)\r GET: 54525.63 requests per second, p50=0.511 msec\n";
        assert_eq!(parse_redis_benchmark(out).unwrap(), (50658.56, 54525.63));
        assert!(parse_redis_benchmark("SET: 1 requests per second").is_err());
    }

    #[test]
    fn wrk_with_errors_is_refused() {
        let ok = "Requests/sec:  41234.56\n";
        assert_eq!(parse_wrk_clean(ok).unwrap(), 41234.56);
        let bad = "  Socket errors: connect 0, read 3, write 0, timeout 0\nRequests/sec:  4.0\n";
        assert!(parse_wrk_clean(bad).is_err());
    }
}
