//! Packetdrill-style scenarios against one engine.

use std::time::Duration;

use super::harness::*;
use crate::tcp::{ConnOptions, Event, TcpError, TcpState};

fn nodelay() -> ConnOptions {
    ConnOptions {
        nodelay: true,
        ..Default::default()
    }
}

// ------------------------------------------------------------------ handshakes

#[test]
fn passive_handshake_negotiates_options() {
    let mut h = Harness::new(cfg());
    let l = h.engine.listen(LOCAL, 8).unwrap();
    h.inject(
        0,
        seg(F_SYN).mss(1460).ws(7).sack_perm().ts(100, 0).win(65535),
    );
    let sa = h.expect(
        0,
        exp(F_SYN | F_ACK)
            .seq(0)
            .ack(1)
            .mss(Some(1460))
            .ws(Some(5))
            .sack_perm(true)
            .has_ts(true)
            .win(65535),
    );
    assert_eq!(sa.opts.timestamps.unwrap().1, 100, "TSecr echoes the SYN");
    h.peer_ts = true;
    h.inject(5, seg(F_ACK).seq(1).ack(1).win(1000));
    h.expect_event(Event::AcceptReady(l));
    let c = h.engine.accept(l).unwrap();
    assert_eq!(h.engine.state(c), Some(TcpState::Established));
    // Scaled window on non-SYN segments: 1 MiB >> 5.
    assert_eq!(h.engine.send(h.now, c, b"hello").unwrap(), 5);
    h.drain();
    h.expect(
        5,
        exp(F_ACK | F_PSH)
            .seq(1)
            .ack(1)
            .len(5)
            .win(32768)
            .has_ts(true),
    );
}

#[test]
fn passive_handshake_without_options() {
    let mut h = Harness::new(cfg());
    h.engine.listen(LOCAL, 8).unwrap();
    h.inject(0, seg(F_SYN).no_ts().win(8192));
    h.expect(
        0,
        exp(F_SYN | F_ACK)
            .ack(1)
            .mss(Some(1460))
            .ws(None)
            .sack_perm(false)
            .has_ts(false),
    );
}

#[test]
fn active_handshake_negotiates_options() {
    let mut h = Harness::new(cfg());
    let c = h
        .engine
        .connect(h.now, LOCAL, REMOTE, ConnOptions::default())
        .unwrap();
    h.drain();
    h.expect(
        0,
        exp(F_SYN)
            .seq(0)
            .mss(Some(1460))
            .ws(Some(5))
            .sack_perm(true)
            .has_ts(true),
    );
    assert_eq!(h.engine.state(c), Some(TcpState::SynSent));
    h.inject(
        30,
        seg(F_SYN | F_ACK)
            .ack(1)
            .mss(1000)
            .ws(2)
            .sack_perm()
            .ts(5, 0)
            .win(100),
    );
    h.expect(30, exp(F_ACK).seq(1).ack(1).has_ts(true).win(32768));
    h.expect_event(Event::Connected(c));
    assert_eq!(h.engine.state(c), Some(TcpState::Established));
    // MSS 1000 - 12 = 988.
    h.engine.send(h.now, c, &[1u8; 1000]).unwrap();
    h.drain();
    // The SYN's window is never scaled (RFC 7323 §2.2): 100 bytes until the next ACK.
    h.expect(30, exp(F_ACK).seq(1).len(100));
    h.expect_nothing_until(35);
}

/// The MSS follows the family: IPv4 connections advertise `mss`, IPv6 ones `mss_v6` (the
/// IPv6 header is 20 bytes longer), and the smaller of ours and the peer's caps segments.
#[test]
fn mss_is_per_family() {
    let mut cf = cfg();
    cf.mss = 1460;
    cf.mss_v6 = 1440;
    for (local, remote, ours) in [
        (LOCAL, REMOTE, 1460),
        (
            "[2001:db8::1]:8080".parse().unwrap(),
            "[2001:db8::2]:40000".parse().unwrap(),
            1440,
        ),
    ] {
        let mut h = Harness::new(cf.clone());
        h.local = local;
        h.remote = remote;
        let l = h.engine.listen(local, 16).unwrap();
        h.inject(0, seg(F_SYN).mss(9000).no_ts().win(65535));
        h.expect(0, exp(F_SYN | F_ACK).ack(1).mss(Some(ours)));
        h.inject(1, seg(F_ACK).seq(1).ack(1).no_ts().win(65535));
        let c = h.engine.accept(l).unwrap();
        h.engine.send(h.now, c, &vec![1u8; 3000]).unwrap();
        h.drain();
        h.expect(1, exp(F_ACK).seq(1).len(usize::from(ours)));
    }
}

#[test]
fn simultaneous_open() {
    let mut h = Harness::new(cfg());
    let c = h
        .engine
        .connect(h.now, LOCAL, REMOTE, ConnOptions::default())
        .unwrap();
    h.drain();
    h.expect(0, exp(F_SYN).seq(0));
    h.inject(10, seg(F_SYN).mss(1460).no_ts().win(65535));
    assert_eq!(h.engine.state(c), Some(TcpState::SynReceived));
    h.expect(10, exp(F_SYN | F_ACK).seq(0).ack(1).mss(Some(1460)));
    h.inject(20, seg(F_SYN | F_ACK).seq(0).ack(1).no_ts().win(65535));
    assert_eq!(h.engine.state(c), Some(TcpState::Established));
    h.expect(20, exp(F_ACK).seq(1).ack(1));
    h.expect_event(Event::Connected(c));
}

#[test]
fn syn_retries_back_off_then_connect_fails() {
    let mut c = cfg();
    c.syn_retries = 2;
    let mut h = Harness::new(c);
    let id = h
        .engine
        .connect(h.now, LOCAL, REMOTE, ConnOptions::default())
        .unwrap();
    h.drain();
    h.expect(0, exp(F_SYN).seq(0));
    h.expect(1000, exp(F_SYN).seq(0));
    h.expect(3000, exp(F_SYN).seq(0));
    h.expect_nothing_until(7000);
    h.expect_event(Event::ConnectFailed(id, TcpError::TimedOut));
    h.expect_event(Event::Closed(id));
    assert_eq!(h.engine.state(id), Some(TcpState::Closed));
    assert_eq!(h.engine.connection_count(), 0);
}

#[test]
fn rst_to_syn_refuses_connect() {
    let mut h = Harness::new(cfg());
    let id = h
        .engine
        .connect(h.now, LOCAL, REMOTE, ConnOptions::default())
        .unwrap();
    h.drain();
    h.expect(0, exp(F_SYN));
    // RST without ACK in SYN_SENT: ignored.
    h.inject(1, seg(F_RST).seq(0).no_ts());
    assert_eq!(h.engine.state(id), Some(TcpState::SynSent));
    // RST with an unacceptable ACK: ignored too.
    h.inject(2, seg(F_RST | F_ACK).ack(7).no_ts());
    assert_eq!(h.engine.state(id), Some(TcpState::SynSent));
    h.inject(3, seg(F_RST | F_ACK).seq(0).ack(1).no_ts());
    h.expect_event(Event::ConnectFailed(id, TcpError::ConnectionRefused));
    assert_eq!(h.engine.state(id), Some(TcpState::Closed));
}

