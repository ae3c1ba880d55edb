//! The join rules, on findings as the correlator makes them.

use super::*;
use crate::events::{EventKind, sample_event};

fn finding(kind: FindingKind, severity: Severity, src: &str, dst: &str, side: Side) -> Finding {
    let mut event = sample_event(EventKind::ResetSent, 1, 1_000);
    event.local = src.parse().unwrap();
    event.remote = dst.parse().unwrap();
    event.side = Some(side);
    event.owner = Some(Owner {
        pid: 42,
        tid: 43,
        uid: 1000,
        comm: "java".into(),
        cgroup_id: 1,
        process: None,
    });
    let mut correlator = crate::findings::Correlator::new(
        crate::findings::tests::config(),
        crate::events::ResetReasons::new(Vec::new()),
    );
    let mut f = correlator.finding(kind, severity, &event);
    f.summary = "S.".into();
    f.evidence = vec![event];
    f
}

fn refusal_sent(src: &str, dst: &str) -> Finding {
    let mut f = finding(
        FindingKind::LocalReset,
        Severity::Warning,
        src,
        dst,
        Side::Server,
    );
    f.evidence[0].no_socket = true;
    f.evidence[0].answers_syn = true;
    f.owner = None;
    f.netns = 7;
    f
}

#[test]
fn a_refusal_seen_from_both_ends_is_the_clients_connect_refused() {
    let mut joiner = Joiner::default();
    let mut out = Vec::new();
    joiner.offer(refusal_sent("10.0.0.2:7337", "10.0.0.1:40000"), &mut out);
    assert!(out.is_empty(), "the sent RST waits for its other end");
    let refused = finding(
        FindingKind::ConnectRefused,
        Severity::Error,
        "10.0.0.1:40000",
        "10.0.0.2:7337",
        Side::Client,
    );
    joiner.offer(refused, &mut out);
    assert!(out.is_empty(), "held for further RSTs of the incident");
    joiner.due(u64::MAX, &mut out);
    assert_eq!(out.len(), 1);
    let joined = &out[0];
    assert_eq!(joined.kind, FindingKind::ConnectRefused);
    assert_eq!(joined.severity, Severity::Error);
    let peer = joined.peer.as_ref().unwrap();
    assert_eq!((peer.netns, peer.side), (7, Some(Side::Server)));
    assert!(
        joined
            .summary
            .contains("nothing listens on port 7337 in network namespace 7"),
        "{}",
        joined.summary
    );
    joiner.flush(&mut out);
    assert_eq!(out.len(), 1, "nothing was left held");
}

#[test]
fn a_refusal_counted_for_another_client_port_still_joins() {
    let mut joiner = Joiner::default();
    let mut out = Vec::new();
    joiner.offer(refusal_sent("10.0.0.2:7337", "10.0.0.1:40000"), &mut out);
    let refused = finding(
        FindingKind::ConnectRefused,
        Severity::Error,
        "10.0.0.1:40123",
        "10.0.0.2:7337",
        Side::Client,
    );
    joiner.offer(refused, &mut out);
    joiner.flush(&mut out);
    assert_eq!(out.len(), 1);
    assert!(out[0].peer.is_some());
}

