//! Overlapped I/O (DESIGN §8): the descriptor, the completion queue and the routine thread.
//!
//! An overlapped call (`wsp_send_overlapped`, `wsp_recv_overlapped`, `wsp_send_to_overlapped`,
//! `wsp_recv_from_overlapped`) takes an [`Overlapped`] that names how its completion is
//! reported:
//!
//! - [`Overlapped::new`]: nothing but the descriptor itself — poll or wait with
//!   `wsp_get_overlapped_result`;
//! - [`Overlapped::with_event`]: a [`WsaEvent`] set on completion (WSAOVERLAPPED.hEvent);
//! - [`Overlapped::with_routine`]: a boxed `FnOnce(Completion)` run on the provider's
//!   **completion thread** (`provider-completion`, one per provider, started on first use, ends
//!   when the provider is dropped). Routines run one at a time in completion order — the
//!   analogue of Windows' APC queue of the issuing thread, except that the thread is the
//!   provider's, not the caller's, and no alertable wait is needed. A routine must not block
//!   for long: it delays every later routine;
//! - [`Overlapped::with_queue`]: a [`CompletionQueue`] (the completion-port analogue: one queue,
//!   many sockets, each operation tagged with a key) that a consumer drains with
//!   [`CompletionQueue::get_queued_completion`].
//!
//! As on Windows, an operation that completes at once returns `Ok(bytes)` **and** is reported
//! through its mechanism (the event is set, the routine runs, a completion is queued); one that
//! cannot returns `Err(WSA_IO_PENDING)` and is reported later; one that fails at once returns its
//! error and is reported nowhere. Every pending operation completes exactly once: with its
//! result, or with `WSA_OPERATION_ABORTED` when the socket is closed (DESIGN §7).
//!
//! Buffers are owned (scatter/gather as `Vec<Vec<u8>>`, like an array of WSABUF): a receive
//! fills them in order and hands them back — in the [`Completion`] for a routine or a queue, else
//! through [`Overlapped::take_buffers`]. `bytes` says how much of them is valid.
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::events::WsaEvent;
use crate::socket::entry::lock;
use crate::socket::{WsaError, WspResult};

/// A completion routine (LPWSAOVERLAPPED_COMPLETION_ROUTINE).
pub type CompletionRoutine = Box<dyn FnOnce(Completion) + Send + 'static>;

/// A completion hook (crate-internal, for the C ABI): runs inline on the completing thread —
/// before the issuing call returns when the operation completes at once — possibly with the
/// socket's state lock held, so it must not call into the provider. It may return a job for the
/// completion thread.
pub(crate) type CompletionHook = Box<dyn FnOnce(Completion) -> Option<Job> + Send + 'static>;

/// One finished overlapped operation, as a routine or a queue consumer sees it.
#[derive(Debug)]
pub struct Completion {
    /// The queue key given to [`Overlapped::with_queue`] (0 for other mechanisms).
    pub key: u64,
    /// Bytes transferred.
    pub bytes: usize,
    /// None on success; else the error (WSA_OPERATION_ABORTED after close, WSAECONNRESET, …).
    pub error: Option<WsaError>,
    /// Flags (MSG_* out flags; always 0 today).
    pub flags: u32,
    /// The operation's buffers, handed back (filled for a receive).
    pub buffers: Vec<Vec<u8>>,
    /// Sender of a received datagram (`wsp_recv_from_overlapped`).
    pub from: Option<SocketAddr>,
    /// The descriptor the operation was issued with (to tell operations apart).
    pub overlapped: Overlapped,
}

enum Notify {
    None,
    Event(Arc<WsaEvent>),
    Routine(Mutex<Option<CompletionRoutine>>),
    Queue(Arc<CompletionQueue>, u64),
    Hook(Mutex<Option<CompletionHook>>),
}

#[derive(Default)]
struct OvState {
    /// Issued and not yet complete.
    pending: bool,
    /// Issued at least once.
    issued: bool,
    bytes: usize,
    flags: u32,
    error: Option<WsaError>,
    buffers: Vec<Vec<u8>>,
    from: Option<SocketAddr>,
}

struct OvInner {
    state: Mutex<OvState>,
    done: Condvar,
    notify: Notify,
}

/// The overlapped descriptor (WSAOVERLAPPED). Cheap to clone; clones name the same descriptor.
/// One operation at a time: issuing while one is pending gives WSAEINVAL.
#[derive(Clone)]
pub struct Overlapped(Arc<OvInner>);

impl std::fmt::Debug for Overlapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = lock(&self.0.state);
        f.debug_struct("Overlapped")
            .field("pending", &st.pending)
            .field("bytes", &st.bytes)
            .field("error", &st.error)
            .finish()
    }
}

