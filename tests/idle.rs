//! Root integration tests of idle tracking: client / router / server namespaces, the router
//! doing MASQUERADE with conntrack's established timeout lowered to the NAT threshold and
//! `nf_conntrack_tcp_loose=0`, so after the idle period the NAT has forgotten the flow, as a
//! cloud NAT gateway does.

mod support;

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    sync::mpsc,
    thread,
    time::Duration,
};

use serde_json::Value;
use support::{
    Forgotten, Routed, Tracer, clean_flows, connect, dump, findings, last_stats, settle,
};

/// The NAT threshold the tests use, and conntrack's matching established timeout.
const NAT_IDLE_S: u64 = 4;

fn nat_router(forgotten: Forgotten) -> Routed {
    support::nat_router(forgotten, NAT_IDLE_S)
}

fn set_keepalive(stream: &TcpStream, idle_s: i32) {
    let fd = stream.as_raw_fd();
    let set = |level, name, value: i32| {
        // SAFETY: valid socket and option value.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&raw const value).cast(),
                size_of::<i32>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0);
    };
    set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, idle_s);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 1);
}

/// A server on `addr` that answers every message with "ok" (and, once asked, sends "late!"
/// on its own after the client went quiet).
fn echo_server(net: &Routed, addr: SocketAddr) -> (mpsc::Sender<()>, thread::JoinHandle<()>) {
    let (ready_tx, ready_rx) = mpsc::channel();
    let (late_tx, late_rx) = mpsc::channel::<()>();
    let handle = net.server.run("st-hs2", move || {
        let listener = TcpListener::bind(addr).expect("bind");
        ready_tx.send(()).unwrap();
        let (mut conn, _) = listener.accept().expect("accept");
        conn.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut buf = [0u8; 64];
        loop {
            match conn.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {
                    if conn.write_all(b"ok").is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => break,
            }
            match late_rx.try_recv() {
                Ok(()) => {
                    let _ = conn.write_all(b"late!");
                }
                Err(mpsc::TryRecvError::Disconnected) => break,
                Err(mpsc::TryRecvError::Empty) => {}
            }
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    (late_tx, handle)
}

fn ts(value: &Value) -> &str {
    value["ts"].as_str().unwrap()
}

fn one_for<'a>(lines: &'a [Value], kind: &str, src: &str) -> &'a Value {
    let matching: Vec<&Value> = findings(lines, kind)
        .into_iter()
        .filter(|f| f["src"] == src)
        .collect();
    assert_eq!(matching.len(), 1, "one {kind} for {src}:\n{}", dump(lines));
    matching[0]
}

fn start_tracer() -> Tracer {
    Tracer::start_with(&["--ports", "10000", "--nat-idle", &format!("{NAT_IDLE_S}s")])
}

#[test]
fn nat_that_resets_a_forgotten_flow_warns_first_then_diagnoses_the_break() {
    let net = nat_router(Forgotten::Reset);
    let target = SocketAddr::new(net.server_ip, 10000);
    let tracer = start_tracer();
    let (_late, server) = echo_server(&net, target);
    let (local, outcome) = net
        .client
        .run("st-odbc", move || {
            let mut stream = connect(target).expect("connect");
            let mut buf = [0u8; 2];
            stream.write_all(b"select 1").unwrap();
            stream.read_exact(&mut buf).unwrap();
            // A long query: the connection sits idle past the NAT's timeout.
            thread::sleep(Duration::from_secs(NAT_IDLE_S + 2));
            stream.write_all(b"fetch").unwrap();
            let outcome = stream.read_exact(&mut buf).map_err(|e| e.kind());
            (stream.local_addr().unwrap(), outcome)
        })
        .join()
        .unwrap();
    assert_eq!(outcome, Err(std::io::ErrorKind::ConnectionReset));
    drop(server);
    settle();
    let lines = tracer.stop();
    let src = local.to_string();
    let warning = one_for(&lines, "idle_at_risk", &src);
    let broken = one_for(&lines, "nat_idle_timeout", &src);
    assert!(
        ts(warning) < ts(broken),
        "warned before the break:\n{}",
        dump(&lines)
    );
    assert_eq!(warning["severity"], "warning");
    assert_eq!(warning["threshold_s"], NAT_IDLE_S as f64);
    let warned_at = warning["idle_s"].as_f64().unwrap();
    assert!((3.2..NAT_IDLE_S as f64).contains(&warned_at), "{warned_at}");
    assert_eq!(warning["keepalive"]["enabled"], false);
    assert_eq!(warning["thread"], "st-odbc");
    assert!(
        warning["remedy"]
            .as_str()
            .unwrap()
            .contains("tcp_keepalive_time")
    );
    // The Hive JDBC driver has no such connection-string setting: its Thrift socket already
    // has SO_KEEPALIVE, and the namespace's tcp_keepalive_time decides.
    assert!(
        !warning["remedy"]
            .as_str()
            .unwrap()
            .contains("KeepAlive=true"),
        "{}",
        warning["remedy"]
    );
    assert_eq!(broken["severity"], "error");
    // The break knows the keepalive its warning showed.
    assert_eq!(broken["keepalive"]["enabled"], false, "{}", dump(&lines));
    assert!(
        !broken["remedy"].as_str().unwrap().contains("unknown"),
        "{}",
        broken["remedy"]
    );
    assert!(
        broken["remedy"]
            .as_str()
            .unwrap()
            .contains("SO_KEEPALIVE off"),
        "{}",
        broken["remedy"]
    );
    assert_eq!(broken["dst"], target.to_string().as_str());
    assert_eq!(broken["threshold_s"], NAT_IDLE_S as f64);
    let idle = broken["idle_s"].as_f64().unwrap();
    assert!(
        (NAT_IDLE_S as f64..NAT_IDLE_S as f64 + 4.0).contains(&idle),
        "{idle}"
    );
    assert!(
        broken["evidence"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event"] == "reset_received"),
        "{}",
        dump(&lines)
    );
    // Tests run in parallel and the tracer sees every namespace: only this test's count.
    let ours = |f: &&Value| f["netns"] == net.client.inode() || f["netns"] == net.server.inode();
    assert!(
        !findings(&lines, "peer_reset").iter().any(ours),
        "{}",
        dump(&lines)
    );
    assert!(
        !findings(&lines, "middlebox_reset").iter().any(ours),
        "{}",
        dump(&lines)
    );
}

#[test]
fn nat_that_drops_a_forgotten_flow_breaks_both_ends() {
    let net = nat_router(Forgotten::Drop);
    let target = SocketAddr::new(net.server_ip, 10000);
    let tracer = start_tracer();
    let (late, server) = echo_server(&net, target);
    let local = support::write_after_idle(&net, target, NAT_IDLE_S);
    // The server, which never heard of any of this, talks to a client that is gone.
    late.send(()).unwrap();
    thread::sleep(Duration::from_secs(2));
    drop(late);
    server.join().unwrap();
    settle();
    let lines = tracer.stop();
    let broken = one_for(&lines, "nat_idle_timeout", &local.to_string());
    assert!(
        broken["evidence"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event"] == "retransmit"),
        "{}",
        dump(&lines)
    );
    assert!(broken["idle_s"].as_f64().unwrap() >= NAT_IDLE_S as f64);
    // Broken is broken: the flow retransmits after its break (with growing gaps), and is not
    // warned about as idle again.
    let warned_after = findings(&lines, "idle_at_risk")
        .into_iter()
        .filter(|f| f["src"] == local.to_string().as_str())
        .filter(|f| f["ts"].as_str() > broken["ts"].as_str())
        .count();
    assert_eq!(warned_after, 0, "{}", dump(&lines));
    let half_open = one_for(&lines, "half_open", &target.to_string());
    assert_eq!(half_open["side"], "server");
    assert_eq!(half_open["netns"], net.server.inode());
    assert_eq!(half_open["thread"], "st-hs2");
    assert!(half_open["idle_s"].as_f64().unwrap() >= NAT_IDLE_S as f64);
}

#[test]
fn keepalive_below_the_threshold_keeps_the_flow_and_gives_no_warning() {
    let net = nat_router(Forgotten::Reset);
    let target = SocketAddr::new(net.server_ip, 10000);
    let tracer = start_tracer();
    let (_late, server) = echo_server(&net, target);
    let (local, reply) = net
        .client
        .run("st-odbc", move || {
            let mut stream = connect(target).expect("connect");
            set_keepalive(&stream, 1);
            let mut buf = [0u8; 2];
            stream.write_all(b"select 1").unwrap();
            stream.read_exact(&mut buf).unwrap();
            thread::sleep(Duration::from_secs(NAT_IDLE_S + 2));
            stream.write_all(b"fetch").unwrap();
            let reply = stream.read_exact(&mut buf).map(|()| buf);
            (stream.local_addr().unwrap(), reply.map_err(|e| e.kind()))
        })
        .join()
        .unwrap();
    assert_eq!(reply, Ok(*b"ok"), "keepalive kept the NAT's state");
    drop(server);
    settle();
    let lines = tracer.stop();
    let src = local.to_string();
    for kind in ["idle_at_risk", "nat_idle_timeout", "peer_reset"] {
        assert!(
            !findings(&lines, kind)
                .iter()
                .any(|f| f["src"] == src.as_str()),
            "no {kind}:\n{}",
            dump(&lines)
        );
    }
    // The flow was traced: it carried data cleanly, so the kernel kept it quiet (watched
    // for idleness in its activity table) and summarised it when it closed. It is the only
    // clean flow of these tests.
    let clean_clients = clean_flows(last_stats(&lines), 10000, Some("client"));
    assert_eq!(clean_clients, 1, "{}", dump(&lines));
}
