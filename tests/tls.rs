//! Root integration tests of TLS mismatches: an Istio-like sidecar (uid 1337, REDIRECT to
//! 15001) wrapping a plaintext Spark port in TLS; plaintext sent to a TLS server; and a correct
//! TLS client, which must give no finding.

mod support;

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    process::{Command, Stdio},
    sync::{Arc, mpsc},
    time::Duration,
};

use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use serde_json::Value;
use support::{
    Netns, Routed, Tracer, clean_flows, connect, dump, exec_in, findings, last_stats, settle,
};

/// A Spark transport frame: 8-byte big-endian length (including itself), type RpcRequest (3),
/// then a request id and a body.
fn spark_frame() -> Vec<u8> {
    let body = b"open-blocks";
    let mut frame = Vec::new();
    let len = 8 + 1 + 8 + body.len() as u64;
    frame.extend_from_slice(&len.to_be_bytes());
    frame.push(3);
    frame.extend_from_slice(&42u64.to_be_bytes());
    frame.extend_from_slice(body);
    frame
}

/// A plaintext shuffle-like server: reads one message and closes on bytes it cannot parse.
fn plaintext_server(ns: &Netns, addr: SocketAddr) -> std::thread::JoinHandle<Vec<u8>> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let handle = ns.run("st-shuffle", move || {
        let listener = TcpListener::bind(addr).expect("bind");
        ready_tx.send(()).unwrap();
        let (mut conn, _) = listener.accept().expect("accept");
        let mut head = vec![0u8; 9];
        conn.read_exact(&mut head).unwrap();
        // Not a frame this server understands: close, as the shuffle server does.
        head
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    handle
}

/// A self-signed certificate and its key as PEM files, removed on drop.
struct PemFiles {
    dir: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl PemFiles {
    /// Made with the openssl command, one directory per call (each test removes its own).
    fn new() -> Self {
        static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("st-tls-{}-{call}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let status = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=spark",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(Stdio::null())
            .status()
            .expect("openssl");
        assert!(status.success());
        Self { dir, cert, key }
    }
}

impl Drop for PemFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A self-signed certificate for the rustls server.
fn certificate() -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let pem = PemFiles::new();
    let certs = CertificateDer::pem_file_iter(&pem.cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(&pem.key).unwrap();
    (certs, key)
}

/// A TLS server (rustls) that serves one connection: reads a line, answers "ok".
fn tls_server(ns: &Netns, addr: SocketAddr) -> std::thread::JoinHandle<()> {
    let (certs, key) = certificate();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let config = Arc::new(config);
    let (ready_tx, ready_rx) = mpsc::channel();
    let handle = ns.run("st-thrift-tls", move || {
        let listener = TcpListener::bind(addr).expect("bind");
        ready_tx.send(()).unwrap();
        let (mut sock, _) = listener.accept().expect("accept");
        let mut conn = rustls::ServerConnection::new(config).unwrap();
        let mut tls = rustls::Stream::new(&mut conn, &mut sock);
        let mut buf = [0u8; 64];
        // On plaintext, rustls answers with a fatal alert (decode_error) and fails.
        if tls.read(&mut buf).is_ok() {
            let _ = tls.write_all(b"ok");
            let _ = tls.flush();
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    handle
}

fn tls_findings(lines: &[Value]) -> Vec<&Value> {
    findings(lines, "tls_mismatch")
}

/// Stops the tracer once the connections settled; its lines must hold no tls_mismatch.
fn stop_without_tls_mismatch(tracer: Tracer) -> Vec<Value> {
    settle();
    let lines = tracer.stop();
    assert!(
        tls_findings(&lines).is_empty(),
        "no tls_mismatch:\n{}",
        dump(&lines)
    );
    lines
}

/// What the sidecar does to the application's connection after its upstream failed.
#[derive(Clone, Copy, PartialEq)]
enum SidecarEnds {
    Reset,
    Close,
}

/// An application's plaintext Spark frame to 7337, intercepted by a TLS-originating sidecar
/// (Istio-style): the sidecar's ClientHello meets a plaintext server. Returns the tracer's
/// lines and the tls_mismatch, which names the application's connection.
fn sidecar_to_plaintext(ends: SidecarEnds) -> (Vec<Value>, Value) {
    let net = Routed::new();
    let target = SocketAddr::new(net.server_ip, 7337);
    // Istio-style interception: the application's outbound 7337 goes to the sidecar on 15001;
    // the sidecar's own traffic (uid 1337) goes out.
    exec_in(
        &net.client,
        &[
            "iptables",
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "--dport",
            "7337",
            "-m",
            "owner",
            "!",
            "--uid-owner",
            "1337",
            "-j",
            "REDIRECT",
            "--to-ports",
            "15001",
        ],
    );
    let tracer = net.tracer("7337");
    let server = plaintext_server(&net.server, target);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/support/tls_forwarder.py"
    );
    let mut sidecar = Command::new("ip")
        .args([
            "netns",
            "exec",
            &net.client.name,
            "/usr/bin/python3",
            script,
            if ends == SidecarEnds::Close {
                "close"
            } else {
                "reset"
            },
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the sidecar");
    let mut ready = String::new();
    BufReader::new(sidecar.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready.trim(), "ready");
    let (app_local, outcome) = plaintext_request(&net, target, "st-exec");
    let expected = match ends {
        SidecarEnds::Reset => "ConnectionReset",
        SidecarEnds::Close => "closed",
    };
    assert_eq!(outcome, expected, "what the application saw");
    let received = server.join().unwrap();
    assert_eq!(
        received[0], 0x16,
        "the server got a TLS record, not the frame"
    );
    assert!(sidecar.wait().unwrap().success());
    settle();
    let lines = tracer.stop();
    let found = tls_findings(&lines);
    assert_eq!(found.len(), 1, "one tls_mismatch:\n{}", dump(&lines));
    let f = found[0].clone();
    assert_eq!(f["direction"], "tls_to_plaintext");
    assert_eq!(f["sidecar"], true);
    assert_eq!(f["uid"], 1337);
    assert_eq!(f["comm"], "envoy");
    assert_eq!(f["sent"], "tls_client_hello");
    assert_eq!(f["dst"], target.to_string().as_str());
    assert_eq!(f["netns"], net.client.inode());
    let app = &f["intercepted"];
    assert_eq!(app["thread"], "st-exec", "{}", dump(&lines));
    assert_eq!(app["pid"], u64::from(std::process::id()));
    assert_eq!(app["src"], app_local.to_string().as_str());
    let remedy = f["remedy"].as_str().unwrap();
    assert!(
        remedy.contains("traffic.sidecar.istio.io/excludeOutboundPorts"),
        "{remedy}"
    );
    assert!(remedy.contains("PERMISSIVE"), "{remedy}");
    // One incident, one verdict: the plaintext server's RST to the sidecar and the reset the
    // application saw are this finding's evidence, not findings of their own.
    for kind in ["local_reset", "peer_reset", "middlebox_reset"] {
        let ours: Vec<&Value> = findings(&lines, kind)
            .into_iter()
            .filter(|other| {
                other["netns"] == net.client.inode() || other["netns"] == net.server.inode()
            })
            .collect();
        assert!(ours.is_empty(), "{kind}: {}", dump(&lines));
    }
    assert_eq!(f["peer"]["thread"], "st-shuffle", "{}", dump(&lines));
    assert_eq!(f["peer"]["netns"], net.server.inode());
    (lines, f)
}

#[test]
fn sidecar_tls_to_a_plaintext_shuffle_port_is_a_tls_mismatch() {
    let (lines, f) = sidecar_to_plaintext(SidecarEnds::Reset);
    assert_eq!(f["intercepted"]["outcome"], "reset", "{}", dump(&lines));
    // The classes are in the event stream too, and no payload is.
    assert!(
        lines
            .iter()
            .any(|v| v["event"] == "first_payload" && v["class"] == "tls_client_hello")
    );
    assert!(!lines.iter().any(|v| v.to_string().contains("open-blocks")));
}

#[test]
fn a_sidecar_that_closes_the_application_cleanly_still_names_it() {
    // The application's connection carried data and closed cleanly: the kernel kept it quiet
    // and sent only its summary, which is what links it.
    let (lines, f) = sidecar_to_plaintext(SidecarEnds::Close);
    assert_eq!(f["intercepted"]["outcome"], "closed", "{}", dump(&lines));
}

#[test]
fn plaintext_to_a_tls_port_is_a_tls_mismatch() {
    let net = Routed::new();
    let target = SocketAddr::new(net.server_ip, 10000);
    let tracer = net.tracer("10000");
    let server = tls_server(&net.server, target);
    let answer = net
        .client
        .run("st-beeline", move || {
            let mut stream = connect(target).expect("connect");
            stream.write_all(&spark_frame()).unwrap();
            let mut buf = [0u8; 16];
            stream
                .read(&mut buf)
                .map(|n| buf[..n].to_vec())
                .unwrap_or_default()
        })
        .join()
        .unwrap();
    assert_eq!(answer.first(), Some(&0x15), "a TLS alert came back");
    server.join().unwrap();
    settle();
    let lines = tracer.stop();
    let found = tls_findings(&lines);
    assert_eq!(found.len(), 1, "one tls_mismatch:\n{}", dump(&lines));
    let f = found[0];
    assert_eq!(f["direction"], "plaintext_to_tls");
    assert_eq!(f["sidecar"], false);
    assert_eq!(f["sent"], "spark_rpc");
    assert_eq!(f["thread"], "st-beeline");
    assert!(f["answer"].as_str().unwrap().contains("tls_alert"));
    // The server's own TLS record on this very connection: no doubt left.
    assert_eq!(f["confidence"], "certain");
    assert!(
        f["basis"].as_str().unwrap().contains("TLS alert"),
        "{}",
        f["basis"]
    );
    assert!(
        f["remedy"]
            .as_str()
            .unwrap()
            .contains("enable TLS on the client")
    );
}

#[test]
fn a_correct_tls_client_gives_no_finding() {
    let net = Routed::new();
    let target = SocketAddr::new(net.server_ip, 8443);
    let tracer = net.tracer("8443");
    let server = tls_server(&net.server, target);
    let client = format!(
        "import socket, ssl\n\
         c = ssl.create_default_context(); c.check_hostname = False; c.verify_mode = ssl.CERT_NONE\n\
         s = c.wrap_socket(socket.create_connection(('{}', {})), server_hostname='spark')\n\
         s.sendall(b'hello'); assert s.recv(2) == b'ok'\n",
        target.ip(),
        target.port()
    );
    exec_in(&net.client, &["/usr/bin/python3", "-c", &client]);
    server.join().unwrap();
    let lines = stop_without_tls_mismatch(tracer);
    // ClientHello answered by a ServerHello: nothing to judge, so the kernel kept the flow
    // quiet and summarised each end when it closed (the tracer watches this test's namespaces only).
    assert!(
        !lines
            .iter()
            .any(|v| v["event"] == "first_payload" && v["netns"] == net.client.inode()),
        "{}",
        dump(&lines)
    );
    let clean = clean_flows(last_stats(&lines), 8443, None);
    assert_eq!(clean, 2, "{}", dump(&lines));
}

/// Runs `args` inside a namespace and waits until its stdout prints a line containing
/// `ready` (the server listens).
fn spawn_ready(ns: &Netns, args: &[&str], ready: &str) -> std::process::Child {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the server");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains(ready) {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "{args:?} ended early"
        );
    }
    // The rest of its output is not needed, but the pipe must not fill up.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    child
}

/// A plaintext Spark frame from a thread named `comm` in the client namespace: returns its
/// local address and what came back (`closed`, `ConnectionReset`, or `N bytes`).
fn plaintext_request(net: &Routed, target: SocketAddr, comm: &str) -> (SocketAddr, String) {
    net.client
        .run(comm, move || {
            let mut stream = connect(target).expect("connect");
            stream.write_all(&spark_frame()).unwrap();
            let mut buf = [0u8; 16];
            let outcome = match stream.read(&mut buf) {
                Ok(0) => "closed".to_owned(),
                Ok(n) => format!("{n} bytes"),
                Err(e) => format!("{:?}", e.kind()),
            };
            (stream.local_addr().unwrap(), outcome)
        })
        .join()
        .unwrap()
}

/// The one tls_mismatch of a silent TLS server's answer to plaintext, from `local`, with no
/// peer_reset besides it; its remedy names the client and says `setting`.
fn one_silent_mismatch<'a>(
    lines: &'a [Value],
    local: SocketAddr,
    how: &str,
    setting: &str,
) -> &'a Value {
    let found = tls_findings(lines);
    assert_eq!(found.len(), 1, "one tls_mismatch:\n{}", dump(lines));
    let f = found[0];
    assert_eq!(f["direction"], "plaintext_to_tls", "{f}");
    assert_eq!(f["src"], local.to_string().as_str(), "{f}");
    assert_eq!(f["sent"], "spark_rpc");
    assert_eq!(f["thread"], "st-spark-rpc");
    assert!(f["answer"].as_str().unwrap().contains(how), "{f}");
    assert!(
        f["answer"].as_str().unwrap().contains("without a byte"),
        "{f}"
    );
    // A silent close or reset is not the server's own word: likely, not certain.
    assert_eq!(f["confidence"], "likely", "{f}");
    let remedy = f["remedy"].as_str().unwrap();
    // The client process, by its name and pid.
    let process = format!("{} (pid {})", f["comm"].as_str().unwrap(), f["pid"]);
    assert!(
        remedy.contains(setting) && remedy.contains(&process),
        "{remedy}"
    );
    // One verdict: the reset is the mismatch's answer, not a peer_reset of its own.
    assert!(
        findings(lines, "peer_reset").is_empty(),
        "no peer_reset besides the tls_mismatch:\n{}",
        dump(lines)
    );
    f
}

#[test]
fn openssl_closing_on_plaintext_after_answering_others_with_tls_is_a_likely_mismatch() {
    // OpenSSL's s_server closes (FIN) on plaintext without a byte. Port 10000 is no HTTPS
    // port; what marks it as TLS is that it answered another client with a ServerHello.
    let net = Routed::new();
    let target = SocketAddr::new(net.server_ip, 10000);
    let pem = PemFiles::new();
    let tracer = net.tracer("10000");
    let (cert, key) = (pem.cert.to_str().unwrap(), pem.key.to_str().unwrap());
    let accept = target.port().to_string();
    let mut server = spawn_ready(
        &net.server,
        &[
            "openssl", "s_server", "-accept", &accept, "-cert", cert, "-key", key, "-www",
            "-naccept", "2",
        ],
        "ACCEPT",
    );
    // A correct TLS client first: it reads the status page to the end, so both ends close
    // cleanly (summarised by the kernel).
    let client = format!(
        "import socket, ssl\n\
         c = ssl.create_default_context(); c.check_hostname = False; c.verify_mode = ssl.CERT_NONE\n\
         s = c.wrap_socket(socket.create_connection(('{}', {})), server_hostname='spark')\n\
         s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\n\
         while s.recv(4096): pass\n\
         s.close()\n",
        target.ip(),
        target.port()
    );
    exec_in(&net.client, &["/usr/bin/python3", "-c", &client]);
    let (local, outcome) = plaintext_request(&net, target, "st-spark-rpc");
    assert_eq!(outcome, "closed", "OpenSSL closes without a byte");
    assert!(server.wait().unwrap().success());
    settle();
    let lines = tracer.stop();
    let f = one_silent_mismatch(&lines, local, "closed", "ssl=true");
    let basis = f["basis"].as_str().unwrap();
    assert!(
        basis.contains("answered other clients with a TLS ServerHello")
            && basis.contains(&target.to_string()),
        "{basis}"
    );
}

#[test]
fn python_ssl_resetting_plaintext_on_an_https_port_is_one_likely_mismatch() {
    // Python's ssl module answers plaintext with a RST. 8443 is an HTTPS port in the seed
    // table, and nothing else marks it.
    let net = Routed::new();
    let target = SocketAddr::new(net.server_ip, 8443);
    let pem = PemFiles::new();
    let tracer = net.tracer("8443");
    let script = format!(
        "import socket, ssl\n\
         ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain('{}', '{}')\n\
         l = socket.create_server(('{}', {})); print('ready', flush=True)\n\
         c, _ = l.accept()\n\
         try: ctx.wrap_socket(c, server_side=True)\n\
         except ssl.SSLError: pass\n\
         c.close()\n",
        pem.cert.display(),
        pem.key.display(),
        target.ip(),
        target.port()
    );
    let mut server = spawn_ready(&net.server, &["/usr/bin/python3", "-c", &script], "ready");
    let (local, outcome) = plaintext_request(&net, target, "st-spark-rpc");
    assert_eq!(outcome, "ConnectionReset", "Python's ssl resets");
    assert!(server.wait().unwrap().success());
    settle();
    let lines = tracer.stop();
    let f = one_silent_mismatch(&lines, local, "reset", "https://");
    let basis = f["basis"].as_str().unwrap();
    assert!(
        basis.contains("8443 is an HTTPS port in the seed table"),
        "{basis}"
    );
    // The server is on this host too: its RST is the mismatch's evidence, and it is the peer.
    assert!(
        !findings(&lines, "local_reset")
            .iter()
            .any(|other| other["netns"] == net.server.inode()),
        "no local_reset of the server besides the tls_mismatch:\n{}",
        dump(&lines)
    );
    assert_eq!(f["peer"]["comm"], "python3", "{}", dump(&lines));
    assert_eq!(f["peer"]["netns"], net.server.inode());
}

#[test]
fn a_plaintext_server_closing_on_bad_input_is_no_tls_mismatch() {
    // A plaintext server that reads the request and closes without a word, on a port nothing
    // marks as TLS: a closed connection, not a TLS mismatch.
    let net = Routed::new();
    let target = SocketAddr::new(net.server_ip, 7337);
    let tracer = net.tracer("7337");
    let script = format!(
        "import socket\n\
         l = socket.create_server(('{}', {})); print('ready', flush=True)\n\
         c, _ = l.accept(); c.recv(4096); c.close()\n",
        target.ip(),
        target.port()
    );
    let mut server = spawn_ready(&net.server, &["/usr/bin/python3", "-c", &script], "ready");
    let (local, outcome) = plaintext_request(&net, target, "st-spark-rpc");
    assert_eq!(outcome, "closed");
    assert!(server.wait().unwrap().success());
    let lines = stop_without_tls_mismatch(tracer);
    // The kernel did send the unanswered request for judging (a quiet flow would have been
    // summarised and never judged), and nothing was found in it.
    assert!(
        lines.iter().any(|v| v["event"] == "first_payload"
            && v["src"] == local.to_string().as_str()
            && v["class"] == "spark_rpc"),
        "{}",
        dump(&lines)
    );
    assert!(
        lines.iter().all(|v| v["type"] != "finding"),
        "{}",
        dump(&lines)
    );
}