impl Default for Overlapped {
    fn default() -> Self {
        Self::new()
    }
}

impl Overlapped {
    fn make(notify: Notify) -> Self {
        Overlapped(Arc::new(OvInner {
            state: Mutex::new(OvState::default()),
            done: Condvar::new(),
            notify,
        }))
    }

    /// No notification: use `wsp_get_overlapped_result`.
    pub fn new() -> Self {
        Self::make(Notify::None)
    }

    /// Set `event` on completion.
    pub fn with_event(event: Arc<WsaEvent>) -> Self {
        Self::make(Notify::Event(event))
    }

    /// Run `routine` on the provider's completion thread on completion (once: a second
    /// operation on this descriptor gives WSAEINVAL).
    pub fn with_routine(routine: impl FnOnce(Completion) + Send + 'static) -> Self {
        Self::make(Notify::Routine(Mutex::new(Some(Box::new(routine)))))
    }

    /// Post a [`Completion`] tagged `key` to `queue` on completion.
    pub fn with_queue(queue: Arc<CompletionQueue>, key: u64) -> Self {
        Self::make(Notify::Queue(queue, key))
    }

    /// Run `hook` inline on completion (see [`CompletionHook`]; once, as a routine).
    pub(crate) fn with_hook(hook: impl FnOnce(Completion) -> Option<Job> + Send + 'static) -> Self {
        Self::make(Notify::Hook(Mutex::new(Some(Box::new(hook)))))
    }

    /// Same descriptor.
    pub fn ptr_eq(&self, other: &Overlapped) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// True while an operation is pending.
    pub fn is_pending(&self) -> bool {
        lock(&self.0.state).pending
    }

    /// The buffers of the last completed operation (event / no-notification mechanisms; a
    /// routine or a queue receives them in the [`Completion`] instead).
    pub fn take_buffers(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut lock(&self.0.state).buffers)
    }

    /// Sender of the last datagram received through this descriptor.
    pub fn from(&self) -> Option<SocketAddr> {
        lock(&self.0.state).from
    }

    /// Mark issued (WSAEINVAL if pending, or a routine already spent). Resets the event.
    pub(crate) fn begin(&self) -> WspResult<()> {
        let mut st = lock(&self.0.state);
        if st.pending {
            return Err(WsaError::WSAEINVAL);
        }
        let spent = match &self.0.notify {
            Notify::Routine(r) => lock(r).is_none(),
            Notify::Hook(h) => lock(h).is_none(),
            _ => false,
        };
        if spent {
            return Err(WsaError::WSAEINVAL);
        }
        *st = OvState {
            pending: true,
            issued: true,
            ..OvState::default()
        };
        if let Notify::Event(ev) = &self.0.notify {
            ev.reset();
        }
        Ok(())
    }

    /// The operation failed at once (no notification, as Windows): forget it.
    pub(crate) fn fail_now(&self, err: WsaError) {
        let mut st = lock(&self.0.state);
        st.pending = false;
        st.error = Some(err);
        self.0.done.notify_all();
    }

    /// Record the result and notify through the mechanism. Routines are returned as jobs for
    /// the completion thread (the caller holds no lock when it hands them over).
    pub(crate) fn complete(&self, r: OpResult) -> Option<Job> {
        let OpResult {
            bytes,
            error,
            buffers,
            from,
        } = r;
        let mut completion = Completion {
            key: 0,
            bytes,
            error,
            flags: 0,
            buffers: Vec::new(),
            from,
            overlapped: self.clone(),
        };
        let mut job = None;
        {
            let mut st = lock(&self.0.state);
            st.bytes = bytes;
            st.error = error;
            st.from = from;
            match &self.0.notify {
                Notify::None | Notify::Event(_) => st.buffers = buffers,
                Notify::Routine(_) | Notify::Queue(..) | Notify::Hook(_) => {
                    completion.buffers = buffers
                }
            }
            st.pending = false;
            self.0.done.notify_all();
        }
        match &self.0.notify {
            Notify::None => {}
            Notify::Event(ev) => ev.set(),
            Notify::Routine(r) => {
                if let Some(f) = lock(r).take() {
                    job = Some(Box::new(move || f(completion)) as Job);
                }
            }
            Notify::Queue(q, key) => {
                completion.key = *key;
                q.post(completion);
            }
            Notify::Hook(h) => {
                let hook = lock(h).take();
                if let Some(f) = hook {
                    job = f(completion);
                }
            }
        }
        job
    }

    /// WSPGetOverlappedResult on the descriptor.
    pub fn result(&self, wait: bool) -> WspResult<(usize, u32)> {
        let mut st = lock(&self.0.state);
        if !st.issued {
            return Err(WsaError::WSAEINVAL);
        }
        while st.pending {
            if !wait {
                return Err(WsaError::WSA_IO_INCOMPLETE);
            }
            st = self.0.done.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
        match st.error {
            Some(e) => Err(e),
            None => Ok((st.bytes, st.flags)),
        }
    }
}

