//! The ticket-ready Markdown rendering of a report. What a bounded list left out is said
//! where the list is (`+ N lines naming other ...`), and only then: a report within the bounds
//! reads as it always did. Each group's packets come as a Mermaid sequence diagram (see
//! `mermaid`), which GitHub, GitLab and most ticket systems draw.

use std::fmt::Write as _;

use super::{
    Report,
    build::TIMELINE,
    ladder::ladder,
    mermaid::sequence,
    words::{evidence, header, incomplete, listed, occurrences, title},
};

/// A table cell: no pipes or line breaks.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// The report as Markdown that renders in GitHub and Jira.
pub fn markdown(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# shuffletrace report\n");
    let _ = writeln!(out, "| | |\n|---|---|");
    for (key, value) in header(report) {
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
        let _ = writeln!(out, "\n### {}\n", title(g));
        let _ = writeln!(out, "{}\n", occurrences(g));
        let _ = writeln!(out, "{}\n", g.summary);
        let _ = writeln!(out, "Evidence:\n");
        for e in &g.evidence {
            let (ts, line) = evidence(e);
            let _ = writeln!(out, "- `{ts}` {line}");
        }
        if !g.evidence.is_empty() {
            let _ = writeln!(out, "\nThe packets (client, server, who sent each):\n");
            out.push_str(&sequence(&ladder(g)));
        }
        let _ = writeln!(out, "\n**Remedy:** {}", g.remedy);
    }
    out
}
