//! The status a Pipeline reports, computed from what was observed (pure).
//!
//! Conditions: `TopicsReady` (every topic exists as specified),
//! `RunnersReady` (the Deployment's ready pods, not its existence),
//! `ModelReady` (only with `detector.modelRef`), `ReplicasCapped`,
//! `Autoscaling` (only with `spec.scaling`; informational, as
//! `ReplicasCapped` is), and
//! `Ready` (all of them). A condition's `lastTransitionTime` changes only
//! when its status does.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use vigil_crds::condition::{FALSE, TRUE, UNKNOWN};
use vigil_crds::pipeline::{PipelinePhase, PipelineStatus, TopicStatus};

/// Everything a status is computed from.
#[derive(Debug, Clone, Default)]
pub struct Observation {
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// Why the spec is invalid, if it is (permanent until it changes).
    pub invalid: Option<(String, String)>,
    /// Topic states, when Kafka could be asked.
    pub topics: Vec<TopicStatus>,
    /// Why topics are not as specified: (reason, message).
    pub topics_problem: Option<(String, String)>,
    /// Runner pods wanted.
    pub replicas: i32,
    /// Whether `replicas` was capped at the input partitions.
    pub capped: bool,
    /// Ready and up-to-date runner pods.
    pub ready_replicas: Option<i32>,
    /// Whether the Deployment controller has seen the latest Deployment spec.
    pub rollout_current: bool,
    /// Consumer lag, when measured.
    pub lag: Option<i64>,
    /// Paused on request.
    pub paused: bool,
    /// With a modelRef: (ready, reason, message).
    pub model: Option<(bool, String, String)>,
    /// The model version the ready runners report serving (the lowest when
    /// they differ, mid-switch).
    pub model_version: Option<i64>,
    /// The runner config hash rolled out.
    pub config_hash: Option<String>,
    /// Why runners are not ready, from their pods (`runners::diagnose`).
    pub runner_problem: Option<super::runners::Problem>,
    /// With `spec.storage`: the history component's state.
    pub history: Option<super::runners::HistoryState>,
    /// With `spec.scaling`: what the autoscaler decided.
    pub scaling: Option<super::scaling::Decision>,
    /// When the autoscaler changed the replicas in this reconcile.
    pub scaled_at: Option<Time>,
    /// The runner pods' label selector.
    pub selector: Option<String>,
}

fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok { TRUE } else { FALSE }.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: now.clone(),
    }
}

/// Keep the previous transition time when the status did not change.
fn carry_over(mut conditions: Vec<Condition>, previous: &[Condition]) -> Vec<Condition> {
    for c in &mut conditions {
        if let Some(p) = previous.iter().find(|p| p.type_ == c.type_ && p.status == c.status) {
            c.last_transition_time = p.last_transition_time.clone();
        }
    }
    conditions
}

