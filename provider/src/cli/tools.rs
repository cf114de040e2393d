//! Benchmark tools the `cargo xtask bench` and `pktgen` commands drive (DESIGN §12). They live in
//! the `provider` binary because they need the embedded BPF object; xtask only orchestrates.
use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use clap::Args;
use etherparse_free::udp_frame;
use provider::xdp::{AttachMode, Prog, Steering};
use provider_common::{PROTO_UDP, SteerKey};
use serde_json::json;

#[derive(Args)]
pub struct BenchXdpArgs {
    /// Runs per measurement (BPF_PROG_TEST_RUN repeat).
    #[arg(long, default_value_t = 1_000_000)]
    repeat: u32,
    /// Measurements per program; the best is reported.
    #[arg(long, default_value_t = 5)]
    rounds: u32,
}

/// One `steer` measurement: a frame and the path it takes through the program.
struct XdpCase {
    /// JSON id, e.g. `v4_specific`.
    id: String,
    /// Table label.
    label: String,
    v6: bool,
    frame: Vec<u8>,
    /// Whether the target (`steer` ≤ 1.2× `parse_redirect`, xtask's `XDP_STEER_MAX_RATIO`)
    /// applies: every path except the spilled-port fallback, which pays the `STEER` hash by
    /// design.
    in_target: bool,
}

/// ns/packet of `steer` on each path (not ours, wildcard port, specific address inline — first
/// and last slot —, spilled port), IPv4 and IPv6, against the bare `pass` program and the
/// `parse_redirect` reference (same parse, unconditional redirect) in the same run. Rounds are
/// interleaved across programs so a noisy moment hits them all alike; the best round counts.
pub fn bench_xdp(args: BenchXdpArgs) -> Result<(), Box<dyn std::error::Error>> {
    use provider_common::{PORT_INLINE_V4, PORT_INLINE_V6};
    let mut s = Steering::load()?;
    let mut cases = Vec::new();
    let mut references = Vec::new();
    for v6 in [false, true] {
        let fam = if v6 { "v6" } else { "v4" };
        let inline = if v6 { PORT_INLINE_V6 } else { PORT_INLINE_V4 };
        let local = |i: usize, port: u16| -> SocketAddr {
            if v6 {
                SocketAddr::new(
                    IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, i as u16)),
                    port,
                )
            } else {
                SocketAddr::new(
                    IpAddr::V4(std::net::Ipv4Addr::new(198, 18, 0, i as u8)),
                    port,
                )
            }
        };
        let peer = if v6 {
            "[2001:2::ee]:40000"
        } else {
            "198.18.0.238:40000"
        }
        .parse()?;
        let key = |addr: SocketAddr| match addr.ip() {
            IpAddr::V4(a) => SteerKey::v4(PROTO_UDP, a.octets(), addr.port()),
            IpAddr::V6(a) => SteerKey::v6(PROTO_UDP, a.octets(), addr.port()),
        };
        let wildcard = if v6 { "[::]:7778" } else { "0.0.0.0:7778" }.parse()?;
        // 7777: one specific address; 7778: wildcard; 7779: every inline slot used; 7780: one
        // address more than fits inline (the last one added spills to STEER).
        s.steer_add(key(local(1, 7777)))?;
        s.steer_add(key(wildcard))?;
        for i in 1..=inline {
            s.steer_add(key(local(i, 7779)))?;
        }
        for i in 1..=inline + 1 {
            s.steer_add(key(local(i, 7780)))?;
        }
        let mut case = |id: &str, label: String, dst: SocketAddr, in_target: bool| {
            cases.push(XdpCase {
                id: format!("{fam}_{id}"),
                label: format!("{fam} {label}"),
                v6,
                frame: udp_frame(peer, dst, 64),
                in_target,
            });
        };
        case("miss", "not ours, port unused".into(), local(1, 9), true);
        case(
            "miss_full_port",
            format!("not ours, other address on a {inline}-address port"),
            local(inline + 2, 7779),
            true,
        );
        case(
            "wildcard",
            "ours, wildcard-bound port".into(),
            local(1, 7778),
            true,
        );
        case(
            "specific",
            "ours, specific address".into(),
            local(1, 7777),
            true,
        );
        case(
            "specific_last_slot",
            format!("ours, specific, last of {inline} inline"),
            local(inline, 7779),
            true,
        );
        case(
            "spilled",
            format!("ours, specific, spilled ({} on port)", inline + 1),
            local(inline + 1, 7780),
            false,
        );
        references.push(udp_frame(peer, local(1, 7777), 64));
    }
    // Slot 0: bare pass; 1, 2: parse_redirect on v4 / v6; then the steer cases.
    let mut runs: Vec<(Prog, &[u8])> = vec![
        (Prog::Pass, &references[0]),
        (Prog::ParseRedirect, &references[0]),
        (Prog::ParseRedirect, &references[1]),
    ];
    runs.extend(cases.iter().map(|c| (Prog::Steer, c.frame.as_slice())));
    let mut best = vec![f64::MAX; runs.len()];
    for _ in 0..args.rounds.max(1) {
        for (slot, (prog, frame)) in runs.iter().enumerate() {
            let out = s.test_run(*prog, frame, args.repeat)?;
            best[slot] = best[slot].min(out.per_run.as_nanos() as f64);
        }
    }
    let (pass, reference) = (best[0], [best[1], best[2]]);
    let rows: Vec<_> = cases
        .iter()
        .zip(&best[3..])
        .map(|(c, &ns)| {
            let floor = reference[usize::from(c.v6)];
            json!({
                "id": c.id, "label": c.label, "family": if c.v6 { "v6" } else { "v4" },
                "ns": ns, "vs_pass": ns / pass, "vs_parse_redirect": ns / floor,
                "in_target": c.in_target,
            })
        })
        .collect();
    let ns = |id: &str| {
        cases
            .iter()
            .position(|c| c.id == id)
            .map(|i| best[3 + i])
            .unwrap_or(f64::NAN)
    };
    let (hit, wildcard, miss) = (ns("v4_specific"), ns("v4_wildcard"), ns("v4_miss"));
    println!(
        "{}",
        json!({
            "repeat": args.repeat, "rounds": args.rounds,
            "pass_ns": pass,
            "parse_redirect_v4_ns": reference[0], "parse_redirect_v6_ns": reference[1],
            "cases": rows,
            // The v4 rows under their earlier names, so older result readers keep working.
            "steer_hit_ns": hit, "steer_hit_wildcard_ns": wildcard, "steer_miss_ns": miss,
            "ratio_hit": hit / pass, "ratio_hit_wildcard": wildcard / pass,
            "ratio_miss": miss / pass,
        })
    );
    Ok(())
}

