//! `shuffletrace correlate FILE_OR_DIR... | -`: one connection's two ends, traced on two
//! nodes, joined into one finding. A client node can only say its SYNs went unanswered; the
//! two ends together say where the packet died, that a RST came from neither end, or that
//! the server saw the connection come from another address than the client sent it from (a
//! NAT in the path). Reads trace files, saved `--format json` output, or the concatenated
//! `kubectl logs --prefix` of every DaemonSet pod; writes the findings as `report` does
//! (Markdown for a ticket, or NDJSON finding lines with the schema's fields), streaming.

use std::io::Write as _;

use anyhow::Result;
use serde_json::Value;

use crate::{cli::CorrelateArgs, config::ReportFormat, error::BadInput, error::UsageError};

mod ends;
mod lines;
mod merge;
mod nodes;
mod table;
mod verdicts;

#[cfg(test)]
mod tests;

/// Connections held at once waiting for their other half (about 2 KiB each with full
/// evidence); past it the oldest are released early, unjoined, and counted.
pub const MAX_ENDS: usize = 100_000;

/// An end is released once every input has moved this far past its last line (in arrival
/// time: see `merge`), plus the allowed clock skew.
const HOLD_NS: i64 = 300_000_000_000;

/// Most clock skew `--max-skew` accepts.
const MAX_SKEW_LIMIT_NS: i64 = 600_000_000_000;

/// What a run found, for its last log line and the tests.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub joined: u64,
    pub single: u64,
    pub released_early: u64,
    pub peak_ends: usize,
    pub findings: u64,
}

/// The engine, fed line by line: lines in, finding lines out.
pub struct Correlator {
    nodes: nodes::Nodes,
    table: table::Table,
    verdicts: verdicts::Verdicts,
    hold_ns: i64,
}

impl Correlator {
    pub fn new(max_ends: usize, max_skew_ns: i64) -> Self {
        Self {
            nodes: nodes::Nodes::default(),
            table: table::Table::new(max_ends, max_skew_ns),
            verdicts: verdicts::Verdicts::new(max_skew_ns),
            hold_ns: HOLD_NS + max_skew_ns,
        }
    }

    /// Takes one line that arrived at `arrival` (`release`: whether arrival times may
    /// release ends); gives the finding lines now settled to `out`.
    pub fn add(&mut self, line: &Value, arrival: i64, release: bool, out: &mut Vec<Value>) {
        self.nodes.note(line);
        let mut released = Vec::new();
        if let Some(obs) = ends::observe(line, &self.nodes) {
            released = self.table.add(&obs, line, arrival);
        }
        if release {
            released.extend(self.table.release(arrival, self.hold_ns));
        }
        for end in released {
            out.extend(self.verdicts.judge(end, &self.nodes));
        }
    }

    /// At the end of the input: everything still held, then the NAT translations seen.
    pub fn finish(&mut self, out: &mut Vec<Value>) -> Outcome {
        for end in self.table.release(i64::MAX, 0) {
            out.extend(self.verdicts.judge(end, &self.nodes));
        }
        out.extend(self.verdicts.finish());
        Outcome {
            joined: self.verdicts.joined,
            single: self.verdicts.single,
            released_early: self.table.released_early,
            peak_ends: self.table.peak,
            findings: 0,
        }
    }
}

/// Runs `shuffletrace correlate`.
pub fn run(args: &CorrelateArgs) -> Result<()> {
    let max_skew = humantime::parse_duration(&args.max_skew)
        .ok()
        .and_then(|d| i64::try_from(d.as_nanos()).ok())
        .filter(|ns| *ns <= MAX_SKEW_LIMIT_NS)
        .ok_or_else(|| {
            UsageError(format!(
                "invalid --max-skew {:?}: a duration up to 10m, like 5s",
                args.max_skew
            ))
        })?;
    let mut totals = crate::report::input::Totals::default();
    let planned = crate::report::input::plan(&args.inputs, true)?;
    if planned.len() > merge::MAX_INPUTS {
        return Err(BadInput(format!(
            "{} input files: correlate reads at most {} at once (concatenate rotated files of \
             one node with `cat`, or correlate fewer nodes)",
            planned.len(),
            merge::MAX_INPUTS
        ))
        .into());
    }
    let mut sources = Vec::new();
    for input in &planned {
        if let Some(source) = crate::report::input::open_source(input, &mut totals)? {
            sources.push(source);
        }
    }
    let mut merged = merge::Merge::new(sources, args.skip_bad, HOLD_NS, &mut totals)?;

    let report_args = crate::cli::ReportArgs {
        inputs: args.inputs.clone(),
        format: args.format,
        since: None,
        until: None,
        port: None,
        kind: None,
        skip_bad: args.skip_bad,
    };
    let window = crate::report::time::window(None, None, std::time::SystemTime::now())?;
    // Markdown and HTML are a report of the joined findings; JSON streams them as lines.
    let format = ReportFormat::from(args.format);
    let markdown = format != ReportFormat::Json;
    let mut report = crate::report::build::Builder::new(&report_args, &window);
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    let mut correlator = Correlator::new(MAX_ENDS, max_skew);
    let mut out = Vec::new();
    let mut findings = 0u64;
    let mut emit = |out: &mut Vec<Value>, report: &mut crate::report::build::Builder<'_>| {
        for line in out.drain(..) {
            findings += 1;
            if markdown {
                report.add(&line);
            } else {
                serde_json::to_writer(&mut stdout, &line)?;
                stdout.write_all(b"\n")?;
            }
        }
        std::io::Result::Ok(())
    };
    while let Some((line, arrival)) = merged.next_line(&mut totals)? {
        if markdown && matches!(line["type"].as_str(), Some("start" | "stats")) {
            report.add(&line);
        }
        correlator.add(&line, arrival, !merged.unordered, &mut out);
        emit(&mut out, &mut report)?;
    }
    if totals.lines == 0 {
        return Err(BadInput(format!(
            "no shuffletrace lines in {}: nothing to correlate",
            totals.files.join(", ")
        ))
        .into());
    }
    let mut outcome = correlator.finish(&mut out);
    emit(&mut out, &mut report)?;
    outcome.findings = findings;
    tracing::info!(
        "{} connections joined across nodes, {} seen from one node only; {} findings; at most {} \
         connections held at once{}",
        outcome.joined,
        outcome.single,
        outcome.findings,
        outcome.peak_ends,
        if outcome.released_early > 0 {
            format!(
                ", {} released before their other half could come (more than {MAX_ENDS} held)",
                outcome.released_early
            )
        } else {
            String::new()
        }
    );
    if totals.log_lines > 0 {
        tracing::debug!("{} log lines of the tool itself skipped", totals.log_lines);
    }
    if markdown {
        let report = crate::report::finish(report, totals);
        stdout.write_all(crate::report::render(&report, format)?.as_bytes())?;
    }
    stdout.flush()?;
    Ok(())
}
