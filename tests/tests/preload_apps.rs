//! Servers from Debian packages, unmodified, on the provider through `provider run` (issue 11),
//! against kernel clients in the peer namespace:
//! * nginx with its packaged configuration, changed only to `worker_processes 2` and a server
//!   block of ours: the master binds and forks two workers that accept on its listener. A 10 MiB
//!   file to curl (SHA-256 equal, through sendfile), then wrk with no errors, with both workers
//!   serving;
//! * redis-server with its packaged configuration, bound to the lab address: redis-cli, a
//!   BGSAVE (redis forks a child that closes its copy of the listener and writes the snapshot,
//!   while the parent goes on serving), then redis-benchmark SET/GET with no errors.
//!
//! Each checks the start-up line and that the provider namespace's kernel holds no socket on
//! the port. Needs root, nginx-light, redis-server, redis-tools, curl, wrk (`cargo xtask
//! setup` installs them); run by `cargo xtask test`.
mod preload_app;

use std::path::{Path, PathBuf};
use std::time::Duration;

use preload_app::{App, kernel_has_no_socket_on, peer_run};
use xtask::lab::{Lab, LabConfig};

/// A directory of our own under /tmp, readable by nginx's unprivileged workers; removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let d = std::env::temp_dir().join(format!("provider-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        chmod(&d, 0o755);
        Scratch(d)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn sha256(path: &str) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The packaged nginx.conf with two workers, our pid file and logs, and our server block in