#[test]
fn segment_to_closed_port_gets_rst() {
    let mut h = Harness::new(cfg());
    h.iss = 5000;
    h.inject(0, seg(F_SYN).seq(0).no_ts());
    h.expect(
        0,
        exp(F_RST | F_ACK)
            .seq(0)
            .ack(1)
            .absolute()
            .ack(PEER_ISS + 1),
    );
    h.inject(1, seg(F_ACK).seq(10).ack(77).len(3).no_ts());
    h.expect(1, exp(F_RST).seq(77));
    h.inject(1, seg(F_ACK).seq(99).ack(0xffff_fff0).absolute().no_ts());
    h.expect(1, exp(F_RST).seq(0xffff_fff0).absolute());
    h.inject(2, seg(F_RST).seq(10).no_ts());
    h.expect_nothing_until(10);
}

// ------------------------------------------------------------------ data

#[test]
fn delayed_ack_timing_and_every_second_segment() {
    let (mut h, _l, c) = Harness::passive(cfg(), PeerOpts::full());
    h.inject(10, seg(F_ACK | F_PSH).seq(1).ack(1).len(100));
    h.expect_event(Event::Readable(c));
    h.expect(50, exp(F_ACK).seq(1).ack(101).len(0));
    // Two full segments: ACK after the second at once.
    h.inject(100, seg(F_ACK).seq(101).ack(1).len(1448));
    h.inject(100, seg(F_ACK).seq(1549).ack(1).len(1448));
    h.expect(100, exp(F_ACK).ack(2997));
    h.expect_nothing_until(300);
    let mut buf = vec![0u8; 4000];
    assert_eq!(h.engine.recv(h.now, c, &mut buf), Ok(2996));
    assert_eq!(h.engine.recv(h.now, c, &mut buf), Err(TcpError::WouldBlock));
}

#[test]
fn delayed_ack_piggybacks_on_data() {
    let (mut h, _l, c) = Harness::passive(cfg(), PeerOpts::full());
    h.inject(10, seg(F_ACK | F_PSH).seq(1).ack(1).len(10));
    h.engine.send(h.now, c, b"reply").unwrap();
    h.drain();
    h.expect(10, exp(F_ACK | F_PSH).seq(1).ack(11).len(5));
    h.expect_nothing_until(100);
}

/// Pushed data that the application drains while our ACK is delayed is ACKed at once (a
/// Nagle sender waits for that ACK before its next small segment), as Linux does. A read that
/// leaves data behind, or data without PSH, keeps the delayed ACK.
#[test]
fn draining_pushed_data_acks_at_once() {
    let (mut h, _l, c) = Harness::passive(cfg(), PeerOpts::full());
    let mut buf = vec![0u8; 4000];
    // The first delayed ACK opens the window past the SYN's 64 KiB (else the first read
    // would send a window update anyway).
    h.inject(10, seg(F_ACK).seq(1).ack(1).len(100));
    h.expect_event(Event::Readable(c));
    h.expect(50, exp(F_ACK).ack(101));
    assert_eq!(h.engine.recv(h.now, c, &mut buf), Ok(100));
    // No PSH: the read keeps the ACK delayed.
    h.inject(60, seg(F_ACK).seq(101).ack(1).len(100));
    assert_eq!(h.engine.recv(h.now, c, &mut buf), Ok(100));
    h.drain();
    h.expect_nothing_until(70);
    h.expect(100, exp(F_ACK).ack(201));
    // PSH, read in two parts: only the read that drains it ACKs, at once.
    h.inject(200, seg(F_ACK | F_PSH).seq(201).ack(1).len(200));
    assert_eq!(h.engine.recv(h.now, c, &mut buf[..50]), Ok(50));
    h.drain();
    h.expect_nothing_until(201);
    assert_eq!(h.engine.recv(h.now, c, &mut buf), Ok(150));
    h.drain();
    h.expect(201, exp(F_ACK).ack(401));
    h.expect_nothing_until(300);
}

/// MSG_PEEK copies queued data and leaves it: the next peek and the real read see the same
/// bytes, a peek of pushed data does not ACK early (only draining does), and after the data a
/// peek reports the FIN as a read would.
#[test]
fn peek_leaves_the_data_queued_and_acks_nothing() {
    let (mut h, _l, c) = Harness::passive(cfg(), PeerOpts::full());
    let mut buf = [0u8; 16];
    h.inject(10, seg(F_ACK).seq(1).ack(1).len(100));
    h.expect(50, exp(F_ACK).ack(101));
    assert_eq!(h.engine.recv(h.now, c, &mut [0u8; 100]), Ok(100));
    h.inject(60, seg(F_ACK | F_PSH).seq(101).ack(1).payload(b"hello"));
    assert_eq!(h.engine.peek(h.now, c, &mut buf[..3]), Ok(3));
    assert_eq!(&buf[..3], b"hel");
    assert_eq!(h.engine.peek(h.now, c, &mut buf), Ok(5));
    assert_eq!(&buf[..5], b"hello");
    assert_eq!(h.engine.recv_available(c), 5);
    h.drain();
    h.expect_nothing_until(61);
    assert_eq!(h.engine.recv(h.now, c, &mut buf), Ok(5));
    assert_eq!(&buf[..5], b"hello");
    h.drain();
    h.expect(61, exp(F_ACK).ack(106));
    assert_eq!(h.engine.peek(h.now, c, &mut buf), Err(TcpError::WouldBlock));
    h.inject(70, seg(F_ACK | F_FIN).seq(106).ack(1));
    assert_eq!(h.engine.peek(h.now, c, &mut buf), Ok(0));
    assert_eq!(h.engine.recv(h.now, c, &mut buf), Ok(0));
}

/// Request/response: once a reply has carried a delayed ACK, draining the next request waits
/// for the reply to carry the ACK again (no extra pure ACK per request); a delayed-ACK timeout
/// (no reply in time) ends that mode.
#[test]
fn request_response_keeps_the_ack_for_the_reply() {
    let (mut h, _l, c) = Harness::passive(cfg(), PeerOpts::full());
    let mut buf = vec![0u8; 100];
    h.inject(10, seg(F_ACK | F_PSH).seq(1).ack(1).len(10));
    h.engine.send(h.now, c, b"reply").unwrap();
    h.drain();
    h.expect(10, exp(F_ACK | F_PSH).seq(1).ack(11).len(5));
    assert_eq!(h.engine.recv(h.now, c, &mut buf), Ok(10));
    h.inject(20, seg(F_ACK | F_PSH).seq(11).ack(6).len(10));
    assert_eq!(h.engine.recv(h.now, c, &mut buf), Ok(10));
    h.drain();
    h.expect_nothing_until(25);
    h.engine.send(h.now, c, b"reply").unwrap();
    h.drain();
    h.expect(25, exp(F_ACK | F_PSH).seq(6).ack(21).len(5));
    // No reply this time: the delayed ACK fires, and the next drained request ACKs at once.
    h.inject(30, seg(F_ACK | F_PSH).seq(21).ack(11).len(10));
    assert_eq!(h.engine.recv(h.now, c, &mut buf), Ok(10));
    h.expect(70, exp(F_ACK).ack(31));
    h.inject(100, seg(F_ACK | F_PSH).seq(31).ack(11).len(10));
    assert_eq!(h.engine.recv(h.now, c, &mut buf), Ok(10));
    h.drain();
    h.expect(100, exp(F_ACK).ack(41));
}

