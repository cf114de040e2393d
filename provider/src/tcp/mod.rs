//! Sans-IO TCP (DESIGN §5).
pub mod cc;
pub mod isn;
pub mod reassembly;
pub mod rtt;
pub mod sack;
pub mod seq;
pub mod timer_wheel;
