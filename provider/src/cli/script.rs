//! `provider script`: WSP calls from a file or stdin, one per line, each result printed as one
//! JSON line — the packetdrill-style driver for conformance tests (DESIGN §9).
//!
//! ```text
//! provider script --iface IF [--file F] [--stop-on-error] [--drain-ms MS] [provider-wide flags]
//! ```
//!
//! Without `--file` the ops are read from stdin as they come, so a test can write an op, read
//! its result line and decide what to send next. A file is parsed completely before the first
//! op runs.
//!
//! # Grammar
//!
//! One op per line; tokens are separated by blanks; a token `#` or starting with `#` and not
//! followed by a digit begins a comment that runs to the end of the line; blank lines are
//! skipped. Addresses are `IP:PORT`, IPv6 in brackets (`[::]:5000`, `[2001:2::1]:80`).
//!
//! Every op that creates a socket (`socket`, `accept`, `duplicate`) numbers it — `1`, `2`, … in
//! creation order — and makes it the *current handle*; every other op acts on the current
//! handle. `use H` (or `use #H`) selects another. A closed handle keeps its number: using it
//! again shows what the provider says about a stale handle (WSAENOTSOCK).
//!
//! | op | WSP call(s) | `ret` on success |
//! |---|---|---|
//! | `socket tcp\|udp [v4\|v6]` | WSPSocket (default v4) | new handle number (`"socket"`: raw value) |
//! | `bind ADDR:PORT` | WSPBind | 0 (`"addr"`: bound address) |
//! | `listen [BACKLOG]` | WSPListen (default 16), then prints `{"event":"listening",…}` | 0 |
//! | `accept` | WSPAccept | new handle number (`"peer"`) |
//! | `connect ADDR:PORT` | one WSPConnect (nonblocking: WSAEWOULDBLOCK, repeat it → WSAEALREADY / WSAEISCONN) | 0 |
//! | `send N` | one WSPSend of the next N stream bytes | bytes taken |
//! | `sendall N` | WSPSend until N bytes are taken (WSAEWOULDBLOCK retried) | N |
//! | `recv N` | one WSPRecv, N-byte buffer (0 = EOF) | bytes (`"verify"`) |
//! | `recv_all N` | WSPRecv until N bytes or EOF (WSAEWOULDBLOCK retried) | bytes (`"verify"`, `"eof"`) |
//! | `echo N` | WSPRecv, WSPSend back, until N bytes or EOF | bytes echoed |
//! | `sendto ADDR:PORT N` | one WSPSendTo of an N-byte datagram | bytes |
//! | `recvfrom [N]` | one WSPRecvFrom, N-byte buffer (default 65536) | bytes (`"from"`, `"verify"`) |
//! | `udp_echo N` | N × (WSPRecvFrom, WSPSendTo back to the sender) | datagrams echoed |
//! | `setsockopt linger ONOFF SECS` | SO_LINGER `{l_onoff, l_linger}` | 0 |
//! | `setsockopt dontlinger\|nodelay\|keepalive\|reuseaddr 0\|1` | SO_DONTLINGER, TCP_NODELAY, SO_KEEPALIVE, SO_REUSEADDR | 0 |
//! | `setsockopt rcvbuf\|sndbuf N` | SO_RCVBUF, SO_SNDBUF | 0 |
//! | `getsockopt NAME` | NAME as above, or `error`, `type` | the value (linger: `"linger":[onoff,secs]`) |
//! | `ioctl fionbio 0\|1` | FIONBIO | 0 |
//! | `ioctl fionread` | FIONREAD | bytes readable |
//! | `shutdown send\|receive\|both` | WSPShutdown SD_SEND / SD_RECEIVE / SD_BOTH | 0 |
//! | `close` | WSPCloseSocket | 0 |
//! | `duplicate` | a second handle to the socket | new handle number |
//! | `getsockname` / `getpeername` | WSPGetSockName / WSPGetPeerName | 0 (`"addr"`) |
//! | `sleep MS` | — | 0 |
//! | `use H` | — (selects handle H) | H |
//!
//! **Data.** Byte *i* of a stream is *i* mod 256: each socket (shared by its duplicates) counts
//! the bytes it has sent and received; `send`/`sendall` continue the pattern, and
//! `recv`/`recv_all` check what arrives against it — `"verify"` is `"ok"` or `"mismatch at K"`
//! (K: stream offset of the first wrong byte). Datagrams carry the pattern from 0 each.
//! `echo` sends back what it received and advances both counters (it checks nothing).
//!
//! # Output
//!
//! One JSON object per line on stdout. First `{"event":"ready",…}` once the datapath is up;
//! then for every op:
//!
//! ```text
//! {"line":3,"op":"send","args":["1000"],"handle":1,"ret":1000,"error":null,"t_us":1234,"dur_us":56}
//! ```
//!
//! `ret` is the value above, or -1 (SOCKET_ERROR) with `error` the WSA code name
//! (`"WSAECONNRESET"`); an op that failed part-way also reports the bytes it had moved in
//! `"bytes"`. `t_us` is when the op started, in µs of a monotonic clock since the script
//! started; `dur_us` how long it took; `handle` the handle it acted on (null: none yet, the
//! call then gets `INVALID_SOCKET`). After a successful `listen`:
//! `{"event":"listening","handle":1,"addr":"0.0.0.0:5000","t_us":…}`. At the end:
//! `{"event":"done","ops":N,"errors":E,"stopped":false,"closing":C,"t_us":…}` — printed after
//! waiting (`--drain-ms`, default 1000) for gracefully closed connections to finish, since the
//! datapath stops with the process; `closing` counts those still closing (TIME_WAIT included).
//!
//! WSA errors are results, not failures: the script goes on (`--stop-on-error` stops at the
//! first op with an error or a failed verify, exit status 1). A line that does not parse, or
//! `use` of a handle that does not exist, stops the script with exit status 2 (a file is
//! checked before anything runs).
use std::{
    cell::RefCell,
    io::BufRead,
    net::SocketAddr,
    path::PathBuf,
    rc::Rc,
    str::FromStr,
    time::{Duration, Instant},
};

