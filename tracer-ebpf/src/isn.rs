//! TCP initial sequence numbers: the key that joins a connection's two ends when they are
//! traced on two nodes, since NAT rewrites addresses and ports but (in the common case) not
//! sequence numbers. Read where the kernel still holds them (a socket in SYN_SENT, one whose
//! handshake just completed, a request socket, the SYN a RST answers) and kept in the flow's
//! slot for its later events (see `tracer_ebpf::FlowEvent::isn_sent`).

use tracer_ebpf::{FlowSlot, flag};

use crate::emit::Record;
use crate::maps::offset;
use crate::sock::read;

/// Both initial sequence numbers known.
pub(crate) const ISN_BOTH: u16 = flag::ISN_SENT | flag::ISN_RECEIVED;

/// A socket in SYN_SENT: `snd_una` is the ISN of the SYN it sent (0 before the SYN is built:
/// a connect() that failed before sending is left without one).
#[inline(always)]
pub(crate) fn note_syn_sent(sk: *const u8, record: &mut Record) {
    let isn: u32 = read(sk, offset!(tp_snd_una));
    if isn != 0 {
        record.isn_sent = isn;
        record.flags |= flag::ISN_SENT;
    }
}

/// A socket whose handshake just completed (SYN_SENT or SYN_RECV -> ESTABLISHED): the
/// handshake's segments each took one sequence number, so both ISNs are one before `snd_una`
/// and `rcv_nxt` (data of the final segment is queued after the state change).
#[inline(always)]
pub(crate) fn established_isns(sk: *const u8) -> (u32, u32) {
    let snd_una: u32 = read(sk, offset!(tp_snd_una));
    let rcv_nxt: u32 = read(sk, offset!(tp_rcv_nxt));
    (snd_una.wrapping_sub(1), rcv_nxt.wrapping_sub(1))
}

/// A half-open handshake's request socket: the SYN-ACK's ISN and the client's.
#[inline(always)]
pub(crate) fn note_request(req: *const u8, record: &mut Record) {
    record.isn_sent = read(req, offset!(treq_snt_isn));
    record.isn_received = read(req, offset!(treq_rcv_isn));
    record.flags |= ISN_BOTH;
}

/// Keeps what a record knows of the ISNs in the flow's slot when it knows more, then gives
/// the record everything the slot knows: later events of the flow, read where the socket no
/// longer holds them, carry them too.
#[inline(always)]
pub(crate) fn sync_isns(slot: &mut FlowSlot, record: &mut Record) {
    let known = record.flags & ISN_BOTH;
    if known & !slot.isn_flags != 0 {
        slot.isn_flags = known;
        slot.isn_sent = record.isn_sent;
        slot.isn_received = record.isn_received;
    }
    record.flags = (record.flags & !ISN_BOTH) | slot.isn_flags;
    record.isn_sent = slot.isn_sent;
    record.isn_received = slot.isn_received;
}
