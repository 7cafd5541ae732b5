//! Processing threads: with `--threads N` (or `spec.threads`, or the cores
//! the container may use) above one, the consumer's thread only polls and
//! routes; each record goes to the thread that owns its partition
//! (`partition % N`), which decodes, transforms, scores and produces it
//! with an engine of its own. Per-key state is owned by one thread, as it
//! is by one pod, and nothing on the hot path is shared or locked.
//!
//! Order: a partition's records are processed by one thread in the order
//! they were consumed, so per-partition (and so per-key) order is kept.
//!
//! Delivery is unchanged: the consumer's thread still tracks every record
//! (`offsets::Tracker`), and a thread reports how many outputs each record
//! had once they are handed to the producer. Whatever must see every
//! consumed record finished (storing or committing offsets, a transaction's
//! commit or abort, a revocation, a halt) first waits for the threads to
//! report all the work routed to them (`Shared::quiesce`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender};
use std::thread::JoinHandle;

use rdkafka::message::{Message, OwnedMessage};
use tracing::{error, info};

use super::offsets::Token;
use super::status::Halt;
use super::{Shared, process_message};
use crate::engine::{Counts, Engine};
use crate::models::Model;

/// One record routed to a thread.
pub(super) struct Work {
    pub token: Token,
    pub msg: OwnedMessage,
}

/// What a thread is asked to do, in order.
pub(super) enum Job {
    /// Process these records.
    Records(Vec<Work>),
    /// Serve this model version from the next record on.
    Swap(Arc<Model>),
}

/// What a thread reports, once per job.
pub(super) enum Done {
    /// Per record: the outputs handed to the producer, or why processing
    /// must stop. Records after a failure in the same job are not reported
    /// (the runner halts and they are consumed again).
    Records(Vec<(Token, Result<u32, Halt>)>),
    /// The outcome of a `Swap`.
    Swapped { name: String, version: i64, result: Result<(), String> },
}

/// The consumer thread's side of the pool (kept under the state lock).
pub(super) struct PoolState {
    senders: Vec<SyncSender<Job>>,
    /// Records routed but not sent yet, per thread.
    pending: Vec<Vec<Work>>,
    results: Receiver<Done>,
    /// Jobs sent and not reported yet.
    outstanding: usize,
}

/// The threads themselves.
pub(super) struct Pool {
    handles: Vec<JoinHandle<Counts>>,
    keys: Vec<Arc<AtomicUsize>>,
}

/// Jobs a thread may have queued before the consumer thread waits: enough
/// to keep it busy, little enough to bound memory (jobs are <= 512 records).
const QUEUE: usize = 16;

/// How many processing threads: the flag, else `spec.threads`, else the
/// cores this process may use (the container's CPU limit, through its
/// cgroup, or the host's cores).
pub fn resolve_threads(flag: Option<usize>, spec: Option<i32>) -> usize {
    flag.filter(|n| *n > 0)
        .or_else(|| spec.and_then(|n| usize::try_from(n).ok()).filter(|n| *n > 0))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .min(MAX_THREADS)
}

/// The most processing threads a runner starts.
pub const MAX_THREADS: usize = 64;

impl Pool {
    /// Start `n` threads, each with an engine for `spec` built in the
    /// thread (serving `model`, if any).
    pub(super) fn start(
        n: usize,
        shared: &Arc<Shared>,
        spec: &vigil_crds::PipelineSpec,
        model: Option<Arc<Model>>,
    ) -> anyhow::Result<(Pool, PoolState)> {
        let (done_tx, results) = std::sync::mpsc::channel();
        let mut senders = Vec::with_capacity(n);
        let mut handles = Vec::with_capacity(n);
        let mut keys = Vec::with_capacity(n);
        for i in 0..n {
            let engine = Engine::with_model(spec, None, None, model.clone())
                .map_err(|e| anyhow::anyhow!("processing thread {i}: {e}"))?;
            let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
            let count = Arc::new(AtomicUsize::new(0));
            let (shared, output, done, k) =
                (shared.clone(), spec.output.name.clone(), done_tx.clone(), count.clone());
            let span = tracing::Span::current();
            let handle = std::thread::Builder::new().name(format!("process-{i}")).spawn(move || {
                let _span = span.enter();
                run_thread(&shared, engine, &output, &rx, &done, &k)
            })?;
            senders.push(tx);
            handles.push(handle);
            keys.push(count);
        }
        let pending = (0..n).map(|_| Vec::new()).collect();
        Ok((Pool { handles, keys }, PoolState { senders, pending, results, outstanding: 0 }))
    }

