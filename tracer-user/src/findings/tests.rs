use super::*;
use crate::config::NatIdle;
use crate::events::Owner;

const SEC: u64 = 1_000_000_000;

pub(super) fn config() -> Thresholds {
    Thresholds {
        storm_retransmits: 5,
        storm_window_ns: 10 * SEC,
        synack_retransmits: 2,
        aggregate_window_ns: 10 * SEC,
        nat_idle: NatIdle::parse("10s").unwrap(),
    }
}

pub(super) struct Harness {
    flows: FlowTable,
    correlator: Correlator,
}

impl Harness {
    pub(super) fn new() -> Self {
        Self {
            flows: FlowTable::new(1024),
            correlator: Correlator::new(
                config(),
                ResetReasons::new(vec![
                    (1, "NO_SOCKET".into()),
                    (14, "TCP_STATE".into()),
                    (15, "TCP_ABORT_ON_CLOSE".into()),
                ]),
            ),
        }
    }

    pub(super) fn feed(&mut self, mut event: Event) -> Vec<Finding> {
        let mut out = Vec::new();
        let flow = self.flows.observe(&mut event);
        self.correlator.on_event(&event, flow, &mut out);
        out
    }

    fn end_all(&mut self, now: u64) -> Vec<Finding> {
        let mut out = Vec::new();
        for flow in self.flows.drain() {
            self.correlator.on_flow_end(flow, now, &mut out);
        }
        out
    }
}

pub(super) fn ev(kind: EventKind, cookie: u64, ns: u64, old: u8, new: u8, detail: i32) -> Event {
    Event {
        owner: Some(Owner {
            pid: 42,
            tid: 42,
            uid: 1000,
            comm: "java".into(),
            cgroup_id: 1,
            process: None,
        }),
        side: Some(Side::Client),
        old_state: old,
        new_state: new,
        detail,
        ..crate::events::sample_event(kind, cookie, ns)
    }
}

const SS: u8 = tcp_state::SYN_SENT;
const CL: u8 = tcp_state::CLOSE;
const ES: u8 = tcp_state::ESTABLISHED;

fn kinds(found: &[Finding]) -> Vec<FindingKind> {
    found.iter().map(|f| f.kind).collect()
}

#[test]
fn refused_connect_gives_one_finding() {
    let mut h = Harness::new();
    let mut found = h.feed(ev(EventKind::StateChange, 1, 0, CL, SS, 0));
    found.extend(h.feed(ev(EventKind::ResetReceived, 1, 10, SS, SS, 0)));
    found.extend(h.feed(ev(
        EventKind::StateChange,
        1,
        11,
        SS,
        CL,
        libc::ECONNREFUSED,
    )));
    found.extend(h.feed(ev(
        EventKind::SocketError,
        1,
        12,
        CL,
        CL,
        libc::ECONNREFUSED,
    )));
    assert_eq!(kinds(&found), vec![FindingKind::ConnectRefused]);
    let f = &found[0];
    assert_eq!(f.dst, "10.0.0.2:7337".parse().unwrap());
    assert_eq!(&*f.owner.as_ref().unwrap().comm, "java");
    assert!(f.remedy.contains("7337"));
    assert_eq!(f.evidence.len(), 2, "the connect and the RST");
    assert_eq!(f.first_ns, 0);
}

#[test]
fn error_report_before_the_reset_still_gives_one_finding() {
    let mut h = Harness::new();
    h.feed(ev(EventKind::StateChange, 1, 0, CL, SS, 0));
    let mut found = h.feed(ev(EventKind::SocketError, 1, 5, SS, SS, libc::ECONNREFUSED));
    found.extend(h.feed(ev(EventKind::ResetReceived, 1, 6, SS, SS, 0)));
    assert_eq!(kinds(&found), vec![FindingKind::ConnectRefused]);
}