#[test]
fn a_clients_abort_is_its_own_info_finding_naming_the_server() {
    let mut joiner = Joiner::default();
    let mut out = Vec::new();
    let abort = finding(
        FindingKind::LocalReset,
        Severity::Info,
        "127.0.0.1:36800",
        "127.0.0.1:10000",
        Side::Client,
    );
    joiner.offer(abort, &mut out);
    let mut seen = finding(
        FindingKind::PeerReset,
        Severity::Error,
        "127.0.0.1:10000",
        "127.0.0.1:36800",
        Side::Server,
    );
    seen.owner.as_mut().unwrap().pid = 99;
    joiner.offer(seen, &mut out);
    // The listener's RST answering the client's last segment: the same incident.
    let mut late = finding(
        FindingKind::LocalReset,
        Severity::Info,
        "127.0.0.1:10000",
        "127.0.0.1:36800",
        Side::Server,
    );
    late.boot_ns += 1;
    late.evidence[0].boot_ns += 1;
    joiner.offer(late, &mut out);
    joiner.flush(&mut out);
    assert_eq!(out.len(), 1, "{out:?}");
    let joined = &out[0];
    assert_eq!(
        (joined.kind, joined.severity, joined.side),
        (FindingKind::LocalReset, Severity::Info, Some(Side::Client))
    );
    let peer = joined.peer.as_ref().unwrap();
    assert_eq!(peer.owner.as_ref().unwrap().pid, 99);
    assert_eq!(peer.side, Some(Side::Server));
    assert_eq!(
        joined.evidence.len(),
        3,
        "both ends' evidence, and the late RST"
    );
}

#[test]
fn the_receivers_finding_may_come_first() {
    let mut joiner = Joiner::default();
    let mut out = Vec::new();
    joiner.offer(
        finding(
            FindingKind::PeerReset,
            Severity::Error,
            "127.0.0.1:10000",
            "127.0.0.1:36800",
            Side::Server,
        ),
        &mut out,
    );
    assert!(out.is_empty());
    joiner.offer(
        finding(
            FindingKind::LocalReset,
            Severity::Info,
            "127.0.0.1:36800",
            "127.0.0.1:10000",
            Side::Client,
        ),
        &mut out,
    );
    joiner.flush(&mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].kind, out[0].severity),
        (FindingKind::LocalReset, Severity::Info)
    );
}

#[test]
fn a_servers_abort_is_a_warning_naming_the_client() {
    let mut joiner = Joiner::default();
    let mut out = Vec::new();
    joiner.offer(
        finding(
            FindingKind::LocalReset,
            Severity::Info,
            "10.0.0.2:10000",
            "10.0.0.1:36800",
            Side::Server,
        ),
        &mut out,
    );
    joiner.offer(
        finding(
            FindingKind::PeerReset,
            Severity::Error,
            "10.0.0.1:36800",
            "10.96.0.10:10000",
            Side::Client,
        ),
        &mut out,
    );
    joiner.flush(&mut out);
    assert_eq!(out.len(), 1, "joined through a service address: {out:?}");
    assert_eq!(out[0].severity, Severity::Warning);
    assert_eq!(out[0].kind, FindingKind::LocalReset);
}

#[test]
fn loopback_ends_in_other_namespaces_do_not_join() {
    let mut joiner = Joiner::default();
    let mut out = Vec::new();
    let mut abort = finding(
        FindingKind::LocalReset,
        Severity::Info,
        "127.0.0.1:36800",
        "127.0.0.1:10000",
        Side::Client,
    );
    abort.netns = 1;
    joiner.offer(abort, &mut out);
    let mut other = finding(
        FindingKind::PeerReset,
        Severity::Error,
        "127.0.0.1:10000",
        "127.0.0.1:36800",
        Side::Server,
    );
    other.netns = 2;
    joiner.offer(other, &mut out);
    assert!(out.is_empty());
    joiner.due(u64::MAX, &mut out);
    assert_eq!(out.len(), 2, "both published alone when their moment ends");
    assert!(out.iter().all(|f| f.peer.is_none()));
}

#[test]
fn held_findings_are_bounded_and_published_when_due() {
    let mut joiner = Joiner::default();
    let mut out = Vec::new();
    for port in 0..(MAX_HELD as u16 + 3) {
        let mut f = finding(
            FindingKind::LocalReset,
            Severity::Info,
            "10.0.0.1:1",
            &format!("10.0.0.9:{port}"),
            Side::Client,
        );
        f.boot_ns = 1_000 + u64::from(port);
        joiner.offer(f, &mut out);
    }
    assert_eq!(out.len(), 3, "past the bound the oldest go out");
    joiner.due(1_000 + JOIN_WINDOW_NS + 10, &mut out);
    assert_eq!(out.len(), 3 + 8, "boot times 1003..=1010 are due");
    joiner.flush(&mut out);
    assert_eq!(out.len(), MAX_HELD + 3);
}

