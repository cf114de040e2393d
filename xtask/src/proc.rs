//! Child processes that are always stopped: [`Proc`] owns a spawned child, reads its stdout
//! and stderr line by line on background threads, and on drop sends SIGTERM to *its* pid,
//! waits a little, then SIGKILLs it. Also a SIGINT/SIGTERM flag so long waits can return an
//! error (and let every guard run) instead of dying with children and labs left behind.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cmd;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Turns SIGINT and SIGTERM into a flag checked by the waits here ([`check_interrupted`]), so
/// an interrupted demo or benchmark unwinds through its guards (children stopped, lab
/// deleted) instead of being killed on the spot.
pub fn install_signal_flag() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: zeroed sigaction plus a handler that only stores an atomic.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// Errors once SIGINT/SIGTERM arrived (after [`install_signal_flag`]).
pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps, waking early (with an error) on SIGINT/SIGTERM.
pub fn sleep(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        check_interrupted()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

/// A line a child wrote, with the time we read it.
#[derive(Debug, Clone)]
pub struct Line {
    pub at: Instant,
    pub text: String,
}

const STDERR_TAIL: usize = 60;

/// A running child that is stopped (by pid) when dropped.
pub struct Proc {
    name: String,
    shown: String,
    child: Child,
    status: Option<ExitStatus>,
    out: Receiver<Line>,
    err: Receiver<Line>,
    err_tail: Arc<Mutex<VecDeque<String>>>,
    /// stdout lines read by a wait that were not what it waited for.
    pending: VecDeque<Line>,
    /// The child's stdin, when spawned with [`Proc::spawn_with_stdin`].
    stdin: Option<std::process::ChildStdin>,
}

fn reader(
    stream: impl Read + Send + 'static,
    tail: Option<Arc<Mutex<VecDeque<String>>>>,
) -> Receiver<Line> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut r = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let text = String::from_utf8_lossy(&buf).trim_end().to_owned();
            if let Some(t) = &tail {
                let mut t = t.lock().unwrap_or_else(|e| e.into_inner());
                if t.len() == STDERR_TAIL {
                    t.pop_front();
                }
                t.push_back(text.clone());
            }
            // The receiver may be gone; keep draining so the child never blocks on a pipe.
            let _ = tx.send(Line {
                at: Instant::now(),
                text,
            });
        }
    });
    rx
}

impl Proc {
    /// Spawns `cmd` with stdin closed and stdout/stderr piped. `name` is used in messages.
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<Proc> {
        Self::spawn_inner(name, cmd, false)
    }

    /// As [`Proc::spawn`], with stdin piped: [`Proc::send_line`] writes to it.
    pub fn spawn_with_stdin(name: &str, cmd: &mut Command) -> Result<Proc> {
        Self::spawn_inner(name, cmd, true)
    }

    /// Write one line to the child's stdin (spawned with [`Proc::spawn_with_stdin`]).
    pub fn send_line(&mut self, line: &str) -> Result<()> {
        use std::io::Write;
        let name = self.name.clone();
        let stdin = self
            .stdin
            .as_mut()
            .with_context(|| format!("{name}: stdin not piped"))?;
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .with_context(|| format!("write to {name}'s stdin"))
    }

