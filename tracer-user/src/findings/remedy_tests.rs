//! One test per finding kind: the remedy names the right end, port and setting, and only
//! settings the real software accepts. A remedy that sends an SRE to the wrong process or
//! the client's ephemeral port is worse than none.

use std::time::Duration;

use super::tests::{Harness, ev};
use super::*;
use crate::events::keepalive::KeepaliveSettings;

const SEC: u64 = 1_000_000_000;
const SS: u8 = tcp_state::SYN_SENT;
const CL: u8 = tcp_state::CLOSE;
const ES: u8 = tcp_state::ESTABLISHED;

fn only(found: Vec<Finding>, kind: FindingKind) -> Finding {
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].kind, kind);
    found.into_iter().next().unwrap()
}

fn to(port: u16, mut event: Event) -> Event {
    event.remote = SocketAddr::new(event.remote.ip(), port);
    event
}

#[test]
fn connect_refused_names_the_service_setting_of_each_port() {
    for (port, setting) in [
        (7337, "spark.shuffle.service.port=7337"),
        (10000, "hive.server2.thrift.port=10000"),
        (10001, "spark.connect.grpc.binding.port=10001"),
        (9083, "hive.metastore.uris=thrift://HOST:9083"),
        (4040, "spark.ui.port=4040"),
    ] {
        let mut h = Harness::new();
        h.feed(to(port, ev(EventKind::StateChange, 1, 0, CL, SS, 0)));
        let f = only(
            h.feed(to(port, ev(EventKind::ResetReceived, 1, 10, SS, SS, 0))),
            FindingKind::ConnectRefused,
        );
        assert!(f.remedy.contains(setting), "{port}: {}", f.remedy);
        assert!(
            f.remedy.contains(&format!("sport = :{port}")),
            "{}",
            f.remedy
        );
    }
}

#[test]
fn connect_timeout_names_the_port_to_allow() {
    let mut h = Harness::new();
    h.feed(to(10001, ev(EventKind::StateChange, 1, 0, CL, SS, 0)));
    let f = only(
        h.feed(to(10001, ev(EventKind::Retransmit, 1, SEC, SS, SS, 0))),
        FindingKind::ConnectTimeout,
    );
    assert!(
        f.remedy.contains("Allow TCP 10001 to 10.0.0.2"),
        "{}",
        f.remedy
    );
    assert!(f.remedy.contains("nc -vz 10.0.0.2 10001"), "{}", f.remedy);
}

#[test]
fn host_unreachable_names_the_route_and_says_what_ended() {
    let mut h = Harness::new();
    h.feed(ev(EventKind::StateChange, 1, 0, SS, ES, 0));
    // A closing socket (FIN_WAIT1) is not a connection attempt.
    let f = only(
        h.feed(ev(
            EventKind::SocketError,
            1,
            SEC,
            tcp_state::FIN_WAIT1,
            tcp_state::FIN_WAIT1,
            libc::EHOSTUNREACH,
        )),
        FindingKind::HostUnreachable,
    );
    assert!(
        f.summary.contains("while it was FIN_WAIT1"),
        "{}",
        f.summary
    );
    assert!(!f.summary.contains("attempt"), "{}", f.summary);
    assert!(f.remedy.contains("ip route get 10.0.0.2"), "{}", f.remedy);
}

#[test]
fn peer_reset_on_the_client_names_the_server_port_and_its_service() {
    let mut h = Harness::new();
    h.feed(ev(EventKind::StateChange, 1, 0, SS, ES, 0));
    let f = only(
        h.feed(ev(EventKind::ResetReceived, 1, SEC, ES, ES, 0)),
        FindingKind::PeerReset,
    );
    assert!(
        f.remedy.contains("the server's logs at 10.0.0.2"),
        "{}",
        f.remedy
    );
    assert!(
        f.remedy.contains("spark.shuffle.service.port=7337"),
        "{}",
        f.remedy
    );
}

