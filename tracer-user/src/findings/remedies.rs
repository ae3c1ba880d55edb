//! What to change: remedy text per finding, written from the field knowledge of each Spark
//! port and failure mode (security groups vs. stateless ACLs, peering routes vs. NAT gateways,
//! services that must listen, meshes that intercept).

use std::net::{IpAddr, SocketAddr};

use crate::events::Side;

/// What must be running on the server side for a port to answer.
fn listener_hint(port: u16) -> &'static str {
    match port {
        7337 => {
            "the external shuffle service must run on that node and listen on 7337 \
             (spark.shuffle.service.enabled=true, spark.shuffle.service.port=7337; the YARN \
             NodeManager aux-service spark_shuffle, or the shuffle-service DaemonSet on \
             Kubernetes) - an executor or node that was restarted loses it"
        }
        10000 => {
            "HiveServer2 / the Spark Thrift server must be running and bound to a reachable \
             address (hive.server2.thrift.port=10000, hive.server2.thrift.bind.host not 127.0.0.1)"
        }
        10001 => {
            "the Spark Connect server must be running (start-connect-server.sh) and bound to a \
             reachable address (spark.connect.grpc.binding.port=10001)"
        }
        4040 => {
            "the driver UI only listens while the application runs (spark.ui.port=4040; a second \
             driver on the same host takes 4041)"
        }
        9083 => {
            "the Hive metastore must be running (hive.metastore.uris=thrift://HOST:9083); check \
             the load balancer's health-check target port"
        }
        port if crate::services::is_https(port) => {
            "the HTTPS listener (load balancer, ingress or gateway) must be up"
        }
        _ => "the service must be running and listening on that port",
    }
}

pub fn check_listener(dst: SocketAddr) -> String {
    format!(
        "On {}: `ss -ltnp 'sport = :{}'` must show a listener; {}.",
        dst.ip(),
        dst.port(),
        listener_hint(dst.port())
    )
}

pub fn connect_refused(dst: SocketAddr) -> String {
    format!(
        "{} If it listens, a host firewall on {} rejects with tcp-reset: check `iptables -S` / \
         `nft list ruleset` for REJECT rules on port {}.",
        check_listener(dst),
        dst.ip(),
        dst.port()
    )
}

fn firewall_rules(dst: SocketAddr) -> String {
    let port = dst.port();
    format!(
        "Allow TCP {port} to {ip} from the client's subnet: AWS security group inbound rule \
         (stateful) and network ACL inbound TCP {port} plus outbound 1024-65535 (stateless); \
         Azure NSG / GCP firewall rule for tcp:{port} in both directions where they are \
         stateless. For cross-VPC traffic, the client subnet's route table must send {ip} over \
         the VPC peering connection, not the NAT gateway. Verify from the client with \
         `nc -vz {ip} {port}`: a hang is a drop, 'refused' is a RST.",
        ip = dst.ip()
    )
}

pub fn connect_timeout(dst: SocketAddr) -> String {
    format!(
        "SYNs to {dst} are dropped before they get an answer. {}",
        firewall_rules(dst)
    )
}

pub fn host_unreachable(dst: SocketAddr, error: &str) -> String {
    format!(
        "A router or firewall answered with ICMP {error}: check the client's route table for \
         {ip} (a VPC peering route, not via the NAT gateway), that the host is up, and REJECT \
         rules (--reject-with icmp-host-unreachable / icmp-net-unreachable) on the path. \
         `ip route get {ip}` on the client shows the route taken.",
        ip = dst.ip()
    )
}

