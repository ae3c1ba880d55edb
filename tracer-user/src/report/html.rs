//! `report --format html`: the report as one self-contained page a person would rather read,
//! safe to attach to a ticket: inline CSS and inline SVG, no scripts, no external URLs (a
//! Content-Security-Policy that allows nothing else says so to the browser), every string from
//! the trace escaped. Per finding group: what happened, the ladder of its packets (`svg`), its
//! timeline, the evidence and the remedy. Same words as the Markdown (`words`).

use std::fmt::Write as _;

use super::{
    Group, Report,
    build::TIMELINE,
    escape::escape,
    ladder::ladder,
    svg::ladder_svg,
    words::{evidence, header, incomplete, listed, occurrences, timeline_of, title},
};

const STYLE: &str = "\
body{font-family:system-ui,sans-serif;margin:24px auto;max-width:960px;color:#1f2937;\
line-height:1.45;padding:0 16px}\
h1{margin:0 0 12px}h2{margin:28px 0 8px}h3{margin:18px 0 6px;font-size:1em}\
table{border-collapse:collapse;margin:6px 0;font-size:.82em;width:100%}\
td,th{border:1px solid #d1d5db;padding:3px 8px;text-align:left;vertical-align:top}\
.w{overflow-wrap:anywhere;word-break:break-all}\
th{background:#f3f4f6}code{font-family:ui-monospace,monospace;font-size:.92em;\
background:#f3f4f6;padding:0 3px;border-radius:3px}\
.incomplete{background:#fef3c7;border-left:4px solid #d97706;padding:8px 12px}\
section.group{border:1px solid #d1d5db;border-radius:8px;padding:4px 18px 14px;margin:22px 0}\
section.error{border-left:6px solid #b91c1c}section.warning{border-left:6px solid #d97706}\
section.info{border-left:6px solid #6b7280}\
.sev{font-size:.75em;text-transform:uppercase;padding:2px 6px;border-radius:4px;\
background:#e5e7eb;margin-right:6px;vertical-align:middle}\
.error .sev{background:#fee2e2;color:#991b1b}.warning .sev{background:#fef3c7;color:#92400e}\
.remedy{background:#ecfdf5;border-left:4px solid #059669;padding:8px 12px;white-space:pre-wrap}\
figure{margin:6px 0;overflow-x:auto}figcaption{font-size:.85em;color:#6b7280}\
ul.evidence{font-size:.9em;padding-left:20px}";

/// Text with Markdown-style `code` spans (remedies use them) as `<code>`, all of it escaped.
fn with_code(text: &str) -> String {
    text.split('`')
        .enumerate()
        .map(|(i, part)| {
            if i % 2 == 1 {
                format!("<code>{}</code>", escape(part))
            } else {
                escape(part)
            }
        })
        .collect()
}

/// A cell's text that may break anywhere (long process lists and paths), escaped.
fn wrap(text: &str) -> String {
    format!("<span class=\"w\">{}</span>", escape(text))
}

/// A table: header cells (none: no header row), then rows of already escaped cells.
fn table(out: &mut String, head: &[&str], rows: impl Iterator<Item = Vec<String>>) {
    out.push_str("<table>");
    if !head.is_empty() {
        out.push_str("<tr>");
        for h in head {
            let _ = write!(out, "<th>{}</th>", escape(h));
        }
        out.push_str("</tr>\n");
    }
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{cell}</td>");
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
}

fn timeline(out: &mut String, entries: &[&super::TimelineEntry]) {
    table(
        out,
        &["Time", "Kind", "Node", "From", "To", "Process", "Count"],
        entries.iter().map(|t| {
            vec![
                escape(&t.ts),
                escape(&t.kind),
                escape(&t.node),
                escape(&t.src),
                escape(&t.dst),
                wrap(&t.process),
                t.count.to_string(),
            ]
        }),
    );
}

