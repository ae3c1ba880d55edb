//! Reading a guest's log back: scenario outcomes, the degraded kernel's verdict, failures
//! and the summary table.

use std::{collections::BTreeMap, time::Duration};

use anyhow::Result;
use serde_json::Value;

use super::*;

/// What the degraded start-up check captured: `shuffletrace --format json --duration 5s`.
#[derive(Default)]
pub(super) struct DegradedRun {
    pub(super) exit_code: Option<i32>,
    pub(super) stderr: String,
    /// The `start` line from stdout, if one was printed.
    pub(super) start_line: Option<String>,
}

/// The expectation for a degraded kernel (5.10): either the tracer refuses to run there with
/// a clear message (non-zero exit before any start line, stderr naming the kernel version),
/// or it runs degraded (exit 0 and a `start` line whose `missing` is not empty). Never exit 0
/// without a start line; a tracer killed after the guest's timeout (`exit_code` None) fails.
/// Edit this function to change what 5.10 must do.
pub(super) fn degraded_verdict(
    run: &DegradedRun,
    series: &str,
    release: &str,
) -> Result<String, String> {
    let Some(code) = run.exit_code else {
        return Err("the tracer did not finish (killed at the guest's timeout, or not run)".into());
    };
    match (code, run.start_line.as_deref()) {
        (0, None) => Err("exit 0 without a start line".into()),
        (0, Some(start)) => {
            let missing = serde_json::from_str::<Value>(start)
                .ok()
                .and_then(|start| start["missing"].as_array().map(Vec::len));
            match missing {
                Some(n) if n > 0 => Ok(format!("ran degraded: {n} program(s) missing")),
                Some(_) => Err("exit 0 with nothing missing: not degraded".into()),
                None => Err(format!("a start line without a missing array: {start}")),
            }
        }
        (code, Some(_)) => Err(format!("exit {code} after it had started")),
        (code, None) => {
            let names_kernel = mentions_version(&run.stderr, series)
                || (!release.is_empty() && run.stderr.contains(release));
            if names_kernel {
                Ok(format!("refused with exit {code}, naming the kernel"))
            } else {
                Err(format!(
                    "exit {code}, but stderr does not name the kernel ({series} / {release})"
                ))
            }
        }
    }
}

/// Whether `text` names kernel `series` ("5.10") as a version of its own: not inside a
/// longer number such as a log timestamp's "15.103".
pub(super) fn mentions_version(text: &str, series: &str) -> bool {
    text.match_indices(series).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + series.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_digit() || c == '.')
            && !after.is_some_and(|c| c.is_ascii_digit())
    })
}

/// A scenario's result in one guest.
pub(super) struct Outcome {
    pub(super) passed: bool,
    pub(super) seconds: f64,
    /// The test's output when it failed.
    pub(super) output: String,
}

/// One kernel's results, read from its serial log.
pub(super) struct Report {
    pub(super) kernel: String,
    pub(super) package: String,
    pub(super) mode: Mode,
    pub(super) release: Option<String>,
    pub(super) boot_s: Option<f64>,
    pub(super) wall: Option<Duration>,
    pub(super) outcomes: BTreeMap<String, Outcome>,
    /// Problems that fail the kernel whatever the scenarios say.
    pub(super) problems: Vec<String>,
    pub(super) notes: Vec<String>,
    pub(super) degraded: Option<Result<String, String>>,
    pub(super) log_path: String,
}

