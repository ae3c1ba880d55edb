//! The TLS mismatch rules: which evidence marks a server as TLS (and how much of it is kept),
//! when a silent close or reset is a `plaintext_to_tls`, and how sure each verdict is.

use tracer_ebpf::{FlowActivity, payload_class as class};

use super::*;
use crate::findings::tls_ports::{MAX_ENDPOINTS, TlsPorts};

const MS: u64 = 1_000_000;
const CW: u8 = tcp_state::CLOSE_WAIT;

fn to(remote: &str, mut event: Event) -> Event {
    event.remote = remote.parse().unwrap();
    event
}

fn payload(cookie: u64, ns: u64, class: u8, received: bool) -> Event {
    let mut e = ev(
        EventKind::FirstPayload,
        cookie,
        ns,
        ES,
        ES,
        i32::from(class),
    );
    e.received = received;
    e
}

/// A client flow to `remote` that connected and sent `sent` at 2 ms.
fn request(h: &mut Harness, cookie: u64, remote: &str, sent: u8) {
    for event in [
        ev(EventKind::StateChange, cookie, 0, CL, SS, 0),
        ev(EventKind::StateChange, cookie, MS, SS, ES, 0),
        payload(cookie, 2 * MS, sent, false),
    ] {
        assert!(h.feed(to(remote, event)).is_empty());
    }
}

/// The findings of what came back from `remote`, tls_mismatch findings included (they wait
/// for a sidecar's application outcome otherwise).
fn answer(h: &mut Harness, remote: &str, event: Event) -> Vec<Finding> {
    let mut found = h.feed(to(remote, event));
    h.correlator.due_tls(u64::MAX, &mut found);
    found
}

/// A client flow to `remote` that sent `sent` and met `end` (a CLOSE_WAIT or a RST) at
/// `end_ns`.
fn silent(
    h: &mut Harness,
    cookie: u64,
    remote: &str,
    sent: u8,
    end: EventKind,
    end_ns: u64,
) -> Vec<Finding> {
    request(h, cookie, remote, sent);
    let end = match end {
        EventKind::ResetReceived => ev(end, cookie, end_ns, ES, ES, 0),
        _ => ev(EventKind::StateChange, cookie, end_ns, ES, CW, 0),
    };
    answer(h, remote, end)
}

/// A clean flow's summary, as the kernel sends it: which side, and what it spoke.
fn summary(local: &str, remote: &str, side: Side, classes: (u8, u8), ns: u64) -> Event {
    let mut e = ev(EventKind::FlowSummary, 99, ns, 0, CL, 1);
    e.old_state = if side == Side::Server {
        tcp_state::SYN_RECV
    } else {
        SS
    };
    e.side = Some(side);
    e.local = local.parse().unwrap();
    e.remote = remote.parse().unwrap();
    e.classes = classes;
    e
}

fn tls(f: &Finding) -> &TlsDetail {
    f.tls.as_ref().expect("a tls_mismatch has its detail")
}

#[test]
fn plaintext_closed_on_by_a_server_that_answered_others_with_tls_is_likely() {
    let mut h = Harness::new();
    // Another client's clean TLS connection to the same server, seen only as its summary.
    let other = summary(
        "10.0.0.9:50000",
        "10.0.0.2:10000",
        Side::Client,
        (class::TLS_CLIENT_HELLO, class::TLS_SERVER_HELLO),
        MS,
    );
    h.correlator.note_summary(&other);
    let found = silent(
        &mut h,
        1,
        "10.0.0.2:10000",
        class::SPARK_RPC,
        EventKind::StateChange,
        3 * MS,
    );
    assert_eq!(kinds(&found), vec![FindingKind::TlsMismatch]);
    let tls = tls(&found[0]);
    assert_eq!(
        (tls.direction, tls.confidence),
        ("plaintext_to_tls", Confidence::Likely)
    );
    assert_eq!(
        tls.answer,
        "closed the connection without a byte, 1.0 ms after the request"
    );
    assert_eq!(
        tls.basis,
        "10.0.0.2:10000 answered other clients with a TLS ServerHello, last 1.0 ms before the request"
    );
    assert!(
        found[0].summary.contains("likely speaks TLS"),
        "{}",
        found[0].summary
    );
    assert_eq!(
        found[0].evidence.len(),
        4,
        "the request and the close are its evidence"
    );
    // HiveServer2: the JDBC URL's TLS settings, for the process that sent it.
    assert!(found[0].remedy.contains("ssl=true") && found[0].remedy.contains("java (pid 42)"));
}