use clap::Args;
use provider::{
    api::{
        AF_INET, AF_INET6, IPPROTO_UDP, Provider, SD_BOTH, SD_RECEIVE, SD_SEND, SOCK_DGRAM,
        SOCK_STREAM,
    },
    socket::{
        INVALID_SOCKET, Linger, Socket, WsaError, WspResult,
        options::{
            FIONBIO, FIONREAD, IPPROTO_TCP, SO_DONTLINGER, SO_ERROR, SO_KEEPALIVE, SO_LINGER,
            SO_RCVBUF, SO_REUSEADDR, SO_SNDBUF, SO_TYPE, SOL_SOCKET, TCP_NODELAY,
        },
    },
};
use serde_json::{Map, Value, json};

use super::{
    DatapathArgs,
    wsp::{self, SockOpt},
};

#[derive(Args)]
pub struct ScriptArgs {
    #[command(flatten)]
    pub(super) datapath: DatapathArgs,
    /// Read the ops from this file (default: stdin, line by line as they arrive).
    #[arg(long)]
    file: Option<PathBuf>,
    /// Stop at the first op that gives a WSA error or a failed verify (exit status 1).
    #[arg(long)]
    stop_on_error: bool,
    /// At the end, wait up to this many ms for gracefully closed TCP connections to finish
    /// sending (TIME_WAIT counts as unfinished) before the process, and the datapath, exit.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    drain_ms: u64,
}

/// One parsed op.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Socket { udp: bool, v6: bool },
    Bind(SocketAddr),
    Listen(i32),
    Accept,
    Connect(SocketAddr),
    Send(usize),
    SendAll(usize),
    Recv(usize),
    RecvAll(usize),
    Echo(usize),
    SendTo(SocketAddr, usize),
    RecvFrom(usize),
    UdpEcho(usize),
    SetSockOpt(SockOpt),
    GetSockOpt(OptName),
    Fionbio(bool),
    Fionread,
    Shutdown(i32),
    Close,
    Duplicate,
    GetSockName,
    GetPeerName,
    Sleep(u64),
    Use(usize),
}

/// Options `getsockopt` reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptName {
    Linger,
    DontLinger,
    NoDelay,
    RcvBuf,
    SndBuf,
    KeepAlive,
    ReuseAddr,
    Error,
    Type,
}

impl OptName {
    fn parse(s: &str) -> Result<Self, String> {
        Ok(match s {
            "linger" => OptName::Linger,
            "dontlinger" => OptName::DontLinger,
            "nodelay" => OptName::NoDelay,
            "rcvbuf" => OptName::RcvBuf,
            "sndbuf" => OptName::SndBuf,
            "keepalive" => OptName::KeepAlive,
            "reuseaddr" => OptName::ReuseAddr,
            "error" => OptName::Error,
            "type" => OptName::Type,
            _ => return Err(format!("unknown option {s:?}")),
        })
    }

