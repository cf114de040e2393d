//! TX kicks held back on one thread while it works through a batch of events.
//!
//! An event-loop server wakes with several ready connections and answers each; with a kick per
//! send that is one `sendto(2)` per answer. While a thread holds its kicks
//! ([`TxKicker::hold`]), its TCP sends only put frames on the TX ring (marked pending, as
//! always) and the thread's next [`TxKicker::release`] — at its next wait — pushes them all out
//! with one kick per queue. Other threads keep kicking at once, and any thread's kick pushes out
//! everything pending, the held frames too.
//!
//! Whoever holds must release before it sleeps, or its frames wait for the next kick of
//! another thread.
use std::cell::Cell;
use std::sync::Arc;

use super::XdpDatapath;

thread_local! {
    static HELD: Cell<bool> = const { Cell::new(false) };
}

/// Whether this thread's sends leave the kick to its next release.
pub(super) fn held() -> bool {
    HELD.with(Cell::get)
}

/// A handle that kicks the engine's TX rings (see the module documentation).
#[derive(Clone)]
pub struct TxKicker {
    pub(super) dp: Arc<XdpDatapath>,
}

impl TxKicker {
    /// From now on this thread's sends leave their kick to [`release`](Self::release).
    pub fn hold(&self) {
        HELD.with(|h| h.set(true));
    }

    /// Kick at once again on this thread, and push out what it held back.
    pub fn release(&self) {
        if HELD.with(|h| h.replace(false)) {
            self.dp.kick_now();
        }
    }

    /// Push out whatever any thread left pending (cheap when nothing is).
    pub fn kick_pending(&self) {
        self.dp.kick_now();
    }

    /// Whether this thread holds its kicks.
    pub fn holding(&self) -> bool {
        held()
    }
}
