//! Prometheus metrics (`--metrics-addr`): exposition with prometheus-client, served over HTTP
//! (`sinks::http`, bounded) on the same runtime, with `/healthz` for liveness.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use super::http::Response;
use anyhow::{Context as _, Result};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FindingLabels {
    kind: &'static str,
    port: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CleanFlowLabels {
    port: u16,
    side: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LossLabels {
    reason: &'static str,
}

/// The collector's metrics; cheap to clone (shared counters).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    events: Family<EventLabels, Counter>,
    findings: Family<FindingLabels, Counter>,
    clean_flows: Family<CleanFlowLabels, Counter>,
    repeats: Family<FindingLabels, Counter>,
    lost: Family<LossLabels, Counter>,
    flows: Gauge,
    programs_missing: Gauge,
    evictions: Counter,
    trace_bytes: Counter,
    /// Milliseconds since `started` at the collector's last housekeeping (for /healthz).
    heartbeat_ms: Arc<AtomicU64>,
    started: Instant,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("shuffletrace");
        let events = Family::<EventLabels, Counter>::default();
        registry.register("events", "Kernel events decoded, by type", events.clone());
        let findings = Family::<FindingLabels, Counter>::default();
        registry.register(
            "findings",
            "Finding occurrences, by kind and the server's port",
            findings.clone(),
        );
        let clean_flows = Family::<CleanFlowLabels, Counter>::default();
        registry.register(
            "clean_flows",
            "Flows that opened and closed cleanly (one summary each, no events), by server \
             port and this host's side",
            clean_flows.clone(),
        );
        let repeats = Family::<FindingLabels, Counter>::default();
        registry.register(
            "repeats_counted",
            "Finding occurrences the kernel counted instead of sending their events (included \
             in findings), by kind and the server's port",
            repeats.clone(),
        );
        let lost = Family::<LossLabels, Counter>::default();
        registry.register(
            "lost",
            "Evidence lost: ring buffer full, kernel table full, program runs skipped, trace \
             file lines not written (trace_write_error)",
            lost.clone(),
        );
        let flows = Gauge::default();
        registry.register(
            "flow_table_size",
            "Flows in the collector's table",
            flows.clone(),
        );
        let programs_missing = Gauge::default();
        registry.register(
            "programs_missing",
            "Kernel programs not attached at start (the start line's missing, with why)",
            programs_missing.clone(),
        );
        let evictions = Counter::default();
        registry.register(
            "flow_table_evictions",
            "Flows evicted from the full flow table",
            evictions.clone(),
        );
        let trace_bytes = Counter::default();
        registry.register(
            "trace_bytes_written",
            "Bytes written to trace files",
            trace_bytes.clone(),
        );
        Self {
            registry: Arc::new(registry),
            events,
            findings,
            clean_flows,
            repeats,
            lost,
            flows,
            programs_missing,
            evictions,
            trace_bytes,
            heartbeat_ms: Arc::new(AtomicU64::new(0)),
            started: Instant::now(),
        }
    }

    pub fn event(&self, event: &'static str) {
        self.events.get_or_create(&EventLabels { event }).inc();
    }

    pub fn repeats(&self, kind: &'static str, port: u16, count: u64) {
        self.repeats
            .get_or_create(&FindingLabels { kind, port })
            .inc_by(count);
    }

    pub fn finding(&self, kind: &'static str, port: u16, count: u64) {
        self.findings
            .get_or_create(&FindingLabels { kind, port })
            .inc_by(count);
    }

    pub fn clean_flow(&self, port: u16, side: &'static str) {
        self.clean_flows
            .get_or_create(&CleanFlowLabels { port, side })
            .inc();
    }

    /// Adds what was lost since the last call, by reason (0 makes the series, at 0).
    pub fn lost(&self, reason: &'static str, delta: u64) {
        self.lost
            .get_or_create(&LossLabels { reason })
            .inc_by(delta);
    }

    pub fn flow_table(&self, size: usize, new_evictions: u64) {
        self.flows.set(size as i64);
        self.evictions.inc_by(new_evictions);
    }

    /// Set once at start: how many kernel programs could not be attached.
    pub fn programs_missing(&self, count: usize) {
        self.programs_missing.set(count as i64);
    }

    pub fn trace_bytes(&self, delta: u64) {
        self.trace_bytes.inc_by(delta);
    }

    /// The collector is alive and draining.
    pub fn heartbeat(&self) {
        self.heartbeat_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }

    fn healthy(&self) -> bool {
        let now = self.started.elapsed().as_millis() as u64;
        now.saturating_sub(self.heartbeat_ms.load(Ordering::Relaxed)) < 30_000
    }

    /// Binds `addr` and serves `/metrics` and `/healthz` on the current runtime (see
    /// `sinks::http` for the bounds).
    pub async fn serve(&self, addr: SocketAddr) -> Result<()> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on --metrics-addr {addr}"))?;
        let metrics = self.clone();
        let answer = move |path: &str| match path {
            "/metrics" => Response {
                status: "200 OK",
                content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
                body: metrics.render(),
            },
            "/healthz" if metrics.healthy() => Response {
                status: "200 OK",
                content_type: "text/plain",
                body: "ok\n".into(),
            },
            "/healthz" => Response {
                status: "503 Service Unavailable",
                content_type: "text/plain",
                body: "collector stalled\n".into(),
            },
            _ => Response {
                status: "404 Not Found",
                content_type: "text/plain",
                body: "/metrics or /healthz\n".into(),
            },
        };
        tokio::spawn(super::http::serve(listener, Arc::new(answer)));
        tracing::info!("metrics on http://{addr}/metrics");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_the_counters() {
        let metrics = Metrics::new();
        metrics.event("state_change");
        metrics.event("state_change");
        metrics.finding("connect_refused", 7337, 3);
        metrics.lost("ringbuf_full", 2);
        metrics.flow_table(5, 1);
        metrics.trace_bytes(100);
        let text = metrics.render();
        // Served from the start, before the session sets it.
        assert!(text.contains("shuffletrace_programs_missing 0"), "{text}");
        metrics.programs_missing(2);
        let text = metrics.render();
        assert!(text.contains("shuffletrace_programs_missing 2"), "{text}");
        assert!(
            text.contains("shuffletrace_events_total{event=\"state_change\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("shuffletrace_findings_total{kind=\"connect_refused\",port=\"7337\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("shuffletrace_lost_total{reason=\"ringbuf_full\"} 2"),
            "{text}"
        );
        assert!(text.contains("shuffletrace_flow_table_size 5"), "{text}");
        assert!(
            text.contains("shuffletrace_trace_bytes_written_total 100"),
            "{text}"
        );
    }
}
