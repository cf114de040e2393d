//! `PORTS` bookkeeping (no root: a model of the XDP program's decision checks every rewrite) and
//! the `steer` program's verdicts for ports with many, few, wildcard and spilled endpoints
//! (root: `BPF_PROG_TEST_RUN`). The older verdict tests on malformed, fragmented and tagged frames
//! are in `tests/tests/xdp_verdicts.rs`.
use std::collections::{HashMap, HashSet};

use etherparse::PacketBuilder;
use provider_common::{
    FAMILY_V4, PORT_INLINE_V4, PORT_INLINE_V6, PORT_SPILLED, PORT_WILDCARD, PROTO_TCP, PROTO_UDP,
    PortEntry, SteerKey, port_index,
};

use super::ports::{Ports, is_wildcard};
use super::{Prog, Steering, VerdictCounters, XDP_PASS};

// ---------------------------------------------------------------------------------------------
// A model of the program's decision, and of what a racing reader may see.

/// `is_ours` of provider-ebpf, on a `PortEntry` and the `STEER` key set.
fn model_is_ours(entry: &PortEntry, steer: &HashSet<SteerKey>, key: &SteerKey) -> bool {
    if entry.flags & PORT_WILDCARD != 0 {
        return true;
    }
    let inline = if key.family == FAMILY_V4 {
        let word = PortEntry::v4_word([key.addr[0], key.addr[1], key.addr[2], key.addr[3]]);
        (0..PORT_INLINE_V4).any(|i| entry.valid & (1 << i) != 0 && entry.addrs[i] == word)
    } else {
        let words = PortEntry::v6_words(key.addr);
        (0..PORT_INLINE_V6)
            .any(|j| entry.valid & (1 << j) != 0 && entry.addrs[4 * j..4 * j + 4] == words)
    };
    inline || (entry.flags & PORT_SPILLED != 0 && steer.contains(key))
}

/// Each rewrite changes only slots invalid before and after, or exactly one flag/valid bit.
fn assert_safe_rewrite(family: u8, old: &PortEntry, new: &PortEntry) {
    let bits = |e: &PortEntry| u16::from(e.flags) | (u16::from(e.valid) << 8);
    if old.addrs == new.addrs {
        assert_eq!(
            (bits(old) ^ bits(new)).count_ones(),
            1,
            "a bit-only rewrite flips one bit: {old:?} → {new:?}"
        );
        return;
    }
    assert_eq!(
        bits(old),
        bits(new),
        "slot rewrite with bits: {old:?} → {new:?}"
    );
    // A changed word must belong to a slot whose valid bit is clear (v4: word i is slot i; v6:
    // words 4j..4j+4 are slot j).
    let words_per_slot = if family == FAMILY_V4 { 1 } else { 4 };
    for i in 0..8 {
        if old.addrs[i] != new.addrs[i] {
            let slot = i / words_per_slot;
            assert_eq!(old.valid & (1 << slot), 0, "word {i}: slot {slot} is valid");
        }
    }
}

/// A `Steering` without the kernel: `STEER` as a set, `PORTS` as a map, and `steer_add` /
/// `steer_remove` in the same order as the real one, checking every intermediate entry.
#[derive(Default)]
struct Model {
    ports: Ports,
    steer: HashSet<SteerKey>,
    kernel: HashMap<u32, PortEntry>,
    writes: usize,
}

impl Model {
    /// Every key of the same port as `key`, for the "nobody else is disturbed" checks.
    fn port_keys(&self, key: &SteerKey) -> Vec<SteerKey> {
        self.steer
            .iter()
            .filter(|k| (k.family, k.proto, k.port) == (key.family, key.proto, key.port))
            .copied()
            .collect()
    }

