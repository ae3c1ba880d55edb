//! What two ends of one connection say together that neither says alone: where a SYN died
//! (`syn_lost_in_path`) or its answer (`synack_lost_on_return`), that a RST came from
//! neither end (`middlebox_reset`, proven), that both ends still held a flow the path forgot
//! (`nat_idle_timeout`), and that a NAT rewrote the client's address (`nat_in_path`). Each
//! connection gets one finding, with both nodes' evidence; an end whose other half was not
//! traced keeps its own findings.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::ends::{End, Role, severity_rank};
use super::lines::{self, Verdict, base_line, port, rfc3339, service, who};
use super::nodes::Nodes;
use super::table::{JoinedBy, Released};

/// Most `nat_in_path` groups (client node and address, server node and endpoint, the
/// address the server saw); further translations are counted in the groups' total only.
const MAX_NAT_GROUPS: usize = 10_000;

/// One NAT translation seen on joined connections, and how often.
#[derive(Debug)]
struct NatGroup {
    example_client: End,
    example_server: End,
    count: u64,
    first_ns: i64,
    last_ns: i64,
}

#[derive(Default)]
pub struct Verdicts {
    next_id: u64,
    nat: BTreeMap<(String, String, String, String, String), NatGroup>,
    pub nat_omitted: u64,
    /// Joined connections, and ends that kept their own findings.
    pub joined: u64,
    pub single: u64,
    pub max_skew_ns: i64,
}

/// Whether NAT rewrote the client's address or port on the way (the server saw another
/// source than the client used).
fn translated(client: &End, server: &End) -> bool {
    client.local != server.remote
}

