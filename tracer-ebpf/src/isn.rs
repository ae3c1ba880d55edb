//! TCP initial sequence numbers: the key that joins a connection's two ends when they are
//! traced on two nodes, since NAT rewrites addresses and ports but (in the common case) not
//! sequence numbers. Read where the kernel still holds them (a socket in SYN_SENT, one whose
//! handshake just completed, a request socket, the SYN a RST answers) and kept in the flow's
//! slot of a quiet flow for its history or summary; a shipped flow's later events get them
//! from userspace's flow table (see `tracer_ebpf::FlowEvent::isn_sent`).

use tracer_ebpf::{FlowSlot, flag};

use crate::emit::Record;
use crate::maps::offset;
use crate::sock::read;

/// Both initial sequence numbers known.
pub(crate) const ISN_BOTH: u16 = flag::ISN_SENT | flag::ISN_RECEIVED;

/// The socket's `snd_una` and `rcv_nxt` as the event happens, for userspace to derive the
/// ISNs from by the event's states (see `flag::SEQ_RAW`). No branch: each one multiplies
/// what Linux 6.1's verifier walks in the programs that inline this.
#[inline(always)]
pub(crate) fn note_sequence(sk: *const u8, record: &mut Record) {
    record.isn_sent = read(sk, offset!(tp_snd_una));
    record.isn_received = read(sk, offset!(tp_rcv_nxt));
    record.flags |= flag::SEQ_RAW;
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

/// Keeps a connect()ed quiet flow's ISNs in its slot as it is established, for the history
/// or summary it will send.
#[inline(always)]
pub(crate) fn keep_isns(slot: &mut FlowSlot, sk: *const u8) {
    (slot.isn_sent, slot.isn_received) = established_isns(sk);
    slot.isn_flags = ISN_BOTH;
}

/// Gives a record (a quiet flow's summary) the ISNs its slot kept.
#[inline(always)]
pub(crate) fn kept_isns(slot: &FlowSlot, record: &mut Record) {
    record.flags |= slot.isn_flags;
    record.isn_sent = slot.isn_sent;
    record.isn_received = slot.isn_received;
}