#[test]
fn a_reply_soon_after_a_request_makes_the_next_drained_request_wait_for_the_reply() {
    // Drain-then-reply (nginx, redis): the first drained request is ACKed at once (nothing
    // says yet that a reply follows); the reply goes out within a delayed-ACK time of the
    // request, so the connection is interactive and the next request's ACK rides the reply.
    let (mut h, _l, c) = Harness::passive(cfg(), PeerOpts::full());
    let mut buf = vec![0u8; 100];
    h.inject(10, seg(F_ACK | F_PSH).seq(1).ack(1).len(10));
    assert_eq!(h.engine.recv(h.now, c, &mut buf), Ok(10));
    h.drain();
    h.expect(10, exp(F_ACK).seq(1).ack(11));
    h.engine.send(h.now, c, b"reply").unwrap();
    h.drain();
    h.expect(10, exp(F_ACK | F_PSH).seq(1).ack(11).len(5));
    h.inject(20, seg(F_ACK | F_PSH).seq(11).ack(6).len(10));
    assert_eq!(h.engine.recv(h.now, c, &mut buf), Ok(10));
    h.drain();
    h.expect_nothing_until(21);
    h.engine.send(h.now, c, b"reply").unwrap();
    h.drain();
    h.expect(21, exp(F_ACK | F_PSH).seq(6).ack(21).len(5));
}

#[test]
fn nagle_holds_small_segments_until_ack() {
    let (mut h, c) = Harness::active(cfg(), ConnOptions::default(), PeerOpts::plain());
    h.engine.send(h.now, c, &[1; 10]).unwrap();
    h.drain();
    h.expect(0, exp(F_ACK | F_PSH).seq(1).len(10));
    h.advance(5);
    h.engine.send(h.now, c, &[2; 10]).unwrap();
    h.engine.send(h.now, c, &[3; 10]).unwrap();
    h.drain();
    h.expect_nothing_until(20);
    h.inject(20, seg(F_ACK).seq(1).ack(11));
    h.expect(20, exp(F_ACK | F_PSH).seq(11).len(20));
}

#[test]
fn nodelay_sends_small_segments_at_once() {
    let (mut h, c) = Harness::active(cfg(), nodelay(), PeerOpts::plain());
    h.engine.send(h.now, c, &[1; 10]).unwrap();
    h.drain();
    h.expect(0, exp(F_ACK | F_PSH).seq(1).len(10));
    h.advance(5);
    h.engine.send(h.now, c, &[2; 10]).unwrap();
    h.drain();
    h.expect(5, exp(F_ACK | F_PSH).seq(11).len(10));
    // Toggling at runtime.
    h.engine.set_nodelay(c, false);
    h.engine.send(h.now, c, &[3; 10]).unwrap();
    h.drain();
    h.expect_nothing_until(10);
    h.engine.set_nodelay(c, true);
    h.drain();
    h.expect(10, exp(F_ACK | F_PSH).seq(21).len(10));
}

#[test]
fn cork_holds_partial_segments_and_uncork_pushes_them_past_nagle() {
    let (mut h, c) = Harness::active(cfg(), ConnOptions::default(), PeerOpts::plain());
    h.engine.set_cork(c, true);
    // Nothing in flight: Nagle alone would send these ten bytes; the cork holds them.
    h.engine.send(h.now, c, &[1; 10]).unwrap();
    h.drain();
    h.expect_nothing_until(5);
    // Full segments still go.
    h.engine.send(h.now, c, &[2; 1500]).unwrap();
    h.drain();
    h.expect(5, exp(F_ACK).seq(1).len(1000));
    h.expect_nothing_until(10);
    // Uncorked: the 510-byte tail goes at once, though Nagle would wait for the ACK.
    h.engine.set_cork(c, false);
    h.drain();
    h.expect(10, exp(F_ACK | F_PSH).seq(1001).len(510));
    // After the push, Nagle is back.
    h.engine.send(h.now, c, &[3; 10]).unwrap();
    h.drain();
    h.expect_nothing_until(15);
    h.inject(15, seg(F_ACK).seq(1).ack(1511));
    h.expect(15, exp(F_ACK | F_PSH).seq(1511).len(10));
}

#[test]
fn full_segments_and_initial_window_of_ten() {
    let (mut h, c) = Harness::active(cfg(), ConnOptions::default(), PeerOpts::plain());
    h.engine.send(h.now, c, &[0; 20_000]).unwrap();
    h.drain();
    for k in 0..10 {
        h.expect(0, exp(F_ACK).seq(1 + 1000 * k).len(1000));
    }
    h.expect_nothing_until(10);
    h.inject(10, seg(F_ACK).seq(1).ack(2001));
    // Slow start: 2 acked segments open 2 more, plus the 2 freed.
    let mut n = 0;
    while h.out.pop_front().is_some() {
        n += 1;
    }
    assert!(n >= 2, "sent {n}");
}

#[test]
fn out_of_order_is_acked_at_once_with_sack_blocks() {
    let (mut h, _l, c) = Harness::passive(cfg(), PeerOpts::full());
    h.inject(10, seg(F_ACK).seq(1001).ack(1).len(500));
    h.expect(10, exp(F_ACK).ack(1).sacks(&[(1001, 1501)]));
    h.inject(11, seg(F_ACK).seq(2001).ack(1).len(500));
    h.expect(11, exp(F_ACK).ack(1).sacks(&[(2001, 2501), (1001, 1501)]));
    assert_eq!(h.engine.recv_available(c), 0);
    h.inject(12, seg(F_ACK).seq(1).ack(1).len(1000));
    h.expect(12, exp(F_ACK).ack(1501).sacks(&[(2001, 2501)]));
    h.inject(13, seg(F_ACK).seq(1501).ack(1).len(500));
    h.expect(13, exp(F_ACK).ack(2501).sacks(&[]));
    assert_eq!(h.engine.recv_available(c), 2500);
}

