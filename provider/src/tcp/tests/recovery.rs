//! Loss recovery scenarios: RACK (RFC 8985 §6), NextSeg rules 3–4 (RFC 6675), tail loss probes
//! (RFC 8985 §7), recovery after a timeout (RFC 6675 §5.1), D-SACK (RFC 2883) both ways, and
//! RTT samples around timeouts.
//!
//! The engine is the sender in most of these, with a 10 ms RTT from the handshake and segments
//! of 1448 bytes (MSS 1460 minus timestamps); `s(k)` is the relative sequence number of segment
//! `k` (1-based), so segment `k` covers `s(k)..s(k + 1)`.

use super::harness::*;
use crate::tcp::ConnId;

const SEG: u32 = 1448;

/// Start of segment `k` (1-based), relative to the engine's ISS.
fn s(k: u32) -> u32 {
    1 + SEG * (k - 1)
}

/// A SACK-capable, timestamping peer with a 10 ms RTT; the engine sends `segs` full segments
/// at 10 ms (the initial window allows 10).
fn sender(segs: u32) -> (Harness, ConnId) {
    let (mut h, _l, c) = Harness::passive_rtt(cfg(), PeerOpts::full(), 10);
    h.engine
        .send(h.now, c, &vec![7u8; (segs * SEG) as usize])
        .unwrap();
    h.drain();
    for k in 1..=segs.min(10) {
        h.expect(10, Exp::default().seq(s(k)).len(SEG as usize));
    }
    (h, c)
}

/// Everything captured so far, as (relative seq, payload length).
fn sent_now(h: &mut Harness) -> Vec<(u32, usize)> {
    let iss = h.iss;
    h.out
        .drain(..)
        .filter(|x| !x.payload.is_empty())
        .map(|x| (x.seq.wrapping_sub(iss), x.payload.len()))
        .collect()
}

#[test]
fn rack_detects_a_lost_retransmission_without_a_timeout() {
    let (mut h, c) = sender(20);
    // Segments 2–4 SACKed: segment 1 is lost (RACK, three SACKed segments, no reordering
    // seen). Fast retransmit at once; the window (7 segments) is full after it.
    h.inject(20, seg(F_ACK).seq(1).ack(1).sack(&[(s(2), s(5))]));
    assert_eq!(sent_now(&mut h), [(s(1), SEG as usize)]);
    // Two more SACKed: two new segments.
    h.inject(21, seg(F_ACK).seq(1).ack(1).sack(&[(s(2), s(7))]));
    assert_eq!(
        sent_now(&mut h),
        [(s(11), SEG as usize), (s(12), SEG as usize)]
    );
    // The retransmission of segment 1 is lost too. When segment 12, sent after it, is SACKed
    // and one RTT has passed since the retransmission, RACK marks it lost again.
    h.inject(
        31,
        seg(F_ACK)
            .seq(1)
            .ack(1)
            .sack(&[(s(11), s(13)), (s(2), s(11))]),
    );
    let out = sent_now(&mut h);
    assert_eq!(out.first(), Some(&(s(1), SEG as usize)), "{out:?}");
    let st = h.engine.stats(c).unwrap();
    assert_eq!(st.lost_retransmits, 1);
    assert_eq!(st.rto_count, 0);
    assert_eq!(st.fast_recoveries, 1);
}

#[test]
fn rescue_retransmission_of_the_tail_once_per_recovery() {
    let (mut h, c) = sender(10);
    // Segments 2–9 SACKed, 1 and 10 missing, no new data to send: segment 1 is lost by RACK,
    // segment 10 (sent after the last SACKed one) is not, and nothing else can go out, so
    // RFC 6675 rule 4 resends it.
    h.inject(20, seg(F_ACK).seq(1).ack(1).sack(&[(s(2), s(10))]));
    assert_eq!(
        sent_now(&mut h),
        [(s(1), SEG as usize), (s(10), SEG as usize)]
    );
    assert_eq!(h.engine.stats(c).unwrap().rescue_retransmits, 1);
    // Only once per episode.
    h.inject(21, seg(F_ACK).seq(1).ack(1).sack(&[(s(2), s(10))]));
    assert_eq!(sent_now(&mut h), []);
    h.inject(30, seg(F_ACK).seq(1).ack(s(11)));
    assert_eq!(h.engine.unacked_bytes(c), 0);
}

