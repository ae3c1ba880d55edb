//! The collector's flow table: one entry per socket cookie, holding what later events of the
//! same flow need (its owner, state and counts). Bounded: past `capacity` the closed flows go
//! first, then the least recently seen; every eviction is counted.

pub mod summaries;

use std::{collections::HashMap, net::SocketAddr};

use crate::{
    events::keepalive::KeepaliveSettings,
    events::{Event, EventKind, Owner, Side},
};
use tracer_ebpf::tcp_state;

/// How long a closed flow stays, so that events the kernel reports after the close (the
/// socket error of a refused connect comes after its SYN_SENT -> CLOSE) still find it.
const CLOSED_LINGER_NS: u64 = 5_000_000_000;
/// How long a half-open request (seen only through SYN-ACK retransmits) stays without news.
const REQUEST_IDLE_NS: u64 = 120_000_000_000;

#[derive(Clone, Debug, PartialEq)]
pub struct Flow<T> {
    /// This host's end, with its port once known (a connecting socket has none at SYN_SENT).
    pub local: SocketAddr,
    /// The peer, with its port (the kernel clears it on some paths to CLOSE).
    pub remote: SocketAddr,
    pub first_ns: u64,
    pub last_ns: u64,
    pub owner: Option<Owner>,
    pub side: Option<Side>,
    pub state: u8,
    pub events: u64,
    pub retransmits: u64,
    pub closed_ns: Option<u64>,
    /// The socket error that closed the flow (errno; 0 for a clean close).
    pub close_error: i32,
    pub netns: u32,
    /// Payload class of the first data segment sent and received (0: none yet).
    pub tx_class: u8,
    pub rx_class: u8,
    /// The keepalive settings the kernel last saw (idle tracking).
    pub keepalive: Option<KeepaliveSettings>,
    /// The initial sequence numbers, as soon as one event carries them: the kernel reads them
    /// where the socket still holds them, and the flow's later events get them from here.
    pub isn: crate::events::Isn,
    /// The flow's pod: None until looked up, then Some(None) when it is in no pod.
    pub pod: Option<Option<std::sync::Arc<crate::events::k8s::PodRef>>>,
    /// The per-flow state of the stage above (the findings engine's correlation state); the
    /// table only creates it (`Default`) and hands it out.
    pub track: T,
}

#[derive(Debug)]
pub struct FlowTable<T> {
    flows: HashMap<u64, Flow<T>>,
    /// Closed flows whose key a new socket took before they expired (see `observe`),
    /// returned by the next `expire`. Bounded by `capacity`.
    retired: Vec<Flow<T>>,
    capacity: usize,
    evictions: u64,
}