#[test]
fn duplicate_data_is_acked_at_once() {
    let (mut h, _l, _c) = Harness::passive(cfg(), PeerOpts::full());
    h.inject(10, seg(F_ACK).seq(1).ack(1).len(100));
    h.expect(50, exp(F_ACK).ack(101));
    h.inject(60, seg(F_ACK).seq(1).ack(1).len(100));
    h.expect(60, exp(F_ACK).ack(101));
}

// ------------------------------------------------------------------ loss recovery

fn fill(h: &mut Harness, c: crate::tcp::ConnId, n: usize, seg_len: u32, segs: u32) {
    h.engine.send(h.now, c, &vec![7u8; n]).unwrap();
    h.drain();
    for k in 0..segs {
        h.expect_now(Exp::default().seq(1 + seg_len * k).len(seg_len as usize));
    }
}

#[test]
fn fast_retransmit_on_three_dup_acks_with_sack() {
    let (mut h, _l, c) = Harness::passive_rtt(cfg(), PeerOpts::full(), 10);
    fill(&mut h, c, 14480, 1448, 10);
    // RACK (RFC 8985 §6.2): one or two SACKed segments are not enough while the reordering
    // window (min_RTT/4 = 2.5 ms) runs...
    h.inject(20, seg(F_ACK).seq(1).ack(1).sack(&[(1449, 2897)]));
    h.inject(21, seg(F_ACK).seq(1).ack(1).sack(&[(1449, 4345)]));
    h.expect_nothing_until(21);
    // ...three are: without reordering seen, the window is 0 from DupThresh SACKed segments on.
    h.inject(22, seg(F_ACK).seq(1).ack(1).sack(&[(1449, 5793)]));
    h.expect(22, exp(F_ACK).seq(1).len(1448));
    // The rest of the hole-free window is SACKed up to 5793; a full ACK ends recovery.
    h.inject(30, seg(F_ACK).seq(1).ack(14481));
    assert_eq!(h.engine.unacked_bytes(c), 0);
}

#[test]
fn fast_retransmit_newreno_without_sack() {
    let (mut h, c) = Harness::active(cfg(), ConnOptions::default(), PeerOpts::plain());
    fill(&mut h, c, 10_000, 1000, 10);
    for t in 0..2 {
        h.inject(20 + t, seg(F_ACK).seq(1).ack(1));
    }
    h.expect_nothing_until(21);
    h.inject(22, seg(F_ACK).seq(1).ack(1));
    h.expect(22, exp(F_ACK).seq(1).len(1000));
    // Partial ACK (RFC 6582): retransmit the next hole at once.
    h.inject(30, seg(F_ACK).seq(1).ack(3001));
    h.expect(30, exp(F_ACK).seq(3001).len(1000));
    h.inject(40, seg(F_ACK).seq(1).ack(10001));
    assert_eq!(h.engine.unacked_bytes(c), 0);
}

#[test]
fn rto_backs_off_exponentially_and_karn_ignores_retransmitted_samples() {
    let (mut h, c) = Harness::active(cfg(), ConnOptions::default(), PeerOpts::plain());
    // SYN RTT 0 → RTO = min_rto (200 ms).
    h.engine.send(h.now, c, &[1; 100]).unwrap();
    h.drain();
    h.expect(0, exp(F_ACK | F_PSH).seq(1).len(100));
    h.expect(200, exp(F_ACK | F_PSH).seq(1).len(100));
    h.expect(600, exp(F_ACK | F_PSH).seq(1).len(100));
    h.expect(1400, exp(F_ACK | F_PSH).seq(1).len(100));
    // The ACK of a retransmitted segment gives no sample: the backed-off RTO (1600) stays.
    h.inject(1500, seg(F_ACK).seq(1).ack(101));
    h.engine.send(h.now, c, &[2; 100]).unwrap();
    h.drain();
    h.expect(1500, exp(F_ACK | F_PSH).seq(101).len(100));
    h.expect(3100, exp(F_ACK | F_PSH).seq(101).len(100));
}

#[test]
fn data_retries_exhausted_abort_with_timeout() {
    let mut cf = cfg();
    cf.data_retries = 2;
    let (mut h, c) = Harness::active(cf, ConnOptions::default(), PeerOpts::plain());
    h.engine.send(h.now, c, &[1; 10]).unwrap();
    h.drain();
    h.expect(0, exp(F_ACK | F_PSH).seq(1));
    h.expect(200, exp(F_ACK | F_PSH).seq(1));
    h.expect(600, exp(F_ACK | F_PSH).seq(1));
    h.expect_nothing_until(1400);
    h.expect_event(Event::Reset(c));
    h.expect_event(Event::Closed(c));
    assert_eq!(h.engine.send(h.now, c, b"x"), Err(TcpError::TimedOut));
    let mut b = [0u8; 4];
    assert_eq!(h.engine.recv(h.now, c, &mut b), Err(TcpError::TimedOut));
}

// ------------------------------------------------------------------ windows

#[test]
fn zero_window_probes_back_off_then_window_update_releases_data() {
    let (mut h, c) = Harness::active(cfg(), ConnOptions::default(), PeerOpts::plain());
    fill(&mut h, c, 2000, 1000, 2);
    h.inject(10, seg(F_ACK).seq(1).ack(2001).win(0));
    h.engine.send(h.now, c, &[9; 500]).unwrap();
    h.drain();
    h.expect(210, exp(F_ACK).seq(2000).len(0));
    h.inject(215, seg(F_ACK).seq(1).ack(2001).win(0));
    h.expect(610, exp(F_ACK).seq(2000).len(0));
    h.expect(1410, exp(F_ACK).seq(2000).len(0));
    h.inject(1500, seg(F_ACK).seq(1).ack(2001).win(1000));
    h.expect(1500, exp(F_ACK | F_PSH).seq(2001).len(500));
}

#[test]
fn receiver_closes_window_and_reopens_with_update() {
    let mut cf = cfg();
    cf.recv_buffer = 4000;
    let (mut h, _l, c) = Harness::passive(cf, PeerOpts::plain());
    h.inject(10, seg(F_ACK).seq(1).ack(1).len(1000));
    h.inject(10, seg(F_ACK).seq(1001).ack(1).len(1000));
    h.expect(10, exp(F_ACK).ack(2001).win(2000));
    h.inject(11, seg(F_ACK).seq(2001).ack(1).len(1000));
    h.inject(11, seg(F_ACK).seq(3001).ack(1).len(1000));
    h.expect(11, exp(F_ACK).ack(4001).win(0));
    // Beyond the window: dropped and re-ACKed.
    h.inject(12, seg(F_ACK).seq(4001).ack(1).len(10));
    h.expect(12, exp(F_ACK).ack(4001).win(0));
    // Reading a little does not reopen (receiver SWS); reading half does.
    let mut buf = vec![0u8; 4000];
    assert_eq!(h.engine.recv(h.now, c, &mut buf[..100]), Ok(100));
    h.drain();
    h.expect_nothing_until(20);
    assert_eq!(h.engine.recv(h.now, c, &mut buf[..2000]), Ok(2000));
    h.drain();
    h.expect(20, exp(F_ACK).ack(4001).win(2100));
}