#[test]
fn tail_loss_probe_instead_of_a_timeout() {
    let (mut h, c) = sender(10);
    // Segments 1–8 arrive, 9 and 10 are lost: nothing else comes back. The probe timeout
    // (2·SRTT = 20 ms after the last ACK) resends the last segment.
    h.inject(20, seg(F_ACK).seq(1).ack(s(9)));
    h.expect_nothing_until(39);
    h.expect(40, exp(F_ACK | F_PSH).seq(s(10)).len(SEG as usize));
    assert_eq!(h.engine.stats(c).unwrap().tail_loss_probes, 1);
    // Its SACK lets RACK find segment 9.
    h.inject(50, seg(F_ACK).seq(1).ack(s(9)).sack(&[(s(10), s(11))]));
    h.expect(50, exp(F_ACK).seq(s(9)).len(SEG as usize));
    h.inject(60, seg(F_ACK).seq(1).ack(s(11)));
    assert_eq!(h.engine.unacked_bytes(c), 0);
    let st = h.engine.stats(c).unwrap();
    assert_eq!((st.rto_count, st.fast_recoveries), (0, 1));
}

#[test]
fn single_segment_tail_gets_a_probe_at_the_rto_then_a_timeout() {
    let (mut h, c) = sender(1);
    // One segment in flight: PTO = 2·SRTT + 200 ms, capped at the RTO (200 ms): the probe
    // replaces the first timeout...
    h.expect(210, exp(F_ACK | F_PSH).seq(1).len(SEG as usize));
    let st = h.engine.stats(c).unwrap();
    assert_eq!((st.tail_loss_probes, st.rto_count), (1, 0));
    // ...and the retransmission timer restarts after it.
    h.expect(410, exp(F_ACK | F_PSH).seq(1).len(SEG as usize));
    assert_eq!(h.engine.stats(c).unwrap().rto_count, 1);
}

#[test]
fn timeout_marks_everything_lost_but_keeps_sack_information() {
    let (mut h, c) = sender(10);
    // Every ACK is lost: probe at 30 (2·SRTT), then the timeout 200 ms after it.
    h.expect(30, exp(F_ACK | F_PSH).seq(s(10)).len(SEG as usize));
    h.expect(230, exp(F_ACK).seq(s(1)).len(SEG as usize));
    assert_eq!(h.engine.stats(c).unwrap().rto_count, 1);
    assert_eq!(sent_now(&mut h), [], "loss window: one segment");
    // The peer had everything but segments 1–3: its ACK of the retransmission SACKs 4–10.
    // Slow start (2 segments) resends exactly the missing 2 and 3 (RFC 6675 §5.1), not the
    // SACKed data (a go-back-N would resend everything).
    h.inject(240, seg(F_ACK).seq(1).ack(s(2)).sack(&[(s(4), s(11))]));
    assert_eq!(
        sent_now(&mut h),
        [(s(2), SEG as usize), (s(3), SEG as usize)]
    );
    h.inject(250, seg(F_ACK).seq(1).ack(s(11)));
    assert_eq!(h.engine.unacked_bytes(c), 0);
    let st = h.engine.stats(c).unwrap();
    assert_eq!(st.rto_retransmits, 3);
    assert_eq!(st.retransmits, 4);
}

#[test]
fn timestamp_echo_from_before_a_timeout_is_not_an_rtt_sample() {
    // Timestamps but no SACK (so no probe: a plain timeout).
    let peer = PeerOpts {
        sack: false,
        ..PeerOpts::full()
    };
    let (mut h, _l, c) = Harness::passive_rtt(cfg(), peer, 10);
    h.engine.send(h.now, c, &[1; 100]).unwrap();
    h.drain();
    let first = h.expect(10, exp(F_ACK | F_PSH).seq(1).len(100));
    let old_tsval = first.opts.timestamps.unwrap().0;
    // The segment arrives but its ACK is lost; the timeout resends it.
    h.expect(210, exp(F_ACK | F_PSH).seq(1).len(100));
    // The peer already had it: an old duplicate does not update TS.Recent (RFC 7323 §4.3), so
    // the ACK echoes the first transmission's TSval. That is 205 ms old, which measures the
    // timeout, not the path.
    let peer_ts = h.peer_tsval + 1;
    h.inject(215, seg(F_ACK).seq(1).ack(101).ts(peer_ts, old_tsval));
    let srtt = h.engine.stats(c).unwrap().srtt.unwrap();
    assert!(srtt.as_millis() <= 10, "srtt {srtt:?}");
}

