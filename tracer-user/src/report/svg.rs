//! The ladder drawn as inline SVG for the HTML report: one lifeline per column, time going
//! down (one row per event, its offset from the first in the left margin, long silences as
//! grey bands), each packet an arrow labelled with what it was and, under it, who sent it.
//! Plain attributes only (no CSS classes, no scripts, no external references), so the drawing
//! stands alone wherever the page is opened; every text is escaped.

use std::fmt::Write as _;

use super::{
    bounded::cut,
    escape::escape,
    ladder::{Column, Ladder, What},
};

const WIDTH: u32 = 900;
/// Left margin, for the time offsets.
const GUTTER: u32 = 110;
const HEADER: u32 = 56;
const PACKET_ROW: u32 = 52;
const MARK_ROW: u32 = 34;
const GAP_ROW: u32 = 40;
/// Bytes of a label drawn (the evidence list under the drawing has the full text, and the
/// SVG `<title>` too).
const DRAWN: usize = 96;
const HEADER_DRAWN: usize = 34;

const INK: &str = "#1f2937";
const RESET: &str = "#b91c1c";
const RETRANSMIT: &str = "#b45309";
const FAINT: &str = "#6b7280";

fn x_of(columns: &[(Column, String)], column: Column) -> u32 {
    let index = columns.iter().position(|c| c.0 == column).unwrap_or(0) as u32;
    let (left, right) = (GUTTER + 120, WIDTH - 130);
    let last = (columns.len() as u32).saturating_sub(1).max(1);
    left + (right - left) * index / last
}

fn row_height(what: &What) -> u32 {
    match what {
        What::Packet { .. } => PACKET_ROW,
        What::Mark { .. } => MARK_ROW,
        What::Gap { .. } => GAP_ROW,
    }
}

/// A `<text>` element with its full text as a tooltip when it had to be cut.
fn label(out: &mut String, x: u32, y: u32, anchor: &str, style: &str, text: &str, max: usize) {
    let shown = cut(text, max);
    let _ = write!(
        out,
        r#"<text x="{x}" y="{y}" text-anchor="{anchor}" {style}>"#
    );
    if shown.len() < text.len() {
        let _ = write!(out, "<title>{}</title>", escape(text));
    }
    let _ = writeln!(out, "{}</text>", escape(&shown));
}

