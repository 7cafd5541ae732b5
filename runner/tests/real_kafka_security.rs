//! Kafka security for real: the harness broker's SASL_SSL listener
//! (SCRAM-SHA-512 over TLS with a CA of the harness's own, ACLs enforced).
//! A runner given only the ACLs a Pipeline needs scores every record; a
//! wrong password and a missing ACL keep it up, not ready, saying on
//! `/readyz` and `/status` what Kafka refused; a granted ACL lets it resume
//! by itself with nothing lost.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::{Runner, Topics, count_ids, produce_ids};
use vigil_e2e::kafka::{scram_secret, secure, security_admin};
use vigil_e2e::unique_name;

/// A Secret as the kubelet mounts it: one file per key.
fn secret_dir(dir: &Path, name: &str, user: &str, password: &str, ca_pem: &str) -> PathBuf {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    for (k, v) in scram_secret(user, password, ca_pem) {
        std::fs::write(d.join(k), v).unwrap();
    }
    d
}

fn status(r: &Runner) -> serde_json::Value {
    r.get("/status").and_then(|(_, b)| serde_json::from_str(&b).ok()).unwrap_or_default()
}

/// Wait until the runner's `/status` reports a refusal of `kind`.
fn wait_refusal(r: &mut Runner, kind: &str, timeout: Duration) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        let s = status(r);
        if s["kafkaRefusal"]["kind"] == kind {
            return s;
        }
        assert!(r.alive(), "the runner exited; log:\n{}", r.log_text());
        assert!(
            Instant::now() < deadline,
            "no {kind} refusal on /status within {timeout:?}: {s}\n{}",
            r.log_text()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn real_kafka_a_runner_over_scram_tls_needs_only_its_acls_and_names_what_kafka_refuses() {
    let sec = secure();
    let topics = Topics::create("sec", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let manifest = topics.pipeline("secure", "atLeastOnce", "[]");
    produce_ids(&topics.input, 0..400, 4).await;
    let run_args = |secret: &Path| {
        vec![
            "--bootstrap-servers".to_string(),
            sec.bootstrap.clone(),
            "--kafka-secret-dir".into(),
            secret.display().to_string(),
        ]
    };

    // A user with exactly what a runner needs: Read on the input topic and
    // its group, Write on the output and dead-letter topics.
    let user = unique_name("runner");
    let group = format!("vigil.tests.{user}");
    let (input, output, dlq) = (topics.input.as_str(), topics.output.as_str(), topics.dead_letter.as_str());
    #[rustfmt::skip]
    security_admin(&[
        "scram", &user, "right-password", ",",
        "allow", &user, "topic", "literal", input, "read", ",",
        "allow", &user, "topic", "literal", output, "write", ",",
        "allow", &user, "topic", "literal", dlq, "write", ",",
        "allow", &user, "group", "literal", &group, "read",
    ])
    .unwrap();
    let good = secret_dir(dir.path(), "good", &user, "right-password", &sec.ca_pem);
    let args = run_args(&good);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let runner = Runner::start_with(dir.path(), &manifest, &group, "good", &args);
    let counts = count_ids(output, 400, Duration::from_secs(90), false);
    assert_eq!(counts.len(), 400, "every record scored over SASL_SSL; log:\n{}", runner.log_text());
    assert_eq!(runner.terminate(), Some(0));

    // A wrong password: the runner stays up, not ready, and says so.
    let wrong = secret_dir(dir.path(), "wrong", &user, "not-the-password", &sec.ca_pem);
    let args = run_args(&wrong);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut runner = Runner::start_with(dir.path(), &manifest, &format!("{group}-wrong"), "wrong", &args);
    let s = wait_refusal(&mut runner, "authentication", Duration::from_secs(60));
    let message = s["message"].as_str().unwrap_or_default();
    assert!(message.contains("Authentication failed"), "{s}");
    assert!(message.contains("sasl.password"), "the message says what to check: {s}");
    let (code, body) = runner.get("/readyz").unwrap();
    assert_eq!(code, 503);
    assert!(body.contains("Kafka refuses the runner"), "{body}");
    std::thread::sleep(Duration::from_secs(5));
    assert!(runner.alive(), "a refused runner is not a crash loop; log:\n{}", runner.log_text());
    runner.terminate();

    // A missing ACL (Write on the output topic): the runner stops consuming
    // without committing, names the ACL, and resumes once it is granted.
    let limited = unique_name("limited");
    let limited_group = format!("vigil.tests.{limited}");
    #[rustfmt::skip]
    security_admin(&[
        "scram", &limited, "pw", ",",
        "allow", &limited, "topic", "literal", input, "read", ",",
        "allow", &limited, "topic", "literal", dlq, "write", ",",
        "allow", &limited, "group", "literal", &limited_group, "read",
    ])
    .unwrap();
    let no_write = secret_dir(dir.path(), "no-write", &limited, "pw", &sec.ca_pem);
    let mut args = run_args(&no_write);
    args.extend(["--stall-backoff".into(), "2".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut runner = Runner::start_with(dir.path(), &manifest, &limited_group, "no-write", &args);
    let s = wait_refusal(&mut runner, "authorization", Duration::from_secs(60));
    assert!(s["message"].as_str().unwrap_or_default().contains(&format!("Write to topic {output}")), "{s}");
    assert_ne!(s["state"], "running", "{s}");
    assert_eq!(runner.get("/readyz").unwrap().0, 503);
    let before = count_ids(output, 400, Duration::from_secs(3), false).values().sum::<u32>();
    security_admin(&["allow", &limited, "topic", "literal", output, "write"]).unwrap();
    // Nothing was committed past the refused records: all 400 come out
    // again for this group (the output holds 400 from the first runner).
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut total = before;
    while total < before + 400 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_secs(1));
        total = count_ids(output, 400, Duration::from_secs(3), false).values().sum::<u32>();
    }
    assert!(
        total >= before + 400,
        "after the grant every record is scored: {total} outputs, {before} before"
    );
    runner.wait_ready(Duration::from_secs(30));
    assert!(status(&runner).get("kafkaRefusal").is_none(), "a consuming runner reports no refusal");
    assert_eq!(runner.terminate(), Some(0));

    let _ = security_admin(&["revoke", &user, ",", "revoke", &limited]);
    topics.delete().await;
}
