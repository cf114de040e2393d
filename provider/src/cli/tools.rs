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

/// ns/packet of `steer` (steered hit, not-ours miss) against the bare `pass` program, same run.
pub fn bench_xdp(args: BenchXdpArgs) -> Result<(), Box<dyn std::error::Error>> {
    let mut s = Steering::load()?;
    let ours: SocketAddr = "198.18.0.1:7777".parse()?;
    let peer: SocketAddr = "198.18.0.2:40000".parse()?;
    s.steer_add(SteerKey::v4(PROTO_UDP, [198, 18, 0, 1], 7777))?;
    s.steer_add(SteerKey::v4(PROTO_UDP, [0; 4], 7778))?;
    let hit = udp_frame(peer, ours, 64);
    let hit_wildcard = udp_frame(peer, "198.18.0.1:7778".parse()?, 64);
    let miss = udp_frame(peer, "198.18.0.1:9".parse()?, 64);
    let best = |prog: Prog, frame: &[u8]| -> Result<f64, Box<dyn std::error::Error>> {
        let mut best = f64::MAX;
        for _ in 0..args.rounds {
            let out = s.test_run(prog, frame, args.repeat)?;
            best = best.min(out.per_run.as_nanos() as f64);
        }
        Ok(best)
    };
    let pass = best(Prog::Pass, &hit)?;
    let steer_hit = best(Prog::Steer, &hit)?;
    let steer_hit_wildcard = best(Prog::Steer, &hit_wildcard)?;
    let steer_miss = best(Prog::Steer, &miss)?;
    println!(
        "{}",
        json!({
            "repeat": args.repeat, "rounds": args.rounds,
            "pass_ns": pass, "steer_hit_ns": steer_hit,
            "steer_hit_wildcard_ns": steer_hit_wildcard, "steer_miss_ns": steer_miss,
            "ratio_hit": steer_hit / pass, "ratio_hit_wildcard": steer_hit_wildcard / pass,
            "ratio_miss": steer_miss / pass,
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
