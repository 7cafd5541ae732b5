//! Topic creation in bursts, on the harness's real broker: the creations
//! asked for at once go to Kafka together (`Kafka::create`), and each asker
//! still hears about its own topic, with a bad topic failing alone.

use std::collections::BTreeMap;

use vigil_crds::TopicSpec;
use vigil_e2e::{kafka, unique_name};
use vigil_operator::kafka::Kafka;

fn spec(name: &str, partitions: i32, replication_factor: i32, retention_ms: &str) -> TopicSpec {
    TopicSpec {
        name: name.to_string(),
        partitions,
        replication_factor,
        config: BTreeMap::from([("retention.ms".to_string(), retention_ms.to_string())]),
    }
}

#[tokio::test]
async fn real_kafka_a_burst_of_creations_makes_every_topic_as_asked_and_a_bad_one_fails_alone() {
    let client = Kafka::new(kafka::config()).unwrap();
    let prefix = unique_name("burst");
    let good: Vec<TopicSpec> = (0..60)
        .map(|i| spec(&format!("{prefix}-{i}"), 1 + i % 3, 1, &format!("{}", 3_600_000 + i)))
        .collect();
    // The broker has one node: three replicas cannot be placed.
    let bad = spec(&format!("{prefix}-bad"), 1, 3, "1000");
    // An existing topic, asked for again, and one name asked for twice in
    // the burst: no failure, and the existing topic is left as it is.
    let existing = spec(&format!("{prefix}-existing"), 2, 1, "1000");
    kafka::create_topic(&existing.name, 4, &[]).await.unwrap();

    let mut asks: Vec<&TopicSpec> = good.iter().collect();
    asks.insert(30, &bad);
    asks.push(&existing);
    asks.push(&good[7]);
    let outcomes = futures::future::join_all(asks.iter().map(|s| client.create(s))).await;

    for (s, outcome) in asks.iter().zip(&outcomes) {
        if s.name == bad.name {
            let e = outcome.as_ref().expect_err("three replicas on one broker");
            assert!(e.0.contains(&bad.name) && e.0.contains("eplication"), "{e}");
        } else {
            assert!(outcome.is_ok(), "{}: {outcome:?}", s.name);
        }
    }
    for s in &good {
        assert_eq!(kafka::partitions(&s.name).unwrap(), Some(s.partitions as usize), "{}", s.name);
        assert_eq!(
            kafka::topic_config(&s.name).await.unwrap().get("retention.ms"),
            s.config.get("retention.ms")
        );
    }
    assert_eq!(kafka::partitions(&bad.name).unwrap(), None);
    assert_eq!(kafka::partitions(&existing.name).unwrap(), Some(4));

    // And the client describes what it made.
    let seen = client.describe(&good[5].name).await.unwrap().expect("created");
    assert_eq!((seen.partitions, seen.config.get("retention.ms")), (3, good[5].config.get("retention.ms")));

    let mut names: Vec<&str> = good.iter().map(|s| s.name.as_str()).collect();
    names.push(&existing.name);
    kafka::delete_topics(&names).await.unwrap();
}
