//! Wire types shared by the kernel programs (`src/main.rs`, built for the bpf target) and the
//! userspace collector (`tracer-user`). Each struct is defined once, here, with `#[repr(C)]` and
//! explicit padding so both sides agree on every byte.
#![no_std]

/// Event kinds, the `kind` byte of [`FlowEvent`].
pub mod kind {
    /// `sock:inet_sock_set_state`: the TCP state changed.
    pub const STATE_CHANGE: u8 = 1;
    /// `tcp:tcp_retransmit_skb`: a segment was retransmitted (a SYN in `SYN_SENT`).
    pub const RETRANSMIT: u8 = 2;
    /// `tcp:tcp_retransmit_synack`: a listener retransmitted a SYN-ACK.
    pub const SYNACK_RETRANSMIT: u8 = 3;
    /// `tcp:tcp_send_reset`: this host's stack sent a RST.
    pub const RESET_SENT: u8 = 4;
    /// `tcp:tcp_receive_reset`: a RST arrived for a socket.
    pub const RESET_RECEIVED: u8 = 5;
    /// `sock:inet_sk_error_report`: an error was reported to the socket's owner.
    pub const SOCKET_ERROR: u8 = 6;
    /// cgroup_skb: the first data segment of a flow in one direction; `detail` holds its
    /// [`payload_class`](crate::payload_class), flag [`RECEIVED`](crate::flag::RECEIVED) the
    /// direction. Only the class leaves the kernel, never payload bytes.
    pub const FIRST_PAYLOAD: u8 = 7;
    /// A quiet flow closed cleanly: its one record, sent instead of its state changes (see
    /// [`FlowSlot`](crate::FlowSlot)). `old_state` is the state it opened in (`SYN_SENT` or
    /// `SYN_RECV`), `detail` its lifetime in milliseconds. Only flows that reached
    /// ESTABLISHED are summarised.
    pub const FLOW_SUMMARY: u8 = 8;
    /// A quiet flow stopped being quiet: what it recorded, in one [`FlowHistory`](crate::FlowHistory)
    /// record (userspace expands it into the deferred events, each with its own time).
    pub const FLOW_HISTORY: u8 = 9;
    /// `tcp:tcp_destroy_sock` found a flow's slot still there: the kernel skipped the state
    /// program's run for its CLOSE (its recursion protection: the program was already
    /// running on that CPU, counted in `recursion_misses`), so the flow ended unseen. Sent
    /// in its place, once, with the slot's owner and ISNs; the slot goes. With
    /// [`WAS_QUIET`](crate::flag::WAS_QUIET) the flow had sent nothing before (then
    /// `old_state` is the last state it recorded and `detail` its lifetime in milliseconds,
    /// as in a summary); without it, the flow's earlier events were sent as they happened.
    /// How it closed is not known.
    pub const CLOSE_UNSEEN: u8 = 10;
}

/// What the first bytes of a flow's first data segment in one direction look like.
pub mod payload_class {
    pub const NONE: u8 = 0;
    pub const TLS_CLIENT_HELLO: u8 = 1;
    pub const TLS_SERVER_HELLO: u8 = 2;
    pub const TLS_ALERT: u8 = 3;
    /// Any other TLS record (change cipher spec, application data, other handshakes).
    pub const TLS_RECORD: u8 = 4;
    pub const HTTP: u8 = 5;
    /// Spark's transport frame: 8-byte big-endian length that includes itself, then the
    /// message type byte.
    pub const SPARK_RPC: u8 = 6;
    /// HiveServer2's Thrift SASL start: a status byte, a 4-byte big-endian length, then the
    /// mechanism name (PLAIN, GSSAPI, ...).
    pub const THRIFT_SASL: u8 = 7;
    pub const OTHER: u8 = 8;

    /// Bytes the classifier looks at, at most.
    pub const HEAD: usize = 16;