/// A RST from the peer: `local` is this host's end, `remote` the peer's.
pub fn peer_reset(local: SocketAddr, remote: SocketAddr, side: Option<Side>) -> String {
    let ip = remote.ip();
    match side {
        // The client reset its connection to this server: its port is ephemeral, nothing
        // listens there, and the server has nothing to fix.
        Some(Side::Server) => format!(
            "The client at {remote} aborted its connection to this server's port {port}: look \
             at the client's side at {ip} around this time (a task or query cancelled, a client \
             timeout, a close with unread data, a crash or an OOM kill - for executors, \
             spark.executor.memoryOverhead). If it follows an idle period, a NAT gateway or load \
             balancer forgot the flow (AWS NAT 350 s, Azure NAT 4 min): set \
             net.ipv4.tcp_keepalive_time below that on both nodes.",
            port = local.port()
        ),
        _ => format!(
            "The server's stack aborted the connection: check the server's logs at {ip} around \
             this time (a crash or restart, a close with unread data, an OOM kill - for executors \
             raise spark.executor.memoryOverhead). If it follows an idle period, a NAT gateway \
             or load balancer forgot the flow (AWS NAT 350 s, Azure NAT 4 min): set \
             net.ipv4.tcp_keepalive_time below that. For port {port}: {}.",
            listener_hint(remote.port()),
            port = remote.port()
        ),
    }
}

pub fn middlebox_reset(dst: SocketAddr, rst_ttl: u8, peer_ttl: u8) -> String {
    format!(
        "Find the device between this host and {ip} that sends resets (TTL {rst_ttl} vs. \
         {peer_ttl}: about {hops} hop(s) from the peer): a stateful firewall or IPS with a \
         REJECT --reject-with tcp-reset rule for port {port}, a load balancer or NAT gateway \
         that dropped the flow's state (idle timeout), or a proxy / service-mesh sidecar. \
         `traceroute -T -p {port} {ip}` shows the path; the firewall's logs show the rule.",
        ip = dst.ip(),
        port = dst.port(),
        hops = rst_ttl.abs_diff(peer_ttl)
    )
}

/// Plain words for the kernel's reset reasons (`enum sk_rst_reason`).
/// Not a kernel reason: a RST sent without a socket for a segment that was not a SYN.
pub const NO_CONNECTION: &str = "NO_CONNECTION";
/// Not a kernel reason: a RST a socket sent as its application closed it, on a kernel that
/// gives no reasons (before 6.2), where unread data and SO_LINGER 0 cannot be told apart.
pub const ABORT: &str = "ABORT";

pub fn reset_reason_meaning(reason: &str, local_port: u16) -> String {
    match reason {
        NO_CONNECTION => format!(
            "a segment arrived for port {local_port} that belongs to no connection here (a late \
             FIN, ACK or data after the connection closed, or one whose state was lost; \
             NO_SOCKET)"
        ),
        "NO_SOCKET" => format!("nothing listens on port {local_port} here (NO_SOCKET)"),
        "TCP_ABORT_ON_CLOSE" => {
            "the application closed the socket with unread data (TCP_ABORT_ON_CLOSE)".into()
        }
        "TCP_ABORT_ON_LINGER" | "TCP_STATE" => {
            format!("the application aborted the connection (SO_LINGER 0 or disconnect; {reason})")
        }
        ABORT => "the application aborted the connection as it closed it (with unread data, or \
                  SO_LINGER 0; this kernel does not say which)"
            .into(),
        "TCP_ABORT_ON_DATA" => {
            "data arrived for a socket already closed (TCP_ABORT_ON_DATA)".into()
        }
        "TCP_ABORT_ON_MEMORY" => "the kernel ran out of socket memory (TCP_ABORT_ON_MEMORY)".into(),
        "TCP_KEEPALIVE_TIMEOUT" => {
            "keepalive probes went unanswered (TCP_KEEPALIVE_TIMEOUT)".into()
        }
        "TCP_TIMEWAIT_SOCKET" => "a segment arrived for a connection in TIME_WAIT".into(),
        "TCP_INVALID_ACK_SEQUENCE" | "TCP_TOO_OLD_ACK" | "TCP_OLD_ACK" | "TCP_RFC7323_PAWS" => {
            format!("a segment did not match the connection's sequence space ({reason})")
        }
        "TCP_FLAGS" | "INVALID_SYN" => format!("an invalid segment arrived ({reason})"),
        other => format!("reason {other}"),
    }
}