#[test]
fn a_tls_mismatch_takes_in_the_resets_it_explains() {
    let mut joiner = Joiner::default();
    let mut out = Vec::new();
    // The plaintext server's RST to the sidecar's upstream connection.
    let mut server = finding(
        FindingKind::LocalReset,
        Severity::Info,
        "10.0.0.2:7337",
        "10.0.0.1:35262",
        Side::Server,
    );
    server.netns = 2;
    joiner.offer(server, &mut out);
    // The reset the intercepted application saw (from the sidecar, one hop nearer).
    let app = finding(
        FindingKind::MiddleboxReset,
        Severity::Error,
        "10.0.0.1:35246",
        "10.0.0.2:7337",
        Side::Client,
    );
    joiner.offer(app, &mut out);
    // Somebody else's reset stays.
    joiner.offer(
        finding(
            FindingKind::PeerReset,
            Severity::Error,
            "10.0.0.1:40000",
            "10.0.0.3:7337",
            Side::Client,
        ),
        &mut out,
    );
    assert!(out.is_empty());
    let mut tls = finding(
        FindingKind::TlsMismatch,
        Severity::Error,
        "10.0.0.1:35262",
        "10.0.0.2:7337",
        Side::Client,
    );
    tls.tls = Some(crate::findings::TlsDetail {
        direction: "tls_to_plaintext",
        sidecar: true,
        sent: "tls_client_hello",
        answer: "reset".into(),
        confidence: crate::findings::Confidence::Certain,
        basis: String::new(),
        intercepted: Some(crate::findings::Intercepted {
            src: "10.0.0.1:35246".parse().unwrap(),
            dst: "10.0.0.2:7337".parse().unwrap(),
            owner: None,
            outcome: "reset",
        }),
    });
    joiner.offer(tls.clone(), &mut out);
    assert!(out.is_empty(), "held, for resets that come later");
    joiner.flush(&mut out);
    assert_eq!(
        kinds(&out),
        vec![FindingKind::PeerReset, FindingKind::TlsMismatch]
    );
    let joined = &out[1];
    assert_eq!(joined.peer.as_ref().unwrap().netns, 2, "the server end");
    assert_eq!(
        joined.evidence.len(),
        3,
        "its own, the server's and the app's"
    );

    // The server's RST reported after the client's verdict.
    let mut joiner = Joiner::default();
    let mut out = Vec::new();
    joiner.offer(tls, &mut out);
    let mut server = finding(
        FindingKind::LocalReset,
        Severity::Info,
        "10.0.0.2:7337",
        "10.0.0.1:35262",
        Side::Server,
    );
    server.netns = 2;
    joiner.offer(server, &mut out);
    joiner.flush(&mut out);
    assert_eq!(kinds(&out), vec![FindingKind::TlsMismatch]);
    assert!(out[0].peer.is_some());
}

fn kinds(found: &[Finding]) -> Vec<FindingKind> {
    found.iter().map(|f| f.kind).collect()
}

#[test]
fn with_neither_side_known_no_one_is_blamed() {
    let mut joiner = Joiner::default();
    let mut out = Vec::new();
    let mut sent = finding(
        FindingKind::LocalReset,
        Severity::Info,
        "10.0.0.1:40000",
        "10.0.0.2:7337",
        Side::Client,
    );
    sent.side = None;
    let mut seen = finding(
        FindingKind::PeerReset,
        Severity::Error,
        "10.0.0.2:7337",
        "10.0.0.1:40000",
        Side::Server,
    );
    seen.side = None;
    joiner.offer(sent, &mut out);
    joiner.offer(seen, &mut out);
    joiner.flush(&mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].severity, Severity::Info, "the sender's own");
    assert!(
        out[0].summary.ends_with("saw the reset."),
        "{}",
        out[0].summary
    );
}
