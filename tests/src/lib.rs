//! Support for the end-to-end tests in `tests/tests/`: running the `provider` binary inside a
//! lab namespace and running closures inside a namespace on their own thread.
use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Stdio},
    sync::mpsc,
    time::Duration,
};

use anyhow::{Context, Result, bail};

pub mod transfer;
use xtask::lab::Lab;

/// Path of the `provider` binary next to the test executable (`cargo xtask test` builds it).
pub fn provider_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> → target/<profile>/provider
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join("provider");
    assert!(
        bin.exists(),
        "{} missing: build it first (`cargo build -p provider --bins`; `cargo xtask test` does)",
        bin.display()
    );
    bin
}

/// A `provider` process running in the lab's provider namespace. Killed (SIGTERM, then SIGKILL)
/// on drop.
pub struct ProviderProcess {
    child: Option<Child>,
    pub stats_file: PathBuf,
}

impl ProviderProcess {
    /// Start `provider <args…> --iface <provider_if> --stats-file …` and wait for its `ready` line.
    pub fn start(lab: &Lab, args: &[&str]) -> Result<Self> {
        let stats_file = std::env::temp_dir().join(format!("provider-stats-{}.json", lab.name));
        let _ = std::fs::remove_file(&stats_file);
        let mut cmd = lab.provider_cmd(provider_bin());
        cmd.args(args)
            .args(["--iface", &lab.provider_if, "--stats-file"])
            .arg(&stats_file)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().context("spawn provider")?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                println!("[provider] {line}");
                let _ = tx.send(line);
            }
        });
        let mut me = Self {
            child: Some(child),
            stats_file,
        };
        loop {
            match rx.recv_timeout(Duration::from_secs(20)) {
                Ok(line) if line.starts_with("ready") => break,
                Ok(_) => continue,
                Err(_) => {
                    me.kill();
                    bail!("provider did not report ready");
                }
            }
        }
        Ok(me)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// The last stats snapshot the provider wrote.
    pub fn stats(&self) -> Result<serde_json::Value> {
        // The writer runs every 500 ms; wait for a fresh snapshot.
        std::thread::sleep(Duration::from_millis(700));
        let text = std::fs::read_to_string(&self.stats_file).context("read stats file")?;
        Ok(serde_json::from_str(&text)?)
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait: a clean stop.
    pub fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        let mut c = self.child.take().context("not running")?;
        // SAFETY-free: `kill` the process we started, by its PID.
        let status = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status()?;
        if !status.success() {
            bail!("kill -TERM failed");
        }
        Ok(c.wait()?)
    }
}

impl Drop for ProviderProcess {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.terminate();
        }
        let _ = std::fs::remove_file(&self.stats_file);
    }
}

/// Run `f` on a new thread that has entered the lab's peer namespace.
pub fn in_peer<T: Send + 'static>(lab: &Lab, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = lab.peer_ns_path();
    in_ns(path, f)
}

/// Run `f` on a new thread that has entered the lab's provider namespace.
pub fn in_provider<T: Send + 'static>(lab: &Lab, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = lab.provider_ns_path();
    in_ns(path, f)
}

fn in_ns<T: Send + 'static>(path: PathBuf, f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        let _guard = xtask::lab::NsGuard::enter(&path).expect("enter namespace");
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// Run `f` on a new thread that has entered the lab's peer namespace, without waiting for it.
pub fn spawn_in_peer<T: Send + 'static>(
    lab: &Lab,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = lab.peer_ns_path();
    std::thread::spawn(move || {
        let _guard = xtask::lab::NsGuard::enter(&path).expect("enter namespace");
        f()
    })
}

/// One captured frame: CLOCK_REALTIME receive timestamp (ns since the epoch) and the bytes.
#[derive(Clone, Debug)]
pub struct Frame {
    pub ts_ns: u64,
    pub data: Vec<u8>,
}

/// A `tcpdump -U --immediate-mode -w` capture (immediate mode: without it, frames still in
/// the ring block when tcpdump is interrupted are lost) on the lab's peer veth, running in the peer namespace. Started
/// and confirmed running (tcpdump's "listening on" line) before `start` returns; `stop`
/// interrupts it by its PID and reads the pcap back. The pcap file is deleted on drop.
pub struct Capture {
    child: Option<Child>,
    path: PathBuf,
}

