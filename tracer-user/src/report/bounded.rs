//! The bounded collections a streamed report keeps: every list has a cap, and what a full
//! list turns away is counted (`*_omitted` in the report) instead of growing with the input.
//! Kept text is cut too, so one absurd 1 MiB field costs at most `MAX_NAME` or `MAX_TEXT`.

use std::collections::{BTreeSet, BinaryHeap};

/// Kept bytes of a name (node, process, endpoint, kind, kernel, timestamp...): host and
/// Kubernetes node names are at most 253, a kernel release 64.
pub const MAX_NAME: usize = 256;
/// Kept bytes of a summary or remedy (shuffletrace's are under 2 KiB).
pub const MAX_TEXT: usize = 8 * 1024;

/// Where a line stands in time order: its `ts`, then its place in the input (the order a
/// stable sort by `ts` keeps).
pub type Key = (String, u64);

/// `text` cut to at most `max` bytes at a character boundary, the cut marked with `…`.
pub fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// A sorted set of at most `cap` names; lines naming another once it is full are counted.
#[derive(Debug)]
pub struct CappedSet {
    set: BTreeSet<String>,
    cap: usize,
    pub omitted: u64,
}

impl CappedSet {
    pub fn new(cap: usize) -> Self {
        Self {
            set: BTreeSet::new(),
            cap,
            omitted: 0,
        }
    }

    pub fn insert(&mut self, name: &str) {
        let name = cut(name, MAX_NAME);
        if self.set.contains(&name) {
            return;
        }
        if self.set.len() < self.cap {
            self.set.insert(name);
        } else {
            self.omitted += 1;
        }
    }

    pub fn into_vec(self) -> Vec<String> {
        self.set.into_iter().collect()
    }
}

/// At most `cap` names in the order they first appear in time; the first `cap` distinct
/// names read are kept, and lines naming another are counted.
#[derive(Debug)]
pub struct FirstSeen {
    items: Vec<(Key, String)>,
    cap: usize,
    pub omitted: u64,
}

impl FirstSeen {
    pub fn new(cap: usize) -> Self {
        Self {
            items: Vec::new(),
            cap,
            omitted: 0,
        }
    }

    pub fn add(&mut self, key: &Key, name: &str) {
        let name = cut(name, MAX_NAME);
        if let Some(item) = self.items.iter_mut().find(|(_, n)| *n == name) {
            if *key < item.0 {
                item.0 = key.clone();
            }
        } else if self.items.len() < self.cap {
            self.items.push((key.clone(), name));
        } else {
            self.omitted += 1;
        }
    }

    pub fn into_vec(mut self) -> Vec<String> {
        self.items.sort();
        self.items.into_iter().map(|(_, name)| name).collect()
    }
}

struct Keyed<T>(Key, T);

impl<T> PartialEq for Keyed<T> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}
impl<T> Eq for Keyed<T> {}
impl<T> PartialOrd for Keyed<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Keyed<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.cmp(&other.0)
    }
}

/// The `cap` entries with the smallest keys (the first in time); the rest are counted.
pub struct Earliest<T> {
    heap: BinaryHeap<Keyed<T>>,
    cap: usize,
    pub omitted: u64,
}

impl<T> Earliest<T> {
    pub fn new(cap: usize) -> Self {
        Self {
            heap: BinaryHeap::new(),
            cap,
            omitted: 0,
        }
    }

    /// Adds the entry `make` builds, when its key is among the first `cap`.
    pub fn offer(&mut self, key: Key, make: impl FnOnce() -> T) {
        let keeps = self.heap.len() < self.cap || self.heap.peek().is_some_and(|top| key < top.0);
        if !keeps {
            self.omitted += 1;
            return;
        }
        self.heap.push(Keyed(key, make()));
        if self.heap.len() > self.cap {
            self.heap.pop();
            self.omitted += 1;
        }
    }

    pub fn into_vec(self) -> Vec<T> {
        self.heap
            .into_sorted_vec()
            .into_iter()
            .map(|k| k.1)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ts: &str, seq: u64) -> Key {
        (ts.to_owned(), seq)
    }

    #[test]
    fn full_collections_count_what_they_turn_away() {
        let mut set = CappedSet::new(2);
        for name in ["b", "a", "b", "c", "d"] {
            set.insert(name);
        }
        assert_eq!(set.omitted, 2);
        assert_eq!(set.into_vec(), ["a", "b"]);

        let mut seen = FirstSeen::new(2);
        seen.add(&key("3", 0), "late");
        seen.add(&key("2", 1), "early");
        seen.add(&key("1", 2), "late");
        seen.add(&key("0", 3), "other");
        assert_eq!(seen.omitted, 1);
        assert_eq!(seen.into_vec(), ["late", "early"]);

        let mut first = Earliest::new(2);
        for (i, ts) in ["5", "1", "4", "1", "0"].iter().enumerate() {
            first.offer(key(ts, i as u64), || format!("{ts}/{i}"));
        }
        assert_eq!(first.omitted, 3);
        assert_eq!(first.into_vec(), ["0/4", "1/1"]);

        assert_eq!(cut("abcdef", 6), "abcdef");
        assert_eq!(cut("abcdéf", 6), "abc…");
    }
}