impl Report {
    pub(super) fn new(kernel: &Kernel, scenarios: &[&Scenario], run: Result<GuestRun>) -> Self {
        let mut report = Self {
            kernel: kernel.spec.name.to_owned(),
            package: format!("{} {}", kernel.package, kernel.version),
            mode: kernel.spec.mode,
            release: None,
            boot_s: None,
            wall: None,
            outcomes: BTreeMap::new(),
            problems: Vec::new(),
            notes: Vec::new(),
            degraded: None,
            log_path: format!("target/vm/logs/{}.log", kernel.spec.name),
        };
        let run = match run {
            Ok(run) => run,
            Err(error) => {
                report.problems.push(format!("{error:#}"));
                return report;
            }
        };
        report.wall = Some(run.wall);
        if let Some(reason) = &run.killed {
            report.problems.push(format!("guest killed: {reason}"));
        }
        report.read_log(&run.log);
        if !run.log.contains("VMTEST-DONE") && run.killed.is_none() {
            report
                .problems
                .push("the guest stopped before finishing (see the log's end)".into());
        }
        for s in scenarios
            .iter()
            .filter(|s| !kernel.spec.skip.contains(&s.name))
        {
            if !report.outcomes.contains_key(s.name) {
                report
                    .problems
                    .push(format!("scenario {} did not run", s.name));
            }
        }
        match kernel.spec.mode {
            Mode::Full => {}
            Mode::Degraded => {
                let run = parse_degraded(&run.log);
                let release = report.release.clone().unwrap_or_default();
                report.notes.push(format!(
                    "exit code {}; start line: {}",
                    run.exit_code
                        .map_or_else(|| "none".to_owned(), |c| c.to_string()),
                    run.start_line.as_deref().unwrap_or("none")
                ));
                for line in run.stderr.lines() {
                    report.notes.push(format!("stderr: {line}"));
                }
                report.degraded = Some(degraded_verdict(&run, kernel.spec.series, &release));
            }
        }
        report
    }

    pub(super) fn read_log(&mut self, log: &str) {
        // "VMTEST-VERIFIER NAME verified in 1.2ms (N instructions processed)"
        let verified: Vec<String> = log
            .lines()
            .filter_map(|l| l.strip_prefix("VMTEST-VERIFIER "))
            .filter_map(|l| {
                let name = l.split_whitespace().next()?;
                let insns = l.rsplit_once('(')?.1.split_whitespace().next()?;
                Some(format!("{name} {insns}"))
            })
            .collect();
        if !verified.is_empty() {
            self.notes.push(format!(
                "verifier, instructions processed: {}",
                verified.join(", ")
            ));
        }
        let mut lines = log.lines();
        while let Some(line) = lines.next() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("VMTEST-BOOT") => {
                    for word in words {
                        if let Some(r) = word.strip_prefix("release=") {
                            self.release = Some(r.to_owned());
                        } else if let Some(u) = word.strip_prefix("uptime=") {
                            self.boot_s = u.parse().ok();
                        }
                    }
                }
                Some("VMTEST-MODULE-FAIL") => {
                    let module = words.next().unwrap_or("?");
                    let error = words.collect::<Vec<_>>().join(" ");
                    self.problems
                        .push(format!("module {module} did not load: {error}"));
                }
                Some("VMTEST-START") => {
                    let start = line.trim_start_matches("VMTEST-START").trim();
                    self.notes.push(format!("tracer start line: {start}"));
                }
                Some("VMTEST-RETRY-OUTPUT-BEGIN") => {
                    // The first failure of a scenario that was run again: a note with its
                    // reason; the second run decides.
                    let scenario = words.next().unwrap_or("").to_owned();
                    let end = format!("VMTEST-RETRY-OUTPUT-END {scenario}");
                    let output: Vec<&str> = lines.by_ref().take_while(|l| *l != end).collect();
                    self.notes.push(format!(
                        "{scenario} failed once and was run again: {}",
                        failure_reason(&output.join("\n"))
                    ));
                }
                Some("VMTEST-OUTPUT-BEGIN") => {
                    let scenario = words.next().unwrap_or("").to_owned();
                    let end = format!("VMTEST-OUTPUT-END {scenario}");
                    let output: Vec<&str> = lines.by_ref().take_while(|l| *l != end).collect();
                    self.outcomes.insert(
                        scenario,
                        Outcome {
                            passed: false,
                            seconds: 0.0,
                            output: output.join("\n"),
                        },
                    );
                }
                Some("VMTEST") => {
                    let (Some(scenario), Some(verdict), Some(seconds)) =
                        (words.next(), words.next(), words.next())
                    else {
                        continue;
                    };
                    let outcome =
                        self.outcomes
                            .entry(scenario.to_owned())
                            .or_insert_with(|| Outcome {
                                passed: false,
                                seconds: 0.0,
                                output: String::new(),
                            });
                    outcome.passed = verdict == "PASS";
                    outcome.seconds = seconds.parse().unwrap_or(0.0);
                }
                _ => {}
            }
        }
    }

    pub(super) fn passed(&self) -> bool {
        self.problems.is_empty()
            && self.outcomes.values().all(|o| o.passed)
            && self.degraded.as_ref().is_none_or(Result::is_ok)
    }
}

