//! The 100 k-connection scale run (issue 10, "Scale"), shared by the lab test
//! `tests/tests/scale_e2e.rs` and `cargo xtask bench scale`.
//!
//! In a lab: a server in the provider namespace (`provider scale-server` over the provider, or
//! `provider kernel-scale-server` on kernel sockets) and the Python client
//! (`scale_client.py`, one process per server port: see [`CONNS_PER_PROCESS`]) in the peer
//! namespace, which open `conns` connections to 198.18.0.1 spread over several server ports
//! (one peer address and ≈50 k ephemeral ports per server port: the 4-tuple limit per address
//! pair is per server port) and hold them all. Then:
//! memory of the idle connections, a sample echoes distinct messages (checked byte for byte
//! by the client), memory again, the client closes everything (FIN first from the peer, so the
//! server side leaves no TIME_WAIT) and the server closes each connection at its EOF and waits
//! for its stack's connection count to reach 0.
//!
//! Memory: the server process's RSS and heap in use (glibc `mallinfo2`) against the values
//! right after its listeners were set up; kernel memory from `/proc/slabinfo` (global, so other
//! work on the machine shows up as noise) before the client starts and with every connection
//! idle. In a provider run the slab delta is the kernel client's sockets alone; in a kernel
//! run it is client plus server, so the kernel server's own cost is the difference.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::lab::{Lab, PROVIDER_V4};
use crate::proc::Proc;

/// The client script, run with `python3 -c`.
pub const CLIENT_PY: &str = include_str!("scale_client.py");

/// Slab caches that hold a kernel TCP socket's memory (socket, inode + dentry of the socket
/// file, file, and what request/TIME_WAIT minisockets and skbs take).
pub const SOCKET_CACHES: &[&str] = &[
    "TCP",
    "request_sock_TCP",
    "tw_sock_TCP",
    "sock_inode_cache",
    "dentry",
    "filp",
    "eventpoll_epi",
    "eventpoll_pwq",
    "skbuff_head_cache",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Server {
    Provider,
    Kernel,
}

impl Server {
    pub fn name(self) -> &'static str {
        match self {
            Server::Provider => "provider",
            Server::Kernel => "kernel",
        }
    }
}

#[derive(Clone, Debug)]
pub struct ScaleOptions {
    pub conns: usize,
    pub ports: Vec<u16>,
    /// Client handshakes in flight at once.
    pub inflight: usize,
    /// Connections that echo a message, and its size.
    pub echo_sample: usize,
    pub echo_size: usize,
    /// Pause between the last accept and the idle measurement.
    pub settle: Duration,
    /// Extra flags for `provider scale-server` (e.g. `--time-wait-ms`).
    pub provider_args: Vec<String>,
    /// Where the provider writes its stats snapshot (provider runs).
    pub stats_file: Option<PathBuf>,
    /// Limit for each phase.
    pub phase_timeout: Duration,
}

impl Default for ScaleOptions {
    fn default() -> Self {
        ScaleOptions {
            conns: 100_000,
            ports: ports_for(100_000, 7400),
            inflight: 512,
            echo_sample: 1000,
            echo_size: 256,
            settle: Duration::from_secs(2),
            provider_args: Vec::new(),
            stats_file: None,
            phase_timeout: Duration::from_secs(300),
        }
    }
}

/// Live slab bytes (`active_objs × objsize`) per cache.
pub type Slab = BTreeMap<String, u64>;

pub fn read_slab() -> Result<Slab> {
    let text = std::fs::read_to_string("/proc/slabinfo").context("read /proc/slabinfo")?;
    let mut m = Slab::new();
    for line in text.lines().skip(2) {
        let w: Vec<&str> = line.split_whitespace().collect();
        if w.len() < 4 {
            continue;
        }
        let (Ok(active), Ok(size)) = (w[1].parse::<u64>(), w[3].parse::<u64>()) else {
            continue;
        };
        *m.entry(w[0].to_owned()).or_default() += active * size;
    }
    Ok(m)
}