#[test]
fn peer_reset_on_the_server_names_the_client_and_not_its_ephemeral_port() {
    let mut h = Harness::new();
    let server = |kind, ns, old, new| {
        let mut e = ev(kind, 1, ns, old, new, 0);
        e.side = Some(Side::Server);
        e.local = "10.0.0.2:10000".parse().unwrap();
        e.remote = "10.0.0.1:36800".parse().unwrap();
        e
    };
    h.feed(server(EventKind::StateChange, 0, tcp_state::SYN_RECV, ES));
    let f = only(
        h.feed(server(EventKind::ResetReceived, SEC, ES, ES)),
        FindingKind::PeerReset,
    );
    assert_eq!(f.service_port(), 10000);
    assert!(
        f.remedy.contains("this server's port 10000"),
        "{}",
        f.remedy
    );
    assert!(
        !f.remedy.contains("36800:") && !f.remedy.contains("port 36800"),
        "{}",
        f.remedy
    );
    assert!(!f.remedy.contains("must be running"), "{}", f.remedy);
}

#[test]
fn middlebox_reset_names_the_port_and_the_hops() {
    let mut h = Harness::new();
    h.feed(ev(EventKind::StateChange, 1, 0, SS, ES, 0));
    let mut rst = ev(EventKind::ResetReceived, 1, SEC, ES, ES, 0);
    rst.ttl = Some(64);
    rst.peer_ttl = Some(61);
    let f = only(h.feed(rst), FindingKind::MiddleboxReset);
    assert!(
        f.remedy.contains("traceroute -T -p 7337 10.0.0.2"),
        "{}",
        f.remedy
    );
    assert!(f.remedy.contains("about 3 hop(s)"), "{}", f.remedy);
}

#[test]
fn local_reset_by_a_client_abort_names_the_client_process_and_the_service_port() {
    let mut h = Harness::new();
    h.feed(ev(EventKind::StateChange, 1, 0, SS, ES, 0));
    let f = only(
        h.feed(ev(EventKind::ResetSent, 1, SEC, ES, CL, 15)),
        FindingKind::LocalReset,
    );
    assert_eq!(f.severity, Severity::Info);
    assert!(
        f.remedy.contains("Nothing to fix on the server"),
        "{}",
        f.remedy
    );
    assert!(f.remedy.contains("java (pid 42)"), "{}", f.remedy);
    assert!(f.remedy.contains("port 7337"), "{}", f.remedy);
    assert!(
        !f.remedy.contains("40000"),
        "the client's own port: {}",
        f.remedy
    );
}

#[test]
fn local_reset_by_a_server_abort_names_the_server_process_and_its_port() {
    let mut h = Harness::new();
    let mut abort = ev(EventKind::ResetSent, 1, SEC, ES, CL, 14);
    abort.side = Some(Side::Server);
    abort.local = "10.0.0.2:10000".parse().unwrap();
    abort.remote = "10.0.0.1:36800".parse().unwrap();
    let f = only(h.feed(abort), FindingKind::LocalReset);
    assert!(
        f.remedy.contains("java (pid 42), serving port 10000"),
        "{}",
        f.remedy
    );
    assert!(f.remedy.contains("SO_LINGER"), "{}", f.remedy);
}

#[test]
fn local_reset_answering_a_syn_names_the_service_that_must_listen() {
    let mut h = Harness::new();
    let mut rst = ev(EventKind::ResetSent, 0, SEC, CL, CL, 1);
    rst.owner = None;
    rst.no_socket = true;
    rst.answers_syn = true;
    rst.local = "10.0.0.2:10001".parse().unwrap();
    rst.remote = "10.0.0.1:36800".parse().unwrap();
    let f = only(h.feed(rst), FindingKind::LocalReset);
    assert!(f.remedy.contains("nothing listens"), "{}", f.remedy);
    assert!(
        f.remedy.contains("spark.connect.grpc.binding.port=10001"),
        "{}",
        f.remedy
    );
}