impl<T: Default> FlowTable<T> {
    pub fn new(capacity: usize) -> Self {
        Self {
            flows: HashMap::new(),
            retired: Vec::new(),
            capacity: capacity.max(1),
            evictions: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// Flows evicted to stay within capacity (closed flows aged out are not evictions).
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    #[cfg(test)]
    pub fn get(&self, cookie: u64) -> Option<&Flow<T>> {
        self.flows.get(&cookie)
    }

    pub fn get_mut(&mut self, cookie: u64) -> Option<&mut Flow<T>> {
        self.flows.get_mut(&cookie)
    }

    /// Records `event` in its flow, and fills the event's owner and side from the flow when
    /// the kernel no longer had them (events after the kernel forgot the socket at close).
    pub fn observe(&mut self, event: &mut Event) -> Option<&mut Flow<T>> {
        if event.cookie == 0 {
            return None; // no socket: nothing to join
        }
        // A socket opened under the key of a closed flow is a new flow: before Linux 5.12 the
        // key is the socket's address, which the kernel hands out again once the socket is
        // freed (cookies are never reused). The closed flow is retired, not lost.
        let opens = event.kind == EventKind::StateChange
            && matches!(event.new_state, tcp_state::SYN_SENT | tcp_state::SYN_RECV);
        if opens
            && self
                .flows
                .get(&event.cookie)
                .is_some_and(|flow| flow.closed_ns.is_some())
            && let Some(closed) = self.flows.remove(&event.cookie)
        {
            if self.retired.len() >= self.capacity {
                self.retired.remove(0);
                self.evictions += 1;
            }
            self.retired.push(closed);
        }
        if !self.flows.contains_key(&event.cookie) && self.flows.len() >= self.capacity {
            self.make_room(event.boot_ns);
        }
        let flow = self.flows.entry(event.cookie).or_insert_with(|| Flow {
            local: event.local,
            remote: event.remote,
            first_ns: event.boot_ns,
            last_ns: event.boot_ns,
            owner: None,
            side: None,
            state: event.old_state,
            events: 0,
            retransmits: 0,
            closed_ns: None,
            close_error: 0,
            netns: event.netns,
            tx_class: 0,
            rx_class: 0,
            keepalive: None,
            isn: crate::events::Isn::default(),
            pod: None,
            track: T::default(),
        });
        flow.isn.sent = flow.isn.sent.or(event.isn.sent);
        flow.isn.received = flow.isn.received.or(event.isn.received);
        event.isn = flow.isn;
        flow.last_ns = flow.last_ns.max(event.boot_ns);
        // The cgroup_skb programs cannot see the netns; the flow's other events can.
        if event.netns == 0 {
            event.netns = flow.netns;
        } else if flow.netns == 0 {
            flow.netns = event.netns;
        }
        if event.kind == EventKind::FirstPayload {
            let class = event.detail as u8;
            if event.received {
                flow.rx_class = class;
            } else {
                flow.tx_class = class;
            }
        }
        if event.local.port() != 0 {
            flow.local = event.local;
        } else if flow.local.port() != 0 && flow.local.ip() == event.local.ip() {
            event.local = flow.local;
        }
        if event.remote.port() != 0 {
            flow.remote = event.remote;
        } else if flow.remote.port() != 0 && flow.remote.ip() == event.remote.ip() {
            event.remote = flow.remote;
        }
        flow.events += 1;
        if event.kind == EventKind::Retransmit {
            flow.retransmits += 1;
        }
        match (&event.owner, &flow.owner) {
            (Some(owner), _) => flow.owner = Some(owner.clone()),
            (None, Some(owner)) => event.owner = Some(owner.clone()),
            (None, None) => {}
        }
        match (event.side, flow.side) {
            (Some(side), _) => flow.side = Some(side),
            (None, side) => event.side = side,
        }
        if event.kind == EventKind::StateChange {
            flow.state = event.new_state;
            if event.new_state == tcp_state::CLOSE {
                flow.closed_ns = Some(event.boot_ns);
                flow.close_error = event.detail;
            }
        } else if event.kind == EventKind::SocketError && event.detail == 0 {
            // The owner read (and cleared) the error before the report fired; the CLOSE
            // transition recorded it.
            event.detail = flow.close_error;
        } else if event.kind == EventKind::SynackRetransmit {
            flow.state = tcp_state::NEW_SYN_RECV;
        } else if event.kind == EventKind::CloseUnseen {
            // Gone, its CLOSE unseen: it leaves the table like a closed flow (no error known).
            flow.state = tcp_state::CLOSE;
            flow.closed_ns = Some(event.boot_ns);
        }
        Some(flow)
    }

    /// Removes flows closed longer than the linger time, and half-open requests idle too
    /// long, and returns them (their findings may still owe an update). Call periodically.
    pub fn expire(&mut self, now_ns: u64) -> Vec<Flow<T>> {
        let done: Vec<u64> = self
            .flows
            .iter()
            .filter(|(_, flow)| match flow.closed_ns {
                Some(closed) => now_ns.saturating_sub(closed) >= CLOSED_LINGER_NS,
                None => {
                    flow.state == tcp_state::NEW_SYN_RECV
                        && now_ns.saturating_sub(flow.last_ns) >= REQUEST_IDLE_NS
                }
            })
            .map(|(&cookie, _)| cookie)
            .collect();
        let mut expired: Vec<Flow<T>> = std::mem::take(&mut self.retired);
        expired.extend(done.iter().filter_map(|&cookie| self.remove(cookie)));
        // The table never shrinks by itself: after a burst its capacity would stay at the
        // high-water mark for the life of the process.
        let len = self.flows.len();
        if self.flows.capacity() > 4 * len.max(1024) {
            self.flows.shrink_to(2 * len);
        }
        expired
    }

    fn remove(&mut self, cookie: u64) -> Option<Flow<T>> {
        self.flows.remove(&cookie)
    }

    /// Removes and returns every flow (at shutdown, so pending updates can be written).
    pub fn drain(&mut self) -> Vec<Flow<T>> {
        let mut all = std::mem::take(&mut self.retired);
        all.extend(self.flows.drain().map(|(_, flow)| flow));
        all
    }

    /// Frees at least one slot: closed flows first, then the least recently seen
    /// (a batch of 1/64 of capacity, so a full table is not scanned for every new flow).
    fn make_room(&mut self, now_ns: u64) {
        // Closed flows past their linger go first; their pending updates are dropped with
        // them (the table is over capacity: an overflow, counted below when it bites).
        let _ = self.expire(now_ns);
        if self.flows.len() < self.capacity {
            return;
        }
        let batch = (self.capacity / 64).max(1);
        let mut by_age: Vec<(u64, u64)> = self
            .flows
            .iter()
            .map(|(&cookie, flow)| (flow.last_ns, cookie))
            .collect();
        by_age.select_nth_unstable(batch - 1);
        for &(_, cookie) in &by_age[..batch] {
            self.remove(cookie);
        }
        self.evictions += batch as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(cookie: u64, boot_ns: u64, kind: EventKind, old: u8, new: u8) -> Event {
        Event {
            old_state: old,
            new_state: new,
            ..crate::events::sample_event(kind, cookie, boot_ns)
        }
    }

    fn owner() -> Owner {
        Owner {
            pid: 10,
            tid: 11,
            uid: 1000,
            comm: "java".into(),
            cgroup_id: 5,
            process: None,
        }
    }

    #[test]
    fn owner_backfills_events_after_close() {
        let mut table = FlowTable::<()>::new(16);
        let mut connect = event(1, 1, EventKind::StateChange, 7, 2);
        connect.owner = Some(owner());
        connect.side = Some(Side::Client);
        table.observe(&mut connect);
        let mut close = event(1, 2, EventKind::StateChange, 2, 7);
        table.observe(&mut close);
        let mut error = event(1, 3, EventKind::SocketError, 7, 7);
        table.observe(&mut error);
        assert_eq!(error.owner, Some(owner()));
        assert_eq!(error.side, Some(Side::Client));
        assert_eq!(table.get(1).unwrap().events, 3);
    }

    #[test]
    fn local_port_learned_later_fills_later_events() {
        let mut table = FlowTable::<()>::new(16);
        let mut connect = event(1, 1, EventKind::StateChange, 7, 2);
        connect.local.set_port(0);
        table.observe(&mut connect);
        assert_eq!(connect.local.port(), 0);
        table.observe(&mut event(1, 2, EventKind::ResetReceived, 2, 2));
        let mut error = event(1, 3, EventKind::SocketError, 7, 7);
        error.local.set_port(0);
        table.observe(&mut error);
        assert_eq!(error.local.port(), 40000);
    }

    #[test]
    fn closed_flows_expire_after_linger() {
        let mut table = FlowTable::<()>::new(16);
        table.observe(&mut event(1, 0, EventKind::StateChange, 2, 7));
        table.observe(&mut event(2, 0, EventKind::StateChange, 2, 1));
        assert!(table.expire(CLOSED_LINGER_NS - 1).is_empty());
        assert_eq!(table.len(), 2);
        assert_eq!(table.expire(CLOSED_LINGER_NS).len(), 1);
        assert_eq!(table.len(), 1);
        assert!(table.get(2).is_some());
        assert_eq!(table.evictions(), 0);
    }

    #[test]
    fn bound_holds_and_evictions_are_counted() {
        let mut table = FlowTable::<()>::new(128);
        for cookie in 1..=1000u64 {
            table.observe(&mut event(cookie, cookie, EventKind::StateChange, 2, 1));
            assert!(table.len() <= 128);
        }
        // Every flow beyond capacity cost exactly one eviction, oldest first.
        assert_eq!(table.len() as u64 + table.evictions(), 1000);
        assert!(table.get(1000).is_some());
        assert!(table.get(1).is_none());
    }

    #[test]
    fn closed_flows_are_freed_before_open_ones_are_evicted() {
        let mut table = FlowTable::<()>::new(2);
        table.observe(&mut event(1, 0, EventKind::StateChange, 2, 1));
        table.observe(&mut event(2, 0, EventKind::StateChange, 2, 7));
        table.observe(&mut event(
            3,
            CLOSED_LINGER_NS,
            EventKind::StateChange,
            7,
            2,
        ));
        assert_eq!(table.evictions(), 0);
        assert!(table.get(1).is_some() && table.get(3).is_some());
    }

    #[test]
    fn a_new_socket_under_a_closed_flows_key_is_a_new_flow() {
        // Linux 5.10: the key is the socket's address, reused after the socket is freed.
        let mut table = FlowTable::<()>::new(16);
        let mut opening = event(1, 10, EventKind::StateChange, 7, 2);
        table.observe(&mut opening);
        let mut close = event(1, 20, EventKind::StateChange, 2, 7);
        table.observe(&mut close);
        assert!(table.get(1).unwrap().closed_ns.is_some());
        let mut reopening = event(1, 30, EventKind::StateChange, 7, 2);
        let flow = table.observe(&mut reopening).unwrap();
        assert_eq!((flow.closed_ns, flow.first_ns), (None, 30), "a new flow");
        // The closed one is not lost: the next expiry returns it (its findings may owe an
        // update).
        let expired = table.expire(31);
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].first_ns, 10);
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn no_socket_events_are_not_tracked() {
        let mut table = FlowTable::<()>::new(2);
        table.observe(&mut event(0, 0, EventKind::ResetSent, 7, 7));
        assert_eq!(table.len(), 0);
    }
}