#[test]
fn a_local_tls_server_is_named_in_the_basis() {
    let mut h = Harness::new();
    let mut served = summary(
        "10.0.0.2:7337",
        "10.0.0.9:50000",
        Side::Server,
        (class::TLS_SERVER_HELLO, class::TLS_CLIENT_HELLO),
        MS,
    );
    served.owner.as_mut().unwrap().comm = "shuffle".into();
    h.correlator.note_summary(&served);
    let found = silent(
        &mut h,
        1,
        "10.0.0.2:7337",
        class::SPARK_RPC,
        EventKind::StateChange,
        60 * MS,
    );
    let tls = tls(&found[0]);
    assert!(
        tls.basis
            .starts_with("10.0.0.2:7337 (shuffle, pid 42 on this host) answered"),
        "{}",
        tls.basis
    );
    // Spark RPC: its TLS is spark.ssl.rpc.enabled, which spark.ssl.enabled does not turn on.
    assert!(
        found[0].remedy.contains("spark.ssl.rpc.enabled=true"),
        "{}",
        found[0].remedy
    );
    assert!(found[0].remedy.contains("spark.network.crypto.enabled"));
}

#[test]
fn a_reset_on_an_https_port_is_one_tls_mismatch_and_no_peer_reset() {
    let mut h = Harness::new();
    let found = silent(
        &mut h,
        1,
        "10.0.0.2:8443",
        class::HTTP,
        EventKind::ResetReceived,
        3 * MS,
    );
    assert_eq!(kinds(&found), vec![FindingKind::TlsMismatch], "one verdict");
    let tls = tls(&found[0]);
    assert_eq!(tls.confidence, Confidence::Likely);
    assert_eq!(tls.basis, "8443 is an HTTPS port in the seed table");
    assert!(
        tls.answer
            .starts_with("reset the connection without a byte")
    );
    // The close with ECONNRESET that follows is explained too.
    let close = to(
        "10.0.0.2:8443",
        ev(EventKind::StateChange, 1, 4 * MS, ES, CL, libc::ECONNRESET),
    );
    assert!(h.feed(close).is_empty());
}

#[test]
fn nothing_marks_the_port_as_tls_so_a_silent_close_is_no_mismatch() {
    let mut h = Harness::new();
    let closed = silent(
        &mut h,
        1,
        "10.0.0.2:7337",
        class::SPARK_RPC,
        EventKind::StateChange,
        3 * MS,
    );
    assert!(closed.is_empty(), "a plaintext server closing on bad input");
    let reset = silent(
        &mut h,
        2,
        "10.0.0.2:7337",
        class::SPARK_RPC,
        EventKind::ResetReceived,
        3 * MS,
    );
    assert_eq!(
        kinds(&reset),
        vec![FindingKind::PeerReset],
        "a reset stays a reset"
    );
    // A server that answered with plaintext is no TLS evidence.
    let plain = summary(
        "10.0.0.9:1",
        "10.0.0.2:7337",
        Side::Client,
        (class::SPARK_RPC, class::SPARK_RPC),
        MS,
    );
    h.correlator.note_summary(&plain);
    assert!(
        silent(
            &mut h,
            3,
            "10.0.0.2:7337",
            class::SPARK_RPC,
            EventKind::StateChange,
            3 * MS
        )
        .is_empty()
    );
}

#[test]
fn a_close_long_after_the_request_is_a_timeout_not_a_tls_rejection() {
    let mut h = Harness::new();
    let found = silent(
        &mut h,
        1,
        "10.0.0.2:443",
        class::HTTP,
        EventKind::StateChange,
        30 * SEC,
    );
    assert!(found.is_empty());
}

#[test]
fn a_forged_reset_is_a_middlebox_even_on_a_tls_port() {
    let mut h = Harness::new();
    request(&mut h, 1, "10.0.0.2:443", class::HTTP);
    let mut rst = ev(EventKind::ResetReceived, 1, 3 * MS, ES, ES, 0);
    (rst.ttl, rst.peer_ttl) = (Some(64), Some(61));
    let found = answer(&mut h, "10.0.0.2:443", rst);
    assert_eq!(kinds(&found), vec![FindingKind::MiddleboxReset]);
}

#[test]
fn the_servers_own_tls_record_is_certain() {
    let mut h = Harness::new();
    request(&mut h, 1, "10.0.0.2:7337", class::THRIFT_SASL);
    let alert = payload(1, 3 * MS, class::TLS_ALERT, true);
    let found = answer(&mut h, "10.0.0.2:7337", alert);
    let tls = tls(&found[0]);
    assert_eq!(
        (tls.direction, tls.confidence),
        ("plaintext_to_tls", Confidence::Certain)
    );
    assert_eq!(
        tls.basis,
        "10.0.0.2:7337 answered this connection with a TLS alert"
    );
    // And the alert marks the server for the next client that meets it silently.
    let next = silent(
        &mut h,
        2,
        "10.0.0.2:7337",
        class::SPARK_RPC,
        EventKind::StateChange,
        5 * MS,
    );
    assert!(tls_basis(&next).contains("answered other clients with a TLS alert"));
}

