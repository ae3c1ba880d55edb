//! Repeats the kernel counted instead of sending: a connect refused again and again, a RST
//! sent again and again for a closed port (see `tracer_ebpf::RepeatKey`). The first
//! occurrence of each window is sent in full and becomes a finding; the rest are read here
//! from the kernel's repeat table as counts, which join that finding's aggregate, so every
//! finding count stays exact. Entries whose window is over are removed after their final
//! count is read: the table stays bounded and the kernel can open a new window.

use std::collections::{HashMap, HashSet};

use tracer_ebpf::{RepeatCount, RepeatKey};

use super::sources::RepeatSource;

/// How long after an entry became idle (no occurrence for a window length) it is removed.
/// The kernel never writes an idle entry by its own clock, read as the program starts; this
/// margin covers a program that read its clock just before and writes a moment later.
pub const REMOVE_AFTER_NS: u64 = 200_000_000;

/// Occurrences counted since the table was last read, for one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Repeated {
    pub key: RepeatKey,
    pub count: RepeatCount,
    /// Occurrences not reported yet, and the span they fall in: from just after the last
    /// one reported (or the first counted) to the latest.
    pub new: u64,
    pub first_ns: u64,
}

/// What was already reported from the kernel's repeat table.
#[derive(Debug)]
pub struct Repeats {
    window_ns: u64,
    /// Per live entry: its count already reported, and the latest occurrence in it. Bounded
    /// by the kernel table.
    reported: HashMap<RepeatKey, (u64, u64)>,
    /// When the next entry may be removed (u64::MAX: none known).
    next_removal_ns: u64,
    /// Occurrences counted in the kernel and reported, in all.
    total: u64,
}

impl Repeats {
    pub fn new(window_ns: u64) -> Self {
        Self {
            window_ns,
            reported: HashMap::new(),
            next_removal_ns: u64::MAX,
            total: 0,
        }
    }

    /// Whether an entry is idle and may be removed (read the table then: the table stays
    /// small, and the kernel opens a new window at the key's next occurrence).
    pub fn removal_due(&self, now_ns: u64) -> bool {
        now_ns >= self.next_removal_ns
    }