impl Verdicts {
    pub fn new(max_skew_ns: i64) -> Self {
        Self {
            max_skew_ns,
            ..Self::default()
        }
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// The finding lines for what left the table.
    pub fn judge(&mut self, released: Released, nodes: &Nodes) -> Vec<Value> {
        match released {
            Released::Pair { client, server, by } => {
                self.joined += 1;
                self.pair(*client, *server, by, nodes)
            }
            Released::Single(end) => {
                self.single += 1;
                self.single_end(*end, nodes)
            }
        }
    }

    fn single_end(&mut self, end: End, nodes: &Nodes) -> Vec<Value> {
        if let Some(finding) = self.syn_lost(&end, nodes) {
            return vec![finding];
        }
        let mut out = Vec::new();
        for finding in &end.findings {
            let mut line = finding.clone();
            let id = self.id();
            if let Some(object) = line.as_object_mut() {
                object.insert("id".into(), json!(id));
                object.remove("update_of");
                object.insert("nodes".into(), json!([end.node.as_ref()]));
            }
            out.push(line);
        }
        out
    }

    /// A client's connect that timed out, to an address of a node that was traced then and
    /// saw nothing of it: the SYNs died on the way.
    fn syn_lost(&mut self, end: &End, nodes: &Nodes) -> Option<Value> {
        if end.role != Some(Role::Client) || end.established || end.syn_retransmits == 0 {
            return None;
        }
        let timeout = end
            .findings
            .iter()
            .find(|f| f["kind"] == "connect_timeout")?;
        let dst_port = port(&end.remote);
        let (name, node) = nodes.owning(End::ip(&end.remote), &end.node)?;
        let watched = node.ports.is_empty() || node.ports.contains(&u64::from(dst_port));
        let traced = node.first_ns.saturating_sub(self.max_skew_ns) <= end.first_ns
            && node.last_ns.saturating_add(self.max_skew_ns) >= end.last_ns;
        if !watched || !traced {
            return None;
        }
        let summary = format!(
            "{}'s SYNs to {} ({}; {} sent, none answered) never reached node {name}, which has \
             that address, watched port {dst_port} and was traced from {} to {} without seeing \
             any of them: they were dropped on the way (a security group, network ACL, firewall \
             or route between the two).",
            who(end),
            end.remote,
            service(dst_port),
            end.syn_retransmits + 1,
            rfc3339(node.first_ns),
            rfc3339(node.last_ns),
        );
        let remedy = format!(
            "Allow TCP {dst_port} from {} to {} in every security group, network ACL and \
             firewall between {} and {name}, and check the route from {}'s subnet to {}: for a \
             peered VPC the route table entry for the peer's CIDR must point at the peering \
             connection, not at a NAT gateway. Then `shuffletrace probe {} --ports {dst_port}` \
             from {} must say open.",
            End::ip(&end.local),
            end.remote,
            end.node,
            end.node,
            End::ip(&end.remote),
            End::ip(&end.remote),
            end.node,
        );
        let nodes_list = [end.node.as_ref(), name.as_ref()];
        Some(self.joined_line(
            timeout,
            Verdict::of(
                "syn_lost_in_path",
                "error",
                summary,
                remedy,
                &nodes_list,
                &[end],
            ),
        ))
    }

    fn pair(&mut self, client: End, server: End, by: JoinedBy, nodes: &Nodes) -> Vec<Value> {
        let nat = translated(&client, &server);
        let verdict = if server.synack_retransmits > 0 && !client.established {
            Some(self.synack_lost(&client, &server))
        } else if let Some(line) = self.idle_break(&client, &server, nodes) {
            Some(line)
        } else if let Some(line) = self.unsent_reset(&client, &server, nodes) {
            Some(line)
        } else if client.has_kind("connect_refused") && server.sent_rst && !server.established {
            Some(self.refused_by_kernel(&client, &server))
        } else if client.findings.is_empty() && server.findings.is_empty() {
            None
        } else {
            Some(self.both_ends(&client, &server))
        };
        let Some(mut line) = verdict else {
            if nat {
                self.note_nat(client, server);
            }
            return Vec::new();
        };
        if let Some(object) = line.as_object_mut() {
            object.insert("joined_by".into(), json!(by.name()));
            if nat {
                object.insert(
                    "nat".into(),
                    json!({"client_sent_from": client.local, "server_saw": server.remote}),
                );
                if let Some(summary) = object.get_mut("summary") {
                    let text = format!(
                        "{} (A NAT in between: {} connected from {}, {} saw it come from {}.)",
                        summary.as_str().unwrap_or_default(),
                        client.node,
                        client.local,
                        server.node,
                        server.remote
                    );
                    *summary = Value::String(text);
                }
            }
        }
        vec![line]
    }

    /// The server got the SYN and answered; the answers never reached the client.
    fn synack_lost(&mut self, client: &End, server: &End) -> Value {
        let service_port = port(&server.local);
        let summary = format!(
            "The connection from {} to {} ({}) never completed: node {} received its SYN (from \
             {}) and answered, {} SYN-ACK retransmits, but no SYN-ACK came back to {}, which \
             kept resending its SYN. The return path drops the answers: a stateless firewall \
             or network ACL without a rule for the return traffic, or an asymmetric route.",
            who(client),
            client.remote,
            service(service_port),
            server.node,
            server.remote,
            server.synack_retransmits,
            client.node,
        );
        let remedy = format!(
            "On the way from {} back to {}: allow the return traffic (TCP from port \
             {service_port} to the client's ephemeral ports 1024-65535) in every stateless \
             network ACL or firewall, both directions per port pair; and make replies route back \
             the way the SYN came (a stateful firewall or NAT on only one of two routes drops \
             them).",
            server.node,
            End::ip(&client.local),
        );
        let base = server
            .findings
            .iter()
            .find(|f| f["kind"] == "return_path_blocked")
            .or(client.primary())
            .or(server.primary());
        let nodes = [client.node.as_ref(), server.node.as_ref()];
        self.joined_line_or_synth(
            base,
            client,
            Verdict::of(
                "synack_lost_on_return",
                "error",
                summary,
                remedy,
                &nodes,
                &[client, server],
            ),
        )
    }

    /// A refusal whose RST the server node's own kernel sent: nothing listened there; no
    /// firewall in between.
    fn refused_by_kernel(&mut self, client: &End, server: &End) -> Value {
        let base = client
            .findings
            .iter()
            .find(|f| f["kind"] == "connect_refused")
            .expect("a connect_refused finding");
        let service_port = port(&server.local);
        let summary = format!(
            "Connection refused: {} connected to {} ({}), and node {}'s own kernel answered the \
             SYN with a RST (it arrived there for {}, network namespace {}): nothing listened on \
             port {service_port} there. The port is closed, not blocked by a firewall in between.",
            who(client),
            client.remote,
            service(service_port),
            server.node,
            server.local,
            server.netns,
        );
        let remedy = match server.local.parse::<std::net::SocketAddr>() {
            Ok(addr) => format!(
                "On node {}: {}",
                server.node,
                crate::findings::remedies::check_listener(addr)
            ),
            Err(_) => base["remedy"].as_str().unwrap_or_default().to_owned(),
        };
        let nodes = [client.node.as_ref(), server.node.as_ref()];
        self.joined_line(
            base,
            Verdict::of(
                "connect_refused",
                "error",
                summary,
                remedy,
                &nodes,
                &[client, server],
            ),
        )
    }

    /// A RST one end received that the other end's kernel never sent, while that node was
    /// traced: a device in between sent it.
    fn unsent_reset(&mut self, client: &End, server: &End, nodes: &Nodes) -> Option<Value> {
        let (receiver, other) = self.reset_from_neither(client, server, nodes)?;
        let rst = receiver.received_rst.as_ref()?;
        let ttl = match (rst["ttl"].as_u64(), rst["peer_ttl"].as_u64()) {
            (Some(ttl), Some(peer)) if ttl != peer => {
                format!(" It arrived with TTL {ttl}, the peer's own packets with {peer}.")
            }
            _ => String::new(),
        };
        let service_port = port(match client.role {
            Some(_) => &client.remote,
            None => &server.local,
        });
        let summary = format!(
            "{} received a RST on its connection with {} ({}) that {}'s end never sent: node \
             {} was traced then and its kernel sent no RST on this connection. A device in \
             between reset it: a firewall, load balancer or NAT that dropped the flow's \
             state.{ttl}",
            who(receiver),
            receiver.remote,
            service(service_port),
            other.node,
            other.node,
        );
        let remedy = match receiver.primary().and_then(|f| f["remedy"].as_str()) {
            Some(own) => format!(
                "Find the device between {} and {} that resets the flow (its idle timeout, \
                 connection limits or state-table size). {own}",
                receiver.node, other.node
            ),
            None => format!(
                "Find the device between {} and {} that resets the flow (a stateful firewall, \
                 load balancer or NAT gateway): raise its idle timeout above the connection's \
                 idle time, or enable TCP keepalive below it on both ends.",
                receiver.node, other.node
            ),
        };
        let nodes_list = [receiver.node.as_ref(), other.node.as_ref()];
        Some(self.joined_line_or_synth(
            receiver.primary(),
            receiver,
            Verdict::of(
                "middlebox_reset",
                "error",
                summary,
                remedy,
                &nodes_list,
                &[client, server],
            ),
        ))
    }

    /// The end that received a RST the other end's kernel never sent, while the other node
    /// was traced and its record of the connection reaches the RST's time (so its silence is
    /// evidence: a finding's evidence keeps only its first events, and a RST after them would
    /// not be there), and that other end.
    fn reset_from_neither<'e>(
        &self,
        client: &'e End,
        server: &'e End,
        nodes: &Nodes,
    ) -> Option<(&'e End, &'e End)> {
        let (receiver, other) = match (&client.received_rst, &server.received_rst) {
            (Some(_), _) if !server.sent_rst => (client, server),
            (_, Some(_)) if !client.sent_rst => (server, client),
            _ => return None,
        };
        let rst = receiver.received_rst.as_ref()?;
        let at = rst["ts"].as_str().and_then(super::ends::epoch_ns)?;
        let traced = nodes.by_name.get(&other.node).is_some_and(|node| {
            node.first_ns.saturating_sub(self.max_skew_ns) <= at
                && node.last_ns.saturating_add(self.max_skew_ns) >= at
        });
        let recorded_then = other.last_event_ns.saturating_add(self.max_skew_ns) >= at;
        (traced && recorded_then).then_some((receiver, other))
    }

