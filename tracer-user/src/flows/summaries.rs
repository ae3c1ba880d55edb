//! Clean short-lived flows. The kernel keeps a flow *quiet* (sends nothing) until something
//! userspace must see happens; a quiet flow that closes cleanly sends one summary record
//! instead of a record per state change (see `tracer_ebpf::FlowSlot`). They are counted here,
//! exactly, per server port and side, and reported in the stats lines and the metrics.

use std::collections::BTreeMap;

use serde::Serialize;
use tracer_ebpf::tcp_state;

use crate::events::Event;

/// Distinct (port, side) rows kept; flows beyond are still counted in the total.
pub const MAX_ROWS: usize = 4096;

/// Clean flows to or from one watched server port, on one side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PortSummary {
    pub port: u16,
    pub side: &'static str,
    pub count: u64,
    /// Lifetimes, connect (or accept) to close, in milliseconds.
    pub total_ms: u64,
    pub max_ms: u64,
}

#[derive(Debug, Default)]
pub struct FlowSummaries {
    rows: BTreeMap<(u16, &'static str), PortSummary>,
    total: u64,
    /// Flows counted in `total` but in no row (the row table was full).
    unattributed: u64,
}

/// The server port and this host's side of a summarised flow: the side comes from the state
/// the flow opened in (SYN_SENT: we connected; SYN_RECV: we accepted).
pub fn port_and_side(event: &Event) -> (u16, &'static str) {
    if event.old_state == tcp_state::SYN_RECV {
        (event.local.port(), "server")
    } else {
        (event.remote.port(), "client")
    }
}

impl FlowSummaries {
    pub fn add(&mut self, event: &Event) {
        self.total += 1;
        let (port, side) = port_and_side(event);
        let ms = u64::try_from(event.detail).unwrap_or(0);
        let full = self.rows.len() >= MAX_ROWS;
        match self.rows.get_mut(&(port, side)) {
            Some(row) => {
                row.count += 1;
                row.total_ms += ms;
                row.max_ms = row.max_ms.max(ms);
            }
            None if full => self.unattributed += 1,
            None => {
                self.rows.insert(
                    (port, side),
                    PortSummary {
                        port,
                        side,
                        count: 1,
                        total_ms: ms,
                        max_ms: ms,
                    },
                );
            }
        }
    }

    /// Clean flows summarised since start.
    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn unattributed(&self) -> u64 {
        self.unattributed
    }

    /// Rows by port, then side.
    pub fn rows(&self) -> Vec<PortSummary> {
        self.rows.values().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{EventKind, sample_event};

    fn summary(local: &str, remote: &str, opened: u8, ms: i32) -> Event {
        Event {
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
            old_state: opened,
            new_state: tcp_state::CLOSE,
            detail: ms,
            ..sample_event(EventKind::FlowSummary, 9, 1)
        }
    }

    #[test]
    fn counts_by_server_port_and_side() {
        let mut summaries = FlowSummaries::default();
        summaries.add(&summary(
            "10.0.0.1:40000",
            "10.0.0.2:7337",
            tcp_state::SYN_SENT,
            3,
        ));
        summaries.add(&summary(
            "10.0.0.1:40001",
            "10.0.0.2:7337",
            tcp_state::SYN_SENT,
            9,
        ));
        summaries.add(&summary(
            "10.0.0.2:7337",
            "10.0.0.1:40000",
            tcp_state::SYN_RECV,
            2,
        ));
        assert_eq!(summaries.total(), 3);
        assert_eq!(
            summaries.rows(),
            vec![
                PortSummary {
                    port: 7337,
                    side: "client",
                    count: 2,
                    total_ms: 12,
                    max_ms: 9
                },
                PortSummary {
                    port: 7337,
                    side: "server",
                    count: 1,
                    total_ms: 2,
                    max_ms: 2
                },
            ]
        );
    }

    #[test]
    fn a_full_row_table_still_counts_every_flow() {
        let mut summaries = FlowSummaries::default();
        for port in 0..(MAX_ROWS as u16 + 10) {
            let remote = format!("10.0.0.2:{}", port + 1);
            summaries.add(&summary("10.0.0.1:40000", &remote, tcp_state::SYN_SENT, 1));
        }
        assert_eq!(summaries.rows().len(), MAX_ROWS);
        assert_eq!(summaries.unattributed(), 10);
        assert_eq!(summaries.total(), MAX_ROWS as u64 + 10);
    }
}
