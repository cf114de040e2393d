//! Scenario tests (packetdrill style) and a reusable harness.
//!
//! [`harness`] drives one engine against a scripted peer; [`bulk`] wires two engines back to back
//! through an impaired link. Both are `pub(crate)` so later scenarios can reuse them.

pub(crate) mod bulk;
pub(crate) mod harness;
mod recovery;
mod scenarios;
