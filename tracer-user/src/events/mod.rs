//! Decoding ring-buffer records ([`FlowEvent`], the shared wire struct) into typed events.

pub mod batch;
pub mod clock;
pub mod k8s;
pub mod keepalive;
pub mod netns;
pub mod procs;
pub mod repeats;
pub mod sources;

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use tracer_ebpf::{
    AF_INET, AF_INET6, FlowActivity, FlowEvent, FlowHistory, FlowSlot, RepeatCount, RepeatKey,
    flag, kind, payload_class, tcp_state,
};

/// What the kernel saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    StateChange,
    Retransmit,
    SynackRetransmit,
    ResetSent,
    ResetReceived,
    SocketError,
    FirstPayload,
    /// A quiet flow closed cleanly (its one record; see `tracer_ebpf::FlowSlot`).
    FlowSummary,
    /// A flow ended without its CLOSE being seen (the kernel skipped the state program's run;
    /// see `tracer_ebpf::kind::CLOSE_UNSEEN`): how it closed is not known.
    CloseUnseen,
}

impl EventKind {
    fn from_wire(value: u8) -> Option<Self> {
        Some(match value {
            kind::STATE_CHANGE => Self::StateChange,
            kind::RETRANSMIT => Self::Retransmit,
            kind::SYNACK_RETRANSMIT => Self::SynackRetransmit,
            kind::RESET_SENT => Self::ResetSent,
            kind::RESET_RECEIVED => Self::ResetReceived,
            kind::SOCKET_ERROR => Self::SocketError,
            kind::FIRST_PAYLOAD => Self::FirstPayload,
            kind::FLOW_SUMMARY => Self::FlowSummary,
            kind::CLOSE_UNSEEN => Self::CloseUnseen,
            _ => return None,
        })
    }

    /// The stable name used in output (`"event"` in JSON).
    pub fn name(self) -> &'static str {
        match self {
            Self::StateChange => "state_change",
            Self::Retransmit => "retransmit",
            Self::SynackRetransmit => "synack_retransmit",
            Self::ResetSent => "reset_sent",
            Self::ResetReceived => "reset_received",
            Self::SocketError => "socket_error",
            Self::FirstPayload => "first_payload",
            Self::FlowSummary => "flow_summary",
            Self::CloseUnseen => "close_unseen",
        }
    }
}

/// The process a flow belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    /// The thread's name, as the kernel had it when the socket was made (a JVM's is a thread
    /// name such as `shuffle-client-`).
    pub comm: std::sync::Arc<str>,
    pub cgroup_id: u64,
    /// The process, named from /proc (see `procs`): None until named, or when it is gone.
    pub process: Option<std::sync::Arc<procs::ProcessName>>,
}

impl Owner {
    /// How findings name the process: its name and main class, else the thread's name.
    pub fn process_name(&self) -> String {
        match &self.process {
            Some(process) => process.display(),
            None => self.comm.to_string(),
        }
    }
}

/// Which end of the connection this host is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// This host connected out.
    Client,
    /// This host accepted the connection.
    Server,
}

/// One decoded kernel event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// CLOCK_BOOTTIME nanoseconds (see [`crate::events::clock`] for wall time).
    pub boot_ns: u64,
    pub kind: EventKind,
    pub cookie: u64,
    pub netns: u32,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub owner: Option<Owner>,
    pub side: Option<Side>,
    pub old_state: u8,
    pub new_state: u8,
    /// errno (socket_error, retransmit) or `enum sk_rst_reason` (reset_sent).
    pub detail: i32,
    /// A RST for a packet that matched no socket.
    pub no_socket: bool,
    /// With `no_socket`: the packet was a SYN (nothing listens on that port). Without it,
    /// the RST answered a late segment of a connection already gone here.
    pub answers_syn: bool,
    /// The error (`detail`) is a soft one: an ICMP error the kernel has not acted on yet.
    pub soft_error: bool,
    /// `CloseUnseen`: nothing of the flow was sent before (it was quiet).
    pub was_quiet: bool,
    /// first_payload: the segment was received (else sent); `detail` is its payload class.
    pub received: bool,
    /// For reset_received: TTL / hop limit of the RST, and of the peer's own packets.
    pub ttl: Option<u8>,
    pub peer_ttl: Option<u8>,
    /// For an idle-tracked flow: how long it had been idle (see [`Idle`]).
    pub idle: Option<Idle>,
    /// The flow's first payload class sent and received when the kernel sent the event
    /// (`payload_class::NONE`: none yet). What a clean flow's summary says of its payload.
    pub classes: (u8, u8),
    /// The Kubernetes pod (and container) of the flow, when it is in one.
    pub pod: Option<std::sync::Arc<crate::events::k8s::PodRef>>,
    /// The connection's initial sequence numbers, as far as this end knows them.
    pub isn: Isn,
}

/// A connection's TCP initial sequence numbers as one end saw them (see
/// `tracer_ebpf::FlowEvent::isn_sent`): the key `correlate` joins its two ends by, on two
/// nodes, through NAT.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Isn {
    /// This end's: of the SYN (a client) or SYN-ACK (a server) it sent.
    pub sent: Option<u32>,
    /// The peer's, as it arrived.
    pub received: Option<u32>,
}