    fn level_name(self) -> (i32, i32) {
        match self {
            OptName::Linger => (SOL_SOCKET, SO_LINGER),
            OptName::DontLinger => (SOL_SOCKET, SO_DONTLINGER),
            OptName::NoDelay => (IPPROTO_TCP, TCP_NODELAY),
            OptName::RcvBuf => (SOL_SOCKET, SO_RCVBUF),
            OptName::SndBuf => (SOL_SOCKET, SO_SNDBUF),
            OptName::KeepAlive => (SOL_SOCKET, SO_KEEPALIVE),
            OptName::ReuseAddr => (SOL_SOCKET, SO_REUSEADDR),
            OptName::Error => (SOL_SOCKET, SO_ERROR),
            OptName::Type => (SOL_SOCKET, SO_TYPE),
        }
    }
}

/// A parsed line: its number, op name and argument tokens (as printed) and the op.
#[derive(Clone, Debug)]
pub struct Line {
    pub no: usize,
    pub name: String,
    pub args: Vec<String>,
    pub op: Op,
}

/// The tokens of a line with the comment removed.
fn tokens(line: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for t in line.split_whitespace() {
        if t.starts_with('#') && !t[1..].starts_with(|c: char| c.is_ascii_digit()) {
            break;
        }
        out.push(t);
    }
    out
}

fn num<T: FromStr>(s: Option<&&str>, what: &str) -> Result<T, String> {
    let s = s.ok_or_else(|| format!("missing {what}"))?;
    s.parse()
        .map_err(|_| format!("{s:?} is not a valid {what}"))
}

fn addr(s: Option<&&str>) -> Result<SocketAddr, String> {
    let s = s.ok_or("missing address (IP:PORT)")?;
    s.parse()
        .map_err(|_| format!("{s:?} is not an address (IP:PORT, IPv6 as [IP]:PORT)"))
}

fn flag(s: Option<&&str>) -> Result<bool, String> {
    match s.copied() {
        Some("1" | "on" | "true") => Ok(true),
        Some("0" | "off" | "false") => Ok(false),
        Some(x) => Err(format!("{x:?} is not 0 or 1")),
        None => Err("missing 0 or 1".into()),
    }
}

