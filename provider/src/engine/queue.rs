//! One RX queue's loop: drain RX → deliver → reap completions → sleep in poll (or spin).
use std::net::{IpAddr, SocketAddr};

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
    while dp.is_running() {
        let n = {
            let mut xsk = lock(&dp.xsks[queue as usize]);
            let n = xsk.recv_batch(cfg.rx_batch, |f| handle_frame(dp, provider, f));
            xsk.reap_completions();
            n
        };
        dp.counters.add_rx(n as u64);
        dp.queue_counters[queue as usize]
            .rx_frames
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        if n == 0 && !cfg.busy_poll {
            // Sleep without holding the queue lock so senders can use the TX ring meanwhile.
            poller.wait_readable(IDLE_POLL_MS);
        }
    }
}

fn handle_frame(dp: &XdpDatapath, provider: &Provider, bytes: &[u8]) {
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
        // TCP is steered only once the TCP engine exists (issue "TCP engine").
        _ => dp.counters.add_unhandled(),
    }
}