/// An event for unit tests: a flow 10.0.0.1:40000 -> 10.0.0.2:7337 in netns 1, no owner, side
/// or detail; each test overrides what it looks at.
#[cfg(test)]
pub fn sample_event(kind: EventKind, cookie: u64, boot_ns: u64) -> Event {
    Event {
        boot_ns,
        kind,
        cookie,
        netns: 1,
        local: "10.0.0.1:40000".parse().unwrap(),
        remote: "10.0.0.2:7337".parse().unwrap(),
        owner: None,
        side: None,
        old_state: 0,
        new_state: 0,
        detail: 0,
        no_socket: false,
        answers_syn: false,
        soft_error: false,
        was_quiet: false,
        received: false,
        ttl: None,
        peer_ttl: None,
        idle: None,
        classes: (0, 0),
        pod: None,
        isn: Isn::default(),
    }
}

/// Idle state of a flow when the event happened, from the kernel's activity record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Idle {
    /// Milliseconds since the last data segment either way.
    pub since_data_ms: u32,
    /// The last idle period that ended (its length, and how long ago it ended), if any.
    pub last_gap_ms: Option<u32>,
    pub resumed_ago_ms: Option<u32>,
}

impl Idle {
    /// How long the flow had been idle before the current burst of activity: the idle period
    /// that ended within `recent_ms`, or the one still going on.
    pub fn before_ms(&self, recent_ms: u32) -> u32 {
        let gap = match (self.last_gap_ms, self.resumed_ago_ms) {
            (Some(gap), Some(ago)) if ago <= recent_ms => gap,
            _ => 0,
        };
        gap.max(self.since_data_ms)
    }
}

/// A record that does not decode: counted, never fatal.
#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    Size(usize),
    Kind(u8),
    Family(u8),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Size(n) => write!(
                f,
                "record of {n} bytes, expected {}",
                size_of::<FlowEvent>()
            ),
            Self::Kind(k) => write!(f, "unknown event kind {k}"),
            Self::Family(a) => write!(f, "unknown address family {a}"),
        }
    }
}

/// Address from the kernel's 16 bytes; v4-mapped IPv6 is shown as IPv4.
fn address(family: u8, bytes: [u8; 16]) -> Result<IpAddr, DecodeError> {
    match u16::from(family) {
        AF_INET => Ok(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        ))),
        AF_INET6 => {
            let v6 = Ipv6Addr::from(bytes);
            Ok(match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            })
        }
        _ => Err(DecodeError::Family(family)),
    }
}

/// Distinct thread names `comm` keeps before it starts over.
const MAX_COMMS: usize = 4096;

/// A record's thread name, decoded once: its 16 bytes (NUL-padded by the kernel) map to a
/// shared string, so an event's owner costs no allocation and no UTF-8 check (`malloc` from
/// the decoder was 7% of the collector's time in a profile under connection churn). A cache
/// on the decoding thread, bounded: past `MAX_COMMS` names it starts over.
fn comm(bytes: &[u8; 16]) -> std::sync::Arc<str> {
    thread_local! {
        static COMMS: std::cell::RefCell<HashMap<[u8; 16], std::sync::Arc<str>>> =
            std::cell::RefCell::new(HashMap::new());
    }
    COMMS.with_borrow_mut(|comms| {
        if let Some(name) = comms.get(bytes) {
            return name.clone();
        }
        if comms.len() >= MAX_COMMS {
            comms.clear();
        }
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        let name: std::sync::Arc<str> = String::from_utf8_lossy(&bytes[..end]).into();
        comms.insert(*bytes, name.clone());
        name
    })
}

/// Decodes one ring-buffer record into the events it holds, appended to `out`: one, or up
/// to five for a quiet flow's history (see `tracer_ebpf::FlowHistory`), in time order.
pub fn decode_into(record: &[u8], out: &mut Vec<Event>) -> Result<(), DecodeError> {
    if record.len() < size_of::<FlowEvent>() {
        return Err(DecodeError::Size(record.len()));
    }
    // SAFETY: length checked; FlowEvent is plain data valid for any bytes.
    let raw: FlowEvent = unsafe { std::ptr::read_unaligned(record.as_ptr().cast()) };
    if raw.kind != kind::FLOW_HISTORY {
        let kind = EventKind::from_wire(raw.kind).ok_or(DecodeError::Kind(raw.kind))?;
        out.push(event_of(&raw, kind)?);
        return Ok(());
    }
    if record.len() < size_of::<FlowHistory>() {
        return Err(DecodeError::Size(record.len()));
    }
    // SAFETY: length checked; FlowHistory is plain data valid for any bytes.
    let history: FlowHistory = unsafe { std::ptr::read_unaligned(record.as_ptr().cast()) };
    out.extend(expand_history(&history)?);
    Ok(())
}

