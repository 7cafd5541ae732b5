//! Autoscaling on consumer lag (`spec.scaling`), pure: what the replicas
//! should be, given the lag just measured, the replicas now and the
//! recommendations of the stabilisation windows.
//!
//! As the HorizontalPodAutoscaler does: each measurement gives a
//! recommendation, `ceil(lag / targetLagPerReplica)` clamped to the bounds;
//! the replicas go up to the lowest recommendation of the scale-up window
//! and down to the highest of the scale-down window. So a burst shorter
//! than the scale-up window, or a lull shorter than the scale-down window,
//! moves nothing. The recommendations are kept in memory: an operator that
//! restarts begins with the current replicas as the only recommendation,
//! so it waits a whole scale-down window before scaling down.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use vigil_crds::ScalingSpec;
use vigil_crds::duration::parse_duration;

/// How often the lag of an autoscaled Pipeline is measured and its
/// replicas decided (at most; the operator's refresh interval if shorter).
pub const INTERVAL: Duration = Duration::from_secs(15);

/// The recommendations of one Pipeline, newest last, and the replicas
/// found running when the first was made (which count against scaling
/// down, not against scaling up).
#[derive(Debug, Clone, Default)]
pub struct History {
    recommendations: VecDeque<(Instant, i32)>,
    found: Option<(Instant, i32)>,
}

/// What to run, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Runner pods wanted.
    pub replicas: i32,
    /// The fewest runners that keep the Pipeline Ready: `minReplicas`
    /// (capped at the partitions). A scale-up in progress is not an outage.
    pub min: i32,
    /// Whether the input partitions held the replicas (or the
    /// recommendation) below what the lag asks for.
    pub capped_by_partitions: bool,
    /// The `Autoscaling` condition: (status, reason, message).
    pub ok: bool,
    /// Reason of the condition.
    pub reason: &'static str,
    /// Message of the condition, and of the Event when the replicas change.
    pub message: String,
}

/// What the replicas should be now. `current` is what runs (the last
/// status), `lag` the consumer lag just measured (`None`: unknown), and
/// `partitions` the input topic's.
pub fn decide(
    spec: &ScalingSpec,
    partitions: i32,
    current: Option<i32>,
    lag: Option<i64>,
    history: &mut History,
    now: Instant,
) -> Decision {
    let partitions = partitions.max(1);
    let max = spec.max_replicas.min(partitions).max(1);
    let min = spec.min_replicas.clamp(1, max);
    // Bounds changed in the spec apply at once.
    let started = current.is_none();
    let current = current.unwrap_or(min).clamp(min, max);
    let up = parse_duration(&spec.scale_up_stabilization).unwrap_or(Duration::ZERO);
    let down = parse_duration(&spec.scale_down_stabilization).unwrap_or(Duration::from_secs(300));
    if history.found.is_none() {
        history.found = Some((now, current));
    }
    let Some(lag) = lag else {
        return Decision {
            replicas: current,
            min,
            capped_by_partitions: false,
            ok: false,
            reason: "LagUnknown",
            message: format!("the consumer lag could not be measured yet; keeping {current} runner(s)"),
        };
    };
    let target = spec.target_lag_per_replica.max(1);
    let wanted = i32::try_from(lag.max(0).saturating_add(target - 1) / target).unwrap_or(i32::MAX);
    let recommendation = wanted.clamp(min, max);
    let recs = &mut history.recommendations;
    recs.push_back((now, recommendation));
    let keep = up.max(down);
    while recs.len() > 1 && recs.front().is_some_and(|(t, _)| now.duration_since(*t) > keep) {
        recs.pop_front();
    }
    let within = |w: Duration| recs.iter().filter(move |(t, _)| now.duration_since(*t) <= w).map(|(_, r)| *r);
    let up_to = within(up).min().unwrap_or(recommendation);
    let found = history.found.filter(|(t, _)| now.duration_since(*t) < down).map(|(_, r)| r);
    let down_to = within(down).chain(found).max().unwrap_or(recommendation);
    let replicas = if current < up_to {
        up_to
    } else if current > down_to {
        down_to
    } else {
        current
    };

    let basis = format!("consumer lag {lag}, target {target} per runner");
    let capped_by_partitions = wanted > partitions && spec.max_replicas > partitions;
    let (reason, message) = if started {
        let why = if replicas > min { "ScaledUp" } else { "AtTarget" };
        (why, format!("starting with {replicas} runner(s): {basis}"))
    } else if replicas > current {
        ("ScaledUp", format!("scaled up from {current} to {replicas} runners: {basis}"))
    } else if replicas < current {
        ("ScaledDown", format!("scaled down from {current} to {replicas} runners: {basis}"))
    } else if recommendation != current {
        let window = if recommendation > current {
            &spec.scale_up_stabilization
        } else {
            &spec.scale_down_stabilization
        };
        (
            "Stabilizing",
            format!("{basis} asks for {recommendation} runners; keeping {current} until it has for {window}"),
        )
    } else if capped_by_partitions {
        (
            "LimitedByPartitions",
            format!(
                "{basis} asks for {wanted} runners; running {replicas}, one per input partition (grow spec.input.topic.partitions to use more)"
            ),
        )
    } else if wanted > spec.max_replicas {
        (
            "LimitedByMaxReplicas",
            format!("{basis} asks for {wanted} runners; running maxReplicas ({replicas})"),
        )
    } else {
        ("AtTarget", format!("{replicas} runner(s) for {basis}"))
    };
    Decision { replicas, min, capped_by_partitions, ok: true, reason, message }
}