/// Per-cache byte deltas `after − before` of [`SOCKET_CACHES`], and their sum.
pub fn slab_delta(before: &Slab, after: &Slab) -> (BTreeMap<String, i64>, i64) {
    let mut d = BTreeMap::new();
    let mut sum = 0;
    for &c in SOCKET_CACHES {
        let v = *after.get(c).unwrap_or(&0) as i64 - *before.get(c).unwrap_or(&0) as i64;
        d.insert(c.to_owned(), v);
        sum += v;
    }
    (d, sum)
}

/// The `TCP:` line of `/proc/net/sockstat` in `ns` (inuse is per namespace; mem is pages,
/// machine-wide).
pub fn sockstat_tcp(lab: &Lab, ns: &str) -> Result<BTreeMap<String, u64>> {
    let text = lab.exec_ok(ns, &["cat", "/proc/net/sockstat"])?;
    let line = text
        .lines()
        .find(|l| l.starts_with("TCP:"))
        .context("no TCP line in sockstat")?;
    let w: Vec<&str> = line.split_whitespace().skip(1).collect();
    Ok(w.chunks(2)
        .filter_map(|p| Some((p[0].to_owned(), p.get(1)?.parse().ok()?)))
        .collect())
}

/// Everything one run measured and saw.
#[derive(Debug, Clone)]
pub struct ScaleRun {
    pub server: Server,
    pub conns: usize,
    /// The client's `established` event (retries, seconds).
    pub client_established: Value,
    /// The server's `accepted` event.
    pub accepted: Value,
    /// The server's `measure` with every connection idle, before any data moved.
    pub idle: Value,
    /// The provider's stats file at that moment (provider runs).
    pub stats_file_idle: Option<Value>,
    pub client_echoed: Value,
    pub server_echoed: Value,
    /// The server's `measure` right after the echo, and after another settle.
    pub after_echo: Value,
    pub after_echo_settled: Value,
    pub client_closed: Value,
    pub server_closed: Value,
    /// Slab bytes per socket cache, idle − before the client started.
    pub slab_idle_delta: BTreeMap<String, i64>,
    pub slab_idle_delta_sum: i64,
    /// sockstat TCP (server namespace) before and idle.
    pub sockstat_before: BTreeMap<String, u64>,
    pub sockstat_idle: BTreeMap<String, u64>,
    pub secs: f64,
}

fn num(v: &Value, k: &str) -> f64 {
    v.get(k).and_then(Value::as_f64).unwrap_or(0.0)
}

impl ScaleRun {
    /// Server RSS growth per connection, idle, bytes.
    pub fn rss_per_conn(&self, m: &Value) -> f64 {
        (num(m, "rss") - num(m, "rss_base")) / self.conns as f64
    }

    /// Server heap-in-use growth per connection, bytes.
    pub fn heap_per_conn(&self, m: &Value) -> f64 {
        (num(m, "heap") - num(m, "heap_base")) / self.conns as f64
    }

    /// Slab bytes of the socket caches per connection (see the module doc for whose).
    pub fn slab_per_conn(&self) -> f64 {
        self.slab_idle_delta_sum as f64 / self.conns as f64
    }