    fn apply(
        &mut self,
        key: &SteerKey,
        add: bool,
        probes: &[SteerKey],
    ) -> Result<(), &'static str> {
        let before: HashSet<SteerKey> = self.port_keys(key).into_iter().collect();
        let mut after = before.clone();
        if add {
            after.insert(*key);
            self.steer.insert(*key);
        } else {
            after.remove(key);
        }
        // Mid-change, what both sides agree on must hold; anything else may go either way.
        let kept: HashSet<SteerKey> = before.intersection(&after).copied().collect();
        let either: HashSet<SteerKey> = before.union(&after).copied().collect();
        let family = key.family;
        let steer = self.steer.clone();
        let kernel = &mut self.kernel;
        let writes = &mut self.writes;
        let mut check = |index: u32, entry: &PortEntry| -> Result<(), &'static str> {
            let old = kernel.get(&index).copied().unwrap_or_default();
            assert_safe_rewrite(family, &old, entry);
            for probe in probes {
                let same_port =
                    (probe.family, probe.proto, probe.port) == (key.family, key.proto, key.port);
                if !same_port {
                    continue;
                }
                let ours = model_is_ours(entry, &steer, probe);
                if kept.contains(probe) || has_wildcard(&kept) {
                    assert!(ours, "{probe:?} lost while changing {key:?}");
                }
                if !either.contains(probe) && !has_wildcard(&either) {
                    assert!(!ours, "{probe:?} steered while changing {key:?}");
                }
            }
            kernel.insert(index, *entry);
            *writes += 1;
            Ok(())
        };
        if add {
            self.ports.add(key, &mut check)?;
        } else {
            self.ports.remove(key, &mut check)?;
            self.steer.remove(key);
        }
        Ok(())
    }

    fn add(&mut self, key: SteerKey, probes: &[SteerKey]) {
        self.apply(&key, true, probes).unwrap();
    }

    fn remove(&mut self, key: SteerKey, probes: &[SteerKey]) {
        self.apply(&key, false, probes).unwrap();
    }

    fn is_ours(&self, key: &SteerKey) -> bool {
        let index = port_index(key.family, key.proto, key.port);
        let entry = self.kernel.get(&index).copied().unwrap_or_default();
        model_is_ours(&entry, &self.steer, key)
    }

    /// Ours exactly for the registered keys and, on a wildcard port, everything on the port.
    fn assert_exact(&self, probes: &[SteerKey]) {
        for probe in probes {
            let wildcard = self.steer.iter().any(|k| {
                is_wildcard(k)
                    && (k.family, k.proto, k.port) == (probe.family, probe.proto, probe.port)
            });
            assert_eq!(
                self.is_ours(probe),
                wildcard || self.steer.contains(probe),
                "{probe:?} with {:?}",
                self.steer
            );
        }
        // The mirror and the "kernel" agree.
        for (index, entry) in &self.kernel {
            assert_eq!(self.ports.entry(*index), *entry);
        }
    }
}

fn has_wildcard(keys: &HashSet<SteerKey>) -> bool {
    keys.iter().any(is_wildcard)
}

fn v4(proto: u8, last: u8, port: u16) -> SteerKey {
    SteerKey::v4(proto, [198, 18, 1, last], port)
}

fn v6(proto: u8, last: u8, port: u16) -> SteerKey {
    let mut a = [0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    a[15] = last;
    SteerKey::v6(proto, a, port)
}

/// Deterministic xorshift: shuffles without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn ninth_v4_address_spills_and_comes_back_inline() {
    let port = 7777;
    let index = port_index(FAMILY_V4, PROTO_UDP, port);
    let probes: Vec<_> = (1..=12).map(|i| v4(PROTO_UDP, i, port)).collect();
    let mut m = Model::default();
    for key in &probes[..PORT_INLINE_V4] {
        m.add(*key, &probes);
    }
    assert_eq!(m.ports.entry(index).valid, 0xff);
    assert_eq!(m.ports.entry(index).flags, 0, "all inline, nothing spilled");
    m.add(probes[8], &probes);
    m.add(probes[9], &probes);
    assert_eq!(m.ports.entry(index).flags, PORT_SPILLED);
    assert_eq!(m.ports.spilled(index), 2);
    m.assert_exact(&probes);
    // Freeing a slot pulls a spilled address in; the port stays spilled while one is left.
    m.remove(probes[3], &probes);
    assert_eq!(m.ports.spilled(index), 1);
    assert_eq!(m.ports.entry(index).flags, PORT_SPILLED);
    assert_eq!(m.ports.entry(index).valid, 0xff);
    m.remove(probes[0], &probes);
    assert_eq!(m.ports.spilled(index), 0);
    assert_eq!(
        m.ports.entry(index).flags,
        0,
        "nothing spilled: no STEER lookups"
    );
    m.assert_exact(&probes);
    for key in m.port_keys(&probes[0]) {
        m.remove(key, &probes);
    }
    assert_eq!(m.ports.len(), 0);
    assert_eq!(
        m.kernel[&index],
        PortEntry::default(),
        "an unused port is all zero"
    );
}

#[test]
fn v6_holds_two_inline_then_spills() {
    let port = 443;
    let index = port_index(provider_common::FAMILY_V6, PROTO_TCP, port);
    let probes: Vec<_> = (1..=5).map(|i| v6(PROTO_TCP, i, port)).collect();
    let mut m = Model::default();
    for key in &probes[..4] {
        m.add(*key, &probes);
    }
    assert_eq!(m.ports.entry(index).valid, 0b11);
    assert_eq!(m.ports.entry(index).flags, PORT_SPILLED);
    assert_eq!(m.ports.spilled(index), 2);
    m.assert_exact(&probes);
    m.remove(probes[1], &probes);
    m.remove(probes[2], &probes);
    m.assert_exact(&probes);
    assert_eq!(m.ports.entry(index).flags, 0);
    assert_eq!(m.ports.spilled(index), 0);
}