/// The status for `obs`, given the previous one.
pub fn compute(obs: &Observation, previous: Option<&PipelineStatus>, now: Time) -> PipelineStatus {
    let g = obs.generation;
    let prev = previous.map(|p| p.conditions.as_slice()).unwrap_or_default();
    let mut conditions = Vec::new();
    let phase;
    if let Some((reason, message)) = &obs.invalid {
        conditions.push(condition("Ready", false, reason, message.clone(), g, &now));
        let mut status = previous.cloned().unwrap_or_default();
        status.observed_generation = g;
        status.phase = Some(PipelinePhase::Failed);
        status.conditions = carry_over(conditions, prev);
        return status;
    }

    let topics_ok = obs.topics_problem.is_none() && !obs.topics.is_empty();
    conditions.push(match &obs.topics_problem {
        Some((reason, message)) => condition("TopicsReady", false, reason, message.clone(), g, &now),
        None if topics_ok => condition(
            "TopicsReady",
            true,
            "TopicsReady",
            "input, output and dead-letter topics exist as specified".into(),
            g,
            &now,
        ),
        None => Condition {
            status: UNKNOWN.into(),
            ..condition("TopicsReady", false, "Pending", "topics not checked yet".into(), g, &now)
        },
    });

    let ready = obs.ready_replicas.unwrap_or(0);
    // Autoscaled: the runners added by a scale-up are on their way, and the
    // Pipeline is serving as long as minReplicas are ready.
    let needed = match &obs.scaling {
        Some(d) if d.ok => obs.replicas.min(d.min.max(1)),
        _ => obs.replicas,
    };
    let runners_ok = obs.rollout_current && ready >= needed;
    conditions.push(if obs.paused {
        condition(
            "RunnersReady",
            true,
            "Paused",
            "paused: runners scaled to zero, topics and offsets kept".into(),
            g,
            &now,
        )
    } else if runners_ok {
        condition(
            "RunnersReady",
            true,
            "RunnersReady",
            format!("{ready}/{} runners ready", obs.replicas),
            g,
            &now,
        )
    } else if let Some(problem) = &obs.runner_problem {
        condition(
            "RunnersReady",
            false,
            &problem.reason,
            format!("{ready}/{} runners ready; {}", obs.replicas, problem.message),
            g,
            &now,
        )
    } else if !obs.rollout_current {
        condition(
            "RunnersReady",
            false,
            "RollingOut",
            format!("rolling out the runners ({ready}/{} ready)", obs.replicas),
            g,
            &now,
        )
    } else {
        condition(
            "RunnersReady",
            false,
            "RunnersNotReady",
            format!("{ready}/{} runners ready", obs.replicas),
            g,
            &now,
        )
    });

    conditions.push(if obs.capped {
        condition(
            "ReplicasCapped",
            true,
            "MoreReplicasThanPartitions",
            format!("running {} runners, one per input partition; more would idle (grow spec.input.topic.partitions to use more)", obs.replicas),
            g,
            &now,
        )
    } else {
        condition("ReplicasCapped", false, "WithinPartitions", "one runner or fewer per input partition".into(), g, &now)
    });

    if let Some(d) = &obs.scaling {
        conditions.push(condition("Autoscaling", d.ok, d.reason, d.message.clone(), g, &now));
    }

    let model_ok = match &obs.model {
        Some((ok, reason, message)) => {
            conditions.push(condition("ModelReady", *ok, reason, message.clone(), g, &now));
            *ok
        }
        None => true,
    };

    // A starting history component is reported but does not hold up Ready
    // (records flow without it); a failing one (full volume, crash loop)
    // makes the Pipeline not Ready.
    let history_ok = match &obs.history {
        Some(h) => {
            conditions.push(condition("HistoryReady", h.ready, &h.reason, h.message.clone(), g, &now));
            h.ready || !h.failing
        }
        None => true,
    };

    let all = topics_ok && (runners_ok || obs.paused) && model_ok && history_ok;
    let (reason, message) = if all {
        if obs.paused {
            ("Paused", "paused on request".to_string())
        } else {
            ("Ready", "the pipeline is running".to_string())
        }
    } else {
        let first_false = conditions
            .iter()
            .find(|c| c.status != TRUE && !matches!(c.type_.as_str(), "ReplicasCapped" | "Autoscaling"));
        match first_false {
            Some(c) => (c.reason.as_str(), format!("{}: {}", c.type_, c.message)),
            None => ("Pending", "waiting".into()),
        }
    };
    conditions.push(condition("Ready", all, reason, message, g, &now));

    phase = if all {
        if obs.paused { PipelinePhase::Paused } else { PipelinePhase::Running }
    } else if (obs.topics_problem.is_some() || obs.runner_problem.is_some()) && !obs.topics.is_empty() {
        PipelinePhase::Degraded
    } else if obs.topics.is_empty() || obs.ready_replicas.is_none() {
        PipelinePhase::Provisioning
    } else if ready > 0 {
        PipelinePhase::Degraded
    } else {
        PipelinePhase::Provisioning
    };

    PipelineStatus {
        observed_generation: g,
        phase: Some(phase),
        conditions: carry_over(conditions, prev),
        topics: obs.topics.clone(),
        replicas: Some(obs.replicas),
        ready_replicas: obs.ready_replicas,
        consumer_lag: obs.lag.or_else(|| previous.and_then(|p| p.consumer_lag)),
        model_version: obs.model_version.or_else(|| previous.and_then(|p| p.model_version)),
        config_hash: obs.config_hash.clone(),
        selector: obs.selector.clone().or_else(|| previous.and_then(|p| p.selector.clone())),
        last_scale_time: obs.scaled_at.clone().or_else(|| previous.and_then(|p| p.last_scale_time.clone())),
    }
}