/// Parse one line; `Ok(None)` for a blank or comment line.
pub fn parse_line(no: usize, text: &str) -> Result<Option<Line>, String> {
    let t = tokens(text);
    let Some((&name, args)) = t.split_first() else {
        return Ok(None);
    };
    let a = |i: usize| args.get(i);
    let expect = |n: usize| -> Result<(), String> {
        if args.len() > n {
            Err(format!("{name}: unexpected {:?}", args[n]))
        } else {
            Ok(())
        }
    };
    let (op, max_args) = match name {
        "socket" => {
            let udp = match a(0).copied() {
                Some("tcp") => false,
                Some("udp") => true,
                _ => return Err("socket: expected tcp or udp".into()),
            };
            let v6 = match a(1).copied() {
                None | Some("v4") => false,
                Some("v6") => true,
                Some(x) => return Err(format!("socket: {x:?}: expected v4 or v6")),
            };
            (Op::Socket { udp, v6 }, 2)
        }
        "bind" => (Op::Bind(addr(a(0))?), 1),
        "listen" => (
            Op::Listen(if a(0).is_some() {
                num(a(0), "backlog")?
            } else {
                16
            }),
            1,
        ),
        "accept" => (Op::Accept, 0),
        "connect" => (Op::Connect(addr(a(0))?), 1),
        "send" => (Op::Send(num(a(0), "byte count")?), 1),
        "sendall" => (Op::SendAll(num(a(0), "byte count")?), 1),
        "recv" => (Op::Recv(num(a(0), "byte count")?), 1),
        "recv_all" => (Op::RecvAll(num(a(0), "byte count")?), 1),
        "echo" => (Op::Echo(num(a(0), "byte count")?), 1),
        "sendto" => (Op::SendTo(addr(a(0))?, num(a(1), "byte count")?), 2),
        "recvfrom" => (
            Op::RecvFrom(if a(0).is_some() {
                num(a(0), "buffer size")?
            } else {
                65536
            }),
            1,
        ),
        "udp_echo" => (Op::UdpEcho(num(a(0), "datagram count")?), 1),
        "setsockopt" => {
            let o = match a(0).copied() {
                Some("linger") => (
                    SockOpt::Linger(num(a(1), "l_onoff")?, num(a(2), "l_linger")?),
                    3,
                ),
                Some("dontlinger") => (SockOpt::DontLinger(flag(a(1))?), 2),
                Some("nodelay") => (SockOpt::NoDelay(flag(a(1))?), 2),
                Some("keepalive") => (SockOpt::KeepAlive(flag(a(1))?), 2),
                Some("reuseaddr") => (SockOpt::ReuseAddr(flag(a(1))?), 2),
                Some("rcvbuf") => (SockOpt::RcvBuf(num(a(1), "size")?), 2),
                Some("sndbuf") => (SockOpt::SndBuf(num(a(1), "size")?), 2),
                Some(x) => return Err(format!("setsockopt: unknown option {x:?}")),
                None => return Err("setsockopt: missing option".into()),
            };
            (Op::SetSockOpt(o.0), o.1)
        }
        "getsockopt" => (
            Op::GetSockOpt(OptName::parse(a(0).ok_or("getsockopt: missing option")?)?),
            1,
        ),
        "ioctl" => match a(0).copied() {
            Some("fionbio") => (Op::Fionbio(flag(a(1))?), 2),
            Some("fionread") => (Op::Fionread, 1),
            _ => return Err("ioctl: expected fionbio 0|1 or fionread".into()),
        },
        "shutdown" => {
            let how = match a(0).copied() {
                Some("send") => SD_SEND,
                Some("receive") => SD_RECEIVE,
                Some("both") => SD_BOTH,
                _ => return Err("shutdown: expected send, receive or both".into()),
            };
            (Op::Shutdown(how), 1)
        }
        "close" => (Op::Close, 0),
        "duplicate" => (Op::Duplicate, 0),
        "getsockname" => (Op::GetSockName, 0),
        "getpeername" => (Op::GetPeerName, 0),
        "sleep" => (Op::Sleep(num(a(0), "milliseconds")?), 1),
        "use" => {
            let h = a(0).ok_or("use: missing handle number")?;
            (
                Op::Use(num(Some(&h.trim_start_matches('#')), "handle number")?),
                1,
            )
        }
        _ => return Err(format!("unknown op {name:?}")),
    };
    expect(max_args)?;
    Ok(Some(Line {
        no,
        name: name.to_string(),
        args: args.iter().map(|s| s.to_string()).collect(),
        op,
    }))
}

/// Stream offsets of one socket (shared by its duplicates).
#[derive(Default, Debug)]
struct Pos {
    sent: u64,
    received: u64,
}

struct Handle {
    s: Socket,
    pos: Rc<RefCell<Pos>>,
}

/// `len` bytes of the pattern starting at stream offset `from`.
fn pattern(from: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|i| (from + i) as u8).collect()
}

/// Offset of the first byte of `data` (at stream offset `from`) that breaks the pattern.
fn first_mismatch(from: u64, data: &[u8]) -> Option<u64> {
    data.iter()
        .enumerate()
        .find(|&(i, &b)| b != (from + i as u64) as u8)
        .map(|(i, _)| from + i as u64)
}

/// The result of one op.
struct Outcome {
    ret: i64,
    error: Option<WsaError>,
    extra: Map<String, Value>,
    /// A pattern check failed.
    bad_verify: bool,
}

impl Outcome {
    fn ok(ret: i64) -> Self {
        Outcome {
            ret,
            error: None,
            extra: Map::new(),
            bad_verify: false,
        }
    }

    fn err(e: WsaError) -> Self {
        Outcome {
            ret: -1,
            error: Some(e),
            extra: Map::new(),
            bad_verify: false,
        }
    }

    fn from(r: WspResult<i64>) -> Self {
        match r {
            Ok(v) => Outcome::ok(v),
            Err(e) => Outcome::err(e),
        }
    }

    fn with(mut self, k: &str, v: impl Into<Value>) -> Self {
        self.extra.insert(k.into(), v.into());
        self
    }

    fn verify(mut self, mismatch: Option<u64>) -> Self {
        let v = match mismatch {
            None => "ok".to_string(),
            Some(k) => {
                self.bad_verify = true;
                format!("mismatch at {k}")
            }
        };
        self.with("verify", v)
    }
}

/// The script's state: the provider, its handles and the clock.
pub struct Runner {
    p: std::sync::Arc<Provider>,
    handles: Vec<Handle>,
    current: Option<usize>,
    start: Instant,
    ops: u64,
    errors: u64,
}

