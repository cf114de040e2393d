//! epoll over mixed sets: kernel descriptors stay in the kernel's epoll instance; a provider
//! socket is registered there by its doorbell (EPOLLIN, tagged data), and its readiness is
//! computed from the provider, with the application's events and data kept here.
//!
//! Semantics kept from Linux: level-triggered by default; EPOLLET reports a socket again only
//! after an event on it (its doorbell rang) since the last report; EPOLLONESHOT disables the
//! entry after one report until EPOLL_CTL_MOD; EPOLLHUP/EPOLLERR are always reported.
//! EPOLLEXCLUSIVE is passed on to the kernel registration of the doorbell, so of several
//! processes waiting on one shared listener's doorbell only one is woken (nginx's workers).
//!
//! The sets are per-process bookkeeping: their memory is private (`shm::private`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use libc::epoll_event;

use crate::fdtable::ProvSock;
use crate::ops::{self, R};
use crate::real;
use crate::{shm, stack};

/// Tag in the kernel registration's data: no user-space pointer has these top bits.
const DOORBELL_TAG: u64 = 0xFEED_D00B_0000_0000;
const TAG_MASK: u64 = 0xFFFF_FFFF_0000_0000;

struct Entry {
    sock: Arc<ProvSock>,
    events: u32,
    data: u64,
    /// EPOLLET: the socket's signal generation at the last report; reported again only once
    /// an event moved it.
    reported_gen: Option<u64>,
    /// EPOLLONESHOT fired; off until EPOLL_CTL_MOD.
    disabled: bool,
}

#[derive(Default)]
struct Set {
    entries: HashMap<i32, Entry>,
    /// The entries to look at in the next wait — the ready list: added, modified, doorbell
    /// rang, or reported level-triggered (still ready, maybe). Any other entry is not ready
    /// and has its waker registered, so a wait costs what changed, not the set's size.
    check: std::collections::HashSet<i32>,
    /// The AF_XDP descriptors are in the kernel instance (tagged `XSK_TAG`), see `drive`.
    xsks_added: bool,
}

/// Tag of an AF_XDP descriptor's registration.
const XSK_TAG: u64 = 0xFEED_0C5C_0000_0000;

static SETS: Mutex<Option<HashMap<i32, Arc<Mutex<Set>>>>> = Mutex::new(None);
static NSETS: AtomicUsize = AtomicUsize::new(0);

fn set_of(epfd: i32, create: bool) -> Option<Arc<Mutex<Set>>> {
    let mut g = SETS.lock().unwrap_or_else(PoisonError::into_inner);
    shm::private(|| {
        let map = g.get_or_insert_with(HashMap::new);
        if create && !map.contains_key(&epfd) {
            map.insert(epfd, Arc::default());
            NSETS.store(map.len(), Ordering::Relaxed);
        }
        map.get(&epfd).cloned()
    })
}

/// Every set, held still for `fork`; in the child, [`ForkHold::inherit`] points the copied
/// entries at the child's own handles.
pub struct ForkHold {
    sets: std::sync::MutexGuard<'static, Option<HashMap<i32, Arc<Mutex<Set>>>>>,
}

pub fn lock_for_fork() -> ForkHold {
    ForkHold {
        sets: SETS.lock().unwrap_or_else(PoisonError::into_inner),
    }
}

impl ForkHold {
    pub fn inherit(&mut self, table: &HashMap<i32, Arc<ProvSock>>) {
        let Some(map) = self.sets.as_mut() else {
            return;
        };
        shm::private(|| {
            for set in map.values() {
                let mut s = set.lock().unwrap_or_else(PoisonError::into_inner);
                let fds: Vec<i32> = s.entries.keys().copied().collect();
                for fd in fds {
                    let e = s.entries.get_mut(&fd).expect("key just listed");
                    match table.get(&fd) {
                        // The copied entry's handle is the parent's: no count of ours on it.
                        Some(mine) => {
                            std::mem::forget(std::mem::replace(&mut e.sock, mine.clone()))
                        }
                        None => {
                            if let Some(gone) = s.entries.remove(&fd) {
                                std::mem::forget(gone);
                            }
                        }
                    }
                }
            }
        });
    }
}

/// Any epoll instance holds a provider socket (the fast path of epoll_wait and close).
pub fn any() -> bool {
    NSETS.load(Ordering::Relaxed) > 0
}

/// `epfd` was closed: forget its provider entries.
pub fn forget_instance(epfd: i32) {
    if !any() {
        return;
    }
    let mut g = SETS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(map) = g.as_mut() {
        shm::private(|| map.remove(&epfd));
        NSETS.store(map.len(), Ordering::Relaxed);
    }
}

