//! The XDP side of the datapath: load the `steer` program, attach it, and own its maps
//! (DESIGN §2).
//!
//! `Steering` is the only place that talks to the kernel's BPF objects; the socket table reaches
//! the STEER map and the PORTS array through it (`steer_add` / `steer_remove`; `ports` orders the
//! PORTS rewrites), the engine registers its AF_XDP sockets in XSKS, and `stats()` reads the
//! per-CPU verdict counters.
mod ports;
#[cfg(test)]
mod tests;

use std::{
    os::fd::{AsFd, AsRawFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, XskMap},
    programs::{ProgramError, TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
};
use provider_common::{
    MAP_PORTS, MAP_STATS, MAP_STEER, MAP_XSKS, PROG_PARSE_REDIRECT, PROG_PASS, PROG_STEER,
    PROG_XMIT, PortEntry, SteerKey, SteerValue, stat,
};
use thiserror::Error;

/// The compiled `provider-ebpf` object, built by `build.rs`.
static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/provider-ebpf.o"));

#[derive(Debug, Error)]
pub enum XdpError {
    #[error("aya-log: {0}")]
    Log(String),
    #[error("loading the eBPF object failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        source: ProgramError,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("map {0} missing from the object")]
    MissingMap(&'static str),
    #[error("program {0} missing from the object")]
    MissingProgram(&'static str),
    #[error("attaching to ifindex {ifindex} failed in every allowed mode: {source}")]
    Attach { ifindex: u32, source: ProgramError },
}

/// How to attach: native (driver) mode, generic SKB mode, or native with SKB fallback.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    #[default]
    Auto,
    Native,
    Skb,
}

/// Which program of the object to run in `test_run`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prog {
    Steer,
    /// The benchmark reference: `steer`'s parse, then an unconditional redirect.
    ParseRedirect,
    Pass,
    Xmit,
}

impl Prog {
    const ALL: [Prog; 4] = [Prog::Steer, Prog::ParseRedirect, Prog::Pass, Prog::Xmit];

    const fn name(self) -> &'static str {
        match self {
            Prog::Steer => PROG_STEER,
            Prog::ParseRedirect => PROG_PARSE_REDIRECT,
            Prog::Pass => PROG_PASS,
            Prog::Xmit => PROG_XMIT,
        }
    }
}

/// Per-verdict counters summed over CPUs, indexed by `provider_common::stat`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct VerdictCounters {
    pub steered: u64,
    pub passed_not_ours: u64,
    pub passed_malformed: u64,
    pub passed_fragment: u64,
    pub passed_ext_header: u64,
    pub redirect_failed: u64,
}

impl VerdictCounters {
    fn from_array(v: [u64; stat::COUNT as usize]) -> Self {
        Self {
            steered: v[stat::STEERED as usize],
            passed_not_ours: v[stat::PASSED_NOT_OURS as usize],
            passed_malformed: v[stat::PASSED_MALFORMED as usize],
            passed_fragment: v[stat::PASSED_FRAGMENT as usize],
            passed_ext_header: v[stat::PASSED_EXT_HEADER as usize],
            redirect_failed: v[stat::REDIRECT_FAILED as usize],
        }
    }

    /// Counter-wise `self - earlier` (saturating), for before/after measurements.
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            steered: self.steered.saturating_sub(earlier.steered),
            passed_not_ours: self.passed_not_ours.saturating_sub(earlier.passed_not_ours),
            passed_malformed: self
                .passed_malformed
                .saturating_sub(earlier.passed_malformed),
            passed_fragment: self.passed_fragment.saturating_sub(earlier.passed_fragment),
            passed_ext_header: self
                .passed_ext_header
                .saturating_sub(earlier.passed_ext_header),
            redirect_failed: self.redirect_failed.saturating_sub(earlier.redirect_failed),
        }
    }
}