fn group(out: &mut String, report: &Report, index: usize, g: &Group) {
    let _ = writeln!(
        out,
        r#"<section class="group {}" id="g{index}">"#,
        escape(&g.severity)
    );
    let _ = writeln!(
        out,
        r#"<h2><span class="sev">{}</span>{}</h2>"#,
        escape(&g.severity),
        escape(&title(g))
    );
    let _ = writeln!(
        out,
        "<p>{}<br>Processes: {}</p>",
        escape(&occurrences(g)),
        escape(&listed(&g.processes, g.processes_omitted, "processes"))
    );
    let _ = writeln!(out, r#"<p class="summary">{}</p>"#, with_code(&g.summary));
    if !g.evidence.is_empty() {
        let _ = writeln!(out, "<h3>The packets</h3>\n<figure>");
        out.push_str(&ladder_svg(&ladder(g), &format!("g{index}")));
        let _ = writeln!(
            out,
            "<figcaption>Time goes down. Each arrow is a packet, labelled with what it was and, \
             under it, who sent it (a RST's TTL against the peer's own packets tells the peer \
             from a device in between); dashed: a retransmission; red: a reset; grey bands: no \
             packet either way. From the first {} evidence events of the earliest line.\
             </figcaption>\n</figure>",
            g.evidence.len()
        );
    }
    let _ = writeln!(out, "<h3>Timeline</h3>");
    let entries = timeline_of(report, g);
    if entries.is_empty() {
        let _ = writeln!(
            out,
            "<p>None of this group's lines is among the report's first {TIMELINE}.</p>"
        );
    } else {
        timeline(out, &entries);
    }
    let _ = writeln!(out, "<h3>Evidence</h3>\n<ul class=\"evidence\">");
    for e in &g.evidence {
        let (ts, line) = evidence(e);
        let _ = writeln!(
            out,
            "<li><code>{}</code> {}</li>",
            escape(&ts),
            escape(&line)
        );
    }
    let _ = writeln!(out, "</ul>");
    let _ = writeln!(
        out,
        "<h3>Remedy</h3>\n<p class=\"remedy\">{}</p>\n</section>",
        with_code(&g.remedy)
    );
}

/// The report as one HTML page.
pub fn html(report: &Report) -> String {
    let mut out =
        String::from("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    // Nothing but the inline style may load or run, whatever a trace smuggles in.
    out.push_str(
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; \
         style-src 'unsafe-inline'\">\n",
    );
    let window = match (&report.from, &report.to) {
        (Some(from), Some(to)) => format!(", {from} to {to}"),
        _ => String::new(),
    };
    let _ = writeln!(
        out,
        "<title>shuffletrace report: {} findings{}</title>\n<style>{STYLE}</style>\n</head>\n<body>",
        report.findings,
        escape(&window)
    );
    let _ = writeln!(out, "<h1>shuffletrace report</h1>");
    table(
        &mut out,
        &[],
        header(report)
            .into_iter()
            .map(|(key, value)| vec![escape(key), wrap(&value)]),
    );
    if report.evidence_incomplete {
        let _ = writeln!(
            out,
            "<p class=\"incomplete\"><strong>Evidence may be incomplete:</strong> {}.</p>",
            escape(&incomplete(report))
        );
    }
    let _ = writeln!(out, "<h2>Findings</h2>");
    if report.groups.is_empty() {
        let _ = writeln!(out, "<p>No findings in this window.</p>");
    } else {
        table(
            &mut out,
            &[
                "Severity",
                "Kind",
                "Endpoint",
                "Count",
                "First",
                "Last",
                "Processes",
            ],
            report.groups.iter().enumerate().map(|(i, g)| {
                vec![
                    escape(&g.severity),
                    format!("<a href=\"#g{i}\">{}</a>", escape(&g.kind)),
                    // The service is in the group's title, a click away.
                    escape(&g.endpoint),
                    g.count.to_string(),
                    escape(&g.first_ts),
                    escape(&g.last_ts),
                    wrap(&listed(&g.processes, g.processes_omitted, "processes")),
                ]
            }),
        );
    }
    for (i, g) in report.groups.iter().enumerate() {
        group(&mut out, report, i, g);
    }
    // Each group shows its own entries; the whole incident's order comes last.
    if !report.timeline.is_empty() {
        let _ = writeln!(out, "<h2>Timeline of the incident</h2>");
        timeline(&mut out, &report.timeline.iter().collect::<Vec<_>>());
        if report.timeline_omitted > 0 {
            let _ = writeln!(
                out,
                "<p>{} later finding lines are not in the timeline (it shows the first \
                 {TIMELINE}).</p>",
                report.timeline_omitted
            );
        }
    }
    out.push_str("</body>\n</html>\n");
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::report::ladder::sample_group;

    #[test]
    fn trace_strings_come_out_escaped_and_nothing_is_loaded() {
        let mut g = sample_group(vec![json!({
            "ts": "2026-11-22T10:00:00Z", "event": "reset_received",
            "src": "10.0.0.1:1", "dst": "10.0.0.2:7337", "state": "ESTABLISHED",
            "ttl": 64, "peer_ttl": 61
        })]);
        g.processes = vec!["<script>alert(1)</script> (42)".into()];
        g.remedy = "Run `ss -ltnp` on <host>.".into();
        g.summary = "a \"quoted\" & 'odd' summary".into();
        let report = Report {
            groups: vec![g],
            nodes: vec!["<img src=x onerror=alert(2)>".into()],
            ..Report::default()
        };
        let page = html(&report);
        assert!(!page.contains("<script"), "{page}");
        assert!(!page.contains("<img"), "{page}");
        assert!(
            page.contains("&lt;script&gt;alert(1)&lt;/script&gt; (42)"),
            "{page}"
        );
        assert!(
            page.contains("Run <code>ss -ltnp</code> on &lt;host&gt;."),
            "{page}"
        );
        assert!(page.contains("a &quot;quoted&quot; &amp; &#39;odd&#39; summary"));
        // No external reference of any kind: the only URL is the SVG namespace.
        let urls: Vec<&str> = page
            .match_indices("http")
            .map(|(i, _)| &page[i..i + 30])
            .collect();
        assert!(
            urls.iter().all(|u| u.starts_with("http://www.w3.org/2000/svg")
                || u.starts_with("http-equiv")),
            "{urls:?}"
        );
        assert!(page.contains("a middlebox sent it"), "{page}");
    }
}