/// Condition types whose status differs between two statuses, with the new
/// condition: what Events are emitted for.
/// The conditions that changed and deserve an Event. Left out: a
/// condition's first appearance in a state every new Pipeline passes
/// through (runners starting or rolling out, topics not checked yet),
/// `ReplicasCapped` saying nothing is capped, and what the `Ready` Event of
/// the same change already says (Ready turning True says every other
/// condition holds; Ready turning False names the condition that does not,
/// with its reason and message). A healthy start then reads TopicsReady and
/// Ready turning True, with no Warnings; and a burst of new Pipelines costs
/// the API server a third of the Events it once did.
pub fn eventful<'a>(old: Option<&PipelineStatus>, new: &'a PipelineStatus) -> Vec<&'a Condition> {
    let changes: Vec<&Condition> = changed(old, new)
        .into_iter()
        .filter(|c| {
            let first = !old.is_some_and(|o| o.conditions.iter().any(|p| p.type_ == c.type_));
            let expected_start = first
                && c.status != TRUE
                && matches!(c.reason.as_str(), "RunnersNotReady" | "RollingOut" | "Pending");
            let nothing_capped = c.type_ == "ReplicasCapped" && c.status != TRUE;
            !(expected_start || nothing_capped || c.type_ == "Autoscaling")
        })
        .collect();
    let Some(ready) = changes.iter().find(|c| c.type_ == "Ready").copied() else { return changes };
    changes
        .into_iter()
        .filter(|c| {
            if c.type_ == "Ready" {
                return true;
            }
            let said_by_ready = if ready.status == TRUE {
                c.status == TRUE && c.type_.ends_with("Ready")
            } else {
                c.status != TRUE
                    && c.reason == ready.reason
                    && ready.message.starts_with(&format!("{}: ", c.type_))
            };
            !said_by_ready
        })
        .collect()
}

