//! Which input offsets may be committed: an offset is done when every
//! output and dead-letter record derived from it has been acknowledged by
//! the broker, and a partition's committable position is the offset after
//! its longest done prefix. This is what makes delivery at-least-once: a
//! crash can only lose unacknowledged work, whose offsets were never stored.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Identifies one input record while its outputs are in flight; passed to
/// the producer as the delivery opaque. The low 32 bits index a slot, the
/// high 32 bits are the slot's generation, so a late acknowledgement for a
/// slot that was released and reused is recognised and ignored.
pub type Token = usize;

#[derive(Debug, Clone, Copy)]
struct Slot {
    partition: i32,
    offset: i64,
    /// Outputs handed to the producer minus acknowledgements. It can go
    /// below zero for a while with several processing threads: an output's
    /// acknowledgement can be applied before the thread's count of the
    /// outputs it sent (`dispatched_with`).
    pending: i64,
    dispatched: bool,
    live: bool,
    generation: u32,
    started: Instant,
}

fn index(token: Token) -> usize {
    token & 0xffff_ffff
}

fn token(index: usize, generation: u32) -> Token {
    ((generation as usize) << 32) | index
}

/// Per-partition progress of in-flight records.
#[derive(Debug, Default)]
pub struct Tracker {
    slots: Vec<Slot>,
    free: Vec<Token>,
    /// Slot indices per partition, in consumption order.
    order: HashMap<i32, VecDeque<usize>>,
    in_flight: usize,
}

impl Tracker {
    /// Start tracking a consumed record, consumed at `now` (the caller reads
    /// the clock once per batch, not per record).
    pub fn begin_at(&mut self, partition: i32, offset: i64, now: Instant) -> Token {
        let mut slot = Slot {
            partition,
            offset,
            pending: 0,
            dispatched: false,
            live: true,
            generation: 0,
            started: now,
        };
        let i = match self.free.pop() {
            Some(i) => {
                slot.generation = self.slots[i].generation.wrapping_add(1);
                self.slots[i] = slot;
                i
            }
            None => {
                self.slots.push(slot);
                self.slots.len() - 1
            }
        };
        self.order.entry(partition).or_default().push_back(i);
        self.in_flight += 1;
        token(i, slot.generation)
    }

    /// `begin_at` now.
    #[cfg(test)]
    pub fn begin(&mut self, partition: i32, offset: i64) -> Token {
        self.begin_at(partition, offset, Instant::now())
    }

    fn slot(&mut self, t: Token) -> Option<&mut Slot> {
        self.slots.get_mut(index(t)).filter(|s| s.live && token(index(t), s.generation) == t)
    }

    /// An output of the record was handed to the producer.
    pub fn add_output(&mut self, t: Token) {
        if let Some(s) = self.slot(t) {
            s.pending += 1;
        }
    }

    /// The input partition and offset of a record still tracked.
    pub fn source(&mut self, t: Token) -> Option<(i32, i64)> {
        self.slot(t).map(|s| (s.partition, s.offset))
    }

    /// Every output of the record has been handed to the producer.
    pub fn dispatched(&mut self, t: Token) {
        if let Some(s) = self.slot(t) {
            s.dispatched = true;
        }
    }

    /// The record was processed and its `outputs` handed to the producer
    /// (`add_output` that many times, then `dispatched`).
    pub fn dispatched_with(&mut self, t: Token, outputs: u32) {
        if let Some(s) = self.slot(t) {
            s.pending += i64::from(outputs);
            s.dispatched = true;
        }
    }

    /// The broker acknowledged one output. Unknown tokens (a partition that
    /// was revoked meanwhile) are ignored.
    pub fn ack(&mut self, t: Token) {
        if let Some(s) = self.slot(t) {
            s.pending -= 1;
        }
    }

