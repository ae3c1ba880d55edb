//! `shuffletrace report FILE_OR_DIR...`: a ticket-ready summary of trace files (or any saved
//! `--format json` output): header, findings grouped by kind and destination, a timeline,
//! evidence excerpts, remedies, and whether evidence was lost.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    fs::File,
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    time::SystemTime,
};

use serde::Serialize;
use serde_json::Value;

use crate::{
    cli::{ReportArgs, ReportFormat, UsageError},
    sinks::SCHEMA_VERSION,
    trace,
};

/// Lines shown in the timeline, and evidence items per group.
const TIMELINE: usize = 20;
const EVIDENCE: usize = 5;

/// A line that cannot be read: names the file and line; exit status 2.
#[derive(Debug)]
pub struct BadInput(pub String);

impl std::fmt::Display for BadInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadInput {}

/// The files to read, in order: files as given, directories' trace files oldest first.
fn input_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, BadInput> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let found = trace::trace_files(path)
                .map_err(|e| BadInput(format!("cannot read directory {}: {e}", path.display())))?;
            if found.is_empty() {
                return Err(BadInput(format!(
                    "{} holds no shuffletrace trace files (shuffletrace-*.ndjson[.gz])",
                    path.display()
                )));
            }
            files.extend(found);
        } else if path.exists() {
            files.push(path.clone());
        } else {
            return Err(BadInput(format!(
                "{}: no such file or directory",
                path.display()
            )));
        }
    }
    Ok(files)
}

fn open(path: &Path) -> Result<Box<dyn Read>, BadInput> {
    let file =
        File::open(path).map_err(|e| BadInput(format!("cannot read {}: {e}", path.display())))?;
    let gz = path.extension().is_some_and(|e| e == "gz");
    Ok(if gz {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    })
}

/// Parses one line; the error says what is wrong with it.
fn parse_line(text: &str, complete: bool) -> Result<Value, String> {
    let value: Value = match serde_json::from_str(text) {
        Ok(value) => value,
        Err(_) if !complete => return Err("truncated line (the file was cut)".into()),
        Err(e) => return Err(format!("not JSON ({e})")),
    };
    if !value.is_object() || !value["type"].is_string() {
        return Err("not a shuffletrace line (no \"type\")".into());
    }
    match value["v"].as_u64() {
        Some(v) if v == u64::from(SCHEMA_VERSION) => Ok(value),
        Some(v) => Err(format!(
            "schema version {v}; this shuffletrace reads version {SCHEMA_VERSION}"
        )),
        None => Err("no schema version (\"v\")".into()),
    }
}

/// Every line of every file, checked. With `skip_bad`, bad lines are counted instead.
pub fn read_lines(paths: &[PathBuf], skip_bad: bool) -> Result<(Vec<Value>, u64), BadInput> {
    let mut lines = Vec::new();
    let mut skipped = 0;
    for path in input_files(paths)? {
        let mut reader = BufReader::new(open(&path)?);
        let mut number = 0;
        let mut buf = String::new();
        loop {
            buf.clear();
            let read = reader
                .read_line(&mut buf)
                .map_err(|e| BadInput(format!("{}:{}: {e}", path.display(), number + 1)))?;
            if read == 0 {
                break;
            }
            number += 1;
            let complete = buf.ends_with('\n');
            let text = buf.trim_end();
            if text.is_empty() {
                continue;
            }
            match parse_line(text, complete) {
                Ok(value) => lines.push(value),
                Err(_) if skip_bad => skipped += 1,
                Err(why) => {
                    return Err(BadInput(format!(
                        "{}:{number}: {why} (use --skip-bad to skip such lines)",
                        path.display()
                    )));
                }
            }
        }
    }
    Ok((lines, skipped))
}

/// `--since`/`--until`: an RFC 3339 time, or a duration meaning that long ago.
pub fn parse_time(flag: &str, text: &str) -> Result<String, UsageError> {
    if let Ok(time) = humantime::parse_rfc3339_weak(text.trim()) {
        return Ok(humantime::format_rfc3339_nanos(time).to_string());
    }
    match humantime::parse_duration(text.trim()) {
        Ok(ago) => Ok(humantime::format_rfc3339_nanos(SystemTime::now() - ago).to_string()),
        Err(_) => Err(UsageError(format!(
            "invalid {flag} {text:?}: use an RFC 3339 time (2026-11-22T10:00:00Z) or a \
             duration ago (2h)"
        ))),
    }
}

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

/// A table cell: no pipes or line breaks.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.join(", ")
    }
}

