//! One RX queue's loop: drain RX → deliver → reap completions → sleep in poll (or spin).
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::{EngineConfig, XdpDatapath, datapath::lock};
use crate::{
    api::Provider,
    net::{
        ParseError,
        frame::{self, L3},
    },
};

/// Longest sleep in `poll` so a stop request is noticed promptly.
const IDLE_POLL_MS: i32 = 50;

pub(super) fn run(queue: u32, dp: &XdpDatapath, provider: &Provider, cfg: &EngineConfig) {
    let poller = match lock(&dp.xsks[queue as usize]).poller() {
        Ok(p) => p,
        Err(err) => {
            tracing::error!(queue, %err, "cannot poll the AF_XDP socket; queue thread stops");
            return;
        }
    };
    // TCP segments are copied out of the RX frames and handed to the TCP engine after the
    // queue's lock is released: the engine transmits (taking TX locks) as it processes them.
    let mut tcp = TcpBatch::default();
    // Queue 0's thread also runs the TCP timers.
    let timers = queue == 0;
    while dp.is_running() {
        let n = {
            let mut xsk = lock(&dp.xsks[queue as usize]);
            let n = xsk.recv_batch(cfg.rx_batch, |f| handle_frame(dp, provider, f, &mut tcp));
            xsk.reap_completions();
            n
        };
        if !tcp.segments.is_empty() {
            let bytes = &tcp.bytes;
            provider.deliver_tcp_batch(
                tcp.segments
                    .drain(..)
                    .map(|(src, dst, range)| (src, dst, &bytes[range])),
            );
            tcp.bytes.clear();
        }
        let mut timeout_ms = IDLE_POLL_MS;
        if timers && let Some(deadline) = provider.tcp_next_timeout() {
            let now = Instant::now();
            if deadline <= now {
                provider.tcp_tick();
                continue;
            }
            let ms = (deadline - now).as_micros().div_ceil(1000);
            timeout_ms = timeout_ms.min(i32::try_from(ms).unwrap_or(i32::MAX));
        }
        dp.counters.add_rx(n as u64);
        dp.queue_counters[queue as usize]
            .rx_frames
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        if n == 0 && !cfg.busy_poll {
            // Sleep without holding the queue lock so senders can use the TX ring meanwhile.
            if timers {
                dp.waker.wait(&poller, timeout_ms);
            } else {
                poller.wait_readable(timeout_ms);
            }
        }
    }
}

/// TCP segments of one RX batch, copied out of UMEM.
#[derive(Default)]
struct TcpBatch {
    bytes: Vec<u8>,
    segments: Vec<(IpAddr, IpAddr, std::ops::Range<usize>)>,
}

fn handle_frame(dp: &XdpDatapath, provider: &Provider, bytes: &[u8], tcp: &mut TcpBatch) {
    let parsed = match frame::parse(bytes) {
        Ok(p) => p,
        Err(ParseError::BadChecksum) => return dp.counters.add_bad_checksum(),
        Err(_) => return dp.counters.add_malformed(),
    };
    let (src, dst): (IpAddr, IpAddr) = match parsed.l3 {
        L3::V4 { src, dst } => (src.into(), dst.into()),
        L3::V6 { src, dst } => (src.into(), dst.into()),
    };
    match parsed.proto {
        provider_common::PROTO_UDP => {
            dp.counters.add_udp();
            let local = SocketAddr::new(dst, parsed.dst_port);
            let remote = SocketAddr::new(src, parsed.src_port);
            if !provider.deliver_udp(local, remote, parsed.payload) {
                dp.counters.add_no_socket();
            }
        }
        provider_common::PROTO_TCP => {
            let start = tcp.bytes.len();
            tcp.bytes.extend_from_slice(parsed.l4);
            tcp.bytes.extend_from_slice(parsed.payload);
            tcp.segments.push((src, dst, start..tcp.bytes.len()));
        }
        _ => dp.counters.add_unhandled(),
    }
}
