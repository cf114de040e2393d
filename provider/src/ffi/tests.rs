//! Unit tests of the C ABI over the loopback datapath (no root), and the header check.
use std::ptr::{null, null_mut};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::*;
use crate::api::ProviderConfig;
use crate::api::loopback::{LOOPBACK_V4, LoopbackDatapath};

/// The ABI has one global provider: the tests that install one run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

struct Installed(#[allow(dead_code)] MutexGuard<'static, ()>);

fn with_loopback() -> Installed {
    let g = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let (p, _dp) = LoopbackDatapath::provider(ProviderConfig::default());
    install(Some(p));
    Installed(g)
}

impl Drop for Installed {
    fn drop(&mut self) {
        install(None);
    }
}

fn sin(ip: std::net::Ipv4Addr, port: u16) -> sockaddr_in {
    sockaddr_in {
        sin_family: AF_INET as u16,
        sin_port: port.to_be(),
        sin_addr: in_addr {
            s_addr: u32::from_ne_bytes(ip.octets()),
        },
        sin_zero: [0; 8],
    }
}

#[test]
fn header_is_current() {
    let generated = include_str!(concat!(env!("OUT_DIR"), "/provider.h"));
    assert!(
        !generated.contains("cbindgen failed"),
        "header generation failed: {generated}"
    );
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/include/provider.h");
    if std::env::var_os("PROVIDER_UPDATE_HEADER").is_some() {
        std::fs::create_dir_all(concat!(env!("CARGO_MANIFEST_DIR"), "/include")).unwrap();
        std::fs::write(path, generated).unwrap();
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == generated,
        "provider/include/provider.h is stale: run \
         `PROVIDER_UPDATE_HEADER=1 cargo test -p provider ffi::tests::header_is_current`"
    );
}

#[test]
fn not_initialised_and_null_errno() {
    let _g = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    install(None);
    let mut err = 0;
    // SAFETY: valid pointers.
    let s = unsafe { WSPSocket(AF_INET, SOCK_STREAM, 0, null_mut(), 0, 0, &mut err) };
    assert_eq!(s, INVALID_SOCKET);
    assert_eq!(err, WSANOTINITIALISED);
    // SAFETY: valid pointers.
    assert_eq!(unsafe { WSPCloseSocket(1, &mut err) }, SOCKET_ERROR);
    assert_eq!(err, WSANOTINITIALISED);
    // SAFETY: a NULL lpErrno is allowed (the call just fails).
    assert_eq!(unsafe { WSPCloseSocket(1, null_mut()) }, SOCKET_ERROR);
    assert_eq!(provider_stop(), SOCKET_ERROR);
}

#[test]
fn panics_do_not_cross() {
    let mut err = 0;
    // SAFETY: valid pointer.
    let r = unsafe { ffi_call(&mut err, -1, || -> Result<i32, i32> { panic!("boom") }) };
    assert_eq!((r, err), (-1, WSAENETDOWN));
}

#[test]
fn faults_and_overlapped() {
    let _i = with_loopback();
    let mut err = 0;
    // SAFETY: every pointer below is valid or deliberately NULL / short.
    unsafe {
        let s = WSPSocket(
            AF_INET,
            SOCK_STREAM,
            IPPROTO_TCP,
            null_mut(),
            0,
            0,
            &mut err,
        );
        assert_ne!(s, INVALID_SOCKET);
        // NULL / short names.
        assert_eq!(WSPBind(s, null(), 16, &mut err), SOCKET_ERROR);
        assert_eq!(err, WSAEFAULT);
        let a = sin(LOOPBACK_V4, 5000);
        let ap = (&raw const a).cast::<sockaddr>();
        assert_eq!(WSPBind(s, ap, 15, &mut err), SOCKET_ERROR);
        assert_eq!(err, WSAEFAULT);
        assert_eq!(WSPBind(s, ap, 16, &mut err), 0);
        let mut out = sin(LOOPBACK_V4, 0);
        let mut len = 8;
        let op = (&raw mut out).cast::<sockaddr>();
        assert_eq!(WSPGetSockName(s, op, &mut len, &mut err), SOCKET_ERROR);
        assert_eq!(err, WSAEFAULT);
        len = 16;
        assert_eq!(WSPGetSockName(s, op, &mut len, &mut err), 0);
        assert_eq!((len, u16::from_be(out.sin_port)), (16, 5000));
        // Options: NULL, short, linger.
        let l = linger {
            l_onoff: 1,
            l_linger: 0,
        };
        let lp = (&raw const l).cast::<c_char>();
        assert_eq!(
            WSPSetSockOpt(s, SOL_SOCKET, SO_LINGER, null(), 4, &mut err),
            -1
        );
        assert_eq!(err, WSAEFAULT);
        assert_eq!(WSPSetSockOpt(s, SOL_SOCKET, SO_LINGER, lp, 2, &mut err), -1);
        assert_eq!(err, WSAEFAULT);
        assert_eq!(WSPSetSockOpt(s, SOL_SOCKET, SO_LINGER, lp, 4, &mut err), 0);
        let mut got = linger::default();
        let mut glen = 4;
        let gp = (&raw mut got).cast::<c_char>();
        assert_eq!(
            WSPGetSockOpt(s, SOL_SOCKET, SO_LINGER, gp, &mut glen, &mut err),
            0
        );
        assert_eq!((got, glen), (l, 4));
        // Overlapped on an unconnected socket fails at once (reported nowhere) and leaves the
        // WSAOVERLAPPED free; WSPIoctl has no overlapped form.
        let mut ov = new_ov(null_mut());
        let mut n = 0;
        let mut flags = 0;
        let mut byte = 0u8;
        let mut b = WSABUF {
            len: 1,
            buf: (&raw mut byte).cast(),
        };
        for _ in 0..2 {
            assert_eq!(
                WSPRecv(
                    s,
                    &mut b,
                    1,
                    &mut n,
                    &mut flags,
                    &mut *ov,
                    None,
                    null_mut(),
                    &mut err
                ),
                -1
            );
            assert_eq!(err, WsaError::WSAENOTCONN.code());
        }
        let mut arg = 1u32;
        let mut ret = 0;
        assert_eq!(
            WSPIoctl(
                s,
                FIONBIO,
                (&raw mut arg).cast(),
                4,
                null_mut(),
                0,
                &mut ret,
                &mut *ov,
                None,
                null_mut(),
                &mut err
            ),
            -1
        );
        assert_eq!(err, WSAEOPNOTSUPP);
        // NULL buffer with a length.
        b.buf = null_mut();
        assert_eq!(
            WSPSend(
                s,
                &mut b,
                1,
                &mut n,
                0,
                null_mut(),
                None,
                null_mut(),
                &mut err
            ),
            -1
        );
        assert_eq!(err, WSAEFAULT);
        assert_eq!(WSPCloseSocket(s, &mut err), 0);
        assert_eq!(WSPCloseSocket(s, &mut err), -1);
        assert_eq!(err, WsaError::WSAENOTSOCK.code());
    }
}

#[test]
fn stream_echo_through_the_abi() {
    let _i = with_loopback();
    let mut err = 0;
    // SAFETY: every pointer below is valid for the call.
    unsafe {
        let l = WSPSocket(AF_INET, SOCK_STREAM, 0, null_mut(), 0, 0, &mut err);
        let a = sin(LOOPBACK_V4, 5001);
        let ap = (&raw const a).cast::<sockaddr>();
        assert_eq!(WSPBind(l, ap, 16, &mut err), 0);
        assert_eq!(WSPListen(l, 8, &mut err), 0);
        let c = WSPSocket(AF_INET, SOCK_STREAM, 0, null_mut(), 0, 0, &mut err);
        assert_eq!(
            WSPConnect(
                c,
                ap,
                16,
                null_mut(),
                null_mut(),
                null_mut(),
                null_mut(),
                &mut err
            ),
            0,
            "connect: {err}"
        );
        let mut peer = sin(LOOPBACK_V4, 0);
        let mut plen = 16;
        let srv = WSPAccept(
            l,
            (&raw mut peer).cast(),
            &mut plen,
            null_mut(),
            0,
            &mut err,
        );
        assert_ne!(srv, INVALID_SOCKET, "accept: {err}");
        assert_eq!(plen, 16);
        // Gather two buffers, scatter into two.
        let mut x = *b"hello ";
        let mut y = *b"world";
        let mut out = [
            WSABUF {
                len: 6,
                buf: x.as_mut_ptr().cast(),
            },
            WSABUF {
                len: 5,
                buf: y.as_mut_ptr().cast(),
            },
        ];
        let mut n = 0;
        assert_eq!(
            WSPSend(
                c,
                out.as_mut_ptr(),
                2,
                &mut n,
                0,
                null_mut(),
                None,
                null_mut(),
                &mut err
            ),
            0
        );
        assert_eq!(n, 11);
        let mut got = Vec::new();
        while got.len() < 11 {
            let mut p = [0u8; 4];
            let mut q = [0u8; 16];
            let mut bufs = [
                WSABUF {
                    len: 4,
                    buf: p.as_mut_ptr().cast(),
                },
                WSABUF {
                    len: 16,
                    buf: q.as_mut_ptr().cast(),
                },
            ];
            let mut flags = 0;
            let mut r = 0;
            assert_eq!(
                WSPRecv(
                    srv,
                    bufs.as_mut_ptr(),
                    2,
                    &mut r,
                    &mut flags,
                    null_mut(),
                    None,
                    null_mut(),
                    &mut err
                ),
                0
            );
            let r = r as usize;
            got.extend_from_slice(&p[..r.min(4)]);
            if r > 4 {
                got.extend_from_slice(&q[..r - 4]);
            }
        }
        assert_eq!(&got, b"hello world");
        let d = WSPDuplicateSocketLite(srv, &mut err);
        assert_ne!(d, INVALID_SOCKET);
        for s in [d, srv, c, l] {
            assert_eq!(WSPCloseSocket(s, &mut err), 0);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Asynchronous I/O through the ABI.

fn new_ov(h: HANDLE) -> Box<WSAOVERLAPPED> {
    Box::new(WSAOVERLAPPED {
        Internal: 0,
        InternalHigh: 0,
        Offset: 0,
        OffsetHigh: 0,
        hEvent: h,
    })
}

fn wb(b: &mut [u8]) -> WSABUF {
    WSABUF {
        len: b.len() as u32,
        buf: b.as_mut_ptr().cast(),
    }
}

fn socket(ty: i32) -> SOCKET {
    let mut err = 0;
    // SAFETY: valid pointers.
    let s = unsafe { WSPSocket(AF_INET, ty, 0, null_mut(), 0, 0, &mut err) };
    assert_ne!(s, INVALID_SOCKET, "socket: {err}");
    s
}

fn bind(s: SOCKET, port: u16) {
    let a = sin(LOOPBACK_V4, port);
    let mut err = 0;
    // SAFETY: valid pointers.
    let r = unsafe { WSPBind(s, (&raw const a).cast(), 16, &mut err) };
    assert_eq!(r, 0, "bind: {err}");
}

fn connect(s: SOCKET, port: u16) {
    let a = sin(LOOPBACK_V4, port);
    let mut err = 0;
    // SAFETY: valid pointers.
    let r = unsafe {
        WSPConnect(
            s,
            (&raw const a).cast(),
            16,
            null_mut(),
            null_mut(),
            null_mut(),
            null_mut(),
            &mut err,
        )
    };
    assert_eq!(r, 0, "connect: {err}");
}

fn accept(l: SOCKET) -> SOCKET {
    let mut err = 0;
    // SAFETY: valid pointers (NULL address allowed).
    let s = unsafe { WSPAccept(l, null_mut(), null_mut(), null_mut(), 0, &mut err) };
    assert_ne!(s, INVALID_SOCKET, "accept: {err}");
    s
}

/// Listener, client, accepted server socket on `port`.
fn tcp_pair(port: u16) -> (SOCKET, SOCKET, SOCKET) {
    let l = socket(SOCK_STREAM);
    bind(l, port);
    let mut err = 0;
    // SAFETY: valid pointer.
    assert_eq!(unsafe { WSPListen(l, 8, &mut err) }, 0);
    let c = socket(SOCK_STREAM);
    connect(c, port);
    let srv = accept(l);
    (l, c, srv)
}

fn close(s: SOCKET) {
    let mut err = 0;
    // SAFETY: valid pointer.
    assert_eq!(unsafe { WSPCloseSocket(s, &mut err) }, 0, "close: {err}");
}

/// Blocking send of `data` (not overlapped).
fn send(s: SOCKET, data: &[u8]) {
    let mut d = data.to_vec();
    let mut b = wb(&mut d);
    let (mut n, mut err) = (0, 0);
    // SAFETY: valid pointers.
    let r = unsafe {
        WSPSend(
            s,
            &mut b,
            1,
            &mut n,
            0,
            null_mut(),
            None,
            null_mut(),
            &mut err,
        )
    };
    assert_eq!((r, n as usize), (0, data.len()), "send: {err}");
}

/// Overlapped WSPRecv: (return value, error code, bytes).
///
/// # Safety
/// The buffers and `ov` stay valid until the operation completes.
unsafe fn recv_ov(
    s: SOCKET,
    bufs: &mut [WSABUF],
    ov: *mut WSAOVERLAPPED,
    routine: LPWSAOVERLAPPED_COMPLETION_ROUTINE,
) -> (i32, i32, u32) {
    let (mut n, mut flags, mut err) = (0, 0, 0);
    // SAFETY: per the contract.
    let r = unsafe {
        WSPRecv(
            s,
            bufs.as_mut_ptr(),
            bufs.len() as u32,
            &mut n,
            &mut flags,
            ov,
            routine,
            null_mut(),
            &mut err,
        )
    };
    (r, err, n)
}

/// WSPGetOverlappedResult: (BOOL, error code, bytes).
fn result(ov: &WSAOVERLAPPED, wait: bool) -> (BOOL, i32, u32) {
    let (mut n, mut flags, mut err) = (0, 0, 0);
    // SAFETY: valid pointers; `ov` is only read.
    let r = unsafe {
        WSPGetOverlappedResult(
            0,
            (&raw const *ov).cast_mut(),
            &mut n,
            wait as BOOL,
            &mut flags,
            &mut err,
        )
    };
    (r, err, n)
}

fn rc(r: (i32, i32, u32)) -> [i32; 2] {
    [r.0, r.1]
}

fn wait_one(h: HANDLE, ms: u32) -> u32 {
    // SAFETY: one valid handle slot.
    unsafe { provider_wait_for_multiple_events(1, &h, 0, ms, 0) }
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// What the test completion routine saw: (dwError, cbTransferred, lpOverlapped, Internal at
/// call time, first byte of the buffer whose address the test put in hEvent).
type RoutineCall = (u32, u32, usize, usize, u8);
static ROUTINE_LOG: Mutex<Vec<RoutineCall>> = Mutex::new(Vec::new());

unsafe extern "C" fn test_routine(err: DWORD, bytes: DWORD, ov: LPWSAOVERLAPPED, flags: DWORD) {
    assert_eq!(flags, 0);
    // SAFETY: the test keeps `ov` and the buffer named by hEvent alive until this ran.
    let (internal, first) = unsafe {
        let ctx = (*ov).hEvent.cast::<u8>();
        ((*ov).Internal, if ctx.is_null() { 0 } else { ctx.read() })
    };
    ROUTINE_LOG
        .lock()
        .unwrap()
        .push((err, bytes, ov as usize, internal, first));
}

fn routine_entry(ov: &WSAOVERLAPPED) -> Option<RoutineCall> {
    let addr = (&raw const *ov) as usize;
    ROUTINE_LOG
        .lock()
        .unwrap()
        .iter()
        .find(|e| e.2 == addr)
        .copied()
}

#[test]
fn overlapped_recv_with_an_event_pending_then_immediate() {
    let _i = with_loopback();
    let (l, c, srv) = tcp_pair(5101);
    let ev = provider_create_event();
    assert!(!ev.is_null());
    let mut ov = new_ov(ev);
    let (mut p, mut q) = ([0u8; 4], [0u8; 16]);
    let mut bufs = [wb(&mut p), wb(&mut q)];
    // SAFETY: buffers and ov outlive the operation (waited for below).
    unsafe {
        assert_eq!(
            rc(recv_ov(srv, &mut bufs, &mut *ov, None)),
            [-1, WSA_IO_PENDING]
        );
    }
    assert_eq!(ov.Internal, WSA_IO_PENDING as usize);
    assert_eq!(result(&ov, false).1, WSA_IO_INCOMPLETE);
    // One operation per WSAOVERLAPPED.
    let mut other = [0u8; 4];
    let mut ob = [wb(&mut other)];
    // SAFETY: fails at once.
    unsafe {
        assert_eq!(rc(recv_ov(srv, &mut ob, &mut *ov, None)), [-1, WSAEINVAL]);
    }
    assert_eq!(wait_one(ev, 0), WSA_WAIT_TIMEOUT);
    send(c, b"hello world");
    assert_eq!(wait_one(ev, 5000), WSA_WAIT_EVENT_0);
    assert_eq!(result(&ov, false), (1, 0, 11));
    assert_eq!((ov.Internal, ov.InternalHigh), (0, 11));
    assert_eq!((&p, &q[..7]), (b"hell", &b"o world"[..]));

    // Data already there: completes at once, and the event is still set.
    assert_eq!(provider_reset_event(ev), 1);
    send(c, b"again");
    wait_until("data queued", || {
        let (mut n, mut r, mut err) = (0u32, 0, 0);
        // SAFETY: valid pointers.
        unsafe {
            WSPIoctl(
                srv,
                FIONREAD,
                null_mut(),
                0,
                (&raw mut n).cast(),
                4,
                &mut r,
                null_mut(),
                None,
                null_mut(),
                &mut err,
            );
        }
        n == 5
    });
    let mut bufs = [wb(&mut p), wb(&mut q)];
    // SAFETY: completes at once.
    let r = unsafe { recv_ov(srv, &mut bufs, &mut *ov, None) };
    assert_eq!(r, (0, 0, 5));
    assert_eq!((&p, q[0]), (b"agai", b'n'));
    assert_eq!(wait_one(ev, 0), WSA_WAIT_EVENT_0);
    assert_eq!(result(&ov, true), (1, 0, 5));
    assert_eq!(provider_close_event(ev), 1);
    for s in [c, srv, l] {
        close(s);
    }
}

#[test]
fn overlapped_send_and_recv_with_routines() {
    let _i = with_loopback();
    let (l, c, srv) = tcp_pair(5102);
    // Receive pending with a routine; hEvent carries the buffer address (context, not a handle).
    let mut got = [0u8; 8];
    let mut rov = new_ov(got.as_mut_ptr().cast());
    let mut rb = [wb(&mut got[..3]), wb(&mut got[3..])];
    // SAFETY: buffers and ov outlive the operation (waited for below).
    unsafe {
        assert_eq!(
            rc(recv_ov(srv, &mut rb, &mut *rov, Some(test_routine))),
            [-1, WSA_IO_PENDING]
        );
    }
    // Gathered overlapped send with a routine: completes at once, the routine still runs.
    let (mut x, mut y) = (*b"rou", *b"tine");
    let mut sb = [wb(&mut x), wb(&mut y)];
    let mut sov = new_ov(null_mut());
    let (mut n, mut err) = (0, 0);
    // SAFETY: valid pointers; the send data is copied at issue.
    let r = unsafe {
        WSPSend(
            c,
            sb.as_mut_ptr(),
            2,
            &mut n,
            0,
            &mut *sov,
            Some(test_routine),
            null_mut(),
            &mut err,
        )
    };
    assert_eq!((r, n), (0, 7), "send: {err}");
    wait_until("both routines", || {
        routine_entry(&sov).is_some() && routine_entry(&rov).is_some()
    });
    let (e, b, _, internal, _) = routine_entry(&sov).unwrap();
    assert_eq!((e, b, internal), (0, 7, 0));
    // The bytes were in the buffer and Internal written before the routine ran.
    let (e, b, _, internal, first) = routine_entry(&rov).unwrap();
    assert_eq!((e, b, internal, first), (0, 7, 0, b'r'));
    assert_eq!(&got[..7], b"routine");
    assert_eq!(result(&rov, false), (1, 0, 7));
    for s in [c, srv, l] {
        close(s);
    }
}

#[test]
fn completion_queue_and_get_overlapped_result_wait() {
    let _i = with_loopback();
    let (l, c, srv) = tcp_pair(5103);
    let q = provider_create_completion_queue();
    assert!(!q.is_null());
    let mut err = 0;
    // SAFETY: valid pointers.
    unsafe {
        assert_eq!(provider_associate_completion_queue(q, srv, 42, &mut err), 0);
        assert_eq!(
            provider_associate_completion_queue(q, srv, 43, &mut err),
            -1
        );
        assert_eq!(err, WSAEINVAL);
        assert_eq!(
            provider_associate_completion_queue(q, 12345, 1, &mut err),
            -1
        );
        assert_eq!(err, WSAENOTSOCK);
    }
    let qa = q.addr();
    let get = move |ms| {
        let q: HANDLE = std::ptr::without_provenance_mut(qa);
        let (mut n, mut key, mut ov, mut err) = (0, 0, null_mut(), 0);
        // SAFETY: valid pointers.
        let r =
            unsafe { provider_get_queued_completion(q, &mut n, &mut key, &mut ov, ms, &mut err) };
        (r, err, n, key, ov as usize)
    };
    assert_eq!(get(10), (0, WSA_WAIT_TIMEOUT as i32, 0, 0, 0));
    let mut buf = [0u8; 32];
    let mut b = [wb(&mut buf)];
    let mut ov = new_ov(null_mut());
    // SAFETY: outlives the operation.
    unsafe {
        assert_eq!(
            rc(recv_ov(srv, &mut b, &mut *ov, None)),
            [-1, WSA_IO_PENDING]
        );
    }
    send(c, b"queued");
    let (r, _, n, key, got) = get(5000);
    assert_eq!((r, n, key, got), (1, 6, 42, (&raw const *ov) as usize));
    assert_eq!(&buf[..6], b"queued");
    // No mechanism (client socket is not associated): WSPGetOverlappedResult waits.
    let mut cbuf = [0u8; 8];
    let mut cb = [wb(&mut cbuf)];
    let mut cov = new_ov(null_mut());
    // SAFETY: outlives the operation.
    unsafe {
        assert_eq!(
            rc(recv_ov(c, &mut cb, &mut *cov, None)),
            [-1, WSA_IO_PENDING]
        );
    }
    assert_eq!(result(&cov, false), (0, WSA_IO_INCOMPLETE, 0));
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(30));
        send(srv, b"late");
    });
    assert_eq!(result(&cov, true), (1, 0, 4));
    assert_eq!(&cbuf[..4], b"late");
    t.join().unwrap();
    assert_eq!(get(0).1, WSA_WAIT_TIMEOUT as i32, "nothing else queued");
    // Closing the queue wakes a waiter.
    let waiter = std::thread::spawn(move || get(WSA_INFINITE));
    std::thread::sleep(Duration::from_millis(30));
    assert_eq!(provider_close_completion_queue(q), 1);
    assert_eq!(waiter.join().unwrap(), (0, WSA_INVALID_HANDLE, 0, 0, 0));
    assert_eq!(provider_close_completion_queue(q), 0);
    for s in [c, srv, l] {
        close(s);
    }
}

#[test]
fn close_aborts_pending_operations_through_every_mechanism() {
    let _i = with_loopback();
    // Pending receives on `c` and `srv` of two connections: their peers stay open, so nothing
    // but the close completes them.
    let (l, c, peer_c) = tcp_pair(5104);
    let (l2, peer_srv, srv) = tcp_pair(5109);
    let q = provider_create_completion_queue();
    let ev = provider_create_event();
    let mut err = 0;
    // SAFETY: valid pointers.
    assert_eq!(
        unsafe { provider_associate_completion_queue(q, srv, 7, &mut err) },
        0
    );
    let mut bufs = [[0xAAu8; 16]; 4];
    let [b0, b1, b2, b3] = &mut bufs;
    let (mut w0, mut w1, mut w2, mut w3) = ([wb(b0)], [wb(b1)], [wb(b2)], [wb(b3)]);
    let mut ov_routine = new_ov(null_mut());
    let mut ov_event = new_ov(ev);
    let mut ov_poll = new_ov(null_mut());
    let mut ov_queue = new_ov(null_mut());
    // SAFETY: everything outlives the operations (checked complete below).
    unsafe {
        for (r, what) in [
            (
                recv_ov(c, &mut w0, &mut *ov_routine, Some(test_routine)),
                "routine",
            ),
            (recv_ov(c, &mut w1, &mut *ov_event, None), "event"),
            (recv_ov(c, &mut w2, &mut *ov_poll, None), "poll"),
            (recv_ov(srv, &mut w3, &mut *ov_queue, None), "queue"),
        ] {
            assert_eq!(r.1, WSA_IO_PENDING, "{what}");
        }
    }
    close(c);
    close(srv);
    wait_until("aborted routine", || routine_entry(&ov_routine).is_some());
    let (e, _, _, internal, _) = routine_entry(&ov_routine).unwrap();
    assert_eq!((e, internal), (995, 995));
    assert_eq!(wait_one(ev, 5000), WSA_WAIT_EVENT_0);
    assert_eq!(result(&ov_event, false), (0, WSA_OPERATION_ABORTED, 0));
    assert_eq!(result(&ov_poll, true), (0, WSA_OPERATION_ABORTED, 0));
    let (mut n, mut key, mut ov, mut err) = (0, 0, null_mut(), 0);
    // SAFETY: valid pointers.
    let r = unsafe { provider_get_queued_completion(q, &mut n, &mut key, &mut ov, 5000, &mut err) };
    assert_eq!((r, err, key), (0, WSA_OPERATION_ABORTED, 7));
    assert_eq!(ov, &raw mut *ov_queue);
    assert_eq!(bufs, [[0xAA; 16]; 4], "receive buffers untouched");
    // The structures are free again; the handles are gone.
    assert_eq!(ov_event.Internal, WSA_OPERATION_ABORTED as usize);
    assert_eq!(provider_close_completion_queue(q), 1);
    assert_eq!(provider_close_event(ev), 1);
    for s in [peer_c, peer_srv, l, l2] {
        close(s);
    }
}

#[test]
fn udp_recv_from_overlapped_writes_the_sender_at_completion() {
    let _i = with_loopback();
    let (a, b) = (socket(SOCK_DGRAM), socket(SOCK_DGRAM));
    bind(a, 5105);
    bind(b, 5106);
    let ev = provider_create_event();
    let mut ov = new_ov(ev);
    let mut buf = [0u8; 8];
    let mut bufs = [wb(&mut buf[..2]), wb(&mut buf[2..])];
    let mut from = sin(LOOPBACK_V4, 0);
    let mut fromlen = 16;
    let (mut n, mut flags, mut err) = (0, 0, 0);
    let recv_from = |bufs: &mut [WSABUF], ov: *mut WSAOVERLAPPED, from, fromlen, n, flags, err| {
        // SAFETY: all pointers valid until completion (waited for below).
        unsafe {
            WSPRecvFrom(
                a,
                bufs.as_mut_ptr(),
                bufs.len() as u32,
                n,
                flags,
                from,
                fromlen,
                ov,
                None,
                null_mut(),
                err,
            )
        }
    };
    let r = recv_from(
        &mut bufs,
        &mut *ov,
        (&raw mut from).cast(),
        &raw mut fromlen,
        &raw mut n,
        &raw mut flags,
        &raw mut err,
    );
    assert_eq!((r, err), (-1, WSA_IO_PENDING));
    let to = sin(LOOPBACK_V4, 5105);
    let mut data = *b"dgram";
    let mut sb = [wb(&mut data)];
    let mut sov = new_ov(null_mut());
    // SAFETY: valid pointers; datagram sends complete at once.
    let r = unsafe {
        WSPSendTo(
            b,
            sb.as_mut_ptr(),
            1,
            &mut n,
            0,
            (&raw const to).cast(),
            16,
            &mut *sov,
            None,
            null_mut(),
            &mut err,
        )
    };
    assert_eq!((r, n), (0, 5));
    assert_eq!(result(&sov, false), (1, 0, 5));
    assert_eq!(wait_one(ev, 5000), WSA_WAIT_EVENT_0);
    assert_eq!(result(&ov, false), (1, 0, 5));
    assert_eq!(&buf[..5], b"dgram");
    assert_eq!((fromlen, u16::from_be(from.sin_port)), (16, 5106));
    // A datagram larger than the buffers, already queued: filled, counted, WSAEMSGSIZE.
    let mut big = *b"0123456789abcdef";
    let mut sb = [wb(&mut big)];
    // SAFETY: valid pointers.
    unsafe {
        WSPSendTo(
            b,
            sb.as_mut_ptr(),
            1,
            &mut n,
            0,
            (&raw const to).cast(),
            16,
            null_mut(),
            None,
            null_mut(),
            &mut err,
        );
    }
    wait_until("datagram queued", || {
        let (mut avail, mut r, mut e) = (0u32, 0, 0);
        // SAFETY: valid pointers.
        unsafe {
            WSPIoctl(
                a,
                FIONREAD,
                null_mut(),
                0,
                (&raw mut avail).cast(),
                4,
                &mut r,
                null_mut(),
                None,
                null_mut(),
                &mut e,
            );
        }
        avail > 0
    });
    let mut bufs = [wb(&mut buf[..2]), wb(&mut buf[2..])];
    n = 0;
    let r = recv_from(
        &mut bufs,
        &mut *ov,
        (&raw mut from).cast(),
        &raw mut fromlen,
        &raw mut n,
        &raw mut flags,
        &raw mut err,
    );
    assert_eq!((r, err, n), (-1, WsaError::WSAEMSGSIZE.code(), 8));
    assert_eq!(&buf, b"01234567");
    assert_eq!(result(&ov, false), (0, WsaError::WSAEMSGSIZE.code(), 8));
    assert_eq!(provider_close_event(ev), 1);
    close(a);
    close(b);
}

#[test]
fn garbage_and_closed_handles_are_refused() {
    let _i = with_loopback();
    let garbage: HANDLE = std::ptr::without_provenance_mut(0xdead_beef);
    assert_eq!(provider_set_event(garbage), 0);
    assert_eq!(provider_set_event(null_mut()), 0);
    assert_eq!(provider_reset_event(garbage), 0);
    assert_eq!(provider_close_event(garbage), 0);
    assert_eq!(wait_one(garbage, 0), WSA_WAIT_FAILED);
    let ev = provider_create_event();
    let q = provider_create_completion_queue();
    // Wrong kind of handle.
    assert_eq!(provider_close_event(q), 0);
    assert_eq!(provider_close_completion_queue(ev), 0);
    assert_eq!(provider_set_event(ev), 1);
    assert_eq!(provider_close_event(ev), 1);
    assert_eq!(provider_close_event(ev), 0, "closed");
    assert_eq!(provider_set_event(ev), 0, "closed");
    // SAFETY: valid pointers / deliberately bad counts.
    unsafe {
        assert_eq!(
            provider_wait_for_multiple_events(0, &q, 0, 0, 0),
            WSA_WAIT_FAILED
        );
        assert_eq!(
            provider_wait_for_multiple_events(1, null(), 0, 0, 0),
            WSA_WAIT_FAILED
        );
        assert_eq!(
            provider_wait_for_multiple_events(65, &q, 0, 0, 0),
            WSA_WAIT_FAILED
        );
        assert_eq!(
            provider_wait_for_multiple_events(1, &ev, 0, 0, 0),
            WSA_WAIT_FAILED
        );
    }
    let (l, c, srv) = tcp_pair(5107);
    let mut err = 0;
    let mut ne = WSANETWORKEVENTS::default();
    // SAFETY: valid pointers, bad handles.
    unsafe {
        assert_eq!(WSPEventSelect(srv, garbage, FD_READ, &mut err), -1);
        assert_eq!(err, WSA_INVALID_HANDLE);
        assert_eq!(WSPEventSelect(srv, q, FD_READ, &mut err), -1);
        assert_eq!(err, WSA_INVALID_HANDLE);
        assert_eq!(WSPEnumNetworkEvents(srv, garbage, &mut ne, &mut err), -1);
        assert_eq!(err, WSA_INVALID_HANDLE);
        assert_eq!(
            WSPEnumNetworkEvents(srv, null_mut(), null_mut(), &mut err),
            -1
        );
        assert_eq!(err, WSAEFAULT);
        assert_eq!(
            provider_associate_completion_queue(garbage, srv, 1, &mut err),
            -1
        );
        assert_eq!(err, WSA_INVALID_HANDLE);
        let (mut n, mut key, mut ov) = (0, 0, null_mut());
        assert_eq!(
            provider_get_queued_completion(ev, &mut n, &mut key, &mut ov, 0, &mut err),
            0
        );
        assert_eq!((err, ov), (WSA_INVALID_HANDLE, null_mut()));
        assert_eq!(
            provider_get_queued_completion(q, null_mut(), &mut key, &mut ov, 0, &mut err),
            0
        );
        assert_eq!(err, WSAEFAULT);
        // A bad hEvent: refused before anything starts; the structure stays free.
        let mut buf = [0u8; 4];
        let mut b = [wb(&mut buf)];
        let mut ov = new_ov(garbage);
        assert_eq!(
            rc(recv_ov(srv, &mut b, &mut *ov, None)),
            [-1, WSA_INVALID_HANDLE]
        );
        ov.hEvent = null_mut();
        assert_eq!(
            rc(recv_ov(srv, &mut b, &mut *ov, None)),
            [-1, WSA_IO_PENDING]
        );
        // WSPGetOverlappedResult: NULL pointers, never-issued structure.
        let fresh = new_ov(null_mut());
        assert_eq!(
            result(&fresh, false).1,
            0,
            "Internal 0: a (vacuous) success"
        );
        let mut pending = *fresh;
        pending.Internal = WSA_IO_PENDING as usize;
        assert_eq!(result(&pending, false).1, WSAEINVAL);
        let (mut n, mut fl) = (0, 0);
        assert_eq!(
            WSPGetOverlappedResult(0, null_mut(), &mut n, 0, &mut fl, &mut err),
            0
        );
        assert_eq!(err, WSAEFAULT);
        assert_eq!(WSPCancelBlockingCall(&mut err), -1);
        assert_eq!(err, WSAEINVAL);
        // `srv` first: its pending receive is aborted (closing `c` first could end it with EOF).
        for s in [srv, c, l] {
            close(s);
        }
        assert_eq!(result(&ov, true).1, WSA_OPERATION_ABORTED);
    }
    assert_eq!(provider_close_completion_queue(q), 1);
    // Before start / after stop.
    install(None);
    // SAFETY: valid pointers.
    unsafe {
        assert_eq!(WSPCancelBlockingCall(&mut err), -1);
        assert_eq!(err, WSANOTINITIALISED);
        assert_eq!(WSPEventSelect(1, null_mut(), 0, &mut err), -1);
        assert_eq!(err, WSANOTINITIALISED);
        let fresh = new_ov(null_mut());
        assert_eq!(result(&fresh, false).1, WSANOTINITIALISED);
        assert_eq!(WSPCancelBlockingCall(null_mut()), -1);
    }
}

#[test]
fn event_select_accept_read_close_sequence() {
    let _i = with_loopback();
    let ev = provider_create_event();
    let l = socket(SOCK_STREAM);
    bind(l, 5108);
    let mut err = 0;
    let mut ne = WSANETWORKEVENTS::default();
    // SAFETY: valid pointers throughout.
    unsafe {
        assert_eq!(WSPListen(l, 8, &mut err), 0);
        assert_eq!(
            WSPEventSelect(l, ev, FD_ACCEPT | FD_READ | FD_CLOSE, &mut err),
            0
        );
        assert_eq!(wait_one(ev, 0), WSA_WAIT_TIMEOUT);
        let c = socket(SOCK_STREAM);
        connect(c, 5108);
        assert_eq!(wait_one(ev, 5000), WSA_WAIT_EVENT_0);
        assert_eq!(WSPEnumNetworkEvents(l, ev, &mut ne, &mut err), 0);
        assert_eq!(ne.lNetworkEvents, FD_ACCEPT);
        assert_eq!(ne.iErrorCode[FD_ACCEPT_BIT as usize], 0);
        assert_eq!(wait_one(ev, 0), WSA_WAIT_TIMEOUT, "reset by the enum");
        let srv = accept(l);
        // The accepted socket inherits the selection and the event.
        send(c, b"ping");
        assert_eq!(wait_one(ev, 5000), WSA_WAIT_EVENT_0);
        assert_eq!(WSPEnumNetworkEvents(srv, ev, &mut ne, &mut err), 0);
        assert_eq!(ne.lNetworkEvents, FD_READ);
        let mut buf = [0u8; 8];
        let mut b = [wb(&mut buf)];
        let (mut n, mut flags) = (0, 0);
        assert_eq!(
            WSPRecv(
                srv,
                b.as_mut_ptr(),
                1,
                &mut n,
                &mut flags,
                null_mut(),
                None,
                null_mut(),
                &mut err
            ),
            0
        );
        assert_eq!(&buf[..n as usize], b"ping");
        close(c); // graceful: FIN
        assert_eq!(wait_one(ev, 5000), WSA_WAIT_EVENT_0);
        assert_eq!(WSPEnumNetworkEvents(srv, null_mut(), &mut ne, &mut err), 0);
        assert_eq!(ne.lNetworkEvents & FD_CLOSE, FD_CLOSE);
        assert_eq!(ne.iErrorCode[FD_CLOSE_BIT as usize], 0);
        // Cancel with a NULL event.
        assert_eq!(WSPEventSelect(srv, null_mut(), 0, &mut err), 0);
        close(srv);
        close(l);
    }
    assert_eq!(provider_close_event(ev), 1);
}

#[test]
fn wait_for_multiple_events_any_all_timeout() {
    let evs: Vec<HANDLE> = (0..3).map(|_| provider_create_event()).collect();
    let wait = |all: BOOL, ms| {
        // SAFETY: three valid handle slots.
        unsafe { provider_wait_for_multiple_events(3, evs.as_ptr(), all, ms, 1) }
    };
    assert_eq!(wait(0, 10), WSA_WAIT_TIMEOUT);
    assert_eq!(provider_set_event(evs[2]), 1);
    assert_eq!(wait(0, 10), WSA_WAIT_EVENT_0 + 2);
    assert_eq!(wait(1, 10), WSA_WAIT_TIMEOUT);
    provider_set_event(evs[0]);
    assert_eq!(wait(0, 10), WSA_WAIT_EVENT_0, "lowest index");
    let h1 = evs[1].addr();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(30));
        provider_set_event(std::ptr::without_provenance_mut(h1))
    });
    assert_eq!(wait(1, WSA_INFINITE), WSA_WAIT_EVENT_0);
    assert_eq!(t.join().unwrap(), 1);
    for e in evs {
        assert_eq!(provider_close_event(e), 1);
    }
}
