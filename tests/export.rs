//! Root integration tests of 24/7 operation: trace-file rotation under real traffic keeps
//! every line exactly once, SIGTERM right after a burst loses no finding, and a Prometheus
//! scrape over HTTP returns the right counts.

mod support;

use std::{
    collections::HashMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use support::{Topology, Tracer, dump, refused_burst};

// Each test here uses its own port: the tests run in parallel and a tracer sees every
// namespace.

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("st-export-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn rotation_under_traffic_keeps_every_line_exactly_once() {
    let topo = Topology::new();
    let dir = temp_dir("rotation");
    let tracer = Tracer::start_with(&[
        "--ports",
        "7337",
        "--trace-dir",
        dir.to_str().unwrap(),
        "--trace-max-size",
        "4KiB",
        "--trace-keep",
        "1000",
        // No folding: every refusal sent and printed on its own, enough lines to rotate.
        "--aggregate-window",
        "1ns",
    ]);
    refused_burst(&topo, 7337, 40);
    support::settle();
    let stdout = tracer.stop();
    let files: Vec<PathBuf> = {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files
    };
    assert!(files.len() > 3, "rotated into several files: {files:?}");
    let mut in_files: HashMap<String, usize> = HashMap::new();
    let mut starts = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        assert!(
            text.len() <= 4096 + 2048,
            "{} is {} bytes",
            file.display(),
            text.len()
        );
        for (n, line) in text.lines().enumerate() {
            let value: Value = serde_json::from_str(line).unwrap();
            if value["type"] == "start" {
                assert_eq!(n, 0, "the start line heads a file");
                starts += 1;
                continue;
            }
            *in_files.entry(line.to_owned()).or_default() += 1;
        }
    }
    assert_eq!(
        starts,
        files.len(),
        "every file starts with the run's start line"
    );
    let expected: Vec<String> = stdout
        .iter()
        .filter(|v| v["type"] != "start")
        .map(|v| v.to_string())
        .collect();
    // serde_json re-serialises objects with sorted keys; compare as parsed values.
    let in_files: HashMap<Value, usize> = in_files
        .into_iter()
        .map(|(line, n)| (serde_json::from_str::<Value>(&line).unwrap(), n))
        .fold(HashMap::new(), |mut acc, (v, n)| {
            *acc.entry(v).or_default() += n;
            acc
        });
    assert_eq!(
        in_files.values().sum::<usize>(),
        expected.len(),
        "no extra lines"
    );
    for line in &expected {
        let value: Value = serde_json::from_str(line).unwrap();
        assert_eq!(in_files.get(&value), Some(&1), "exactly once: {line}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sigterm_right_after_a_burst_loses_no_finding() {
    let topo = Topology::new();
    let mut child = Command::new(env!("CARGO_BIN_EXE_shuffletrace"))
        .args(["--format", "json", "--findings-only", "--ports", "10000"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    // Wait for the start line.
    let mut first = [0u8; 1];
    stdout.read_exact(&mut first).unwrap();
    let burst = 200;
    refused_burst(&topo, 10000, burst);
    // No settling: the findings are still in the ring buffer and the aggregation windows.
    // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert!(child.wait().unwrap().success());
    let lines: Vec<Value> = rest
        .lines()
        .skip(1)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let refused = support::total_count(&support::findings(&lines, "connect_refused"));
    assert_eq!(refused, burst as u64, "{}", dump(&lines));
    let stats = lines.last().unwrap();
    assert_eq!(stats["type"], "stats");
    assert_eq!(stats["lost_events"], 0);
}

fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, response)
}

#[test]
fn metrics_scrape_returns_the_counts() {
    let topo = Topology::new();
    let addr: SocketAddr = format!("127.0.0.1:{}", 19000 + std::process::id() % 1000)
        .parse()
        .unwrap();
    let tracer = Tracer::start_with(&[
        "--ports",
        "9083",
        "--metrics-addr",
        &addr.to_string(),
        "--aggregate-window",
        "200ms",
    ]);
    refused_burst(&topo, 9083, 3);
    // Housekeeping closes the aggregation windows and updates the gauges.
    std::thread::sleep(Duration::from_millis(1500));
    let (status, health) = http_get(addr, "/healthz");
    assert_eq!(status, 200, "{health}");
    let (status, metrics) = http_get(addr, "/metrics");
    assert_eq!(status, 200);
    let lines = tracer.stop();
    for expected in [
        "shuffletrace_findings_total{kind=\"connect_refused\",port=\"9083\"} 3",
        "shuffletrace_flow_table_evictions_total 0",
    ] {
        assert!(
            metrics.contains(expected),
            "{expected} in:\n{metrics}\n{}",
            dump(&lines)
        );
    }
    // Each refusal was either sent (a RST and an error report) or, repeating one within the
    // aggregation window, counted in the kernel.
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0)
    };
    let counted =
        value("shuffletrace_repeats_counted_total{kind=\"connect_refused\",port=\"9083\"}");
    let sent = value("shuffletrace_events_total{event=\"reset_received\"}");
    assert_eq!(sent + counted, 3, "{metrics}");
    assert_eq!(
        value("shuffletrace_events_total{event=\"socket_error\"}"),
        sent,
        "{metrics}"
    );
    assert!(sent >= 1, "the first refusal is sent in full: {metrics}");
}
