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