    /// Whether the first data received, answering the first data sent, may be a TLS
    /// mismatch: a ClientHello answered without TLS, or plaintext answered with TLS. The
    /// kernel sends a quiet flow's first payloads only then (userspace judges them); any
    /// other first data keeps the flow quiet.
    pub const fn answer_may_mismatch(sent: u8, received: u8) -> bool {
        if sent == NONE || received == NONE {
            return false;
        }
        if sent == TLS_CLIENT_HELLO {
            !is_tls(received)
        } else {
            !is_tls(sent) && is_tls(received)
        }
    }

    /// A request was sent and not a byte came back: if the peer now closes, it may not speak
    /// what was sent (a ClientHello to a plaintext port, plaintext to a TLS port a server
    /// closes on without an alert). The kernel sends such a quiet client flow when the peer
    /// closes it; userspace judges it with what it knows of the port.
    pub const fn request_unanswered(sent: u8, received: u8) -> bool {
        received == NONE && (sent == TLS_CLIENT_HELLO || (sent != NONE && !is_tls(sent)))
    }

    /// Whether a class is a TLS record of any kind.
    pub const fn is_tls(class: u8) -> bool {
        matches!(
            class,
            TLS_CLIENT_HELLO | TLS_SERVER_HELLO | TLS_ALERT | TLS_RECORD
        )
    }

    const fn starts_with(head: &[u8; HEAD], len: usize, prefix: &[u8]) -> bool {
        if len < prefix.len() {
            return false;
        }
        let mut i = 0;
        while i < prefix.len() {
            if head[i] != prefix[i] {
                return false;
            }
            i += 1;
        }
        true
    }

    /// Classifies the first `len` (at most [`HEAD`]) bytes of a flow's first data segment.
    /// Shared by the kernel program and the userspace tests: one definition.
    pub const fn classify(head: &[u8; HEAD], len: usize) -> u8 {
        if len == 0 {
            return NONE;
        }
        // TLS record: content type, version 3.x (SSL 3.0 to TLS 1.3 all say 3.0-3.4).
        if len >= 3 && head[1] == 3 && head[2] <= 4 {
            match head[0] {
                0x16 if len >= 6 && head[5] == 1 => return TLS_CLIENT_HELLO,
                0x16 if len >= 6 && head[5] == 2 => return TLS_SERVER_HELLO,
                0x15 => return TLS_ALERT,
                0x14 | 0x16 | 0x17 => return TLS_RECORD,
                _ => {}
            }
        }
        const METHODS: [&[u8]; 10] = [
            b"GET ", b"POST", b"PUT ", b"HEAD", b"HTTP", b"DELE", b"OPTI", b"PATC", b"CONN",
            b"PRI ",
        ];
        let mut m = 0;
        while m < METHODS.len() {
            if starts_with(head, len, METHODS[m]) {
                return HTTP;
            }
            m += 1;
        }
        // Spark frame: 8-byte length >= 9 (it counts itself and the type byte), below 2 GiB,
        // then a known message type (ChunkFetchRequest = 0 ... MergedBlockMetaSuccess = 12).
        if len >= 9
            && head[0] == 0
            && head[1] == 0
            && head[2] == 0
            && head[3] == 0
            && head[4] < 0x80
        {
            let frame = ((head[4] as u32) << 24)
                | ((head[5] as u32) << 16)
                | ((head[6] as u32) << 8)
                | head[7] as u32;
            if frame >= 9 && head[8] <= 12 {
                return SPARK_RPC;
            }
        }
        // Thrift SASL: START (1) or OK (2), a short length, then an upper-case mechanism.
        if len >= 6
            && (head[0] == 1 || head[0] == 2)
            && head[1] == 0
            && head[2] == 0
            && head[3] == 0
        {
            let name = head[4] as usize;
            if name >= 4 && name <= 20 && head[5] >= b'A' && head[5] <= b'Z' {
                return THRIFT_SASL;
            }
        }
        OTHER
    }
}

