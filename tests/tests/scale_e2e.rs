//! Scale (issue 10): 100 000 concurrent ESTABLISHED connections between the Linux kernel's TCP
//! in the peer namespace and the provider, all held at once. The peer (`scale_client.py`, see
//! `xtask::scale`) opens them to four server ports of `provider scale-server`; the provider's
//! stats file shows them established; a sample of 1000 echo distinct messages, checked byte
//! for byte; then the peer closes all, the provider closes each at its EOF, and the provider's
//! connection count returns to 0. The provider's memory per idle connection (RSS and heap in
//! use, against the values before the first connection) is printed — a measurement, not an
//! assertion beyond the 2 KiB-plus-buffers target's order of magnitude.
//!
//! `PROVIDER_SCALE_CONNS` overrides the count. Needs root; run by `cargo xtask test`.
use std::time::Duration;

use xtask::lab::{Lab, LabConfig};
use xtask::scale::{ScaleOptions, Server};

#[test]
#[ignore = "needs root and network namespaces"]
fn hundred_thousand_established_connections_with_the_kernel_peer() {
    let conns: usize = std::env::var("PROVIDER_SCALE_CONNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let lab = Lab::up(&LabConfig::default()).expect("lab up");
    let stats_file = std::env::temp_dir().join(format!("provider-stats-{}.json", lab.name));
    let o = ScaleOptions {
        conns,
        ports: xtask::scale::ports_for(conns, 7400),
        stats_file: Some(stats_file.clone()),
        settle: Duration::from_secs(1),
        ..ScaleOptions::default()
    };
    let bin = provider_tests::provider_bin();
    let r = xtask::scale::run(&lab, &bin, Server::Provider, &o);
    let _ = std::fs::remove_file(&stats_file);
    let r = r.expect("scale run");
    println!("{:#}", r.to_json());

    // Every connection accepted and, in the provider's own stats, ESTABLISHED.
    assert_eq!(r.accepted["n"], conns);
    let st = &r.stats_file_idle.as_ref().expect("stats file")["sockets"];
    assert_eq!(st["tcp_established"], conns as u64, "{st}");
    assert_eq!(st["tcp_connections"], conns as u64, "{st}");
    assert_eq!(st["handles_open"], conns as u64 + o.ports.len() as u64);
    assert_eq!(r.idle["stats"]["tcp_established"], conns as u64);

    // The sample echoed, byte for byte.
    let sample = o.echo_sample.min(conns);
    assert_eq!(r.client_echoed["ok"], sample, "{}", r.client_echoed);
    assert_eq!(r.client_echoed["bad"], 0);
    assert_eq!(r.server_echoed["bytes"], (sample * o.echo_size) as u64);
    assert_eq!(r.server_echoed["conns"], sample as u64);

    // All closed cleanly: every connection ended with the peer's FIN, none with an error, and
    // the engine holds no connection afterwards.
    assert_eq!(r.client_closed["eof"], conns as u64, "{}", r.client_closed);
    assert_eq!(r.client_closed["errors"], 0);
    assert_eq!(r.server_closed["eof"], conns as u64, "{}", r.server_closed);
    assert_eq!(r.server_closed["errors"], 0);
    assert_eq!(r.server_closed["connections_left"], 0);
    assert_eq!(r.server_closed["stats"]["tcp_connections"], 0);
    assert_eq!(
        r.server_closed["stats"]["sockets_open"],
        o.ports.len() as u64
    );

    let rss = r.rss_per_conn(&r.idle);
    let heap = r.heap_per_conn(&r.idle);
    println!(
        "provider, {conns} idle established connections: RSS {rss:.0} B/conn, heap in use \
         {heap:.0} B/conn; after {sample} echoes: heap {:.0} B/conn, settled {:.0} B/conn; \
         kernel client slab {:.0} B/conn; {:.0} s in all",
        r.heap_per_conn(&r.after_echo),
        r.heap_per_conn(&r.after_echo_settled),
        r.slab_per_conn(),
        r.secs
    );
    assert!(heap > 0.0, "the heap grew with the connections");
}