#[test]
fn wildcard_and_specific_on_one_port_are_independent() {
    let port = 53;
    let wildcard = SteerKey::v4(PROTO_UDP, [0; 4], port);
    let mut probes: Vec<_> = (1..=10).map(|i| v4(PROTO_UDP, i, port)).collect();
    probes.push(wildcard);
    let mut m = Model::default();
    m.add(probes[0], &probes);
    m.add(wildcard, &probes);
    assert!(m.is_ours(&probes[5]), "wildcard: any address");
    for key in &probes[1..10] {
        m.add(*key, &probes);
    }
    m.remove(wildcard, &probes);
    m.assert_exact(&probes);
    m.add(wildcard, &probes);
    m.remove(probes[0], &probes);
    m.assert_exact(&probes);
    assert!(
        m.is_ours(&probes[0]),
        "the wildcard still covers a removed specific address"
    );
}

/// Random binds and closes on a few ports of both families: after every step the program's
/// answer is exactly the registered set, and no rewrite ever disturbs another endpoint.
#[test]
fn random_binds_and_closes_keep_exact_semantics() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut universe = Vec::new();
    for port in [7000u16, 7001] {
        for proto in [PROTO_UDP, PROTO_TCP] {
            universe.extend((1..=14).map(|i| v4(proto, i, port)));
            universe.push(SteerKey::v4(proto, [0; 4], port));
            universe.extend((1..=5).map(|i| v6(proto, i, port)));
            universe.push(SteerKey::v6(proto, [0; 16], port));
        }
    }
    let mut m = Model::default();
    for _ in 0..4000 {
        let key = universe[rng.below(universe.len())];
        // Bias towards adding so ports fill past their inline slots.
        let present = m.steer.contains(&key);
        if present && rng.below(3) == 0 {
            m.remove(key, &universe);
        } else if !present {
            m.add(key, &universe);
        }
        m.assert_exact(&universe);
    }
    for key in m.steer.clone() {
        m.remove(key, &universe);
    }
    assert_eq!(m.ports.len(), 0);
    assert!(m.kernel.values().all(|e| *e == PortEntry::default()));
}

#[test]
fn a_failed_write_leaves_the_mirror_as_it_was() {
    let mut ports = Ports::default();
    let key = v4(PROTO_UDP, 1, 9);
    let index = port_index(FAMILY_V4, PROTO_UDP, 9);
    let mut written = Vec::new();
    let r = ports.add(&key, |_, entry| {
        written.push(*entry);
        if written.len() == 2 {
            Err("full")
        } else {
            Ok(())
        }
    });
    assert_eq!(r, Err("full"));
    assert_eq!(ports.entry(index), PortEntry::default());
    assert_eq!(
        written.last(),
        Some(&PortEntry::default()),
        "old entry written back"
    );
    ports.add(&key, |_, _| Ok::<(), ()>(())).unwrap();
    assert_eq!(ports.entry(index).valid, 1);
}

// ---------------------------------------------------------------------------------------------
// The real program (root).

const PEER_V4: [u8; 4] = [198, 18, 0, 2];
const PEER_V6: [u8; 16] = [0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xee];

fn frame(key: &SteerKey) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1]);
    let ip = if key.family == FAMILY_V4 {
        eth.ipv4(
            PEER_V4,
            [key.addr[0], key.addr[1], key.addr[2], key.addr[3]],
            64,
        )
    } else {
        eth.ipv6(PEER_V6, key.addr, 64)
    };
    let mut out = Vec::new();
    if key.proto == PROTO_UDP {
        ip.udp(40000, key.port).write(&mut out, b"x").unwrap();
    } else {
        ip.tcp(40000, key.port, 1, 65535)
            .syn()
            .write(&mut out, &[])
            .unwrap();
    }
    out
}

/// Whether `steer` takes `key`'s frame (no XSK is registered, so ours falls back to the kernel
/// and counts `redirect_failed`; not ours counts `passed_not_ours`).
fn steered(s: &Steering, key: &SteerKey) -> bool {
    let before = s.stats().unwrap();
    let out = s.test_run(Prog::Steer, &frame(key), 1).unwrap();
    let moved = s.stats().unwrap().since(&before);
    assert_eq!(
        out.action, XDP_PASS,
        "{key:?}: no XSK → fallback to the kernel"
    );
    let ours = VerdictCounters {
        redirect_failed: 1,
        ..Default::default()
    };
    let not_ours = VerdictCounters {
        passed_not_ours: 1,
        ..Default::default()
    };
    assert!(moved == ours || moved == not_ours, "{key:?}: {moved:?}");
    moved == ours
}