/// A RST this host sent: `local` is this host's end, `remote` the peer's; `who` names the
/// process that owns this end (None: no socket, or not known).
pub fn local_reset(
    reason: &str,
    local: SocketAddr,
    remote: SocketAddr,
    side: Option<Side>,
    who: Option<String>,
) -> String {
    let who = who.unwrap_or_else(|| "the application".to_owned());
    match reason {
        "NO_SOCKET" => format!(
            "Clients are connecting to {local} but nothing listens: {}.",
            listener_hint(local.port())
        ),
        "TCP_ABORT_ON_CLOSE" | "TCP_ABORT_ON_LINGER" | "TCP_STATE" | ABORT
            if side == Some(Side::Client) =>
        {
            format!(
                "Nothing to fix on the server at {remote}: the client, {who}, ended its own \
                 connection to port {port} ({}). Expected when a task or query is cancelled or \
                 a client times out; if not, check the client's logs around this time.",
                match reason {
                    "TCP_ABORT_ON_CLOSE" => "it closed the socket with data it had not read",
                    ABORT => "it closed the socket with unread data or with SO_LINGER 0",
                    _ => "SO_LINGER 0, or an abort",
                },
                port = remote.port()
            )
        }
        "TCP_ABORT_ON_CLOSE" | "TCP_ABORT_ON_LINGER" | "TCP_STATE" | ABORT => format!(
            "{who}, serving port {port}, aborted the connection from {remote}: check its logs \
             around this time and its SO_LINGER / close-on-error handling.",
            port = local.port()
        ),
        "TCP_ABORT_ON_MEMORY" => "Raise net.ipv4.tcp_mem / check socket memory pressure \
                                  (`ss -tm`, /proc/net/sockstat)."
            .into(),
        "TCP_KEEPALIVE_TIMEOUT" => "The peer stopped answering keepalives: it is gone, or a \
                                    NAT/firewall in between dropped the flow's state."
            .into(),
        _ => "Segments arrived that do not belong to a live connection here: often the far end \
              of a half-open connection (state lost in a NAT gateway or after a restart). Check \
              idle timeouts on the path and keepalive settings."
            .into(),
    }
}

pub fn return_path_blocked(server: SocketAddr, client: IpAddr) -> String {
    format!(
        "SYN-ACKs from {server} do not reach {client}, or its ACKs do not come back. A stateless \
         ACL must allow the return traffic: outbound from port {port} to the client's \
         ephemeral ports 1024-65535 (Azure NSG / GCP firewall rules, AWS network ACLs), and \
         the route back to {client} must exist and be symmetric (VPN or peering route on this \
         side; asymmetric routing through a stateful firewall drops it). `ip route get \
         {client}` here shows the way back.",
        port = server.port()
    )
}

/// Keepalive settings that keep a flow alive through a NAT with this idle timeout.
pub fn nat_idle(
    peer: SocketAddr,
    threshold: std::time::Duration,
    keepalive: Option<&crate::events::keepalive::KeepaliveSettings>,
    server: bool,
) -> String {
    let t = threshold.as_secs_f64();
    // The runbook's 240 s for the common gateways; half the timeout for shorter ones.
    let idle = if t > 300.0 {
        240.0
    } else {
        (t / 2.0).floor().max(1.0)
    };
    let interval = (idle / 8.0).clamp(1.0, 30.0).floor();
    let now = match keepalive {
        Some(k) if k.enabled => format!(
            "now: SO_KEEPALIVE on, first probe after {:.0} s, every {:.0} s, {} probes",
            k.idle_s, k.interval_s, k.probes
        ),
        Some(k) => format!(
            "now: SO_KEEPALIVE off (the host default would probe after {:.0} s)",
            k.idle_s
        ),
        None => String::new(),
    };
    let side = if server {
        "the server cannot tell a silent client from a gone one: with keepalive below the \
         timeout it finds out and frees the session"
    } else {
        "the client must send something before the NAT's timer runs out"
    };
    let now = if now.is_empty() {
        now
    } else {
        format!("; {now}")
    };
    format!(
        "Keep the connection to {peer} alive below the {t:.0} s NAT idle timeout ({side}{now}): \
         `sysctl -w net.ipv4.tcp_keepalive_time={idle:.0} \
         net.ipv4.tcp_keepalive_intvl={interval:.0} net.ipv4.tcp_keepalive_probes=5` in the \
         flow's network namespace: on the node for host-network processes (persist in \
         /etc/sysctl.d), for a pod in its securityContext.sysctls (they are per namespace: the \
         node's value does not reach pods). Spark's shuffle and RPC clients and the Hive JDBC \
         driver's Thrift socket already turn SO_KEEPALIVE on, so the node's \
         tcp_keepalive_time decides when they probe; other clients must enable SO_KEEPALIVE. Or route this traffic around the NAT \
         (VPC peering)."
    )
}