/// The events a quiet flow recorded: its opening, then ESTABLISHED, its first payload each
/// way and its latest state change, those that happened, in time order.
pub fn expand_history(history: &FlowHistory) -> Result<Vec<Event>, DecodeError> {
    let opening = event_of(&history.event, EventKind::StateChange)?;
    let at = |boot_ns: u64| Event {
        boot_ns,
        ..opening.clone()
    };
    let mut later = Vec::with_capacity(4);
    if history.established_ns != 0 {
        later.push(Event {
            old_state: opening.new_state,
            new_state: tcp_state::ESTABLISHED,
            ..at(history.established_ns)
        });
    }
    for (class, boot_ns, received) in [
        (history.tx_class, history.tx_first_ns, false),
        (history.rx_class, history.rx_first_ns, true),
    ] {
        if class != payload_class::NONE {
            later.push(Event {
                kind: EventKind::FirstPayload,
                old_state: tcp_state::ESTABLISHED,
                new_state: tcp_state::ESTABLISHED,
                detail: i32::from(class),
                received,
                ..at(boot_ns)
            });
        }
    }
    if history.latest_new != 0 {
        later.push(Event {
            old_state: history.latest_old,
            new_state: history.latest_new,
            ..at(history.latest_ns)
        });
    }
    // Stable: ESTABLISHED stays before a first payload stamped in the same nanosecond.
    later.sort_by_key(|event| event.boot_ns);
    let mut events = Vec::with_capacity(1 + later.len());
    events.push(opening);
    events.extend(later);
    Ok(events)
}

/// What the kernel knows of a flow it kept quiet (its activity record, and its slot when it
/// was opened while tracing), as the history it would send: the flow's tuple from the
/// activity record, its owner and recorded state changes from the slot.
pub fn quiet_history(cookie: u64, activity: &FlowActivity, slot: Option<&FlowSlot>) -> FlowHistory {
    let slot = slot.copied().unwrap_or_default();
    FlowHistory {
        event: FlowEvent {
            ts_ns: slot.opened_ns,
            cookie,
            cgroup_id: slot.owner.cgroup_id,
            netns: activity.netns,
            pid: slot.owner.pid,
            tid: slot.owner.tid,
            uid: slot.owner.uid,
            kind: kind::FLOW_HISTORY,
            family: activity.family,
            old_state: slot.opened_old,
            new_state: slot.opened_new,
            local_port: activity.local_port,
            remote_port: activity.remote_port,
            flags: slot.owner.flags | flag::DEFERRED | slot.isn_flags,
            isn_sent: slot.isn_sent,
            isn_received: slot.isn_received,
            local_addr: activity.local_addr,
            remote_addr: activity.remote_addr,
            comm: slot.owner.comm,
            idle_ms: u32::MAX,
            gap_ms: u32::MAX,
            resumed_ms: u32::MAX,
            ..Default::default()
        },
        established_ns: slot.established_ns,
        latest_ns: slot.latest_ns,
        tx_first_ns: activity.tx_first_ns,
        rx_first_ns: activity.rx_first_ns,
        latest_old: slot.latest_old,
        latest_new: slot.latest_new,
        tx_class: activity.tx_class,
        rx_class: activity.rx_class,
        _pad: 0,
    }
}

/// A tracked flow's ends (this host's, the peer's) from its activity record; None for an
/// address family it does not know.
pub fn activity_ends(activity: &FlowActivity) -> Option<(SocketAddr, SocketAddr)> {
    let local = address(activity.family, activity.local_addr).ok()?;
    let remote = address(activity.family, activity.remote_addr).ok()?;
    Some((
        SocketAddr::new(local, activity.local_port),
        SocketAddr::new(remote, activity.remote_port),
    ))
}

/// Socket cookies count up from 1; this one stands for the flows of counted repeats, which
/// userspace never saw (see `repeat_event`).
pub const REPEAT_COOKIE: u64 = u64::MAX;

/// The latest occurrence of a repeat the kernel counted instead of sending (see
/// `tracer_ebpf::RepeatKey`), as the event it would have sent: the RST that answered a SYN
/// (a refused connect, `REPEAT_COOKIE`), or a RST sent without a socket.
pub fn repeat_event(key: &RepeatKey, count: &RepeatCount) -> Result<Event, DecodeError> {
    let refused = key.kind == kind::RESET_RECEIVED;
    let (state, local_port, remote_port, cookie, flags) = if refused {
        (
            tcp_state::SYN_SENT,
            count.last_client_port,
            key.service_port,
            REPEAT_COOKIE,
            count.owner.flags,
        )
    } else {
        (
            tcp_state::CLOSE,
            key.service_port,
            count.last_client_port,
            0,
            key.flags | flag::NO_SOCKET,
        )
    };
    let raw = FlowEvent {
        ts_ns: count.last_ns,
        cookie,
        cgroup_id: count.owner.cgroup_id,
        netns: key.netns,
        pid: count.owner.pid,
        tid: count.owner.tid,
        uid: count.owner.uid,
        detail: key.detail,
        kind: key.kind,
        family: key.family,
        old_state: state,
        new_state: state,
        local_port,
        remote_port,
        flags,
        ttl: key.ttl,
        peer_ttl: key.peer_ttl,
        local_addr: key.local_addr,
        remote_addr: key.remote_addr,
        comm: count.owner.comm,
        idle_ms: u32::MAX,
        gap_ms: u32::MAX,
        resumed_ms: u32::MAX,
        tx_class: 0,
        rx_class: 0,
        _pad: 0,
        isn_sent: 0,
        isn_received: 0,
    };
    let kind = EventKind::from_wire(raw.kind).ok_or(DecodeError::Kind(raw.kind))?;
    event_of(&raw, kind)
}

