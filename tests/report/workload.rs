//! What the report memory test and `cargo xtask bench-report` share (through `#[path]`), so
//! both measure the same way: a synthetic trace of a given size, shaped like what
//! `--trace-dir` writes on a node with a bad day (mostly events, a fifth findings of a few
//! kinds on a few dozen endpoints with evidence, a stats line now and then; plain `format!`
//! and a fixed pseudo-random sequence, the same bytes every time), and a child's peak RSS.

use std::{
    io::{self, Write},
    process::Child,
    time::{Duration, Instant},
};

const KINDS: [(&str, &str); 8] = [
    ("connect_refused", "error"),
    ("connect_timeout", "error"),
    ("peer_reset", "error"),
    ("middlebox_reset", "error"),
    ("tls_mismatch", "error"),
    ("retransmit_storm", "warning"),
    ("idle_at_risk", "warning"),
    ("half_open", "info"),
];
const PORTS: [u16; 4] = [7337, 10000, 9083, 7077];
const NODES: u64 = 3;

/// Lines written, by type.
#[derive(Debug, Default, Clone, Copy)]
pub struct Written {
    pub bytes: u64,
    pub events: u64,
    pub findings: u64,
    pub stats: u64,
}

/// RFC 3339 with nanoseconds, `ms` milliseconds after 2026-11-01T00:00:00Z (within 28 days).
fn ts(ms: u64) -> String {
    let (s, ms) = (ms / 1000, ms % 1000);
    let day = 1 + (s / 86_400) % 28;
    let (h, m, sec) = ((s / 3600) % 24, (s / 60) % 60, s % 60);
    format!("2026-11-{day:02}T{h:02}:{m:02}:{sec:02}.{ms:03}000000Z")
}

fn event(ts: &str, node: &str, n: u64, kind: &str, src: &str, dst: &str) -> String {
    let states = match kind {
        "state_change" => r#""old_state":"SYN_SENT","new_state":"CLOSE""#.to_owned(),
        "reset_received" => r#""state":"SYN_SENT","ttl":63,"peer_ttl":62"#.to_owned(),
        _ => r#""state":"ESTABLISHED""#.to_owned(),
    };
    format!(
        r#"{{"type":"event","v":1,"event":"{kind}","ts":"{ts}","node":"{node}","src":"{src}","dst":"{dst}","netns":4026531840,"pid":{pid},"tid":{tid},"comm":"java","thread":"shuffle-client-{t}","main_class":"org.apache.spark.executor.CoarseGrainedExecutorBackend","uid":185,"cgroup_id":{cg},"cookie":{n},"side":"client",{states}}}"#,
        pid = 4000 + n % 30,
        tid = 5000 + n % 300,
        t = n % 8,
        cg = 9000 + n % 30,
    )
}

fn evidence(ts: &str, src: &str, dst: &str, items: u64) -> String {
    let all = [
        format!(
            r#"{{"ts":"{ts}","event":"state_change","src":"{src}","dst":"{dst}","old_state":"CLOSE","new_state":"SYN_SENT"}}"#
        ),
        format!(
            r#"{{"ts":"{ts}","event":"reset_received","src":"{src}","dst":"{dst}","state":"SYN_SENT","ttl":63,"peer_ttl":62}}"#
        ),
        format!(
            r#"{{"ts":"{ts}","event":"socket_error","src":"{src}","dst":"{dst}","state":"SYN_SENT","error":"ECONNREFUSED"}}"#
        ),
        format!(
            r#"{{"ts":"{ts}","event":"state_change","src":"{src}","dst":"{dst}","old_state":"SYN_SENT","new_state":"CLOSE"}}"#
        ),
    ];
    let mut text = String::new();
    for i in 0..items {
        if i > 0 {
            text.push(',');
        }
        text.push_str(&all[(i % 4) as usize]);
    }
    text
}

fn finding(
    ts: &str,
    node: &str,
    n: u64,
    (kind, severity): (&str, &str),
    src: &str,
    dst: &str,
) -> String {
    format!(
        r#"{{"type":"finding","v":1,"id":{n},"kind":"{kind}","severity":"{severity}","ts":"{ts}","node":"{node}","src":"{src}","dst":"{dst}","service":"Spark external shuffle service","netns":4026531840,"pid":{pid},"comm":"java","main_class":"org.apache.spark.executor.CoarseGrainedExecutorBackend","uid":185,"side":"client","summary":"{kind} on {dst}: the executor's fetch of shuffle blocks failed; see the evidence for the packets and states that show why.","evidence":[{ev}],"remedy":"Check that the service on {dst} is running and reachable from {src}; for Spark set spark.shuffle.io.maxRetries=10 and spark.shuffle.io.retryWait=15s while it is fixed.","count":{count},"first_ts":"{ts}","last_ts":"{ts}"}}"#,
        pid = 4000 + n % 30,
        ev = evidence(ts, src, dst, 2 + n % 5),
        count = 1 + n % 7,
    )
}