// ------------------------------------------------------------------ D-SACK

#[test]
fn receiver_reports_duplicates_in_a_dsack_block_once() {
    let (mut h, _l, c) = Harness::passive(cfg(), PeerOpts::full());
    h.inject(10, seg(F_ACK).seq(1).ack(1).len(100));
    h.expect(50, exp(F_ACK).ack(101).sacks(&[]));
    // An old duplicate: immediate ACK, first block = the duplicate (RFC 2883 §4.1.1).
    h.inject(60, seg(F_ACK).seq(1).ack(1).len(100));
    h.expect(60, exp(F_ACK).ack(101).sacks(&[(1, 101)]));
    // Partly old: the old part is the D-SACK, the rest is taken.
    h.inject(70, seg(F_ACK).seq(51).ack(1).len(100));
    h.expect(70, exp(F_ACK).ack(151).sacks(&[(51, 101)]));
    // Out of order, then its duplicate: D-SACK inside the block that holds it (§4.1.2).
    h.inject(80, seg(F_ACK).seq(301).ack(1).len(100));
    h.expect(80, exp(F_ACK).ack(151).sacks(&[(301, 401)]));
    h.inject(90, seg(F_ACK).seq(301).ack(1).len(100));
    h.expect(90, exp(F_ACK).ack(151).sacks(&[(301, 401), (301, 401)]));
    // Reported once: the next ACK carries only the SACK block.
    h.inject(100, seg(F_ACK).seq(501).ack(1).len(100));
    h.expect(100, exp(F_ACK).ack(151).sacks(&[(501, 601), (301, 401)]));
    let st = h.engine.stats(c).unwrap();
    assert_eq!(st.dsacks_sent, 3);
}

#[test]
fn dsack_blocks_are_not_taken_for_new_sacks() {
    let (mut h, c) = sender(10);
    // A D-SACK below the cumulative ACK with a full ACK: nothing to recover.
    h.inject(20, seg(F_ACK).seq(1).ack(s(6)).sack(&[(s(2), s(3))]));
    // A D-SACK inside the second block (RFC 2883 §4.2): only the second block counts, and a
    // single SACKed segment does not make segment 6 lost before RACK's reordering window
    // (min_RTT/4) has passed.
    h.inject(
        21,
        seg(F_ACK)
            .seq(1)
            .ack(s(6))
            .sack(&[(s(7), s(8)), (s(7), s(8))]),
    );
    assert_eq!(sent_now(&mut h), []);
    let st = h.engine.stats(c).unwrap();
    assert_eq!((st.dsacks_received, st.fast_recoveries), (2, 0));
    h.inject(22, seg(F_ACK).seq(1).ack(s(11)));
    assert_eq!(h.engine.unacked_bytes(c), 0);
    assert_eq!(h.engine.stats(c).unwrap().retransmits, 0);
}

// ------------------------------------------------------------------ stretch ACKs

#[test]
fn a_receive_batch_gets_an_ack_per_two_segments_and_per_out_of_order_segment() {
    let (mut h, _l, _c) = Harness::passive(cfg(), PeerOpts::full());
    // Four full segments processed before the engine transmits (one receive batch).
    for k in 0..4u32 {
        let b = h.build(&seg(F_ACK).seq(1 + 1448 * k).ack(1).len(1448));
        h.engine.on_segment(h.now, h.remote.ip(), h.local.ip(), &b);
    }
    // Then three out-of-order ones (segment 5 missing).
    for k in 5..8u32 {
        let b = h.build(&seg(F_ACK).seq(1 + 1448 * k).ack(1).len(1448));
        h.engine.on_segment(h.now, h.remote.ip(), h.local.ip(), &b);
    }
    h.drain();
    h.expect_now(exp(F_ACK).ack(1 + 2 * 1448).sacks(&[]));
    h.expect_now(exp(F_ACK).ack(1 + 4 * 1448).sacks(&[]));
    let b5 = 1 + 5 * 1448;
    h.expect_now(exp(F_ACK).ack(1 + 4 * 1448).sacks(&[(b5, b5 + 1448)]));
    h.expect_now(exp(F_ACK).ack(1 + 4 * 1448).sacks(&[(b5, b5 + 2 * 1448)]));
    h.expect_now(exp(F_ACK).ack(1 + 4 * 1448).sacks(&[(b5, b5 + 3 * 1448)]));
    assert!(h.out.is_empty(), "{:?}", h.out.front());
}