    /// Records consumed but not yet done.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Partitions whose done prefix grew, with the offset to commit (the
    /// next one to read). Done slots are released; `done` gets how long each
    /// took from `begin` to now.
    pub fn committable_timed(&mut self, mut done: impl FnMut(Duration)) -> Vec<(i32, i64)> {
        let mut out = Vec::new();
        for (partition, queue) in self.order.iter_mut() {
            let mut next = None;
            while let Some(&t) = queue.front() {
                let s = self.slots[t];
                if !(s.dispatched && s.pending == 0) {
                    break;
                }
                queue.pop_front();
                done(s.started.elapsed());
                self.slots[t].live = false;
                self.free.push(t);
                self.in_flight -= 1;
                next = Some(s.offset + 1);
            }
            if let Some(n) = next {
                out.push((*partition, n));
            }
        }
        out.sort_unstable();
        out
    }

    /// `committable_timed` without the timings.
    #[cfg(test)]
    pub fn committable(&mut self) -> Vec<(i32, i64)> {
        self.committable_timed(|_| {})
    }

    /// Forget every partition (the consumer was replaced).
    pub fn forget_all(&mut self) {
        let partitions: Vec<i32> = self.order.keys().copied().collect();
        for p in partitions {
            self.forget(p);
        }
    }

    /// Forget a partition (revoked): its unfinished records will be consumed
    /// again by whoever owns it next.
    pub fn forget(&mut self, partition: i32) {
        if let Some(queue) = self.order.remove(&partition) {
            for t in queue {
                self.slots[t].live = false;
                self.free.push(t);
                self.in_flight -= 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_only_the_acknowledged_prefix() {
        let mut t = Tracker::default();
        let a = t.begin(0, 10);
        t.add_output(a);
        t.add_output(a); // output + dead letter
        t.dispatched(a);
        let b = t.begin(0, 11);
        t.add_output(b);
        t.dispatched(b);
        let c = t.begin(0, 13); // offsets need not be contiguous
        t.dispatched(c); // filtered: no outputs
        t.ack(b);
        assert_eq!(t.committable(), vec![], "10 is still waiting for its acks");
        t.ack(a);
        assert_eq!(t.committable(), vec![], "one of 10's two outputs is still in flight");
        t.ack(a);
        assert_eq!(t.committable(), vec![(0, 14)]);
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn partitions_progress_independently_and_revoked_ones_are_forgotten() {
        let mut t = Tracker::default();
        let a = t.begin(0, 5);
        let b = t.begin(1, 7);
        t.add_output(a);
        t.dispatched(a);
        t.dispatched(b);
        assert_eq!(t.committable(), vec![(1, 8)]);
        t.forget(0);
        t.ack(a); // late ack for a revoked partition: ignored
        assert_eq!(t.committable(), vec![]);
        assert_eq!(t.in_flight(), 0);
        // Slots are reused, and a stale token cannot touch the new owner.
        let c = t.begin(2, 1);
        assert!(index(c) <= 1, "slot {c} reused");
        t.add_output(c);
        t.dispatched(c);
        t.ack(a);
        t.ack(b);
        assert_eq!(t.committable(), vec![], "stale acks were ignored");
        t.ack(c);
        assert_eq!(t.committable(), vec![(2, 2)]);
    }

    #[test]
    fn acknowledgements_may_arrive_before_a_processing_thread_reports_its_outputs() {
        let mut t = Tracker::default();
        let a = t.begin(0, 1);
        let b = t.begin(0, 2);
        // A thread sent two outputs of a; one is acknowledged before the
        // thread's report reaches the tracker.
        t.ack(a);
        assert_eq!(t.committable(), vec![], "not done before it is dispatched");
        t.dispatched_with(a, 2);
        assert_eq!(t.committable(), vec![], "one output is still in flight");
        t.ack(a);
        assert_eq!(t.committable(), vec![(0, 2)]);
        t.dispatched_with(b, 0);
        assert_eq!(t.committable(), vec![(0, 3)]);
    }

    #[test]
    fn a_replaced_consumer_leaves_nothing_in_flight() {
        let mut t = Tracker::default();
        let a = t.begin(0, 3);
        t.add_output(a);
        t.dispatched(a);
        let b = t.begin(1, 9);
        t.dispatched(b);
        t.forget_all();
        assert_eq!(t.in_flight(), 0);
        t.ack(a);
        assert_eq!(t.committable(), vec![], "nothing is committable for forgotten partitions");
    }
}
