//! The descriptor table and readiness through the exported calls, over a provider on the
//! loopback datapath (no interface, no root): epoll over mixed sets of provider sockets and a
//! pipe, level- and edge-triggered reports, EPOLLONESHOT until EPOLL_CTL_MOD, and dup/close
//! order. Each test uses its own ports; the stack is one per process, and the tests run one
//! at a time (they check what happens to descriptor numbers after close).
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Mutex, MutexGuard, Once};

use provider::api::{LoopbackDatapath, ProviderConfig};
use provider_preload::calls;
use provider_preload::stack;

const HOST: Ipv4Addr = provider::api::loopback::LOOPBACK_V4;

fn stack() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let (p, dp) = LoopbackDatapath::provider(ProviderConfig::default());
        // The datapath lives as long as the process (its pump thread holds the provider weakly).
        std::mem::forget(dp);
        assert!(stack::install_for_tests(p, vec![IpAddr::V4(HOST)]));
    });
}

fn serial() -> MutexGuard<'static, ()> {
    static ONE: Mutex<()> = Mutex::new(());
    ONE.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn addr(port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(HOST).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn bind(fd: i32, port: u16) {
    let a = addr(port);
    let len = std::mem::size_of_val(&a) as libc::socklen_t;
    // SAFETY: a live sockaddr_in of `len` bytes.
    let r = unsafe { calls::bind(fd, (&raw const a).cast(), len) };
    assert_eq!(r, 0, "bind :{port}: {}", std::io::Error::last_os_error());
}

/// A connected pair over the provider: (client, accepted server side).
fn pair(port: u16) -> (i32, i32) {
    stack();
    // SAFETY: plain socket calls; the preload hands each over at bind.
    unsafe {
        let l = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        bind(l, port);
        assert!(
            stack::table().get(l).is_some(),
            "the listener is a provider socket"
        );
        assert_eq!(calls::listen(l, 8), 0);
        let c = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        bind(c, 0);
        let a = addr(port);
        let len = std::mem::size_of_val(&a) as libc::socklen_t;
        assert_eq!(calls::connect(c, (&raw const a).cast(), len), 0, "connect");
        let s = calls::accept(l, std::ptr::null_mut(), std::ptr::null_mut());
        assert!(s >= 0, "accept: {}", std::io::Error::last_os_error());
        assert_eq!(calls::close(l), 0);
        (c, s)
    }
}

fn write(fd: i32, b: &[u8]) {
    // SAFETY: a live buffer.
    let n = unsafe { calls::write(fd, b.as_ptr().cast(), b.len()) };
    assert_eq!(
        n,
        b.len() as isize,
        "write: {}",
        std::io::Error::last_os_error()
    );
}

fn read(fd: i32, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    // SAFETY: a live buffer.
    let got = unsafe { calls::read(fd, b.as_mut_ptr().cast(), n) };
    assert!(got >= 0, "read: {}", std::io::Error::last_os_error());
    b.truncate(got as usize);
    b
}

fn ctl(ep: i32, op: i32, fd: i32, events: u32, data: u64) -> i32 {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: a live epoll_event.
    unsafe { calls::epoll_ctl(ep, op, fd, &mut ev) }
}

/// (data, events) reported by one epoll_wait.
fn wait(ep: i32, ms: i32) -> Vec<(u64, u32)> {
    let mut out = [libc::epoll_event { events: 0, u64: 0 }; 8];
    // SAFETY: room for 8 events.
    let n = unsafe { calls::epoll_wait(ep, out.as_mut_ptr(), 8, ms) };
    assert!(n >= 0, "epoll_wait: {}", std::io::Error::last_os_error());
    let mut v: Vec<(u64, u32)> = out[..n as usize]
        .iter()
        .map(|e| (e.u64, e.events))
        .collect();
    v.sort_unstable();
    v
}

fn datas(v: &[(u64, u32)]) -> Vec<u64> {
    v.iter().map(|e| e.0).collect()
}

fn epoll() -> i32 {
    // SAFETY: plain call.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(ep >= 0);
    ep
}

fn pipe() -> (i32, i32) {
    let mut p = [0i32; 2];
    // SAFETY: room for two descriptors.
    assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_NONBLOCK) }, 0);
    (p[0], p[1])
}

const IN: u32 = libc::EPOLLIN as u32;

#[test]
fn a_mixed_set_reports_provider_sockets_and_a_pipe_level_triggered() {
    let _one = serial();
    let (c, s) = pair(9101);
    let (pr, pw) = pipe();
    let ep = epoll();
    assert_eq!(ctl(ep, libc::EPOLL_CTL_ADD, s, IN, 1), 0);
    assert_eq!(ctl(ep, libc::EPOLL_CTL_ADD, pr, IN, 2), 0);
    assert!(wait(ep, 0).is_empty(), "nothing is ready yet");
    write(c, b"ab");
    let got = wait(ep, 2000);
    // Only the events asked for (EPOLLRDNORM is not), as Linux reports them.
    assert_eq!(got, vec![(1, IN)], "{got:?}");
    // Level-triggered: reported again while data is queued.
    assert_eq!(datas(&wait(ep, 0)), vec![1]);
    write(pw, b"x");
    assert_eq!(datas(&wait(ep, 2000)), vec![1, 2], "both kinds in one wait");
    assert_eq!(read(s, 16), b"ab");
    assert_eq!(
        datas(&wait(ep, 0)),
        vec![2],
        "the drained socket is no longer ready"
    );
    // SAFETY: closing our descriptors.
    unsafe {
        calls::close(c);
        calls::close(s);
        libc::close(pr);
        libc::close(pw);
        libc::close(ep);
    }
}

