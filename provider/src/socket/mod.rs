//! The WSP socket table: handles, options, per-socket state.
pub mod datapath;
pub mod error;

pub use datapath::Datapath;
pub use error::{WsaError, WspResult};
