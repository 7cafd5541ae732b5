//! Kafka refusing a client: wrong credentials, a TLS failure, a missing
//! ACL. Unlike an outage these do not pass by themselves; runner and
//! operator name them with the reasons below so a user knows what to fix.

use serde::{Deserialize, Serialize};

/// How Kafka refused a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AccessProblem {
    /// SASL authentication failed (wrong user or password, wrong mechanism).
    Authentication,
    /// The TLS handshake failed (untrusted certificate, wrong protocol).
    Tls,
    /// An ACL is missing for an operation on a topic, group, transactional
    /// id or the cluster.
    Authorization,
}

impl AccessProblem {
    /// The kind of refusal a librdkafka error code means, if it is one.
    pub fn from_code(code: i32) -> Option<AccessProblem> {
        match code {
            // RD_KAFKA_RESP_ERR__AUTHENTICATION, _SASL_AUTHENTICATION_FAILED
            -169 | 58 => Some(AccessProblem::Authentication),
            // RD_KAFKA_RESP_ERR__SSL
            -181 => Some(AccessProblem::Tls),
            // TOPIC_, GROUP_, CLUSTER_, TRANSACTIONAL_ID_,
            // DELEGATION_TOKEN_AUTHORIZATION_FAILED
            29 | 30 | 31 | 53 | 65 => Some(AccessProblem::Authorization),
            _ => None,
        }
    }

    /// The kind of refusal an error message of librdkafka describes, for
    /// errors that reach us only as text.
    pub fn from_message(message: &str) -> Option<AccessProblem> {
        let m = message.to_ascii_lowercase();
        if m.contains("authorization failed") || m.contains("authorizationfailed") {
            Some(AccessProblem::Authorization)
        } else if m.contains("authentication") {
            Some(AccessProblem::Authentication)
        } else if m.contains("ssl handshake") || m.contains("certificate verify failed") {
            Some(AccessProblem::Tls)
        } else {
            None
        }
    }

    /// The condition reason the operator reports.
    pub fn reason(self) -> &'static str {
        match self {
            AccessProblem::Authentication => "KafkaAuthenticationFailed",
            AccessProblem::Tls => "KafkaTLSFailed",
            AccessProblem::Authorization => "KafkaNotAuthorized",
        }
    }

    /// What the user should check.
    pub fn hint(self) -> &'static str {
        match self {
            AccessProblem::Authentication => {
                "check sasl.username, sasl.password and sasl.mechanism in spec.kafka.secretRef"
            }
            AccessProblem::Tls => "check ca.crt (and tls.crt, tls.key) in spec.kafka.secretRef",
            AccessProblem::Authorization => {
                "grant the principal of spec.kafka.secretRef the ACL named: the operator needs Describe, \
                 DescribeConfigs, Create and AlterConfigs on the Pipeline's topics, the runners Read on the \
                 input topic and the consumer group and Write on the output and dead-letter topics"
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_told_apart_from_outages() {
        assert_eq!(AccessProblem::from_code(-169), Some(AccessProblem::Authentication));
        assert_eq!(AccessProblem::from_code(29), Some(AccessProblem::Authorization));
        assert_eq!(AccessProblem::from_code(-181), Some(AccessProblem::Tls));
        assert_eq!(AccessProblem::from_code(-195), None, "all brokers down is an outage");
        assert_eq!(AccessProblem::from_code(7), None, "a request timeout is an outage");
        assert_eq!(
            AccessProblem::from_message("creating topic t: Broker: Topic authorization failed"),
            Some(AccessProblem::Authorization)
        );
        assert_eq!(
            AccessProblem::from_message(
                "SASL authentication error: Authentication failed during authentication due to invalid credentials"
            ),
            Some(AccessProblem::Authentication)
        );
        assert_eq!(AccessProblem::from_message("Local: Timed out"), None);
        assert_eq!(AccessProblem::Authorization.reason(), "KafkaNotAuthorized");
    }
}
