//! shuffletrace kernel programs: BTF tracepoints on the TCP state machine, retransmits, resets and
//! socket errors, and cgroup_skb on both directions. Each program reads the socket through field
//! offsets that userspace resolved from the running kernel's BTF, keeps only flows on a watched
//! port, and writes [`tracer_ebpf::FlowEvent`] records to one ring buffer. One object, shared
//! maps; this file only declares the modules.
//!
//! BTF tracepoints (`tp_btf`) are used rather than classic ones because they hand us the typed
//! `struct sock *`, which lets us call `bpf_get_socket_cookie` (the flow key shared with every
//! other program) and needs neither kprobes nor ftrace trampolines.
#![no_std]
#![no_main]
// The BPF atomic add (see `repeats::counted_as_repeat`).
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod activity;
mod emit;
mod hints;
mod isn;
mod maps;
mod marks;
mod packet;
mod programs;
mod repeats;
mod slots;
mod sock;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
