//! The ladder as a Mermaid `sequenceDiagram` block for the Markdown report (GitHub, GitLab and
//! most ticket systems draw it). Participants get fixed ids (`C`, `M`, `S`) and every text
//! from the trace is reduced to characters Mermaid takes literally: `;` and line breaks end a
//! statement, `#` starts an entity, `%%` a comment, `<`/`>` and braces are markup, and a
//! trace is untrusted input.

use std::fmt::Write as _;

use super::ladder::{Column, Ladder, What};

/// Longest text put in the diagram (the evidence list under it has the rest).
const MAX_LABEL: usize = 120;

/// `text` with every character Mermaid could read as syntax replaced by `_`.
pub fn safe(text: &str) -> String {
    let kept: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || " .:_-+()[]/=,'*@!?".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(MAX_LABEL)
        .collect();
    kept.trim().to_owned()
}

fn id(column: Column) -> &'static str {
    match column {
        Column::Client => "C",
        Column::Middlebox => "M",
        Column::Server => "S",
    }
}

/// The ```` ```mermaid ```` block, ending with a newline.
pub fn sequence(ladder: &Ladder) -> String {
    let mut out = String::from("```mermaid\nsequenceDiagram\n");
    for (column, name) in ladder.columns() {
        let _ = writeln!(out, "    participant {} as {}", id(column), safe(&name));
    }
    let (left, right) = (id(Column::Client), id(Column::Server));
    for step in &ladder.steps {
        let offset = safe(&step.offset);
        let _ = match &step.what {
            What::Packet {
                from,
                to,
                label,
                sender,
                retransmit,
                reset,
            } => {
                // Dotted: a retransmission; a cross at the end: a RST.
                let arrow = match (retransmit, reset) {
                    (_, true) => "-x",
                    (true, false) => "-->>",
                    (false, false) => "->>",
                };
                let again = if *retransmit { " retransmit" } else { "" };
                writeln!(
                    out,
                    "    {}{arrow}{}: {offset} {}{again} - {}",
                    id(*from),
                    id(*to),
                    safe(label),
                    safe(sender)
                )
            }
            What::Mark { at, label } => {
                let side = if *at == Column::Server {
                    "right"
                } else {
                    "left"
                };
                writeln!(
                    out,
                    "    Note {side} of {}: {offset} {}",
                    id(*at),
                    safe(label)
                )
            }
            What::Gap { label } => writeln!(out, "    Note over {left},{right}: {}", safe(label)),
        };
    }
    out.push_str("```\n");
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::report::ladder::{ladder, sample_group};

    #[test]
    fn trace_text_cannot_break_the_diagram() {
        assert_eq!(safe("a;b#c%%d<e>{f}\ng"), "a_b_c__d_e__f__g");
        assert_eq!(safe("[fd00::2]:7337"), "[fd00::2]:7337");
        let mut group = sample_group(vec![
            json!({"ts": "2026-11-22T10:00:00Z", "event": "state_change",
                   "src": "10.0.0.1:1;end", "dst": "10.0.0.2:7337",
                   "old_state": "CLOSE", "new_state": "SYN_SENT"}),
            json!({"ts": "2026-11-22T10:00:02Z", "event": "reset_received",
                   "src": "10.0.0.1:1;end", "dst": "10.0.0.2:7337",
                   "state": "SYN_SENT", "ttl": 64, "peer_ttl": 61}),
            json!({"ts": "2026-11-22T10:00:02Z", "event": "socket_error",
                   "src": "10.0.0.1:1;end", "dst": "10.0.0.2:7337",
                   "state": "CLOSE", "error": "<script>"}),
        ]);
        group.endpoint = "10.0.0.2:7337".into();
        assert_eq!(
            sequence(&ladder(&group)),
            "```mermaid\nsequenceDiagram\n\
             \x20   participant C as client 10.0.0.1:1_end\n\
             \x20   participant M as middlebox\n\
             \x20   participant S as server 10.0.0.2:7337\n\
             \x20   C->>S: +0.000 s SYN - sent by the client\n\
             \x20   Note over C,S: 2.000 s without a packet\n\
             \x20   M-xC: +2.000 s RST - TTL 64, but the server's packets arrive with TTL 61: a \
             middlebox sent it\n\
             \x20   Note left of C: +2.000 s socket error _script_\n\
             ```\n"
        );
    }
}
