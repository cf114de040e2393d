//! The WSP socket table: handles, options, per-socket state.
pub mod datapath;
pub mod entry;
pub mod error;
pub mod handle;
pub mod options;
pub mod table;

pub use datapath::{Datapath, L4Out, send_l4_copying};
pub use entry::{Family, SocketEntry, SocketKind};
pub use error::{WsaError, WspResult};
pub use handle::{INVALID_SOCKET, Socket};
pub use options::{Linger, SocketOptions};
pub use table::SocketTable;