/// Bits of [`FlowEvent::flags`] and [`SockOwner::flags`].
pub mod flag {
    /// The owning process is known (captured at `connect()`/`listen()` time).
    pub const OWNER_KNOWN: u16 = 1 << 0;
    /// The socket was accepted from a listener: this host is the server side.
    pub const ACCEPTED: u16 = 1 << 1;
    /// A RST sent for a packet that matched no socket: tuple and netns come from the packet.
    pub const NO_SOCKET: u16 = 1 << 2;
    /// The error is a soft one (`sk_err_soft`: an ICMP error the kernel did not act on yet).
    pub const SOFT_ERROR: u16 = 1 << 3;
    /// `FIRST_PAYLOAD`: the segment was received (else sent).
    pub const RECEIVED: u16 = 1 << 4;
    /// A state change recorded while the flow was quiet, sent later when it stopped being
    /// quiet: `ts_ns` is when it happened, not when it was sent.
    pub const DEFERRED: u16 = 1 << 6;
    /// With `NO_SOCKET`: the segment the RST answered was a SYN (a connection attempt to a
    /// port nobody listens on). Without it the RST answered a late segment of a connection
    /// already gone here (a FIN, ACK or data after it closed, or after its state was lost).
    pub const ANSWERS_SYN: u16 = 1 << 7;
    /// [`FlowEvent::isn_sent`](crate::FlowEvent::isn_sent) holds this end's initial sequence
    /// number.
    pub const ISN_SENT: u16 = 1 << 8;
    /// [`FlowEvent::isn_received`](crate::FlowEvent::isn_received) holds the peer's.
    pub const ISN_RECEIVED: u16 = 1 << 9;
    /// Instead of ISNs, `isn_sent` / `isn_received` hold the socket's `snd_una` / `rcv_nxt`
    /// as the event happened (for a RST sent without a socket, `isn_received` the sequence
    /// number of the segment it answers), read without a branch; userspace derives the ISNs
    /// where the state says they are there (in SYN_SENT `snd_una` is the ISN; leaving it for
    /// ESTABLISHED both are one past theirs; a SYN's sequence number is the client's ISN).
    pub const SEQ_RAW: u16 = 1 << 10;
    /// `CLOSE_UNSEEN`: the flow was still quiet (nothing of it was sent before).
    pub const WAS_QUIET: u16 = 1 << 11;
}

/// Indexes of the per-CPU loss and overflow counters (`COUNTERS` map).
pub mod counter {
    /// A ring-buffer reservation failed: the event was lost.
    pub const RINGBUF_FULL: u32 = 0;
    /// The socket-owner table was full: a flow lost its process attribution.
    pub const OWNER_TABLE_FULL: u32 = 1;
    /// The listener-owner table was full: accepted sockets on that port lose attribution.
    pub const LISTENER_TABLE_FULL: u32 = 2;
    /// A kernel read through a BTF offset failed: the event was dropped.
    pub const READ_FAILED: u32 = 3;
    /// The flow-activity table was full: an established flow is not idle-tracked.
    pub const ACTIVITY_TABLE_FULL: u32 = 4;
    /// The repeat table was full: a repeated refusal or RST was sent in full instead of
    /// counted (nothing is lost; it costs ring-buffer space).
    pub const REPEAT_TABLE_FULL: u32 = 5;
    /// Number of counters.
    pub const COUNT: u32 = 6;
}

/// Address families as the kernel spells them.
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// TCP states (include/net/tcp_states.h; userspace ABI, stable).
pub mod tcp_state {
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_SENT: u8 = 2;
    pub const SYN_RECV: u8 = 3;
    pub const FIN_WAIT1: u8 = 4;
    pub const FIN_WAIT2: u8 = 5;
    pub const TIME_WAIT: u8 = 6;
    pub const CLOSE: u8 = 7;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LAST_ACK: u8 = 9;
    pub const LISTEN: u8 = 10;
    pub const CLOSING: u8 = 11;
    pub const NEW_SYN_RECV: u8 = 12;
}