/// Result of one `BPF_PROG_TEST_RUN`.
#[derive(Clone, Copy, Debug)]
pub struct TestRunOutcome {
    /// The XDP action the program returned (`XDP_PASS` = 2, `XDP_TX` = 3, `XDP_REDIRECT` = 4).
    pub action: u32,
    /// Mean time per run as the kernel measured it.
    pub per_run: Duration,
}

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// The loaded object: programs, maps and (once attached) the link.
pub struct Steering {
    ebpf: Ebpf,
    steer: HashMap<MapData, SteerKey, SteerValue>,
    ports: Array<MapData, PortEntry>,
    /// Userspace mirror of the steered keys (`steer_add` of a present key is a no-op) and of
    /// every non-empty `PORTS` entry, so each bind or close rewrites only what it changes.
    keys: std::collections::HashSet<SteerKey>,
    port_entries: ports::Ports,
    xsks: XskMap<MapData>,
    stats: PerCpuArray<MapData, u64>,
    attached: Option<(u32, XdpMode)>,
    link: Option<(Prog, aya::programs::xdp::XdpLinkId)>,
    /// Set on drop to end the aya-log forwarding thread.
    log_stop: Option<Arc<AtomicBool>>,
}

impl Drop for Steering {
    fn drop(&mut self) {
        if let Some(stop) = &self.log_stop {
            stop.store(true, Ordering::Relaxed);
        }
    }
}

impl std::fmt::Debug for Steering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Steering")
            .field("attached", &self.attached)
            .finish()
    }
}

impl Steering {
    /// Load the object and its programs into the kernel (verifier included); nothing is attached
    /// yet.
    pub fn load() -> Result<Self, XdpError> {
        Self::load_with(false)
    }

    /// As `load`; with `log_malformed` the program logs every malformed frame through aya-log
    /// (forwarded to `tracing` at WARN by a background thread) — a diagnostic, off by default.
    pub fn load_with(log_malformed: bool) -> Result<Self, XdpError> {
        let flag: u8 = log_malformed.into();
        let mut ebpf = EbpfLoader::new()
            .override_global("LOG_MALFORMED", &flag, true)
            .load(OBJECT)?;
        let log_stop = if log_malformed {
            Some(spawn_log_forwarder(&mut ebpf)?)
        } else {
            None
        };
        for name in Prog::ALL.map(Prog::name) {
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or(XdpError::MissingProgram(name))?
                .try_into()
                .map_err(|source| XdpError::Program { name, source })?;
            prog.load()
                .map_err(|source| XdpError::Program { name, source })?;
        }
        let steer = take_map(&mut ebpf, MAP_STEER)?;
        let ports = take_map(&mut ebpf, MAP_PORTS)?;
        let xsks = take_map(&mut ebpf, MAP_XSKS)?;
        let stats = take_map(&mut ebpf, MAP_STATS)?;
        Ok(Self {
            ebpf,
            steer,
            ports,
            keys: Default::default(),
            port_entries: Default::default(),
            xsks,
            stats,
            attached: None,
            link: None,
            log_stop,
        })
    }

    fn program(&self, prog: Prog) -> Result<&Xdp, XdpError> {
        let name = prog.name();
        self.ebpf
            .program(name)
            .ok_or(XdpError::MissingProgram(name))?
            .try_into()
            .map_err(|source| XdpError::Program { name, source })
    }

    fn program_mut(&mut self, prog: Prog) -> Result<&mut Xdp, XdpError> {
        let name = prog.name();
        self.ebpf
            .program_mut(name)
            .ok_or(XdpError::MissingProgram(name))?
            .try_into()
            .map_err(|source| XdpError::Program { name, source })
    }

