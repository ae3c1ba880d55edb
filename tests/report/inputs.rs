//! `report` on the inputs of the bad-input campaign of issue 17: time flags past the epoch,
//! FIFOs and devices, over-long and non-UTF-8 lines, a cut `.gz`, empty input, and a trace
//! large enough that buffering it shows in the peak RSS. Every run is bounded in time (a hang
//! fails the test instead of hanging it) and its child's own peak RSS comes from `wait4`.

use std::{
    ffi::{CString, OsStr},
    fs::File,
    io::{Read as _, Write as _},
    os::unix::ffi::OsStrExt as _,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;

use super::{finding, stats, temp, write_trace};

#[path = "workload.rs"]
mod workload;

const TIMEOUT: Duration = Duration::from_secs(30);

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    peak_rss_mib: f64,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", self.stdout, self.stderr))
    }
}

/// Runs `shuffletrace report ARGS`, killed (and the test failed) after `TIMEOUT`.
fn report_bounded<S: AsRef<OsStr>>(args: &[S]) -> Run {
    let shown: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy()).collect();
    let mut child = Command::new(env!("CARGO_BIN_EXE_shuffletrace"))
        .arg("report")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let drain = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let Some(waited) = workload::wait_measured(&mut child, TIMEOUT) else {
        panic!("`shuffletrace report {shown:?}` still running after {TIMEOUT:?}: it hangs");
    };
    Run {
        code: waited.code,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
        peak_rss_mib: waited.peak_rss_kib as f64 / 1024.0,
    }
}

/// `report [--skip-bad] --format json PATH`.
fn json_report(path: &Path, skip_bad: bool) -> Run {
    let flags = ["--skip-bad", "--format", "json"];
    let mut args: Vec<&OsStr> = flags[usize::from(!skip_bad)..]
        .iter()
        .map(OsStr::new)
        .collect();
    args.push(path.as_os_str());
    report_bounded(&args)
}