/// One kernel event about one watched flow, as written to the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEvent {
    /// `CLOCK_BOOTTIME` nanoseconds.
    pub ts_ns: u64,
    /// Socket cookie: the flow key that joins every event of one socket. 0 when there is no
    /// socket (a RST for a packet that matched none).
    pub cookie: u64,
    /// cgroup v2 id of the owning process (0 when unknown).
    pub cgroup_id: u64,
    /// Network namespace inode.
    pub netns: u32,
    /// Owning process (thread group id) and thread; 0 when unknown.
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    /// Per kind: errno for `SOCKET_ERROR` and `RETRANSMIT`, and for a `STATE_CHANGE` to CLOSE
    /// the socket error that closed it (0 for a clean close); `enum sk_rst_reason` for
    /// `RESET_SENT`; otherwise 0.
    pub detail: i32,
    /// One of [`kind`].
    pub kind: u8,
    /// [`AF_INET`] or [`AF_INET6`] (as a byte).
    pub family: u8,
    /// State before and after a state change; for other kinds both hold the socket's state.
    pub old_state: u8,
    pub new_state: u8,
    /// Local and remote port, host byte order.
    pub local_port: u16,
    pub remote_port: u16,
    /// Bits of [`flag`].
    pub flags: u16,
    /// For `RESET_RECEIVED`: the IP TTL / hop limit the RST arrived with, and the one the
    /// peer's own packets arrive with (from the cgroup_skb ingress program). 0 = unknown.
    pub ttl: u8,
    pub peer_ttl: u8,
    /// Addresses in network byte order; IPv4 in the first 4 bytes.
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    /// Owning thread's comm, NUL padded.
    pub comm: [u8; 16],
    /// For events of an idle-tracked (established, watched) flow: milliseconds since its last
    /// data segment in either direction, the length of the last idle period that ended, and
    /// how long ago it ended; `u32::MAX` when unknown.
    pub idle_ms: u32,
    pub gap_ms: u32,
    pub resumed_ms: u32,
    /// The flow's first payload class sent and received, as its activity record had them
    /// when the event was sent (0: none yet, or no activity record). A clean flow's summary
    /// is all userspace hears of it: this says whether it spoke TLS.
    pub tx_class: u8,
    pub rx_class: u8,
    pub _pad: u16,
    /// The connection's TCP initial sequence numbers, the key that joins its two ends across
    /// nodes (NAT rewrites addresses and ports, not sequence numbers): this end's (the
    /// sequence number of the SYN or SYN-ACK it sent) and the peer's (of the SYN or SYN-ACK
    /// it received; for a RST answering a segment that matched no socket, that segment's
    /// sequence number). Valid when [`flag::ISN_SENT`] / [`flag::ISN_RECEIVED`] are set;
    /// raw sequence numbers to derive them from with [`flag::SEQ_RAW`].
    pub isn_sent: u32,
    pub isn_received: u32,
}

/// Keepalive configuration of a socket, raw from the kernel (jiffies; 0 = the network
/// namespace's default, which is carried alongside).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Keepalive {
    /// `tcp_sock.keepalive_time` / `keepalive_intvl` in jiffies (0: use the netns sysctl).
    pub time: u32,
    pub intvl: u32,
    /// The netns's `net.ipv4.tcp_keepalive_time` / `_intvl` in jiffies.
    pub netns_time: u32,
    pub netns_intvl: u32,
    /// `tcp_sock.keepalive_probes` (0: netns default) and the netns's `_probes`.
    pub probes: u8,
    pub netns_probes: u8,
    /// SO_KEEPALIVE is set.
    pub enabled: u8,
    pub _pad: u8,
}

/// Per-flow activity kept in the kernel for idle tracking (`ACTIVITY` map, by socket cookie):
/// created by the cgroup_skb programs at a watched flow's first data segment and updated on
/// every segment, removed at TCP_CLOSE. It carries the flow's tuple and netns, so userspace
/// can scan the map for idle flows it was never told about (a flow that carries data
/// cleanly stays quiet: see `FlowSlot`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowActivity {
    /// CLOCK_BOOTTIME ns of the last data segment received and sent.
    pub last_rx_ns: u64,
    pub last_tx_ns: u64,
    /// Of the last segment of any kind either way (keepalive probes and ACKs too: any packet
    /// refreshes a NAT's idle timer).
    pub last_packet_ns: u64,
    /// The last idle period (no data either way) longer than the idle mark: its length and
    /// when it ended.
    pub gap_ns: u64,
    pub resumed_ns: u64,
    /// When the keepalive snapshot was last refreshed.
    pub keepalive_ns: u64,
    /// When the first data segment was sent and received (0: not yet).
    pub tx_first_ns: u64,
    pub rx_first_ns: u64,
    pub keepalive: Keepalive,
    pub netns: u32,
    /// The flow's tuple, this host first (as in `FlowEvent`).
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    pub local_port: u16,
    pub remote_port: u16,
    pub family: u8,
    /// Payload class of the first data segment sent and received (0: none yet).
    pub tx_class: u8,
    pub rx_class: u8,
    pub _pad: u8,
}

