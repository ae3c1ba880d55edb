//! The ticket-ready Markdown rendering of a report.

use std::fmt::Write as _;

use serde_json::Value;

/// Lines shown in the timeline, and evidence items per group.
use super::*;

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
