//! `cargo xtask test`: everything CI runs (DESIGN §9, §13).
//!
//! setup → stale-lab cleanup → fmt → clippy → unit tests → (root) ignored root/lab tests,
//! one at a time. Output streams; the first failing step stops the run with an error.

use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::cmd;

#[derive(Debug, Clone, Default)]
pub struct TestOptions {
    /// Skip fmt and clippy.
    pub quick: bool,
    /// Test name filter passed to the test harness.
    pub filter: Option<String>,
    /// Restrict to these packages (default: the whole workspace).
    pub packages: Vec<String>,
}

impl TestOptions {
    fn scope(&self, c: &mut Command) {
        if self.packages.is_empty() {
            c.arg("--workspace");
        } else {
            for p in &self.packages {
                c.args(["-p", p]);
            }
        }
    }
}

struct Steps {
    done: Vec<(String, f64, &'static str)>,
}

impl Steps {
    fn step(&mut self, name: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
        eprintln!("\n==> {name}");
        let t = Instant::now();
        let r = f();
        let secs = t.elapsed().as_secs_f64();
        self.done.push((
            name.to_owned(),
            secs,
            if r.is_ok() { "ok" } else { "FAILED" },
        ));
        r.with_context(|| format!("step `{name}` failed"))
    }

    fn skip(&mut self, name: &str, why: &str) {
        eprintln!("\n==> {name}: SKIPPED ({why})");
        self.done.push((name.to_owned(), 0.0, "skipped"));
    }

    fn summary(&self) {
        eprintln!("\nsummary:");
        for (name, secs, state) in &self.done {
            eprintln!("  {state:<8} {secs:>7.1}s  {name}");
        }
    }
}

pub fn run(opts: &TestOptions) -> Result<()> {
    let mut steps = Steps { done: Vec::new() };
    let r = run_steps(opts, &mut steps);
    steps.summary();
    r
}

fn run_steps(opts: &TestOptions, steps: &mut Steps) -> Result<()> {
    let root = crate::is_root();
    steps.step("setup", || crate::setup::run_with(!root).map(drop))?;

    if root {
        steps.step("clean stale labs", || {
            let removed = crate::lab::lab_guard_cleanup_stale()?;
            if removed.is_empty() {
                eprintln!("none");
            } else {
                eprintln!("removed: {}", removed.join(" "));
            }
            Ok(())
        })?;
    }

    if opts.quick {
        steps.skip("fmt + clippy", "--quick");
    } else {
        steps.step("cargo fmt --check", || {
            cmd::run(cmd::cargo().args(["fmt", "--all", "--check"]))?;
            // The eBPF crate is its own workspace; rustfmt needs no target for it.
            let ebpf = crate::workspace_root().join("provider-ebpf/Cargo.toml");
            if ebpf.exists() {
                cmd::run(
                    cmd::cargo()
                        .args(["fmt", "--all", "--check", "--manifest-path"])
                        .arg(&ebpf),
                )?;
            }
            Ok(())
        })?;
        steps.step("cargo clippy", || {
            let mut c = cmd::cargo();
            c.arg("clippy");
            opts.scope(&mut c);
            c.args(["--all-targets", "--", "-D", "warnings"]);
            cmd::run(&mut c)
        })?;
    }

    steps.step("cargo test (unit, no root)", || {
        let mut c = cmd::cargo();
        c.arg("test");
        opts.scope(&mut c);
        if let Some(f) = &opts.filter {
            c.args(["--", f]);
        }
        cmd::run(&mut c)
    })?;

    // A short fuzz smoke run of each cargo-fuzz target (fuzz/README.md); a crash fails the run.
    if opts.packages.is_empty() && opts.filter.is_none() && !opts.quick {
        for target in ["tcp_segments", "frame_parse", "wsp_calls"] {
            steps.step(&format!("cargo fuzz run {target} (20 s smoke)"), || {
                cmd::run(
                    Command::new("cargo")
                        .args(["+nightly", "fuzz", "run", "-a", target, "--"])
                        .arg("-max_total_time=20")
                        .current_dir(crate::workspace_root()),
                )
            })?;
        }
    }

    if root {
        // The end-to-end tests run `target/debug/provider` and `examples/http_server`: build them in the profile `cargo
        // test` uses (debug) before they start.
        let needs_provider = opts.packages.is_empty()
            || opts
                .packages
                .iter()
                .any(|p| p == "provider" || p == "provider-tests");
        if needs_provider {
            steps.step(
                "cargo build -p provider --bins --examples -p provider-preload (for the end-to-end tests)",
                || {
                    cmd::run(cmd::cargo().args(["build", "-p", "provider", "--bins", "--examples"]))?;
                    // A separate build: `--bins` would skip the library-only crate.
                    cmd::run(cmd::cargo().args(["build", "-p", "provider-preload"]))
                },
            )?;
        }
        // Only the ignored (root/lab) tests: the rest just ran. One at a time, since they
        // share the host's CPU and some measure timing. `--tests`: no doctests here.
        steps.step("cargo test (root/lab tests)", || {
            let mut c = cmd::cargo();
            c.arg("test");
            opts.scope(&mut c);
            c.args(["--tests", "--"]);
            if let Some(f) = &opts.filter {
                c.arg(f);
            }
            c.args(["--ignored", "--test-threads=1"]);
            cmd::run(&mut c)
        })?;
    } else {
        steps.skip(
            "cargo test (root/lab tests)",
            "not root: the lab tests need network namespaces; rerun as root to run them",
        );
        if std::env::var_os("CI").is_some() {
            bail!(
                "CI is set but xtask is not running as root: the root/lab tests would be skipped"
            );
        }
    }
    Ok(())
}
