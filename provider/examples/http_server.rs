//! An HTTP/1.1 server (hyper 1) running on the provider's TCP stack through the tokio types
//! (`provider::aio`), not on kernel sockets.
//!
//! ```text
//! http_server --iface <IF> [--listen 0.0.0.0:8080] [--threads N]
//! ```
//!
//! Starts the datapath on `<IF>` (root: XDP + AF_XDP), prints `ready <addr>` once listening,
//! and serves until SIGINT/SIGTERM:
//! - `GET /` → `200 hello from the provider\n`
//! - `GET /bytes/<n>` → `200` with `n` bytes of a repeating pattern (at most 64 MiB)
//! - anything else → `404`.
//!
//! `--listen` may give several comma-separated addresses (e.g. an IPv4 and an IPv6 one);
//! `--threads N` > 1 runs a multi-thread runtime (default: current-thread). `--drive` chooses who
//! runs the datapath: `application` (default) spawns `provider::aio::drive` on the runtime, so
//! one thread does everything; `threads` leaves it to the engine's queue threads. `--kernel` runs the
//! very same server on kernel sockets (`tokio::net`) instead, for comparisons
//! (`cargo xtask bench async`).
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use provider::aio::TcpListener;
use provider::engine::{Drive, Engine, EngineConfig};

type Error = Box<dyn std::error::Error + Send + Sync>;

static REQUESTS: AtomicU64 = AtomicU64::new(0);

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    REQUESTS.fetch_add(1, Ordering::Relaxed);
    let path = req.uri().path();
    let resp = match (req.method(), path) {
        (&Method::GET, "/") => {
            Response::new(Full::new(Bytes::from_static(b"hello from the provider\n")))
        }
        (&Method::GET, p) if p.starts_with("/bytes/") => {
            match p["/bytes/".len()..].parse::<usize>() {
                Ok(n) if n <= 64 << 20 => {
                    let body: Vec<u8> = (0..n).map(|i| b'a' + (i % 26) as u8).collect();
                    Response::new(Full::new(Bytes::from(body)))
                }
                _ => status(StatusCode::BAD_REQUEST),
            }
        }
        _ => status(StatusCode::NOT_FOUND),
    };
    Ok(resp)
}

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = code;
    r
}

/// Serve HTTP/1.1 on one accepted connection (any tokio stream).
fn spawn_conn<S>(stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service_fn(handle));
        if let Err(err) = conn.await {
            tracing::debug!(%err, "connection ended with an error");
        }
    });
}

/// Accept forever on a provider listener, one task per connection.
async fn serve(listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                spawn_conn(stream);
            }
            Err(err) => eprintln!("accept: {err}"),
        }
    }
}

/// The same on a kernel listener (`--kernel`).
async fn serve_kernel(listener: tokio::net::TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                spawn_conn(stream);
            }
            Err(err) => eprintln!("accept: {err}"),
        }
    }
}

fn main() -> Result<(), Error> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let mut iface = None;
    let mut listen = "0.0.0.0:8080".to_string();
    let mut threads = 1usize;
    let mut kernel = false;
    let mut drive = Drive::Application;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--iface" => iface = args.next(),
            "--listen" => listen = args.next().ok_or("--listen needs a value")?,
            "--threads" => threads = args.next().ok_or("--threads needs a value")?.parse()?,
            "--kernel" => kernel = true,
            "--drive" => {
                drive = match args.next().as_deref() {
                    Some("threads") => Drive::Threads,
                    Some("application") => Drive::Application,
                    _ => return Err("--drive threads|application".into()),
                }
            }
            "-h" | "--help" => {
                println!(
                    "http_server (--iface <IF> | --kernel) [--listen ADDR:PORT[,ADDR:PORT]] [--threads N] [--drive threads|application]"
                );
                return Ok(());
            }
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    let addrs: Vec<SocketAddr> = listen
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;

    let engine = if kernel {
        None
    } else {
        let iface = iface.ok_or("--iface <interface> (or --kernel) is required")?;
        let mut config = EngineConfig::new(iface);
        config.drive = drive;
        Some(Engine::start(config)?)
    };
    let rt = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    rt.block_on(async {
        if let Some(e) = engine.as_ref().filter(|_| drive == Drive::Application) {
            tokio::spawn(provider::aio::drive(e.driver()?));
        }
        let mut bound = Vec::new();
        for a in &addrs {
            match &engine {
                Some(e) => {
                    let l = TcpListener::bind(e.provider(), *a)?;
                    bound.push(l.local_addr()?.to_string());
                    tokio::spawn(serve(l));
                }
                None => {
                    let l = tokio::net::TcpListener::bind(*a).await?;
                    bound.push(l.local_addr()?.to_string());
                    tokio::spawn(serve_kernel(l));
                }
            }
        }
        println!("ready {}", bound.join(","));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        Ok::<_, Error>(())
    })?;
    println!("requests {}", REQUESTS.load(Ordering::Relaxed));
    drop(rt);
    if let Some(e) = engine {
        e.stop();
    }
    Ok(())
}
