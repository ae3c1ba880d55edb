//! The ends waiting for their other half, and the join: the same connection seen by two
//! nodes is found by the client's initial sequence number (NAT rewrites addresses and ports,
//! not sequence numbers), checked against the server's ISN where both ends know it and
//! against time (the two nodes' clocks may disagree by up to `max_skew`); where no ISN is
//! known (a kernel too old to give one, counted repeats) by the addresses and time alone.
//! An end is released once no line still to come can match it (see `merge`): memory
//! follows the lines of the last few minutes, not the input's size.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
};

use serde_json::Value;

use super::ends::{End, Observation, Role};

/// A line on the same node, netns and tuple this long after an end's last line, with no
/// ISN to tell, starts a new connection (the tuple was reused).
const TUPLE_REUSE_NS: i64 = 120_000_000_000;

/// How an end was matched to its other half.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinedBy {
    Isn,
    Addresses,
}

impl JoinedBy {
    pub fn name(self) -> &'static str {
        match self {
            Self::Isn => "isn",
            Self::Addresses => "addresses",
        }
    }
}

/// What leaves the table.
#[derive(Debug)]
pub enum Released {
    /// Both ends of one connection, client first.
    Pair {
        client: Box<End>,
        server: Box<End>,
        by: JoinedBy,
    },
    Single(Box<End>),
}

type TupleKey = (Arc<str>, u64, String, String);

pub struct Table {
    ends: HashMap<u64, End>,
    next_id: u64,
    by_tuple: HashMap<TupleKey, Vec<u64>>,
    by_client_isn: HashMap<u32, Vec<u64>>,
    /// (client endpoint, server endpoint) of ends without a client ISN.
    by_endpoints: HashMap<(String, String), Vec<u64>>,
    /// (arrival, id): the release order.
    order: BTreeSet<(i64, u64)>,
    max_ends: usize,
    max_skew_ns: i64,
    /// Ends released before their time because the table was full.
    pub released_early: u64,
    /// Most ends held at once.
    pub peak: usize,
}

impl Table {
    pub fn new(max_ends: usize, max_skew_ns: i64) -> Self {
        Self {
            ends: HashMap::new(),
            next_id: 0,
            by_tuple: HashMap::new(),
            by_client_isn: HashMap::new(),
            by_endpoints: HashMap::new(),
            order: BTreeSet::new(),
            max_ends: max_ends.max(2),
            max_skew_ns,
            released_early: 0,
            peak: 0,
        }
    }

    /// Takes in one line about a flow, arrived at `arrived_ns`; returns what a full table
    /// had to release to make room.
    pub fn add(&mut self, obs: &Observation, value: &Value, arrived_ns: i64) -> Vec<Released> {
        let key: TupleKey = (
            obs.node.clone(),
            obs.netns,
            obs.local.clone(),
            obs.remote.clone(),
        );
        let existing = self.by_tuple.get(&key).and_then(|ids| {
            ids.iter().rev().copied().find(|id| {
                let end = &self.ends[id];
                end.accepts(obs)
                    && (same_isns(end, obs) || obs.ts_ns - end.last_ns <= TUPLE_REUSE_NS)
            })
        });
        // A line that names no end (a listener's own events) starts none; a finding always
        // does (it is reported, joined or not).
        if existing.is_none() && obs.role.is_none() && value["type"] != "finding" {
            return Vec::new();
        }
        let id = match existing {
            Some(id) => {
                let end = self.ends.get_mut(&id).expect("indexed end");
                self.order.remove(&(end.arrived_ns, id));
                self.unindex_keys(id);
                id
            }
            None => {
                let id = self.next_id;
                self.next_id += 1;
                self.ends.insert(id, End::new(obs, arrived_ns));
                self.by_tuple.entry(key).or_default().push(id);
                id
            }
        };
        let end = self.ends.get_mut(&id).expect("end just found or made");
        end.add(obs, value, arrived_ns);
        self.order.insert((end.arrived_ns, id));
        self.index_keys(id);
        self.peak = self.peak.max(self.ends.len());
        let mut released = Vec::new();
        // Both ends closed: nothing more can come about either, and nothing else can claim
        // them (the best match is taken as it would be later). Busy clean traffic then costs
        // the table nothing.
        if self.ends[&id].closed
            && let Some((other, _)) = self.partner(id)
            && self.ends[&other].closed
        {
            released.push(self.finalize(id));
        }
        while self.ends.len() > self.max_ends {
            let Some(&(_, oldest)) = self.order.first() else {
                break;
            };
            self.released_early += 1;
            released.push(self.finalize(oldest));
        }
        released
    }