    fn spawn_inner(name: &str, cmd: &mut Command, stdin: bool) -> Result<Proc> {
        let shown = cmd::display(cmd);
        let mut child = cmd
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {name}: `{shown}`"))?;
        let err_tail = Arc::new(Mutex::new(VecDeque::new()));
        let out = reader(child.stdout.take().context("stdout")?, None);
        let err = reader(
            child.stderr.take().context("stderr")?,
            Some(err_tail.clone()),
        );
        let stdin = child.stdin.take();
        Ok(Proc {
            name: name.to_owned(),
            shown,
            child,
            status: None,
            out,
            err,
            err_tail,
            pending: VecDeque::new(),
            stdin,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The last lines the child wrote to stderr.
    pub fn stderr_tail(&self) -> String {
        let t = self.err_tail.lock().unwrap_or_else(|e| e.into_inner());
        t.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    fn fail(&mut self, what: String) -> anyhow::Error {
        // Give the stderr reader a moment to collect the child's last words.
        thread::sleep(Duration::from_millis(100));
        let tail = self.stderr_tail();
        let status = self
            .try_status()
            .map_or("still running".into(), |s| s.to_string());
        anyhow::anyhow!(
            "{} ({}): {what}; `{}`{}",
            self.name,
            status,
            self.shown,
            if tail.is_empty() {
                String::new()
            } else {
                format!("\n--- {} stderr (last lines) ---\n{tail}", self.name)
            }
        )
    }

    /// Exit status if the child has exited (reaps it).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Next stdout line, waiting at most `timeout`; `Ok(None)` on timeout or end of output.
    pub fn next_line(&mut self, timeout: Duration) -> Result<Option<Line>> {
        if let Some(l) = self.pending.pop_front() {
            return Ok(Some(l));
        }
        let end = Instant::now() + timeout;
        loop {
            check_interrupted()?;
            let left = end.saturating_duration_since(Instant::now());
            match self.out.recv_timeout(left.min(Duration::from_millis(50))) {
                Ok(l) => return Ok(Some(l)),
                Err(RecvTimeoutError::Disconnected) => return Ok(None),
                Err(RecvTimeoutError::Timeout) if left.is_zero() => return Ok(None),
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }

    /// Every stdout line available right now.
    pub fn drain_lines(&mut self) -> Vec<Line> {
        let mut v: Vec<Line> = self.pending.drain(..).collect();
        v.extend(self.out.try_iter());
        v
    }

    /// Waits for a stdout line starting with `ready` (the provider binary's contract). Other
    /// lines are kept for later reads.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<Line> {
        let end = Instant::now() + timeout;
        let mut other = VecDeque::new();
        loop {
            check_interrupted()?;
            match self.out.recv_timeout(Duration::from_millis(50)) {
                Ok(l) if l.text.starts_with("ready") => {
                    self.pending.extend(other);
                    return Ok(l);
                }
                Ok(l) => other.push_back(l),
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = self.wait_exit(Duration::from_secs(2));
                    return Err(self.fail("exited before printing `ready`".into()));
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            if Instant::now() > end {
                return Err(self.fail(format!("no `ready` line within {timeout:?}")));
            }
        }
    }

    /// Waits for a stderr line containing `needle` (e.g. tcpdump's `listening on`).
    pub fn wait_stderr(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let end = Instant::now() + timeout;
        loop {
            check_interrupted()?;
            match self.err.recv_timeout(Duration::from_millis(50)) {
                Ok(l) if l.text.contains(needle) => return Ok(()),
                Ok(_) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(self.fail(format!("exited before printing {needle:?}")));
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            if Instant::now() > end {
                return Err(self.fail(format!("no {needle:?} on stderr within {timeout:?}")));
            }
        }
    }

    /// Waits up to `timeout` for the child to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_status() {
                return Ok(Some(s));
            }
            if Instant::now() >= end {
                return Ok(None);
            }
            check_interrupted()?;
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for exit and fails (with stderr) unless it exited successfully.
    pub fn wait_success(&mut self, timeout: Duration) -> Result<()> {
        match self.wait_exit(timeout)? {
            Some(s) if s.success() => Ok(()),
            Some(_) => Err(self.fail("failed".into())),
            None => Err(self.fail(format!("did not finish within {timeout:?}"))),
        }
    }

    /// SIGTERM to this child's pid, up to 5 s grace, then SIGKILL. Returns the exit status.
    /// Idempotent.
    pub fn stop(&mut self) -> ExitStatus {
        if let Some(s) = self.try_status() {
            return s;
        }
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped yet.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if let Some(s) = self.try_status() {
                return s;
            }
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "warning: {} (pid {}) ignored SIGTERM for 5 s; killing it",
            self.name,
            self.child.id()
        );
        let _ = self.child.kill();
        let s = self.child.wait().ok();
        self.status = s;
        s.unwrap_or_else(|| {
            use std::os::unix::process::ExitStatusExt;
            ExitStatus::from_raw(9)
        })
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last stdout line that parses as a JSON object.
pub fn last_json(lines: &[Line]) -> Option<serde_json::Value> {
    lines
        .iter()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l.text.trim()).ok())
        .find(serde_json::Value::is_object)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_line_and_pending_lines() {
        let mut p = Proc::spawn(
            "sh",
            Command::new("sh").args([
                "-c",
                "echo hi; echo ready now; echo '{\"a\":1}'; echo oops >&2; sleep 30",
            ]),
        )
        .unwrap();
        let r = p.wait_ready(Duration::from_secs(5)).unwrap();
        assert_eq!(r.text, "ready now");
        assert_eq!(
            p.next_line(Duration::from_secs(5)).unwrap().unwrap().text,
            "hi"
        );
        let j = p.next_line(Duration::from_secs(5)).unwrap().unwrap();
        assert_eq!(last_json(&[j]).unwrap()["a"], 1);
        // The stderr reader is a thread of its own: on a loaded machine it may not have read
        // the line yet when stdout's lines are in.
        p.wait_stderr("oops", Duration::from_secs(5)).unwrap();
        let pid = p.pid();
        let status = p.stop();
        assert!(!status.success());
        assert!(p.stderr_tail().contains("oops"));
        // Reaped: the pid no longer names our child.
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}/stat")).exists() || {
                let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                !s.contains("(sh)")
            }
        );
    }

    #[test]
    fn early_exit_reports_stderr() {
        let mut p = Proc::spawn(
            "sh",
            Command::new("sh").args(["-c", "echo broken >&2; exit 3"]),
        )
        .unwrap();
        let e = p
            .wait_ready(Duration::from_secs(5))
            .unwrap_err()
            .to_string();
        assert!(e.contains("broken"), "{e}");
        assert!(e.contains("exited before"), "{e}");
    }
}