#[derive(Args)]
pub struct PktgenArgs {
    /// Interface the frames are injected on (they leave through it with XDP_TX).
    #[arg(long)]
    iface: String,
    /// Destination MAC (the receiving interface).
    #[arg(long, value_parser = parse_mac)]
    dst_mac: [u8; 6],
    /// Source address:port of the generated datagrams.
    #[arg(long)]
    src: SocketAddr,
    /// Destination address:port.
    #[arg(long)]
    dst: SocketAddr,
    /// UDP payload bytes.
    #[arg(long, default_value_t = 18)]
    size: usize,
    /// How long to generate.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Live-frames batch size.
    #[arg(long, default_value_t = 64)]
    batch: u32,
}

/// In-kernel generator: BPF_PROG_TEST_RUN with live frames running the `xmit` (XDP_TX) program.
pub fn pktgen(args: PktgenArgs) -> Result<(), Box<dyn std::error::Error>> {
    let ifindex = provider::net::neighbour::ifindex(&args.iface)?;
    let src_mac = provider::net::neighbour::interface_mac(ifindex)?;
    let s = Steering::load()?;
    let mut frame = udp_frame(args.src, args.dst, args.size);
    frame[0..6].copy_from_slice(&args.dst_mac);
    frame[6..12].copy_from_slice(&src_mac);
    let chunk = 100_000u32;
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.seconds);
    let mut frames = 0u64;
    while Instant::now() < deadline {
        s.live_frames(Prog::Xmit, ifindex, &frame, chunk, args.batch)?;
        frames += u64::from(chunk);
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({"frames": frames, "seconds": secs, "pps": frames as f64 / secs, "frame_len": frame.len()})
    );
    Ok(())
}

fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<_> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(format!("{s:?} is not a MAC address"));
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        *m = u8::from_str_radix(p, 16).map_err(|e| format!("{s:?}: {e}"))?;
    }
    Ok(mac)
}