    /// Releases the ends whose last line arrived more than `hold_ns` before `watermark_ns`
    /// (`i64::MAX`: all of them, at the end of the input).
    pub fn release(&mut self, watermark_ns: i64, hold_ns: i64) -> Vec<Released> {
        let mut released = Vec::new();
        while let Some(&(arrived, id)) = self.order.first() {
            if watermark_ns != i64::MAX && arrived.saturating_add(hold_ns) >= watermark_ns {
                break;
            }
            released.push(self.finalize(id));
        }
        released
    }

    fn index_keys(&mut self, id: u64) {
        let end = &self.ends[&id];
        match (end.client_isn, endpoints(end)) {
            (Some(isn), _) => self.by_client_isn.entry(isn).or_default().push(id),
            (None, Some(pair)) => self.by_endpoints.entry(pair).or_default().push(id),
            (None, None) => {}
        }
    }

    fn unindex_keys(&mut self, id: u64) {
        let end = &self.ends[&id];
        if let Some(isn) = end.client_isn {
            remove_id(&mut self.by_client_isn, &isn, id);
        } else if let Some(pair) = endpoints(end) {
            remove_id(&mut self.by_endpoints, &pair, id);
        }
    }

    fn remove(&mut self, id: u64) -> End {
        self.unindex_keys(id);
        let end = self.ends.remove(&id).expect("end to remove");
        self.order.remove(&(end.arrived_ns, id));
        let key: TupleKey = (
            end.node.clone(),
            end.netns,
            end.local.clone(),
            end.remote.clone(),
        );
        remove_id(&mut self.by_tuple, &key, id);
        end
    }

    /// The other half of an end, if the table holds it.
    fn partner(&self, id: u64) -> Option<(u64, JoinedBy)> {
        let end = &self.ends[&id];
        let by_isn = end.client_isn.and_then(|isn| {
            let candidates = self.by_client_isn.get(&isn)?;
            self.best_match(end, candidates, true)
        });
        match by_isn {
            Some(other) => Some((other, JoinedBy::Isn)),
            None => {
                // Without the client's ISN on either end: the same endpoints, on both ends.
                let mirrored = endpoints(end).and_then(|pair| self.by_endpoints.get(&pair));
                mirrored
                    .and_then(|candidates| self.best_match(end, candidates, false))
                    .map(|other| (other, JoinedBy::Addresses))
            }
        }
    }

    /// Takes an end out with its other half, if the table holds it.
    fn finalize(&mut self, id: u64) -> Released {
        let found = self.partner(id);
        let end = self.remove(id);
        match found {
            Some((other, by)) => {
                let other = self.remove(other);
                let (client, server) = if end.role == Some(Role::Client) {
                    (end, other)
                } else {
                    (other, end)
                };
                Released::Pair {
                    client: Box::new(client),
                    server: Box::new(server),
                    by,
                }
            }
            None => Released::Single(Box::new(end)),
        }
    }

    /// The other half of `end` among `candidates`: another node, the other role, the same
    /// server ISN where both know it, at a time that agrees within the skew; the closest in
    /// time when several do (an ISN collision between unrelated flows).
    fn best_match(&self, end: &End, candidates: &[u64], by_isn: bool) -> Option<u64> {
        let role = end.role?;
        candidates
            .iter()
            .filter_map(|id| Some((*id, self.ends.get(id)?)))
            .filter(|(_, other)| {
                other.node != end.node
                    && other.role.is_some_and(|r| r != role)
                    && (by_isn || other.client_isn.is_none())
                    && (end.server_isn.is_none()
                        || other.server_isn.is_none()
                        || end.server_isn == other.server_isn)
                    && overlaps(end, other, self.max_skew_ns)
            })
            .min_by_key(|(_, other)| (other.first_ns - end.first_ns).abs())
            .map(|(id, _)| id)
    }
}

/// Whether two ends' times agree, allowing the nodes' clocks to differ by `skew`.
fn overlaps(a: &End, b: &End, skew: i64) -> bool {
    a.first_ns.saturating_sub(skew) <= b.last_ns && b.first_ns.saturating_sub(skew) <= a.last_ns
}

fn same_isns(end: &End, obs: &Observation) -> bool {
    end.client_isn.is_some() && end.client_isn == obs.client_isn
}

/// (client endpoint, server endpoint) of an end whose role is known: the key the address
/// join uses (both ends give the same one when nothing translated the addresses).
fn endpoints(end: &End) -> Option<(String, String)> {
    match end.role? {
        Role::Client => Some((end.local.clone(), end.remote.clone())),
        Role::Server => Some((end.remote.clone(), end.local.clone())),
    }
}

fn remove_id<K: std::hash::Hash + Eq>(index: &mut HashMap<K, Vec<u64>>, key: &K, id: u64) {
    if let Some(ids) = index.get_mut(key) {
        ids.retain(|&other| other != id);
        if ids.is_empty() {
            index.remove(key);
        }
    }
}
