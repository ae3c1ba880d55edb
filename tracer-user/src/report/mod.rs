//! `shuffletrace report FILE_OR_DIR...`: a ticket-ready summary of trace files (or any saved
//! `--format json` output): header, findings grouped by kind and destination, a timeline,
//! evidence excerpts with a ladder of their packets, remedies, and whether evidence was lost
//! (Markdown with Mermaid diagrams, JSON, or one self-contained HTML page). The input is streamed: memory
//! follows the number of finding groups, not the size of the files.

use serde::Serialize;
use serde_json::Value;

use crate::{cli::ReportArgs, config::ReportFormat, error::BadInput};

mod bounded;
pub(crate) mod build;
mod escape;
mod html;
pub(crate) mod input;
mod ladder;
mod lines;
mod losses;
mod markdown;
mod mermaid;
mod svg;
pub(crate) mod time;
mod words;

pub use markdown::markdown;

#[derive(Serialize, Default, Debug, PartialEq)]
pub struct Report {
    #[serde(rename = "type")]
    line_type: &'static str,
    v: u32,
    files: Vec<String>,
    nodes: Vec<String>,
    nodes_omitted: u64,
    from: Option<String>,
    to: Option<String>,
    ports: Vec<u64>,
    kernels: Vec<String>,
    kernels_omitted: u64,
    versions: Vec<String>,
    versions_omitted: u64,
    findings: u64,
    groups: Vec<Group>,
    groups_omitted: u64,
    timeline: Vec<TimelineEntry>,
    timeline_omitted: u64,
    lost_events: u64,
    stats_lines_omitted: u64,
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
    nodes_omitted: u64,
    processes: Vec<String>,
    processes_omitted: u64,
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

/// Runs `shuffletrace report`.
pub fn run(args: &ReportArgs) -> anyhow::Result<()> {
    let window = time::window(
        args.since.as_deref(),
        args.until.as_deref(),
        std::time::SystemTime::now(),
    )?;
    let mut builder = build::Builder::new(args, &window);
    let totals = input::read(&args.inputs, args.skip_bad, |line| builder.add(line))?;
    if totals.lines == 0 {
        return Err(BadInput(format!(
            "no lines in {}: nothing to report",
            named(&args.inputs)
        ))
        .into());
    }
    let report = finish(builder, totals);
    let text = render(&report, ReportFormat::from(args.format))?;
    use std::io::Write as _;
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(())
}

/// A report in one of its forms.
pub fn render(report: &Report, format: ReportFormat) -> serde_json::Result<String> {
    Ok(match format {
        ReportFormat::Markdown => markdown(report),
        ReportFormat::Json => serde_json::to_string_pretty(report)? + "\n",
        ReportFormat::Html => html::html(report),
    })
}

/// The report of what a builder took in, with what reading the inputs found.
pub fn finish(builder: build::Builder<'_>, totals: input::Totals) -> Report {
    let mut report = builder.finish();
    report.evidence_incomplete = report.lost_events > 0
        || report.stats_lines_omitted > 0
        || totals.skipped_lines > 0
        || totals.skipped_inputs > 0
        || totals.truncated_inputs > 0;
    report.files = totals.files;
    report.skipped_lines = totals.skipped_lines;
    report.skipped_inputs = totals.skipped_inputs;
    report.truncated_inputs = totals.truncated_inputs;
    if report.skipped_lines > 0 {
        tracing::warn!("skipped {} unreadable lines", report.skipped_lines);
    }
    report
}

#[cfg(test)]
mod tests {
    use super::input::parse_line;

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
}
