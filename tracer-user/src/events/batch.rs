//! Time order for a drained batch of events, without allocating: a stable sort of the
//! batch's ~200-byte events needs a scratch buffer half the batch's size (~400 KiB at 4,096
//! events), which the allocator maps fresh and hands back on every drain (in a profile of
//! the collector under connection churn, page faults were 7% of its time). Here the order is found on
//! (time, position) pairs in a buffer kept between drains, and the events are moved into it
//! in place. Most batches are in time order already and are left alone.

use crate::events::Event;

/// Puts `events` in time order, events of the same nanosecond in the order they came (a
/// flow's own events stay in their order). `order` is scratch, kept by the caller.
pub fn sort_by_time(events: &mut [Event], order: &mut Vec<(u64, u32)>) {
    if events.is_sorted_by_key(|event| event.boot_ns) {
        return;
    }
    order.clear();
    order.extend(
        events
            .iter()
            .enumerate()
            .map(|(at, event)| (event.boot_ns, at as u32)),
    );
    // The positions make every key distinct: unstable sorting them is stable for the events.
    order.sort_unstable();
    permute(events, order);
}

/// Rearranges `items` so that the k-th is the one that was at `order[k].1`, following each
/// cycle of the permutation with swaps; `order` is left as the identity.
fn permute<T>(items: &mut [T], order: &mut [(u64, u32)]) {
    for start in 0..items.len() {
        let mut at = start;
        loop {
            let from = order[at].1 as usize;
            order[at].1 = at as u32;
            if from == start {
                break;
            }
            items.swap(at, from);
            at = from;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{EventKind, sample_event};

    fn batch(times: &[u64]) -> Vec<Event> {
        times
            .iter()
            .enumerate()
            .map(|(at, &ns)| sample_event(EventKind::StateChange, at as u64, ns))
            .collect()
    }

    /// (time, cookie) of each event: the cookie is the position it came in.
    fn keys(events: &[Event]) -> Vec<(u64, u64)> {
        events.iter().map(|e| (e.boot_ns, e.cookie)).collect()
    }

    #[test]
    fn sorts_by_time_and_keeps_arrival_order_within_a_nanosecond() {
        let mut events = batch(&[30, 10, 20, 10, 30, 5, 20, 10]);
        let mut expected = keys(&events);
        expected.sort_by_key(|&(ns, _)| ns);
        let mut order = Vec::new();
        sort_by_time(&mut events, &mut order);
        assert_eq!(keys(&events), expected);
    }

    #[test]
    fn every_permutation_of_five_comes_out_sorted() {
        let mut order = Vec::new();
        let mut times = [0u64, 1, 2, 3, 4];
        // Heap's algorithm: all 120 orders of five distinct times.
        let mut c = [0usize; 5];
        let mut check = |times: &[u64; 5]| {
            let mut events = batch(times);
            sort_by_time(&mut events, &mut order);
            let got: Vec<u64> = events.iter().map(|e| e.boot_ns).collect();
            assert_eq!(got, vec![0, 1, 2, 3, 4], "from {times:?}");
        };
        check(&times);
        let mut i = 0;
        while i < 5 {
            if c[i] < i {
                if i % 2 == 0 {
                    times.swap(0, i);
                } else {
                    times.swap(c[i], i);
                }
                check(&times);
                c[i] += 1;
                i = 0;
            } else {
                c[i] = 0;
                i += 1;
            }
        }
    }

    #[test]
    fn a_sorted_batch_is_left_alone_and_the_scratch_is_reused() {
        let mut events = batch(&[1, 2, 2, 3]);
        let before = keys(&events);
        let mut order = Vec::with_capacity(8);
        sort_by_time(&mut events, &mut order);
        assert_eq!(keys(&events), before);
        let mut events = batch(&[4, 3, 2, 1]);
        sort_by_time(&mut events, &mut order);
        assert_eq!(keys(&events), vec![(1, 3), (2, 2), (3, 1), (4, 0)]);
        assert_eq!(order.capacity(), 8);
    }
}