pub(super) fn parse_degraded(log: &str) -> DegradedRun {
    let mut run = DegradedRun::default();
    let mut lines = log.lines();
    while let Some(line) = lines.next() {
        if let Some(code) = line.strip_prefix("VMTEST-DEGRADED-EXIT ") {
            run.exit_code = code.trim().parse().ok();
        } else if line == "VMTEST-STDERR-BEGIN" {
            let stderr: Vec<&str> = lines
                .by_ref()
                .take_while(|l| *l != "VMTEST-STDERR-END")
                .collect();
            run.stderr = stderr.join("\n");
        } else if let Some(start) = line.strip_prefix("VMTEST-DEGRADED-START ") {
            run.start_line = (start.trim() != "none").then(|| start.trim().to_owned());
        }
    }
    run
}

/// Why a test failed, in one line: the panic message (with an assertion's left and right),
/// or the output's last line.
pub(super) fn failure_reason(output: &str) -> String {
    const MAX: usize = 240;
    let lines: Vec<&str> = output.lines().map(str::trim).collect();
    let reason = match lines.iter().position(|l| l.contains("panicked at")) {
        // "thread 'x' panicked at file:line:col:", the message on the next line, then (after
        // whatever the message dumps) an assertion's "left: ..." and "right: ...".
        Some(i) => {
            let rest = lines[i + 1..]
                .iter()
                .take_while(|l| !l.starts_with("note:") && !l.starts_with("failures:"));
            let mut parts: Vec<&str> = lines.get(i + 1).copied().into_iter().collect();
            parts.extend(rest.filter(|l| l.starts_with("left:") || l.starts_with("right:")));
            parts.join(" ")
        }
        None => lines
            .iter()
            .rev()
            .find(|l| !l.is_empty())
            .map_or_else(|| "no output".to_owned(), |l| (*l).to_owned()),
    };
    if reason.chars().count() > MAX {
        let cut: String = reason.chars().take(MAX).collect();
        format!("{cut}...")
    } else {
        reason
    }
}

/// Lines of a failing test's output shown on the terminal (the rest is in the log).
pub(super) const SHOWN_OUTPUT_LINES: usize = 40;

pub(super) fn print_failures(reports: &[Report]) {
    for report in reports {
        for (scenario, outcome) in report.outcomes.iter().filter(|(_, o)| !o.passed) {
            eprintln!("\n==== {} / {scenario}: FAIL ====", report.kernel);
            let lines: Vec<&str> = outcome.output.lines().collect();
            for line in lines.iter().take(SHOWN_OUTPUT_LINES) {
                eprintln!("  {line}");
            }
            if lines.len() > SHOWN_OUTPUT_LINES {
                eprintln!(
                    "  ... {} more lines in {}",
                    lines.len() - SHOWN_OUTPUT_LINES,
                    report.log_path
                );
            }
        }
        for problem in &report.problems {
            eprintln!("\n==== {}: {problem} ({})", report.kernel, report.log_path);
        }
    }
}

