//! Processes that share one stack: which process this is, doorbells rung from another
//! process, and `fork`.
//!
//! The stack's memory is shared by the whole process tree (`shm`), its threads run in the
//! process that started it, and any process may call into it. A doorbell, though, is a
//! descriptor, and a descriptor number means something only in the process that made it (and
//! in children forked after). So each doorbell remembers its owner's *mailbox*: rung from
//! another process — the engine's threads ring the doorbells of sockets a worker accepted —
//! the ring is posted there, and a small thread in the owner rings it. Closing its private
//! descriptor is posted the same way.
//!
//! `fork`: the child inherits every provider descriptor as Linux children inherit sockets.
//! Each gets a provider handle of its own (as `dup` does), so the socket closes when the last
//! process closes it, and a doorbell of its own (`own_doorbell`); the per-process tables are
//! copied by fork and fixed up in the child.

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU32, Ordering};

use crossbeam_queue::ArrayQueue;

use crate::fdtable::{Doorbell, ProvSock};
use crate::{real, shm, stack};

static PID: AtomicI32 = AtomicI32::new(0);

extern "C" fn after_fork_in_child() {
    // SAFETY: getpid has no preconditions.
    PID.store(unsafe { libc::getpid() }, Ordering::Relaxed);
}

/// This process's id, cached (glibc no longer caches it) and kept right across fork.
pub fn pid() -> i32 {
    let p = PID.load(Ordering::Relaxed);
    if p != 0 {
        return p;
    }
    static REGISTER: std::sync::Once = std::sync::Once::new();
    // SAFETY: registering a plain extern "C" function with libc.
    REGISTER.call_once(|| unsafe {
        libc::pthread_atfork(None, None, Some(after_fork_in_child));
    });
    // SAFETY: getpid has no preconditions.
    let p = unsafe { libc::getpid() };
    PID.store(p, Ordering::Relaxed);
    p
}

enum Post {
    Ring(Arc<Doorbell>),
    Close(i32),
}

/// Where other processes post work on this process's descriptors (lives in the shared arena,
/// for the life of the process tree).
pub struct Mailbox {
    pub pid: i32,
    /// Bumped at every post; the mailbox thread sleeps on it (a shared futex).
    word: AtomicU32,
    posts: ArrayQueue<Post>,
}

const MAILBOX_SLOTS: usize = 16 * 1024;

static MAILBOX: AtomicPtr<Mailbox> = AtomicPtr::new(std::ptr::null_mut());

/// This process's mailbox, made (with its thread) on first use in each process.
pub fn mailbox() -> &'static Mailbox {
    let me = pid();
    let cur = MAILBOX.load(Ordering::Acquire);
    // SAFETY: a non-null MAILBOX points at a leaked Mailbox in the shared arena.
    if !cur.is_null() && unsafe { (*cur).pid } == me {
        // SAFETY: as above.
        return unsafe { &*cur };
    }
    let fresh: &'static mut Mailbox = Box::leak(Box::new(Mailbox {
        pid: me,
        word: AtomicU32::new(0),
        posts: ArrayQueue::new(MAILBOX_SLOTS),
    }));
    match MAILBOX.compare_exchange(cur, fresh, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => {
            let m: &'static Mailbox = fresh;
            let spawned = std::thread::Builder::new()
                .name("provider-bells".into())
                .spawn(move || serve(m));
            if spawned.is_err() {
                let msg = b"provider-preload: cannot start the doorbell thread\n";
                // SAFETY: writing a static buffer to stderr.
                unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
            }
            m
        }
        Err(_) => {
            // Another thread of this process won: use its mailbox.
            // SAFETY: `fresh` was leaked above and never shared.
            drop(unsafe { Box::from_raw(fresh as *mut Mailbox) });
            mailbox()
        }
    }
}

fn futex(word: &AtomicU32, op: i32, val: u32) {
    // SAFETY: a futex call on a live word; FUTEX_WAIT with no timeout, FUTEX_WAKE with a count.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word as *const AtomicU32,
            op,
            val,
            std::ptr::null::<libc::timespec>(),
        )
    };
}