    /// Keys with detector state, over all threads.
    pub(super) fn detector_keys(&self) -> usize {
        self.keys.iter().map(|k| k.load(Ordering::Relaxed)).sum()
    }

    /// Wait for the threads to end (their job queues were closed) and sum
    /// what their engines did.
    pub(super) fn join(self) -> Counts {
        let mut total = Counts::default();
        for h in self.handles {
            if let Ok(c) = h.join() {
                total.records_in += c.records_in;
                total.records_out += c.records_out;
                total.anomalies += c.anomalies;
                total.dead_lettered += c.dead_lettered;
                total.filtered += c.filtered;
            }
        }
        total
    }
}

impl PoolState {
    /// Route a consumed record to the thread that owns its partition; it is
    /// sent with the next `dispatch`.
    pub(super) fn route(&mut self, work: Work) {
        let n = self.pending.len();
        let i = usize::try_from(work.msg.partition()).unwrap_or(0) % n;
        self.pending[i].push(work);
    }

    /// Send the routed records to their threads.
    pub(super) fn dispatch(&mut self) {
        for (i, batch) in self.pending.iter_mut().enumerate() {
            if batch.is_empty() {
                continue;
            }
            let job = Job::Records(std::mem::take(batch));
            if self.senders[i].send(job).is_ok() {
                self.outstanding += 1;
            }
        }
    }

    /// Ask every thread to serve `model` from its next record on.
    pub(super) fn swap(&mut self, model: &Arc<Model>) {
        self.dispatch();
        for s in &self.senders {
            if s.send(Job::Swap(model.clone())).is_ok() {
                self.outstanding += 1;
            }
        }
    }

    /// The next report: waiting for one when `wait` and work is outstanding.
    pub(super) fn next_report(&mut self, wait: bool) -> Option<Done> {
        let done = if wait && self.outstanding > 0 {
            self.results.recv().ok()
        } else {
            self.results.try_recv().ok()
        };
        if done.is_some() {
            self.outstanding -= 1;
        }
        done
    }

    /// Close the job queues: the threads end once they are empty.
    pub(super) fn close(&mut self) {
        self.senders.clear();
    }
}

fn run_thread(
    shared: &Arc<Shared>,
    mut engine: Engine,
    output: &str,
    jobs: &Receiver<Job>,
    done: &Sender<Done>,
    keys: &AtomicUsize,
) -> Counts {
    let work = std::panic::AssertUnwindSafe(|| {
        let mut last = engine.counts();
        while let Ok(job) = jobs.recv() {
            let report = match job {
                Job::Records(batch) => {
                    let mut out = Vec::with_capacity(batch.len());
                    for w in &batch {
                        let r = process_message(shared, w.token, &mut engine, &w.msg, output);
                        let failed = r.is_err();
                        out.push((w.token, r));
                        if failed {
                            break;
                        }
                    }
                    last = shared.count(&engine, last);
                    keys.store(engine.detector().map_or(0, |d| d.keys().0), Ordering::Relaxed);
                    Done::Records(out)
                }
                Job::Swap(model) => {
                    let (name, version) = (model.artifact.metadata.model.clone(), model.version());
                    Done::Swapped { name, version, result: engine.swap_model(model) }
                }
            };
            if done.send(report).is_err() {
                break;
            }
        }
        engine.counts()
    });
    match std::panic::catch_unwind(work) {
        Ok(counts) => counts,
        Err(_) => {
            // The consumer thread would wait for this thread's report
            // forever; exit as a crash would, committing nothing more.
            error!("A processing thread panicked; exiting so that the runner restarts");
            std::process::exit(70);
        }
    }
}

/// Log what the runner will use.
pub(super) fn announce(n: usize) {
    if n > 1 {
        info!(threads = n, "Processing partitions on {n} threads (partition % {n})");
    }
}