fn assert_steered(s: &Steering, probes: &[SteerKey], registered: &HashSet<SteerKey>) {
    for probe in probes {
        let wildcard = registered.iter().any(|k| {
            is_wildcard(k) && (k.family, k.proto, k.port) == (probe.family, probe.proto, probe.port)
        });
        assert_eq!(
            steered(s, probe),
            wildcard || registered.contains(probe),
            "{probe:?}"
        );
    }
}

/// More specific addresses on one port than fit inline, v4 and v6, UDP and TCP: every one is
/// steered, others are not, and removing them one by one (inline and spilled alike) leaves
/// exactly the rest steered.
#[test]
#[ignore = "needs root (BPF)"]
fn many_specific_addresses_on_one_port() {
    let mut s = Steering::load().expect("load steer (are we root?)");
    let mut probes = Vec::new();
    for proto in [PROTO_UDP, PROTO_TCP] {
        probes.extend((1..=PORT_INLINE_V4 as u8 + 4).map(|i| v4(proto, i, 7777)));
        probes.extend((1..=PORT_INLINE_V6 as u8 + 3).map(|i| v6(proto, i, 7777)));
    }
    let mut registered = HashSet::new();
    // Leave address 2 of each group unregistered as the "same port, other address" probe.
    let last = |k: &SteerKey| {
        if k.family == FAMILY_V4 {
            k.addr[3]
        } else {
            k.addr[15]
        }
    };
    for key in probes.iter().filter(|k| last(k) != 2) {
        s.steer_add(*key).unwrap();
        registered.insert(*key);
    }
    assert_steered(&s, &probes, &registered);
    let mut rng = Rng(7);
    let mut order: Vec<_> = registered.iter().copied().collect();
    order.sort_by_key(|k| (k.family, k.proto, k.addr));
    while !order.is_empty() {
        let key = order.swap_remove(rng.below(order.len()));
        s.steer_remove(&key).unwrap();
        registered.remove(&key);
        assert_steered(&s, &probes, &registered);
    }
    assert!(s.steered_keys().is_empty());
}

/// One of several specific addresses goes; the others and the wildcard behave.
#[test]
#[ignore = "needs root (BPF)"]
fn remove_one_of_several_and_wildcard_with_specific() {
    let mut s = Steering::load().expect("load steer (are we root?)");
    for (family_v6, port) in [(false, 5000u16), (true, 5001)] {
        let mk = |i| {
            if family_v6 {
                v6(PROTO_UDP, i, port)
            } else {
                v4(PROTO_UDP, i, port)
            }
        };
        let wildcard = if family_v6 {
            SteerKey::v6(PROTO_UDP, [0; 16], port)
        } else {
            SteerKey::v4(PROTO_UDP, [0; 4], port)
        };
        let probes: Vec<_> = (1..=4).map(mk).collect();
        let mut registered: HashSet<_> = probes[..3].iter().copied().collect();
        for key in &registered {
            s.steer_add(*key).unwrap();
        }
        s.steer_remove(&probes[1]).unwrap();
        registered.remove(&probes[1]);
        assert_steered(&s, &probes, &registered);
        s.steer_add(wildcard).unwrap();
        registered.insert(wildcard);
        assert_steered(&s, &probes, &registered);
        s.steer_remove(&probes[0]).unwrap();
        registered.remove(&probes[0]);
        assert_steered(&s, &probes, &registered);
        s.steer_remove(&wildcard).unwrap();
        registered.remove(&wildcard);
        assert_steered(&s, &probes, &registered);
        // Re-adding a removed address works and is idempotent.
        s.steer_add(probes[1]).unwrap();
        s.steer_add(probes[1]).unwrap();
        registered.insert(probes[1]);
        assert_steered(&s, &probes, &registered);
    }
    let mut keys = s.steered_keys();
    keys.sort_by_key(|k| (k.family, k.port, k.addr));
    assert_eq!(keys.len(), 4, "{keys:?}");
}

/// The benchmark reference loads and passes malformed frames; well-formed ones are redirected,
/// which with no XSK registered falls back to `XDP_PASS` too. It counts nothing.
#[test]
#[ignore = "needs root (BPF)"]
fn parse_redirect_reference_runs_and_counts_nothing() {
    let s = Steering::load().expect("load steer (are we root?)");
    let before = s.stats().unwrap();
    for key in [v4(PROTO_UDP, 1, 9), v6(PROTO_TCP, 1, 9)] {
        let f = frame(&key);
        for len in [f.len(), 20] {
            let out = s.test_run(Prog::ParseRedirect, &f[..len], 1).unwrap();
            assert_eq!(out.action, XDP_PASS);
        }
    }
    assert_eq!(s.stats().unwrap(), before);
}