/// How a client turns TLS on for the service behind a port.
fn client_tls_setting(peer: SocketAddr) -> String {
    let port = peer.port();
    match port {
        10000 => format!(
            "add ssl=true;sslTrustStore=...;trustStorePassword=... to the JDBC URL \
             (jdbc:hive2://{peer}/;ssl=true;...), as HiveServer2 runs with \
             hive.server2.use.SSL=true"
        ),
        10001 => format!("connect with sc://{peer}/;use_ssl=true"),
        9083 => "set hive.metastore.use.SSL=true and hive.metastore.truststore.path (for Spark: \
                 spark.hadoop.hive.metastore.use.SSL=true)"
            .to_owned(),
        4040 => format!("use https://{peer} (the UI runs with spark.ssl.ui.enabled=true)"),
        port if crate::services::is_https(port) => {
            format!("use https://{peer}, not http://")
        }
        _ => format!(
            "for Spark RPC{} set spark.ssl.rpc.enabled=true with spark.ssl.rpc.trustStore and \
             spark.ssl.rpc.trustStorePassword in the client's Spark conf, as on the server \
             (spark.ssl.enabled does not turn RPC TLS on, and spark.network.crypto.enabled is \
             Spark's own AES encryption, not TLS)",
            if port == 7337 {
                " (the external shuffle service on 7337)"
            } else {
                ""
            }
        ),
    }
}

/// `who`: the process that sent what the peer did not expect.
pub fn tls_mismatch(peer: SocketAddr, direction: &str, sidecar: bool, who: &str) -> String {
    let port = peer.port();
    match (direction, sidecar) {
        ("tls_to_plaintext", true) => format!(
            "The service mesh wraps port {port} in mTLS but {peer} speaks plaintext. Exclude the \
             port from Envoy interception on the executor pod template: annotations \
             traffic.sidecar.istio.io/excludeOutboundPorts: \"{port}\" (and \
             traffic.sidecar.istio.io/excludeInboundPorts: \"{port}\" on the server pods), or \
             apply a PeerAuthentication scoped to the namespace with mtls mode PERMISSIVE."
        ),
        ("tls_to_plaintext", false) => format!(
            "The client uses TLS but {peer} is a plaintext port: turn TLS off for this \
             connection (e.g. ssl=false in the JDBC URL, spark.ssl.* for Spark), or point it at \
             the service's TLS port."
        ),
        _ => format!(
            "{peer} expects TLS: enable TLS on the client, {who}: {}; or point it at the \
             service's plaintext port.",
            client_tls_setting(peer)
        ),
    }
}

pub fn retransmit_storm(dst: SocketAddr) -> String {
    format!(
        "Packets to or from {} are lost: check interface drops (`ip -s link`, `ethtool -S`), an \
         MTU mismatch on VPN / overlay paths (lower the MTU or clamp the MSS), congested or \
         cross-AZ links. For shuffle, spark.shuffle.io.maxRetries and spark.shuffle.io.retryWait \
         buy time but do not fix the loss.",
        dst.ip()
    )
}