    /// Both ends still held an idle flow that broke: the device in between forgot it.
    fn idle_break(&mut self, client: &End, server: &End, nodes: &Nodes) -> Option<Value> {
        const IDLE: [&str; 3] = ["nat_idle_timeout", "half_open", "idle_at_risk"];
        let broke = |e: &End| e.has_kind("nat_idle_timeout") || e.has_kind("half_open");
        let idle = |e: &End| IDLE.iter().any(|k| e.has_kind(k));
        let (broken, other) = if broke(client) && idle(server) {
            (client, server)
        } else if broke(server) && idle(client) {
            (server, client)
        } else {
            return None;
        };
        let base = broken
            .findings
            .iter()
            .find(|f| f["kind"] == "nat_idle_timeout" || f["kind"] == "half_open")?;
        let idle_s = base["idle_s"]
            .as_f64()
            .map_or(String::new(), |s| format!(" after {s:.0} s without data"));
        let reset = match self.reset_from_neither(client, server, nodes) {
            Some((receiver, other)) => format!(
                " The RST {} got came from neither end: {}'s kernel sent none.",
                receiver.node, other.node
            ),
            None => String::new(),
        };
        let summary = format!(
            "The connection between {} and {} broke{idle_s}, and both ends still held it: {} \
             reports {}, {} reports {}. The device in between (a NAT gateway, firewall or load \
             balancer) forgot the idle flow.{reset}",
            who(client),
            who(server),
            client.node,
            client.kinds().join(", "),
            server.node,
            server.kinds().join(", "),
        );
        let remedy = base["remedy"].as_str().unwrap_or_default().to_owned();
        let nodes = [broken.node.as_ref(), other.node.as_ref()];
        Some(self.joined_line(
            base,
            Verdict::of(
                "nat_idle_timeout",
                "error",
                summary,
                remedy,
                &nodes,
                &[client, server],
            ),
        ))
    }