pub fn changed<'a>(old: Option<&PipelineStatus>, new: &'a PipelineStatus) -> Vec<&'a Condition> {
    new.conditions
        .iter()
        .filter(|c| {
            !old.is_some_and(|o| {
                o.conditions
                    .iter()
                    .any(|p| p.type_ == c.type_ && p.status == c.status && p.reason == c.reason)
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_crds::pipeline::TopicRole;

    fn t(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    fn ready_obs() -> Observation {
        Observation {
            generation: Some(2),
            topics: vec![TopicStatus {
                role: TopicRole::Input,
                name: "in".into(),
                partitions: Some(3),
                state: "Ready".into(),
                message: None,
            }],
            replicas: 2,
            ready_replicas: Some(2),
            rollout_current: true,
            ..Observation::default()
        }
    }

    fn get<'a>(s: &'a PipelineStatus, ty: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == ty).unwrap()
    }

    #[test]
    fn a_healthy_start_has_no_warning_events() {
        let mut starting = ready_obs();
        starting.ready_replicas = Some(0);
        let first = compute(&starting, None, t("2026-11-28T10:00:00Z"));
        let types: Vec<_> =
            eventful(None, &first).iter().map(|c| (c.type_.as_str(), c.status.as_str())).collect();
        assert_eq!(types, [("TopicsReady", "True")], "{:?}", first.conditions);
        let running = compute(&ready_obs(), Some(&first), t("2026-11-28T10:00:05Z"));
        let types: Vec<_> =
            eventful(Some(&first), &running).iter().map(|c| (c.type_.as_str(), c.status.as_str())).collect();
        assert_eq!(types, [("Ready", "True")], "RunnersReady turning True is what Ready says");
        // Runners that stop being ready later are worth a Warning, once:
        // Ready's names them, with their reason.
        let down = compute(&starting, Some(&running), t("2026-11-28T10:05:00Z"));
        let events = eventful(Some(&running), &down);
        let types: Vec<_> = events.iter().map(|c| (c.type_.as_str(), c.status.as_str())).collect();
        assert_eq!(types, [("Ready", "False")]);
        assert_eq!(events[0].reason, get(&down, "RunnersReady").reason);
        assert!(events[0].message.starts_with("RunnersReady: "), "{}", events[0].message);
        // A second condition failing in the same change keeps its own Event.
        let mut worse = starting.clone();
        worse.topics_problem = Some(("KafkaUnavailable".into(), "broker down".into()));
        let both = compute(&worse, Some(&running), t("2026-11-28T10:05:00Z"));
        let types: Vec<_> =
            eventful(Some(&running), &both).iter().map(|c| (c.type_.as_str(), c.status.as_str())).collect();
        assert_eq!(types.len(), 2, "{types:?}");
        assert!(types.contains(&("Ready", "False")), "{types:?}");
    }

    #[test]
    fn ready_only_when_topics_and_ready_pods_are_there() {
        let s = compute(&ready_obs(), None, t("2026-11-28T10:00:00Z"));
        assert_eq!(get(&s, "Ready").status, "True");
        assert_eq!(s.phase, Some(PipelinePhase::Running));
        assert_eq!(s.observed_generation, Some(2));

        let mut o = ready_obs();
        o.ready_replicas = Some(1);
        let s = compute(&o, None, t("2026-11-28T10:00:00Z"));
        assert_eq!(get(&s, "RunnersReady").status, "False");
        assert_eq!(get(&s, "Ready").reason, "RunnersNotReady");
        assert_eq!(s.phase, Some(PipelinePhase::Degraded));
    }

    #[test]
    fn a_deployment_that_exists_but_has_no_ready_pod_is_not_ready() {
        let mut o = ready_obs();
        o.ready_replicas = Some(0);
        let s = compute(&o, None, t("2026-11-28T10:00:00Z"));
        assert_eq!(get(&s, "Ready").status, "False");
        assert_eq!(s.phase, Some(PipelinePhase::Provisioning));
    }

    #[test]
    fn transition_time_changes_only_with_the_status() {
        let first = compute(&ready_obs(), None, t("2026-11-28T10:00:00Z"));
        let again = compute(&ready_obs(), Some(&first), t("2026-11-28T11:00:00Z"));
        assert_eq!(get(&again, "Ready").last_transition_time, t("2026-11-28T10:00:00Z"));
        assert!(changed(Some(&first), &again).is_empty(), "no events when nothing changed");
        let mut o = ready_obs();
        o.ready_replicas = Some(0);
        let down = compute(&o, Some(&again), t("2026-11-28T12:00:00Z"));
        assert_eq!(get(&down, "Ready").last_transition_time, t("2026-11-28T12:00:00Z"));
        let types: Vec<&str> = changed(Some(&again), &down).iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, ["RunnersReady", "Ready"]);
    }

    #[test]
    fn a_topic_problem_or_invalid_spec_is_not_ready_with_the_reason() {
        let mut o = ready_obs();
        o.topics_problem = Some(("PartitionDecreaseNotSupported".into(), "topic in has 3 partitions".into()));
        let s = compute(&o, None, t("2026-11-28T10:00:00Z"));
        assert_eq!(get(&s, "TopicsReady").reason, "PartitionDecreaseNotSupported");
        assert_eq!(get(&s, "Ready").reason, "PartitionDecreaseNotSupported");

        let o = Observation {
            generation: Some(3),
            invalid: Some(("InvalidSpec".into(), "spec.detector...".into())),
            ..Observation::default()
        };
        let s = compute(&o, None, t("2026-11-28T10:00:00Z"));
        assert_eq!(s.phase, Some(PipelinePhase::Failed));
        assert_eq!(get(&s, "Ready").reason, "InvalidSpec");
    }

    #[test]
    fn paused_is_ready_with_no_runners() {
        let mut o = ready_obs();
        o.paused = true;
        o.replicas = 0;
        o.ready_replicas = Some(0);
        let s = compute(&o, None, t("2026-11-28T10:00:00Z"));
        assert_eq!(s.phase, Some(PipelinePhase::Paused));
        assert_eq!(get(&s, "Ready").reason, "Paused");
    }

    #[test]
    fn a_scale_up_in_progress_keeps_the_pipeline_ready_but_an_outage_does_not() {
        let scaled = |ready: i32| {
            let mut o = ready_obs();
            o.replicas = 3;
            o.ready_replicas = Some(ready);
            let mut h = crate::pipeline::scaling::History::default();
            let spec = vigil_crds::ScalingSpec {
                min_replicas: 1,
                max_replicas: 3,
                target_lag_per_replica: 100,
                scale_up_stabilization: "0s".into(),
                scale_down_stabilization: "5m".into(),
            };
            o.scaling = Some(crate::pipeline::scaling::decide(
                &spec,
                3,
                Some(1),
                Some(900),
                &mut h,
                std::time::Instant::now(),
            ));
            compute(&o, None, t("2026-11-28T10:00:00Z"))
        };
        let s = scaled(1);
        assert_eq!(get(&s, "Autoscaling").reason, "ScaledUp");
        assert_eq!(get(&s, "RunnersReady").message, "1/3 runners ready");
        assert_eq!(get(&s, "Ready").status, "True", "minReplicas are serving");
        let s = scaled(0);
        assert_eq!(get(&s, "Ready").status, "False");
        assert_eq!(get(&s, "Ready").reason, "RunnersNotReady", "not the Autoscaling reason");
    }

    #[test]
    fn capped_replicas_are_reported() {
        let mut o = ready_obs();
        o.capped = true;
        let s = compute(&o, None, t("2026-11-28T10:00:00Z"));
        assert_eq!(get(&s, "ReplicasCapped").status, "True");
        assert_eq!(get(&s, "Ready").status, "True", "capping is information, not a failure");
    }
}
