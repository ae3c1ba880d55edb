//! The kernel programs shuffletrace loads, where each attaches, which kernels need it, and
//! what is lost without it. One table, so the start line, the warnings, `--help` and the
//! refusal to run on a kernel that cannot load the core all say the same thing.

use tracer_ebpf::KernelOffsets;

/// Where a program attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    /// A BTF tracepoint (`tp_btf`) of this name.
    Tracepoint(&'static str),
    /// cgroup_skb ingress on the cgroup v2 root.
    CgroupIngress,
    /// cgroup_skb egress on the cgroup v2 root.
    CgroupEgress,
}

/// One kernel program.
#[derive(Debug)]
pub struct ProgramSpec {
    /// Its name in the object file (and in the start line's `attached` / `missing`).
    pub name: &'static str,
    pub attach: Attach,
    /// Finding kinds that cannot be given at all without it.
    pub kinds: &'static [&'static str],
    /// What a run without it loses, in a sentence.
    pub without: &'static str,
}

/// The program every finding depends on: flows, their processes and summaries come from
/// the TCP state machine. A kernel that cannot load it cannot run shuffletrace.
pub const CORE: &str = "inet_sock_set_state";

/// The oldest kernels shuffletrace is verified on, for the refusal message.
pub const OLDEST_KERNEL: &str = "Linux 5.10 with BTF (CONFIG_DEBUG_INFO_BTF=y)";

pub const INGRESS: &str = "ingress_ttl";
pub const EGRESS: &str = "egress_activity";
/// The backstop for flows whose CLOSE the state program did not see.
pub const TEARDOWN: &str = "tcp_destroy_sock";

/// Every program, in attach order.
pub const PROGRAMS: [ProgramSpec; 10] = [
    ProgramSpec {
        name: CORE,
        attach: Attach::Tracepoint("inet_sock_set_state"),
        kinds: &[],
        without: "no flow is seen at all",
    },
    ProgramSpec {
        name: "tcp_retransmit_skb",
        attach: Attach::Tracepoint("tcp_retransmit_skb"),
        kinds: &[
            "connect_timeout",
            "retransmit_storm",
            "nat_idle_timeout",
            "half_open",
        ],
        without: "dropped SYNs and retransmissions are not seen",
    },
    ProgramSpec {
        name: "tcp_retransmit_synack",
        attach: Attach::Tracepoint("tcp_retransmit_synack"),
        kinds: &["return_path_blocked"],
        without: "unanswered SYN-ACKs are not seen",
    },
    ProgramSpec {
        name: "tcp_send_reset",
        attach: Attach::Tracepoint("tcp_send_reset"),
        kinds: &["local_reset"],
        without: "RSTs this host sends are not seen",
    },
    ProgramSpec {
        name: "kfree_skb",
        attach: Attach::Tracepoint("kfree_skb"),
        kinds: &["local_reset"],
        without: "RSTs this host sends to ports without a listener are not seen",
    },
    ProgramSpec {
        name: "tcp_receive_reset",
        attach: Attach::Tracepoint("tcp_receive_reset"),
        kinds: &["peer_reset", "middlebox_reset"],
        without: "RSTs from peers are not seen (refused connects are still reported from the \
                  socket's error)",
    },
    ProgramSpec {
        name: "inet_sk_error_report",
        attach: Attach::Tracepoint("inet_sk_error_report"),
        kinds: &[],
        without: "socket errors are read when the connection closes instead (nothing is lost \
                  but errors reported on a socket that stays open)",
    },
    ProgramSpec {
        name: TEARDOWN,
        attach: Attach::Tracepoint("tcp_destroy_sock"),
        kinds: &[],
        without: "a flow whose close the kernel skipped (see recursion_misses) is neither \
                  reported nor released from the kernel's flow table, which it fills over time",
    },
    ProgramSpec {
        name: INGRESS,
        attach: Attach::CgroupIngress,
        kinds: &[
            "middlebox_reset",
            "idle_at_risk",
            "nat_idle_timeout",
            "half_open",
            "tls_mismatch",
        ],
        without: "middlebox resets cannot be told from the peer's, and idle flows and payload \
                  classes are not tracked",
    },
    ProgramSpec {
        name: EGRESS,
        attach: Attach::CgroupEgress,
        kinds: &[
            "idle_at_risk",
            "nat_idle_timeout",
            "half_open",
            "tls_mismatch",
        ],
        without: "idle flows and payload classes are not tracked",
    },
];

