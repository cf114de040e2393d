//! `cargo xtask stats`: reads the provider's statistics JSON files and prints them as tables.
//!
//! A running `provider` rewrites its file every 500 ms: `/run/provider/<iface>-<pid>.json`
//! (or the `--stats-file` it was given). The known sections are `xdp` (verdict counters of
//! the XDP program), `queues` (per-queue AF_XDP ring statistics), `engine` and `sockets`;
//! anything else in the file is printed generically, so the table follows the binary.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value};

use crate::proc;

/// Where a provider started without `--stats-file` writes its statistics.
pub const STATS_DIR: &str = "/run/provider";

/// The pid in a `<iface>-<pid>.json` file name.
pub fn pid_from_file_name(path: &Path) -> Option<u32> {
    let stem = path.file_name()?.to_str()?.strip_suffix(".json")?;
    stem.rsplit_once('-')?.1.parse().ok()
}

/// Every `/run/provider/*.json` whose pid (in the name) is alive.
pub fn live_files() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(STATS_DIR)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    pid_from_file_name(p)
                        .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// `v.a.b.0.c`: object keys, or array indices for numeric segments.
pub fn at_path<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| match v {
        Value::Array(a) => a.get(k.parse::<usize>().ok()?),
        other => other.get(k),
    })
}

/// [`at_path`] as a u64.
pub fn u64_at(v: &Value, path: &[&str]) -> Option<u64> {
    at_path(v, path)?.as_u64()
}