#[test]
fn lost_reset_is_recovered_from_the_close_error() {
    let mut h = Harness::new();
    h.feed(ev(EventKind::StateChange, 1, 0, CL, SS, 0));
    let found = h.feed(ev(EventKind::StateChange, 1, 5, SS, CL, libc::ECONNREFUSED));
    assert_eq!(kinds(&found), vec![FindingKind::ConnectRefused]);
}

#[test]
fn an_error_already_consumed_is_no_verdict() {
    let mut h = Harness::new();
    h.feed(ev(EventKind::StateChange, 1, 0, CL, SS, 0));
    assert!(
        h.feed(ev(EventKind::SocketError, 1, 5, SS, SS, 0))
            .is_empty()
    );
}

#[test]
fn timeout_then_etimedout_is_a_finding_and_one_update() {
    let mut h = Harness::new();
    h.feed(ev(EventKind::StateChange, 1, 0, CL, SS, 0));
    let first = h.feed(ev(EventKind::Retransmit, 1, SEC, SS, SS, 0));
    assert_eq!(kinds(&first), vec![FindingKind::ConnectTimeout]);
    assert!(
        h.feed(ev(EventKind::Retransmit, 1, 3 * SEC, SS, SS, 0))
            .is_empty()
    );
    let mut updates = h.feed(ev(
        EventKind::StateChange,
        1,
        7 * SEC,
        SS,
        CL,
        libc::ETIMEDOUT,
    ));
    updates.extend(h.feed(ev(
        EventKind::SocketError,
        1,
        7 * SEC,
        CL,
        CL,
        libc::ETIMEDOUT,
    )));
    updates.extend(h.end_all(20 * SEC));
    assert_eq!(updates.len(), 1, "{updates:?}");
    assert_eq!(updates[0].update_of, Some(first[0].id));
    assert_eq!(updates[0].count, 0);
    assert!(updates[0].summary.contains("ETIMEDOUT") && updates[0].summary.contains("2 SYN"));
}

#[test]
fn timeout_closed_by_the_application_is_updated_when_the_flow_ends() {
    let mut h = Harness::new();
    h.feed(ev(EventKind::StateChange, 1, 0, CL, SS, 0));
    let first = h.feed(ev(EventKind::Retransmit, 1, SEC, SS, SS, 0));
    assert!(
        h.feed(ev(EventKind::StateChange, 1, 2 * SEC, SS, CL, 0))
            .is_empty()
    );
    let updates = h.end_all(10 * SEC);
    assert_eq!(updates.len(), 1);
    assert_eq!(updates[0].update_of, Some(first[0].id));
    assert!(updates[0].summary.contains("application gave up"));
}

#[test]
fn icmp_error_beats_the_syn_retry() {
    let mut h = Harness::new();
    h.feed(ev(EventKind::StateChange, 1, 0, CL, SS, 0));
    let mut retry = ev(EventKind::Retransmit, 1, SEC, SS, SS, libc::EHOSTUNREACH);
    retry.soft_error = true;
    let found = h.feed(retry);
    assert_eq!(kinds(&found), vec![FindingKind::HostUnreachable]);
    assert!(
        h.feed(ev(EventKind::Retransmit, 1, 3 * SEC, SS, SS, 0))
            .is_empty()
    );
    assert!(
        h.feed(ev(
            EventKind::StateChange,
            1,
            4 * SEC,
            SS,
            CL,
            libc::EHOSTUNREACH
        ))
        .is_empty()
    );
}

#[test]
fn reset_with_another_ttl_is_a_middlebox() {
    let mut h = Harness::new();
    h.feed(ev(EventKind::StateChange, 1, 0, SS, ES, 0));
    let mut rst = ev(EventKind::ResetReceived, 1, 5, ES, ES, 0);
    rst.ttl = Some(64);
    rst.peer_ttl = Some(61);
    let found = h.feed(rst);
    assert_eq!(kinds(&found), vec![FindingKind::MiddleboxReset]);
    assert!(found[0].summary.contains("TTL 64") && found[0].summary.contains("TTL 61"));
    let mut h = Harness::new();
    let mut rst = ev(EventKind::ResetReceived, 2, 5, ES, ES, 0);
    rst.ttl = Some(61);
    rst.peer_ttl = Some(61);
    assert_eq!(kinds(&h.feed(rst)), vec![FindingKind::PeerReset]);
    let mut rst = ev(EventKind::ResetReceived, 3, 5, ES, ES, 0);
    rst.ttl = Some(64); // peer TTL unknown: cannot tell, the peer is presumed
    assert_eq!(kinds(&h.feed(rst)), vec![FindingKind::PeerReset]);
}

