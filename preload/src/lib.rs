//! `libprovider_preload.so`: runs unmodified Linux programs on the provider (issue 11).
//!
//! `provider run --iface IF -- APP ARGS…` puts this library in `LD_PRELOAD`. It exports the
//! BSD socket calls; each forwards to libc unless its descriptor is a provider socket. A socket
//! becomes the provider's when the program binds it to the interface's address (or the
//! wildcard) on a port that is ours, connects it (or, UDP, sends) to an address the kernel
//! would reach through the interface; at that moment its kernel socket is replaced, at the same
//! descriptor number, by an eventfd that serves as its doorbell (`fdtable`). Everything else —
//! AF_UNIX, loopback, other interfaces, files, pipes — stays the kernel's.
//!
//! See the README ("Running applications") for what is interposed and the known gaps.

pub mod calls;
mod drive;
mod epoll;
mod errno;
mod fdcalls;
pub mod fdtable;
mod ops;
pub mod process;
#[doc(hidden)]
pub mod real;
pub mod shm;
mod sockaddr;
pub mod stack;

#[global_allocator]
static ALLOC: shm::SplitAlloc = shm::SplitAlloc;