/// The ladder as an `<svg>` element; `id` makes its marker ids unique on the page.
pub fn ladder_svg(ladder: &Ladder, id: &str) -> String {
    let columns = ladder.columns();
    let body: u32 = ladder.steps.iter().map(|s| row_height(&s.what)).sum();
    let height = HEADER + 24 + body + 16;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12" role="img" aria-label="ladder diagram">"#
    );
    let _ = writeln!(out, "<defs>");
    for (name, color) in [("a", INK), ("r", RESET), ("t", RETRANSMIT)] {
        let _ = writeln!(
            out,
            r#"<marker id="{id}-{name}" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" markerHeight="8" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="{color}"/></marker>"#
        );
    }
    let _ = writeln!(out, "</defs>");
    let bottom = height - 8;
    for (column, name) in &columns {
        let x = x_of(&columns, *column);
        let _ = writeln!(
            out,
            r#"<line x1="{x}" y1="{HEADER}" x2="{x}" y2="{bottom}" stroke="{FAINT}" stroke-dasharray="4 3"/>"#
        );
        let _ = writeln!(
            out,
            r##"<rect x="{}" y="8" width="230" height="{}" rx="6" fill="#eef2ff" stroke="{INK}"/>"##,
            x - 115,
            HEADER - 16
        );
        label(
            &mut out,
            x,
            HEADER / 2 + 4,
            "middle",
            r#"font-weight="bold""#,
            name,
            HEADER_DRAWN,
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="8" y="{}" fill="{FAINT}">time</text>"#,
        HEADER + 14
    );
    let (left, right) = (
        x_of(&columns, Column::Client),
        x_of(&columns, Column::Server),
    );
    let mut y = HEADER + 24;
    for step in &ladder.steps {
        let row = row_height(&step.what);
        let mid = y + row / 2;
        if !step.offset.is_empty() {
            let _ = write!(
                out,
                r#"<text x="8" y="{}" fill="{FAINT}"><title>{}</title>{}</text>"#,
                mid + 4,
                escape(&step.ts),
                escape(&step.offset)
            );
            out.push('\n');
        }
        match &step.what {
            What::Packet {
                from,
                to,
                label: text,
                sender,
                retransmit,
                reset,
            } => {
                let (x1, x2) = (x_of(&columns, *from), x_of(&columns, *to));
                let (color, marker, dash) = match (reset, retransmit) {
                    (true, _) => (RESET, "r", ""),
                    (false, true) => (RETRANSMIT, "t", r#" stroke-dasharray="7 4""#),
                    (false, false) => (INK, "a", ""),
                };
                let _ = writeln!(
                    out,
                    r#"<line x1="{x1}" y1="{mid}" x2="{x2}" y2="{mid}" stroke="{color}" stroke-width="2"{dash} marker-end="url(#{id}-{marker})"/>"#
                );
                let centre = (x1 + x2) / 2;
                let shown = if *retransmit {
                    format!("{text} (retransmit)")
                } else {
                    text.clone()
                };
                // A white halo keeps the text readable across a lifeline.
                let halo = r##"stroke="#fff" stroke-width="3" paint-order="stroke""##;
                let style = format!(r#"fill="{color}" font-weight="bold" {halo}"#);
                label(&mut out, centre, mid - 6, "middle", &style, &shown, DRAWN);
                // Under the whole ladder: the proof can be longer than a short arrow.
                let style = format!(r#"fill="{FAINT}" font-size="11" {halo}"#);
                let under = (left + right) / 2;
                label(&mut out, under, mid + 15, "middle", &style, sender, DRAWN);
            }
            What::Mark { at, label: text } => {
                let x = x_of(&columns, *at);
                let _ = writeln!(out, r#"<circle cx="{x}" cy="{mid}" r="5" fill="{INK}"/>"#);
                let (tx, anchor) = if *at == Column::Server {
                    (x - 10, "end")
                } else {
                    (x + 10, "start")
                };
                label(
                    &mut out,
                    tx,
                    mid + 4,
                    anchor,
                    &format!(r#"fill="{INK}""#),
                    text,
                    DRAWN,
                );
            }
            What::Gap { label: text } => {
                let _ = writeln!(
                    out,
                    r##"<rect x="{}" y="{}" width="{}" height="{}" fill="#f3f4f6" stroke="{FAINT}" stroke-dasharray="2 3"/>"##,
                    left - 40,
                    y + 6,
                    right - left + 80,
                    row - 12
                );
                label(
                    &mut out,
                    (left + right) / 2,
                    mid + 4,
                    "middle",
                    &format!(r#"fill="{FAINT}" font-style="italic""#),
                    text,
                    DRAWN,
                );
            }
        }
        y += row;
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::report::ladder::{ladder, sample_group};

    #[test]
    fn the_drawing_escapes_and_has_one_arrow_per_packet() {
        let group = sample_group(vec![
            json!({"ts": "2026-11-22T10:00:00Z", "event": "state_change",
                   "src": "10.0.0.1:1", "dst": "10.0.0.2:7337",
                   "old_state": "CLOSE", "new_state": "SYN_SENT"}),
            json!({"ts": "2026-11-22T10:00:01Z", "event": "retransmit",
                   "src": "10.0.0.1:1", "dst": "10.0.0.2:7337", "state": "SYN_SENT"}),
            json!({"ts": "2026-11-22T10:00:09Z", "event": "socket_error",
                   "src": "10.0.0.1:1", "dst": "10.0.0.2:7337", "state": "CLOSE",
                   "error": "<script>alert(1)</script>"}),
        ]);
        let svg = ladder_svg(&ladder(&group), "g1");
        assert!(
            svg.starts_with("<svg ") && svg.ends_with("</svg>\n"),
            "{svg}"
        );
        assert_eq!(svg.matches("marker-end=").count(), 2, "{svg}");
        assert_eq!(svg.matches("stroke-dasharray=\"7 4\"").count(), 1, "{svg}");
        assert!(svg.contains("SYN (retransmit)"), "{svg}");
        assert!(svg.contains("8.000 s without a packet"), "{svg}");
        assert!(svg.contains("socket error &lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(!svg.contains("<script"), "{svg}");
        assert!(svg.contains(r#"id="g1-a""#), "{svg}");
    }
}