// ------------------------------------------------------------------ close

#[test]
fn active_close_fin_then_time_wait_expiry_and_fin_reack() {
    let mut cf = cfg();
    cf.time_wait = Duration::from_secs(10);
    let (mut h, _l, c) = Harness::passive(cf, PeerOpts::full());
    h.engine.send(h.now, c, b"bye").unwrap();
    h.engine.shutdown_write(h.now, c).unwrap();
    h.drain();
    h.expect(0, exp(F_ACK | F_PSH | F_FIN).seq(1).len(3));
    assert_eq!(h.engine.state(c), Some(TcpState::FinWait1));
    assert_eq!(h.engine.unacked_bytes(c), 4);
    h.inject(10, seg(F_ACK).seq(1).ack(5));
    assert_eq!(h.engine.state(c), Some(TcpState::FinWait2));
    assert_eq!(h.engine.send(h.now, c, b"x"), Err(TcpError::Shutdown));
    h.inject(20, seg(F_ACK | F_FIN).seq(1).ack(5));
    h.expect(20, exp(F_ACK).seq(5).ack(2));
    h.expect_event(Event::PeerFin(c));
    assert_eq!(h.engine.state(c), Some(TcpState::TimeWait));
    let mut b = [0u8; 8];
    assert_eq!(h.engine.recv(h.now, c, &mut b), Ok(0));
    // Retransmitted FIN: re-ACKed, TIME_WAIT restarted.
    h.inject(5000, seg(F_ACK | F_FIN).seq(1).ack(5));
    h.expect(5000, exp(F_ACK).seq(5).ack(2));
    h.advance(14_999);
    assert_eq!(h.engine.state(c), Some(TcpState::TimeWait));
    h.advance(15_001);
    h.expect_event(Event::Closed(c));
    assert_eq!(h.engine.state(c), Some(TcpState::Closed));
    assert_eq!(h.engine.connection_count(), 0);
    h.engine.close(h.now, c);
    assert_eq!(h.engine.state(c), None);
}

/// A lingering close asks for one event when data and FIN are all acknowledged: a partial ACK
/// raises nothing, the ACK of the FIN raises `Writable`, once.
#[test]
fn drained_notification_fires_once_when_data_and_fin_are_acked() {
    let (mut h, _l, c) = Harness::passive(cfg(), PeerOpts::full());
    h.engine.send(h.now, c, &[7u8; 1000]).unwrap();
    h.engine.notify_when_drained(c);
    h.engine.shutdown_write(h.now, c).unwrap();
    h.drain();
    h.expect(0, exp(F_ACK | F_PSH | F_FIN).seq(1).len(1000));
    h.inject(10, seg(F_ACK).seq(1).ack(501));
    assert!(!h.has_event(Event::Writable(c)), "500 of 1001 acknowledged");
    h.inject(20, seg(F_ACK).seq(1).ack(1002));
    assert_eq!(h.engine.unacked_bytes(c), 0);
    h.expect_event(Event::Writable(c));
    // Once: a duplicate ACK later raises nothing more.
    h.inject(30, seg(F_ACK).seq(1).ack(1002));
    assert!(!h.has_event(Event::Writable(c)));
}

#[test]
fn passive_close_peer_fin_first() {
    let (mut h, _l, c) = Harness::passive(cfg(), PeerOpts::full());
    h.inject(10, seg(F_ACK | F_FIN).seq(1).ack(1).len(4));
    h.expect(10, exp(F_ACK).ack(6));
    h.expect_event(Event::PeerFin(c));
    assert_eq!(h.engine.state(c), Some(TcpState::CloseWait));
    let mut b = [0u8; 8];
    assert_eq!(h.engine.recv(h.now, c, &mut b), Ok(4));
    assert_eq!(h.engine.recv(h.now, c, &mut b), Ok(0));
    h.engine.send(h.now, c, b"ok").unwrap();
    h.engine.close(h.now, c);
    assert_eq!(h.engine.orphan_count(), 1);
    h.drain();
    h.expect(10, exp(F_ACK | F_PSH | F_FIN).seq(1).ack(6).len(2));
    h.inject(20, seg(F_ACK).seq(6).ack(4));
    h.expect_event(Event::Closed(c));
    assert_eq!(h.engine.orphan_count(), 0);
    assert_eq!(h.engine.connection_count(), 0);
    assert_eq!(h.engine.state(c), None);
}

#[test]
fn out_of_order_fin_waits_for_the_hole() {
    let (mut h, _l, c) = Harness::passive(cfg(), PeerOpts::full());
    h.inject(10, seg(F_ACK | F_FIN).seq(11).ack(1).len(5));
    h.expect(10, exp(F_ACK).ack(1));
    assert_eq!(h.engine.state(c), Some(TcpState::Established));
    h.inject(11, seg(F_ACK).seq(1).ack(1).len(10));
    h.expect(11, exp(F_ACK).ack(17));
    assert_eq!(h.engine.state(c), Some(TcpState::CloseWait));
}

#[test]
fn simultaneous_close() {
    let (mut h, _l, c) = Harness::passive(cfg(), PeerOpts::full());
    h.engine.shutdown_write(h.now, c).unwrap();
    h.drain();
    h.expect(0, exp(F_ACK | F_FIN).seq(1).ack(1));
    h.inject(5, seg(F_ACK | F_FIN).seq(1).ack(1));
    assert_eq!(h.engine.state(c), Some(TcpState::Closing));
    h.expect(5, exp(F_ACK).seq(2).ack(2));
    h.inject(6, seg(F_ACK).seq(2).ack(2));
    assert_eq!(h.engine.state(c), Some(TcpState::TimeWait));
}

#[test]
fn fin_is_retransmitted() {
    let (mut h, c) = Harness::active(cfg(), ConnOptions::default(), PeerOpts::plain());
    h.engine.shutdown_write(h.now, c).unwrap();
    h.drain();
    h.expect(0, exp(F_ACK | F_FIN).seq(1));
    h.expect(200, exp(F_ACK | F_FIN).seq(1));
    h.inject(250, seg(F_ACK).seq(1).ack(2));
    assert_eq!(h.engine.state(c), Some(TcpState::FinWait2));
}

#[test]
fn abort_sends_rst_with_snd_nxt_and_rcv_nxt() {
    let (mut h, _l, c) = Harness::passive(cfg(), PeerOpts::full());
    h.engine.send(h.now, c, &[1; 100]).unwrap();
    h.drain();
    h.expect(0, exp(F_ACK | F_PSH).seq(1).len(100));
    h.inject(5, seg(F_ACK).seq(1).ack(1).len(50));
    h.engine.send(h.now, c, &[1; 10]).unwrap(); // queued behind Nagle
    h.engine.abort(h.now, c);
    h.drain();
    h.expect(5, exp(F_RST | F_ACK).seq(101).ack(51).has_ts(true));
    h.expect_nothing_until(3000);
    h.expect_event(Event::Closed(c));
    assert_eq!(h.engine.state(c), None);
    assert_eq!(h.engine.connection_count(), 0);
}

