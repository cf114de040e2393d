//! The provider: a kernel-bypass socket provider (see DESIGN.md).
//!
//! Modules follow the data path: `xdp` (the steering program and its maps) → `xsk` (AF_XDP rings)
//! → `net` (headers, checksums, neighbours) → `udp` → `socket` (WSP handle table) → `api` (the WSP
//! calls), with `engine` running the per-queue loop that ties them together.
pub mod aio;
pub mod api;
pub mod engine;
pub mod ffi;
pub mod histogram;
pub mod net;
pub mod socket;
pub mod tcp;
pub mod udp;
pub mod xdp;
pub mod xsk;
