//! A tokio sockperf TCP server (the wire protocol of `provider sockperf-server`: 14-byte
//! header `u64 seq | u16 flags | u32 len`; a message with CLIENT and PONG_REQUEST set is sent
//! back with CLIENT cleared, every other message is consumed), written once against tokio's
//! `AsyncRead + AsyncWrite` and run either on the provider (`provider::aio`) or, with
//! `--kernel`, on kernel sockets (`tokio::net`). `cargo xtask bench async` compares the two
//! with the same unmodified `sockperf` client.
//!
//! ```text
//! tokio_sockperf (--iface <IF> | --kernel) [--listen 0.0.0.0:11111] [--drive threads|application]
//! ```
//!
//! Current-thread runtime, one task per connection, TCP_NODELAY (as sockperf's server). On the
//! provider the runtime also runs the datapath (`--drive application`, the default:
//! `provider::aio::drive`) unless `--drive threads` leaves it to the engine's queue threads.
//! Prints `ready <addr>` once listening; serves until SIGINT/SIGTERM.
use std::net::SocketAddr;

use provider::engine::{Drive, Engine, EngineConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

type Error = Box<dyn std::error::Error + Send + Sync>;

const HEADER: usize = 14;
const FLAG_CLIENT: u16 = 1;
const FLAG_PONG_REQUEST: u16 = 2;

/// Serve one connection: read messages into a buffer, answer the ones that ask for it.
async fn serve(mut io: impl AsyncRead + AsyncWrite + Unpin) -> std::io::Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut out = Vec::with_capacity(64 * 1024);
    let (mut start, mut end) = (0usize, 0usize);
    loop {
        if start == end {
            (start, end) = (0, 0);
        } else if buf.len() - end < 65536 {
            buf.copy_within(start..end, 0);
            (start, end) = (0, end - start);
        }
        let n = io.read(&mut buf[end..]).await?;
        if n == 0 {
            return Ok(());
        }
        end += n;
        while end - start >= HEADER {
            let h: [u8; HEADER] = buf[start..start + HEADER].try_into().unwrap();
            let len = u32::from_be_bytes([h[10], h[11], h[12], h[13]]) as usize;
            if len < HEADER {
                return Err(std::io::Error::other("bad sockperf message length"));
            }
            if len > buf.len() {
                buf.resize(len * 2, 0);
            }
            if end - start < len {
                break;
            }
            let flags = u16::from_be_bytes([h[8], h[9]]);
            if flags & FLAG_CLIENT != 0 && flags & FLAG_PONG_REQUEST != 0 {
                let m = &buf[start..start + len];
                out.extend_from_slice(&m[..8]);
                out.extend_from_slice(&(flags & !FLAG_CLIENT).to_be_bytes());
                out.extend_from_slice(&m[10..]);
            }
            start += len;
        }
        if !out.is_empty() {
            io.write_all(&out).await?;
            out.clear();
        }
    }
}

fn main() -> Result<(), Error> {
    let mut iface = None;
    let mut kernel = false;
    let mut listen: SocketAddr = "0.0.0.0:11111".parse()?;
    let mut drive = Drive::Application;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--iface" => iface = args.next(),
            "--kernel" => kernel = true,
            "--listen" => listen = args.next().ok_or("--listen needs a value")?.parse()?,
            "--drive" => {
                drive = match args.next().as_deref() {
                    Some("threads") => Drive::Threads,
                    Some("application") => Drive::Application,
                    _ => return Err("--drive threads|application".into()),
                }
            }
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let engine = if kernel {
        None
    } else {
        let iface = iface.ok_or("--iface <interface> (or --kernel) is required")?;
        let mut config = EngineConfig::new(iface);
        config.drive = drive;
        Some(Engine::start(config)?)
    };
    rt.block_on(async {
        match &engine {
            None => {
                let l = tokio::net::TcpListener::bind(listen).await?;
                println!("ready {} (kernel)", l.local_addr()?);
                tokio::spawn(async move {
                    while let Ok((s, _)) = l.accept().await {
                        let _ = s.set_nodelay(true);
                        tokio::spawn(serve(s));
                    }
                });
            }
            Some(e) => {
                if drive == Drive::Application {
                    tokio::spawn(provider::aio::drive(e.driver()?));
                }
                let l = provider::aio::TcpListener::bind(e.provider(), listen)?;
                println!("ready {} (provider)", l.local_addr()?);
                tokio::spawn(async move {
                    while let Ok((s, _)) = l.accept().await {
                        let _ = s.set_nodelay(true);
                        tokio::spawn(serve(s));
                    }
                });
            }
        }
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        Ok::<_, Error>(())
    })?;
    drop(rt);
    if let Some(e) = engine {
        e.stop();
    }
    Ok(())
}