#[test]
fn close_with_unread_data_sends_rst() {
    let (mut h, _l, c) = Harness::passive(cfg(), PeerOpts::full());
    h.inject(5, seg(F_ACK | F_PSH).seq(1).ack(1).len(50));
    h.engine.close(h.now, c);
    h.drain();
    h.expect(5, exp(F_RST | F_ACK).seq(1).ack(51));
    h.expect_event(Event::Closed(c));
    h.expect_nothing_until(1000);
    assert_eq!(h.engine.connection_count(), 0);
}

#[test]
fn data_after_close_gets_rst() {
    let (mut h, _l, c) = Harness::passive(cfg(), PeerOpts::full());
    h.engine.close(h.now, c);
    h.drain();
    h.expect(0, exp(F_ACK | F_FIN).seq(1).ack(1));
    h.inject(5, seg(F_ACK).seq(1).ack(2));
    assert_eq!(h.engine.state(c), None, "handle released");
    assert_eq!(h.engine.orphan_count(), 1);
    h.inject(6, seg(F_ACK | F_PSH).seq(1).ack(2).len(10));
    h.expect(6, exp(F_RST | F_ACK).seq(2).ack(1));
    assert_eq!(h.engine.orphan_count(), 0);
    assert_eq!(h.engine.connection_count(), 0);
}

#[test]
fn orphan_in_fin_wait_2_times_out_with_rst() {
    let mut cf = cfg();
    cf.orphan_timeout = Duration::from_secs(5);
    let (mut h, _l, c) = Harness::passive(cf, PeerOpts::full());
    h.engine.close(h.now, c);
    h.drain();
    h.expect(0, exp(F_ACK | F_FIN).seq(1));
    h.inject(5, seg(F_ACK).seq(1).ack(2));
    h.expect(5000, exp(F_RST | F_ACK).seq(2).ack(1));
    assert_eq!(h.engine.connection_count(), 0);
}

#[test]
fn close_in_syn_sent_sends_nothing_and_late_syn_ack_gets_rst() {
    let mut h = Harness::new(cfg());
    let c = h
        .engine
        .connect(h.now, LOCAL, REMOTE, ConnOptions::default())
        .unwrap();
    h.drain();
    h.expect(0, exp(F_SYN).seq(0));
    h.engine.close(h.now, c);
    h.drain();
    h.expect_event(Event::Closed(c));
    h.expect_nothing_until(5000);
    h.inject(5000, seg(F_SYN | F_ACK).seq(0).ack(1).no_ts());
    h.expect(5000, exp(F_RST).seq(1));
}

// ------------------------------------------------------------------ RFC 5961 and RSTs

/// Brings a passive connection into `state`; returns the (peer seq, engine seq) expected next.
/// Our active close: data, FIN, the peer's FIN; TIME_WAIT with RCV.NXT = 2 and SND.NXT = 5.
fn into_time_wait(peer: PeerOpts) -> (Harness, crate::tcp::ListenerId, crate::tcp::ConnId) {
    let (mut h, l, c) = Harness::passive(cfg(), peer);
    h.engine.send(h.now, c, b"bye").unwrap();
    h.engine.shutdown_write(h.now, c).unwrap();
    h.drain();
    h.expect(0, exp(F_ACK | F_PSH | F_FIN).seq(1).len(3));
    h.inject(10, seg(F_ACK | F_FIN).seq(1).ack(5));
    h.expect(10, exp(F_ACK).seq(5).ack(2));
    assert_eq!(h.engine.state(c), Some(TcpState::TimeWait));
    h.events.retain(|e| matches!(e, Event::Closed(_)));
    (h, l, c)
}

/// The peer reconnects from the same port while we hold the 4-tuple in TIME_WAIT (RFC 9293
/// §3.6.1, RFC 6191). Without timestamps the sequence number decides: a SYN above RCV.NXT
/// cannot be an old duplicate, so it starts a new incarnation at once (it used to get an ACK,
/// and the client stalled until its SYN retransmission).
#[test]
fn time_wait_reuse_by_a_syn_above_rcv_nxt() {
    let (mut h, l, c) = into_time_wait(PeerOpts::plain());
    let old_iss = h.iss;
    // Not above RCV.NXT: possibly an old duplicate; ACKed as before, TIME_WAIT stays.
    h.inject(20, seg(F_SYN).seq(1).mss(1000).no_ts());
    h.expect(20, exp(F_ACK).seq(5).ack(2));
    assert_eq!(h.engine.state(c), Some(TcpState::TimeWait));
    // Above: the old incarnation ends and the listener answers the SYN, with an ISS above
    // everything the old incarnation sent.
    h.inject(30, seg(F_SYN).seq(100_000).mss(1000).no_ts());
    h.expect_event(Event::Closed(c));
    let sa = h.expect(30, exp(F_SYN | F_ACK).ack(100_001));
    assert_eq!(sa.seq, old_iss.wrapping_add(5 + 65_535 + 2));
    h.inject(40, seg(F_ACK).seq(100_001).ack(1).no_ts());
    h.expect_event(Event::AcceptReady(l));
    let c2 = h.engine.accept(l).expect("new incarnation");
    assert_ne!(c2, c);
    assert_eq!(h.engine.state(c2), Some(TcpState::Established));
    assert_eq!(h.engine.connection_count(), 1);
    h.inject(50, seg(F_ACK | F_PSH).seq(100_001).ack(1).len(10).no_ts());
    assert_eq!(h.engine.recv_available(c2), 10);
}

/// With timestamps on the old incarnation a newer TSval decides, whatever the sequence number
/// (RFC 6191 §2); an older TSval is a PAWS reject and never reuses the tuple.
#[test]
fn time_wait_reuse_by_a_syn_with_a_newer_timestamp() {
    let (mut h, l, c) = into_time_wait(PeerOpts::full());
    let ts_recent = h.peer_tsval;
    // Older timestamp (and a sequence number above RCV.NXT): ACK, TIME_WAIT stays.
    h.inject(20, seg(F_SYN).seq(100_000).mss(1460).ts(ts_recent - 1, 0));
    h.expect(20, exp(F_ACK).seq(5).ack(2));
    assert_eq!(h.engine.state(c), Some(TcpState::TimeWait));
    // Newer timestamp, sequence number below RCV.NXT (a random ISN): new incarnation.
    h.inject(
        30,
        seg(F_SYN)
            .seq(u32::MAX - 5000)
            .mss(1460)
            .ws(7)
            .sack_perm()
            .ts(ts_recent + 30, 0),
    );
    h.expect_event(Event::Closed(c));
    h.expect(30, exp(F_SYN | F_ACK).ack(u32::MAX - 4999).has_ts(true));
    h.inject(40, seg(F_ACK).seq(u32::MAX - 4999).ack(1));
    h.expect_event(Event::AcceptReady(l));
    let c2 = h.engine.accept(l).unwrap();
    assert_eq!(h.engine.state(c2), Some(TcpState::Established));
}