/// Decodes a ring-buffer record that holds one event.
#[cfg(test)]
pub fn decode(record: &[u8]) -> Result<Event, DecodeError> {
    let mut out = Vec::new();
    decode_into(record, &mut out)?;
    out.into_iter()
        .next()
        .ok_or(DecodeError::Size(record.len()))
}

/// The event a wire record describes, as `kind`.
fn event_of(raw: &FlowEvent, kind: EventKind) -> Result<Event, DecodeError> {
    let local = SocketAddr::new(address(raw.family, raw.local_addr)?, raw.local_port);
    let remote = SocketAddr::new(address(raw.family, raw.remote_addr)?, raw.remote_port);
    let owner = (raw.flags & flag::OWNER_KNOWN != 0).then(|| Owner {
        pid: raw.pid,
        tid: raw.tid,
        uid: raw.uid,
        comm: comm(&raw.comm),
        cgroup_id: raw.cgroup_id,
        process: None,
    });
    let listener = raw.old_state == tcp_state::LISTEN || raw.new_state == tcp_state::LISTEN;
    let side = if raw.flags & flag::ACCEPTED != 0 {
        Some(Side::Server)
    } else if owner.is_some() && !listener {
        // Owners of non-accepted sockets are captured at connect().
        Some(Side::Client)
    } else {
        None
    };
    Ok(Event {
        boot_ns: raw.ts_ns,
        kind,
        cookie: raw.cookie,
        netns: raw.netns,
        local,
        remote,
        owner,
        side,
        old_state: raw.old_state,
        new_state: raw.new_state,
        detail: raw.detail,
        no_socket: raw.flags & flag::NO_SOCKET != 0,
        answers_syn: raw.flags & flag::ANSWERS_SYN != 0,
        soft_error: raw.flags & flag::SOFT_ERROR != 0,
        was_quiet: raw.flags & flag::WAS_QUIET != 0,
        received: raw.flags & flag::RECEIVED != 0,
        ttl: (raw.ttl != 0).then_some(raw.ttl),
        peer_ttl: (raw.peer_ttl != 0).then_some(raw.peer_ttl),
        idle: (raw.idle_ms != u32::MAX).then(|| Idle {
            since_data_ms: raw.idle_ms,
            last_gap_ms: (raw.gap_ms != u32::MAX).then_some(raw.gap_ms),
            resumed_ago_ms: (raw.resumed_ms != u32::MAX).then_some(raw.resumed_ms),
        }),
        classes: (raw.tx_class, raw.rx_class),
        pod: None,
        isn: isn_of(raw, kind),
    })
}

/// The ISNs an event carries: given as such (a flow's slot, a request socket), or derived
/// from the socket's sequence numbers by its state (see `tracer_ebpf::flag::SEQ_RAW`). A
/// zero is taken for unknown (a connect() that failed before its SYN was built).
pub fn isn_of(raw: &FlowEvent, kind: EventKind) -> Isn {
    let nonzero = |value: u32| (value != 0).then_some(value);
    if raw.flags & flag::SEQ_RAW == 0 {
        let given = |bit: u16, value: u32| nonzero(value).filter(|_| raw.flags & bit != 0);
        return Isn {
            sent: given(flag::ISN_SENT, raw.isn_sent),
            received: given(flag::ISN_RECEIVED, raw.isn_received),
        };
    }
    let (snd_una, rcv_nxt) = (raw.isn_sent, raw.isn_received);
    match kind {
        // The segment a RST without a socket answers: a SYN's is the client's ISN.
        EventKind::ResetSent if raw.flags & flag::NO_SOCKET != 0 => Isn {
            sent: None,
            received: nonzero(rcv_nxt).filter(|_| raw.flags & flag::ANSWERS_SYN != 0),
        },
        // The handshake's segments took one sequence number each.
        EventKind::StateChange
            if raw.old_state == tcp_state::SYN_SENT && raw.new_state == tcp_state::ESTABLISHED =>
        {
            Isn {
                sent: nonzero(snd_una.wrapping_sub(1)),
                received: nonzero(rcv_nxt.wrapping_sub(1)),
            }
        }
        // In SYN_SENT nothing but the SYN was sent: `snd_una` is its sequence number. (For
        // events other than state changes both states are the socket's.)
        _ if raw.old_state == tcp_state::SYN_SENT => Isn {
            sent: nonzero(snd_una),
            received: None,
        },
        _ => Isn::default(),
    }
}

