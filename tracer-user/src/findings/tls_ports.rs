//! Which server endpoints speak TLS, as far as this host has seen. Most TLS servers close on
//! plaintext without a byte (OpenSSL's s_server, Netty's SslHandler under Spark RPC) or reset
//! (Python's ssl); only JSSE answers with an alert. The client then sees a silent close, which
//! a plaintext server closing on bad input gives too. What tells them apart is what the host
//! knows of the endpoint: it answered other clients with TLS (a flow's summary or first
//! payloads, or the activity table's open flows), or its port is an HTTPS port of the seed
//! table. Bounded: at most `MAX_ENDPOINTS` endpoints, the least recently seen leaving first.

use std::{collections::HashMap, net::SocketAddr};

use tracer_ebpf::payload_class::{TLS_ALERT, TLS_SERVER_HELLO, is_tls};

use crate::{events::Owner, services};

/// Server endpoints remembered; a new one beyond it first drops the least recently seen
/// eighth (a batch, so a full memory is not scanned for every new endpoint).
pub const MAX_ENDPOINTS: usize = 4096;

/// An endpoint that answered with TLS: when last (boot ns), with what, and the server
/// process when its end was seen on this host.
#[derive(Clone, Debug)]
struct Seen {
    at_ns: u64,
    class: u8,
    local_server: Option<String>,
}

/// The key of an endpoint: its address, and for a loopback address the network namespace
/// too (every namespace has its own 127.0.0.1).
type Key = (u32, SocketAddr);

fn key(netns: u32, server: SocketAddr) -> Key {
    (if server.ip().is_loopback() { netns } else { 0 }, server)
}

/// Whether a first payload is a server's TLS answer (anything TLS but a ClientHello).
pub fn tls_answer(class: u8) -> bool {
    is_tls(class) && class != tracer_ebpf::payload_class::TLS_CLIENT_HELLO
}

/// A short time span for a reader: milliseconds below a second.
pub fn span(ns: u64) -> String {
    if ns < 1_000_000_000 {
        format!("{:.1} ms", ns as f64 / 1e6)
    } else {
        format!("{:.1} s", ns as f64 / 1e9)
    }
}

/// A TLS class as a reader names it.
pub fn tls_class_text(class: u8) -> &'static str {
    match class {
        TLS_SERVER_HELLO => "a TLS ServerHello",
        TLS_ALERT => "a TLS alert",
        _ => "a TLS record",
    }
}

#[derive(Default)]
pub struct TlsPorts {
    seen: HashMap<Key, Seen>,
}

impl TlsPorts {
    /// `server` (in `netns`) answered a client with `class` at `at_ns`; `local_server` is its
    /// process when the server's end is on this host.
    pub fn learn(
        &mut self,
        netns: u32,
        server: SocketAddr,
        class: u8,
        at_ns: u64,
        local_server: Option<&Owner>,
    ) {
        let key = key(netns, server);
        if !self.seen.contains_key(&key) && self.seen.len() >= MAX_ENDPOINTS {
            self.evict();
        }
        let seen = self.seen.entry(key).or_insert(Seen {
            at_ns,
            class,
            local_server: None,
        });
        if at_ns >= seen.at_ns {
            (seen.at_ns, seen.class) = (at_ns, class);
        }
        if let Some(owner) = local_server {
            seen.local_server = Some(format!("{}, pid {}", owner.comm, owner.pid));
        }
    }

    /// Drops the least recently seen eighth.
    fn evict(&mut self) {
        let batch = (MAX_ENDPOINTS / 8).max(1);
        let mut by_age: Vec<(u64, Key)> = self.seen.iter().map(|(k, s)| (s.at_ns, *k)).collect();
        by_age.select_nth_unstable(batch - 1);
        for (_, key) in &by_age[..batch] {
            self.seen.remove(key);
        }
    }

    /// Why `server` is taken for a TLS endpoint by a request sent at `sent_ns`, if anything
    /// says so: what it answered other clients with (its own behaviour first), else the seed
    /// table.
    pub fn basis(&self, netns: u32, server: SocketAddr, sent_ns: u64) -> Option<String> {
        if let Some(seen) = self.seen.get(&key(netns, server)) {
            let on_host = match &seen.local_server {
                Some(process) => format!(" ({process} on this host)"),
                None => String::new(),
            };
            return Some(format!(
                "{server}{on_host} answered other clients with {}, last {} before the request",
                tls_class_text(seen.class),
                span(sent_ns.saturating_sub(seen.at_ns))
            ));
        }
        let port = server.port();
        services::is_https(port).then(|| format!("{port} is an HTTPS port in the seed table"))
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.seen.len()
    }
}
