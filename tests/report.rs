//! `shuffletrace report` on a trace these tests write (two rotated files, the second
//! gzipped): a golden Markdown file, JSON that matches its schema, and each kind of bad input.
//! Needs no privileges. `UPDATE_GOLDEN=1` rewrites the golden file. (The HTML report is
//! rendered by a browser in `tests/html.rs`.)

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::{Value, json};

#[path = "report/inputs.rs"]
mod inputs;

const NODE: &str = "exec-node-1";

fn finding(id: u64, ts: &str, kind: &str, count: u64, src: &str, dst: &str) -> Value {
    json!({
        "type": "finding", "v": 1, "id": id, "kind": kind, "severity": "error",
        "ts": ts, "node": NODE, "src": src, "dst": dst,
        "service": "Spark external shuffle service", "netns": 4026531840u64,
        "pid": 4242, "comm": "java", "uid": 185, "side": "client",
        "summary": format!("{kind} summary for {dst}."),
        "evidence": [
            {"ts": ts, "event": "state_change", "src": src, "dst": dst,
             "old_state": "CLOSE", "new_state": "SYN_SENT"},
            {"ts": ts, "event": "reset_received", "src": src, "dst": dst,
             "state": "SYN_SENT", "ttl": 63, "peer_ttl": 63}
        ],
        "remedy": format!("Fix {kind} on {dst}."),
        "count": count, "first_ts": ts, "last_ts": ts
    })
}

fn stats(ts: &str, lost: u64) -> Value {
    json!({
        "type": "stats", "v": 1, "ts": ts, "node": NODE, "events": 10, "findings": 5,
        "finding_lines": 2, "decode_errors": 0, "lost_events": lost, "owner_table_full": 0,
        "listener_table_full": 0, "read_failed": 0, "activity_table_full": 0,
        "recursion_misses": 0, "flows": 3, "flow_evictions": 0, "trace_bytes": 100,
        "trace_files_deleted": 0, "trace_write_errors": 0
    })
}

/// Two files as `--trace-dir` writes them: the first plain, the second (older rotations are
/// often compressed by log tooling) gzipped.
fn write_trace(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let start = json!({
        "type": "start", "v": 1, "ts": "2026-11-22T10:00:00.000000000Z", "node": NODE,
        "version": "0.1.0", "kernel": "6.18.44", "ports": [7337, 10000],
        "attached": ["inet_sock_set_state"], "missing": [], "nat_idle_s": 350.0,
        "nat_idle_profile": "aws"
    });
    let first = [
        start.clone(),
        finding(
            1,
            "2026-11-22T10:00:01.000000000Z",
            "connect_refused",
            1,
            "10.0.0.1:40001",
            "10.0.0.2:7337",
        ),
        stats("2026-11-22T10:01:00.000000000Z", 0),
    ];
    let second = [
        start,
        finding(
            2,
            "2026-11-22T10:00:11.000000000Z",
            "connect_refused",
            4,
            "10.0.0.1:40009",
            "10.0.0.2:7337",
        ),
        finding(
            3,
            "2026-11-22T10:02:00.000000000Z",
            "tls_mismatch",
            1,
            "10.0.0.1:40100",
            "10.0.0.3:7337",
        ),
        stats("2026-11-22T10:03:00.000000000Z", 3),
    ];
    let text = |lines: &[Value]| -> String { lines.iter().map(|l| format!("{l}\n")).collect() };
    std::fs::write(
        dir.join("shuffletrace-20261122T100000.000000000Z-000001.ndjson"),
        text(&first),
    )
    .unwrap();
    let file =
        std::fs::File::create(dir.join("shuffletrace-20261122T100200.000000000Z-000002.ndjson.gz"))
            .unwrap();
    let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    gz.write_all(text(&second).as_bytes()).unwrap();
    gz.finish().unwrap();
}