fn n64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Runner {
    fn t_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    fn emit(v: Value) {
        println!("{v}");
    }

    fn event(&self, name: &str, mut fields: Map<String, Value>) {
        fields.insert("event".into(), name.into());
        fields.insert("t_us".into(), self.t_us().into());
        Self::emit(Value::Object(fields));
    }

    fn cur(&self) -> (Socket, Rc<RefCell<Pos>>) {
        match self.current {
            Some(i) => (self.handles[i].s, self.handles[i].pos.clone()),
            None => (INVALID_SOCKET, Rc::default()),
        }
    }

    fn add_handle(&mut self, s: Socket, pos: Rc<RefCell<Pos>>) -> i64 {
        self.handles.push(Handle { s, pos });
        self.current = Some(self.handles.len() - 1);
        n64(self.handles.len())
    }

    /// Run one op and print its line. Returns Err for a script error (bad `use`), else whether
    /// the op had an error.
    pub fn run(&mut self, line: &Line) -> Result<bool, String> {
        if let Op::Use(h) = line.op
            && (h == 0 || h > self.handles.len())
        {
            return Err(format!(
                "line {}: use {h}: no such handle ({} created)",
                line.no,
                self.handles.len()
            ));
        }
        let handle = self.current.map(|i| i + 1);
        let t0 = self.start.elapsed();
        let out = self.exec(&line.op);
        let dur = self.start.elapsed() - t0;
        // `socket` acts on the handle it creates.
        let handle = match line.op {
            Op::Socket { .. } | Op::Use(_) => self.current.map(|i| i + 1),
            _ => handle,
        };
        let mut obj = Map::new();
        obj.insert("line".into(), line.no.into());
        obj.insert("op".into(), line.name.clone().into());
        obj.insert("args".into(), json!(line.args));
        obj.insert("handle".into(), json!(handle));
        obj.insert("ret".into(), out.ret.into());
        obj.insert("error".into(), json!(out.error.map(WsaError::name)));
        obj.insert("t_us".into(), (t0.as_micros() as u64).into());
        obj.insert("dur_us".into(), (dur.as_micros() as u64).into());
        obj.extend(out.extra);
        Self::emit(Value::Object(obj));
        self.ops += 1;
        let failed = out.error.is_some() || out.bad_verify;
        if failed {
            self.errors += 1;
        }
        if matches!(line.op, Op::Listen(_)) && out.error.is_none() {
            let (s, _) = self.cur();
            let mut f = Map::new();
            f.insert("handle".into(), json!(handle));
            f.insert(
                "addr".into(),
                json!(self.p.wsp_get_sock_name(s).ok().map(|a| a.to_string())),
            );
            self.event("listening", f);
        }
        Ok(failed)
    }

    fn exec(&mut self, op: &Op) -> Outcome {
        let p = self.p.clone();
        let p = &*p;
        let (s, pos) = self.cur();
        match *op {
            Op::Socket { udp, v6 } => {
                let af = if v6 { AF_INET6 } else { AF_INET };
                let r = if udp {
                    p.wsp_socket(af, SOCK_DGRAM, IPPROTO_UDP)
                } else {
                    p.wsp_socket(af, SOCK_STREAM, IPPROTO_TCP)
                };
                match r {
                    Ok(ns) => {
                        let h = self.add_handle(ns, Rc::default());
                        Outcome::ok(h).with("socket", ns.raw())
                    }
                    Err(e) => Outcome::err(e),
                }
            }
            Op::Bind(a) => match p.wsp_bind(s, a) {
                Ok(()) => {
                    Outcome::ok(0).with("addr", p.wsp_get_sock_name(s).ok().map(|a| a.to_string()))
                }
                Err(e) => Outcome::err(e),
            },
            Op::Listen(backlog) => Outcome::from(p.wsp_listen(s, backlog).map(|()| 0)),
            Op::Accept => match p.wsp_accept(s) {
                Ok((ns, peer)) => {
                    let h = self.add_handle(ns, Rc::default());
                    Outcome::ok(h)
                        .with("socket", ns.raw())
                        .with("peer", peer.to_string())
                }
                Err(e) => Outcome::err(e),
            },
            Op::Connect(to) => Outcome::from(p.wsp_connect(s, to).map(|()| 0)),
            Op::Send(n) => {
                let from = pos.borrow().sent;
                match p.wsp_send(s, &pattern(from, n)) {
                    Ok(k) => {
                        pos.borrow_mut().sent += k as u64;
                        Outcome::ok(n64(k))
                    }
                    Err(e) => Outcome::err(e),
                }
            }
            Op::SendAll(n) => {
                let data = pattern(pos.borrow().sent, n);
                let mut done = 0;
                while done < n {
                    match wsp::retry(|| p.wsp_send(s, &data[done..])) {
                        Ok(k) => {
                            done += k;
                            pos.borrow_mut().sent += k as u64;
                        }
                        Err(e) => return Outcome::err(e).with("bytes", done),
                    }
                }
                Outcome::ok(n64(n))
            }
            Op::Recv(n) => {
                let mut buf = vec![0u8; n];
                match p.wsp_recv(s, &mut buf) {
                    Ok(k) => {
                        let from = pos.borrow().received;
                        pos.borrow_mut().received += k as u64;
                        Outcome::ok(n64(k)).verify(first_mismatch(from, &buf[..k]))
                    }
                    Err(e) => Outcome::err(e),
                }
            }
            Op::RecvAll(n) => {
                let mut buf = vec![0u8; n.clamp(1, 256 * 1024)];
                let mut done = 0;
                let mut mismatch = None;
                let mut eof = false;
                while done < n {
                    let want = (n - done).min(buf.len());
                    match wsp::retry(|| p.wsp_recv(s, &mut buf[..want])) {
                        Ok(0) => {
                            eof = true;
                            break;
                        }
                        Ok(k) => {
                            let from = pos.borrow().received;
                            if mismatch.is_none() {
                                mismatch = first_mismatch(from, &buf[..k]);
                            }
                            pos.borrow_mut().received += k as u64;
                            done += k;
                        }
                        Err(e) => {
                            return Outcome::err(e).with("bytes", done).verify(mismatch);
                        }
                    }
                }
                Outcome::ok(n64(done)).with("eof", eof).verify(mismatch)
            }
            Op::Echo(n) => {
                let mut buf = vec![0u8; n.clamp(1, 256 * 1024)];
                let mut done = 0;
                let mut eof = false;
                while done < n {
                    let want = (n - done).min(buf.len());
                    let k = match wsp::retry(|| p.wsp_recv(s, &mut buf[..want])) {
                        Ok(0) => {
                            eof = true;
                            break;
                        }
                        Ok(k) => k,
                        Err(e) => return Outcome::err(e).with("bytes", done),
                    };
                    pos.borrow_mut().received += k as u64;
                    if let Err(e) = wsp::send_all(p, s, &buf[..k]) {
                        return Outcome::err(e).with("bytes", done);
                    }
                    pos.borrow_mut().sent += k as u64;
                    done += k;
                }
                Outcome::ok(n64(done)).with("eof", eof)
            }
            Op::SendTo(to, n) => Outcome::from(p.wsp_send_to(s, &pattern(0, n), to).map(n64)),
            Op::RecvFrom(n) => {
                let mut buf = vec![0u8; n];
                match p.wsp_recv_from(s, &mut buf) {
                    Ok((k, from)) => Outcome::ok(n64(k))
                        .with("from", from.to_string())
                        .verify(first_mismatch(0, &buf[..k])),
                    Err(e) => Outcome::err(e),
                }
            }
            Op::UdpEcho(count) => {
                let mut buf = vec![0u8; 65536];
                for i in 0..count {
                    let r = wsp::retry(|| p.wsp_recv_from(s, &mut buf))
                        .and_then(|(k, from)| p.wsp_send_to(s, &buf[..k], from));
                    if let Err(e) = r {
                        return Outcome::err(e).with("datagrams", i);
                    }
                }
                Outcome::ok(n64(count))
            }
            Op::SetSockOpt(o) => Outcome::from(o.apply(p, s).map(|()| 0)),
            Op::GetSockOpt(name) => {
                let (level, opt) = name.level_name();
                let mut buf = [0u8; 4];
                match p.wsp_get_sock_opt(s, level, opt, &mut buf) {
                    Ok(_) if name == OptName::Linger => {
                        let l = Linger {
                            l_onoff: u16::from_ne_bytes([buf[0], buf[1]]),
                            l_linger: u16::from_ne_bytes([buf[2], buf[3]]),
                        };
                        Outcome::ok(0).with("linger", json!([l.l_onoff, l.l_linger]))
                    }
                    Ok(_) => {
                        let v = i32::from_ne_bytes(buf);
                        let out = Outcome::ok(v.into());
                        if name == OptName::Error {
                            let code = WsaError::from_code(v).map(WsaError::name);
                            out.with("value", json!(code))
                        } else {
                            out
                        }
                    }
                    Err(e) => Outcome::err(e),
                }
            }
            Op::Fionbio(on) => {
                let mut arg = u32::from(on);
                Outcome::from(p.wsp_ioctl(s, FIONBIO, &mut arg).map(|()| 0))
            }
            Op::Fionread => {
                let mut arg = 0u32;
                Outcome::from(p.wsp_ioctl(s, FIONREAD, &mut arg).map(|()| arg.into()))
            }
            Op::Shutdown(how) => Outcome::from(p.wsp_shutdown(s, how).map(|()| 0)),
            Op::Close => Outcome::from(p.wsp_close_socket(s).map(|()| 0)),
            Op::Duplicate => match p.duplicate(s) {
                Ok(ns) => {
                    let h = self.add_handle(ns, pos);
                    Outcome::ok(h).with("socket", ns.raw())
                }
                Err(e) => Outcome::err(e),
            },
            Op::GetSockName => match p.wsp_get_sock_name(s) {
                Ok(a) => Outcome::ok(0).with("addr", a.to_string()),
                Err(e) => Outcome::err(e),
            },
            Op::GetPeerName => match p.wsp_get_peer_name(s) {
                Ok(a) => Outcome::ok(0).with("addr", a.to_string()),
                Err(e) => Outcome::err(e),
            },
            Op::Sleep(ms) => {
                std::thread::sleep(Duration::from_millis(ms));
                Outcome::ok(0)
            }
            Op::Use(h) => {
                self.current = Some(h - 1);
                Outcome::ok(n64(h))
            }
        }
    }
}