#[test]
fn storms_need_the_threshold_within_the_window_and_report_once_per_window() {
    let mut h = Harness::new();
    let mut found = Vec::new();
    // Four retransmits: below the threshold.
    for i in 0..4 {
        found.extend(h.feed(ev(EventKind::Retransmit, 1, i * SEC, ES, ES, 0)));
    }
    assert!(found.is_empty());
    // Slow ones spread over minutes never make a storm.
    let mut slow = Harness::new();
    for i in 0..20 {
        assert!(
            slow.feed(ev(EventKind::Retransmit, 9, i * 30 * SEC, ES, ES, 0))
                .is_empty()
        );
    }
    found.extend(h.feed(ev(EventKind::Retransmit, 1, 4 * SEC, ES, ES, 0)));
    assert_eq!(kinds(&found), vec![FindingKind::RetransmitStorm]);
    for i in 5..12 {
        assert!(
            h.feed(ev(EventKind::Retransmit, 1, i * SEC, ES, ES, 0))
                .is_empty()
        );
    }
    let again = h.feed(ev(EventKind::Retransmit, 1, 15 * SEC, ES, ES, 0));
    assert_eq!(kinds(&again), vec![FindingKind::RetransmitStorm]);
}

#[test]
fn synack_retransmits_are_a_blocked_return_path_once() {
    let mut h = Harness::new();
    let synack = |ns| {
        let mut e = ev(EventKind::SynackRetransmit, 7, ns, 12, 12, 0);
        e.side = Some(Side::Server);
        e.local = "10.0.0.2:10000".parse().unwrap();
        e.remote = "10.0.0.1:40000".parse().unwrap();
        e
    };
    assert!(h.feed(synack(SEC)).is_empty());
    let found = h.feed(synack(3 * SEC));
    assert_eq!(kinds(&found), vec![FindingKind::ReturnPathBlocked]);
    assert_eq!(found[0].src, "10.0.0.2:10000".parse().unwrap());
    assert!(h.feed(synack(7 * SEC)).is_empty());
}

#[test]
fn reset_without_a_socket_is_a_local_reset() {
    let mut h = Harness::new();
    let mut rst = ev(EventKind::ResetSent, 0, 5, CL, CL, 1);
    rst.no_socket = true;
    rst.answers_syn = true;
    rst.owner = None;
    let found = h.feed(rst);
    assert_eq!(kinds(&found), vec![FindingKind::LocalReset]);
    assert_eq!(found[0].severity, Severity::Warning);
    assert!(found[0].summary.contains("NO_SOCKET"));
}

#[test]
fn reset_without_a_socket_on_a_kernel_without_reasons_says_nothing_listens() {
    // Linux 6.1: the kfree_skb program reports it with no reason number.
    let mut h = Harness::new();
    h.correlator.reasons = ResetReasons::default();
    let mut rst = ev(EventKind::ResetSent, 0, 5, CL, CL, 0);
    rst.no_socket = true;
    rst.answers_syn = true;
    rst.owner = None;
    rst.local = "10.0.0.2:7337".parse().unwrap();
    let found = h.feed(rst);
    assert_eq!(kinds(&found), vec![FindingKind::LocalReset]);
    assert!(
        found[0].summary.contains("nothing listens on port 7337"),
        "{}",
        found[0].summary
    );
    assert!(
        found[0].remedy.contains("nothing listens"),
        "{}",
        found[0].remedy
    );
}