fn report(args: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_shuffletrace"))
        .arg("report")
        .args(args)
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("st-report-{name}-{}", std::process::id()))
}

#[test]
fn markdown_matches_the_golden_file() {
    let dir = temp("golden");
    write_trace(&dir);
    let (code, markdown, stderr) = report(&[dir.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stderr}");
    // File paths vary with the temp dir: compare with the directory replaced.
    let markdown = markdown.replace(dir.to_str().unwrap(), "TRACE_DIR");
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden/report.md");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &markdown).unwrap();
    }
    let expected = std::fs::read_to_string(&golden).unwrap();
    assert_eq!(
        markdown, expected,
        "run with UPDATE_GOLDEN=1 after an intended change"
    );
    assert!(markdown.contains("Evidence may be incomplete"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn json_report_matches_its_schema_and_filters_apply() {
    let dir = temp("json");
    write_trace(&dir);
    let (code, text, stderr) = report(&["--format", "json", dir.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stderr}");
    let value: Value = serde_json::from_str(&text).unwrap();
    let schema: Value = serde_json::from_str(include_str!("../schema/report.schema.json")).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    if let Err(error) = validator.validate(&value) {
        panic!("report JSON does not match its schema: {error}\n{text}");
    }
    assert_eq!(value["findings"], 6);
    assert_eq!(value["lost_events"], 3);
    assert_eq!(value["evidence_incomplete"], true);
    assert_eq!(value["ports"], json!([7337, 10000]));
    let refused = &value["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["kind"] == "connect_refused")
        .unwrap();
    assert_eq!(
        (refused["count"].as_u64(), refused["lines"].as_u64()),
        (Some(5), Some(2))
    );

    let (_, text, _) = report(&[
        "--format",
        "json",
        "--kind",
        "tls_mismatch",
        dir.to_str().unwrap(),
    ]);
    let value: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(value["findings"], 1);
    let (_, text, _) = report(&[
        "--format",
        "json",
        "--since",
        "2026-11-22T10:00:05Z",
        "--until",
        "2026-11-22T10:01:30Z",
        dir.to_str().unwrap(),
    ]);
    let value: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(value["findings"], 4);
    assert_eq!(value["lost_events"], 0);
    let (_, text, _) = report(&["--format", "json", "--port", "10000", dir.to_str().unwrap()]);
    let value: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(value["findings"], 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_input_names_the_file_and_line() {
    let dir = temp("bad");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let good = stats("2026-11-22T10:01:00.000000000Z", 0).to_string();
    let cases = [
        (
            "cut.ndjson",
            format!("{good}\n{}", &good[..good.len() / 2]),
            "cut.ndjson:2: truncated",
        ),
        (
            "junk.ndjson",
            format!("{good}\nnot json at all\n{good}\n"),
            "junk.ndjson:2: not JSON",
        ),
        (
            "future.ndjson",
            format!("{good}\n{}\n", good.replace("\"v\":1", "\"v\":2")),
            "future.ndjson:2: schema version 2",
        ),
    ];
    for (name, content, message) in cases {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        let (code, stdout, stderr) = report(&[path.to_str().unwrap()]);
        assert_eq!(code, Some(2), "{name}: {stderr}");
        assert!(stderr.contains(message), "{name}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(stdout.is_empty());
        let (code, stdout, stderr) =
            report(&["--skip-bad", "--format", "json", path.to_str().unwrap()]);
        assert_eq!(code, Some(0), "{name}: {stderr}");
        let value: Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(value["skipped_lines"], 1, "{name}");
        // The warning goes to a pipe here, not a terminal: plain text, no colour codes.
        assert!(stderr.contains("skipped 1 unreadable"), "{name}: {stderr}");
        assert!(!stderr.contains('\x1b'), "{name}: ANSI codes in {stderr:?}");
    }
    let (code, _, stderr) = report(&[dir.join("missing.ndjson").to_str().unwrap()]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("no such file"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}