/// The process that owns a socket, remembered at `connect()`/`listen()` (process context) and
/// attached to the flow's later events, which fire in softirq context.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockOwner {
    pub cgroup_id: u64,
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub flags: u16,
    pub _pad: u16,
    pub comm: [u8; 16],
}

/// What the kernel keeps per watched flow (socket cookie -> `FlowSlot`, created at
/// connect()/accept, removed at TCP_CLOSE): its owner and, while the flow is *quiet*, the
/// state changes not yet sent. A flow is quiet until something userspace must see happens
/// (a retransmit, reset or error, a close that is not clean, or first data that may be a TLS
/// mismatch: see `payload_class::answer_may_mismatch`); then what it recorded (state
/// changes, and its first payload classes from `FlowActivity`) is sent first, in order and
/// with their own times, and the flow is reported like any other from then on. A quiet flow
/// that closes cleanly costs one `FLOW_SUMMARY` record instead of a record per state change;
/// one that carries data is watched for idleness by userspace scanning `ACTIVITY`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowSlot {
    pub owner: SockOwner,
    pub netns: u32,
    /// [`slot::QUIET`], [`slot::SHIPPED`] or [`slot::COUNTED`].
    pub shipped: u8,
    /// The opening transition (CLOSE -> SYN_SENT, or -> SYN_RECV for an accepted socket).
    pub opened_old: u8,
    pub opened_new: u8,
    /// The latest transition after ESTABLISHED while quiet (0/0: none).
    pub latest_old: u8,
    pub latest_new: u8,
    pub _pad: u8,
    /// [`flag::ISN_SENT`] and [`flag::ISN_RECEIVED`]: which of the initial sequence numbers
    /// are known (an accepted flow knows both when it opens, a connect()ed one when it is
    /// established).
    pub isn_flags: u16,
    pub isn_sent: u32,
    pub opened_ns: u64,
    /// When it reached ESTABLISHED (0: not yet).
    pub established_ns: u64,
    pub latest_ns: u64,
    pub isn_received: u32,
    pub _pad2: u32,
}

/// Values of [`FlowSlot::shipped`].
pub mod slot {
    /// Nothing of the flow was sent yet.
    pub const QUIET: u8 = 0;
    /// The flow's events are sent as they happen.
    pub const SHIPPED: u8 = 1;
    /// A refused connect counted as a repeat (see `RepeatKey`): none of its events is sent.
    /// Its error reports come after its CLOSE, so where both `inet_sk_error_report` and
    /// `tcp_destroy_sock` run (`KernelOffsets::counted_until_destroy`) the slot stays until
    /// the socket is destroyed: those reports are recognised by it.
    pub const COUNTED: u8 = 2;
}

/// What a quiet flow recorded, sent in one record when it stops being quiet (kind
/// `FLOW_HISTORY`): `event` carries the tuple, owner and netns, and the opening transition
/// (`old_state`/`new_state`, `ts_ns`); the rest are the later recorded changes (0: did not
/// happen). One record instead of up to five keeps both the ring buffer and the verifier's
/// work small.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowHistory {
    pub event: FlowEvent,
    /// When it reached ESTABLISHED.
    pub established_ns: u64,
    /// The latest transition after ESTABLISHED.
    pub latest_ns: u64,
    /// When the first data was sent and received (see `FlowActivity`).
    pub tx_first_ns: u64,
    pub rx_first_ns: u64,
    pub latest_old: u8,
    pub latest_new: u8,
    pub tx_class: u8,
    pub rx_class: u8,
    pub _pad: u32,
}