fn evidence_line(e: &Value) -> String {
    let mut line = format!("`{}` {}", text(e, "ts"), text(e, "event"));
    match (
        e["old_state"].as_str(),
        e["new_state"].as_str(),
        e["state"].as_str(),
    ) {
        (Some(old), Some(new), _) => {
            let _ = write!(line, " {old} -> {new}");
        }
        (_, _, Some(state)) => {
            let _ = write!(line, " in {state}");
        }
        _ => {}
    }
    for key in ["error", "reason", "class", "direction", "ttl", "peer_ttl"] {
        match &e[key] {
            Value::String(s) => {
                let _ = write!(line, " {key}={s}");
            }
            Value::Number(n) => {
                let _ = write!(line, " {key}={n}");
            }
            _ => {}
        }
    }
    let _ = write!(line, " ({} -> {})", text(e, "src"), text(e, "dst"));
    line
}

/// The report as Markdown that renders in GitHub and Jira.
pub fn markdown(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# shuffletrace report\n");
    let _ = writeln!(out, "| | |\n|---|---|");
    let window = match (&report.from, &report.to) {
        (Some(from), Some(to)) => format!("{from} to {to}"),
        _ => "-".into(),
    };
    let ports: Vec<String> = report.ports.iter().map(u64::to_string).collect();
    for (key, value) in [
        ("Nodes", list(&report.nodes)),
        ("Time window", window),
        ("Ports watched", list(&ports)),
        ("Kernel", list(&report.kernels)),
        ("shuffletrace", list(&report.versions)),
        (
            "Findings",
            format!("{} in {} groups", report.findings, report.groups.len()),
        ),
        ("Lost events", report.lost_events.to_string()),
        ("Files", list(&report.files)),
    ] {
        let _ = writeln!(out, "| {key} | {} |", cell(&value));
    }
    if report.evidence_incomplete {
        let _ = writeln!(
            out,
            "\n> **Evidence may be incomplete:** {} events were lost in this window{}.",
            report.lost_events,
            if report.skipped_lines > 0 {
                format!(
                    " and {} unreadable lines were skipped",
                    report.skipped_lines
                )
            } else {
                String::new()
            }
        );
    }
    let _ = writeln!(out, "\n## Findings\n");
    if report.groups.is_empty() {
        let _ = writeln!(out, "No findings in this window.");
    } else {
        let _ = writeln!(
            out,
            "| Severity | Kind | Endpoint | Service | Count | First | Last | Processes |\n\
             |---|---|---|---|---|---|---|---|"
        );
        for g in &report.groups {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                g.severity,
                g.kind,
                cell(&g.endpoint),
                cell(g.service.as_deref().unwrap_or("-")),
                g.count,
                g.first_ts,
                g.last_ts,
                cell(&list(&g.processes))
            );
        }
    }
    if !report.timeline.is_empty() {
        let _ = writeln!(out, "\n## Timeline\n");
        let _ = writeln!(
            out,
            "| Time | Kind | Node | From | To | Process | Count |\n|---|---|---|---|---|---|---|"
        );
        for t in &report.timeline {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} |",
                t.ts,
                t.kind,
                cell(&t.node),
                cell(&t.src),
                cell(&t.dst),
                cell(&t.process),
                t.count
            );
        }
    }
    for g in &report.groups {
        let service = g
            .service
            .as_deref()
            .map(|s| format!(" ({s})"))
            .unwrap_or_default();
        let _ = writeln!(out, "\n### {} {}{service}\n", g.kind, g.endpoint);
        let _ = writeln!(
            out,
            "{} occurrence(s) from {} to {} on {}.\n",
            g.count,
            g.first_ts,
            g.last_ts,
            list(&g.nodes)
        );
        let _ = writeln!(out, "{}\n", g.summary);
        let _ = writeln!(out, "Evidence:\n");
        for e in &g.evidence {
            let _ = writeln!(out, "- {}", evidence_line(e));
        }
        let _ = writeln!(out, "\n**Remedy:** {}", g.remedy);
    }
    out
}

/// Runs `shuffletrace report`.
pub fn run(args: &ReportArgs) -> anyhow::Result<()> {
    let since = args
        .since
        .as_deref()
        .map(|t| parse_time("--since", t))
        .transpose()?;
    let until = args
        .until
        .as_deref()
        .map(|t| parse_time("--until", t))
        .transpose()?;
    let (lines, skipped) = read_lines(&args.inputs, args.skip_bad)?;
    let files = input_files(&args.inputs)?
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let report = build(
        &lines,
        files,
        skipped,
        args,
        since.as_deref(),
        until.as_deref(),
    );
    if args.skip_bad && skipped > 0 {
        tracing::warn!("skipped {skipped} unreadable lines");
    }
    let text = match args.format {
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