    pub fn to_json(&self) -> Value {
        json!({
            "server": self.server.name(),
            "conns": self.conns,
            "idle_rss_per_conn": self.rss_per_conn(&self.idle),
            "idle_heap_per_conn": self.heap_per_conn(&self.idle),
            "after_echo_rss_per_conn": self.rss_per_conn(&self.after_echo),
            "after_echo_heap_per_conn": self.heap_per_conn(&self.after_echo),
            "after_echo_settled_heap_per_conn": self.heap_per_conn(&self.after_echo_settled),
            "slab_idle_per_conn": self.slab_per_conn(),
            "slab_idle_delta": self.slab_idle_delta,
            "sockstat_before": self.sockstat_before,
            "sockstat_idle": self.sockstat_idle,
            "client_established": self.client_established,
            "accepted": self.accepted,
            "idle": self.idle,
            "stats_file_idle": self.stats_file_idle,
            "client_echoed": self.client_echoed,
            "server_echoed": self.server_echoed,
            "after_echo": self.after_echo,
            "after_echo_settled": self.after_echo_settled,
            "client_closed": self.client_closed,
            "server_closed": self.server_closed,
            "secs": self.secs,
        })
    }
}

/// The next JSON line with `"event": event` (other JSON events are errors).
fn wait_event(p: &mut Proc, event: &str, timeout: Duration) -> Result<Value> {
    let end = Instant::now() + timeout;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!(
                "{}: no {event:?} event within {timeout:?}; stderr:\n{}",
                p.name(),
                p.stderr_tail()
            );
        }
        let Some(line) = p.next_line(left)? else {
            if p.try_status().is_some() {
                bail!(
                    "{} exited before {event:?}; stderr:\n{}",
                    p.name(),
                    p.stderr_tail()
                );
            }
            continue;
        };
        let Ok(v) = serde_json::from_str::<Value>(&line.text) else {
            eprintln!("[{}] {}", p.name(), line.text);
            continue;
        };
        match v.get("event").and_then(Value::as_str) {
            Some(e) if e == event => return Ok(v),
            _ => bail!("{}: expected {event:?}, got {v}", p.name()),
        }
    }
}

/// Most descriptors one process may hold here: the hard RLIMIT_NOFILE of these machines is
/// 20 000 and raising it needs CAP_SYS_RESOURCE, which they do not grant. So the peer's
/// connections are spread over client processes, one per server port, at most this many each
/// (and a kernel server is one process per port too; the provider needs no descriptor per
/// connection and serves every port from one process).
pub const CONNS_PER_PROCESS: usize = 12_500;

/// Server ports for `conns` connections: one per [`CONNS_PER_PROCESS`], from `first`.
pub fn ports_for(conns: usize, first: u16) -> Vec<u16> {
    (0..conns.div_ceil(CONNS_PER_PROCESS).max(1) as u16)
        .map(|i| first + i)
        .collect()
}

/// `total` split over `parts` as evenly as possible.
fn split(total: usize, parts: usize) -> Vec<usize> {
    (0..parts)
        .map(|i| total / parts + usize::from(i < total % parts))
        .collect()
}

fn wait_all(ps: &mut [Proc], event: &str, timeout: Duration) -> Result<Vec<Value>> {
    ps.iter_mut()
        .map(|p| wait_event(p, event, timeout))
        .collect()
}

fn send_all(ps: &mut [Proc], lines: &[String]) -> Result<()> {
    for (p, l) in ps.iter_mut().zip(lines) {
        p.send_line(l)?;
    }
    Ok(())
}

fn sum(vs: &[Value], k: &str) -> f64 {
    vs.iter().map(|v| num(v, k)).sum()
}

/// Several servers' `measure`/`accepted`/… events as one: memory and counters summed, the
/// first server's stats (the provider's only one), seconds the longest.
fn merge(vs: &[Value]) -> Value {
    let mut m = json!({});
    for k in [
        "rss",
        "rss_base",
        "heap",
        "heap_base",
        "n",
        "conns",
        "bytes",
        "closed",
        "eof",
        "errors",
        "unexpected_data",
        "connections_left",
        "ok",
        "bad",
        "sample",
        "retries",
    ] {
        if vs.iter().any(|v| v.get(k).is_some()) {
            m[k] = (sum(vs, k) as u64).into();
        }
    }
    m["secs"] = vs.iter().map(|v| num(v, "secs")).fold(0.0, f64::max).into();
    if let Some(e) = vs.first().and_then(|v| v.get("event")) {
        m["event"] = e.clone();
    }
    if let Some(st) = vs.first().and_then(|v| v.get("stats")) {
        m["stats"] = st.clone();
    }
    m["processes"] = vs.len().into();
    m
}