pub(super) fn print_summary(reports: &[Report], scenarios: &[&Scenario]) {
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let mut row = |label: &str, f: &dyn Fn(&Report) -> String| {
        rows.push((label.to_owned(), reports.iter().map(f).collect()));
    };
    row("kernel", &|r| r.kernel.clone());
    row("uname -r", &|r| {
        r.release.clone().unwrap_or_else(|| "?".into())
    });
    row("boot (to /init)", &|r| {
        r.boot_s.map_or_else(|| "?".into(), |s| format!("{s:.1} s"))
    });
    row("wall", &|r| {
        r.wall
            .map_or_else(|| "?".into(), |w| format!("{:.0} s", w.as_secs_f64()))
    });
    for s in scenarios {
        row(s.name, &|r| match (r.mode, r.outcomes.get(s.name)) {
            (Mode::Degraded, None) => "skipped".into(),
            (Mode::Full, None) => "NOT RUN".into(),
            (_, Some(o)) => {
                let verdict = if o.passed { "PASS" } else { "FAIL" };
                format!("{verdict} {:.1} s", o.seconds)
            }
        });
    }
    row("degraded check", &|r| match &r.degraded {
        None => "-".into(),
        Some(Ok(_)) => "PASS".into(),
        Some(Err(_)) => "FAIL".into(),
    });
    row("result", &|r| {
        if r.passed() { "PASS" } else { "FAIL" }.into()
    });

    let label_width = rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0) + 2;
    let widths: Vec<usize> = (0..reports.len())
        .map(|i| rows.iter().map(|(_, c)| c[i].len()).max().unwrap_or(0) + 2)
        .collect();
    println!();
    for (label, cells) in &rows {
        let mut line = format!("{label:<label_width$}");
        for (cell, width) in cells.iter().zip(&widths) {
            line.push_str(&format!("{cell:<width$}"));
        }
        println!("{}", line.trim_end());
    }
    println!();

    for report in reports {
        println!("{} ({}):", report.kernel, report.package);
        for note in &report.notes {
            println!("  {note}");
        }
        match &report.degraded {
            Some(Ok(why)) => println!("  degraded check passed: {why}"),
            Some(Err(why)) => println!("  degraded check FAILED: {why}"),
            None => {}
        }
        for (scenario, outcome) in report.outcomes.iter().filter(|(_, o)| !o.passed) {
            println!("  {scenario}: {}", failure_reason(&outcome.output));
        }
        for problem in &report.problems {
            println!("  {problem}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_drop_path_and_compression() {
        assert_eq!(
            module_name("kernel/net/netfilter/xt_owner.ko.xz").as_deref(),
            Some("xt_owner")
        );
        assert_eq!(
            module_name("kernel/arch/x86/crypto/crc32c-intel.ko").as_deref(),
            Some("crc32c_intel")
        );
        assert_eq!(module_name("kernel/x/.ko"), None);
    }

    #[test]
    fn every_scenario_names_a_built_target() {
        for s in SCENARIOS {
            assert!(TEST_TARGETS.contains(&s.binary), "{}", s.name);
        }
        for name in DEFAULT_KERNELS {
            assert!(KERNELS.iter().any(|k| k.name == *name), "{name}");
        }
    }

    #[test]
    fn failure_reason_is_the_panic_message_with_left_and_right() {
        let output = "running 1 test\n\
            thread 't' (12) panicked at tests/live.rs:100:9:\n\
            assertion `left == right` failed: target 10.0.0.2:7337\n\
            {\"type\":\"start\"}\n\
            \n\
            \x20 left: Null\n\
            \x20right: \"NO_SOCKET\"\n\
            note: run with `RUST_BACKTRACE=1`\n";
        assert_eq!(
            failure_reason(output),
            "assertion `left == right` failed: target 10.0.0.2:7337 left: Null right: \"NO_SOCKET\""
        );
        assert_eq!(
            failure_reason("test x ...\n(killed after 300 s)\n"),
            "(killed after 300 s)"
        );
    }

    #[test]
    fn degraded_log_is_read_back() {
        let log = "VMTEST-DEGRADED-EXIT 1\nVMTEST-STDERR-BEGIN\nError: kernel 5.10 lacks x\n\
            VMTEST-STDERR-END\nVMTEST-DEGRADED-START none\n";
        let run = parse_degraded(log);
        assert_eq!(run.exit_code, Some(1));
        assert_eq!(run.stderr, "Error: kernel 5.10 lacks x");
        assert_eq!(run.start_line, None);
    }

    #[test]
    fn degraded_verdict_accepts_a_clear_refusal_or_a_degraded_run_only() {
        let run = |code, stderr: &str, start: Option<&str>| DegradedRun {
            exit_code: code,
            stderr: stderr.to_owned(),
            start_line: start.map(str::to_owned),
        };
        let verdict = |r: &DegradedRun| degraded_verdict(r, "5.10", "5.10.0-46-cloud-amd64");
        let started = r#"{"type":"start","missing":[]}"#;
        assert!(verdict(&run(Some(1), "kernel 5.10.0-46", Some(started))).is_err());
        assert!(verdict(&run(Some(1), "needs 5.15, this is 5.10.0-46", None)).is_ok());
        assert!(verdict(&run(Some(1), "failed", None)).is_err());
        // A timestamp is not a kernel version.
        assert!(verdict(&run(Some(1), "12:41:15.103Z failed", None)).is_err());
        let degraded = r#"{"type":"start","missing":[{"tracepoint":"x"}]}"#;
        assert!(verdict(&run(Some(0), "", Some(degraded))).is_ok());
        let complete = r#"{"type":"start","missing":[]}"#;
        assert!(verdict(&run(Some(0), "", Some(complete))).is_err());
        assert!(verdict(&run(Some(0), "", None)).is_err());
        assert!(verdict(&run(None, "", None)).is_err());
    }
}