static CAPTURES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Capture {
    /// Capture frames matching the pcap `filter` (e.g. `"tcp"`) on `lab.peer_if`, with
    /// nanosecond timestamps.
    pub fn start(lab: &Lab, filter: &str) -> Result<Self> {
        let n = CAPTURES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("{}-cap{n}.pcap", lab.name));
        let _ = std::fs::remove_file(&path);
        let words: Vec<&str> = filter.split_whitespace().collect();
        let mut cmd = lab.peer_capture_cmd(&path, &words);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("spawn tcpdump")?;
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let mut me = Capture {
            child: Some(child),
            path,
        };
        loop {
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(line) if line.contains("listening on") => break,
                Ok(_) => continue,
                Err(_) => {
                    me.kill();
                    bail!("tcpdump did not start listening");
                }
            }
        }
        Ok(me)
    }

    /// SIGINT tcpdump (it flushes and exits), then parse the pcap.
    pub fn stop(mut self) -> Result<Vec<Frame>> {
        // Let frames in flight reach the tap first.
        std::thread::sleep(Duration::from_millis(50));
        let mut c = self.child.take().context("capture not running")?;
        let status = std::process::Command::new("kill")
            .arg("-INT")
            .arg(c.id().to_string())
            .status()?;
        if !status.success() {
            bail!("kill -INT tcpdump failed");
        }
        c.wait()?;
        read_pcap(&std::fs::read(&self.path).context("read pcap")?)
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Parse a classic pcap file (micro- or nanosecond, either byte order); the parser is the
/// demo's (`xtask::demo_tcp::read_pcap`).
pub fn read_pcap(b: &[u8]) -> Result<Vec<Frame>> {
    Ok(xtask::demo_tcp::read_pcap(b)?
        .into_iter()
        .map(|(ts_ns, _orig_len, data)| Frame { ts_ns, data })
        .collect())
}

/// CLOCK_REALTIME now, in ns since the epoch (the clock capture timestamps use).
pub fn realtime_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Start the provider in this process on `lab`'s provider interface: the engine's threads are
/// created from a thread inside the provider namespace, so they live there. TIME_WAIT is 2 s
/// (tests reuse ports); `tweak` adjusts anything else.
pub fn start_engine(
    lab: &Lab,
    tweak: impl FnOnce(&mut provider::engine::EngineConfig) + Send + 'static,
) -> provider::engine::Engine {
    let ns = lab.provider_ns_path();
    let mut cfg = provider::engine::EngineConfig::new(lab.provider_if.clone());
    cfg.provider.tcp.time_wait = std::time::Duration::from_secs(2);
    tweak(&mut cfg);
    std::thread::spawn(move || {
        let _in = xtask::lab::NsGuard::enter(&ns).expect("enter the provider namespace");
        provider::engine::Engine::start(cfg).expect("engine start")
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// What a `provider` run that was expected to end by itself left behind.
#[derive(Debug)]
pub struct Finished {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    /// With ANSI colours stripped.
    pub stderr: String,
}

/// Run `provider <args…>` in the lab's provider namespace (through `wrap`, e.g. `setpriv …`,
/// when given) and wait at most `timeout` for it to exit; killed (by PID) if it does not.
pub fn run_provider(lab: &Lab, wrap: &[&str], args: &[&str], timeout: Duration) -> Finished {
    let mut cmd = match wrap.split_first() {
        Some((first, rest)) => {
            let mut c = lab.provider_cmd(first);
            c.args(rest).arg(provider_bin());
            c
        }
        None => lab.provider_cmd(provider_bin()),
    };
    let mut child = cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn provider");
    let deadline = std::time::Instant::now() + timeout;
    while child.try_wait().expect("try_wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("wait");
            panic!(
                "provider {args:?} did not exit within {timeout:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("wait");
    Finished {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: strip_ansi(&String::from_utf8_lossy(&out.stderr)),
    }
}

/// `s` without ANSI escape sequences (tracing colours its output).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters… final byte in 0x40..=0x7e.
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('\u{40}'..='\u{7e}').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// The id of the XDP program attached to the lab's provider interface, if any (`ip link`).
pub fn attached_xdp_prog(lab: &Lab) -> Option<u32> {
    let out = lab
        .exec_ok(
            &lab.provider_ns,
            &["ip", "-d", "link", "show", "dev", &lab.provider_if],
        )
        .expect("ip link show");
    let rest = out.split("prog/xdp id ").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::strip_ansi;

    #[test]
    fn ansi_colours_are_stripped() {
        assert_eq!(
            strip_ansi("\u{1b}[2m2026\u{1b}[0m \u{1b}[33m WARN\u{1b}[0m x"),
            "2026  WARN x"
        );
        assert_eq!(strip_ansi("plain"), "plain");
    }
}
