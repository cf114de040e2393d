//! The stack's memory, shared by every process of the tree (the Onload model).
//!
//! Every Rust allocation this library makes — the engine's sockets, buffers, locks, queues —
//! comes from one `MAP_SHARED` anonymous arena mapped before any fork, so a forked child sees
//! the parent's stack at the same addresses and its calls work on the same sockets. The only
//! per-process state is this library's own descriptor bookkeeping (`fdtable`, `epoll`): it
//! allocates inside [`private`], from the C library's heap, which fork copies.
//!
//! Locks: the engine's `std` locks sleep on futexes; `std` asks for *private* futexes, which
//! the kernel keys by process, so a wake from another process would be lost. The exported
//! [`syscall`] clears `FUTEX_PRIVATE_FLAG` for futex words inside the arena (a shared futex is
//! correct for any memory; only the arena's need it), and passes every other call through.
//!
//! The arena's allocator is `talc`, its state and its spin lock inside the arena itself.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::ffi::c_long;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};

use talc::TalcLock;
use talc::source::Claim;

/// Address space reserved for the arena; pages are only used when touched (MAP_NORESERVE).
const ARENA_BYTES: usize = 4 << 30;

/// A spin lock for talc: a word in shared memory (a futex-based lock could not be told apart
/// from the engine's, and allocation holds it for a few hundred nanoseconds at most).
pub struct Spin(AtomicBool);

// SAFETY: `lock` returns only once this thread changed the flag false → true, `unlock` sets it
// back; the flag is the whole state.
unsafe impl talc::lock_api::RawMutex for Spin {
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: Self = Spin(AtomicBool::new(false));
    type GuardMarker = talc::lock_api::GuardSend;

    fn lock(&self) {
        let mut spins = 0u32;
        while !self.try_lock() {
            spins += 1;
            if spins < 64 {
                std::hint::spin_loop();
            } else {
                // The holder may be descheduled (or in another process): give the CPU away.
                // SAFETY: sched_yield takes no arguments.
                unsafe { libc::sched_yield() };
            }
        }
    }

    fn try_lock(&self) -> bool {
        self.0
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    unsafe fn unlock(&self) {
        self.0.store(false, Ordering::Release);
    }
}

type Heap = TalcLock<Spin, Claim>;

static BASE: AtomicUsize = AtomicUsize::new(0);
/// 0: not mapped, 1: being mapped, 2: ready, 3: could not be mapped (the C heap serves all).
static STATE: AtomicU8 = AtomicU8::new(0);

thread_local! {
    /// Inside [`private`]: allocate from the C library's heap.
    static PRIVATE: Cell<bool> = const { Cell::new(false) };
}

/// Run `f` with this thread's allocations private to the process (copied, not shared, by
/// fork): for per-process bookkeeping that both sides of a fork go on changing.
pub fn private<R>(f: impl FnOnce() -> R) -> R {
    let was = PRIVATE.with(|c| c.replace(true));
    let r = f();
    PRIVATE.with(|c| c.set(was));
    r
}

/// Whether `addr` lies in the shared arena.
pub fn contains(addr: usize) -> bool {
    let base = BASE.load(Ordering::Relaxed);
    base != 0 && addr.wrapping_sub(base) < ARENA_BYTES
}

fn heap() -> Option<&'static Heap> {
    loop {
        match STATE.load(Ordering::Acquire) {
            2 => {
                let base = BASE.load(Ordering::Relaxed);
                // SAFETY: state 2 means a Heap was written at `base` and lives for the process.
                return Some(unsafe { &*(base as *const Heap) });
            }
            3 => return None,
            1 => std::hint::spin_loop(),
            _ => {
                if STATE
                    .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    let ok = map_arena();
                    STATE.store(if ok { 2 } else { 3 }, Ordering::Release);
                }
            }
        }
    }
}

