//! `shuffletrace report FILE_OR_DIR...`: a ticket-ready summary of trace files (or any saved
//! `--format json` output): header, findings grouped by kind and destination, a timeline,
//! evidence excerpts, remedies, and whether evidence was lost.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::Value;

use crate::{cli::ReportArgs, config::ReportFormat, error::BadInput, sinks::SCHEMA_VERSION};

mod input;
mod lines;
mod markdown;
mod time;

#[cfg(test)]
use input::parse_line;
pub use markdown::markdown;

/// Lines shown in the timeline, and evidence items per group.
const TIMELINE: usize = 20;
const EVIDENCE: usize = 5;

#[derive(Serialize, Default, Debug, PartialEq)]
pub struct Report {
    #[serde(rename = "type")]
    line_type: &'static str,
    v: u32,
    files: Vec<String>,
    nodes: Vec<String>,
    from: Option<String>,
    to: Option<String>,
    ports: Vec<u64>,
    kernels: Vec<String>,
    versions: Vec<String>,
    findings: u64,
    groups: Vec<Group>,
    timeline: Vec<TimelineEntry>,
    lost_events: u64,
    evidence_incomplete: bool,
    skipped_lines: u64,
    skipped_inputs: u64,
    truncated_inputs: u64,
}

#[derive(Serialize, Debug, PartialEq)]
struct Group {
    kind: String,
    severity: String,
    endpoint: String,
    service: Option<String>,
    count: u64,
    lines: u64,
    first_ts: String,
    last_ts: String,
    nodes: Vec<String>,
    processes: Vec<String>,
    summary: String,
    remedy: String,
    evidence: Vec<Value>,
}

#[derive(Serialize, Debug, PartialEq)]
struct TimelineEntry {
    ts: String,
    kind: String,
    node: String,
    src: String,
    dst: String,
    process: String,
    count: u64,
}

fn text(value: &Value, key: &str) -> String {
    value[key].as_str().unwrap_or_default().to_owned()
}

fn process(value: &Value) -> String {
    match (value["comm"].as_str(), value["pid"].as_u64()) {
        (Some(comm), Some(pid)) => format!("{comm} ({pid})"),
        _ => "unknown".into(),
    }
}

fn port_of(endpoint: &str) -> Option<u64> {
    endpoint.rsplit(':').next()?.parse().ok()
}

fn severity_rank(severity: &str) -> u8 {
    match severity {
        "error" => 2,
        "warning" => 1,
        _ => 0,
    }
}

/// Losses in the window: stats counters are cumulative per run, so per node the growth of
/// (ring buffer drops + skipped program runs) is summed, a drop in the counter meaning a new run.
fn lost_in_window(stats: &[&Value], since: Option<&str>, until: Option<&str>) -> u64 {
    let mut by_node: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for line in stats {
        by_node.entry(text(line, "node")).or_default().push(line);
    }
    let mut lost = 0;
    for lines in by_node.values_mut() {
        lines.sort_by_key(|l| text(l, "ts"));
        let mut previous = 0u64;
        for line in lines.iter() {
            let total = line["lost_events"].as_u64().unwrap_or(0)
                + line["recursion_misses"].as_u64().unwrap_or(0);
            let ts = text(line, "ts");
            let base = if total < previous { 0 } else { previous };
            let inside =
                since.is_none_or(|s| ts.as_str() >= s) && until.is_none_or(|u| ts.as_str() <= u);
            if inside {
                lost += total - base;
            }
            previous = total;
        }
    }
    lost
}

/// The inputs as given, for a message: the first few and how many more.
fn named(inputs: &[std::path::PathBuf]) -> String {
    const SHOWN: usize = 5;
    let mut text: Vec<String> = inputs
        .iter()
        .take(SHOWN)
        .map(|p| p.display().to_string())
        .collect();
    if inputs.len() > SHOWN {
        text.push(format!("and {} more", inputs.len() - SHOWN));
    }
    text.join(", ")
}

