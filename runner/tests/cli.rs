//! The `vigil` command line as a user runs it: local mode over the shipped
//! examples, offline validation, evaluation on a small labelled corpus.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn vigil(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vigil")).current_dir(repo()).args(args).output().expect("vigil runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn local_with_no_arguments_runs_the_shipped_example_and_prints_a_summary() {
    let out = vigil(&["local"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("running the shipped example cpu-anomalies"), "{stderr}");
    assert!(stderr.contains("cpu-anomalies: 2592 records"), "{stderr}");
    assert!(stderr.contains("0 dead-lettered"), "{stderr}");
    let mut flagged = Vec::new();
    for line in stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("anomalies are JSON lines");
        assert_eq!(v["anomaly"]["isAnomaly"], true, "only anomalies are printed: {line}");
        flagged.push((v["host"].as_str().unwrap().to_string(), v["timestamp"].as_str().unwrap().to_string()));
    }
    // The three incidents generate.py injects are flagged where they start.
    for (host, start) in
        [("web-1", "2026-11-02 14:00:00"), ("web-2", "2026-11-02 22:00:00"), ("db-1", "2026-11-03 03:00:00")]
    {
        assert!(
            flagged.contains(&(host.to_string(), start.to_string())),
            "{host} at {start} not flagged: {flagged:?}"
        );
    }
    assert!(flagged.len() <= 10, "too many alarms for three incidents: {flagged:?}");
}

