//! The slot sweep's question to the kernel (which candidates' sockets still exist, see
//! `kernel::sockdiag`), asked on a thread of its own. The collector's loop also drains the
//! ring buffer: listing a namespace of 100,000 sockets takes ~0.2 s, and up to 64 namespaces
//! are asked per sweep, so asking on the loop would stall the drain for seconds on a busy
//! node (a 4 MiB ring fills in well under a second of churn) and lose events. The loop
//! starts the question and goes on; a later housekeeping tick takes the answer, if it has
//! come, and drops the slots it condemns. One question at a time: a sweep that falls due
//! while one is still out waits for the next.

use std::thread::JoinHandle;

pub use crate::kernel::sockdiag::{Alive, Candidate};

/// A question out, if any.
#[derive(Default)]
pub struct SlotQuery {
    out: Option<Out>,
}

enum Out {
    Asking(JoinHandle<(Vec<Candidate>, Alive)>),
    /// No thread could be made: answered at once, with no namespace asked.
    Unasked(Vec<Candidate>),
}

impl SlotQuery {
    /// Whether a question is out (answered or not): a new sweep waits for it.
    pub fn busy(&self) -> bool {
        self.out.is_some()
    }

    /// Asks `ask` about `candidates` on a new thread and returns at once. Where no thread
    /// can be made, the answer is empty (no namespace could be asked): the sweep then keeps
    /// to its time rule, as for a namespace it cannot enter.
    pub fn ask<F>(&mut self, candidates: Vec<Candidate>, ask: F)
    where
        F: FnOnce(&[Candidate]) -> Alive + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("slot-sweep".to_owned())
            .spawn(move || {
                let candidates: Vec<Candidate> = rx.recv().unwrap_or_default();
                let alive = ask(&candidates);
                (candidates, alive)
            });
        match spawned {
            Ok(handle) => {
                // The receiver lives until it has received: this cannot fail.
                let _ = tx.send(candidates);
                self.out = Some(Out::Asking(handle));
            }
            Err(e) => {
                tracing::warn!(
                    "slot sweep: could not start the thread that asks the kernel which \
                     sockets still exist ({e}); silent slots are judged by time alone this time"
                );
                self.out = Some(Out::Unasked(candidates));
            }
        }
    }

    /// The answer to the question out, once it has come (never waits).
    pub fn answer(&mut self) -> Option<(Vec<Candidate>, Alive)> {
        if let Some(Out::Asking(handle)) = &self.out
            && !handle.is_finished()
        {
            return None;
        }
        let handle = match self.out.take()? {
            Out::Asking(handle) => handle,
            Out::Unasked(candidates) => return Some((candidates, Alive::new())),
        };
        match handle.join() {
            Ok(answer) => Some(answer),
            Err(_) => {
                tracing::warn!(
                    "slot sweep: the thread asking the kernel which sockets still exist \
                     failed; its candidates wait for the next sweep"
                );
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use super::*;

    /// Polls `answer` until it comes (at most 5 s).
    fn wait(query: &mut SlotQuery) -> Option<(Vec<Candidate>, Alive)> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(answer) = query.answer() {
                return Some(answer);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }

    #[test]
    fn asking_returns_at_once_while_the_kernel_is_still_being_asked_and_the_answer_comes_later() {
        let mut query = SlotQuery::default();
        let (release, released) = mpsc::channel::<()>();
        let (told, heard) = mpsc::channel::<bool>();
        // The question blocks until the test releases it (or 5 s pass): a sweep that asked
        // on the caller's thread would not return before it is released.
        query.ask(
            vec![(7, 1, (10, 10)), (8, 1, (10, 10))],
            move |candidates| {
                let was_released = released.recv_timeout(Duration::from_secs(5)).is_ok();
                let _ = told.send(was_released);
                let mut alive = Alive::new();
                alive.insert(
                    1,
                    candidates.iter().map(|c| c.0).filter(|k| *k == 8).collect(),
                );
                alive
            },
        );
        assert!(query.busy());
        assert!(
            query.answer().is_none(),
            "no answer before the kernel answered"
        );
        release.send(()).unwrap();
        assert!(
            heard.recv().unwrap(),
            "the question was still out when asking returned"
        );
        let (candidates, alive) = wait(&mut query).expect("the answer comes");
        assert_eq!(candidates.len(), 2);
        assert_eq!(alive[&1], HashSet::from([8]));
        assert!(!query.busy(), "taking the answer ends the question");
        assert!(query.answer().is_none(), "an answer is taken once");
    }

    #[test]
    fn a_question_that_fails_loses_no_more_than_that_sweep() {
        let mut query = SlotQuery::default();
        query.ask(vec![(7, 1, (10, 10))], |_| {
            panic!("sock_diag thread failed")
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        while query.busy() && Instant::now() < deadline {
            assert!(query.answer().is_none());
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            !query.busy(),
            "a failed question is over; the next sweep may ask again"
        );
        query.ask(vec![(9, 2, (1, 1))], |_| Alive::new());
        assert!(wait(&mut query).is_some());
    }
}
