//! Folding identical findings: the first of a window is printed at once, the rest counted and
//! printed as one line with the exact count when the window closes.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
};

use super::*;
use crate::events::Side;

/// Words for an aggregate line: how many occurrences it stands for.
fn close_aggregate(mut f: Finding) -> Finding {
    if f.count > 1 {
        let span = f.last_ns.saturating_sub(f.first_ns) as f64 / 1e9;
        f.summary = format!("{} ({} more times within {span:.1} s.)", f.summary, f.count);
    } else {
        f.summary = format!("{} (Once more.)", f.summary);
    }
    f
}

/// Which end serves: findings about the same service from the same client fold together,
/// whatever the client's ephemeral port.
fn aggregation_key(f: &Finding) -> (FindingKind, SocketAddr, IpAddr, Option<u32>, u32) {
    let (service, client) = match f.side {
        Some(Side::Server) => (f.src, f.dst.ip()),
        _ => (f.dst, f.src.ip()),
    };
    (
        f.kind,
        service,
        client,
        f.owner.as_ref().map(|o| o.pid),
        f.netns,
    )
}

struct Window {
    opened_ns: u64,
    /// Occurrences seen since the last line, not yet printed.
    pending: Option<Finding>,
}

/// Folds identical findings within a window: the first is printed at once, the rest are
/// counted and printed as one line when the window closes. Counts are exact.
pub struct Aggregator {
    window_ns: u64,
    windows: HashMap<(FindingKind, SocketAddr, IpAddr, Option<u32>, u32), Window>,
    /// Most distinct keys held at once; past it the oldest window is flushed early (printed,
    /// not dropped), so memory is bounded and nothing is lost.
    capacity: usize,
}

impl Aggregator {
    pub fn new(window_ns: u64, capacity: usize) -> Self {
        Self {
            window_ns,
            windows: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// Offers a finding. Returns the lines to print now (the finding itself when it opens a
    /// window, plus any aggregate flushed to make room) and, when the finding was folded into
    /// a pending aggregate instead, its id.
    pub fn offer(&mut self, finding: Finding) -> (Vec<Finding>, Option<u64>) {
        if finding.update_of.is_some() {
            return (vec![finding], None);
        }
        let key = aggregation_key(&finding);
        let now = finding.boot_ns;
        let mut print = Vec::new();
        let full = self.windows.len() >= self.capacity;
        match self.windows.get_mut(&key) {
            Some(window) if now.saturating_sub(window.opened_ns) < self.window_ns => {
                let id = finding.id;
                match &mut window.pending {
                    Some(pending) => {
                        pending.count += finding.count;
                        pending.first_ns = pending.first_ns.min(finding.first_ns);
                        pending.last_ns = pending.last_ns.max(finding.last_ns);
                        pending.boot_ns = now;
                    }
                    None => window.pending = Some(finding),
                }
                return (print, Some(id));
            }
            Some(window) => {
                // Expired but not flushed yet: its aggregate goes out before the new line.
                print.extend(window.pending.take().map(close_aggregate));
            }
            None if full => {
                print.extend(self.evict_oldest().map(close_aggregate));
            }
            None => {}
        }
        self.windows.insert(
            key,
            Window {
                opened_ns: now,
                pending: None,
            },
        );
        print.push(finding);
        (print, None)
    }

    fn evict_oldest(&mut self) -> Option<Finding> {
        let key = *self
            .windows
            .iter()
            .min_by_key(|(_, w)| w.opened_ns)
            .map(|(k, _)| k)?;
        self.windows.remove(&key).and_then(|w| w.pending)
    }

    /// Closes windows older than the window length: returns their aggregate lines.
    pub fn due(&mut self, now_ns: u64) -> Vec<Finding> {
        let window_ns = self.window_ns;
        let mut lines = Vec::new();
        self.windows.retain(|_, w| {
            if now_ns.saturating_sub(w.opened_ns) < window_ns {
                return true;
            }
            lines.extend(w.pending.take().map(close_aggregate));
            false
        });
        lines.sort_by_key(|f| f.first_ns);
        lines
    }

    /// Everything still pending (at shutdown).
    pub fn flush(&mut self) -> Vec<Finding> {
        let mut lines: Vec<Finding> = self
            .windows
            .drain()
            .filter_map(|(_, w)| w.pending.map(close_aggregate))
            .collect();
        lines.sort_by_key(|f| f.first_ns);
        lines
    }
}
