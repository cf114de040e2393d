//! Helpers the `cat`, `sockperf-server` and `script` subcommands share: the nonblocking retry
//! loop, send-all and connect-and-wait, socket options by name, and an error type that names the
//! failing call and its WSA code.
use std::{fmt, net::SocketAddr, time::Duration};

use provider::{
    api::Provider,
    socket::{
        Linger, Socket, WsaError, WspResult,
        options::{
            IPPROTO_TCP, SO_DONTLINGER, SO_KEEPALIVE, SO_LINGER, SO_RCVBUF, SO_REUSEADDR,
            SO_SNDBUF, SOL_SOCKET, TCP_NODELAY,
        },
    },
};

/// How long a nonblocking caller waits before retrying a call that gave WSAEWOULDBLOCK.
pub const RETRY_PAUSE: Duration = Duration::from_micros(200);

/// Call `f` until it gives something other than WSAEWOULDBLOCK (the nonblocking caller's loop;
/// for a blocking socket `f` never gives it and this is a single call).
pub fn retry<T>(mut f: impl FnMut() -> WspResult<T>) -> WspResult<T> {
    loop {
        match f() {
            Err(WsaError::WSAEWOULDBLOCK) => std::thread::sleep(RETRY_PAUSE),
            r => return r,
        }
    }
}

/// Nonblocking-safe connect: retries WSAEWOULDBLOCK / WSAEALREADY and treats WSAEISCONN after
/// the first call as success.
pub fn connect_wait(p: &Provider, s: Socket, to: SocketAddr) -> WspResult<()> {
    let mut first = true;
    loop {
        match p.wsp_connect(s, to) {
            Ok(()) => return Ok(()),
            Err(WsaError::WSAEISCONN) if !first => return Ok(()),
            Err(WsaError::WSAEWOULDBLOCK | WsaError::WSAEALREADY) => {
                std::thread::sleep(RETRY_PAUSE)
            }
            Err(e) => return Err(e),
        }
        first = false;
    }
}

/// Send all of `buf` (a blocking send already does; a nonblocking one is looped).
pub fn send_all(p: &Provider, s: Socket, mut buf: &[u8]) -> WspResult<()> {
    while !buf.is_empty() {
        let n = retry(|| p.wsp_send(s, buf))?;
        buf = &buf[n..];
    }
    Ok(())
}

fn set_int(p: &Provider, s: Socket, level: i32, name: i32, v: i32) -> WspResult<()> {
    p.wsp_set_sock_opt(s, level, name, &v.to_ne_bytes())
}

/// A socket option a tool sets by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SockOpt {
    /// SO_LINGER with `l_onoff`, `l_linger` (seconds).
    Linger(u16, u16),
    /// SO_DONTLINGER TRUE/FALSE.
    DontLinger(bool),
    NoDelay(bool),
    RcvBuf(i32),
    SndBuf(i32),
    KeepAlive(bool),
    ReuseAddr(bool),
}

impl SockOpt {
    pub fn apply(self, p: &Provider, s: Socket) -> WspResult<()> {
        match self {
            SockOpt::Linger(l_onoff, l_linger) => {
                let l = Linger { l_onoff, l_linger };
                p.wsp_set_sock_opt(s, SOL_SOCKET, SO_LINGER, &l.to_bytes())
            }
            SockOpt::DontLinger(v) => set_int(p, s, SOL_SOCKET, SO_DONTLINGER, v.into()),
            SockOpt::NoDelay(v) => set_int(p, s, IPPROTO_TCP, TCP_NODELAY, v.into()),
            SockOpt::RcvBuf(n) => set_int(p, s, SOL_SOCKET, SO_RCVBUF, n),
            SockOpt::SndBuf(n) => set_int(p, s, SOL_SOCKET, SO_SNDBUF, n),
            SockOpt::KeepAlive(v) => set_int(p, s, SOL_SOCKET, SO_KEEPALIVE, v.into()),
            SockOpt::ReuseAddr(v) => set_int(p, s, SOL_SOCKET, SO_REUSEADDR, v.into()),
        }
    }
}

/// A failed WSP call: which call, and its code. Displays as `recv: WSAECONNRESET (connection
/// reset by peer)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallError {
    pub call: &'static str,
    pub err: WsaError,
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} ({})", self.call, self.err.name(), self.err)
    }
}

impl std::error::Error for CallError {}

/// `result.call("recv")?` tags a WSP error with the call that gave it.
pub trait Tag<T> {
    fn call(self, call: &'static str) -> Result<T, CallError>;
}

impl<T> Tag<T> for WspResult<T> {
    fn call(self, call: &'static str) -> Result<T, CallError> {
        self.map_err(|err| CallError { call, err })
    }
}

/// Before the process exits (which stops the datapath): wait up to `max` for the TCP
/// connections closed gracefully to finish — queued data sent, FIN handshake done. The engine
/// counts a connection in TIME_WAIT as unfinished too, so after an active close this waits the
/// whole `max` unless TIME_WAIT (`--time-wait-ms`) is shorter. Returns the connections still
/// closing.
pub fn drain(p: &Provider, max: Duration) -> usize {
    let deadline = std::time::Instant::now() + max;
    loop {
        let (_, orphans) = p.tcp_counts();
        if orphans == 0 || std::time::Instant::now() >= deadline {
            return orphans;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
