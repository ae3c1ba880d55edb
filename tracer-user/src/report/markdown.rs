//! The ticket-ready Markdown rendering of a report. What a bounded list left out is said
//! where the list is (`+ N lines naming other ...`), and only then: a report within the bounds
//! reads as it always did.

use std::fmt::Write as _;

use serde_json::Value;

use super::{
    Report,
    build::{MAX_GROUPS, TIMELINE, text},
};

/// A table cell: no pipes or line breaks.
pub(super) fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

pub(super) fn list(items: &[String]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.join(", ")
    }
}

/// `list`, and how many lines named others when the list was full.
fn listed(items: &[String], omitted: u64, others: &str) -> String {
    let mut text = list(items);
    if omitted > 0 {
        let _ = write!(text, " (+ {omitted} lines naming other {others})");
    }
    text
}

/// Why the evidence may be incomplete, as one sentence.
fn incomplete(report: &Report) -> String {
    let mut clauses = vec![format!(
        "{} events were lost in this window",
        report.lost_events
    )];
    for (n, what) in [
        (report.skipped_lines, "unreadable lines were skipped"),
        (
            report.truncated_inputs,
            "inputs ended early at a read error (a cut .gz), read up to it",
        ),
        (
            report.skipped_inputs,
            "inputs were not regular files and were not read",
        ),
        (
            report.stats_lines_omitted,
            "stats lines overlapped others of their node (a file read twice?), their losses not \
             counted",
        ),
    ] {
        if n > 0 {
            clauses.push(format!("{n} {what}"));
        }
    }
    let last = clauses.pop().unwrap_or_default();
    if clauses.is_empty() {
        last
    } else {
        format!("{} and {last}", clauses.join(", "))
    }
}

pub(super) fn evidence_line(e: &Value) -> String {
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
    let mut findings = format!("{} in {} groups", report.findings, report.groups.len());
    if report.groups_omitted > 0 {
        let _ = write!(
            findings,
            " (+ {} finding lines in further groups, not shown: the report keeps {MAX_GROUPS})",
            report.groups_omitted
        );
    }
    for (key, value) in [
        (
            "Nodes",
            listed(&report.nodes, report.nodes_omitted, "nodes"),
        ),
        ("Time window", window),
        ("Ports watched", list(&ports)),
        (
            "Kernel",
            listed(&report.kernels, report.kernels_omitted, "kernels"),
        ),
        (
            "shuffletrace",
            listed(&report.versions, report.versions_omitted, "versions"),
        ),
        ("Findings", findings),
        ("Lost events", report.lost_events.to_string()),
        ("Files", list(&report.files)),
    ] {
        let _ = writeln!(out, "| {key} | {} |", cell(&value));
    }
    if report.evidence_incomplete {
        let _ = writeln!(
            out,
            "\n> **Evidence may be incomplete:** {}.",
            incomplete(report)
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
                cell(&listed(&g.processes, g.processes_omitted, "processes"))
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
        if report.timeline_omitted > 0 {
            let _ = writeln!(
                out,
                "\n{} later finding lines are not in the timeline (it shows the first {TIMELINE}).",
                report.timeline_omitted
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
            listed(&g.nodes, g.nodes_omitted, "nodes")
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