/// What an operation ended with.
#[derive(Debug, Default)]
pub(crate) struct OpResult {
    pub bytes: usize,
    pub error: Option<WsaError>,
    pub buffers: Vec<Vec<u8>>,
    pub from: Option<SocketAddr>,
}

impl OpResult {
    pub fn ok(bytes: usize, buffers: Vec<Vec<u8>>) -> Self {
        OpResult {
            bytes,
            buffers,
            ..Default::default()
        }
    }

    pub fn err(error: WsaError, buffers: Vec<Vec<u8>>) -> Self {
        OpResult {
            error: Some(error),
            buffers,
            ..Default::default()
        }
    }
}

/// A routine, ready to run on the completion thread.
pub(crate) type Job = Box<dyn FnOnce() + Send + 'static>;

/// The completion-port analogue: many sockets' operations complete into one queue.
#[derive(Debug, Default)]
pub struct CompletionQueue {
    queue: Mutex<VecDeque<Completion>>,
    ready: Condvar,
}

impl CompletionQueue {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Queue a completion (also PostQueuedCompletionStatus for the application).
    pub fn post(&self, c: Completion) {
        lock(&self.queue).push_back(c);
        self.ready.notify_one();
    }

    /// The oldest completion, waiting up to `timeout` (None: forever) for one.
    pub fn get_queued_completion(&self, timeout: Option<Duration>) -> Option<Completion> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut q = lock(&self.queue);
        loop {
            if let Some(c) = q.pop_front() {
                return Some(c);
            }
            match deadline {
                None => q = self.ready.wait(q).unwrap_or_else(PoisonError::into_inner),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return None;
                    }
                    q = self
                        .ready
                        .wait_timeout(q, d - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            }
        }
    }

    /// Completions waiting.
    pub fn len(&self) -> usize {
        lock(&self.queue).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The provider's completion thread (see the module docs).
#[derive(Default)]
pub(crate) struct RoutineThread {
    tx: Mutex<Option<mpsc::Sender<Job>>>,
}

impl std::fmt::Debug for RoutineThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RoutineThread")
    }
}

impl RoutineThread {
    pub fn run(&self, job: Job) {
        let mut tx = lock(&self.tx);
        let sender = tx.get_or_insert_with(|| {
            let (tx, rx) = mpsc::channel::<Job>();
            std::thread::Builder::new()
                .name("provider-completion".into())
                .spawn(move || {
                    while let Ok(job) = rx.recv() {
                        job();
                    }
                })
                .expect("spawn the completion thread");
            tx
        });
        let _ = sender.send(job);
    }
}

/// Total capacity of scatter buffers.
pub(crate) fn capacity(bufs: &[Vec<u8>]) -> usize {
    bufs.iter().map(Vec::len).sum()
}

/// Copy `data` into the scatter buffers in order; returns bytes copied.
pub(crate) fn scatter(data: &[u8], bufs: &mut [Vec<u8>]) -> usize {
    let mut off = 0;
    for b in bufs.iter_mut() {
        if off == data.len() {
            break;
        }
        let n = b.len().min(data.len() - off);
        b[..n].copy_from_slice(&data[off..off + n]);
        off += n;
    }
    off
}

#[cfg(test)]
mod hook_tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn hook_runs_inline_once_with_the_buffers_and_returns_its_job() {
        let seen = Arc::new(AtomicUsize::new(0));
        let s2 = seen.clone();
        let ov = Overlapped::with_hook(move |c| {
            assert_eq!((c.bytes, c.error, c.buffers.len()), (3, None, 1));
            s2.store(c.buffers[0].len(), Ordering::SeqCst);
            Some(Box::new(|| {}) as Job)
        });
        ov.begin().unwrap();
        let job = ov.complete(OpResult::ok(3, vec![vec![7; 5]]));
        assert_eq!(seen.load(Ordering::SeqCst), 5, "ran inline");
        assert!(job.is_some());
        assert_eq!(ov.result(false), Ok((3, 0)));
        // Spent: a second operation on the descriptor is refused.
        assert_eq!(ov.begin(), Err(WsaError::WSAEINVAL));
    }
}