#[test]
fn return_path_blocked_names_the_server_port_and_the_client() {
    let remedy = remedies::return_path_blocked(
        "10.0.0.2:10000".parse().unwrap(),
        "10.0.0.1".parse().unwrap(),
    );
    assert!(remedy.contains("outbound from port 10000"), "{remedy}");
    assert!(remedy.contains("ip route get 10.0.0.1"), "{remedy}");
}

#[test]
fn retransmit_storm_names_the_spark_retry_settings_as_a_stopgap() {
    let remedy = remedies::retransmit_storm("10.0.0.2:7337".parse().unwrap());
    assert!(remedy.contains("spark.shuffle.io.maxRetries"), "{remedy}");
    assert!(remedy.contains("MTU"), "{remedy}");
}

#[test]
fn idle_remedies_name_the_kernel_keepalive_and_no_jdbc_parameters() {
    let off = KeepaliveSettings {
        enabled: false,
        idle_s: 7200.0,
        interval_s: 75.0,
        probes: 9,
    };
    // idle_at_risk, nat_idle_timeout and half_open share it; each with what is known.
    for keepalive in [Some(&off), None] {
        for server in [false, true] {
            let remedy = remedies::nat_idle(
                "10.0.0.2:10000".parse().unwrap(),
                Duration::from_secs(350),
                keepalive,
                server,
            );
            assert!(
                remedy.contains("net.ipv4.tcp_keepalive_time=240"),
                "{remedy}"
            );
            assert!(remedy.contains("securityContext.sysctls"), "{remedy}");
            // The Hive JDBC driver has no such connection-string parameters.
            assert!(!remedy.contains("KeepAlive="), "{remedy}");
            assert!(!remedy.contains("unknown"), "{remedy}");
            assert_eq!(
                remedy.contains("SO_KEEPALIVE off"),
                keepalive.is_some(),
                "{remedy}"
            );
        }
    }
}

#[test]
fn tls_mismatch_names_the_istio_annotation_or_the_client_setting() {
    let peer: SocketAddr = "10.0.0.2:7337".parse().unwrap();
    let mesh = remedies::tls_mismatch(peer, "tls_to_plaintext", true, "envoy (pid 7)");
    assert!(
        mesh.contains("traffic.sidecar.istio.io/excludeOutboundPorts: \"7337\""),
        "{mesh}"
    );
    assert!(mesh.contains("PERMISSIVE"), "{mesh}");
    let plain = remedies::tls_mismatch(
        "10.0.0.2:10000".parse().unwrap(),
        "plaintext_to_tls",
        false,
        "java (pid 42)",
    );
    assert!(plain.contains("ssl=true"), "{plain}");
    assert!(plain.contains("java (pid 42)"), "{plain}");
    assert!(plain.contains("hive.server2.use.SSL=true"), "{plain}");
}

#[test]
fn an_abort_on_a_kernel_without_reset_reasons_is_still_named() {
    // Before 6.2 the kernel gives no reason: a RST sent as the socket closed is an abort.
    let mut correlator = Correlator::new(super::tests::config(), ResetReasons::new(Vec::new()));
    let mut flows = FlowTable::new(8);
    let mut out = Vec::new();
    for mut event in [
        ev(EventKind::StateChange, 1, 0, SS, ES, 0),
        ev(EventKind::StateChange, 1, SEC, ES, CL, 0),
        ev(EventKind::ResetSent, 1, SEC, CL, CL, 0),
    ] {
        let flow = flows.observe(&mut event);
        correlator.on_event(&event, flow, &mut out);
    }
    let f = only(out, FindingKind::LocalReset);
    assert!(
        f.summary.contains("aborted the connection as it closed it"),
        "{}",
        f.summary
    );
    assert!(
        f.remedy.contains("Nothing to fix on the server"),
        "{}",
        f.remedy
    );
}