fn map_arena() -> bool {
    // SAFETY: a fresh anonymous shared mapping at an address the kernel chooses aliases
    // nothing; MAP_FAILED is checked before use.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            ARENA_BYTES,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return false;
    }
    let base = p as usize;
    let header = std::mem::size_of::<Heap>().next_multiple_of(64);
    // SAFETY: `base` starts a writable, exclusively ours, page-aligned mapping of ARENA_BYTES;
    // the allocator is written at its start and manages the bytes after it, which nothing
    // else uses.
    unsafe {
        ptr::write(
            base as *mut Heap,
            TalcLock::new(Claim::new((base + header) as *mut u8, ARENA_BYTES - header)),
        );
    }
    BASE.store(base, Ordering::Release);
    true
}

/// The library's global allocator: the shared arena, except inside [`private`] (or if the
/// arena could not be mapped); each block goes back to where it came from.
pub struct SplitAlloc;

fn shared_heap() -> Option<&'static Heap> {
    if PRIVATE.with(Cell::get) {
        return None;
    }
    heap()
}

// SAFETY: every block is served by `System` or by the arena's talc and returned to the one
// whose address range holds it; both uphold GlobalAlloc's contract.
unsafe impl GlobalAlloc for SplitAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match shared_heap() {
            // SAFETY: forwarding the caller's layout.
            Some(h) => unsafe { h.alloc(layout) },
            // SAFETY: as above.
            None => unsafe { System.alloc(layout) },
        }
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        if contains(p as usize) {
            let h = heap().expect("a block in the arena means the arena exists");
            // SAFETY: `p` was allocated by the arena with `layout`.
            unsafe { h.dealloc(p, layout) }
        } else {
            // SAFETY: `p` came from System with `layout`.
            unsafe { System.dealloc(p, layout) }
        }
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if contains(p as usize) {
            let h = heap().expect("a block in the arena means the arena exists");
            // SAFETY: `p` was allocated by the arena with `layout`.
            unsafe { h.realloc(p, layout, new_size) }
        } else {
            // SAFETY: `p` came from System with `layout`.
            unsafe { System.realloc(p, layout, new_size) }
        }
    }
}

/// The C library's `syscall(2)`, with futex calls on arena words made process-shared (see the
/// module comment). Declared with six fixed arguments: on x86-64 and aarch64 a variadic call
/// passes them in the same registers, and unused ones are never read by the kernel.
///
/// # Safety
/// As `syscall(2)`: the arguments must be valid for system call `n`.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn syscall(
    n: c_long,
    a1: c_long,
    a2: c_long,
    a3: c_long,
    a4: c_long,
    a5: c_long,
    a6: c_long,
) -> c_long {
    let op = if n == libc::SYS_futex && contains(a1 as usize) {
        a2 & !(libc::FUTEX_PRIVATE_FLAG as c_long)
    } else {
        a2
    };
    let real =
        crate::real!(syscall: fn(c_long, c_long, c_long, c_long, c_long, c_long, c_long) -> c_long);
    // SAFETY: forwarding the caller's system call with the same arguments.
    unsafe { real(n, a1, op, a3, a4, a5, a6) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_come_from_the_arena_except_in_private_and_go_back_where_they_came_from() {
        let shared = Box::new([7u8; 100]);
        assert!(contains(shared.as_ptr() as usize));
        let mine = private(|| Box::new([9u8; 100]));
        assert!(!contains(mine.as_ptr() as usize));
        // Growing keeps each block on its side.
        let mut v: Vec<u64> = Vec::with_capacity(4);
        v.extend(0..10_000);
        assert!(contains(v.as_ptr() as usize));
        let mut w: Vec<u64> = private(|| Vec::with_capacity(4));
        private(|| w.extend(0..10_000));
        assert!(!contains(w.as_ptr() as usize));
        drop((shared, mine, v, w));
    }

    #[test]
    fn a_forked_child_sees_and_changes_the_parents_arena_memory() {
        use std::sync::atomic::AtomicU64;
        let cell = Box::new(AtomicU64::new(1));
        assert!(contains(&*cell as *const AtomicU64 as usize));
        // SAFETY: the child only touches the atomic and calls _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            cell.store(42, Ordering::SeqCst);
            // SAFETY: leaving the child without running the test harness's exit path.
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(cell.load(Ordering::SeqCst), 42);
    }
}
