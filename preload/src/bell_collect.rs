//! Doorbells rung on the thread that is about to look at them.
//!
//! An `epoll_wait` first runs the engine's queue work on its own thread (`drive`). The sockets
//! that work makes ready ring their doorbells; writing each eventfd would only make the next
//! kernel `epoll_pwait` return at once with it, to be read back and then looked at: two
//! system calls and a kernel wait per ready socket, all on the thread that rang it. So while
//! that work runs, a doorbell registered only in the one epoll entry (and slept on by no
//! `poll`) is handed to the waiting thread instead, which puts the entry on its ready list —
//! the shape of the kernel's own `ep_poll_callback`. A doorbell it does not find in its
//! instance is rung after all.
use std::cell::{Cell, RefCell};
use std::sync::Arc;

use crate::fdtable::Doorbell;

thread_local! {
    static COLLECTING: Cell<bool> = const { Cell::new(false) };
    static BELLS: RefCell<Vec<Arc<Doorbell>>> = const { RefCell::new(Vec::new()) };
}

/// Take `bell`'s wake on this thread if it is collecting; false: ring it.
pub fn offer(bell: &Arc<Doorbell>) -> bool {
    if !COLLECTING.with(Cell::get) {
        return false;
    }
    BELLS.with(|b| b.borrow_mut().push(bell.clone()));
    true
}

/// Run `work` collecting this thread's doorbell wakes; the caller claims each returned
/// doorbell or rings it ([`crate::real::ring`]).
pub fn collect(work: impl FnOnce()) -> Vec<Arc<Doorbell>> {
    struct On;
    impl Drop for On {
        fn drop(&mut self) {
            COLLECTING.with(|c| c.set(false));
        }
    }
    COLLECTING.with(|c| c.set(true));
    {
        let _on = On;
        work();
    }
    BELLS.with(|b| std::mem::take(&mut *b.borrow_mut()))
}

#[cfg(test)]
mod tests {
    use std::task::Wake;

    use super::*;
    use crate::fdtable::{EpollRef, KernelWait};

    /// The eventfd's count (0 when nothing was written), leaving it at 0.
    fn take_count(fd: i32) -> u64 {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a live local from our nonblocking eventfd.
        let n = unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) };
        if n == 8 { v } else { 0 }
    }

    fn bell() -> Arc<Doorbell> {
        // SAFETY: eventfd with flags only.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        assert!(fd >= 0);
        Arc::new(Doorbell::new(fd))
    }

    #[test]
    fn a_wake_while_collecting_is_handed_over_only_when_one_epoll_entry_can_see_it() {
        let b = bell();
        // In no epoll set: always written.
        assert!(collect(|| b.wake_by_ref()).is_empty());
        assert_eq!(take_count(b.fd), 1);

        // One epoll entry, no other sleeper: handed over, nothing written.
        let entry = EpollRef::new(b.clone());
        let got = collect(|| b.wake_by_ref());
        assert_eq!(got.len(), 1);
        assert_eq!(Arc::as_ptr(&got[0]) as usize, entry.key());
        assert_eq!(take_count(b.fd), 0);

        // Not collecting (another thread's wake, or outside the pass): written.
        b.wake_by_ref();
        assert_eq!(take_count(b.fd), 1);

        // A thread in poll() on it, or a second epoll entry: written, not handed over.
        {
            let _sleeper = KernelWait::new(&b);
            assert!(collect(|| b.wake_by_ref()).is_empty());
            assert_eq!(take_count(b.fd), 1);
        }
        let second = EpollRef::new(b.clone());
        assert!(collect(|| b.wake_by_ref()).is_empty());
        assert_eq!(take_count(b.fd), 1);
        drop(second);
        assert_eq!(collect(|| b.wake_by_ref()).len(), 1);
        drop(entry);
        assert!(collect(|| b.wake_by_ref()).is_empty());
        assert_eq!(take_count(b.fd), 1);
    }
}
