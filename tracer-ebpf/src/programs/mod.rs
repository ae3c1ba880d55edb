//! The programs, grouped by attach point; each file holds its programs and their bodies.

mod cgroup_skb;
mod tcp_events;
mod tcp_state;
mod teardown;