    /// Occurrences counted by the kernel and reported as findings, in all.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Reads the table: returns what each key counted since the last read, and removes the
    /// idle entries (after reading their final count).
    pub fn harvest(&mut self, now_ns: u64, source: &mut dyn RepeatSource) -> Vec<Repeated> {
        let mut found = Vec::new();
        let mut live = HashMap::with_capacity(self.reported.len());
        let mut over = HashSet::new();
        let mut next_removal_ns = u64::MAX;
        let window_ns = self.window_ns;
        let reported = &self.reported;
        source.repeats(&mut |key, count| {
            if live.contains_key(key) || over.contains(key) {
                return; // a key seen twice in one pass is counted once
            }
            let (before, reported_to_ns) = reported.get(key).copied().unwrap_or((0, 0));
            if count.counted > before {
                found.push(Repeated {
                    key: *key,
                    count: *count,
                    new: count.counted - before,
                    first_ns: if before == 0 {
                        count.first_ns
                    } else {
                        reported_to_ns.min(count.last_ns)
                    },
                });
            }
            let removable_at = count
                .active_ns
                .saturating_add(window_ns)
                .saturating_add(REMOVE_AFTER_NS);
            if now_ns >= removable_at {
                over.insert(*key);
            } else {
                live.insert(*key, (count.counted.max(before), count.last_ns));
                next_removal_ns = next_removal_ns.min(removable_at);
            }
        });
        for key in &over {
            source.forget(key);
        }
        self.reported = live;
        self.next_removal_ns = next_removal_ns;
        self.total += found.iter().map(|r| r.new).sum::<u64>();
        found
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    const SEC: u64 = 1_000_000_000;
    const MS: u64 = 1_000_000;

    #[derive(Default)]
    struct FakeTable {
        entries: RefCell<Vec<(RepeatKey, RepeatCount)>>,
        removed: RefCell<Vec<RepeatKey>>,
    }

    impl FakeTable {
        fn set(&self, port: u16, window_start_ns: u64, counted: u64) {
            let key = RepeatKey {
                service_port: port,
                ..Default::default()
            };
            // One occurrence a millisecond after the window opened, then one per millisecond.
            let count = RepeatCount {
                window_start_ns,
                active_ns: window_start_ns + counted * MS,
                first_ns: window_start_ns + MS,
                last_ns: window_start_ns + counted * MS,
                counted,
                ..Default::default()
            };
            let mut entries = self.entries.borrow_mut();
            match entries.iter_mut().find(|(k, _)| *k == key) {
                Some(entry) => entry.1 = count,
                None => entries.push((key, count)),
            }
        }
    }

    impl RepeatSource for FakeTable {
        fn repeats(&self, each: &mut dyn FnMut(&RepeatKey, &RepeatCount)) {
            for (key, count) in self.entries.borrow().iter() {
                each(key, count);
            }
        }
        fn forget(&mut self, key: &RepeatKey) {
            self.entries.borrow_mut().retain(|(k, _)| k != key);
            self.removed.borrow_mut().push(*key);
        }
    }

    fn news(found: &[Repeated]) -> Vec<(u16, u64)> {
        found.iter().map(|r| (r.key.service_port, r.new)).collect()
    }

    #[test]
    fn each_occurrence_is_reported_once_across_reads() {
        let mut table = FakeTable::default();
        let mut repeats = Repeats::new(10 * SEC);
        table.set(7337, SEC, 5);
        let found = repeats.harvest(2 * SEC, &mut table);
        assert_eq!(news(&found), [(7337, 5)]);
        assert_eq!(found[0].first_ns, SEC + MS);
        // Nothing new: nothing reported.
        assert!(repeats.harvest(3 * SEC, &mut table).is_empty());
        table.set(7337, SEC, 12);
        table.set(10000, 4 * SEC, 1);
        let found = repeats.harvest(5 * SEC, &mut table);
        // The new ones span from the last one reported to the latest.
        let shuffle = found.iter().find(|r| r.key.service_port == 7337).unwrap();
        assert_eq!(
            (shuffle.first_ns, shuffle.count.last_ns),
            (SEC + 5 * MS, SEC + 12 * MS)
        );
        let mut found = news(&found);
        found.sort();
        assert_eq!(found, [(7337, 7), (10000, 1)]);
        assert_eq!(repeats.total(), 13);
        assert!(table.removed.borrow().is_empty());
    }

    #[test]
    fn an_entry_is_removed_only_when_idle_past_the_margin_with_its_final_count() {
        let mut table = FakeTable::default();
        let mut repeats = Repeats::new(10 * SEC);
        table.set(7337, SEC, 3);
        repeats.harvest(2 * SEC, &mut table);
        // A later occurrence moves the end: idle a window length after the latest one.
        table.set(7337, SEC, 4);
        assert_eq!(news(&repeats.harvest(3 * SEC, &mut table)), [(7337, 1)]);
        let end = SEC + 4 * MS + 10 * SEC + REMOVE_AFTER_NS;
        assert!(!repeats.removal_due(end - 1));
        assert!(repeats.removal_due(end));
        assert!(repeats.harvest(end - 1, &mut table).is_empty());
        assert!(table.removed.borrow().is_empty());
        assert!(repeats.harvest(end, &mut table).is_empty());
        assert_eq!(table.removed.borrow().len(), 1);
        assert!(!repeats.removal_due(u64::MAX - 1));
        // The kernel makes a new entry for the key: its counts start again from zero.
        table.set(7337, end + SEC, 2);
        assert_eq!(
            news(&repeats.harvest(end + 2 * SEC, &mut table)),
            [(7337, 2)]
        );
        assert_eq!(repeats.total(), 6);
    }

    #[test]
    fn a_key_seen_twice_in_one_pass_counts_once() {
        let mut table = FakeTable::default();
        table.set(7337, SEC, 4);
        let twice = table.entries.borrow()[0];
        table.entries.borrow_mut().push(twice);
        let mut repeats = Repeats::new(10 * SEC);
        assert_eq!(news(&repeats.harvest(2 * SEC, &mut table)), [(7337, 4)]);
    }
}
