//! The harness's real Kafka broker works for what Vigil needs of it: topics
//! created by the admin client with partitions and config, described back,
//! and records produced and consumed.

use std::time::Duration;

use vigil_e2e::{kafka, unique_name};

#[tokio::test]
async fn real_kafka_admin_creates_a_topic_with_partitions_and_config_and_records_round_trip() {
    let topic = unique_name("smoke");
    kafka::create_topic(&topic, 3, &[("retention.ms", "3600000"), ("cleanup.policy", "delete")])
        .await
        .unwrap();

    assert_eq!(kafka::partitions(&topic).unwrap(), Some(3));
    let config = kafka::topic_config(&topic).await.unwrap();
    assert_eq!(config.get("retention.ms").map(String::as_str), Some("3600000"), "{config:?}");

    let records: Vec<(Option<&str>, &[u8])> =
        vec![(Some("host-a"), br#"{"cpu": 0.5}"#), (Some("host-b"), br#"{"cpu": 0.9}"#)];
    kafka::produce(&topic, &records).await.unwrap();
    let got = kafka::drain(&topic, 2, Duration::from_secs(30), false).unwrap();
    assert_eq!(got.len(), 2);
    let mut values: Vec<String> =
        got.iter().map(|r| String::from_utf8_lossy(&r.value).into_owned()).collect();
    values.sort();
    assert_eq!(values, [r#"{"cpu": 0.5}"#, r#"{"cpu": 0.9}"#]);
    assert!(got.iter().all(|r| r.key.is_some()));

    kafka::delete_topics(&[&topic]).await.unwrap();
}

#[tokio::test]
async fn real_kafka_refuses_to_auto_create_topics() {
    // The harness disables auto-creation, so a test that forgets to create a
    // topic fails loudly instead of passing on a topic with defaults.
    let topic = unique_name("absent");
    assert_eq!(kafka::partitions(&topic).unwrap(), None);
}