fn stats(ts: &str, node: &str, n: u64) -> String {
    format!(
        r#"{{"type":"stats","v":1,"ts":"{ts}","node":"{node}","events":{e},"findings":{f},"finding_lines":{f},"decode_errors":0,"lost_events":{lost},"owner_table_full":0,"listener_table_full":0,"read_failed":0,"activity_table_full":0,"repeat_table_full":0,"recursion_misses":0,"flows":120,"flow_evictions":0,"trace_bytes":{b},"trace_files_deleted":0,"trace_write_errors":0,"clean_flows":{e},"clean_flows_unattributed":0,"clean_flows_by_port":[{{"port":7337,"side":"client","count":{e},"total_ms":{b},"max_ms":900}}],"repeats_counted":0}}"#,
        e = n * 4,
        f = n,
        lost = n / 1000,
        b = n * 600,
    )
}

/// Writes about `size` bytes of trace lines (whole lines; a little more, never less).
pub fn write(out: &mut impl Write, size: u64) -> io::Result<Written> {
    let mut written = Written::default();
    let line = |out: &mut dyn Write, text: String, w: &mut Written| -> io::Result<()> {
        out.write_all(text.as_bytes())?;
        out.write_all(b"\n")?;
        w.bytes += text.len() as u64 + 1;
        Ok(())
    };
    for k in 1..=NODES {
        let start = format!(
            r#"{{"type":"start","v":1,"ts":"{}","node":"exec-node-{k}","version":"0.1.0","kernel":"6.12.48","ports":[7077,7337,9083,10000],"attached":["inet_sock_set_state","tcp_retransmit_skb"],"missing":[],"unavailable":[],"nat_idle_s":350.0,"nat_idle_profile":"aws"}}"#,
            ts(0)
        );
        line(out, start, &mut written)?;
    }
    let mut n: u64 = 0;
    while written.bytes < size {
        n += 1;
        // A fixed xorshift sequence: varied, and the same file every time.
        let mut r = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        r ^= r >> 29;
        let time = ts(n * 10);
        let node = format!("exec-node-{}", 1 + r % NODES);
        let src = format!("10.0.{}.{}:{}", r % NODES, 10 + r % 200, 32768 + n % 28000);
        let dst = format!(
            "10.1.0.{}:{}",
            1 + (r >> 8) % 20,
            PORTS[((r >> 16) % 4) as usize]
        );
        let text = match r % 100 {
            0 => {
                written.stats += 1;
                stats(&time, &node, n)
            }
            1..=20 => {
                written.findings += 1;
                finding(&time, &node, n, KINDS[((r >> 24) % 8) as usize], &src, &dst)
            }
            k => {
                written.events += 1;
                let kind = ["state_change", "reset_received", "retransmit"][(k % 3) as usize];
                event(&time, &node, n, kind, &src, &dst)
            }
        };
        line(out, text, &mut written)?;
    }
    Ok(written)
}

/// How a child ended: its exit code (`None` when a signal ended it) and its peak RSS.
#[derive(Debug, Clone, Copy)]
pub struct Waited {
    pub code: Option<i32>,
    pub peak_rss_kib: i64,
}

/// Waits for `child`, polling so that a hang ends at `timeout` (the child is then killed and
/// `None` returned). The peak RSS is the child's own (`wait4`), and Linux counts in it the
/// spawning process's peak RSS at spawn time: keep the spawning process small
/// (`own_peak_rss_kib`).
pub fn wait_measured(child: &mut Child, timeout: Duration) -> Option<Waited> {
    let pid = child.id() as libc::pid_t;
    let deadline = Instant::now() + timeout;
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: pid is our child, not yet reaped; the pointers are valid for the call.
        let reaped = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if reaped == pid {
            return Some(Waited {
                code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
                peak_rss_kib: usage.ru_maxrss,
            });
        }
        assert_eq!(reaped, 0, "wait4: {}", io::Error::last_os_error());
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// This process's own peak RSS (VmHWM), in KiB.
pub fn own_peak_rss_kib() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