/// Key of the repeat table (`REPEATS`): one kind of anomaly that comes in storms, between
/// one client address and one service. A connect refused again and again (a missing
/// shuffle service, a HiveServer2 that is down) or a port scan would otherwise cost several
/// ring-buffer records per attempt: the first occurrence of a key in each window is sent in
/// full (it becomes the finding, with its evidence); the rest of the window is counted in
/// [`RepeatCount`] and userspace reads the counts, so the findings' counts stay exact.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RepeatKey {
    /// This host's address and the peer's (as in `FlowEvent`).
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    pub netns: u32,
    /// The owner's thread group id (0: no owner, a RST sent without a socket).
    pub pid: u32,
    /// The event's `detail`: the reason of a RST sent.
    pub detail: i32,
    /// The service's port: the remote port of a refused connect, the local port of a RST
    /// sent for a segment that matched no socket. The client's port is not in the key.
    pub service_port: u16,
    /// `kind::RESET_RECEIVED` (a RST answering our SYN: a refused connect) or
    /// `kind::RESET_SENT` (a RST sent without a socket).
    pub kind: u8,
    pub family: u8,
    /// TTL of the RST and of the peer's own packets (as in `FlowEvent`): a forged RST is
    /// another key.
    pub ttl: u8,
    pub peer_ttl: u8,
    /// The event's flags of a RST sent without a socket (`NO_SOCKET`, `ANSWERS_SYN`: a RST
    /// answering a SYN is another key than one answering a late segment); 0 for a refusal.
    pub flags: u16,
}

/// Value of the repeat table (see [`RepeatKey`]).
///
/// Occurrences within the window length after `window_start_ns` are counted; the first one
/// after it opens the next window and is sent in full. An entry without any occurrence for
/// a window length is *idle*: the kernel no longer writes it (it sends in full) and
/// userspace removes it after reading its final count, so that removal cannot lose a count.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RepeatCount {
    /// When the current window opened: the time of the occurrence sent in full.
    pub window_start_ns: u64,
    /// The latest occurrence, counted or sent.
    pub active_ns: u64,
    /// The first and the latest occurrence counted.
    pub first_ns: u64,
    pub last_ns: u64,
    /// Occurrences counted instead of sent, over all windows (only ever incremented;
    /// userspace reports what it has not reported yet).
    pub counted: u64,
    /// The owner of the occurrence sent in full (none for a RST sent without a socket).
    pub owner: SockOwner,
    /// The client's port in the latest occurrence counted.
    pub last_client_port: u16,
    pub _pad: [u8; 6],
}

/// Key of the listener-owner table: a listening port in one network namespace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerKey {
    pub netns: u32,
    pub port: u16,
    pub _pad: u16,
}

