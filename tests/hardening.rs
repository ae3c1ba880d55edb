//! Root integration tests of running for months on a node: a hangup flushes like SIGTERM, a
//! reader that goes away leaves the trace files complete, trace files are private, the
//! metrics port cannot be flooded into hurting the tracer, a node without a cgroup v2 mount
//! still gets the cgroup_skb programs, and nonsense flags are refused with the flag named.

mod support;

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{Topology, refused_burst};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("st-hard-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Starts the tracer with stdout piped and waits for its start line.
fn start(args: &[&str]) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shuffletrace"))
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start shuffletrace");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert!(first.contains("\"start\""), "{first}");
    (child, stdout)
}

/// Every line of the trace files in `dir`.
fn trace_lines(dir: &Path) -> Vec<Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "ndjson"))
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn refused_count(lines: &[Value], port: u16) -> u64 {
    let to_port: Vec<&Value> = support::findings(lines, "connect_refused")
        .into_iter()
        .filter(|v| {
            v["dst"]
                .as_str()
                .is_some_and(|d| d.ends_with(&format!(":{port}")))
        })
        .collect();
    support::total_count(&to_port)
}

#[test]
fn a_hangup_drains_and_flushes_like_sigterm() {
    let topo = Topology::new();
    let dir = temp_dir("hup");
    let (mut child, mut stdout) = start(&[
        "--format",
        "json",
        "--findings-only",
        "--ports",
        "10001",
        "--trace-dir",
        dir.to_str().unwrap(),
    ]);
    refused_burst(&topo, 10001, 300);
    // The ssh session that ran `sudo shuffletrace` dropped.
    // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert!(child.wait().unwrap().success(), "exit 0 after SIGHUP");
    let lines: Vec<Value> = rest
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(refused_count(&lines, 10001), 300, "{rest}");
    assert_eq!(
        lines.last().unwrap()["type"],
        "stats",
        "the final stats line"
    );
    let traced = trace_lines(&dir);
    assert_eq!(refused_count(&traced, 10001), 300);
    assert_eq!(traced.last().unwrap()["type"], "stats");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_reader_that_goes_away_leaves_the_trace_files_complete() {
    let topo = Topology::new();
    let dir = temp_dir("epipe");
    let (mut child, stdout) = start(&[
        "--format",
        "json",
        "--findings-only",
        "--ports",
        "10000",
        "--aggregate-window",
        "30s",
        "--trace-dir",
        dir.to_str().unwrap(),
    ]);
    drop(stdout); // `shuffletrace | head -1` after its line
    refused_burst(&topo, 10000, 50);
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "it stops once stdout is gone");
        std::thread::sleep(Duration::from_millis(100));
    }
    let traced = trace_lines(&dir);
    assert_eq!(
        refused_count(&traced, 10000),
        50,
        "pending counts reach the trace"
    );
    assert_eq!(
        traced.last().unwrap()["type"],
        "stats",
        "and the final stats line"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn trace_files_are_private_and_text_stats_are_printed() {
    let dir = temp_dir("perm").join("new");
    // Text format: the start line goes to the log, so there is nothing to wait for on stdout.
    let mut child = Command::new(env!("CARGO_BIN_EXE_shuffletrace"))
        .args([
            "--format",
            "text",
            "--ports",
            "10000",
            "--stats-interval",
            "1s",
        ])
        .args(["--trace-dir", dir.to_str().unwrap()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start shuffletrace");
    let mut stdout = child.stdout.take().unwrap();
    std::thread::sleep(Duration::from_millis(3500));
    // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut text = String::new();
    stdout.read_to_string(&mut text).unwrap();
    assert!(child.wait().unwrap().success());
    assert!(
        text.lines().filter(|l| l.starts_with("--- stats")).count() >= 2,
        "periodic and final stats in text format: {text}"
    );
    assert!(text.contains("program runs skipped"), "{text}");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700, "a directory it creates");
    for file in std::fs::read_dir(&dir).unwrap() {
        assert_eq!(mode(&file.unwrap().path()), 0o600);
    }
    std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
}

#[test]
fn a_flood_of_idle_metrics_connections_is_bounded_and_scrapes_still_work() {
    let addr = "127.0.0.1:19464";
    let (mut child, mut stdout) = start(&[
        "--format",
        "json",
        "--ports",
        "10000",
        "--metrics-addr",
        addr,
    ]);
    let fds = |pid: u32| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    let before = fds(child.id());
    let idle: Vec<TcpStream> = (0..500)
        .filter_map(|_| TcpStream::connect(addr).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let during = fds(child.id());
    assert!(
        during <= before + 20,
        "{during} descriptors with 500 idle connections (was {before})"
    );
    // The idle ones are dropped within seconds; a scrape is answered.
    std::thread::sleep(Duration::from_secs(6));
    let mut scrape = TcpStream::connect(addr).unwrap();
    scrape
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    scrape.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    // A family appears once it has a series: the events' only with traffic on the port, which
    // this test makes none of; the flow table's gauge is always served.
    assert!(answer.contains("shuffletrace_flow_table_size"), "{answer}");
    drop(idle);
    // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert!(child.wait().unwrap().success());
}

#[test]
fn a_node_without_a_cgroup2_mount_still_gets_the_cgroup_skb_programs() {
    // A cgroup-v1-only node: no cgroup2 in the mount table. The tracer mounts its own.
    let script = format!(
        "for m in $(awk '$9 == \"cgroup2\" {{print $5}}' /proc/self/mountinfo); do \
         umount -l \"$m\"; done; \
         ! grep -q ' - cgroup2 ' /proc/self/mountinfo || exit 9; \
         exec {} --format json --ports 10000 --duration 2s",
        env!("CARGO_BIN_EXE_shuffletrace")
    );
    let output = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("unshare");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let start: Value = serde_json::from_str(
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    let attached: Vec<&str> = start["attached"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p.as_str())
        .collect();
    assert!(
        attached.contains(&"ingress_ttl") && attached.contains(&"egress_activity"),
        "{start}"
    );
}

#[test]
fn two_tracers_can_stand_for_two_nodes() {
    let output = Command::new(env!("CARGO_BIN_EXE_shuffletrace"))
        .args(["--format", "json", "--ports", "10000", "--duration", "1s"])
        .args(["--node-name", "spark-worker-2.example"])
        .env("NODE_NAME", "from-the-environment")
        .output()
        .unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    for line in stdout.lines() {
        let value: Value = serde_json::from_str(line).unwrap();
        assert_eq!(value["node"], "spark-worker-2.example", "{line}");
    }
    assert!(
        stdout.lines().count() >= 2,
        "start and stats lines: {stdout}"
    );
}

#[test]
fn nonsense_values_are_refused_naming_the_flag() {
    for (args, flag) in [
        (&["--max-flows", "0"][..], "--max-flows"),
        (&["--max-flows", "4294967295"][..], "--max-flows"),
        (&["--trace-keep", "0"][..], "--trace-keep"),
        (&["--host-root", "/nonexistent"][..], "--host-root"),
        (&["--node-name", "Node A"][..], "--node-name"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_shuffletrace"))
            .args(args)
            .args(["--duration", "1s"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
        assert!(output.stdout.is_empty(), "{args:?} started anyway");
    }
}