#[test]
fn reset_without_a_socket_for_a_late_segment_is_not_nothing_listens() {
    // A RST from a client's ephemeral port answering a late FIN of a connection it closed.
    let mut h = Harness::new();
    let mut rst = ev(EventKind::ResetSent, 0, 5, CL, CL, 1);
    rst.no_socket = true;
    rst.owner = None;
    rst.local = "127.0.0.1:55746".parse().unwrap();
    let found = h.feed(rst);
    assert_eq!(kinds(&found), vec![FindingKind::LocalReset]);
    assert_eq!(found[0].severity, Severity::Info);
    assert!(
        found[0].summary.contains("belongs to no connection here"),
        "{}",
        found[0].summary
    );
    assert!(
        !found[0].remedy.contains("nothing listens"),
        "{}",
        found[0].remedy
    );
}

fn refused(h: &mut Harness, cookie: u64, ns: u64) -> Finding {
    h.feed(ev(EventKind::StateChange, cookie, ns, CL, SS, 0));
    h.feed(ev(EventKind::ResetReceived, cookie, ns, SS, SS, 0))
        .remove(0)
}

#[test]
fn a_storm_of_identical_findings_is_one_line_plus_one_aggregate_with_the_exact_count() {
    let mut h = Harness::new();
    let mut agg = Aggregator::new(10 * SEC, 1024);
    let mut printed = Vec::new();
    let mut folded = 0;
    for i in 0..1000u64 {
        let (lines, id) = agg.offer(refused(&mut h, i + 1, i * 1_000_000));
        printed.extend(lines);
        folded += u64::from(id.is_some());
    }
    assert_eq!(printed.len(), 1);
    assert_eq!(folded, 999);
    assert!(agg.due(5 * SEC).is_empty(), "window still open");
    let aggregate = agg.due(11 * SEC);
    assert_eq!(aggregate.len(), 1);
    assert_eq!(aggregate[0].count, 999);
    assert_eq!(printed[0].count + aggregate[0].count, 1000);
    assert!(aggregate[0].summary.contains("999 more times"));
    assert!(agg.flush().is_empty());
}

#[test]
fn different_destinations_or_processes_are_not_folded() {
    let mut h = Harness::new();
    let mut agg = Aggregator::new(10 * SEC, 1024);
    let a = refused(&mut h, 1, 0);
    let mut b = refused(&mut h, 2, 1);
    b.dst = "10.0.0.3:7337".parse().unwrap();
    let mut c = refused(&mut h, 3, 2);
    c.owner.as_mut().unwrap().pid = 43;
    for f in [a, b, c] {
        let (lines, folded) = agg.offer(f);
        assert_eq!(lines.len(), 1);
        assert!(folded.is_none());
    }
}

#[test]
fn a_full_aggregator_flushes_early_and_loses_nothing() {
    let mut h = Harness::new();
    let mut agg = Aggregator::new(10 * SEC, 2);
    let mut total = 0;
    for round in 0..3u64 {
        for port in 0..3u16 {
            let mut f = refused(&mut h, u64::from(port) * 10 + round + 1, round);
            f.dst.set_port(7000 + port);
            let (lines, _) = agg.offer(f);
            total += lines.iter().map(|l| l.count).sum::<u64>();
        }
    }
    total += agg.flush().iter().map(|l| l.count).sum::<u64>();
    assert_eq!(total, 9);
}

#[test]
fn a_finding_after_the_window_flushes_the_aggregate_then_prints() {
    let mut h = Harness::new();
    let mut agg = Aggregator::new(10 * SEC, 16);
    agg.offer(refused(&mut h, 1, 0));
    agg.offer(refused(&mut h, 2, SEC));
    let (lines, folded) = agg.offer(refused(&mut h, 3, 20 * SEC));
    assert!(folded.is_none());
    assert_eq!(
        lines.iter().map(|l| l.count).collect::<Vec<_>>(),
        vec![1, 1]
    );
    assert!(lines[0].summary.contains("Once more"));
}

mod tls;