/// Provider descriptor `fd` is closing: remove it from every instance (its doorbell file lives
/// on in our private duplicate, so the kernel would not drop the registration by itself).
pub fn forget_fd(fd: i32) {
    if !any() {
        return;
    }
    let sets: Vec<(i32, Arc<Mutex<Set>>)> = {
        let g = SETS.lock().unwrap_or_else(PoisonError::into_inner);
        g.as_ref().map_or_else(Vec::new, |m| {
            m.iter().map(|(k, v)| (*k, v.clone())).collect()
        })
    };
    for (epfd, set) in sets {
        let removed = {
            let mut s = set.lock().unwrap_or_else(PoisonError::into_inner);
            shm::private(|| {
                s.check.remove(&fd);
                s.entries.remove(&fd)
            })
        };
        if removed.is_some() {
            kernel_ctl(epfd, libc::EPOLL_CTL_DEL, fd, 0, false);
        }
    }
}

fn kernel_ctl(epfd: i32, op: i32, fd: i32, data: u64, exclusive: bool) -> i32 {
    let ctl = crate::real!(epoll_ctl: fn(i32, i32, i32, *mut epoll_event) -> i32);
    let mut ev = epoll_event {
        events: libc::EPOLLIN as u32
            | if exclusive {
                libc::EPOLLEXCLUSIVE as u32
            } else {
                0
            },
        u64: data,
    };
    // SAFETY: a live epoll_event local.
    unsafe { ctl(epfd, op, fd, &mut ev) }
}

/// epoll_ctl on a provider descriptor.
pub fn ctl(epfd: i32, op: i32, fd: i32, ps: Arc<ProvSock>, ev: Option<epoll_event>) -> R<()> {
    if epfd == fd {
        return Err(libc::EINVAL);
    }
    let set = set_of(epfd, op == libc::EPOLL_CTL_ADD).ok_or(libc::ENOENT)?;
    let mut s = set.lock().unwrap_or_else(PoisonError::into_inner);
    let tagged = DOORBELL_TAG | fd as u32 as u64;
    match op {
        libc::EPOLL_CTL_ADD => {
            let ev = ev.ok_or(libc::EFAULT)?;
            if s.entries.contains_key(&fd) {
                return Err(libc::EEXIST);
            }
            let exclusive = ev.events & libc::EPOLLEXCLUSIVE as u32 != 0;
            if kernel_ctl(epfd, libc::EPOLL_CTL_ADD, fd, tagged, exclusive) < 0 {
                return Err(real::errno());
            }
            let entry = Entry {
                sock: ps,
                events: ev.events,
                data: ev.u64,
                reported_gen: None,
                disabled: false,
            };
            shm::private(|| {
                s.entries.insert(fd, entry);
                s.check.insert(fd);
            });
        }
        libc::EPOLL_CTL_MOD => {
            let ev = ev.ok_or(libc::EFAULT)?;
            let e = s.entries.get_mut(&fd).ok_or(libc::ENOENT)?;
            // Linux: an exclusive registration cannot be modified, nor one made exclusive.
            if (ev.events | e.events) & libc::EPOLLEXCLUSIVE as u32 != 0 {
                return Err(libc::EINVAL);
            }
            e.events = ev.events;
            e.data = ev.u64;
            e.reported_gen = None;
            e.disabled = false;
            shm::private(|| s.check.insert(fd));
        }
        libc::EPOLL_CTL_DEL => {
            shm::private(|| {
                s.check.remove(&fd);
                s.entries.remove(&fd)
            })
            .ok_or(libc::ENOENT)?;
            kernel_ctl(epfd, libc::EPOLL_CTL_DEL, fd, 0, false);
        }
        _ => return Err(libc::EINVAL),
    }
    Ok(())
}

fn epoll_mask(r: &provider::api::Readiness, wanted: u32) -> u32 {
    let mut m = 0u32;
    if r.readable {
        m |= (libc::EPOLLIN | libc::EPOLLRDNORM) as u32;
    }
    if r.writable {
        m |= (libc::EPOLLOUT | libc::EPOLLWRNORM) as u32;
    }
    if r.peer_closed {
        m |= libc::EPOLLRDHUP as u32;
    }
    let always = (if r.hung_up { libc::EPOLLHUP as u32 } else { 0 })
        | (if r.error { libc::EPOLLERR as u32 } else { 0 });
    (m & wanted) | always
}

