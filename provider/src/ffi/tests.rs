//! Unit tests of the C ABI over the loopback datapath (no root), and the header check.
use std::ptr::{null, null_mut};
use std::sync::{Mutex, MutexGuard};

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
        // Overlapped: not yet.
        let mut ov = WSAOVERLAPPED {
            Internal: 0,
            InternalHigh: 0,
            Offset: 0,
            OffsetHigh: 0,
            hEvent: null_mut(),
        };
        let mut n = 0;
        let mut flags = 0;
        let mut byte = 0u8;
        let mut b = WSABUF {
            len: 1,
            buf: (&raw mut byte).cast(),
        };
        assert_eq!(
            WSPRecv(
                s,
                &mut b,
                1,
                &mut n,
                &mut flags,
                &mut ov,
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