/// Reads and parses a stats file, retrying briefly in case it is caught mid-rewrite.
pub fn read(path: &Path) -> Result<Value> {
    let mut last = None;
    for _ in 0..5 {
        match fs::read(path) {
            Ok(b) => match serde_json::from_slice::<Value>(&b) {
                Ok(v) => return Ok(v),
                Err(e) => last = Some(anyhow::Error::from(e)),
            },
            Err(e) => last = Some(anyhow::Error::from(e)),
        }
        std::thread::sleep(Duration::from_millis(60));
    }
    Err(last.unwrap()).with_context(|| format!("read stats {}", path.display()))
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::Bool(b) => (if *b { "yes" } else { "no" }).into(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Display order of the counters the binary documents (serde_json sorts keys); unknown keys
/// follow in alphabetical order.
const KEY_ORDER: &[&str] = &[
    // xdp
    "steered",
    "passed_not_ours",
    "passed_malformed",
    "passed_fragment",
    "passed_ext_header",
    "redirect_failed",
    // queues
    "queue",
    "zero_copy",
    "rx_frames",
    "tx_frames",
    "xsk",
    "rx_dropped",
    "rx_invalid_descs",
    "tx_invalid_descs",
    "rx_ring_full",
    "rx_fill_ring_empty_descs",
    "tx_ring_empty_descs",
    "pending_tx",
    "free_tx_frames",
    "kicks",
    "tx",
    "rx",
    "tx_kicks_per_frame",
    "busy_pass",
    "tcp_lock_wait",
    "tcp_shards",
    "tcp_flow_owner",
    "shard",
    "connections",
    "segments",
    "segments_forwarded_in",
    "lock_wait",
    "samples",
    "p50_ns",
    "p99_ns",
    "p999_ns",
    "max_ns",
    // engine (rx_frames, tx_frames above)
    "rx_udp",
    "rx_malformed",
    "rx_bad_checksum",
    "rx_no_socket",
    "rx_unhandled_proto",
    // sockets
    "sockets_open",
    "handles_open",
    "udp_endpoints",
    "udp_sent",
    "udp_delivered",
    "udp_dropped_queue_full",
    "udp_no_socket",
];

fn ordered(m: &Map<String, Value>) -> Vec<(&String, &Value)> {
    let mut v: Vec<_> = m.iter().collect();
    v.sort_by_key(|(k, _)| KEY_ORDER.iter().position(|o| o == k).unwrap_or(usize::MAX));
    v
}

/// Flattens nested objects into `a.b.c` keys (arrays are shown as JSON).
fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            for (k, v) in ordered(m) {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        other => out.push((prefix.to_owned(), scalar(other))),
    }
}

/// `key  value` lines, values right-aligned.
fn kv_section(out: &mut String, title: &str, v: &Value) {
    let mut rows = Vec::new();
    flatten("", v, &mut rows);
    let _ = writeln!(out, "{title}");
    if rows.is_empty() {
        let _ = writeln!(out, "  (none)");
        return;
    }
    let kw = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let vw = rows.iter().map(|(_, v)| v.len()).max().unwrap_or(0);
    for (k, v) in rows {
        let _ = writeln!(out, "  {k:<kw$}  {v:>vw$}");
    }
}

/// Array of objects as a transposed table: one row per (flattened) key, one column per item.
fn columns_section(
    out: &mut String,
    title: &str,
    items: &[Value],
    col_name: impl Fn(usize, &Value) -> String,
) {
    let _ = writeln!(out, "{title}");
    if items.is_empty() {
        let _ = writeln!(out, "  (none)");
        return;
    }
    let mut keys: Vec<String> = Vec::new();
    let cols: Vec<Vec<(String, String)>> = items
        .iter()
        .map(|it| {
            let mut rows = Vec::new();
            flatten("", it, &mut rows);
            for (k, _) in &rows {
                if !keys.contains(k) {
                    keys.push(k.clone());
                }
            }
            rows
        })
        .collect();
    let heads: Vec<String> = items
        .iter()
        .enumerate()
        .map(|(i, v)| col_name(i, v))
        .collect();
    let kw = keys.iter().map(String::len).max().unwrap_or(0);
    let cw: Vec<usize> = heads
        .iter()
        .zip(&cols)
        .map(|(h, c)| {
            c.iter()
                .map(|(_, v)| v.len())
                .chain([h.len()])
                .max()
                .unwrap_or(1)
        })
        .collect();
    let mut line = format!("  {:<kw$}", "");
    for (h, w) in heads.iter().zip(&cw) {
        let _ = write!(line, "  {h:>w$}");
    }
    let _ = writeln!(out, "{}", line.trim_end());
    for k in &keys {
        let mut line = format!("  {k:<kw$}");
        for (c, w) in cols.iter().zip(&cw) {
            let v = c
                .iter()
                .find(|(ck, _)| ck == k)
                .map_or("-", |(_, v)| v.as_str());
            let _ = write!(line, "  {v:>w$}");
        }
        let _ = writeln!(out, "{line}");
    }
}

/// Renders one stats document as readable tables.
pub fn render(v: &Value) -> String {
    let mut out = String::new();
    let empty = Map::new();
    let top = v.as_object().unwrap_or(&empty);
    if let Some(x) = top.get("xdp") {
        kv_section(
            &mut out,
            "XDP verdicts (provider-ebpf STATS, summed over CPUs)",
            x,
        );
    }
    if let Some(q) = top.get("queues") {
        let items = q.as_array().cloned().unwrap_or_default();
        // The queue id is the column head; do not repeat it as a row.
        let body: Vec<Value> = items
            .iter()
            .map(|it| {
                let mut it = it.clone();
                if let Some(m) = it.as_object_mut() {
                    m.remove("queue");
                }
                it
            })
            .collect();
        columns_section(
            &mut out,
            "AF_XDP queues (XDP_STATISTICS and ring state)",
            &body,
            |i, _| match items[i].get("queue") {
                Some(q) => format!("q{}", scalar(q)),
                None => format!("#{i}"),
            },
        );
    }
    if let Some(e) = top.get("engine") {
        kv_section(&mut out, "Engine", e);
    }
    if let Some(s) = top.get("sockets") {
        match s {
            Value::Array(items) => columns_section(&mut out, "Sockets", items, |i, it| {
                it.get("handle")
                    .or_else(|| it.get("id"))
                    .map_or(format!("#{i}"), scalar)
            }),
            other => kv_section(&mut out, "Sockets", other),
        }
    }
    for (k, val) in ordered(top) {
        if !["xdp", "queues", "engine", "sockets"].contains(&k.as_str()) {
            match val {
                Value::Array(items) => columns_section(&mut out, k, items, |i, _| format!("#{i}")),
                other => kv_section(&mut out, k, other),
            }
        }
    }
    if top.is_empty() {
        let _ = writeln!(out, "(not a JSON object: {v})");
    }
    out
}

fn age(path: &Path) -> String {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .map_or(String::new(), |d| {
            format!(", updated {:.1} s ago", d.as_secs_f64())
        })
}

fn show_once(file: Option<&Path>) -> Result<String> {
    let files = match file {
        Some(f) => vec![f.to_path_buf()],
        None => live_files(),
    };
    if files.is_empty() {
        return Ok(format!(
            "no running provider: no {STATS_DIR}/<iface>-<pid>.json with a live pid\n"
        ));
    }
    let mut out = String::new();
    for f in files {
        let pid = pid_from_file_name(&f).map_or(String::new(), |p| format!("pid {p}"));
        let _ = writeln!(out, "== {} ({pid}{})", f.display(), age(&f));
        match read(&f) {
            Ok(v) => out.push_str(&render(&v)),
            Err(e) => {
                let _ = writeln!(out, "  cannot read: {e:#}");
            }
        }
        out.push('\n');
    }
    Ok(out)
}

/// `cargo xtask stats [--file F] [--watch]`.
pub fn run(file: Option<&Path>, watch: bool) -> Result<()> {
    if let Some(f) = file
        && !f.exists()
    {
        bail!("{} does not exist", f.display());
    }
    if !watch {
        print!("{}", show_once(file)?);
        return Ok(());
    }
    proc::install_signal_flag();
    loop {
        let text = show_once(file)?;
        // Clear the screen, home the cursor.
        println!("\x1b[2J\x1b[H{text}(refreshing every second; Ctrl-C to stop)");
        use std::io::Write;
        let _ = std::io::stdout().flush();
        if proc::sleep(Duration::from_secs(1)).is_err() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_from_names() {
        assert_eq!(
            pid_from_file_name(Path::new("/run/provider/eth1-42.json")),
            Some(42)
        );
        assert_eq!(pid_from_file_name(Path::new("pv9-p-1234.json")), Some(1234));
        assert_eq!(pid_from_file_name(Path::new("eth1.json")), None);
        assert_eq!(pid_from_file_name(Path::new("eth1-42.txt")), None);
    }

    #[test]
    fn renders_every_section() {
        let v: Value = serde_json::from_str(
            r#"{"xdp":{"steered":402,"passed_not_ours":3},
                "queues":[{"queue":0,"zero_copy":false,"xsk":{"rx_dropped":0,"rx_ring_full":1},
                           "pending_tx":0,"free_tx_frames":2048}],
                "engine":{"rx_frames":402,"rx_udp":402},
                "sockets":{"udp":1},
                "extra":{"x":1}}"#,
        )
        .unwrap();
        let s = render(&v);
        for want in [
            "XDP verdicts",
            "steered",
            "402",
            "q0",
            "xsk.rx_ring_full",
            "zero_copy",
            "no",
            "2048",
            "Engine",
            "rx_udp",
            "Sockets",
            "extra",
        ] {
            assert!(s.contains(want), "missing {want:?} in\n{s}");
        }
        assert!(
            !s.contains("\n  queue "),
            "queue id repeated as a row:\n{s}"
        );
        assert_eq!(u64_at(&v, &["queues", "0", "xsk", "rx_ring_full"]), Some(1));
        assert_eq!(u64_at(&v, &["queues", "1", "xsk"]), None);
    }
}