    /// Attach `prog` to an interface. `Auto` tries native mode and falls back to SKB mode.
    /// Returns the mode in effect. The link is detached when `Steering` is dropped.
    pub fn attach(
        &mut self,
        prog: Prog,
        ifindex: u32,
        mode: AttachMode,
    ) -> Result<XdpMode, XdpError> {
        let modes: &[XdpMode] = match mode {
            AttachMode::Auto => &[XdpMode::Driver, XdpMode::Skb],
            AttachMode::Native => &[XdpMode::Driver],
            AttachMode::Skb => &[XdpMode::Skb],
        };
        let xdp = self.program_mut(prog)?;
        let mut last = None;
        for &m in modes {
            match xdp.attach_to_if_index(ifindex, m) {
                Ok(link) => {
                    tracing::info!(ifindex, mode = ?m, program = prog.name(), "XDP attached");
                    self.attached = Some((ifindex, m));
                    self.link = Some((prog, link));
                    return Ok(m);
                }
                Err(err) => {
                    tracing::debug!(ifindex, mode = ?m, %err, "XDP attach failed");
                    last = Some(err);
                }
            }
        }
        Err(XdpError::Attach {
            ifindex,
            source: last.expect("at least one mode tried"),
        })
    }

    /// Detach the program now (dropping `Steering` also detaches). Idempotent.
    pub fn detach(&mut self) -> Result<(), XdpError> {
        if let Some((prog, link)) = self.link.take() {
            self.attached = None;
            self.program_mut(prog)?
                .detach(link)
                .map_err(|source| XdpError::Program {
                    name: prog.name(),
                    source,
                })?;
            tracing::info!(program = prog.name(), "XDP detached");
        }
        Ok(())
    }

    /// Where and how the program is attached, if it is.
    pub fn attached(&self) -> Option<(u32, XdpMode)> {
        self.attached
    }

    /// Steer frames for `key` to the provider (a key with an all-zero address is a wildcard
    /// endpoint). Adding a present key is a no-op.
    ///
    /// `STEER` first, `PORTS` second: a spilled port's program falls back to `STEER`, so the key
    /// must be there before any entry can send the program looking for it.
    pub fn steer_add(&mut self, key: SteerKey) -> Result<(), XdpError> {
        if self.keys.contains(&key) {
            return Ok(());
        }
        self.steer
            .insert(key, SteerValue::default(), 0)
            .map_err(|source| XdpError::Map {
                name: MAP_STEER,
                source,
            })?;
        let ports = &mut self.ports;
        if let Err(source) = self
            .port_entries
            .add(&key, |index, entry| ports.set(index, *entry, 0))
        {
            // Leave nothing behind: the caller sees the bind fail as a whole.
            let _ = self.steer.remove(&key);
            return Err(XdpError::Map {
                name: MAP_PORTS,
                source,
            });
        }
        self.keys.insert(key);
        Ok(())
    }

    /// Stop steering `key`. Removing an absent key is not an error. Other endpoints on the same
    /// port (wildcard or specific) stay steered throughout.
    ///
    /// `PORTS` first, `STEER` second (the reverse of `steer_add`), so an address on its way from
    /// the spilled set into a freed inline slot is matched at every step.
    pub fn steer_remove(&mut self, key: &SteerKey) -> Result<(), XdpError> {
        if !self.keys.contains(key) {
            return Ok(());
        }
        let ports = &mut self.ports;
        self.port_entries
            .remove(key, |index, entry| ports.set(index, *entry, 0))
            .map_err(|source| XdpError::Map {
                name: MAP_PORTS,
                source,
            })?;
        self.keys.remove(key);
        match self.steer.remove(key) {
            Err(err) if !is_not_found(&err) => Err(XdpError::Map {
                name: MAP_STEER,
                source: err,
            }),
            _ => Ok(()),
        }
    }

    /// Every endpoint currently steered.
    pub fn steered_keys(&self) -> Vec<SteerKey> {
        self.steer.keys().filter_map(Result::ok).collect()
    }

    /// Register the AF_XDP socket serving RX queue `queue`.
    pub fn set_xsk(&mut self, queue: u32, fd: &impl AsRawFd) -> Result<(), XdpError> {
        self.xsks
            .set(queue, fd.as_raw_fd(), 0)
            .map_err(|source| XdpError::Map {
                name: MAP_XSKS,
                source,
            })
    }