/// Without a listener (we were the client) there is nobody to take a new incarnation.
#[test]
fn time_wait_without_a_listener_is_not_reused() {
    let (mut h, c) = Harness::active(cfg(), ConnOptions::default(), PeerOpts::plain());
    h.engine.shutdown_write(h.now, c).unwrap();
    h.drain();
    h.expect(0, exp(F_ACK | F_FIN).seq(1));
    h.inject(10, seg(F_ACK | F_FIN).seq(1).ack(2));
    h.expect(10, exp(F_ACK).seq(2).ack(2));
    assert_eq!(h.engine.state(c), Some(TcpState::TimeWait));
    h.inject(20, seg(F_SYN).seq(100_000).mss(1000));
    h.expect(20, exp(F_ACK).seq(2).ack(2));
    assert_eq!(h.engine.state(c), Some(TcpState::TimeWait));
}

fn reach(state: TcpState) -> (Harness, crate::tcp::ConnId, u32, u32) {
    let (mut h, _l, c) = Harness::passive(cfg(), PeerOpts::full());
    let (p, e) = match state {
        TcpState::Established => (1, 1),
        TcpState::FinWait1 => {
            h.engine.shutdown_write(h.now, c).unwrap();
            h.drain();
            h.expect_now(exp(F_ACK | F_FIN));
            (1, 2)
        }
        TcpState::FinWait2 => {
            h.engine.shutdown_write(h.now, c).unwrap();
            h.drain();
            h.expect_now(exp(F_ACK | F_FIN));
            h.inject(1, seg(F_ACK).seq(1).ack(2));
            (1, 2)
        }
        TcpState::CloseWait => {
            h.inject(1, seg(F_ACK | F_FIN).seq(1).ack(1));
            h.expect_now(exp(F_ACK).ack(2));
            (2, 1)
        }
        TcpState::Closing => {
            h.engine.shutdown_write(h.now, c).unwrap();
            h.drain();
            h.expect_now(exp(F_ACK | F_FIN));
            h.inject(1, seg(F_ACK | F_FIN).seq(1).ack(1));
            h.expect_now(exp(F_ACK).ack(2));
            (2, 2)
        }
        TcpState::LastAck => {
            h.inject(1, seg(F_ACK | F_FIN).seq(1).ack(1));
            h.expect_now(exp(F_ACK).ack(2));
            h.engine.shutdown_write(h.now, c).unwrap();
            h.drain();
            h.expect_now(exp(F_ACK | F_FIN));
            (2, 2)
        }
        TcpState::TimeWait => {
            h.engine.shutdown_write(h.now, c).unwrap();
            h.drain();
            h.expect_now(exp(F_ACK | F_FIN));
            h.inject(1, seg(F_ACK | F_FIN).seq(1).ack(2));
            h.expect_now(exp(F_ACK).ack(2));
            (2, 2)
        }
        s => panic!("unsupported {s:?}"),
    };
    assert_eq!(h.engine.state(c), Some(state));
    h.events.clear();
    (h, c, p, e)
}

const SYNCED: [TcpState; 7] = [
    TcpState::Established,
    TcpState::FinWait1,
    TcpState::FinWait2,
    TcpState::CloseWait,
    TcpState::Closing,
    TcpState::LastAck,
    TcpState::TimeWait,
];

#[test]
fn rst_in_window_not_exact_gets_challenge_ack_in_every_state() {
    for st in SYNCED {
        let (mut h, c, p, e) = reach(st);
        h.inject(100, seg(F_RST).seq(p + 1000));
        h.expect(100, exp(F_ACK).seq(e).ack(p));
        assert_eq!(h.engine.state(c), Some(st), "{st:?}");
    }
}

#[test]
fn rst_exact_resets_in_every_state() {
    for st in SYNCED {
        let (mut h, c, p, _e) = reach(st);
        h.inject(100, seg(F_RST).seq(p));
        h.expect_nothing_until(200);
        assert!(h.has_event(Event::Closed(c)), "{st:?}: {:?}", h.events);
        if matches!(
            st,
            TcpState::Established | TcpState::FinWait1 | TcpState::FinWait2 | TcpState::CloseWait
        ) {
            assert!(h.has_event(Event::Reset(c)), "{st:?}");
            let mut b = [0u8; 4];
            assert_eq!(
                h.engine.recv(h.now, c, &mut b),
                Err(TcpError::ConnectionReset)
            );
        }
        assert_eq!(h.engine.connection_count(), 0, "{st:?}");
    }
}

#[test]
fn rst_out_of_window_is_ignored_in_every_state() {
    for st in SYNCED {
        let (mut h, c, p, _e) = reach(st);
        h.inject(100, seg(F_RST).seq(p.wrapping_add(10_000_000)));
        h.inject(101, seg(F_RST).seq(p.wrapping_sub(10)));
        h.expect_nothing_until(150);
        assert_eq!(h.engine.state(c), Some(st), "{st:?}");
    }
}

#[test]
fn rst_in_syn_received_drops_the_half_open_connection() {
    let mut h = Harness::new(cfg());
    let l = h.engine.listen(LOCAL, 8).unwrap();
    h.inject(0, seg(F_SYN).no_ts());
    h.expect(0, exp(F_SYN | F_ACK).ack(1));
    assert_eq!(h.engine.connection_count(), 1);
    h.inject(5, seg(F_RST).seq(1).no_ts());
    assert_eq!(h.engine.connection_count(), 0);
    assert!(h.engine.accept(l).is_none());
    h.expect_nothing_until(5000);
}

#[test]
fn syn_in_established_gets_challenge_ack() {
    let (mut h, c, _p, _e) = reach(TcpState::Established);
    h.inject(10, seg(F_SYN).seq(500));
    h.expect(10, exp(F_ACK).seq(1).ack(1));
    assert_eq!(h.engine.state(c), Some(TcpState::Established));
}

#[test]
fn ack_beyond_snd_nxt_gets_challenge_ack_and_is_dropped() {
    let (mut h, c, _p, _e) = reach(TcpState::Established);
    h.inject(10, seg(F_ACK | F_PSH).seq(1).ack(5000).len(10));
    h.expect(10, exp(F_ACK).seq(1).ack(1));
    assert_eq!(h.engine.recv_available(c), 0);
}

#[test]
fn challenge_acks_are_rate_limited() {
    let mut cf = cfg();
    cf.challenge_ack_limit = 2;
    let (mut h, _l, _c) = Harness::passive(cf, PeerOpts::full());
    for _ in 0..5 {
        h.inject(10, seg(F_RST).seq(1000));
    }
    h.expect_now(exp(F_ACK));
    h.expect_now(exp(F_ACK));
    h.expect_nothing_until(500);
    h.inject(1100, seg(F_RST).seq(1000));
    h.expect(1100, exp(F_ACK));
}