fn fresh_dir(name: &str) -> std::path::PathBuf {
    let dir = temp(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn mkfifo(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
}

fn no_panic(run: &Run) {
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    assert_ne!(run.code, Some(101), "{}", run.stderr);
}

#[test]
fn times_past_the_epoch_are_clamped_or_refused_never_a_panic() {
    let dir = temp("times");
    write_trace(&dir);
    let trace = dir.to_str().unwrap();
    // A --since further back than 1970 means everything.
    for since in ["60y", "18446744073709551615s"] {
        let run = report_bounded(&["--format", "json", "--since", since, trace]);
        no_panic(&run);
        assert_eq!(run.code, Some(0), "--since {since}: {}", run.stderr);
        assert_eq!(run.json()["findings"], 6, "--since {since}");
    }
    // An --until before 1970 selects nothing a trace can hold: a usage error.
    for until in ["100y", "18446744073709551615s"] {
        let run = report_bounded(&["--until", until, trace]);
        no_panic(&run);
        assert_eq!(run.code, Some(2), "--until {until}: {}", run.stderr);
        for word in ["--until", until, "1970-01-01T00:00:00Z"] {
            assert!(run.stderr.contains(word), "{word} in {}", run.stderr);
        }
        assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);
        assert!(run.stdout.is_empty());
    }
    let run = report_bounded(&["--until", "1960-01-01T00:00:00Z", trace]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(
        run.stderr.contains("9999-12-31T23:59:59Z"),
        "{}",
        run.stderr
    );
    let run = report_bounded(&[
        "--since",
        "2026-11-22T10:05:00Z",
        "--until",
        "2026-11-22T10:00:00Z",
        trace,
    ]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("after --until"), "{}", run.stderr);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_fifo_or_a_device_is_refused_not_read() {
    let dir = fresh_dir("fifo");
    let fifo = dir.join("trace.ndjson");
    mkfifo(&fifo);
    for path in [fifo.as_path(), Path::new("/dev/zero")] {
        let run = report_bounded(&[path]);
        assert_eq!(run.code, Some(2), "{}: {}", path.display(), run.stderr);
        let message = format!("{}: not a regular file", path.display());
        assert!(run.stderr.contains(&message), "{}", run.stderr);
        assert!(run.stdout.is_empty());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_directory_walk_skips_and_counts_what_is_not_a_regular_file() {
    let dir = temp("fifo-dir");
    write_trace(&dir);
    let fifo = dir.join("shuffletrace-20261122T100100.000000000Z-000009.ndjson");
    mkfifo(&fifo);
    let run = json_report(&dir, false);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let value = run.json();
    assert_eq!(
        (value["findings"].as_u64(), value["skipped_inputs"].as_u64()),
        (Some(6), Some(1))
    );
    let warning = format!("{}: not a regular file", fifo.display());
    assert!(run.stderr.contains(&warning), "{}", run.stderr);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A bad line in the middle of good ones: named without `--skip-bad`, counted with it.
fn bad_line_case(name: &str, write_bad: impl FnOnce(&mut File), message: &str) -> Run {
    let dir = fresh_dir(name);
    let path = dir.join(format!("{name}.ndjson"));
    let good = stats("2026-11-22T10:01:00.000000000Z", 0).to_string();
    let mut file = File::create(&path).unwrap();
    writeln!(file, "{good}").unwrap();
    write_bad(&mut file);
    writeln!(file, "\n{good}").unwrap();
    drop(file);
    let run_strict = report_bounded(&[&path]);
    assert_eq!(run_strict.code, Some(2), "{}", run_strict.stderr);
    let expected = format!("{name}.ndjson:2: {message}");
    assert!(
        run_strict.stderr.contains(&expected),
        "{}",
        run_strict.stderr
    );
    assert!(run_strict.stdout.is_empty());
    let skipping = json_report(&path, true);
    assert_eq!(skipping.code, Some(0), "{}", skipping.stderr);
    assert_eq!(skipping.json()["skipped_lines"], 1, "{}", skipping.stderr);
    assert!(
        skipping.stderr.contains("skipped 1 unreadable"),
        "{}",
        skipping.stderr
    );
    std::fs::remove_dir_all(&dir).unwrap();
    skipping
}

#[test]
fn a_non_utf8_line_is_a_bad_line() {
    let latin1 = |file: &mut File| {
        let line = b"{\"type\":\"stats\",\"v\":1,\"node\":\"n\xe9ud\"}";
        file.write_all(line).unwrap();
    };
    bad_line_case("latin1", latin1, "not UTF-8");
}

#[test]
fn an_overlong_line_is_a_bad_line_read_without_buffering_it() {
    // Written a MiB at a time: the test process's own peak would count in the child's.
    let long = |file: &mut File| {
        file.write_all(b"{\"type\":\"stats\",\"v\":1,\"node\":\"")
            .unwrap();
        let mib = vec![b'x'; 1 << 20];
        for _ in 0..48 {
            file.write_all(&mib).unwrap();
        }
        file.write_all(b"\"}").unwrap();
    };
    let skipping = bad_line_case("long", long, "line longer than 1 MiB");
    assert!(
        skipping.peak_rss_mib < 32.0,
        "a 48 MiB line took {:.1} MiB (this test process's own peak: {} KiB)",
        skipping.peak_rss_mib,
        workload::own_peak_rss_kib()
    );
}

#[test]
fn a_cut_gz_yields_what_came_before_the_cut() {
    let dir = fresh_dir("cutgz");
    let path = dir.join("cut.ndjson.gz");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    for i in 0..3000u64 {
        let ts = format!("2026-11-22T10:{:02}:{:02}.000000000Z", i / 60 % 60, i % 60);
        let dst = format!("10.0.{}.{}:7337", i % 7, i % 200);
        let line = finding(i, &ts, "connect_refused", 1, "10.0.0.1:40001", &dst);
        writeln!(gz, "{line}").unwrap();
    }
    let bytes = gz.finish().unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();

    let strict = report_bounded(&[&path]);
    assert_eq!(strict.code, Some(2), "{}", strict.stderr);
    assert!(
        strict.stderr.contains("cut.ndjson.gz:"),
        "{}",
        strict.stderr
    );
    assert!(strict.stderr.contains("truncated"), "{}", strict.stderr);
    assert_eq!(strict.stderr.trim().lines().count(), 1, "{}", strict.stderr);

    let skipping = json_report(&path, true);
    assert_eq!(skipping.code, Some(0), "{}", skipping.stderr);
    let value = skipping.json();
    let findings = value["findings"].as_u64().unwrap();
    assert!(
        (100..3000).contains(&findings),
        "{findings} findings before the cut"
    );
    assert_eq!(value["truncated_inputs"], 1);
    assert!(
        skipping.stderr.contains("cut.ndjson.gz"),
        "{}",
        skipping.stderr
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn no_lines_at_all_is_said_not_reported() {
    let dir = fresh_dir("empty");
    let empty = dir.join("empty.ndjson");
    let blank = dir.join("blank.ndjson");
    std::fs::write(&empty, "").unwrap();
    std::fs::write(&blank, "\n\n  \n").unwrap();
    let run = report_bounded(&[&empty, &blank]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    let message = format!(
        "no lines in {}, {}: nothing to report",
        empty.display(),
        blank.display()
    );
    assert!(run.stderr.contains(&message), "{}", run.stderr);
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A memory bound, not a timing goal: `report` streams, so a 16 MiB trace costs no more
/// than the groups it finds (`cargo xtask bench-report` measures 64 MiB).
#[test]
fn report_memory_does_not_grow_with_the_input() {
    let dir = fresh_dir("memory");
    let path = dir.join("big.ndjson");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let written = workload::write(&mut file, 16 << 20).unwrap();
    file.flush().unwrap();
    drop(file);
    let run = json_report(&path, false);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(run.json()["findings"].as_u64().unwrap() >= written.findings);
    assert!(
        run.peak_rss_mib < 100.0,
        "peak RSS {:.1} MiB on a 16 MiB trace: report must stream (this test process's own \
         peak, which counts in a child's: {} KiB)",
        run.peak_rss_mib,
        workload::own_peak_rss_kib()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_gz_of_two_members_is_read_whole() {
    let dir = fresh_dir("members");
    let path = dir.join("two.ndjson.gz");
    let mut bytes = Vec::new();
    for (id, ts) in [
        (1, "2026-11-22T10:00:01.000000000Z"),
        (2, "2026-11-22T10:00:02.000000000Z"),
    ] {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let line = finding(
            id,
            ts,
            "connect_refused",
            1,
            "10.0.0.1:40001",
            "10.0.0.2:7337",
        );
        writeln!(gz, "{line}").unwrap();
        bytes.extend(gz.finish().unwrap());
    }
    std::fs::write(&path, bytes).unwrap();
    let run = json_report(&path, false);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(
        run.json()["findings"],
        2,
        "both gzip members (`cat a.gz b.gz`)"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Past each bound (1000 groups, 20 timeline lines, 64 processes a group), what is left
/// out is counted in the JSON and said in the Markdown.
#[test]
fn bounded_lists_count_and_show_what_they_leave_out() {
    let dir = fresh_dir("bounds");
    let path = dir.join("many.ndjson");
    let mut file = std::io::BufWriter::new(File::create(&path).unwrap());
    let ts = |i: u64| format!("2026-11-22T10:{:02}:{:02}.000000000Z", i / 60 % 60, i % 60);
    for i in 0..1005u64 {
        let dst = format!("10.{}.{}.1:7337", i / 250, i % 250);
        let line = finding(i, &ts(i), "connect_refused", 1, "10.9.0.1:40001", &dst);
        writeln!(file, "{line}").unwrap();
    }
    for i in 0..70u64 {
        let mut line = finding(
            2000 + i,
            &ts(i),
            "connect_refused",
            1,
            "10.9.0.1:40001",
            "10.0.0.1:7337",
        );
        line["pid"] = (5000 + i).into();
        writeln!(file, "{line}").unwrap();
    }
    file.flush().unwrap();
    drop(file);
    let run = json_report(&path, false);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let value = run.json();
    assert_eq!(value["findings"], 1075);
    assert_eq!(value["groups"].as_array().unwrap().len(), 1000);
    assert_eq!(value["groups_omitted"], 5);
    assert_eq!(value["timeline"].as_array().unwrap().len(), 20);
    assert_eq!(value["timeline_omitted"], 1055);
    let crowded = &value["groups"][0];
    assert_eq!(crowded["endpoint"], "10.0.0.1:7337");
    assert_eq!(crowded["processes"].as_array().unwrap().len(), 64);
    assert_eq!(crowded["processes_omitted"], 7);
    let markdown = report_bounded(&[&path]).stdout;
    for said in [
        "(+ 5 finding lines in further groups, not shown: the report keeps 1000)",
        "1055 later finding lines are not in the timeline (it shows the first 20)",
        "(+ 7 lines naming other processes)",
    ] {
        assert!(markdown.contains(said), "{said:?} not in the Markdown");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