/// Builds the report from checked lines.
pub fn build(
    lines: &[Value],
    files: Vec<String>,
    skipped: u64,
    args: &ReportArgs,
    since: Option<&str>,
    until: Option<&str>,
) -> Report {
    let in_window = |v: &Value| {
        let ts = text(v, "ts");
        since.is_none_or(|s| ts.as_str() >= s) && until.is_none_or(|u| ts.as_str() <= u)
    };
    let mut report = Report {
        line_type: "report",
        v: SCHEMA_VERSION,
        files,
        skipped_lines: skipped,
        ..Default::default()
    };
    let mut nodes = BTreeSet::new();
    let (mut ports, mut kernels, mut versions) =
        (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for line in lines.iter().filter(|v| in_window(v)) {
        nodes.insert(text(line, "node"));
        let ts = text(line, "ts");
        if report.from.as_ref().is_none_or(|from| &ts < from) {
            report.from = Some(ts.clone());
        }
        if report.to.as_ref().is_none_or(|to| &ts > to) {
            report.to = Some(ts);
        }
    }
    for start in lines.iter().filter(|v| v["type"] == "start") {
        ports.extend(
            start["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_u64),
        );
        kernels.insert(text(start, "kernel"));
        versions.insert(text(start, "version"));
    }
    let mut findings: Vec<&Value> = lines
        .iter()
        .filter(|v| v["type"] == "finding" && in_window(v))
        .filter(|v| args.kind.as_ref().is_none_or(|k| v["kind"] == k.as_str()))
        .filter(|v| {
            args.port.is_none_or(|p| {
                port_of(&text(v, "src")) == Some(u64::from(p))
                    || port_of(&text(v, "dst")) == Some(u64::from(p))
            })
        })
        .collect();
    findings.sort_by_key(|f| text(f, "ts"));
    let mut groups: BTreeMap<(String, String), Group> = BTreeMap::new();
    for f in &findings {
        let count = f["count"].as_u64().unwrap_or(0);
        report.findings += count;
        let endpoint = if f["side"] == "server" {
            text(f, "src")
        } else {
            text(f, "dst")
        };
        let group = groups
            .entry((text(f, "kind"), endpoint.clone()))
            .or_insert_with(|| Group {
                kind: text(f, "kind"),
                severity: text(f, "severity"),
                endpoint,
                service: f["service"].as_str().map(str::to_owned),
                count: 0,
                lines: 0,
                first_ts: text(f, "first_ts"),
                last_ts: text(f, "last_ts"),
                nodes: Vec::new(),
                processes: Vec::new(),
                summary: text(f, "summary"),
                remedy: text(f, "remedy"),
                evidence: f["evidence"]
                    .as_array()
                    .map(|e| e.iter().take(EVIDENCE).cloned().collect())
                    .unwrap_or_default(),
            });
        group.count += count;
        group.lines += 1;
        let (first, last) = (text(f, "first_ts"), text(f, "last_ts"));
        if first < group.first_ts {
            group.first_ts = first;
        }
        if last > group.last_ts {
            group.last_ts = last;
        }
        if severity_rank(f["severity"].as_str().unwrap_or("")) > severity_rank(&group.severity) {
            group.severity = text(f, "severity");
        }
        for (list, item) in [
            (&mut group.nodes, text(f, "node")),
            (&mut group.processes, process(f)),
        ] {
            if !list.contains(&item) {
                list.push(item);
            }
        }
    }
    let mut groups: Vec<Group> = groups.into_values().collect();
    groups.sort_by(|a, b| {
        severity_rank(&b.severity)
            .cmp(&severity_rank(&a.severity))
            .then(b.count.cmp(&a.count))
            .then(a.kind.cmp(&b.kind))
            .then(a.endpoint.cmp(&b.endpoint))
    });
    report.groups = groups;
    report.timeline = findings
        .iter()
        .take(TIMELINE)
        .map(|f| TimelineEntry {
            ts: text(f, "ts"),
            kind: text(f, "kind"),
            node: text(f, "node"),
            src: text(f, "src"),
            dst: text(f, "dst"),
            process: process(f),
            count: f["count"].as_u64().unwrap_or(0),
        })
        .collect();
    let stats: Vec<&Value> = lines.iter().filter(|v| v["type"] == "stats").collect();
    report.lost_events = lost_in_window(&stats, since, until);
    report.evidence_incomplete = report.lost_events > 0 || skipped > 0;
    report.nodes = nodes.into_iter().collect();
    report.ports = ports.into_iter().collect();
    report.kernels = kernels.into_iter().filter(|k| !k.is_empty()).collect();
    report.versions = versions.into_iter().filter(|v| !v.is_empty()).collect();
    report
}

/// Runs `shuffletrace report`.
pub fn run(args: &ReportArgs) -> anyhow::Result<()> {
    let window = time::window(
        args.since.as_deref(),
        args.until.as_deref(),
        std::time::SystemTime::now(),
    )?;
    let mut lines = Vec::new();
    let totals = input::read(&args.inputs, args.skip_bad, |line| lines.push(line.clone()))?;
    if totals.lines == 0 {
        return Err(BadInput(format!(
            "no lines in {}: nothing to report",
            named(&args.inputs)
        ))
        .into());
    }
    let mut report = build(
        &lines,
        totals.files,
        totals.skipped_lines,
        args,
        window.since.as_deref(),
        window.until.as_deref(),
    );
    report.evidence_incomplete |= totals.skipped_inputs > 0 || totals.truncated_inputs > 0;
    report.skipped_inputs = totals.skipped_inputs;
    report.truncated_inputs = totals.truncated_inputs;
    if report.skipped_lines > 0 {
        tracing::warn!("skipped {} unreadable lines", report.skipped_lines);
    }
    let text = match ReportFormat::from(args.format) {
        ReportFormat::Markdown => markdown(&report),
        ReportFormat::Json => serde_json::to_string_pretty(&report)? + "\n",
    };
    use std::io::Write as _;
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_lines_are_named() {
        assert!(parse_line("{\"type\":\"event\",\"v\":1}", true).is_ok());
        assert!(
            parse_line("{\"type\":\"event\",\"v\":1", false)
                .unwrap_err()
                .contains("truncated")
        );
        assert!(parse_line("hello", true).unwrap_err().contains("not JSON"));
        assert!(
            parse_line("{\"type\":\"event\",\"v\":2}", true)
                .unwrap_err()
                .contains("schema version 2")
        );
        assert!(parse_line("{\"v\":1}", true).unwrap_err().contains("type"));
    }

    #[test]
    fn losses_are_counted_per_run() {
        let stats: Vec<Value> = [
            (1, "2026-01-01T00:00:01.000000000Z"),
            (5, "2026-01-01T00:01:00.000000000Z"),
            (2, "2026-01-01T00:02:00.000000000Z"), // a new run
        ]
        .iter()
        .map(|(lost, ts)| {
            serde_json::json!({"type":"stats","node":"a","ts":ts,"lost_events":lost,"recursion_misses":0})
        })
        .collect();
        let refs: Vec<&Value> = stats.iter().collect();
        assert_eq!(lost_in_window(&refs, None, None), 5 + 2);
        assert_eq!(
            lost_in_window(&refs, Some("2026-01-01T00:00:30.000000000Z"), None),
            4 + 2
        );
    }
}