#[test]
fn paws_rejects_an_old_timestamp() {
    let (mut h, c, _p, _e) = reach(TcpState::Established);
    h.inject(10, seg(F_ACK).seq(1).ack(1).len(10).ts(5000, h.last_tsval));
    h.expect(50, exp(F_ACK).ack(11));
    h.inject(60, seg(F_ACK).seq(11).ack(1).len(10).ts(4000, h.last_tsval));
    h.expect(60, exp(F_ACK).ack(11));
    assert_eq!(h.engine.recv_available(c), 10);
    h.inject(70, seg(F_ACK).seq(11).ack(1).len(10).ts(5001, h.last_tsval));
    assert_eq!(h.engine.recv_available(c), 20);
}

// ------------------------------------------------------------------ listeners

#[test]
fn accept_queue_overflow_resets_the_syn() {
    let mut h = Harness::new(cfg());
    let l = h.engine.listen(LOCAL, 1).unwrap();
    h.inject(0, seg(F_SYN).no_ts());
    h.expect(0, exp(F_SYN | F_ACK).ack(1));
    h.inject(1, seg(F_ACK).seq(1).ack(1).no_ts());
    h.expect_event(Event::AcceptReady(l));
    // Second client: the accept queue (backlog 1) is full.
    h.remote = "192.0.2.2:40001".parse().unwrap();
    h.inject(2, seg(F_SYN).seq(0).no_ts());
    h.expect(
        2,
        exp(F_RST | F_ACK)
            .ack(1)
            .absolute()
            .seq(0)
            .ack(PEER_ISS + 1),
    );
    assert_eq!(h.engine.connection_count(), 1);
    assert!(h.engine.accept(l).is_some());
    assert!(h.engine.accept(l).is_none());
}

#[test]
fn syn_backlog_bounds_half_open_connections() {
    let mut cf = cfg();
    cf.syn_backlog = 2;
    let mut h = Harness::new(cf);
    h.engine.listen(LOCAL, 100).unwrap();
    for port in 0..3u16 {
        h.remote = std::net::SocketAddr::new(REMOTE.ip(), 50000 + port);
        h.inject(0, seg(F_SYN).no_ts());
    }
    h.expect_now(exp(F_SYN | F_ACK));
    h.expect_now(exp(F_SYN | F_ACK));
    h.expect_now(exp(F_RST | F_ACK));
    assert_eq!(h.engine.connection_count(), 2);
}

#[test]
fn close_listener_resets_queued_connections() {
    let mut h = Harness::new(cfg());
    let l = h.engine.listen(LOCAL, 8).unwrap();
    h.inject(0, seg(F_SYN).no_ts());
    h.expect_now(exp(F_SYN | F_ACK));
    h.inject(1, seg(F_ACK).seq(1).ack(1).no_ts());
    let iss1 = h.iss;
    h.remote = "192.0.2.2:40001".parse().unwrap();
    h.inject(2, seg(F_SYN).no_ts());
    h.expect_now(exp(F_SYN | F_ACK));
    assert_eq!(h.engine.connection_count(), 2);
    h.engine.close_listener(h.now, l);
    h.drain();
    let a = h.expect_now(exp(F_RST | F_ACK));
    let b = h.expect_now(exp(F_RST | F_ACK));
    let mut dsts = [a.dst.port(), b.dst.port()];
    dsts.sort();
    assert_eq!(dsts, [40000, 40001]);
    let est = if a.dst.port() == 40000 { &a } else { &b };
    assert_eq!(est.seq, iss1.wrapping_add(1));
    assert_eq!(h.engine.connection_count(), 0);
    // The port is closed now.
    h.inject(3, seg(F_SYN).seq(100).no_ts());
    h.expect_now(exp(F_RST | F_ACK));
}

#[test]
fn syn_ack_is_retransmitted_and_half_open_times_out() {
    let mut cf = cfg();
    cf.syn_retries = 1;
    let mut h = Harness::new(cf);
    h.engine.listen(LOCAL, 8).unwrap();
    h.inject(0, seg(F_SYN).no_ts());
    h.expect(0, exp(F_SYN | F_ACK).ack(1));
    h.expect(1000, exp(F_SYN | F_ACK).ack(1));
    h.expect_nothing_until(3000);
    assert_eq!(h.engine.connection_count(), 0);
}

#[test]
fn retransmitted_syn_in_syn_received_repeats_syn_ack() {
    let mut h = Harness::new(cfg());
    h.engine.listen(LOCAL, 8).unwrap();
    h.inject(0, seg(F_SYN).no_ts());
    h.expect(0, exp(F_SYN | F_ACK).ack(1));
    h.inject(100, seg(F_SYN).no_ts());
    h.expect(100, exp(F_SYN | F_ACK).ack(1));
}

// ------------------------------------------------------------------ keepalive

#[test]
fn keepalive_probes_then_abort() {
    let mut cf = cfg();
    cf.keepalive_idle = Duration::from_secs(10);
    cf.keepalive_interval = Duration::from_secs(1);
    cf.keepalive_probes = 2;
    let opts = ConnOptions {
        keepalive: true,
        ..Default::default()
    };
    let (mut h, c) = Harness::active(cf, opts, PeerOpts::plain());
    h.expect(10_000, exp(F_ACK).seq(0).len(0));
    // An answer restarts the idle timer.
    h.inject(10_100, seg(F_ACK).seq(1).ack(1));
    h.expect(20_100, exp(F_ACK).seq(0));
    h.expect(21_100, exp(F_ACK).seq(0));
    h.expect(22_100, exp(F_RST | F_ACK).seq(1));
    h.expect_event(Event::Reset(c));
    assert_eq!(h.engine.connection_count(), 0);
    let mut b = [0u8; 1];
    assert_eq!(h.engine.recv(h.now, c, &mut b), Err(TcpError::TimedOut));
}

#[test]
fn keepalive_is_off_by_default() {
    let (mut h, _c) = Harness::active(cfg(), ConnOptions::default(), PeerOpts::plain());
    h.expect_nothing_until(8_000_000);
}

#[test]
fn malformed_segments_do_not_panic() {
    let (mut h, _l, _c) = Harness::passive(cfg(), PeerOpts::full());
    let good = h.build(&seg(F_ACK).seq(1).ack(1).len(20));
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..20_000u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut b = good.clone();
        let n = (x % 6) as usize + 1;
        for k in 0..n {
            let pos = ((x >> (8 * k)) as usize) % b.len();
            b[pos] = (x >> (k * 5)) as u8;
        }
        if i % 7 == 0 {
            b.truncate((x as usize) % b.len());
        }
        h.inject_raw(h.ms() + (i % 3), &b);
    }
    h.out.clear();
}