/// Names of payload classes (see `tracer_ebpf::payload_class`).
pub fn payload_class_name(class: u8) -> &'static str {
    use tracer_ebpf::payload_class::*;
    match class {
        TLS_CLIENT_HELLO => "tls_client_hello",
        TLS_SERVER_HELLO => "tls_server_hello",
        TLS_ALERT => "tls_alert",
        TLS_RECORD => "tls_record",
        HTTP => "http",
        SPARK_RPC => "spark_rpc",
        THRIFT_SASL => "thrift_sasl",
        NONE => "none",
        _ => "other",
    }
}

/// Kernel TCP state names (include/net/tcp_states.h), without the `TCP_` prefix.
pub fn tcp_state_name(state: u8) -> &'static str {
    match state {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        12 => "NEW_SYN_RECV",
        _ => "UNKNOWN",
    }
}

/// Symbolic errno names for the errors a TCP socket reports.
pub fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ECONNRESET => "ECONNRESET",
        libc::ECONNABORTED => "ECONNABORTED",
        libc::EPIPE => "EPIPE",
        libc::EPROTO => "EPROTO",
        libc::EMSGSIZE => "EMSGSIZE",
        libc::ENOBUFS => "ENOBUFS",
        libc::ENOMEM => "ENOMEM",
        libc::EHOSTDOWN => "EHOSTDOWN",
        libc::ENETDOWN => "ENETDOWN",
        libc::ENETRESET => "ENETRESET",
        libc::EACCES => "EACCES",
        libc::EPERM => "EPERM",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::EAGAIN => "EAGAIN",
        libc::ENOPROTOOPT => "ENOPROTOOPT",
        _ => return format!("errno {errno}"),
    };
    name.to_owned()
}

/// Facts about the running kernel the stages need, read once at start (not settings).
#[derive(Debug, Clone)]
pub struct KernelFacts {
    /// Tick rate: keepalive settings are kept in jiffies.
    pub hz: u32,
    /// Names of the reset reasons (`enum sk_rst_reason`; none before 6.10).
    pub reasons: ResetReasons,
}

/// Names of the kernel's reset reasons (`enum sk_rst_reason`), read from its BTF at start.
#[derive(Debug, Default, Clone)]
pub struct ResetReasons(HashMap<i64, String>);

impl ResetReasons {
    pub fn new(values: Vec<(i64, String)>) -> Self {
        Self(values.into_iter().collect())
    }

    pub fn name(&self, reason: i32) -> Option<&str> {
        self.0.get(&i64::from(reason)).map(String::as_str)
    }