#[test]
fn local_writes_every_record_and_the_dead_letters_of_the_sensor_example() {
    let dir = tempfile::tempdir().unwrap();
    let (out_path, dead_path) = (dir.path().join("scored.jsonl"), dir.path().join("dead.jsonl"));
    let out = vigil(&[
        "local",
        "examples/pipelines/sensor-multivariate.yaml",
        "--input",
        "examples/data/sensors.jsonl",
        "--output",
        out_path.to_str().unwrap(),
        "--dead-letter",
        dead_path.to_str().unwrap(),
    ]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("2883 records"), "{stderr}");
    assert!(stderr.contains("2880 scored") && stderr.contains("3 dead-lettered"), "{stderr}");

    let scored = std::fs::read_to_string(&out_path).unwrap();
    assert_eq!(scored.lines().count(), 2880);
    let first: serde_json::Value = serde_json::from_str(scored.lines().next().unwrap()).unwrap();
    for field in [
        "machine",
        "temperature",
        "vibration",
        "pressure",
        "temp_per_vibration",
        "temperature_diff",
        "anomaly",
    ] {
        assert!(first.get(field).is_some(), "{field} missing from {first}");
    }
    assert!(first.get("readings_temp_c").is_none(), "renamed and selected away: {first}");

    let dead: Vec<serde_json::Value> = std::fs::read_to_string(&dead_path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let stages: Vec<&str> = dead.iter().map(|d| d["stage"].as_str().unwrap()).collect();
    assert_eq!(stages, ["decode", "transforms[3].derive", "decode"], "{dead:?}");
    assert!(dead[0]["reason"].as_str().unwrap().starts_with("invalid JSON"));
    assert_eq!(dead[1]["reason"], "/ needs a number, got string \"hot\"");
    assert_eq!(dead[2]["reason"], "timestamp field \"ts\" is missing");
    assert!(dead.iter().all(|d| d["line"].as_u64().unwrap() > 0 && d["record"].is_string()));
}

#[test]
fn validate_accepts_the_examples_and_refuses_invalid_manifests_with_exit_code_1() {
    let ok = vigil(&["validate", "examples/"]);
    assert!(ok.status.success(), "{}", text(&ok.stdout));
    // 2 Pipelines in examples/pipelines; 7 Models (one per algorithm) and
    // 2 Pipelines serving them in examples/models.
    assert_eq!(text(&ok.stdout).matches(" is valid").count(), 11, "{}", text(&ok.stdout));

    let bad = vigil(&[
        "validate",
        "e2e/fixtures/invalid/threshold-out-of-range.yaml",
        "examples/pipelines/cpu-univariate.yaml",
    ]);
    assert_eq!(bad.status.code(), Some(1));
    let stdout = text(&bad.stdout);
    assert!(stdout.contains("spec.detector.threshold: Invalid value: 1.5"), "{stdout}");
    assert!(stdout.contains("Pipeline/cpu-anomalies is valid"), "{stdout}");

    let missing = vigil(&["validate", "no/such/file.yaml"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(text(&missing.stdout).contains("cannot be read"));
}

#[test]
fn validate_given_a_pipeline_and_its_model_checks_the_model_features_are_produced() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.yaml");
    std::fs::write(
        &model,
        "apiVersion: vigil.dev/v1alpha1\nkind: Model\nmetadata: {name: usage}\nspec:\n  algorithm: kMeans\n  features: [cpu, mem]\n  training: {file: train.csv}\n",
    )
    .unwrap();
    let pipeline = |transforms: &str| {
        format!(
            "apiVersion: vigil.dev/v1alpha1\nkind: Pipeline\nmetadata: {{name: p}}\nspec:\n  input: {{topic: {{name: in}}}}\n  transforms: {transforms}\n  detector: {{modelRef: {{name: usage}}}}\n  output: {{name: out}}\n  deadLetter: {{name: dlq}}\n"
        )
    };
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, pipeline("[{drop: {fields: [mem]}}]")).unwrap();
    let out = vigil(&["validate", bad.to_str().unwrap(), model.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains(
            "spec.detector.modelRef: Invalid value: \"usage\": Model usage reads feature \"mem\" (its spec.features[1]), which this Pipeline does not produce: field was removed by spec.transforms[0] (drop)"
        ),
        "{}",
        text(&out.stdout)
    );
    // Alone, the Pipeline cannot be checked against the Model, and passes.
    let out = vigil(&["validate", bad.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, pipeline("[]")).unwrap();
    let out = vigil(&["validate", good.to_str().unwrap(), model.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stdout));
}

#[test]
fn train_every_example_model_and_score_with_it_locally() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let models = [
        // Models of normal behaviour learn from known-good history.
        ("sensor-kmeans", "sensors-known-good.jsonl"),
        ("sensor-gaussian-mixture", "sensors-known-good.jsonl"),
        ("sensor-pca", "sensors-known-good.jsonl"),
        ("sensor-one-class-svm", "sensors-known-good.jsonl"),
        ("sensor-isolation-forest", "sensors-known-good.jsonl"),
        ("bearing-fault-logistic", "bearings.csv"),
        ("bearing-fault-tree", "bearings.csv"),
    ];
    for (model, data) in models {
        let r = vigil(&[
            "train",
            &format!("examples/models/{model}.yaml"),
            "--input",
            &format!("examples/data/{data}"),
            "--output",
            out,
        ]);
        let summary = text(&r.stderr);
        assert!(r.status.success(), "{model}: {summary}");
        assert!(
            summary.contains(&format!("Model {model} v1 (")) && summary.contains("threshold"),
            "{summary}"
        );
        assert!(dir.path().join(format!("{model}-v1.vmodel")).is_file());
    }
    // A second run writes v2; v1 is never overwritten.
    let r = vigil(&[
        "train",
        "examples/models/sensor-pca.yaml",
        "--input",
        "examples/data/sensors.jsonl",
        "-o",
        out,
    ]);
    assert!(text(&r.stderr).contains("Model sensor-pca v2 ("), "{}", text(&r.stderr));
    let r = vigil(&[
        "train",
        "examples/models/sensor-pca.yaml",
        "--input",
        "examples/data/sensors-known-good.jsonl",
        "-o",
        out,
        "--version",
        "1",
    ]);
    assert!(!r.status.success() && text(&r.stderr).contains("never overwritten"), "{}", text(&r.stderr));

    // The classifier Pipeline: every record scored by v1, with its class.
    let scored = dir.path().join("predictions.jsonl");
    let r = vigil(&[
        "local",
        "examples/models/bearing-fault-tree.yaml",
        "--input",
        "examples/data/bearings.csv",
        "--model",
        &format!("bearing-fault-tree={out}/bearing-fault-tree-v1.vmodel"),
        "--output",
        scored.to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{}", text(&r.stderr));
    let records: Vec<serde_json::Value> =
        std::fs::read_to_string(&scored).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.len(), 3000);
    let right = records.iter().filter(|r| r["anomaly"]["class"] == r["fault"]).count();
    assert!(right as f64 / 3000.0 > 0.95, "{right} of 3000 classified right");
    assert!(
        records
            .iter()
            .all(|r| r["anomaly"]["modelVersion"] == 1 && r["anomaly"]["detector"] == "decisionTree")
    );

    // The sensor Pipeline with k-means: flags the failing bearing of m-2
    // (from minute 80) and names vibration or temperature first.
    let r = vigil(&[
        "local",
        "examples/models/sensor-kmeans.yaml",
        "--input",
        "examples/data/sensors.jsonl",
        "--model",
        &format!("sensor-kmeans={out}/sensor-kmeans-v1.vmodel"),
    ]);
    assert!(r.status.success(), "{}", text(&r.stderr));
    let flagged: Vec<serde_json::Value> =
        text(&r.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let m2 = flagged
        .iter()
        .filter(|r| r["machine"] == "m-2" && r["ts"].as_str().unwrap() >= "2026-11-01T09:25:00Z")
        .count();
    assert!(m2 > 10, "{m2} late m-2 readings flagged of {}", flagged.len());
    let first = flagged.iter().find(|r| r["machine"] == "m-2").unwrap();
    let top = first["anomaly"]["explanation"][0]["feature"].as_str().unwrap();
    assert!(top == "vibration" || top == "temperature", "{first}");
    assert!(text(&r.stderr).contains("detector kMeans v1"), "{}", text(&r.stderr));
}

#[test]
fn a_model_pipeline_without_its_artifact_or_with_a_corrupt_one_is_refused_clearly() {
    let r = vigil(&["local", "examples/models/sensor-kmeans.yaml", "--input", "examples/data/sensors.jsonl"]);
    assert_eq!(r.status.code(), Some(2), "{}", text(&r.stderr));
    assert!(
        text(&r.stderr).contains("pass its artifact with --model sensor-kmeans=FILE"),
        "{}",
        text(&r.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.vmodel");
    std::fs::write(
        &bad,
        "vigil-model 1 sha256=00 bytes=2
{}",
    )
    .unwrap();
    let r = vigil(&[
        "local",
        "examples/models/sensor-kmeans.yaml",
        "--input",
        "examples/data/sensors.jsonl",
        "--model",
        &format!("sensor-kmeans={}", bad.display()),
    ]);
    assert!(text(&r.stderr).contains("is corrupt: checksum mismatch"), "{}", text(&r.stderr));
}

#[test]
fn local_refuses_a_manifest_that_does_not_validate() {
    let out = vigil(&[
        "local",
        "e2e/fixtures/invalid/negative-partitions.yaml",
        "--input",
        "examples/data/cpu.csv",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("spec.input.topic.partitions"), "{}", text(&out.stderr));
}

#[test]
fn eval_scores_a_labelled_corpus_in_the_nab_layout() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data/demo");
    std::fs::create_dir_all(&data).unwrap();
    let mut csv = String::from("timestamp,value\n");
    for i in 0..2000 {
        let v = if i == 1500 { 500.0 } else { 10.0 + (i % 7) as f64 * 0.1 };
        csv.push_str(&format!("2026-01-01 {:02}:{:02}:{:02},{v}\n", i / 3600, (i / 60) % 60, i % 60));
    }
    std::fs::write(data.join("spike.csv"), csv).unwrap();
    std::fs::create_dir_all(dir.path().join("labels")).unwrap();
    std::fs::write(
        dir.path().join("labels/combined_windows.json"),
        r#"{"demo/spike.csv": [["2026-01-01 00:24:50", "2026-01-01 00:25:10"]]}"#,
    )
    .unwrap();
    let out = vigil(&["eval", "--corpus", dir.path().to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(stdout.contains("1 files, 2000 rows, 1 windows"), "{stdout}");
    let standard: f64 = stdout
        .lines()
        .find(|l| l.starts_with("standard"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a standard score");
    assert!(standard > 90.0, "a lone spike is found early: {stdout}");
}

/// The NAB corpus of the workplace's shared datasets, beside the checkout
/// (`VIGIL_NAB` overrides).
fn nab_corpus() -> std::path::PathBuf {
    if let Some(dir) = std::env::var_os("VIGIL_NAB") {
        return dir.into();
    }
    let beside = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/datasets/nab");
    if beside.exists() { beside } else { "/work/shared/datasets/nab".into() }
}

#[test]
fn eval_on_nab_the_default_detector_scores_above_htm_at_its_shipped_threshold() {
    let corpus = nab_corpus();
    assert!(
        corpus.join("labels/combined_windows.json").exists(),
        "the NAB corpus is not at {} (set VIGIL_NAB to its directory)",
        corpus.display()
    );
    let out = vigil(&["eval", "--corpus", corpus.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(stdout.contains("58 files, 365558 rows, 116 windows"), "{stdout}");
    // "standard  <tuned> <threshold> <at default> @ 0.80"
    let row: Vec<f64> = stdout
        .lines()
        .find(|l| l.starts_with("standard"))
        .map(|l| l.split_whitespace().filter_map(|w| w.parse().ok()).collect())
        .expect("a standard row");
    let (tuned, at_default) = (row[0], row[2]);
    assert!(at_default >= 72.0, "NAB standard at the shipped threshold: {stdout}");
    assert!(tuned >= at_default, "{stdout}");
}

#[test]
fn eval_generates_the_multivariate_benchmark_and_detects_its_layout() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("mv");
    let out = vigil(&["eval", "--generate", corpus.to_str().unwrap(), "--small", "--seed", "5"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("plant: 7 keys"), "{}", text(&out.stderr));
    assert!(corpus.join("data/plant.jsonl").is_file() && corpus.join("data/hvac.jsonl").is_file());

    // The default detector (auto, which picks sensorZ for four channels).
    let out = vigil(&["eval", "--corpus", corpus.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(stdout.contains("36 faults scored with auto (sensorZ)"), "{stdout}");
    let f1 = |profile: &str| -> f64 {
        let line = stdout.lines().find(|l| l.starts_with(profile)).unwrap_or_else(|| panic!("{stdout}"));
        line.split_whitespace().rev().nth(4).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{line}"))
    };
    assert!(f1("default threshold") >= 0.8, "{stdout}");
    for kind in ["Spike", "LevelShift", "VarianceBurst", "BrokenCorrelation", "Drift", "Stuck"] {
        assert!(stdout.contains(&format!("  {kind}")), "per-kind line for {kind}: {stdout}");
    }

    // The detector the sensor example used before: far behind.
    let hst = dir.path().join("hst.yaml");
    std::fs::write(&hst, multivariate_pipeline("halfSpaceTrees")).unwrap();
    let out = vigil(&["eval", "--corpus", corpus.to_str().unwrap(), "--pipeline", hst.to_str().unwrap()]);
    let stdout_hst = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(stdout_hst.contains("scored with halfSpaceTrees"), "{stdout_hst}");
}

fn multivariate_pipeline(algorithm: &str) -> String {
    format!(
        "apiVersion: vigil.dev/v1alpha1\nkind: Pipeline\nmetadata: {{name: mv}}\nspec:\n  input: {{topic: {{name: mv}}}}\n  detector: {{algorithm: {algorithm}, features: [a, b]}}\n  output: {{name: mv-out}}\n  deadLetter: {{name: mv-dlq}}\n"
    )
}

/// Unmounts a test volume whatever happens.
struct Mounted(PathBuf);
impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn training_onto_a_full_model_volume_fails_saying_so_and_leaves_no_partial_file() {
    // A 256 KiB volume, nearly filled: the artifact cannot be written whole.
    let dir = tempfile::tempdir().unwrap();
    let vol = dir.path().join("models");
    std::fs::create_dir(&vol).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs", vol.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(mounted.success(), "mounting a tmpfs (tests run as root)");
    let _mounted = Mounted(vol.clone());
    std::fs::write(vol.join("filler"), vec![0u8; 250 * 1024]).unwrap();
    let termination = dir.path().join("termination-log");
    std::fs::write(&termination, "").unwrap();

    let r = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .current_dir(repo())
        .args(["train", "examples/models/sensor-isolation-forest.yaml"])
        .args(["--input", "examples/data/sensors-known-good.jsonl", "--output", vol.to_str().unwrap()])
        .env("VIGIL_TERMINATION_LOG", &termination)
        .output()
        .unwrap();
    let err = text(&r.stderr);
    assert!(!r.status.success(), "{err}");
    assert!(err.contains("sensor-isolation-forest-v1.vmodel"), "names the artifact: {err}");
    assert!(err.contains("the model volume is full"), "{err}");
    assert!(err.contains("spec.storage.size"), "says what to do: {err}");
    let left: Vec<_> = std::fs::read_dir(&vol).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from("filler")], "no partial artifact is left behind");
    // The pod's termination message, which the operator reports on the
    // Model (Trained=False, TrainingFailed), says the same.
    let message = std::fs::read_to_string(&termination).unwrap();
    assert!(message.contains("the model volume is full"), "{message}");
}