/// The kernel section of `--help`: what each program gives, from the table above.
pub fn kernel_help() -> String {
    let mut help = format!(
        "Kernels: needs {OLDEST_KERNEL} or later; verified on Debian's 5.10, 6.1, 6.12 and on \
         6.18. Every program loads on 6.1 and later. Where one cannot load, the run goes on \
         without it: the `start` line lists it in `missing` (why, and what is lost) and the \
         finding kinds no remaining program can give in `unavailable`, and a warning says the \
         same. Where the core program ({CORE}) cannot load, shuffletrace exits 1 naming the \
         kernel and what is missing.\n\nPrograms and the findings that need them:\n"
    );
    for spec in &PROGRAMS {
        let kinds = if spec.name == CORE {
            "all".to_owned()
        } else if spec.kinds.is_empty() {
            "none wholly".to_owned()
        } else {
            spec.kinds.join(", ")
        };
        help.push_str(&format!(
            "  {:<22} {kinds}; without it {}\n",
            spec.name, spec.without
        ));
    }
    help.push_str(
        "  (kfree_skb stands in for tcp_send_reset's RSTs without a socket on 5.17 to 6.9; \
         5.10 has neither.)",
    );
    help
}

/// The spec of a program by name.
pub fn spec(name: &str) -> Option<&'static ProgramSpec> {
    PROGRAMS.iter().find(|p| p.name == name)
}

/// Whether this kernel needs `name` at all: `kfree_skb` only stands in for `tcp_send_reset`
/// where that tracepoint does not fire without a socket (before 6.10) and the kernel gives
/// drop reasons (5.17+).
pub fn needed(name: &str, offsets: &KernelOffsets) -> bool {
    name != "kfree_skb" || offsets.no_socket_drop_reason != 0
}

/// Programs this kernel cannot give although another kernel would: `kfree_skb` on kernels
/// that need a stand-in for `tcp_send_reset` but give no drop reasons (before 5.17).
pub fn not_applicable(name: &str, offsets: &KernelOffsets) -> Option<&'static str> {
    (name == "kfree_skb"
        && offsets.no_socket_drop_reason == 0
        && offsets.send_reset_has_reason == 0)
        .then_some(
            "this kernel's tcp_send_reset does not fire without a socket (before 6.10) and its \
             kfree_skb gives no drop reason (before 5.17)",
        )
}

/// Finding kinds no program left running can give, sorted: the union of what the missing
/// programs give, minus what a running program still gives (`local_reset` comes from
/// `tcp_send_reset` and `kfree_skb`; a kind is unavailable only when every source is gone).
pub fn unavailable_kinds(missing: &[&str]) -> Vec<&'static str> {
    let mut kinds: Vec<&'static str> = missing
        .iter()
        .filter_map(|name| spec(name))
        .flat_map(|spec| spec.kinds.iter().copied())
        .collect();
    kinds.sort_unstable();
    kinds.dedup();
    // local_reset has two sources: only with both gone is it wholly unavailable; with one
    // gone it is partial and says so in the warning.
    if kinds.contains(&"local_reset")
        && !(missing.contains(&"tcp_send_reset") && missing.contains(&"kfree_skb"))
    {
        kinds.retain(|k| *k != "local_reset");
    }
    kinds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_program_is_named_once_and_core_is_first() {
        let mut names: Vec<_> = PROGRAMS.iter().map(|p| p.name).collect();
        assert_eq!(names[0], CORE);
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), PROGRAMS.len());
    }

    #[test]
    fn kfree_skb_is_needed_only_where_it_stands_in() {
        let mut offsets = KernelOffsets::default();
        assert!(!needed("kfree_skb", &offsets));
        assert!(needed("tcp_send_reset", &offsets));
        assert!(not_applicable("kfree_skb", &offsets).is_some());
        offsets.no_socket_drop_reason = 3;
        assert!(needed("kfree_skb", &offsets));
        assert!(not_applicable("kfree_skb", &offsets).is_none());
        offsets.no_socket_drop_reason = 0;
        offsets.send_reset_has_reason = 1;
        assert!(not_applicable("kfree_skb", &offsets).is_none());
    }

    #[test]
    fn unavailable_kinds_are_what_no_remaining_program_gives() {
        assert!(unavailable_kinds(&[]).is_empty());
        assert!(unavailable_kinds(&["inet_sk_error_report"]).is_empty());
        assert_eq!(
            unavailable_kinds(&["tcp_retransmit_synack"]),
            vec!["return_path_blocked"]
        );
        // One of two sources of local_reset gone: still given.
        assert!(unavailable_kinds(&["kfree_skb"]).is_empty());
        assert_eq!(
            unavailable_kinds(&["kfree_skb", "tcp_send_reset"]),
            vec!["local_reset"]
        );
        assert_eq!(
            unavailable_kinds(&[EGRESS, INGRESS]),
            vec![
                "half_open",
                "idle_at_risk",
                "middlebox_reset",
                "nat_idle_timeout",
                "tls_mismatch"
            ]
        );
    }
}