/// Byte offsets of kernel struct fields, resolved by userspace from the running kernel's BTF
/// (`/sys/kernel/btf/vmlinux`) and handed to the programs as a read-only global.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// Non-zero once userspace has filled this in; programs do nothing until then.
    pub ready: u32,
    // struct sock_common (at the start of struct sock, request_sock and inet_timewait_sock)
    pub skc_state: u32,
    /// `skc_portpair`: `skc_dport` (be16) immediately followed by `skc_num` (host order)
    /// (userspace checks that layout), both in one load.
    pub skc_portpair: u32,
    pub skc_family: u32,
    /// `skc_daddr` followed by `skc_rcv_saddr`.
    pub skc_addrpair: u32,
    pub skc_v6_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    /// `skc_net.net`: pointer to struct net.
    pub skc_net: u32,
    // struct sock
    pub sk_protocol: u32,
    /// Size in bytes of `sk_protocol` (u16 on current kernels, u8 on old ones).
    pub sk_protocol_size: u32,
    pub sk_err: u32,
    pub sk_err_soft: u32,
    /// `sk_error_queue.next`: the first queued extended error (an ICMP error is queued, and
    /// reported, before `sk_err` is set).
    pub sk_error_queue: u32,
    /// `sk_buff.cb` plus the offset of `ee.ee_errno` in `struct sock_exterr_skb`; 0 when this
    /// kernel's BTF does not describe it.
    pub skb_ee_errno: u32,
    /// struct inet_sock `inet_sport` (be16): the local port once `skc_num` is cleared, which
    /// the kernel does before reporting a transition to CLOSE.
    pub inet_sport: u32,
    // struct net
    pub net_ns_inum: u32,
    // struct sk_buff and struct net_device, for a RST sent without a socket
    pub skb_head: u32,
    pub skb_network_header: u32,
    pub skb_transport_header: u32,
    pub skb_dev: u32,
    pub dev_nd_net: u32,
    /// Non-zero when `tcp_retransmit_skb` has its third argument (`int err`, Linux 6.13+).
    pub retransmit_has_err: u32,
    /// Non-zero when `tcp_send_reset` has its third argument (`enum sk_rst_reason`, 6.10+).
    pub send_reset_has_reason: u32,
    // keepalive: struct sock `sk_flags` and the SOCK_KEEPOPEN bit; struct tcp_sock fields;
    // struct net `ipv4.sysctl_tcp_keepalive_*`.
    pub sk_flags: u32,
    pub sock_keepopen_bit: u32,
    pub tp_keepalive_time: u32,
    pub tp_keepalive_intvl: u32,
    pub tp_keepalive_probes: u32,
    pub net_keepalive_time: u32,
    pub net_keepalive_intvl: u32,
    pub net_keepalive_probes: u32,
    /// `SKB_DROP_REASON_NO_SOCKET` in this kernel's `enum skb_drop_reason`, when the
    /// `kfree_skb` program stands in for `tcp_send_reset` without a socket (before 6.10);
    /// 0: it is not needed, or this kernel gives no drop reasons (before 5.17).
    pub no_socket_drop_reason: u32,
    // Initial sequence numbers: struct tcp_sock `snd_una` and `rcv_nxt` (one past each ISN
    // when the handshake completes; `snd_una` is the ISN itself while in SYN_SENT), struct
    // tcp_request_sock `rcv_isn` and `snt_isn` (a half-open handshake).
    pub tp_snd_una: u32,
    pub tp_rcv_nxt: u32,
    pub treq_rcv_isn: u32,
    pub treq_snt_isn: u32,
    /// Non-zero when tracing programs cannot call `bpf_get_socket_cookie` (before 5.12): every
    /// program keys flows by the socket's kernel address instead, which userspace turns into
    /// an opaque number before it shows one.
    pub flow_key_is_address: u32,
    /// Non-zero when this kernel has both `inet_sk_error_report` and `tcp_destroy_sock`: a
    /// refusal counted as a repeat keeps its slot (`slot::COUNTED`) past its CLOSE, until
    /// the socket is destroyed, so the error reports that follow the CLOSE are known to be
    /// counted already. 0: the slot goes at CLOSE (no error reports to recognise).
    pub counted_until_destroy: u32,
}

// The ring-buffer record size is part of the contract with the decoder; keep it 8-aligned.
const _: () = assert!(size_of::<FlowEvent>() == 128);
const _: () = assert!(size_of::<SockOwner>() == 40);
const _: () = assert!(size_of::<FlowSlot>() == 88);
const _: () = assert!(size_of::<FlowActivity>() == 128);
const _: () = assert!(size_of::<FlowHistory>() == 168);
const _: () = assert!(size_of::<RepeatKey>() == 52);
const _: () = assert!(size_of::<RepeatCount>() == 88);

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain `#[repr(C)]` data with explicit padding and no invalid bit patterns.
    unsafe impl aya::Pod for super::FlowEvent {}
    unsafe impl aya::Pod for super::SockOwner {}
    unsafe impl aya::Pod for super::ListenerKey {}
    unsafe impl aya::Pod for super::KernelOffsets {}
    unsafe impl aya::Pod for super::FlowActivity {}
    unsafe impl aya::Pod for super::FlowSlot {}
    unsafe impl aya::Pod for super::RepeatKey {}
    unsafe impl aya::Pod for super::RepeatCount {}
}