pub fn script(args: ScriptArgs) -> Result<(), Box<dyn std::error::Error>> {
    // Parse a file completely first: a typo stops the script before it has done anything.
    let file_lines = match &args.file {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let mut lines = Vec::new();
            for (i, t) in text.lines().enumerate() {
                match parse_line(i + 1, t) {
                    Ok(Some(l)) => lines.push(l),
                    Ok(None) => {}
                    Err(e) => syntax_error(i + 1, &e),
                }
            }
            Some(lines)
        }
        None => None,
    };
    let engine = super::start(&args.datapath)?;
    let mut r = Runner {
        p: engine.provider().clone(),
        handles: Vec::new(),
        current: None,
        start: Instant::now(),
        ops: 0,
        errors: 0,
    };
    let mut f = Map::new();
    f.insert("iface".into(), args.datapath.iface.clone().into());
    r.event("ready", f);
    let mut stopped = false;
    let step = |r: &mut Runner, line: &Line| -> bool {
        match r.run(line) {
            Ok(failed) => failed && args.stop_on_error,
            Err(e) => {
                eprintln!("provider script: {e}");
                std::process::exit(2);
            }
        }
    };
    match file_lines {
        Some(lines) => {
            for line in &lines {
                if step(&mut r, line) {
                    stopped = true;
                    break;
                }
            }
        }
        None => {
            for (i, text) in std::io::stdin().lock().lines().enumerate() {
                let text = text?;
                match parse_line(i + 1, &text) {
                    Ok(Some(line)) => {
                        if step(&mut r, &line) {
                            stopped = true;
                            break;
                        }
                    }
                    Ok(None) => {}
                    Err(e) => syntax_error(i + 1, &e),
                }
            }
        }
    }
    let left = wsp::drain(&r.p, Duration::from_millis(args.drain_ms));
    let mut f = Map::new();
    f.insert("closing".into(), left.into());
    f.insert("ops".into(), r.ops.into());
    f.insert("errors".into(), r.errors.into());
    f.insert("stopped".into(), stopped.into());
    r.event("done", f);
    if stopped {
        std::process::exit(1);
    }
    Ok(())
}