#[derive(Args)]
pub struct KernelSinkArgs {
    /// UDP port to count on (kernel socket, all addresses).
    #[arg(long)]
    port: u16,
    /// Attach the bare XDP_PASS program to this interface while counting, so frames injected
    /// with XDP_TX are accepted exactly as they are with the provider running (DESIGN §10).
    #[arg(long)]
    attach_pass: Option<String>,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
}

/// Count datagrams on a kernel UDP socket with recvmmsg, printing the rate every 250 ms.
pub fn kernel_sink(args: KernelSinkArgs) -> Result<(), Box<dyn std::error::Error>> {
    let mut steering = None;
    if let Some(iface) = &args.attach_pass {
        let mut s = Steering::load()?;
        s.attach(
            Prog::Pass,
            provider::net::neighbour::ifindex(iface)?,
            AttachMode::Native,
        )?;
        steering = Some(s);
    }
    let sock = std::net::UdpSocket::bind(SocketAddr::new(IpAddr::from([0u8; 4]), args.port))?;
    sock.set_read_timeout(Some(Duration::from_millis(50)))?;
    println!("ready: kernel udp sink on {}", args.port);
    let mut counter = RateReporter::new();
    let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);
    let mut batch = super::mmsg::RecvBatch::new(64, 2048);
    while Instant::now() < deadline {
        let n = batch.recv(&sock);
        counter.add(n as u64);
    }
    drop(steering);
    Ok(())
}

#[derive(Args)]
pub struct ProviderSinkArgs {
    #[command(flatten)]
    datapath: super::DatapathArgs,
    /// UDP port to count on (provider socket, IPv4 wildcard).
    #[arg(long)]
    port: u16,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
}

/// Count datagrams delivered through the provider to a WSP UDP socket, rate every 250 ms.
pub fn provider_sink(args: ProviderSinkArgs) -> Result<(), Box<dyn std::error::Error>> {
    use provider::api::{AF_INET, IPPROTO_UDP, SOCK_DGRAM};
    let engine = super::start(&args.datapath)?;
    let p = engine.provider().clone();
    let s = p.wsp_socket(AF_INET, SOCK_DGRAM, IPPROTO_UDP)?;
    p.wsp_bind(s, SocketAddr::new(IpAddr::from([0u8; 4]), args.port))?;
    let mut nb = 1u32;
    p.wsp_ioctl(s, provider::socket::options::FIONBIO, &mut nb)?;
    println!("ready: provider udp sink on {}", args.port);
    let mut counter = RateReporter::new();
    let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);
    let mut buf = vec![0u8; 2048];
    while Instant::now() < deadline {
        match p.wsp_recv_from(s, &mut buf) {
            Ok(_) => counter.add(1),
            Err(_) => {
                counter.add(0);
                std::thread::sleep(Duration::from_micros(50));
            }
        }
    }
    let _ = p.wsp_close_socket(s);
    eprintln!("{}", serde_json::to_string(&engine.stats())?);
    Ok(())
}

/// Prints `{"t": seconds, "count": total, "pps": rate}` lines every 250 ms.
struct RateReporter {
    start: Instant,
    last: Instant,
    total: u64,
    last_total: u64,
    calls: u64,
}

impl RateReporter {
    fn new() -> Self {
        let now = Instant::now();
        Self {
            start: now,
            last: now,
            total: 0,
            last_total: 0,
            calls: 0,
        }
    }

    fn add(&mut self, n: u64) {
        self.total += n;
        self.calls += 1;
        // Reading the clock per datagram would cost more than receiving it.
        if !self.calls.is_multiple_of(256) {
            return;
        }
        let now = Instant::now();
        let dt = now - self.last;
        if dt >= Duration::from_millis(250) {
            let pps = (self.total - self.last_total) as f64 / dt.as_secs_f64();
            println!(
                "{}",
                json!({"t": (now - self.start).as_secs_f64(), "count": self.total, "pps": pps})
            );
            self.last = now;
            self.last_total = self.total;
        }
    }
}

mod etherparse_free {
    use std::net::SocketAddr;

    /// A UDP frame with `size` payload bytes and zero MACs (callers set them), checksummed.
    pub fn udp_frame(src: SocketAddr, dst: SocketAddr, size: usize) -> Vec<u8> {
        let mut buf = vec![0u8; 14 + 40 + 8 + size];
        let payload = vec![0x5a; size];
        let n = provider::net::frame::build_udp(&mut buf, [0; 6], [0; 6], None, src, dst, &payload)
            .expect("frame fits");
        buf.truncate(n);
        buf
    }
}