/// place of the packaged sites.
fn nginx_conf(dir: &Scratch, port: u16) -> PathBuf {
    let packaged = std::fs::read_to_string("/etc/nginx/nginx.conf").expect("nginx is installed");
    let mut conf = String::new();
    for line in packaged.lines() {
        let t = line.trim_start();
        let l = if t.starts_with("worker_processes ") {
            "worker_processes 2;".to_string()
        } else if t.starts_with("pid ") {
            format!("pid {};", dir.path("nginx.pid").display())
        } else if t.starts_with("error_log ") {
            format!("error_log {} info;", dir.path("error.log").display())
        } else if t.starts_with("access_log ") {
            format!("access_log {};", dir.path("access.log").display())
        } else if t.starts_with("include /etc/nginx/sites-enabled/") {
            format!("include {};", dir.path("site.conf").display())
        } else {
            line.to_string()
        };
        conf.push_str(&l);
        conf.push('\n');
    }
    let www = dir.path("www");
    std::fs::create_dir_all(&www).unwrap();
    chmod(&www, 0o755);
    std::fs::write(
        dir.path("site.conf"),
        format!(
            "server {{\n\tlisten {port};\n\troot {};\n}}\n",
            www.display()
        ),
    )
    .unwrap();
    let path = dir.path("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    path
}

#[test]
#[ignore = "needs root (namespace lab), nginx, curl and wrk; run by `cargo xtask test`"]
fn nginx_two_workers_serve_a_static_file_to_curl_and_wrk() {
    const PORT: u16 = 7480;
    let lab = Lab::up(&LabConfig::default()).expect("lab up");
    let dir = Scratch::new("nginx");
    let conf = nginx_conf(&dir, PORT);
    let body: Vec<u8> = (0..10usize << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let big = dir.path("www/big.bin");
    std::fs::write(&big, &body).unwrap();
    std::fs::write(
        dir.path("www/index.html"),
        "hello from nginx on the provider\n",
    )
    .unwrap();
    for f in ["www/big.bin", "www/index.html"] {
        chmod(&dir.path(f), 0o644);
    }
    let conf = conf.to_str().unwrap().to_string();
    let app = App::start(&lab, &["nginx", "-c", &conf, "-g", "daemon off;"]);
    // The master's start-up line comes before the fork; nginx says nothing on stdout.
    app.expect("provider-preload: serving");
    let log = dir.path("error.log");
    let started = |n: usize| {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("start worker process ")
            .count()
            >= n
    };
    for _ in 0..100 {
        if started(2) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(started(2), "nginx did not start two workers");
    kernel_has_no_socket_on(&lab, PORT);

    let got = dir.path("got.bin");
    let url = format!("http://198.18.0.1:{PORT}/big.bin");
    let code = peer_run(
        &lab,
        &[
            "curl",
            "-s",
            "-o",
            got.to_str().unwrap(),
            "-w",
            "%{http_code}",
            &url,
        ],
    );
    assert_eq!(code.trim(), "200");
    assert_eq!(
        sha256(got.to_str().unwrap()),
        sha256(big.to_str().unwrap()),
        "the file came back different"
    );

    let out = peer_run(
        &lab,
        &[
            "wrk",
            "-t2",
            "-c32",
            "-d3s",
            &format!("http://198.18.0.1:{PORT}/index.html"),
        ],
    );
    assert!(
        !out.contains("Socket errors") && !out.contains("Non-2xx"),
        "wrk saw errors: {out}"
    );
    let requests: u64 = out
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse().ok())
        .expect("wrk's request count");
    assert!(requests > 1000, "wrk made {requests} requests");
    // Both workers served (nginx logs each worker's pid with its requests).
    let access = std::fs::read_to_string(dir.path("access.log")).unwrap_or_default();
    assert!(
        access.lines().count() as u64 >= requests,
        "the access log has fewer lines than requests"
    );
    let errors = std::fs::read_to_string(&log).unwrap_or_default();
    let served_by: std::collections::HashSet<&str> = errors
        .lines()
        .filter(|l| l.contains("client 198.18.0.2"))
        .filter_map(|l| l.split_whitespace().nth(3))
        .filter_map(|p| p.split('#').next())
        .collect();
    assert!(
        !errors.contains("[alert]") && !errors.contains("[emerg]") && !errors.contains("[crit]"),
        "nginx logged trouble: {errors}"
    );
    println!("connections closed by workers {served_by:?}");
    assert_eq!(served_by.len(), 2, "both workers served: {served_by:?}");
    kernel_has_no_socket_on(&lab, PORT);
}

#[test]
#[ignore = "needs root (namespace lab) and redis; run by `cargo xtask test`"]
fn redis_serves_redis_cli_and_redis_benchmark_across_a_bgsave_fork() {
    const PORT: &str = "7490";
    let lab = Lab::up(&LabConfig::default()).expect("lab up");
    let dir = Scratch::new("redis");
    let d = dir.0.to_str().unwrap().to_string();
    let app = App::start(
        &lab,
        &[
            "redis-server",
            "/etc/redis/redis.conf",
            "--bind",
            "198.18.0.1",
            "--port",
            PORT,
            "--daemonize",
            "no",
            "--supervised",
            "no",
            "--protected-mode",
            "no",
            "--dir",
            &d,
            "--pidfile",
            dir.path("redis.pid").to_str().unwrap(),
            "--logfile",
            "",
        ],
    );
    app.expect_started("Ready to accept connections");
    kernel_has_no_socket_on(&lab, 7490);
    let cli = |args: &[&str]| {
        let mut cmd = vec!["redis-cli", "-h", "198.18.0.1", "-p", PORT];
        cmd.extend_from_slice(args);
        peer_run(&lab, &cmd).trim().to_string()
    };
    assert_eq!(cli(&["PING"]), "PONG");
    assert_eq!(cli(&["SET", "greeting", "hello provider"]), "OK");
    assert_eq!(cli(&["GET", "greeting"]), "hello provider");
    // BGSAVE forks: the child closes its copy of the listener and writes dump.rdb; the
    // parent's listener and connections must live on.
    assert_eq!(cli(&["BGSAVE"]), "Background saving started");
    app.expect("Background saving terminated with success");
    assert!(dir.path("dump.rdb").exists(), "no snapshot written");
    assert_eq!(cli(&["GET", "greeting"]), "hello provider");
    let out = peer_run(
        &lab,
        &[
            "redis-benchmark",
            "-h",
            "198.18.0.1",
            "-p",
            PORT,
            "-t",
            "set,get",
            "-n",
            "50000",
            "-c",
            "32",
            "-q",
        ],
    );
    for t in ["SET:", "GET:"] {
        assert!(
            out.lines()
                .any(|l| l.contains(t) && l.contains("requests per second")),
            "redis-benchmark did not finish {t} {out}"
        );
    }
    assert!(
        !out.to_lowercase().contains("error"),
        "redis-benchmark saw errors: {out}"
    );
    let keys: u64 = cli(&["DBSIZE"]).parse().unwrap_or(0);
    assert!(keys >= 2, "DBSIZE {keys} after the benchmark's SETs");
    assert_eq!(cli(&["GET", "greeting"]), "hello provider");
    kernel_has_no_socket_on(&lab, 7490);
}
