//! Kernel struct field offsets for the kernel programs, resolved from the running kernel's BTF.

use anyhow::{Result, bail};
use tracer_ebpf::KernelOffsets;

use crate::kernel::btf::Btf;

fn offset(btf: &Btf, struct_name: &str, path: &str) -> Result<u32> {
    Ok(btf.field(struct_name, path)?.byte_offset)
}

/// Resolves every offset the programs read.
pub fn resolve(btf: &Btf) -> Result<KernelOffsets> {
    let common = |path: &str| offset(btf, "sock_common", path);
    let skc_dport = common("skc_dport")?;
    let skc_num = common("skc_num")?;
    let skc_portpair = common("skc_portpair")?;
    if skc_num != skc_dport + 2 || skc_portpair != skc_dport {
        bail!("unexpected struct sock_common layout: skc_portpair is not skc_dport then skc_num");
    }
    let skc_daddr = common("skc_daddr")?;
    let skc_rcv_saddr = common("skc_rcv_saddr")?;
    if skc_rcv_saddr != skc_daddr + 4 {
        bail!("unexpected struct sock_common layout: skc_rcv_saddr is not right after skc_daddr");
    }
    // Every program reads sockets as `struct sock *` through sock_common offsets.
    let sk_common = offset(btf, "sock", "__sk_common")?;
    if sk_common != 0 {
        bail!("unexpected struct sock layout: __sk_common is not at offset 0");
    }
    let protocol = btf.field("sock", "sk_protocol")?;
    let net_ns_inum = offset(btf, "net", "ns.inum")?;
    Ok(KernelOffsets {
        ready: 1,
        skc_state: common("skc_state")?,
        skc_portpair,
        skc_family: common("skc_family")?,
        skc_addrpair: skc_daddr,
        skc_v6_daddr: common("skc_v6_daddr")?,
        skc_v6_rcv_saddr: common("skc_v6_rcv_saddr")?,
        skc_net: common("skc_net.net")?,
        sk_protocol: protocol.byte_offset,
        sk_protocol_size: protocol.size,
        sk_err: offset(btf, "sock", "sk_err")?,
        sk_err_soft: offset(btf, "sock", "sk_err_soft")?,
        sk_error_queue: offset(btf, "sock", "sk_error_queue.next")?,
        skb_ee_errno: extended_errno_offset(btf).unwrap_or_else(|e| {
            tracing::debug!("queued socket errors not readable: {e:#}");
            0
        }),
        inet_sport: offset(btf, "inet_sock", "inet_sport")?,
        net_ns_inum,
        skb_head: offset(btf, "sk_buff", "head")?,
        skb_network_header: offset(btf, "sk_buff", "network_header")?,
        skb_transport_header: offset(btf, "sk_buff", "transport_header")?,
        skb_dev: offset(btf, "sk_buff", "dev")?,
        dev_nd_net: offset(btf, "net_device", "nd_net")?,
        retransmit_has_err: u32::from(btf.tracepoint_arg_count("tcp_retransmit_skb") >= Some(3)),
        send_reset_has_reason: u32::from(send_reset_covers_no_socket(btf)),
        // Moved into sock_common as skc_flags on recent kernels.
        sk_flags: offset(btf, "sock", "sk_flags")
            .or_else(|_| offset(btf, "sock", "__sk_common.skc_flags"))?,
        sock_keepopen_bit: btf
            .enum_values("sock_flags")
            .and_then(|values| values.into_iter().find(|(name, _)| name == "SOCK_KEEPOPEN"))
            .map(|(_, value)| value as u32)
            .ok_or_else(|| anyhow::anyhow!("kernel BTF has no SOCK_KEEPOPEN in enum sock_flags"))?,
        tp_keepalive_time: offset(btf, "tcp_sock", "keepalive_time")?,
        tp_keepalive_intvl: offset(btf, "tcp_sock", "keepalive_intvl")?,
        tp_keepalive_probes: offset(btf, "tcp_sock", "keepalive_probes")?,
        net_keepalive_time: offset(btf, "net", "ipv4.sysctl_tcp_keepalive_time")?,
        net_keepalive_intvl: offset(btf, "net", "ipv4.sysctl_tcp_keepalive_intvl")?,
        net_keepalive_probes: offset(btf, "net", "ipv4.sysctl_tcp_keepalive_probes")?,
        no_socket_drop_reason: no_socket_drop_reason(btf),
        tp_snd_una: offset(btf, "tcp_sock", "snd_una")?,
        tp_rcv_nxt: offset(btf, "tcp_sock", "rcv_nxt")?,
        treq_rcv_isn: offset(btf, "tcp_request_sock", "rcv_isn")?,
        treq_snt_isn: offset(btf, "tcp_request_sock", "snt_isn")?,
        counted_until_destroy: u32::from(
            btf.tracepoint_arg_count("inet_sk_error_report").is_some()
                && btf.tracepoint_arg_count("tcp_destroy_sock").is_some(),
        ),
        flow_key_is_address: u32::from(!tracing_has_socket_cookie(btf)),
    })
}

/// Whether tracing programs may call `bpf_get_socket_cookie` (Linux 5.12+): the kernel then
/// has the helper's tracing variant, `bpf_get_socket_ptr_cookie`.
pub fn tracing_has_socket_cookie(btf: &Btf) -> bool {
    btf.has_named("bpf_get_socket_ptr_cookie")
}

/// Whether `tcp_send_reset` fires for a RST sent without a socket: since Linux 6.10, which
/// also gave it its third argument (the reason).
pub fn send_reset_covers_no_socket(btf: &Btf) -> bool {
    btf.tracepoint_arg_count("tcp_send_reset") >= Some(3)
}

/// `SKB_DROP_REASON_NO_SOCKET` when the `kfree_skb` program must stand in for
/// `tcp_send_reset` (kernels before 6.10 whose `kfree_skb` gives a reason: 5.17+); else 0.
pub fn no_socket_drop_reason(btf: &Btf) -> u32 {
    if send_reset_covers_no_socket(btf) || btf.tracepoint_arg_count("kfree_skb") < Some(3) {
        return 0;
    }
    btf.enum_values("skb_drop_reason")
        .and_then(|values| {
            values
                .into_iter()
                .find(|(name, _)| name == "SKB_DROP_REASON_NO_SOCKET")
        })
        .and_then(|(_, value)| u32::try_from(value).ok())
        .unwrap_or(0)
}

/// Where a queued socket error keeps its errno: `skb->cb` holds a `struct sock_exterr_skb`.
fn extended_errno_offset(btf: &Btf) -> Result<u32> {
    let cb = offset(btf, "sk_buff", "cb")?;
    let ee = offset(btf, "sock_exterr_skb", "ee")?;
    let errno = offset(btf, "sock_extended_err", "ee_errno")?;
    Ok(cb + ee + errno)
}

/// Names of `enum sk_rst_reason` values by number, from the running kernel (empty on kernels
/// before 6.10, which give no reason).
pub fn reset_reasons(btf: &Btf) -> Vec<(i64, String)> {
    btf.enum_values("sk_rst_reason")
        .unwrap_or_default()
        .into_iter()
        .map(|(name, value)| {
            let name = name
                .strip_prefix("SK_RST_REASON_")
                .unwrap_or(&name)
                .to_owned();
            (value, name)
        })
        .collect()
}
