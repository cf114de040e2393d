//! Sans-IO TCP (DESIGN §5).
pub mod rtt;
pub mod seq;
