//! The traced nodes, as their lines describe them: when each was traced (first to last line),
//! which addresses and ports it watched (its start lines). `correlate` needs them to say
//! that a connection's SYNs never reached a node that *was* traced then, rather than one
//! nobody looked at.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use serde_json::Value;

use super::ends::epoch_ns;

/// Most nodes tracked (a cluster's worth); lines of further nodes still join, but such a
/// node cannot be named as the one a SYN never reached.
pub const MAX_NODES: usize = 4096;
/// Most addresses remembered per node (a start line lists at most 1024).
const MAX_ADDRESSES: usize = 1024;

#[derive(Debug, Default, Clone)]
pub struct Node {
    /// First and last line seen from it (ns since the epoch).
    pub first_ns: i64,
    pub last_ns: i64,
    pub addresses: BTreeSet<String>,
    /// Ports watched (empty: not known, no start line read).
    pub ports: BTreeSet<u64>,
}

#[derive(Debug, Default)]
pub struct Nodes {
    pub by_name: BTreeMap<Arc<str>, Node>,
    /// Nodes not tracked past `MAX_NODES`.
    pub omitted: u64,
}

impl Nodes {
    /// The shared name of a node (one allocation per tracked node, not per line).
    pub fn intern(&self, name: &str) -> Arc<str> {
        match self.by_name.get_key_value(name) {
            Some((known, _)) => known.clone(),
            None => Arc::from(name),
        }
    }

    /// Takes in any line: its node was traced at its time; a start line says what it watched.
    pub fn note(&mut self, value: &Value) {
        let (Some(name), Some(ts)) = (value["node"].as_str(), value["ts"].as_str()) else {
            return;
        };
        let Some(at) = epoch_ns(ts) else {
            return;
        };
        if !self.by_name.contains_key(name) {
            if self.by_name.len() >= MAX_NODES {
                self.omitted += 1;
                return;
            }
            let first = Node {
                first_ns: at,
                last_ns: at,
                ..Node::default()
            };
            self.by_name.insert(Arc::from(name), first);
        }
        let node = self
            .by_name
            .get_mut(name)
            .expect("a node just found or added");
        // A start line's time is when tracing began: earlier lines cannot be (a quiet flow's
        // history goes back before it only to its own opening).
        if value["type"] == "start" {
            node.first_ns = node.first_ns.min(at);
            for address in value["addresses"].as_array().into_iter().flatten() {
                if let Some(address) = address.as_str()
                    && node.addresses.len() < MAX_ADDRESSES
                {
                    node.addresses.insert(address.to_owned());
                }
            }
            for port in value["ports"].as_array().into_iter().flatten() {
                if let Some(port) = port.as_u64() {
                    node.ports.insert(port);
                }
            }
        } else {
            node.first_ns = node.first_ns.min(at);
        }
        node.last_ns = node.last_ns.max(at);
    }

    /// The traced node that has `ip` as one of its addresses, other than `except`.
    pub fn owning(&self, ip: &str, except: &str) -> Option<(&Arc<str>, &Node)> {
        self.by_name
            .iter()
            .find(|(name, node)| &***name != except && node.addresses.contains(ip))
    }
}