fn tls_basis(found: &[Finding]) -> String {
    assert_eq!(kinds(found), vec![FindingKind::TlsMismatch]);
    tls(&found[0]).basis.clone()
}

#[test]
fn a_clienthello_met_by_plaintext_is_certain_and_by_silence_likely() {
    let mut h = Harness::new();
    let mut found = silent(
        &mut h,
        1,
        "10.0.0.2:7337",
        class::TLS_CLIENT_HELLO,
        EventKind::ResetReceived,
        3 * MS,
    );
    assert_eq!(tls(&found[0]).confidence, Confidence::Likely);
    assert_eq!(tls(&found[0]).direction, "tls_to_plaintext");
    request(&mut h, 2, "10.0.0.2:7337", class::TLS_CLIENT_HELLO);
    let plaintext = payload(2, 3 * MS, class::SPARK_RPC, true);
    found = answer(&mut h, "10.0.0.2:7337", plaintext);
    assert_eq!(tls(&found[0]).confidence, Confidence::Certain);
    assert!(tls(&found[0]).basis.contains("spark_rpc, not TLS"));
}

#[test]
fn open_tls_flows_in_the_activity_table_mark_their_server() {
    let mut h = Harness::new();
    let mut activity = FlowActivity {
        family: tracer_ebpf::AF_INET as u8,
        local_port: 50000,
        remote_port: 10001,
        tx_class: class::TLS_CLIENT_HELLO,
        rx_class: class::TLS_SERVER_HELLO,
        ..Default::default()
    };
    activity.local_addr[..4].copy_from_slice(&[10, 0, 0, 9]);
    activity.remote_addr[..4].copy_from_slice(&[10, 0, 0, 2]);
    h.correlator.note_activity(&activity, MS);
    let found = silent(
        &mut h,
        1,
        "10.0.0.2:10001",
        class::HTTP,
        EventKind::StateChange,
        3 * MS,
    );
    assert!(tls_basis(&found).starts_with("10.0.0.2:10001 answered other clients"));
    assert!(found[0].remedy.contains("use_ssl=true"));
}

#[test]
fn loopback_servers_are_told_apart_by_network_namespace() {
    let mut ports = TlsPorts::default();
    let server = "127.0.0.1:10000".parse().unwrap();
    ports.learn(1, server, class::TLS_SERVER_HELLO, 0, None);
    assert!(ports.basis(1, server, 0).is_some());
    assert!(
        ports.basis(2, server, 0).is_none(),
        "another namespace's 127.0.0.1"
    );
    let routable = "10.0.0.2:10000".parse().unwrap();
    ports.learn(1, routable, class::TLS_SERVER_HELLO, 0, None);
    assert!(ports.basis(2, routable, 0).is_some());
}

#[test]
fn the_port_memory_is_bounded_and_forgets_the_least_recently_seen() {
    let mut ports = TlsPorts::default();
    let endpoint = |i: usize| -> std::net::SocketAddr {
        let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i as u32);
        std::net::SocketAddr::new(ip.into(), 443)
    };
    for i in 0..MAX_ENDPOINTS {
        ports.learn(0, endpoint(i), class::TLS_SERVER_HELLO, i as u64, None);
    }
    // The first one is seen again: it is recent now.
    ports.learn(
        0,
        endpoint(0),
        class::TLS_SERVER_HELLO,
        MAX_ENDPOINTS as u64,
        None,
    );
    ports.learn(
        0,
        endpoint(MAX_ENDPOINTS),
        class::TLS_SERVER_HELLO,
        MAX_ENDPOINTS as u64 + 1,
        None,
    );
    assert!(ports.len() <= MAX_ENDPOINTS);
    assert_eq!(ports.len(), MAX_ENDPOINTS - MAX_ENDPOINTS / 8 + 1);
    let known = |ports: &TlsPorts, i: usize| {
        ports
            .basis(0, endpoint(i), u64::MAX)
            .is_some_and(|b| b.contains("answered other clients"))
    };
    assert!(known(&ports, 0) && known(&ports, MAX_ENDPOINTS));
    assert!(!known(&ports, 1), "the least recently seen went first");
    assert!(known(&ports, MAX_ENDPOINTS - 1));
}