fn syntax_error(no: usize, msg: &str) -> ! {
    println!(
        "{}",
        json!({"event": "syntax_error", "line": no, "message": msg})
    );
    eprintln!("provider script: line {no}: {msg}");
    std::process::exit(2);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(s: &str) -> Op {
        parse_line(1, s).unwrap().unwrap().op
    }

    #[test]
    fn parses_every_op() {
        assert_eq!(
            op("socket tcp"),
            Op::Socket {
                udp: false,
                v6: false
            }
        );
        assert_eq!(
            op("socket udp v6"),
            Op::Socket {
                udp: true,
                v6: true
            }
        );
        assert_eq!(
            op("bind 0.0.0.0:5000"),
            Op::Bind("0.0.0.0:5000".parse().unwrap())
        );
        assert_eq!(op("bind [::]:5000"), Op::Bind("[::]:5000".parse().unwrap()));
        assert_eq!(op("listen"), Op::Listen(16));
        assert_eq!(op("listen 4"), Op::Listen(4));
        assert_eq!(op("accept"), Op::Accept);
        assert_eq!(
            op("connect 198.18.0.2:7000"),
            Op::Connect("198.18.0.2:7000".parse().unwrap())
        );
        assert_eq!(op("send 10"), Op::Send(10));
        assert_eq!(op("sendall 1000000"), Op::SendAll(1_000_000));
        assert_eq!(op("recv 100"), Op::Recv(100));
        assert_eq!(op("recv_all 5"), Op::RecvAll(5));
        assert_eq!(op("echo 5"), Op::Echo(5));
        assert_eq!(
            op("sendto 198.18.0.2:9 3"),
            Op::SendTo("198.18.0.2:9".parse().unwrap(), 3)
        );
        assert_eq!(op("recvfrom"), Op::RecvFrom(65536));
        assert_eq!(op("udp_echo 3"), Op::UdpEcho(3));
        assert_eq!(
            op("setsockopt linger 1 5"),
            Op::SetSockOpt(SockOpt::Linger(1, 5))
        );
        assert_eq!(
            op("setsockopt dontlinger 1"),
            Op::SetSockOpt(SockOpt::DontLinger(true))
        );
        assert_eq!(
            op("setsockopt nodelay 0"),
            Op::SetSockOpt(SockOpt::NoDelay(false))
        );
        assert_eq!(
            op("setsockopt rcvbuf 4096"),
            Op::SetSockOpt(SockOpt::RcvBuf(4096))
        );
        assert_eq!(
            op("setsockopt sndbuf 4096"),
            Op::SetSockOpt(SockOpt::SndBuf(4096))
        );
        assert_eq!(
            op("setsockopt keepalive 1"),
            Op::SetSockOpt(SockOpt::KeepAlive(true))
        );
        assert_eq!(
            op("setsockopt reuseaddr 1"),
            Op::SetSockOpt(SockOpt::ReuseAddr(true))
        );
        assert_eq!(op("getsockopt error"), Op::GetSockOpt(OptName::Error));
        assert_eq!(op("ioctl fionbio 1"), Op::Fionbio(true));
        assert_eq!(op("ioctl fionread"), Op::Fionread);
        assert_eq!(op("shutdown send"), Op::Shutdown(SD_SEND));
        assert_eq!(op("shutdown receive"), Op::Shutdown(SD_RECEIVE));
        assert_eq!(op("shutdown both"), Op::Shutdown(SD_BOTH));
        assert_eq!(op("close"), Op::Close);
        assert_eq!(op("duplicate"), Op::Duplicate);
        assert_eq!(op("getsockname"), Op::GetSockName);
        assert_eq!(op("getpeername"), Op::GetPeerName);
        assert_eq!(op("sleep 100"), Op::Sleep(100));
        assert_eq!(op("use 2"), Op::Use(2));
        assert_eq!(op("use #2  # the accepted one"), Op::Use(2));
    }

    #[test]
    fn comments_and_blanks() {
        assert!(parse_line(1, "").unwrap().is_none());
        assert!(parse_line(1, "   # just a comment").unwrap().is_none());
        let l = parse_line(3, "send 10 # ten bytes").unwrap().unwrap();
        assert_eq!(
            (l.no, l.name.as_str(), l.args.clone()),
            (3, "send", vec!["10".into()])
        );
    }

    #[test]
    fn rejects_bad_lines() {
        for bad in [
            "frobnicate",
            "socket",
            "socket sctp",
            "socket tcp v5",
            "bind 1.2.3.4",
            "send",
            "send x",
            "send 1 2",
            "setsockopt linger 1",
            "setsockopt nodelay 2",
            "ioctl fionbio",
            "shutdown sideways",
            "use",
            "close now",
        ] {
            assert!(parse_line(1, bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn pattern_and_verify() {
        let p = pattern(250, 10);
        assert_eq!(p[..7], [250, 251, 252, 253, 254, 255, 0]);
        assert_eq!(first_mismatch(250, &p), None);
        let mut q = p.clone();
        q[8] ^= 1;
        assert_eq!(first_mismatch(250, &q), Some(258));
    }
}
