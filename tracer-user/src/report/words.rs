//! What the Markdown and HTML reports both say, in words: the header's rows, bounded lists
//! with what they left out, why evidence may be incomplete, a group's title and occurrence
//! line, an evidence event in one line, and a group's own timeline entries. The renderers only
//! lay these out, so the two formats cannot drift apart.

use std::fmt::Write as _;

use serde_json::Value;

use super::{
    Group, Report, TimelineEntry,
    build::{MAX_GROUPS, text},
};

pub fn list(items: &[String]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.join(", ")
    }
}

/// `list`, and how many lines named others when the list was full.
pub fn listed(items: &[String], omitted: u64, others: &str) -> String {
    let mut text = list(items);
    if omitted > 0 {
        let _ = write!(text, " (+ {omitted} lines naming other {others})");
    }
    text
}

/// The header: (name, value) rows.
pub fn header(report: &Report) -> Vec<(&'static str, String)> {
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
    vec![
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
    ]
}

/// Why the evidence may be incomplete, as one sentence.
pub fn incomplete(report: &Report) -> String {
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

/// An evidence event: its time, and what it was in one line.
pub fn evidence(e: &Value) -> (String, String) {
    let mut line = text(e, "event");
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
    (text(e, "ts"), line)
}

/// `kind endpoint (service)`.
pub fn title(g: &Group) -> String {
    let service = g
        .service
        .as_deref()
        .map(|s| format!(" ({s})"))
        .unwrap_or_default();
    format!("{} {}{service}", g.kind, g.endpoint)
}

/// `N occurrence(s) from A to B on NODES.`
pub fn occurrences(g: &Group) -> String {
    format!(
        "{} occurrence(s) from {} to {} on {}.",
        g.count,
        g.first_ts,
        g.last_ts,
        listed(&g.nodes, g.nodes_omitted, "nodes")
    )
}

/// The report's timeline entries that belong to `g` (its kind, to or from its endpoint).
pub fn timeline_of<'a>(report: &'a Report, g: &Group) -> Vec<&'a TimelineEntry> {
    report
        .timeline
        .iter()
        .filter(|t| t.kind == g.kind && (t.dst == g.endpoint || t.src == g.endpoint))
        .collect()
}
