//! Reading several nodes' traces as one stream, in time order: every input is open at once
//! and the next line comes from the input that is furthest behind, so that an end can be
//! released once every input has moved past it (see `table`). Each input's *arrival time* is
//! the latest time it has shown (a quiet flow's history comes late, stamped with its own
//! older times). An input that goes back in time as it changes node (the concatenated
//! `kubectl logs` of several pods) cannot tell when a node's lines are over: then nothing is
//! released before the end, and the table's bound holds memory instead.

use std::{cmp::Reverse, collections::BinaryHeap};

use serde_json::Value;

use crate::error::BadInput;
use crate::report::input::{Source, Totals};

use super::ends::epoch_ns;

/// Most inputs read at once (each is an open file).
pub const MAX_INPUTS: usize = 4096;

struct Input {
    source: Source,
    /// The latest time it has shown.
    arrival: i64,
    node: Option<String>,
    /// Its next line, read ahead.
    next: Option<Value>,
}

pub struct Merge {
    inputs: Vec<Input>,
    heap: BinaryHeap<Reverse<(i64, usize)>>,
    skip_bad: bool,
    /// An input went back in time as it changed node: arrival times say nothing about other
    /// nodes' lines still to come.
    pub unordered: bool,
    /// How far back an input may go within one node before it counts as unordered.
    slack_ns: i64,
}

impl Merge {
    pub fn new(
        sources: Vec<Source>,
        skip_bad: bool,
        slack_ns: i64,
        totals: &mut Totals,
    ) -> Result<Self, BadInput> {
        let mut merge = Self {
            inputs: Vec::with_capacity(sources.len()),
            heap: BinaryHeap::new(),
            skip_bad,
            unordered: false,
            slack_ns,
        };
        for source in sources {
            merge.inputs.push(Input {
                source,
                arrival: i64::MIN,
                node: None,
                next: None,
            });
            let index = merge.inputs.len() - 1;
            merge.advance(index, totals)?;
        }
        Ok(merge)
    }

    /// Reads input `index`'s next line and queues it by the input's arrival time.
    fn advance(&mut self, index: usize, totals: &mut Totals) -> Result<(), BadInput> {
        let input = &mut self.inputs[index];
        let Some(value) = input.source.next_value(self.skip_bad, totals)? else {
            input.next = None;
            return Ok(());
        };
        if let Some(at) = value["ts"].as_str().and_then(epoch_ns) {
            let node = value["node"].as_str();
            let other_node = node.is_some() && input.node.as_deref() != node;
            if other_node && input.node.is_some() && at < input.arrival - self.slack_ns {
                self.unordered = true;
            }
            if let Some(node) = node.filter(|_| other_node) {
                input.node = Some(node.to_owned());
            }
            input.arrival = input.arrival.max(at);
        }
        input.next = Some(value);
        self.heap.push(Reverse((input.arrival, index)));
        Ok(())
    }

    /// The next line of all inputs and the arrival time it came at: the earliest arrival
    /// of any input that has lines left (no later line can arrive before it).
    pub fn next_line(&mut self, totals: &mut Totals) -> Result<Option<(Value, i64)>, BadInput> {
        let Some(Reverse((arrival, index))) = self.heap.pop() else {
            return Ok(None);
        };
        let value = self.inputs[index]
            .next
            .take()
            .expect("queued input has a line");
        self.advance(index, totals)?;
        Ok(Some((value, arrival)))
    }
}