    /// Unregister queue `queue`'s socket: its frames fall back to the kernel.
    pub fn clear_xsk(&mut self, queue: u32) -> Result<(), XdpError> {
        match self.xsks.unset(queue) {
            Err(err) if !is_not_found(&err) => Err(XdpError::Map {
                name: MAP_XSKS,
                source: err,
            }),
            _ => Ok(()),
        }
    }

    /// Verdict counters summed over CPUs.
    pub fn stats(&self) -> Result<VerdictCounters, XdpError> {
        let mut sums = [0u64; stat::COUNT as usize];
        for (i, sum) in sums.iter_mut().enumerate() {
            let per_cpu = self
                .stats
                .get(&(i as u32), 0)
                .map_err(|source| XdpError::Map {
                    name: MAP_STATS,
                    source,
                })?;
            *sum = per_cpu.iter().sum();
        }
        Ok(VerdictCounters::from_array(sums))
    }

    /// Run `prog` on `frame` with `BPF_PROG_TEST_RUN`, `repeat` times, as if it arrived on RX
    /// queue 0. The kernel refuses frames shorter than an Ethernet header (EINVAL).
    pub fn test_run(
        &self,
        prog: Prog,
        frame: &[u8],
        repeat: u32,
    ) -> Result<TestRunOutcome, XdpError> {
        let xdp = self.program(prog)?;
        let opts = TestRunOptions {
            data_in: Some(frame),
            repeat: repeat.max(1),
            ..Default::default()
        };
        let result = xdp.test_run(opts).map_err(|source| XdpError::Program {
            name: prog.name(),
            source,
        })?;
        Ok(TestRunOutcome {
            action: result.return_value,
            per_run: result.duration,
        })
    }

    /// Inject `frame` `repeat` times as live frames arriving on `ifindex`/queue 0 and run `prog`
    /// on them for real (`BPF_F_TEST_XDP_LIVE_FRAMES`): with `Prog::Xmit` each copy is
    /// transmitted out of `ifindex`. This is the in-kernel packet generator (DESIGN §11).
    pub fn live_frames(
        &self,
        prog: Prog,
        ifindex: u32,
        frame: &[u8],
        repeat: u32,
        batch: u32,
    ) -> Result<Duration, XdpError> {
        let xdp = self.program(prog)?;
        // struct xdp_md { data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex }
        let ctx: [u32; 6] = [0, frame.len() as u32, 0, ifindex, 0, 0];
        let opts = TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(bytemuck::cast_slice(&ctx)),
            repeat: repeat.max(1),
            attrs: TestRunAttrs::new().xdp_live_frames(batch),
            ..Default::default()
        };
        let result = xdp.test_run(opts).map_err(|source| XdpError::Program {
            name: prog.name(),
            source,
        })?;
        Ok(result.duration)
    }
}

/// Forward the program's aya-log records to `log`/`tracing` until the returned flag is set.
fn spawn_log_forwarder(ebpf: &mut Ebpf) -> Result<Arc<AtomicBool>, XdpError> {
    let mut logger = aya_log::EbpfLogger::init(ebpf).map_err(|e| XdpError::Log(e.to_string()))?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::Builder::new()
        .name("xdp-log".into())
        .spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let ready = crate::xsk::poll_one(logger.as_fd(), libc::POLLIN, 200);
                if ready.is_ok_and(|r| r & libc::POLLIN != 0) {
                    logger.flush();
                }
            }
        })
        .map_err(|e| XdpError::Log(e.to_string()))?;
    Ok(stop)
}

/// Deleting an absent key: aya reports it either as `KeyNotFound` or as the raw ENOENT.
fn is_not_found(err: &aya::maps::MapError) -> bool {
    match err {
        aya::maps::MapError::KeyNotFound => true,
        aya::maps::MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, XdpError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(XdpError::MissingMap(name))?;
    T::try_from(map).map_err(|source| XdpError::Map { name, source })
}
