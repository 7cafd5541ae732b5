//! Re-checks of Ready Pipelines for what no Kubernetes watch reports:
//! topics changed in Kafka behind Vigil's back, and consumer lag.
//!
//! A full reconcile applies every child and reads the Secret; doing that
//! for each Pipeline every `--refresh-interval` kept an idle operator busy.
//! Instead the last successful reconcile leaves what a re-check needs
//! (`Recheck`), and each interval the topics are described and planned and
//! the lag measured; only a Pipeline where something differs is reconciled.
//! Every `FULL_RESYNC_EVERY` intervals a Pipeline is reconciled anyway, which
//! picks up what neither check sees (a rotated Kafka Secret).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::runtime::reflector::ObjectRef;
use tracing::{debug, info};
use vigil_crds::pipeline::{TopicRole, TopicStatus};
use vigil_crds::{Pipeline, TopicSpec};

use super::topics;
use crate::context::Context;
use crate::kafka::Kafka;

/// A Pipeline is fully reconciled at least once per this many intervals.
pub const FULL_RESYNC_EVERY: u32 = 10;

/// How many Pipelines are re-checked at once.
const CONCURRENCY: usize = 4;

/// What the last successful reconcile of a Ready Pipeline saw.
#[derive(Clone)]
pub struct Recheck {
    /// The Pipeline, for triggering its reconcile.
    pub pipeline: ObjectRef<Pipeline>,
    /// The admin connection it used.
    pub kafka: Arc<Kafka>,
    /// The topics as they should be, and the status each had.
    pub topics: Vec<(TopicRole, TopicSpec, TopicStatus)>,
    /// The runners' consumer group and input topic.
    pub group: String,
    /// The consumer lag the status reports.
    pub lag: Option<i64>,
    /// When it was last checked (or reconciled).
    pub checked: Instant,
    /// Checks since the last full reconcile.
    pub checks: u32,
}

/// Why a Pipeline needs a reconcile, if it does.
async fn differs(r: &Recheck, ctx: &Context, key: &str) -> Option<String> {
    for (role, spec, seen) in &r.topics {
        let observed = match r.kafka.describe(&spec.name).await {
            Ok(o) => o,
            Err(e) => return Some(format!("topic {}: {e}", spec.name)),
        };
        let plan = topics::plan(*role, spec, observed.as_ref());
        if !plan.actions.is_empty() {
            return Some(format!("topic {} changed in Kafka: {:?}", spec.name, plan.actions));
        }
        let now = topics::status(&plan, observed.as_ref().map(|o| o.partitions));
        if &now != seen {
            return Some(format!("topic {} is now {now:?}", spec.name));
        }
    }
    let input = r.topics.iter().find(|(role, ..)| *role == TopicRole::Input)?;
    let partitions = input.2.partitions.unwrap_or(input.1.partitions);
    match r.kafka.lag(&r.group, &input.1.name, partitions).await {
        Ok(lag) => {
            ctx.set_lag(key, lag);
            (Some(lag) != r.lag).then(|| format!("consumer lag is now {lag}"))
        }
        // The status keeps the last value. Not a reason to reconcile: lag can
        // fail for one group (its coordinator loading, ACLs) while the rest
        // of the cluster is fine, and a client that lost the cluster fails
        // the topic checks above as well.
        Err(e) => {
            debug!(pipeline = %key, error = %e, "Could not measure consumer lag");
            None
        }
    }
}

/// Every second, re-check the Pipelines whose interval has passed; send
/// the ones that need a reconcile to `trigger`.
pub async fn run(
    ctx: Arc<Context>,
    interval: Duration,
    trigger: futures::channel::mpsc::UnboundedSender<ObjectRef<Pipeline>>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let due = ctx.rechecks_due(interval);
        futures::stream::iter(due)
            .for_each_concurrent(CONCURRENCY, |(key, r)| {
                let (ctx, trigger) = (ctx.clone(), trigger.clone());
                async move {
                    let why = if r.checks + 1 >= FULL_RESYNC_EVERY {
                        Some("periodic full reconcile".to_string())
                    } else {
                        differs(&r, &ctx, &key).await
                    };
                    match why {
                        Some(why) => {
                            info!(pipeline = %key, reason = %why, "Re-check: reconciling");
                            ctx.forget_recheck(&key);
                            let _ = trigger.unbounded_send(r.pipeline.clone());
                        }
                        None => ctx.rechecked(&key),
                    }
                }
            })
            .await;
    }
}
