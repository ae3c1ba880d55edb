//! Events lost in the report's window, from `stats` lines read one at a time. The counters
//! are cumulative per run, so per node the growth of (ring-buffer drops + skipped program
//! runs) is summed in time order, a drop in the counter meaning a new run. Keeping every
//! stats line to sort them grew with the input; instead each node's lines are folded into
//! spans of consecutive lines (in time order), kept sorted: a line after a span's end extends
//! it, one before every span starts one (rotated files read in any order give one span per
//! file, or one in all). That is the sum a full sort gives, except for a line falling inside a
//! span (the same file twice, lines shuffled within a file): it is not counted but counted
//! as omitted, as are lines past `MAX_SPANS`.

use std::collections::BTreeMap;

use super::bounded::{MAX_NAME, cut};

/// Spans kept over all nodes (~100 bytes each, one per node and file at most).
pub const MAX_SPANS: usize = 10_000;

/// Consecutive stats lines of one node.
#[derive(Debug)]
struct Span {
    first_ts: String,
    first_total: u64,
    first_inside: bool,
    last_ts: String,
    last_total: u64,
    /// What the lines after the first add inside the window.
    growth: u64,
}

#[derive(Debug, Default)]
pub struct Losses {
    /// Each node's spans, sorted by time, not overlapping.
    by_node: BTreeMap<String, Vec<Span>>,
    spans: usize,
    /// Stats lines not counted: inside a span, or past `MAX_SPANS`.
    pub omitted: u64,
}

impl Losses {
    /// One stats line: its node, time, cumulative losses, and whether it is in the window.
    pub fn add(&mut self, node: &str, ts: &str, total: u64, inside: bool) {
        let spans = self.by_node.get_mut(node);
        let at = spans
            .as_ref()
            .map_or(0, |s| s.partition_point(|s| s.first_ts.as_str() <= ts));
        if let Some(span) = spans.and_then(|s| at.checked_sub(1).map(|i| &mut s[i])) {
            if ts < span.last_ts.as_str() {
                self.omitted += 1;
                return;
            }
            // No other span starts before `ts`: this line follows the span's last.
            let base = if total < span.last_total {
                0
            } else {
                span.last_total
            };
            if inside {
                span.growth = span.growth.saturating_add(total - base);
            }
            span.last_ts = cut(ts, MAX_NAME);
            span.last_total = total;
            return;
        }
        if self.spans >= MAX_SPANS {
            self.omitted += 1;
            return;
        }
        self.spans += 1;
        let ts = cut(ts, MAX_NAME);
        let span = Span {
            first_ts: ts.clone(),
            first_total: total,
            first_inside: inside,
            last_ts: ts,
            last_total: total,
            growth: 0,
        };
        self.by_node
            .entry(cut(node, MAX_NAME))
            .or_default()
            .insert(0, span);
    }

    /// The losses in the window, all nodes summed.
    pub fn total(self) -> u64 {
        let mut lost: u64 = 0;
        for spans in self.by_node.values() {
            let mut previous = 0;
            for span in spans {
                let base = if span.first_total < previous {
                    0
                } else {
                    previous
                };
                if span.first_inside {
                    lost = lost.saturating_add(span.first_total - base);
                }
                lost = lost.saturating_add(span.growth);
                previous = span.last_total;
            }
        }
        lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lost(lines: &[(u64, &str)], since: &str) -> (u64, u64) {
        let mut losses = Losses::default();
        for (total, ts) in lines {
            losses.add("a", ts, *total, *ts >= since);
        }
        (losses.omitted, losses.total())
    }

    #[test]
    fn losses_are_counted_per_run_in_time_order() {
        let lines = [
            (1, "2026-01-01T00:00:01.000000000Z"),
            (5, "2026-01-01T00:01:00.000000000Z"),
            (2, "2026-01-01T00:02:00.000000000Z"), // a new run
        ];
        assert_eq!(lost(&lines, ""), (0, 5 + 2));
        assert_eq!(lost(&lines, "2026-01-01T00:00:30.000000000Z"), (0, 4 + 2));
        // The same lines read newest file first: the same sum.
        let reordered = [lines[2], lines[0], lines[1]];
        assert_eq!(lost(&reordered, ""), (0, 5 + 2));
        assert_eq!(
            lost(&reordered, "2026-01-01T00:00:30.000000000Z"),
            (0, 4 + 2)
        );
        // The same file twice: the second copy falls inside the first's span.
        let twice = [lines[0], lines[1], lines[2], lines[0], lines[1], lines[2]];
        assert_eq!(lost(&twice, ""), (2, 5 + 2));
    }
}
