//! What the preload's lab tests share: a program started with `provider run`, its output
//! lines, and checks on the provider namespace.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use provider_tests::provider_bin;
use xtask::lab::Lab;

pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

/// A program started with `provider run` in the provider namespace, its output lines in a
/// channel (stdout and stderr both, prefixed).
pub struct App {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl App {
    pub fn start(lab: &Lab, program: &[&str]) -> App {
        let mut cmd = lab.provider_cmd(provider_bin());
        cmd.args(["run", "--iface", lab.provider_if.as_str(), "--"])
            .args(program);
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn provider run");
        let (tx, rx) = mpsc::channel();
        for (name, pipe) in [
            (
                "out",
                Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            ),
            ("err", Box::new(child.stderr.take().unwrap())),
        ] {
            let tx = tx.clone();
            let tag = program[0].rsplit('/').next().unwrap_or("app").to_string();
            thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    println!("[{tag} {name}] {line}");
                    let _ = tx.send(line);
                }
            });
        }
        App { child, lines: rx }
    }

    /// Wait for a line containing `want`; every line seen is returned.
    pub fn expect(&self, want: &str) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            match self.lines.recv_timeout(Duration::from_secs(30)) {
                Ok(l) => {
                    let hit = l.contains(want);
                    seen.push(l);
                    if hit {
                        return seen;
                    }
                }
                Err(_) => panic!("no line containing {want:?}; saw {seen:#?}"),
            }
        }
    }

    /// Wait for the preload's start-up line and for `ready` (stdout and stderr arrive in
    /// either order): the program runs on the provider and is ready.
    pub fn expect_started(&self, ready: &str) {
        let (mut started, mut up) = (false, false);
        let mut seen = Vec::new();
        while !(started && up) {
            match self.lines.recv_timeout(Duration::from_secs(30)) {
                Ok(l) => {
                    started |= l.contains("provider-preload: serving");
                    up |= l.contains(ready);
                    seen.push(l);
                }
                Err(_) => panic!("want the start-up line and {ready:?}; saw {seen:#?}"),
            }
        }
    }

    pub fn wait_success(mut self) {
        let st = self.child.wait().expect("wait app");
        assert!(st.success(), "app exited with {st}");
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 253) as u8).collect()
}

/// The provider namespace's kernel TCP has no socket on `port` (the program's socket is not
/// the kernel's).
pub fn kernel_has_no_socket_on(lab: &Lab, port: u16) {
    let out = lab
        .exec_ok(
            &lab.provider_ns,
            &["ss", "-Htan", &format!("( sport = :{port} )")],
        )
        .expect("ss");
    assert!(
        out.trim().is_empty(),
        "the kernel holds a socket on {port}: {out}"
    );
}

/// Run `cmd` in the peer namespace to completion; its stdout (panics on failure).
pub fn peer_run(lab: &Lab, cmd: &[&str]) -> String {
    let out = lab
        .peer_cmd(cmd[0])
        .args(&cmd[1..])
        .output()
        .expect("spawn peer command");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    println!("[peer {}] {text}", cmd[0]);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {text}",
        out.status
    );
    text
}
