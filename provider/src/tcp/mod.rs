//! The TCP engine (DESIGN §5): a sans-IO state machine. It is fed segments and a virtual clock
//! and polled for segments to send and for events; it reads no clock, does no I/O and spawns no
//! threads.
//!
//! Layout, along the data path:
//! - [`seq`], [`rtt`], [`cc`], [`sack`], [`reassembly`], [`timer_wheel`], [`isn`]: building blocks;
//! - [`options`] and [`segment`]: the wire (options parse/write, inbound parse, outbound writer);
//! - [`conn`]: one connection (state + dispatch, sender, receiver, close);
//! - [`listener`]: SYN and accept queues; [`engine`]: the multi-connection engine.

pub(crate) mod buffer;
pub mod cc;
pub mod isn;
pub mod reassembly;
pub mod rtt;
pub mod sack;
pub mod seq;
pub mod timer_wheel;

pub mod config;
pub(crate) mod conn;
pub mod engine;
pub(crate) mod listener;
pub mod options;
pub(crate) mod ratelimit;
pub mod segment;
pub mod types;

#[cfg(test)]
pub(crate) mod tests;

pub use cc::CcAlgorithm;
pub use config::{ConnOptions, TcpConfig};
pub use engine::TcpEngine;
pub use segment::SegmentChecksum;
pub use types::{ConnId, ConnStats, Event, ListenerId, TcpError, TcpState, Transmit};
