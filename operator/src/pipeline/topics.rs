//! What to do to a Pipeline's topics, decided from the spec and what Kafka
//! has (pure), then done through `crate::kafka`.
//!
//! Missing topics are created; an existing topic is adopted; partitions
//! grow but never shrink (Kafka cannot); configuration drift on the keys the
//! spec lists is corrected, other keys set on the topic are kept.

use std::collections::BTreeMap;

use vigil_crds::TopicSpec;
use vigil_crds::pipeline::{TopicRole, TopicStatus};

use crate::kafka::{Kafka, KafkaError, Observed};

/// A change to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create the topic.
    Create,
    /// Grow to this many partitions.
    Grow(i32),
    /// Replace the topic's configuration with this (spec keys over what is set).
    Configure(BTreeMap<String, String>),
}

/// A reason the spec cannot be realised as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Condition reason.
    pub reason: &'static str,
    /// What is wrong and what to do.
    pub message: String,
}

/// The plan for one topic.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Which topic.
    pub role: TopicRole,
    /// The spec.
    pub spec: TopicSpec,
    /// Changes, in order.
    pub actions: Vec<Action>,
    /// What cannot be done.
    pub problems: Vec<Problem>,
}

/// The topic as it should be: the spec, plus, for the output and
/// dead-letter topics, a `max.message.bytes` that takes the largest record
/// the runners produce (unless the spec sets one).
pub fn desired(role: TopicRole, spec: &TopicSpec, pipeline: &vigil_crds::PipelineSpec) -> TopicSpec {
    let mut t = spec.clone();
    if role != TopicRole::Input {
        t.config.entry("max.message.bytes".into()).or_insert_with(|| pipeline.max_output_bytes().to_string());
    }
    t
}

/// Decide what to do to one topic.
pub fn plan(role: TopicRole, spec: &TopicSpec, observed: Option<&Observed>) -> Plan {
    let mut p = Plan { role, spec: spec.clone(), actions: Vec::new(), problems: Vec::new() };
    let Some(o) = observed else {
        p.actions.push(Action::Create);
        return p;
    };
    if o.partitions < spec.partitions {
        p.actions.push(Action::Grow(spec.partitions));
    } else if o.partitions > spec.partitions {
        p.problems.push(Problem {
            reason: "PartitionDecreaseNotSupported",
            message: format!(
                "topic {} has {} partitions and the spec asks for {}: Kafka cannot remove partitions; set partitions to {} or more",
                spec.name, o.partitions, spec.partitions, o.partitions
            ),
        });
    }
    if o.replication_factor != spec.replication_factor {
        p.problems.push(Problem {
            reason: "ReplicationFactorMismatch",
            message: format!(
                "topic {} has replication factor {} and the spec asks for {}: Vigil does not reassign replicas",
                spec.name, o.replication_factor, spec.replication_factor
            ),
        });
    }
    let drifted = spec.config.iter().any(|(k, v)| o.config.get(k) != Some(v));
    if drifted {
        let mut merged = o.config.clone();
        merged.extend(spec.config.clone());
        p.actions.push(Action::Configure(merged));
    }
    p
}

/// Carry out a plan; returns the topic's status afterwards.
pub async fn execute(kafka: &Kafka, plan: &Plan) -> Result<TopicStatus, KafkaError> {
    let mut partitions = None;
    for action in &plan.actions {
        match action {
            Action::Create => {
                kafka.create(&plan.spec).await?;
                partitions = Some(plan.spec.partitions);
            }
            Action::Grow(n) => {
                kafka.grow(&plan.spec.name, *n).await?;
                partitions = Some(*n);
            }
            Action::Configure(c) => kafka.set_config(&plan.spec.name, c).await?,
        }
    }
    Ok(status(plan, partitions))
}

/// The status entry of a topic after `plan` ran.
pub fn status(plan: &Plan, partitions: Option<i32>) -> TopicStatus {
    let (state, message) = match plan.problems.first() {
        Some(p) => ("Error".to_string(), Some(p.message.clone())),
        None => ("Ready".to_string(), None),
    };
    TopicStatus { role: plan.role, name: plan.spec.name.clone(), partitions, state, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(partitions: i32, config: &[(&str, &str)]) -> TopicSpec {
        TopicSpec {
            name: "t".into(),
            partitions,
            replication_factor: 1,
            config: config.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    fn observed(partitions: i32, config: &[(&str, &str)]) -> Observed {
        Observed {
            partitions,
            replication_factor: 1,
            config: config.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    #[test]
    fn a_missing_topic_is_created() {
        assert_eq!(plan(TopicRole::Input, &spec(3, &[]), None).actions, vec![Action::Create]);
    }

    #[test]
    fn a_matching_topic_is_adopted_untouched() {
        let p = plan(
            TopicRole::Input,
            &spec(3, &[("retention.ms", "1000")]),
            Some(&observed(3, &[("retention.ms", "1000")])),
        );
        assert!(p.actions.is_empty() && p.problems.is_empty(), "{p:?}");
    }

    #[test]
    fn partitions_grow_but_never_shrink() {
        assert_eq!(
            plan(TopicRole::Input, &spec(6, &[]), Some(&observed(3, &[]))).actions,
            vec![Action::Grow(6)]
        );
        let shrink = plan(TopicRole::Output, &spec(2, &[]), Some(&observed(3, &[])));
        assert!(shrink.actions.is_empty());
        assert_eq!(shrink.problems[0].reason, "PartitionDecreaseNotSupported");
        assert!(shrink.problems[0].message.contains("set partitions to 3 or more"));
        assert_eq!(status(&shrink, None).state, "Error");
    }

    #[test]
    fn config_drift_is_corrected_and_other_keys_kept() {
        let p = plan(
            TopicRole::DeadLetter,
            &spec(1, &[("retention.ms", "1000")]),
            Some(&observed(1, &[("retention.ms", "5"), ("cleanup.policy", "compact")])),
        );
        let want: BTreeMap<String, String> = [("retention.ms", "1000"), ("cleanup.policy", "compact")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(p.actions, vec![Action::Configure(want)]);
    }

    #[test]
    fn a_replication_mismatch_is_reported() {
        let mut o = observed(1, &[]);
        o.replication_factor = 3;
        assert_eq!(
            plan(TopicRole::Input, &spec(1, &[]), Some(&o)).problems[0].reason,
            "ReplicationFactorMismatch"
        );
    }
}
