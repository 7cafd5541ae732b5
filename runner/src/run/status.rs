//! What a runner says about itself on `/status` (JSON) and in the body of
//! a failing `/readyz`: its state and the last error that stopped it, with
//! the record it was on. The operator reads it from runner pods that are
//! not ready, so a Pipeline's `RunnersReady` condition can name the cause.

use std::fmt;

use serde::Serialize;

/// A record of the input topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordRef {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

impl fmt::Display for RecordRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}@{}", self.topic, self.partition, self.offset)
    }
}

/// Why the processing loop stopped consuming.
#[derive(Debug, Clone, PartialEq)]
pub struct Halt {
    /// What failed, for people.
    pub reason: String,
    /// The input record being processed, when one was.
    pub record: Option<RecordRef>,
    /// Retry at once from the committed offsets (the runner learned
    /// something that makes the retry different, e.g. a smaller record
    /// limit); otherwise wait, backing off.
    pub retry_now: bool,
}

impl Halt {
    pub fn new(reason: impl Into<String>, record: Option<RecordRef>) -> Halt {
        Halt { reason: reason.into(), record, retry_now: false }
    }
}

impl fmt::Display for Halt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.record {
            Some(r) => write!(f, "{} (at record {r})", self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

/// The runner's lifecycle as `/status` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum State {
    /// Joining the consumer group.
    Starting,
    /// Consuming.
    Running,
    /// Stopped consuming after a failure, nothing committed past it;
    /// retrying from the committed offsets after a wait.
    Stalled,
    /// Shutting down.
    Stopping,
}

/// The last failure.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LastError {
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<RecordRef>,
    /// RFC 3339.
    pub time: String,
}

/// Kafka refusing the runner (credentials, TLS, ACLs): reported while it
/// keeps the runner from consuming or producing.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KafkaRefusal {
    pub kind: vigil_crds::kafka_access::AccessProblem,
    pub message: String,
    /// RFC 3339.
    pub time: String,
}

/// The last refusal a Kafka client of the runner saw, shared by its
/// clients' callbacks.
#[derive(Debug, Default)]
pub struct AccessWatch(std::sync::Mutex<Option<(KafkaRefusal, std::time::Instant)>>);

impl AccessWatch {
    /// Kafka refused a client: `message` says how.
    pub fn refused(&self, kind: vigil_crds::kafka_access::AccessProblem, message: &str) {
        let r = KafkaRefusal {
            kind,
            message: message.to_string(),
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        };
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some((r, std::time::Instant::now()));
    }

    /// Record a refusal known only by its error code, unless the client's
    /// error callback told of the same kind of refusal, in more words,
    /// within the last minute.
    pub fn refused_by_code(&self, kind: vigil_crds::kafka_access::AccessProblem, message: &str) {
        if self.recent(std::time::Duration::from_secs(60)).is_some_and(|r| r.kind == kind) {
            return;
        }
        self.refused(kind, message);
    }

    /// The last refusal, if it happened within `within`.
    pub fn recent(&self, within: std::time::Duration) -> Option<KafkaRefusal> {
        let g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        g.as_ref().filter(|(_, at)| at.elapsed() <= within).map(|(r, _)| r.clone())
    }
}

/// The `/status` document.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunnerStatus {
    pub state: State,
    /// One line for people: what the runner is doing or waiting for.
    pub message: String,
    /// Times the runner stopped consuming after a failure.
    pub stalls: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<LastError>,
    /// The trained Model version this runner scores with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_version: Option<i64>,
    /// Kafka refusing the runner, while it is not consuming.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kafka_refusal: Option<KafkaRefusal>,
}

impl Default for RunnerStatus {
    fn default() -> Self {
        RunnerStatus {
            state: State::Starting,
            message: "joining the consumer group".into(),
            stalls: 0,
            last_error: None,
            model_version: None,
            kafka_refusal: None,
        }
    }
}

impl RunnerStatus {
    /// Record a halt; the runner retries in `retry_in_s` seconds.
    pub fn stalled(&mut self, halt: &Halt, retry_in_s: u64) {
        self.state = State::Stalled;
        self.stalls += 1;
        self.message = format!(
            "stopped consuming, nothing committed past the failure; retrying from the committed offsets in {retry_in_s} s: {halt}"
        );
        self.last_error = Some(LastError {
            message: halt.reason.clone(),
            record: halt.record.clone(),
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        });
    }

    pub fn running(&mut self) {
        self.state = State::Running;
        self.message = "consuming".into();
    }

    pub fn rejoining(&mut self) {
        self.state = State::Starting;
        self.message = "rejoining the consumer group".into();
    }

    /// What `/status` shows: while the runner is not consuming, a recent
    /// refusal by Kafka is the reason, named in the message.
    pub fn with_refusal(mut self, refusal: Option<KafkaRefusal>) -> RunnerStatus {
        if self.state == State::Running {
            return self;
        }
        if let Some(r) = refusal {
            self.message = format!("Kafka refuses the runner: {} ({})", r.message, r.kind.hint());
            self.kafka_refusal = Some(r);
        }
        self
    }

    pub fn stopping(&mut self) {
        self.state = State::Stopping;
        self.message = "shutting down".into();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stall_names_the_record_and_is_kept_as_the_last_error() {
        let mut s = RunnerStatus::default();
        let rec = RecordRef { topic: "in".into(), partition: 2, offset: 41 };
        s.stalled(&Halt::new("the dead-letter topic dlq cannot take records: denied", Some(rec)), 30);
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["state"], "stalled");
        assert_eq!(v["stalls"], 1);
        assert_eq!(v["lastError"]["record"]["offset"], 41);
        assert!(v["message"].as_str().unwrap().contains("at record in/2@41"), "{v}");
        s.running();
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["state"], "running");
        assert_eq!(v["lastError"]["message"], "the dead-letter topic dlq cannot take records: denied");
    }

    #[test]
    fn a_recent_refusal_is_the_reason_while_not_consuming() {
        use vigil_crds::kafka_access::AccessProblem;
        let watch = AccessWatch::default();
        watch.refused(AccessProblem::Authentication, "SASL authentication error: invalid credentials");
        let s = RunnerStatus::default().with_refusal(watch.recent(std::time::Duration::from_secs(60)));
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["kafkaRefusal"]["kind"], "authentication");
        assert!(v["message"].as_str().unwrap().contains("invalid credentials"), "{v}");
        assert!(v["message"].as_str().unwrap().contains("sasl.password"), "says what to check: {v}");
        let mut running = RunnerStatus::default();
        running.running();
        let v = serde_json::to_value(running.with_refusal(watch.recent(std::time::Duration::from_secs(60))))
            .unwrap();
        assert_eq!(v["message"], "consuming", "a consuming runner is not held back by an old refusal");
        assert!(v.get("kafkaRefusal").is_none());
    }
}
