//! History and the Data API through the real broker: a `vigil run` runner
//! and the `vigil history-server` component of the same Pipeline. Records
//! published through `POST /v1/records` come back scored through
//! `/v1/results` and `/v1/anomalies`; dead letters are listed with reasons;
//! `kill -9` of the component mid-stream loses nothing it stored and stores
//! nothing twice; auth, 400 and 413; retention; a malformed-request corpus.

mod support;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{Runner, Topics, free_port};
use vigil_e2e::kafka;

const TOKEN: &str = "s3cret-token-for-tests";

/// A `vigil history-server` process.
struct History {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl History {
    fn start(dir: &Path, manifest: &str, token: Option<&str>, extra: &[&str]) -> History {
        Self::start_in(dir, &dir.join("store"), manifest, token, extra)
    }

    fn start_in(dir: &Path, data: &Path, manifest: &str, token: Option<&str>, extra: &[&str]) -> History {
        let file = dir.join("pipeline.yaml");
        std::fs::write(&file, manifest).unwrap();
        let port = free_port();
        let log = dir.join("history.log");
        let out = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vigil"));
        cmd.args([
            "history-server",
            "--pipeline",
            file.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(extra)
        .env("VIGIL_KAFKA_BOOTSTRAP", kafka())
        .env("VIGIL_LOG", "info")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
        if let Some(t) = token {
            let f = dir.join("token");
            std::fs::write(&f, format!("{t}\n")).unwrap();
            cmd.args(["--token-file", f.to_str().unwrap()]);
        }
        let child = cmd.spawn().expect("vigil history-server starts");
        let h = History { child, port, log };
        h.wait_ready();
        h
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if matches!(call("GET", &self.url("/readyz"), None, None), Ok((200, _))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("history server not ready; log:\n{}", self.log_text());
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// `GET /v1/pipeline` as JSON.
    fn pipeline(&self) -> serde_json::Value {
        let (code, body) = call("GET", &self.url("/v1/pipeline"), Some(TOKEN), None).unwrap();
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Wait until the store holds `n` records (outputs plus dead letters).
    fn wait_stored(&self, n: i64, what: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let p = self.pipeline();
            let held =
                p["store"]["records"].as_i64().unwrap_or(0) + p["store"]["deadLetters"].as_i64().unwrap_or(0);
            if held >= n {
                return p;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: the store holds {held} of {n}: {p}\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Every page of a list endpoint.
    fn all(&self, path: &str, query: &str) -> Vec<serde_json::Value> {
        let mut items = Vec::new();
        let mut cursor = String::new();
        loop {
            let sep = if query.is_empty() { "" } else { "&" };
            let url = self.url(&format!("{path}?limit=97{sep}{query}{cursor}"));
            let (code, body) = call("GET", &url, Some(TOKEN), None).unwrap();
            assert_eq!(code, 200, "{url}: {body}");
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            items.extend(v["items"].as_array().unwrap().iter().cloned());
            match v["nextCursor"].as_str() {
                Some(c) => cursor = format!("&cursor={c}"),
                None => return items,
            }
        }
    }
}

impl Drop for History {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// One request: (status, body).
fn call(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<(&str, Vec<u8>)>,
) -> Result<(u16, String), String> {
    let a = agent();
    let auth = token.map(|t| format!("Bearer {t}"));
    let resp = match (method, body) {
        ("GET", _) => {
            let mut r = a.get(url);
            if let Some(h) = &auth {
                r = r.header("Authorization", h);
            }
            r.call()
        }
        (_, b) => {
            let (ct, bytes) = b.unwrap_or(("application/json", Vec::new()));
            let mut r = a.post(url).header("Content-Type", ct);
            if let Some(h) = &auth {
                r = r.header("Authorization", h);
            }
            r.send(&bytes[..])
        }
    };
    let mut resp = resp.map_err(|e| e.to_string())?;
    let code = resp.status().as_u16();
    let text = resp.body_mut().with_config().limit(64 << 20).read_to_string().unwrap_or_default();
    Ok((code, text))
}

fn record(i: u64) -> serde_json::Value {
    // Steady per host; a spike on each host at 300-302, then on every
    // 307th record (307 records apart on one host: robustZ rests 200
    // records per key after an alarm).
    let spike = (300..303).contains(&i) || (i >= 300 && i % 307 == 0);
    let cpu = if spike { 400.0 } else { 40.0 + (i % 7) as f64 };
    serde_json::json!({"id": i, "host": format!("h{}", i % 3), "cpu": cpu})
}

fn ndjson(ids: std::ops::Range<u64>) -> Vec<u8> {
    ids.map(|i| record(i).to_string() + "\n").collect::<String>().into_bytes()
}

/// The output topic, by id: (flagged?, times seen).
fn outputs(topic: &str, want: u64) -> HashMap<u64, (bool, u32)> {
    let mut m: HashMap<u64, (bool, u32)> = HashMap::new();
    for r in kafka::drain(topic, want as usize, Duration::from_secs(30), true).unwrap() {
        let v: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
        let e = m.entry(v["id"].as_u64().unwrap()).or_default();
        e.0 = v["anomaly"]["isAnomaly"].as_bool().unwrap_or(false);
        e.1 += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread")]
async fn real_kafka_published_records_come_back_scored_flagged_and_in_history() {
    let dir = tempfile::tempdir().unwrap();
    let topics = Topics::create("hist", 2).await;
    let manifest = topics.pipeline("hist", "exactlyOnce", "[]");
    let runner = Runner::start(dir.path(), &manifest, &vigil_e2e::unique_name("g"), "r1");
    runner.wait_ready(Duration::from_secs(60));
    let history = History::start(dir.path(), &manifest, Some(TOKEN), &[]);

    // A live follower, started before anything is published.
    let follow_url = history.url("/v1/results?follow=true");
    let (tx, rx) = std::sync::mpsc::channel::<u64>();
    std::thread::spawn(move || {
        let Ok(resp) = agent().get(&follow_url).header("Authorization", &format!("Bearer {TOKEN}")).call()
        else {
            return;
        };
        for line in BufReader::new(resp.into_body().into_reader()).lines() {
            let Ok(line) = line else { return };
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                if let Some(id) = v["id"].as_u64() {
                    if tx.send(id).is_err() {
                        return;
                    }
                }
            }
        }
    });
    std::thread::sleep(Duration::from_secs(2));

    // Publish: NDJSON, a JSON array, and one object; each acknowledged.
    let publish = |body: Vec<u8>, ct: &str| {
        call("POST", &history.url("/v1/records"), Some(TOKEN), Some((ct, body))).unwrap()
    };
    let (code, body) = publish(ndjson(0..500), "application/x-ndjson");
    assert_eq!((code, body.contains("\"accepted\":500")), (200, true), "{body}");
    let array = serde_json::to_vec(&(500..599).map(record).collect::<Vec<_>>()).unwrap();
    let (code, body) = publish(array, "application/json");
    assert_eq!((code, body.contains("\"accepted\":99")), (200, true), "{body}");
    let (code, body) = publish(record(599).to_string().into_bytes(), "application/json");
    assert_eq!(code, 200, "{body}");

    // A record the runner cannot read, straight onto the input topic.
    kafka::produce(&topics.input, &[(Some("h9"), b"{\"id\": 9999, \"cpu\": ".as_slice())]).await.unwrap();

    let p = history.wait_stored(601, "600 outputs and a dead letter");
    assert_eq!(p["history"]["state"], "Running", "{p}");
    assert_eq!(p["name"], "hist");

    // What the output topic has is what the API says.
    let out = outputs(&topics.output, 600);
    assert_eq!(out.len(), 600);
    let flagged: HashSet<u64> = out.iter().filter(|(_, (f, _))| *f).map(|(id, _)| *id).collect();
    assert!(flagged.len() >= 3, "the spikes are flagged: {flagged:?}");
    let anomalies = history.all("/v1/anomalies", "");
    let listed: Vec<u64> = anomalies.iter().map(|a| a["record"]["id"].as_u64().unwrap()).collect();
    assert_eq!(
        listed.iter().copied().collect::<HashSet<_>>(),
        flagged,
        "every flagged record, and only those"
    );
    assert_eq!(listed.len(), flagged.len(), "none twice");
    assert!(
        anomalies
            .iter()
            .all(|a| a["key"].as_str().unwrap().starts_with('h') && a["score"].as_f64().is_some())
    );
    // By key and score.
    let h1 = history.all("/v1/anomalies", "key=h1");
    assert_eq!(h1.len(), flagged.iter().filter(|i| *i % 3 == 1).count());
    let high = history.all("/v1/anomalies", "minScore=0.999999");
    assert!(high.iter().all(|a| a["score"].as_f64().unwrap() >= 0.999999));

    // Per-key minutes add up to the records of each key.
    for (k, want) in [("h0", 200), ("h1", 200), ("h2", 200)] {
        let rows = history.all("/v1/history", &format!("key={k}"));
        let n: i64 = rows.iter().map(|r| r["count"].as_i64().unwrap()).sum();
        assert_eq!(n, want, "{k}: {rows:?}");
        assert!(rows.iter().all(|r| r["features"]["cpu"].as_f64().is_some()), "feature means: {rows:?}");
    }

    // The dead letter, with stage and reason.
    let dead = history.all("/v1/dead-letters", "");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["stage"], "decode");
    assert!(dead[0]["reason"].as_str().unwrap().contains("JSON"), "{}", dead[0]);
    assert_eq!(dead[0]["topic"], topics.input.as_str());
    assert!(dead[0]["payload"].as_str().unwrap().contains("9999"));

    // The follower saw every published record, live.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut followed = HashSet::new();
    while followed.len() < 600 && Instant::now() < deadline {
        if let Ok(id) = rx.recv_timeout(Duration::from_millis(500)) {
            followed.insert(id);
        }
    }
    assert_eq!(followed.len(), 600, "follow=true streamed every scored record");
    // Without follow, from a time: the records since then, then the end.
    let (code, body) = call("GET", &history.url("/v1/results?from=0&limit=10"), Some(TOKEN), None).unwrap();
    assert_eq!(code, 200);
    assert_eq!(body.lines().count(), 10, "{body}");

    // Auth: none, wrong, right.
    assert_eq!(call("GET", &history.url("/v1/anomalies"), None, None).unwrap().0, 401);
    assert_eq!(call("GET", &history.url("/v1/anomalies"), Some("wrong"), None).unwrap().0, 403);
    assert_eq!(
        call("POST", &history.url("/v1/records"), Some("wrong"), Some(("application/json", b"{}".to_vec())))
            .unwrap()
            .0,
        403
    );
    // A rotated Secret (the mounted file changes) is picked up without a
    // restart: the new token works, the old one no longer does.
    std::fs::write(dir.path().join("token"), "rotated-token\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while call("GET", &history.url("/v1/pipeline"), Some("rotated-token"), None).unwrap().0 != 200 {
        assert!(Instant::now() < deadline, "the rotated token was not picked up");
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(call("GET", &history.url("/v1/pipeline"), Some(TOKEN), None).unwrap().0, 403);
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while call("GET", &history.url("/v1/pipeline"), Some(TOKEN), None).unwrap().0 != 200 {
        assert!(Instant::now() < deadline, "the token was not rotated back");
        std::thread::sleep(Duration::from_millis(250));
    }
    // Probes and the document need no token.
    assert_eq!(call("GET", &history.url("/healthz"), None, None).unwrap().0, 200);
    let (code, doc) = call("GET", &history.url("/openapi.json"), None, None).unwrap();
    assert_eq!(code, 200);
    let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
    for path in
        ["/v1/records", "/v1/anomalies", "/v1/history", "/v1/dead-letters", "/v1/results", "/v1/pipeline"]
    {
        assert!(doc["paths"][path].is_object(), "{path} in /openapi.json");
    }

    // 400 names the record; 413 over the limit.
    let (code, body) = publish(b"{\"a\": 1}\n[1, 2]\n".to_vec(), "application/x-ndjson");
    assert_eq!(code, 400);
    assert!(body.contains("line 2") && body.contains("expected a JSON object"), "{body}");
    let (code, body) = publish(b"[{\"a\": 1}, 7]".to_vec(), "application/json");
    assert_eq!(code, 400);
    assert!(body.contains("record 2"), "{body}");
    let (code, _) = publish(vec![b' '; 9 * 1024 * 1024], "application/json");
    assert_eq!(code, 413);
    // Nothing of the refused bodies reached the topic.
    std::thread::sleep(Duration::from_secs(2));
    let p = history.pipeline();
    assert_eq!(p["store"]["records"], 600, "{p}");

    // The CLI reads the same API.
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["anomalies", "--url", &history.url(""), "--limit", "1000", "--json"])
        .env("VIGIL_API_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), flagged.len());
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["history", "--url", &history.url(""), "--key", "h2"])
        .env("VIGIL_API_TOKEN", "wrong")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("403"), "{}", String::from_utf8_lossy(&out.stderr));

    drop(history);
    runner.terminate();
    topics.delete().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn real_kafka_history_kill_9_mid_stream_loses_nothing_and_stores_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let topics = Topics::create("histkill", 3).await;
    let manifest = topics.pipeline("histkill", "exactlyOnce", "[]");
    let runner = Runner::start(dir.path(), &manifest, &vigil_e2e::unique_name("g"), "r1");
    runner.wait_ready(Duration::from_secs(60));
    let total = 60_000u64;
    let records: Vec<String> = (0..total).map(|i| record(i).to_string()).collect();
    let pairs: Vec<(Option<&str>, &[u8])> = records.iter().map(|r| (None, r.as_bytes())).collect();
    kafka::produce(&topics.input, &pairs).await.unwrap();

    // Killed while it is storing, several times.
    for round in 0..3 {
        let h = History::start(dir.path(), &manifest, None, &["--retention", "3650d"]);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (_, body) = call("GET", &h.url("/status"), None, None).unwrap();
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            if v["records"].as_u64().unwrap_or(0) > 2_000 {
                break;
            }
            assert!(Instant::now() < deadline, "round {round}: nothing stored: {body}\n{}", h.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
        h.kill9();
    }
    let h = History::start(dir.path(), &manifest, None, &["--retention", "3650d"]);
    let deadline = Instant::now() + Duration::from_secs(180);
    let p = loop {
        let (_, body) = call("GET", &h.url("/v1/pipeline"), None, None).unwrap();
        let p: serde_json::Value = serde_json::from_str(&body).unwrap();
        if p["store"]["records"].as_u64() == Some(total) && p["history"]["lag"] == 0 {
            break p;
        }
        assert!(
            p["store"]["records"].as_u64().unwrap_or(0) <= total,
            "more records stored than the topic has: {p}"
        );
        assert!(Instant::now() < deadline, "did not catch up: {p}\n{}", h.log_text());
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(p["store"]["records"], total, "every output counted once in the rollups");
    let out = outputs(&topics.output, total);
    assert_eq!(out.len() as u64, total);
    let flagged: HashSet<u64> = out.iter().filter(|(_, (f, _))| *f).map(|(id, _)| *id).collect();
    let listed: Vec<u64> =
        h.all("/v1/anomalies", "").iter().map(|a| a["record"]["id"].as_u64().unwrap()).collect();
    let unique: HashSet<u64> = listed.iter().copied().collect();
    assert_eq!(unique.len(), listed.len(), "no flagged record stored twice");
    assert_eq!(unique, flagged, "every flagged record stored");
    drop(h);
    runner.terminate();
    topics.delete().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn real_kafka_history_retention_removes_rows_older_than_the_spec_says() {
    let dir = tempfile::tempdir().unwrap();
    let topics = Topics::create("histret", 1).await;
    let manifest = topics
        .pipeline("histret", "atLeastOnce", "[]")
        .replace("keyField: host}", "keyField: host, timestampField: ts}\n  storage: {retention: 1h}");
    let runner = Runner::start(dir.path(), &manifest, &vigil_e2e::unique_name("g"), "r1");
    runner.wait_ready(Duration::from_secs(60));
    let h = History::start(dir.path(), &manifest, None, &["--retention-interval", "1s"]);
    let now = chrono::Utc::now().timestamp_millis();
    // 400 records two days old with a spike on each host at 300-302, then
    // 600 from the last minutes with spikes at 960-962 (over 200 records
    // per host later: robustZ rests 200 records per key after an alarm).
    let mk = |i: u64, ts: i64| {
        let spike = (300..303).contains(&i) || (960..963).contains(&i);
        let cpu = if spike { 400.0 } else { 40.0 + (i % 7) as f64 };
        serde_json::json!({"id": i, "host": format!("h{}", i % 3), "cpu": cpu, "ts": ts}).to_string()
    };
    let old: Vec<String> = (0..400).map(|i| mk(i, now - 2 * 86_400_000 + i as i64 * 1000)).collect();
    let new: Vec<String> = (400..1000).map(|i| mk(i, now - 600_000 + (i - 400) as i64 * 1000)).collect();
    let pairs: Vec<(Option<&str>, &[u8])> = old.iter().chain(&new).map(|r| (None, r.as_bytes())).collect();
    kafka::produce(&topics.input, &pairs).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (_, body) = call("GET", &h.url("/status"), None, None).unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        if v["records"].as_u64().unwrap_or(0) >= 1000 && v["lag"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "not stored: {body}");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(3));
    let rows = h.all("/v1/history", "");
    assert!(!rows.is_empty());
    let cutoff = now - 3_600_000;
    for r in &rows {
        let t =
            chrono::DateTime::parse_from_rfc3339(r["minute"].as_str().unwrap()).unwrap().timestamp_millis();
        assert!(t >= cutoff - 60_000, "a minute older than the retention remains: {r}");
    }
    let kept: i64 = rows.iter().map(|r| r["count"].as_i64().unwrap()).sum();
    assert_eq!(kept, 600, "the recent records' minutes remain");
    let anomalies = h.all("/v1/anomalies", "");
    let ids: HashSet<u64> = anomalies.iter().map(|a| a["record"]["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, HashSet::from([960, 961, 962]), "old flagged records removed, new ones kept");
    drop(h);
    runner.terminate();
    topics.delete().await;
}

/// Send raw bytes on a fresh connection; the status code of the answer.
fn raw(port: u16, request: &[u8]) -> Option<u16> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(request).ok()?;
    let mut text = Vec::new();
    let _ = s.read_to_end(&mut text);
    String::from_utf8_lossy(&text).split(' ').nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn real_kafka_data_api_answers_a_malformed_request_corpus_with_clear_4xx_and_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let topics = Topics::create("histbad", 1).await;
    let manifest = topics.pipeline("histbad", "atLeastOnce", "[]");
    let h = History::start(dir.path(), &manifest, None, &["--max-body-bytes", "65536"]);
    let get = |q: &str| call("GET", &h.url(q), None, None).unwrap();
    let post = |body: &[u8]| {
        call("POST", &h.url("/v1/records"), None, Some(("application/json", body.to_vec()))).unwrap()
    };

    // Slow clients: connections that send half a request and stall.
    let stalled: Vec<std::net::TcpStream> = (0..20)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", h.port)).unwrap();
            s.write_all(b"POST /v1/records HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"a\":")
                .unwrap();
            s
        })
        .collect();

    let cases: Vec<(&str, (u16, String), &str)> = vec![
        ("bad JSON", post(b"{\"a\": "), "not JSON"),
        ("a number", post(b"42"), "expected a JSON object"),
        ("a string", post(b"\"x\""), "expected a JSON object"),
        ("empty array", post(b"[]"), "empty"),
        ("empty body", post(b""), "empty"),
        ("not UTF-8", post(&[0xff, 0xfe, 0x7b]), "UTF-8"),
        ("deep nesting", post(&[b'['; 60_000][..]), ""),
        ("huge body", post(&vec![b'{'; 100_000]), ""),
        ("limit=-1", get("/v1/anomalies?limit=-1"), "limit"),
        ("limit=abc", get("/v1/anomalies?limit=abc"), "limit"),
        ("limit too big", get("/v1/anomalies?limit=100000"), "limit"),
        ("from garbage", get("/v1/anomalies?from=yesterday"), "from"),
        ("from after to", get("/v1/anomalies?from=2000&to=1000"), "after"),
        ("bad cursor", get("/v1/anomalies?cursor=..%2F..%2Fetc"), "cursor"),
        ("forged cursor", get("/v1/history?cursor=v1.zz.1"), "cursor"),
        ("minScore 2", get("/v1/anomalies?minScore=2"), "minScore"),
        ("unknown parameter", get("/v1/anomalies?limt=5"), "unknown parameter"),
        ("long key", get(&format!("/v1/anomalies?key={}", "k".repeat(5000))), "key"),
        ("follow=maybe", get("/v1/results?follow=maybe"), "follow"),
        ("path traversal", get("/v1/../../etc/passwd"), ""),
        ("encoded traversal", get("/v1/%2e%2e/%2e%2e/etc/passwd"), ""),
        ("unknown path", get("/v2/anomalies"), "no such endpoint"),
        ("null byte", get("/v1/anomalies%00"), ""),
    ];
    for (what, (code, body), says) in &cases {
        assert!((400..500).contains(code), "{what}: {code} {body}");
        assert!(body.contains(says), "{what}: {code} {body}");
    }
    assert_eq!(cases[6].1.0, 400, "deep nesting is refused by the parser's depth limit");
    assert_eq!(cases[7].1.0, 413, "over --max-body-bytes");
    // Wrong method, malformed request lines and headers.
    assert_eq!(call("POST", &h.url("/v1/anomalies"), None, None).unwrap().0, 405);
    assert_eq!(raw(h.port, b"GARBAGE\r\n\r\n"), Some(400));
    assert_eq!(
        raw(h.port, b"GET /v1/anomalies HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n"),
        Some(400)
    );
    // Still serving, stalled connections and all.
    let (code, body) = get("/v1/anomalies");
    assert_eq!(code, 200, "{body}");
    let (code, _) = post(b"{\"id\": 1, \"host\": \"h1\", \"cpu\": 40}");
    assert_eq!(code, 200);
    drop(stalled);
    drop(h);
    topics.delete().await;
}

/// `mount` / `umount` (the tests run as root, as the real node needs).
fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Unmounts the small volume whatever happens.
struct Mounted(PathBuf);
impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn real_kafka_history_a_full_volume_is_reported_not_a_crash_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let topics = Topics::create("histfull", 1).await;
    let manifest = topics.pipeline("histfull", "atLeastOnce", "[]");
    // A 3 MiB volume, and 3,000 flagged records of 4 KiB of noise each
    // (12 MiB that no dictionary shrinks) already on the output topic.
    let vol = dir.path().join("vol");
    std::fs::create_dir(&vol).unwrap();
    sh(&["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", vol.to_str().unwrap()]);
    let _mounted = Mounted(vol.clone());
    let total = 3000u64;
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let records: Vec<String> = (0..total)
        .map(|i| {
            let noise: String = (0..4096)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    char::from(b'a' + (x % 26) as u8)
                })
                .collect();
            serde_json::json!({"id": i, "host": format!("h{}", i % 3), "cpu": 99.0, "noise": noise,
                "anomaly": {"score": 0.99, "isAnomaly": true, "detector": "robustZ"}})
            .to_string()
        })
        .collect();
    let pairs: Vec<(Option<&str>, &[u8])> = records.iter().map(|r| (None, r.as_bytes())).collect();
    kafka::produce(&topics.output, &pairs).await.unwrap();

    let h = History::start_in(dir.path(), &vol.join("store"), &manifest, None, &[]);
    let deadline = Instant::now() + Duration::from_secs(90);
    let full = loop {
        let (_, body) = call("GET", &h.url("/status"), None, None).unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        if v["state"] == "VolumeFull" {
            break v;
        }
        assert!(Instant::now() < deadline, "never reported a full volume: {body}\n{}", h.log_text());
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(full["message"].as_str().unwrap().contains("spec.storage.size"), "says what to do: {full}");
    // Reported, not a crash: alive, not ready (with the reason), still
    // answering queries on what it has.
    std::thread::sleep(Duration::from_secs(3));
    let (code, body) = call("GET", &h.url("/readyz"), None, None).unwrap();
    assert_eq!(code, 503);
    assert!(body.contains("VolumeFull"), "{body}");
    assert_eq!(call("GET", &h.url("/healthz"), None, None).unwrap().0, 200);
    assert_eq!(call("GET", &h.url("/v1/anomalies?limit=5"), None, None).unwrap().0, 200);
    let (_, metrics) = call("GET", &h.url("/metrics"), None, None).unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with("vigil_history_write_failures_total") && !l.ends_with(" 0")),
        "{metrics}"
    );

    // Room again: it resumes by itself from what it stored, and every
    // record is there once.
    sh(&["mount", "-o", "remount,size=256m", vol.to_str().unwrap()]);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, body) = call("GET", &h.url("/v1/pipeline"), None, None).unwrap();
        let p: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        if p["store"]["records"].as_u64() == Some(total) && p["history"]["state"] == "Running" {
            break;
        }
        assert!(Instant::now() < deadline, "did not resume: {p}\n{}", h.log_text());
        std::thread::sleep(Duration::from_millis(500));
    }
    let ids: Vec<u64> =
        h.all("/v1/anomalies", "").iter().map(|a| a["record"]["id"].as_u64().unwrap()).collect();
    let unique: HashSet<u64> = ids.iter().copied().collect();
    assert_eq!((ids.len(), unique.len()), (total as usize, total as usize), "every record once");
    drop(h);
    topics.delete().await;
}