    /// Both ends reported something: one finding, told from the end with the most severe.
    fn both_ends(&mut self, client: &End, server: &End) -> Value {
        let rank = |e: &End| e.primary().map_or(0, |f| severity_rank(&f["severity"]));
        let (main, other) = if rank(server) > rank(client) {
            (server, client)
        } else {
            (client, server)
        };
        let base = main.primary().expect("an end with findings");
        let seen = if other.findings.is_empty() {
            format!(
                "Node {} has the other end ({}, {}).",
                other.node,
                other.local,
                other.role.map_or("?", Role::name)
            )
        } else {
            format!(
                "Node {} has the other end ({}) and reports {}.",
                other.node,
                other.local,
                other.kinds().join(", ")
            )
        };
        let summary = format!("{} {seen}", base["summary"].as_str().unwrap_or_default());
        let remedy = base["remedy"].as_str().unwrap_or_default().to_owned();
        let kind = base["kind"].as_str().unwrap_or_default().to_owned();
        let severity = base["severity"].as_str().unwrap_or("info").to_owned();
        let nodes = [main.node.as_ref(), other.node.as_ref()];
        self.joined_line(
            base,
            Verdict::of(&kind, &severity, summary, remedy, &nodes, &[client, server]),
        )
    }

    fn note_nat(&mut self, client: End, server: End) {
        let key = (
            client.node.to_string(),
            End::ip(&client.local).to_owned(),
            server.node.to_string(),
            server.local.clone(),
            End::ip(&server.remote).to_owned(),
        );
        let (first, last) = (client.first_ns.min(server.first_ns), client.last_ns);
        if let Some(group) = self.nat.get_mut(&key) {
            group.count += 1;
            group.first_ns = group.first_ns.min(first);
            group.last_ns = group.last_ns.max(last);
            return;
        }
        if self.nat.len() >= MAX_NAT_GROUPS {
            self.nat_omitted += 1;
            return;
        }
        self.nat.insert(
            key,
            NatGroup {
                example_client: client,
                example_server: server,
                count: 1,
                first_ns: first,
                last_ns: last,
            },
        );
    }

    /// One `nat_in_path` finding per translation seen on connections without another verdict.
    pub fn finish(&mut self) -> Vec<Value> {
        let groups = std::mem::take(&mut self.nat);
        groups
            .into_values()
            .map(|group| self.nat_line(group))
            .collect()
    }

    fn nat_line(&mut self, group: NatGroup) -> Value {
        let (client, server) = (&group.example_client, &group.example_server);
        let service_port = port(&server.local);
        let summary = format!(
            "{} connects to {} ({}) from {}, but node {} sees these connections arrive from {} \
             ({} connections): a NAT between them rewrites the source address. Spark breaks \
             across a NAT: drivers and executors advertise their own addresses and the other \
             side connects back to them, and shuffle and RPC peers that check or reuse the \
             originating address fail when it changes.",
            client.node,
            client.remote,
            service(service_port),
            End::ip(&client.local),
            server.node,
            End::ip(&server.remote),
            group.count,
        );
        let remedy = format!(
            "Route {}'s traffic to {} without translation: in the route table of {}'s subnet, \
             the entry for the peer network's CIDR (the one holding {}) must point at the VPC \
             peering connection (or transit gateway), not at the NAT gateway. Then {} sees \
             connections from {} itself.",
            client.node,
            End::ip(&server.local),
            client.node,
            End::ip(&server.local),
            server.node,
            End::ip(&client.local),
        );
        let base = base_line(client, group.first_ns, group.last_ns, group.count);
        let nodes = [client.node.as_ref(), server.node.as_ref()];
        let mut line = self.joined_line(
            &base,
            Verdict {
                kind: "nat_in_path",
                severity: "warning",
                summary,
                remedy,
                nodes: &nodes,
                ends: &[client, server],
                count: Some(group.count),
            },
        );
        if let Some(object) = line.as_object_mut() {
            object.insert("joined_by".into(), json!("isn"));
            object.insert(
                "nat".into(),
                json!({"client_sent_from": client.local, "server_saw": server.remote}),
            );
        }
        line
    }

    /// A joined finding built on `base` (a finding line of one end), or on a line made from
    /// `main`'s tuple when neither end had a finding to build on.
    fn joined_line_or_synth(
        &mut self,
        base: Option<&Value>,
        main: &End,
        verdict: Verdict<'_>,
    ) -> Value {
        let made;
        let base = match base {
            Some(base) => base,
            None => {
                made = base_line(main, main.first_ns, main.last_ns, 1);
                &made
            }
        };
        self.joined_line(base, verdict)
    }

    /// The finding line of a joined verdict (see `lines::joined`), with the next id.
    fn joined_line(&mut self, base: &Value, verdict: Verdict<'_>) -> Value {
        let id = self.id();
        lines::joined(id, base, verdict)
    }
}