    /// The reason of a RST this host sent: the kernel's name for it, else `NO_SOCKET` for one
    /// sent without a socket (kernels before 6.10 give no reason; the kfree_skb program
    /// reports those RSTs, which answer a port nobody listens on).
    pub fn of_reset(&self, event: &Event) -> Option<&str> {
        self.name(event.detail)
            .or(event.no_socket.then_some("NO_SOCKET"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reset_without_a_socket_is_no_socket_where_the_kernel_gives_no_reason() {
        let mut rst = sample_event(EventKind::ResetSent, 0, 1);
        rst.no_socket = true;
        // 6.1: no reason names at all.
        assert_eq!(ResetReasons::default().of_reset(&rst), Some("NO_SOCKET"));
        // 6.10+: the kernel's own name wins.
        let named = ResetReasons::new(vec![(0, "NOT_SPECIFIED".into())]);
        assert_eq!(named.of_reset(&rst), Some("NOT_SPECIFIED"));
        rst.no_socket = false;
        rst.detail = 7;
        assert_eq!(ResetReasons::default().of_reset(&rst), None);
    }

    fn wire(kind: u8, family: u16) -> FlowEvent {
        let mut local_addr = [0u8; 16];
        let mut remote_addr = [0u8; 16];
        if family == AF_INET {
            local_addr[..4].copy_from_slice(&[10, 0, 0, 1]);
            remote_addr[..4].copy_from_slice(&[10, 0, 0, 2]);
        } else {
            local_addr = Ipv6Addr::LOCALHOST.octets();
            remote_addr = "::ffff:10.0.0.2".parse::<Ipv6Addr>().unwrap().octets();
        }
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"java");
        FlowEvent {
            ts_ns: 42,
            cookie: 7,
            cgroup_id: 9,
            netns: 4026531840,
            pid: 100,
            tid: 101,
            uid: 1000,
            detail: libc::ECONNREFUSED,
            kind,
            family: family as u8,
            old_state: 2,
            new_state: 7,
            local_port: 43210,
            remote_port: 7337,
            flags: flag::OWNER_KNOWN,
            ttl: 0,
            peer_ttl: 0,
            local_addr,
            remote_addr,
            comm,
            idle_ms: u32::MAX,
            gap_ms: u32::MAX,
            resumed_ms: u32::MAX,
            tx_class: 0,
            rx_class: 0,
            _pad: 0,
            isn_sent: 0,
            isn_received: 0,
        }
    }

    fn bytes(event: &FlowEvent) -> Vec<u8> {
        // SAFETY: plain data.
        unsafe {
            std::slice::from_raw_parts(
                (event as *const FlowEvent).cast::<u8>(),
                size_of::<FlowEvent>(),
            )
        }
        .to_vec()
    }

    fn history(
        established_ns: u64,
        tx: (u8, u64),
        rx: (u8, u64),
        latest: (u8, u8, u64),
    ) -> Vec<u8> {
        let mut event = wire(kind::FLOW_HISTORY, AF_INET);
        (event.old_state, event.new_state, event.ts_ns, event.detail) = (7, 2, 10, 0);
        let history = FlowHistory {
            event,
            established_ns,
            tx_class: tx.0,
            tx_first_ns: tx.1,
            rx_class: rx.0,
            rx_first_ns: rx.1,
            latest_old: latest.0,
            latest_new: latest.1,
            latest_ns: latest.2,
            ..Default::default()
        };
        // SAFETY: plain data.
        unsafe {
            std::slice::from_raw_parts(
                (&history as *const FlowHistory).cast::<u8>(),
                size_of::<FlowHistory>(),
            )
        }
        .to_vec()
    }

    fn expanded(record: &[u8]) -> Vec<(EventKind, u8, u8, i32, bool, u64)> {
        let mut out = Vec::new();
        decode_into(record, &mut out).unwrap();
        out.iter()
            .map(|e| {
                let (k, o, n, d) = (e.kind, e.old_state, e.new_state, e.detail);
                (k, o, n, d, e.received, e.boot_ns)
            })
            .collect()
    }

    #[test]
    fn a_quiet_flows_history_expands_in_time_order() {
        use payload_class::{OTHER, TLS_CLIENT_HELLO};
        use tcp_state::{CLOSE, CLOSE_WAIT, ESTABLISHED as EST, SYN_SENT};
        // A client: connect, established, ClientHello sent, the peer closes without a word.
        let client = history(20, (TLS_CLIENT_HELLO, 30), (0, 0), (EST, CLOSE_WAIT, 40));
        assert_eq!(
            expanded(&client),
            [
                (EventKind::StateChange, CLOSE, SYN_SENT, 0, false, 10),
                (EventKind::StateChange, SYN_SENT, EST, 0, false, 20),
                (EventKind::FirstPayload, EST, EST, 1, false, 30),
                (EventKind::StateChange, EST, CLOSE_WAIT, 0, false, 40),
            ]
        );
        // A server hears first: its received payload comes before the one it sent, and a
        // close recorded earlier than both stays in its place.
        let server = history(
            20,
            (OTHER, 35),
            (TLS_CLIENT_HELLO, 30),
            (EST, CLOSE_WAIT, 25),
        );
        let order: Vec<(EventKind, bool, u64)> =
            expanded(&server).iter().map(|e| (e.0, e.4, e.5)).collect();
        assert_eq!(
            order,
            [
                (EventKind::StateChange, false, 10),
                (EventKind::StateChange, false, 20),
                (EventKind::StateChange, false, 25),
                (EventKind::FirstPayload, true, 30),
                (EventKind::FirstPayload, false, 35),
            ]
        );
        // Only the opening happened: one event. A cut history is an error.
        assert_eq!(expanded(&history(0, (0, 0), (0, 0), (0, 0, 0))).len(), 1);
        assert_eq!(
            decode_into(&client[..150], &mut Vec::new()),
            Err(DecodeError::Size(150))
        );
    }

    #[test]
    fn isns_come_given_or_derived_from_the_sequence_numbers_by_state() {
        let mut raw = wire(kind::STATE_CHANGE, AF_INET);
        let isn = |raw: &FlowEvent, kind| isn_of(raw, kind);
        // Given (a quiet flow's slot, a request socket); a zero is unknown.
        raw.flags = flag::ISN_SENT | flag::ISN_RECEIVED;
        (raw.isn_sent, raw.isn_received) = (7, 9);
        let given = isn(&raw, EventKind::StateChange);
        assert_eq!((given.sent, given.received), (Some(7), Some(9)));
        raw.isn_sent = 0;
        assert_eq!(isn(&raw, EventKind::StateChange).sent, None);
        // Raw: leaving SYN_SENT for ESTABLISHED, both are one past the ISNs.
        raw.flags = flag::SEQ_RAW;
        (raw.isn_sent, raw.isn_received) = (1001, 5001);
        (raw.old_state, raw.new_state) = (tcp_state::SYN_SENT, tcp_state::ESTABLISHED);
        let established = isn(&raw, EventKind::StateChange);
        assert_eq!(
            (established.sent, established.received),
            (Some(1000), Some(5000))
        );
        // Still in SYN_SENT (a SYN retransmit, a refusal): snd_una is the ISN.
        (raw.old_state, raw.new_state) = (tcp_state::SYN_SENT, tcp_state::SYN_SENT);
        let syn = isn(&raw, EventKind::Retransmit);
        assert_eq!((syn.sent, syn.received), (Some(1001), None));
        // Later, the sequence numbers have moved on: no ISN.
        (raw.old_state, raw.new_state) = (tcp_state::ESTABLISHED, tcp_state::FIN_WAIT1);
        assert_eq!(isn(&raw, EventKind::StateChange), Isn::default());
        // A RST without a socket: the SYN it answers carries the client's ISN; a late
        // segment's sequence number is none.
        raw.flags = flag::SEQ_RAW | flag::NO_SOCKET | flag::ANSWERS_SYN;
        (raw.old_state, raw.new_state) = (tcp_state::CLOSE, tcp_state::CLOSE);
        assert_eq!(isn(&raw, EventKind::ResetSent).received, Some(5001));
        raw.flags = flag::SEQ_RAW | flag::NO_SOCKET;
        assert_eq!(isn(&raw, EventKind::ResetSent), Isn::default());
    }

    #[test]
    fn decodes_ipv4_event_with_owner() {
        let event = decode(&bytes(&wire(kind::SOCKET_ERROR, AF_INET))).unwrap();
        assert_eq!(event.kind, EventKind::SocketError);
        assert_eq!(event.local, "10.0.0.1:43210".parse().unwrap());
        assert_eq!(event.remote, "10.0.0.2:7337".parse().unwrap());
        let owner = event.owner.unwrap();
        assert_eq!((owner.pid, owner.uid, &*owner.comm), (100, 1000, "java"));
        assert_eq!(errno_name(event.detail), "ECONNREFUSED");
    }

    #[test]
    fn v4_mapped_ipv6_shows_as_ipv4() {
        let event = decode(&bytes(&wire(kind::STATE_CHANGE, AF_INET6))).unwrap();
        assert_eq!(event.local, "[::1]:43210".parse().unwrap());
        assert_eq!(event.remote, "10.0.0.2:7337".parse().unwrap());
    }

    #[test]
    fn bad_records_are_rejected() {
        let good = bytes(&wire(kind::STATE_CHANGE, AF_INET));
        assert_eq!(decode(&good[..10]), Err(DecodeError::Size(10)));
        assert_eq!(
            decode(&bytes(&wire(99, AF_INET))),
            Err(DecodeError::Kind(99))
        );
        assert_eq!(
            decode(&bytes(&wire(kind::STATE_CHANGE, 3))),
            Err(DecodeError::Family(3))
        );
    }

    #[test]
    fn counted_repeats_become_the_events_the_kernel_would_have_sent() {
        let mut key = RepeatKey {
            netns: 7,
            pid: 42,
            service_port: 7337,
            kind: kind::RESET_RECEIVED,
            family: AF_INET as u8,
            ttl: 63,
            peer_ttl: 63,
            ..Default::default()
        };
        key.local_addr[..4].copy_from_slice(&[10, 0, 0, 1]);
        key.remote_addr[..4].copy_from_slice(&[10, 0, 0, 2]);
        let count = RepeatCount {
            last_ns: 99,
            counted: 5,
            last_client_port: 40001,
            owner: tracer_ebpf::SockOwner {
                pid: 42,
                uid: 1000,
                flags: flag::OWNER_KNOWN,
                comm: *b"java\0\0\0\0\0\0\0\0\0\0\0\0",
                ..Default::default()
            },
            ..Default::default()
        };
        let refused = repeat_event(&key, &count).unwrap();
        assert_eq!(refused.kind, EventKind::ResetReceived);
        assert_eq!(refused.cookie, REPEAT_COOKIE);
        assert_eq!(refused.boot_ns, 99);
        assert_eq!(refused.local, "10.0.0.1:40001".parse().unwrap());
        assert_eq!(refused.remote, "10.0.0.2:7337".parse().unwrap());
        assert_eq!(refused.new_state, tcp_state::SYN_SENT);
        assert_eq!((refused.ttl, refused.peer_ttl), (Some(63), Some(63)));
        let owner = refused.owner.unwrap();
        assert_eq!((owner.pid, owner.uid, &*owner.comm), (42, 1000, "java"));
        assert_eq!(refused.side, Some(Side::Client));

        // A RST sent for a closed port: the service is this host's end, no owner.
        key.kind = kind::RESET_SENT;
        key.pid = 0;
        key.detail = 2;
        key.ttl = 0;
        key.peer_ttl = 0;
        let count = RepeatCount {
            owner: Default::default(),
            ..count
        };
        let reset = repeat_event(&key, &count).unwrap();
        assert_eq!(reset.kind, EventKind::ResetSent);
        assert_eq!(reset.cookie, 0);
        assert!(reset.no_socket);
        assert_eq!(reset.detail, 2);
        assert_eq!(reset.local, "10.0.0.1:7337".parse().unwrap());
        assert_eq!(reset.remote, "10.0.0.2:40001".parse().unwrap());
        assert_eq!(reset.owner, None);
    }

    #[test]
    fn a_summary_says_what_its_flow_spoke() {
        let mut raw = wire(kind::FLOW_SUMMARY, AF_INET);
        (raw.tx_class, raw.rx_class) = (
            payload_class::TLS_CLIENT_HELLO,
            payload_class::TLS_SERVER_HELLO,
        );
        let summary = decode(&bytes(&raw)).unwrap();
        assert_eq!(summary.kind, EventKind::FlowSummary);
        assert_eq!(
            summary.classes,
            (
                payload_class::TLS_CLIENT_HELLO,
                payload_class::TLS_SERVER_HELLO
            )
        );
    }

    #[test]
    fn unknown_owner_is_none() {
        let mut raw = wire(kind::RESET_RECEIVED, AF_INET);
        raw.flags = 0;
        assert!(decode(&bytes(&raw)).unwrap().owner.is_none());
    }

    /// Which first payloads make a quiet flow report itself (shared with the kernel).
    #[test]
    fn first_payloads_that_may_be_tls_mismatches() {
        use tracer_ebpf::payload_class::*;
        assert!(answer_may_mismatch(TLS_CLIENT_HELLO, SPARK_RPC));
        assert!(answer_may_mismatch(TLS_CLIENT_HELLO, HTTP));
        assert!(answer_may_mismatch(SPARK_RPC, TLS_ALERT));
        assert!(answer_may_mismatch(THRIFT_SASL, TLS_RECORD));
        assert!(!answer_may_mismatch(TLS_CLIENT_HELLO, TLS_SERVER_HELLO));
        assert!(!answer_may_mismatch(SPARK_RPC, SPARK_RPC));
        assert!(!answer_may_mismatch(NONE, TLS_ALERT));
        assert!(!answer_may_mismatch(TLS_CLIENT_HELLO, NONE));
        // Sent, and not a byte back: judged when the peer closes. Any other TLS record sent
        // first is TLS already under way: nothing to judge.
        for (sent, received, judged) in [
            (TLS_CLIENT_HELLO, NONE, true),
            (SPARK_RPC, NONE, true),
            (HTTP, NONE, true),
            (TLS_CLIENT_HELLO, TLS_SERVER_HELLO, false),
            (SPARK_RPC, SPARK_RPC, false),
            (NONE, NONE, false),
            (TLS_RECORD, NONE, false),
        ] {
            assert_eq!(
                request_unanswered(sent, received),
                judged,
                "{sent} {received}"
            );
        }
    }

    /// First bytes of real first segments (captured from openssl/Python/rustls/Spark/beeline
    /// traffic), each with the class it must get.
    #[test]
    fn payload_classifier_on_captured_headers() {
        use tracer_ebpf::payload_class::{HEAD, classify};
        let cases: [(&[u8], &str); 10] = [
            // Python ssl ClientHello: record TLS 1.0, handshake type 1 (client_hello)
            (
                &[
                    0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 0x8a,
                ],
                "tls_client_hello",
            ),
            // rustls ServerHello
            (
                &[
                    0x16, 0x03, 0x03, 0x00, 0x7a, 0x02, 0x00, 0x00, 0x76, 0x03, 0x03,
                ],
                "tls_server_hello",
            ),
            // rustls fatal alert decode_error (the whole 7-byte record)
            (&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x32], "tls_alert"),
            // TLS 1.3 change_cipher_spec
            (&[0x14, 0x03, 0x03, 0x00, 0x01, 0x01], "tls_record"),
            (b"GET /metrics HTTP/1.1\r\nHost: driver:4040\r\n", "http"),
            (b"HTTP/1.1 200 OK\r\n", "http"),
            // Spark RpcRequest frame: length 28, type 3, request id
            (
                &[0, 0, 0, 0, 0, 0, 0, 0x1c, 0x03, 0, 0, 0, 0, 0, 0, 0, 0x2a],
                "spark_rpc",
            ),
            // HiveServer2 TSaslTransport START, mechanism "PLAIN"
            (
                &[0x01, 0x00, 0x00, 0x00, 0x05, b'P', b'L', b'A', b'I', b'N'],
                "thrift_sasl",
            ),
            (b"hello world", "other"),
            // A frame length too short to be Spark's
            (&[0, 0, 0, 0, 0, 0, 0, 0x04, 0x03], "other"),
        ];
        for (bytes, want) in cases {
            let mut head = [0u8; HEAD];
            let len = bytes.len().min(HEAD);
            head[..len].copy_from_slice(&bytes[..len]);
            assert_eq!(
                payload_class_name(classify(&head, len)),
                want,
                "{bytes:02x?}"
            );
        }
        // What the kernel sees of a short segment: the alert from its first 4 bytes.
        let mut head = [0u8; HEAD];
        head[..4].copy_from_slice(&[0x15, 0x03, 0x03, 0x00]);
        assert_eq!(payload_class_name(classify(&head, 4)), "tls_alert");
        assert_eq!(classify(&[0; HEAD], 0), tracer_ebpf::payload_class::NONE);
    }

    #[test]
    fn names() {
        assert_eq!(tcp_state_name(2), "SYN_SENT");
        assert_eq!(tcp_state_name(7), "CLOSE");
        assert_eq!(errno_name(libc::ETIMEDOUT), "ETIMEDOUT");
        assert_eq!(errno_name(4242), "errno 4242");
        let reasons = ResetReasons::new(vec![(1, "NO_SOCKET".into())]);
        assert_eq!(reasons.name(1), Some("NO_SOCKET"));
        assert_eq!(reasons.name(2), None);
    }
}