fn serve(m: &'static Mailbox) {
    loop {
        let seen = m.word.load(Ordering::Acquire);
        while let Some(p) = m.posts.pop() {
            match p {
                Post::Ring(bell) => real::ring(bell.fd),
                Post::Close(fd) => real::sys_close(fd),
            }
        }
        futex(&m.word, libc::FUTEX_WAIT, seen);
    }
}

impl Mailbox {
    fn post(&self, p: Post) {
        if let Err(p) = self.posts.push(p) {
            // Full: the owner has stopped serving (it exited or is stuck). A lost ring cannot
            // matter to a process that is not there; a lost close leaks one descriptor in it.
            std::mem::forget(p);
            return;
        }
        self.word.fetch_add(1, Ordering::Release);
        futex(&self.word, libc::FUTEX_WAKE, 1);
    }

    pub fn is_mine(&self) -> bool {
        self.pid == pid()
    }

    pub fn ring(&self, bell: &Arc<Doorbell>) {
        self.post(Post::Ring(bell.clone()));
    }

    pub fn close(&self, fd: i32) {
        self.post(Post::Close(fd));
    }
}

/// In a forked child, `ps` (at descriptor `fd`) gets a doorbell of the child's own, put at
/// `fd` in place of the inherited eventfd (which stays the parent's). A doorbell shared by two
/// processes would lose wake-ups: the first to wake drains it, and the other, whose waker the
/// ring consumed, sleeps on — two nginx workers polling one listener would starve each other.
/// If no eventfd can be made, the inherited doorbell stays.
fn own_doorbell(fd: i32, ps: Arc<ProvSock>) -> Arc<ProvSock> {
    let ev = real::sys_eventfd();
    if ev < 0 {
        return ps;
    }
    let bell = real::sys_dup_cloexec(ev);
    // SAFETY: F_GETFD takes no argument.
    let fdfl = unsafe { libc::syscall(libc::SYS_fcntl, fd, libc::F_GETFD) };
    let cloexec = if fdfl >= 0 && fdfl as i32 & libc::FD_CLOEXEC != 0 {
        libc::O_CLOEXEC
    } else {
        0
    };
    if bell < 0 || real::sys_dup3(ev, fd, cloexec) < 0 {
        if bell >= 0 {
            real::sys_close(bell);
        }
        real::sys_close(ev);
        return ps;
    }
    real::sys_close(ev);
    ps.with_doorbell(Arc::new(Doorbell::new(bell)))
}

/// fork(2), keeping the provider descriptors right in both processes.
///
/// # Safety
/// As fork(2).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fork() -> libc::pid_t {
    // The child must not inherit this thread's held kicks (nor its count).
    crate::drive::release_kicks();
    let real_fork = crate::real!(fork: fn() -> libc::pid_t);
    let Some(st) = stack::running() else {
        // SAFETY: forwarding.
        return unsafe { real_fork() };
    };
    // No other thread of this process changes the tables while the child's copy is taken.
    let mut fds = stack::table().lock_for_fork();
    let mut sets = crate::epoll::lock_for_fork();
    // A provider handle per inherited descriptor, for the child (made now: after the fork
    // the parent's threads could close the sockets before the child got its own hold).
    // The list itself is private (both processes free their copy); the entries are shared.
    let mut child: Vec<(i32, Arc<ProvSock>)> = shm::private(|| Vec::with_capacity(fds.len()));
    for (&fd, ps) in fds.iter() {
        if let Ok(s) = st.provider.duplicate(ps.sock) {
            child.push((fd, ps.inherit(s)));
        }
    }
    // SAFETY: forwarding.
    let pid = unsafe { real_fork() };
    if pid == 0 {
        // The copied tables name the parent's handles, which this process holds no count on.
        shm::private(|| {
            for (_, old) in fds.drain() {
                std::mem::forget(old);
            }
        });
        for (fd, ps) in child {
            let ps = own_doorbell(fd, ps);
            shm::private(|| fds.insert(fd, ps));
        }
        sets.inherit(&fds);
    } else if pid < 0 {
        for (_, ps) in child {
            let _ = st.provider.wsp_close_socket(ps.sock);
        }
    } else {
        // The child's handles are the child's.
        for (_, ps) in child {
            std::mem::forget(ps);
        }
    }
    drop(sets);
    drop(fds);
    pid
}