/// One run against `server`. `bin` is the `provider` binary.
pub fn run(lab: &Lab, bin: &Path, server: Server, o: &ScaleOptions) -> Result<ScaleRun> {
    let t0 = Instant::now();
    let join = |ps: &[u16]| ps.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
    // Ephemeral ports of the peer: 51 000 per server port, ample for each client's share.
    lab.exec_ok(
        &lab.peer_ns,
        &["sysctl", "-qw", "net.ipv4.ip_local_port_range=10000 60999"],
    )?;
    let per_port = split(o.conns, o.ports.len());
    if per_port.iter().any(|&n| n > CONNS_PER_PROCESS) {
        bail!(
            "{} connections over {} ports: more than {CONNS_PER_PROCESS} per port (see ports_for)",
            o.conns,
            o.ports.len()
        );
    }
    let sample = o.echo_sample.min(o.conns);
    let sample_per_port = split(sample, o.ports.len());
    // Servers: (ports, connections) each.
    let plan: Vec<(Vec<u16>, usize)> = match server {
        Server::Provider => vec![(o.ports.clone(), o.conns)],
        Server::Kernel => o
            .ports
            .iter()
            .zip(&per_port)
            .map(|(&p, &n)| (vec![p], n))
            .collect(),
    };
    let mut servers = Vec::new();
    for (i, (ports, n)) in plan.iter().enumerate() {
        let mut cmd = lab.provider_cmd(bin);
        match server {
            Server::Provider => {
                cmd.arg("scale-server").args(["--iface", &lab.provider_if]);
                if let Some(f) = &o.stats_file {
                    cmd.arg("--stats-file").arg(f);
                }
                cmd.args(&o.provider_args);
            }
            Server::Kernel => {
                cmd.arg("kernel-scale-server");
            }
        }
        cmd.args(["--ports", &join(ports), "--conns", &n.to_string()]);
        let mut p =
            Proc::spawn_with_stdin(&format!("{} scale server {i}", server.name()), &mut cmd)?;
        p.wait_ready(Duration::from_secs(60))?;
        servers.push(p);
    }
    // The echo bytes each server sees.
    let server_echo: Vec<String> = match server {
        Server::Provider => vec![format!("echo {}", sample * o.echo_size)],
        Server::Kernel => sample_per_port
            .iter()
            .map(|k| format!("echo {}", k * o.echo_size))
            .collect(),
    };
    let slab_before = read_slab()?;
    let sockstat_before = sockstat_tcp(lab, &lab.provider_ns)?;

    let inflight = (o.inflight / o.ports.len()).max(32).to_string();
    let mut clients = Vec::new();
    for (i, (&port, &n)) in o.ports.iter().zip(&per_port).enumerate() {
        let mut c = lab.peer_cmd("python3");
        c.args(["-u", "-c", CLIENT_PY]).args([
            &PROVIDER_V4.to_string(),
            &port.to_string(),
            &n.to_string(),
            &inflight,
        ]);
        clients.push(Proc::spawn_with_stdin(
            &format!("scale client {i}"),
            &mut c,
        )?);
    }
    let client_established = merge(&wait_all(&mut clients, "established", o.phase_timeout)?);
    let accepted = merge(&wait_all(&mut servers, "accepted", o.phase_timeout)?);
    eprintln!(
        "{}: {} connections established in {:.1} s (client retries {})",
        server.name(),
        o.conns,
        num(&client_established, "secs"),
        client_established["retries"]
    );
    let measure = |servers: &mut Vec<Proc>| -> Result<Value> {
        for p in servers.iter_mut() {
            p.send_line("measure")?;
        }
        Ok(merge(&wait_all(servers, "measure", o.phase_timeout)?))
    };
    std::thread::sleep(o.settle);
    let idle = measure(&mut servers)?;
    let slab_idle = read_slab()?;
    let sockstat_idle = sockstat_tcp(lab, &lab.provider_ns)?;
    let stats_file_idle = match (&o.stats_file, server) {
        (Some(f), Server::Provider) => {
            // The writer runs every 500 ms: a snapshot taken after the measure.
            std::thread::sleep(Duration::from_millis(1200));
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("read stats file {}", f.display()))?;
            Some(serde_json::from_str(&text)?)
        }
        _ => None,
    };
    let (slab_idle_delta, slab_idle_delta_sum) = slab_delta(&slab_before, &slab_idle);

    send_all(&mut servers, &server_echo)?;
    let client_echo: Vec<String> = sample_per_port
        .iter()
        .map(|k| format!("echo {k} {}", o.echo_size))
        .collect();
    send_all(&mut clients, &client_echo)?;
    let client_echoed = merge(&wait_all(&mut clients, "echoed", o.phase_timeout)?);
    let server_echoed = merge(&wait_all(&mut servers, "echoed", o.phase_timeout)?);
    let after_echo = measure(&mut servers)?;
    std::thread::sleep(o.settle);
    let after_echo_settled = measure(&mut servers)?;

    for p in servers.iter_mut().chain(clients.iter_mut()) {
        p.send_line("close")?;
    }
    let client_closed = merge(&wait_all(&mut clients, "closed", o.phase_timeout)?);
    let server_closed = merge(&wait_all(&mut servers, "closed", o.phase_timeout)?);
    for p in clients.iter_mut().chain(servers.iter_mut()) {
        p.send_line("quit")?;
    }
    for p in clients.iter_mut().chain(servers.iter_mut()) {
        let _ = p.wait_exit(Duration::from_secs(30))?;
    }
    Ok(ScaleRun {
        server,
        conns: o.conns,
        client_established,
        accepted,
        idle,
        stats_file_idle,
        client_echoed,
        server_echoed,
        after_echo,
        after_echo_settled,
        client_closed,
        server_closed,
        slab_idle_delta,
        slab_idle_delta_sum,
        sockstat_before,
        sockstat_idle,
        secs: t0.elapsed().as_secs_f64(),
    })
}