/// The decision while the Pipeline is paused: pausing wins.
pub fn paused() -> Decision {
    Decision {
        replicas: 0,
        min: 0,
        capped_by_partitions: false,
        ok: false,
        reason: "Paused",
        message: "paused: runners scaled to zero whatever the lag".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(min: i32, max: i32, target: i64, up: &str, down: &str) -> ScalingSpec {
        ScalingSpec {
            min_replicas: min,
            max_replicas: max,
            target_lag_per_replica: target,
            scale_up_stabilization: up.into(),
            scale_down_stabilization: down.into(),
        }
    }

    fn at(t0: Instant, s: u64) -> Instant {
        t0 + Duration::from_secs(s)
    }

    #[test]
    fn backlog_scales_up_at_once_and_down_only_after_the_window() {
        let s = spec(1, 8, 1000, "0s", "60s");
        let t0 = Instant::now();
        let mut h = History::default();
        let d = decide(&s, 8, Some(1), Some(4500), &mut h, t0);
        assert_eq!((d.replicas, d.reason), (5, "ScaledUp"), "{d:?}");
        assert!(d.message.contains("from 1 to 5"), "{}", d.message);
        // Drained: the lower recommendation must hold for 60 s.
        let d = decide(&s, 8, Some(5), Some(0), &mut h, at(t0, 15));
        assert_eq!((d.replicas, d.reason), (5, "Stabilizing"), "{d:?}");
        let d = decide(&s, 8, Some(5), Some(0), &mut h, at(t0, 50));
        assert_eq!(d.replicas, 5);
        let d = decide(&s, 8, Some(5), Some(0), &mut h, at(t0, 76));
        assert_eq!((d.replicas, d.reason), (1, "ScaledDown"), "{d:?}");
        let d = decide(&s, 8, Some(1), Some(0), &mut h, at(t0, 90));
        assert_eq!((d.replicas, d.reason), (1, "AtTarget"), "{d:?}");
    }

    #[test]
    fn a_short_burst_does_not_scale_up_within_the_up_window() {
        let s = spec(1, 8, 1000, "30s", "5m");
        let t0 = Instant::now();
        let mut h = History::default();
        assert_eq!(decide(&s, 8, Some(1), Some(0), &mut h, t0).replicas, 1);
        let d = decide(&s, 8, Some(1), Some(6000), &mut h, at(t0, 10));
        assert_eq!((d.replicas, d.reason), (1, "Stabilizing"), "{d:?}");
        // The burst is over before 30 s have passed: nothing moved.
        assert_eq!(decide(&s, 8, Some(1), Some(200), &mut h, at(t0, 25)).replicas, 1);
        // A sustained backlog scales up once the window holds only high ones.
        for t in [45, 60] {
            decide(&s, 8, Some(1), Some(6000), &mut h, at(t0, t));
        }
        let d = decide(&s, 8, Some(1), Some(6000), &mut h, at(t0, 76));
        assert_eq!((d.replicas, d.reason), (6, "ScaledUp"), "{d:?}");
    }

    #[test]
    fn bounds_and_the_partition_cap_hold() {
        let t0 = Instant::now();
        // maxReplicas binds.
        let d = decide(&spec(2, 4, 100, "0s", "0s"), 12, Some(2), Some(100_000), &mut History::default(), t0);
        assert_eq!(d.replicas, 4);
        let d = decide(&spec(2, 4, 100, "0s", "0s"), 12, Some(4), Some(100_000), &mut History::default(), t0);
        assert_eq!((d.replicas, d.reason), (4, "LimitedByMaxReplicas"), "{d:?}");
        // The partitions bind before maxReplicas does.
        let d = decide(&spec(1, 10, 100, "0s", "0s"), 3, Some(3), Some(100_000), &mut History::default(), t0);
        assert_eq!((d.replicas, d.reason, d.capped_by_partitions), (3, "LimitedByPartitions", true), "{d:?}");
        // minReplicas holds with no lag at all.
        let d = decide(&spec(2, 4, 100, "0s", "0s"), 12, Some(3), Some(0), &mut History::default(), t0);
        assert_eq!(d.replicas, 2);
        // A minimum above the partitions is capped too.
        let d = decide(&spec(5, 8, 100, "0s", "0s"), 2, None, Some(0), &mut History::default(), t0);
        assert_eq!(d.replicas, 2);
    }

    #[test]
    fn unknown_lag_keeps_the_replicas() {
        let d =
            decide(&spec(1, 8, 100, "0s", "0s"), 8, Some(3), None, &mut History::default(), Instant::now());
        assert_eq!((d.replicas, d.ok, d.reason), (3, false, "LagUnknown"));
    }

    #[test]
    fn a_restarted_operator_waits_a_whole_window_before_scaling_down() {
        let s = spec(1, 8, 1000, "0s", "60s");
        let t0 = Instant::now();
        let mut h = History::default();
        // The first decision after a restart sees 4 running and no lag.
        assert_eq!(decide(&s, 8, Some(4), Some(0), &mut h, t0).replicas, 4);
        assert_eq!(decide(&s, 8, Some(4), Some(0), &mut h, at(t0, 59)).replicas, 4);
        assert_eq!(decide(&s, 8, Some(4), Some(0), &mut h, at(t0, 61)).replicas, 1);
    }
}