/// epoll_wait / epoll_pwait on an instance that holds provider sockets; None if it holds none
/// (the caller forwards to the kernel unchanged).
pub fn wait(
    epfd: i32,
    out: &mut [epoll_event],
    timeout: Option<Duration>,
    sigmask: *const libc::sigset_t,
) -> Option<R<usize>> {
    let set = set_of(epfd, false)?;
    {
        let s = set.lock().unwrap_or_else(PoisonError::into_inner);
        // With our AF_XDP registrations in it, the instance is ours to filter even when no
        // provider socket is left in it.
        if s.entries.is_empty() && !s.xsks_added {
            return None;
        }
    }
    let drive = crate::drive::get();
    let st = stack::get()?;
    let _pass = crate::drive::wait_pass();
    let pwait = crate::real!(epoll_pwait: fn(i32, *mut epoll_event, i32, i32, *const libc::sigset_t) -> i32);
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut kernel = vec![epoll_event { events: 0, u64: 0 }; out.len()];
    Some((|| loop {
        if let Some(d) = drive {
            d.assist();
        }
        let mut n = 0;
        {
            let mut guard = set.lock().unwrap_or_else(PoisonError::into_inner);
            let s = &mut *guard;
            let todo: Vec<i32> = shm::private(|| s.check.drain().collect());
            let mut again: Vec<i32> = shm::private(|| Vec::with_capacity(todo.len()));
            for fd in todo {
                if n == out.len() {
                    // No room: look at it next time.
                    again.push(fd);
                    continue;
                }
                let Some(e) = s.entries.get_mut(&fd) else {
                    continue;
                };
                if e.disabled {
                    continue;
                }
                let edge = e.events & libc::EPOLLET as u32 != 0;
                loop {
                    let (seen, r) = ops::readiness(&st.provider, &e.sock);
                    let m = epoll_mask(&r, e.events);
                    if m != 0 && !(edge && e.reported_gen == Some(seen)) {
                        out[n] = epoll_event {
                            events: m,
                            u64: e.data,
                        };
                        n += 1;
                        e.reported_gen = Some(seen);
                        if e.events & libc::EPOLLONESHOT as u32 != 0 {
                            e.disabled = true;
                        } else if !edge {
                            // Level-triggered: reported again while it stays ready.
                            again.push(fd);
                        } else {
                            // Edge-triggered: the next event rings the doorbell (or, if one
                            // already came, it is looked at again at once).
                            let waker = std::task::Waker::from(e.sock.doorbell.clone());
                            if st.provider.watch(e.sock.sock, seen, &waker).unwrap_or(true) {
                                again.push(fd);
                            }
                        }
                        break;
                    }
                    // Not ready (or, edge-triggered, nothing new): ring the doorbell at the
                    // next event; refused means one just happened — look again.
                    let waker = std::task::Waker::from(e.sock.doorbell.clone());
                    if st.provider.watch(e.sock.sock, seen, &waker).unwrap_or(true) {
                        break;
                    }
                }
            }
            shm::private(|| s.check.extend(again));
        }
        let room = out.len() - n;
        let wait_ms = if n > 0 || room == 0 {
            0
        } else {
            match deadline {
                None => -1,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    i32::try_from(left.as_micros().div_ceil(1000)).unwrap_or(i32::MAX)
                }
            }
        };
        if room == 0 {
            return Ok(n);
        }
        let _waiting = match drive {
            Some(d) if wait_ms != 0 => {
                let mut s = set.lock().unwrap_or_else(PoisonError::into_inner);
                if !s.xsks_added {
                    for (i, &fd) in d.xsk_fds().iter().enumerate() {
                        kernel_ctl(epfd, libc::EPOLL_CTL_ADD, fd, XSK_TAG | i as u64, false);
                    }
                    s.xsks_added = true;
                }
                Some(d.waiting())
            }
            _ => None,
        };
        // SAFETY: `kernel` has room for `room` events.
        let k = unsafe { pwait(epfd, kernel.as_mut_ptr(), room as i32, wait_ms, sigmask) };
        if k < 0 {
            let e = real::errno();
            if n > 0 {
                return Ok(n);
            }
            return Err(e);
        }
        let mut rang = false;
        {
            let mut s = set.lock().unwrap_or_else(PoisonError::into_inner);
            for ev in &kernel[..k as usize] {
                if ev.u64 & TAG_MASK == XSK_TAG {
                    // A frame: the next turn receives it.
                    rang = true;
                } else if ev.u64 & TAG_MASK == DOORBELL_TAG {
                    let fd = (ev.u64 & !TAG_MASK) as u32 as i32;
                    if let Some(e) = s.entries.get(&fd) {
                        real::drain(e.sock.doorbell.fd);
                        rang = true;
                        shm::private(|| s.check.insert(fd));
                    }
                } else {
                    out[n] = *ev;
                    n += 1;
                }
            }
        }
        if n > 0 {
            return Ok(n);
        }
        if !rang && deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(0);
        }
        if !rang && wait_ms == 0 {
            return Ok(0);
        }
    })())
}