/// `cargo xtask bench scale` options.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub conns: usize,
    /// Rounds; kernel and provider alternate, medians reported.
    pub rounds: u32,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

/// `cargo xtask bench scale`: the same `conns` idle connections from the same kernel client,
/// served by kernel sockets and by the provider, in one lab; memory per idle established
/// connection for each. A measurement, never an assertion.
pub fn bench(o: &BenchOptions) -> Result<()> {
    crate::provider_bin::require_root("bench scale")?;
    crate::proc::install_signal_flag();
    let bin = crate::provider_bin::setup_and_build()?;
    eprintln!("==> lab up (1 queue)");
    let lab = Lab::up(&crate::lab::LabConfig::default())?;
    let stats_file = std::env::temp_dir().join(format!("provider-stats-{}.json", lab.name));
    let so = ScaleOptions {
        conns: o.conns,
        ports: ports_for(o.conns, 7400),
        stats_file: Some(stats_file.clone()),
        ..ScaleOptions::default()
    };
    let mut runs: Vec<ScaleRun> = Vec::new();
    for round in 0..o.rounds.max(1) {
        for server in [Server::Kernel, Server::Provider] {
            eprintln!(
                "==> round {} of {}: {} server, {} connections",
                round + 1,
                o.rounds.max(1),
                server.name(),
                o.conns
            );
            let r = run(&lab, &bin, server, &so);
            let _ = std::fs::remove_file(&stats_file);
            runs.push(r?);
        }
    }
    let of = |s: Server, f: &dyn Fn(&ScaleRun) -> f64| {
        median(runs.iter().filter(|r| r.server == s).map(f).collect())
    };
    let k_rss = of(Server::Kernel, &|r| r.rss_per_conn(&r.idle));
    let k_heap = of(Server::Kernel, &|r| r.heap_per_conn(&r.idle));
    let k_slab_both = of(Server::Kernel, &ScaleRun::slab_per_conn);
    let p_slab_client = of(Server::Provider, &ScaleRun::slab_per_conn);
    // The client's sockets are the same in both runs: the rest is the kernel server's.
    let k_slab_server = k_slab_both - p_slab_client;
    let k_total = k_rss.max(0.0) + k_slab_server;
    let p_rss = of(Server::Provider, &|r| r.rss_per_conn(&r.idle));
    let p_heap = of(Server::Provider, &|r| r.heap_per_conn(&r.idle));
    let p_heap_echo = of(Server::Provider, &|r| {
        r.heap_per_conn(&r.after_echo_settled)
    });
    let k_mem_pages = of(Server::Kernel, &|r| {
        (r.sockstat_idle.get("mem").copied().unwrap_or(0) as f64
            - r.sockstat_before.get("mem").copied().unwrap_or(0) as f64)
            * 4096.0
            / r.conns as f64
    });
    let k_connect = of(Server::Kernel, &|r| num(&r.client_established, "secs"));
    let p_connect = of(Server::Provider, &|r| num(&r.client_established, "secs"));
    let ratio = |p: f64, k: f64| if k > 0.0 { p / k } else { f64::NAN };
    println!();
    println!(
        "scale: {} idle established connections from the kernel client in the peer namespace, {} round(s), medians",
        o.conns,
        o.rounds.max(1)
    );
    println!("| measure (bytes per connection) | kernel server | provider | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| memory per idle established connection | {k_total:.0} | {p_rss:.0} | {:.2}× |",
        ratio(p_rss, k_total)
    );
    println!("| … server process RSS | {k_rss:.0} | {p_rss:.0} | |");
    println!(
        "| … kernel slab of the server's sockets (TCP, sock_inode_cache, dentry, filp, …) | {k_slab_server:.0} | 0 | |"
    );
    println!("| server heap in use (glibc mallinfo2) | {k_heap:.0} | {p_heap:.0} | |");
    println!("| provider heap after 1000 of them echoed 256 B, settled | | {p_heap_echo:.0} | |");
    println!("| kernel TCP buffer memory (sockstat mem), idle | {k_mem_pages:.0} | | |");
    println!(
        "| kernel client slab (both runs, for reference) | {k_slab_both:.0} (client + server) | {p_slab_client:.0} (client) | |"
    );
    println!("| time to establish all (s) | {k_connect:.1} | {p_connect:.1} | |");
    let v = json!({
        "bench": "scale",
        "unix_time": crate::bench::unix_now(),
        "conns": o.conns,
        "rounds": o.rounds.max(1),
        "kernel": {
            "memory_per_idle_conn": k_total,
            "server_rss_per_conn": k_rss,
            "server_heap_per_conn": k_heap,
            "server_slab_per_conn": k_slab_server,
            "sockstat_mem_per_conn": k_mem_pages,
            "slab_client_and_server_per_conn": k_slab_both,
            "establish_secs": k_connect,
        },
        "provider": {
            "memory_per_idle_conn": p_rss,
            "rss_per_conn": p_rss,
            "heap_per_conn": p_heap,
            "heap_per_conn_after_echo_settled": p_heap_echo,
            "slab_client_per_conn": p_slab_client,
            "establish_secs": p_connect,
        },
        "ratio_provider_to_kernel": ratio(p_rss, k_total),
        "runs": runs.iter().map(ScaleRun::to_json).collect::<Vec<_>>(),
    });
    crate::bench::write_result("scale", &v)?;
    lab.down()?;
    Ok(())
}
