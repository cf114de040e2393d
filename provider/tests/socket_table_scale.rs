//! Scale of the WSP socket table (issue 10, "Scale"): one million sockets open at once through
//! the real API (`wsp_socket` over the loopback datapath the unit tests use), every handle
//! distinct and usable, a sample bound, named and closed early, then all closed — and the
//! table empty again. Memory per socket is measured by a counting global allocator in this
//! test binary (live heap bytes before and after), cross-checked with the resident set size.
//!
//! `PROVIDER_SCALE_SOCKETS` overrides the count (default 1 000 000). Needs no root.
use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

use provider::api::{
    AF_INET, IPPROTO_TCP, IPPROTO_UDP, LoopbackDatapath, ProviderConfig, SOCK_DGRAM, SOCK_STREAM,
};
use provider::socket::{Socket, WsaError};

/// Live heap bytes of this process (every allocation through the global allocator).
static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Counting;

// SAFETY: every call is forwarded unchanged to the system allocator, which upholds the
// `GlobalAlloc` contract; the counter is only bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same layout, same contract as our caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator (hence from `System`) with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr`/`layout` came from this allocator; the caller guarantees `new_size`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

/// Resident set size in bytes (`/proc/self/statm`, second field, in pages).
fn rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("statm rss");
    // SAFETY: sysconf has no preconditions; `_SC_PAGESIZE` is a valid name.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).unwrap_or(4096)
}

fn count() -> usize {
    std::env::var("PROVIDER_SCALE_SOCKETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

#[test]
fn a_million_sockets_in_the_table() {
    let n = count();
    let (p, _dp) = LoopbackDatapath::provider(ProviderConfig {
        max_sockets: n,
        ..ProviderConfig::default()
    });
    // Room for every handle before the baseline, so the Vec is not counted per socket.
    let mut handles: Vec<Socket> = Vec::with_capacity(n);
    let (heap0, rss0) = (live(), rss());
    let t = Instant::now();
    for i in 0..n {
        // Mostly stream sockets (what the TCP scale target is about), one in 16 datagram.
        let s = if i % 16 == 15 {
            p.wsp_socket(AF_INET, SOCK_DGRAM, IPPROTO_UDP)
        } else {
            p.wsp_socket(AF_INET, SOCK_STREAM, IPPROTO_TCP)
        };
        handles.push(s.unwrap_or_else(|e| panic!("socket {i} of {n}: {e:?}")));
    }
    let open_time = t.elapsed();
    let (heap1, rss1) = (live(), rss());
    let heap_per = (heap1 - heap0) as f64 / n as f64;
    let rss_per = rss1.saturating_sub(rss0) as f64 / n as f64;
    println!(
        "{n} sockets opened in {open_time:?} ({:.0} ns each): heap {heap_per:.0} B/socket \
         (counting allocator), RSS {rss_per:.0} B/socket",
        open_time.as_nanos() as f64 / n as f64
    );
    assert_eq!(p.stats().sockets_open, n as u64);
    assert_eq!(p.stats().handles_open, n as u64);
    // The table is full: one more is WSAEMFILE, and nothing was created by the attempt.
    assert_eq!(
        p.wsp_socket(AF_INET, SOCK_STREAM, IPPROTO_TCP),
        Err(WsaError::WSAEMFILE)
    );
    assert!(
        heap_per > 0.0,
        "the counting allocator saw the sockets' memory"
    );

    // Every handle is distinct.
    let mut raw: Vec<u64> = handles.iter().map(|s| s.raw()).collect();
    raw.sort_unstable();
    raw.dedup();
    assert_eq!(raw.len(), n, "duplicate handles");
    drop(raw);

    // A sample spread over the whole table is usable: bound, named, closed early; its stale
    // handles then give WSAENOTSOCK while its neighbours still answer.
    let step = (n / 1000).max(1);
    let mut sampled = Vec::new();
    for (port, i) in (1024u16..).zip((0..n).step_by(step)) {
        let s = handles[i];
        let addr: SocketAddr = format!("198.18.0.1:{port}").parse().unwrap();
        p.wsp_bind(s, addr)
            .unwrap_or_else(|e| panic!("bind sample {i}: {e:?}"));
        assert_eq!(p.wsp_get_sock_name(s), Ok(addr), "sample {i}");
        p.wsp_close_socket(s).unwrap();
        assert_eq!(p.wsp_close_socket(s), Err(WsaError::WSAENOTSOCK));
        if let Some(&next) = handles.get(i + 1) {
            assert!(
                p.wsp_get_sock_name(next)
                    .is_err_and(|e| e == WsaError::WSAEINVAL)
            );
        }
        sampled.push(i);
    }
    // The freed slots are reused with new generations: the old handles stay dead.
    let fresh: Vec<Socket> = sampled
        .iter()
        .map(|_| p.wsp_socket(AF_INET, SOCK_STREAM, IPPROTO_TCP).unwrap())
        .collect();
    for &i in &sampled {
        assert_eq!(
            p.wsp_get_sock_name(handles[i]),
            Err(WsaError::WSAENOTSOCK),
            "stale handle {i}"
        );
    }
    for s in fresh {
        p.wsp_close_socket(s).unwrap();
    }

    // Close everything else.
    let t = Instant::now();
    let mut skip = sampled.into_iter().peekable();
    for (i, &s) in handles.iter().enumerate() {
        if skip.peek() == Some(&i) {
            skip.next();
            continue;
        }
        p.wsp_close_socket(s)
            .unwrap_or_else(|e| panic!("close {i}: {e:?}"));
    }
    let close_time = t.elapsed();
    let st = p.stats();
    assert_eq!(st.sockets_open, 0);
    assert_eq!(st.handles_open, 0);
    let heap2 = live();
    println!(
        "closed in {close_time:?} ({:.0} ns each); heap after close: {:+} B vs before open \
         (the table keeps its slot array: {:.1} B/slot)",
        close_time.as_nanos() as f64 / n as f64,
        heap2 - heap0,
        (heap2 - heap0) as f64 / n as f64
    );
    // What stays is the slab's slot array and free list (a few bytes per slot), not sockets.
    assert!(
        ((heap2 - heap0) as f64) < heap_per * n as f64 / 4.0,
        "socket memory was not released: {} B left",
        heap2 - heap0
    );
    // Every handle is dead afterwards.
    for &s in handles.iter().step_by(step) {
        assert_eq!(p.wsp_close_socket(s), Err(WsaError::WSAENOTSOCK));
    }
}