#[test]
fn edge_triggered_reports_once_per_new_arrival() {
    let _one = serial();
    let (c, s) = pair(9102);
    let ep = epoll();
    assert_eq!(
        ctl(ep, libc::EPOLL_CTL_ADD, s, IN | libc::EPOLLET as u32, 7),
        0
    );
    write(c, b"one");
    assert_eq!(datas(&wait(ep, 2000)), vec![7]);
    assert!(wait(ep, 50).is_empty(), "no new data: no second report");
    write(c, b"two");
    assert_eq!(datas(&wait(ep, 2000)), vec![7], "new data: reported again");
    assert_eq!(read(s, 16), b"onetwo");
    // SAFETY: closing our descriptors.
    unsafe {
        calls::close(c);
        calls::close(s);
        libc::close(ep);
    }
}

#[test]
fn oneshot_reports_once_until_epoll_ctl_mod() {
    let _one = serial();
    let (c, s) = pair(9103);
    let ep = epoll();
    assert_eq!(
        ctl(
            ep,
            libc::EPOLL_CTL_ADD,
            s,
            IN | libc::EPOLLONESHOT as u32,
            3
        ),
        0
    );
    write(c, b"a");
    assert_eq!(datas(&wait(ep, 2000)), vec![3]);
    write(c, b"b");
    assert!(wait(ep, 50).is_empty(), "disabled after one report");
    assert_eq!(
        ctl(
            ep,
            libc::EPOLL_CTL_MOD,
            s,
            IN | libc::EPOLLONESHOT as u32,
            4
        ),
        0
    );
    assert_eq!(
        datas(&wait(ep, 2000)),
        vec![4],
        "re-armed by MOD, with its new data"
    );
    assert_eq!(
        ctl(ep, libc::EPOLL_CTL_ADD, s, IN, 5),
        -1,
        "already in the set"
    );
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EEXIST)
    );
    // SAFETY: closing our descriptors.
    unsafe {
        calls::close(c);
        calls::close(s);
        libc::close(ep);
    }
}

#[test]
fn a_dup_keeps_the_socket_open_after_the_original_closes() {
    let _one = serial();
    let (c, s) = pair(9104);
    // SAFETY: plain descriptor calls.
    unsafe {
        let d = calls::dup(s);
        assert!(d >= 0 && d != s);
        assert!(
            stack::table().get(d).is_some(),
            "the dup is a provider socket too"
        );
        assert_eq!(calls::close(s), 0);
        assert!(stack::table().get(s).is_none(), "the closed number is free");
        assert_eq!(calls::close(s), -1, "closed twice");
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EBADF)
        );
        write(c, b"still there");
        let ep = epoll();
        assert_eq!(ctl(ep, libc::EPOLL_CTL_ADD, d, IN, 9), 0);
        assert_eq!(datas(&wait(ep, 2000)), vec![9]);
        assert_eq!(read(d, 32), b"still there");
        write(d, b"back");
        let mut pfd = libc::pollfd {
            fd: c,
            events: libc::POLLIN,
            revents: 0,
        };
        assert_eq!(calls::poll(&mut pfd, 1, 2000), 1);
        assert_eq!(read(c, 8), b"back");
        // The last descriptor closes the socket: the peer reads end of stream.
        assert_eq!(calls::close(d), 0);
        pfd.revents = 0;
        assert_eq!(calls::poll(&mut pfd, 1, 2000), 1);
        assert_eq!(read(c, 8), b"", "EOF after the last close");
        calls::close(c);
        libc::close(ep);
    }
}

#[test]
fn a_closed_socket_leaves_every_epoll_set() {
    let _one = serial();
    let (c, s) = pair(9105);
    let (pr, pw) = pipe();
    let ep = epoll();
    assert_eq!(ctl(ep, libc::EPOLL_CTL_ADD, s, IN, 1), 0);
    assert_eq!(ctl(ep, libc::EPOLL_CTL_ADD, pr, IN, 2), 0);
    write(c, b"data");
    assert_eq!(datas(&wait(ep, 2000)), vec![1]);
    // SAFETY: closing our descriptor.
    assert_eq!(unsafe { calls::close(s) }, 0);
    write(pw, b"x");
    assert_eq!(datas(&wait(ep, 2000)), vec![2], "only the pipe is left");
    // SAFETY: closing our descriptors.
    unsafe {
        calls::close(c);
        libc::close(pr);
        libc::close(pw);
        libc::close(ep);
    }
}
