use super::store::*;

fn features() -> Vec<String> {
    vec!["cpu".into(), "mem".into()]
}

fn batch_of(n: i64, start: i64) -> Batch {
    let mut b = Batch::default();
    for i in 0..n {
        let ts = start + i * 1000;
        let key = format!("k{}", i % 3);
        let flagged = i % 10 == 0;
        let score = if flagged { 0.99 } else { 0.1 };
        b.roll(&key, ts, Some(score), flagged, &[Some(i as f64), None]);
        if flagged {
            b.anomalies.push(NewAnomaly { ts, key, score, record: format!(r#"{{"i":{i}}}"#) });
        }
    }
    b.offsets.insert(("out".into(), 0), start / 1000 + n);
    b
}

#[test]
fn writes_rollups_that_add_up_across_batches_and_offsets_move_with_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(dir.path(), &features()).unwrap();
    // 120 records a second apart: two minutes, three keys; written in two
    // batches that split the first minute.
    s.write(&batch_of(30, 0)).unwrap();
    let mut b2 = Batch::default();
    for i in 30..120 {
        let ts = i * 1000;
        let flagged = i % 10 == 0;
        b2.roll(
            &format!("k{}", i % 3),
            ts,
            Some(if flagged { 0.99 } else { 0.1 }),
            flagged,
            &[Some(i as f64), None],
        );
    }
    b2.offsets.insert(("out".into(), 0), 120);
    s.write(&b2).unwrap();
    assert_eq!(s.offsets().unwrap()[&("out".to_string(), 0)], 120);
    let page = s.history(&Query { key: Some("k0".into()), limit: 10, ..Query::default() }).unwrap();
    assert_eq!(page.items.len(), 2, "two minutes of k0");
    let m0 = &page.items[0];
    // k0 in the first minute: i = 0, 3, ..., 57 -> 20 records, mean i 28.5.
    assert_eq!(m0.count, 20);
    assert_eq!(m0.anomalies, 2 + 0, "i = 0 and 30 are multiples of 10 and 3");
    assert!((m0.features["cpu"] - 28.5).abs() < 1e-9, "{m0:?}");
    assert!(!m0.features.contains_key("mem"), "a feature never seen has no mean");
    assert_eq!(m0.max_score, Some(0.99));
    assert_eq!(s.stats().unwrap().records, 120);
}

#[test]
fn cursor_pagination_visits_every_row_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(dir.path(), &features()).unwrap();
    s.write(&batch_of(1000, 0)).unwrap();
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = s.anomalies(&Query { limit: 7, cursor: cursor.take(), ..Query::default() }).unwrap();
        seen.extend(page.items.iter().map(|a| a.record["i"].as_i64().unwrap()));
        match page.next_cursor {
            Some(c) => cursor = Some(Cursor::decode(&c).unwrap()),
            None => break,
        }
    }
    assert_eq!(seen, (0..1000).step_by(10).collect::<Vec<_>>());
    // Rollups across all keys page by (minute, key) the same way.
    let mut rows = Vec::new();
    let mut cursor = None;
    loop {
        let page = s.history(&Query { limit: 4, cursor: cursor.take(), ..Query::default() }).unwrap();
        rows.extend(page.items.iter().map(|r| (r.minute.clone(), r.key.clone())));
        match page.next_cursor {
            Some(c) => cursor = Some(Cursor::decode(&c).unwrap()),
            None => break,
        }
    }
    let mut sorted = rows.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(rows, sorted, "in order, none twice");
    assert_eq!(rows.len(), 17 * 3, "1000 s is 17 minutes, three keys each");
}

#[test]
fn queries_filter_by_time_key_and_score() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(dir.path(), &features()).unwrap();
    let mut b = batch_of(100, 0);
    b.anomalies.push(NewAnomaly { ts: 5_500, key: "k1".into(), score: 0.7, record: r#"{"i":-1}"#.into() });
    s.write(&b).unwrap();
    let q = |from, to, key: Option<&str>, min| Query {
        from,
        to,
        key: key.map(String::from),
        min_score: min,
        limit: 1000,
        cursor: None,
    };
    assert_eq!(s.anomalies(&q(None, None, None, None)).unwrap().items.len(), 11);
    assert_eq!(
        s.anomalies(&q(Some(10_000), Some(30_000), None, None)).unwrap().items.len(),
        2,
        "[10 s, 30 s)"
    );
    assert_eq!(
        s.anomalies(&q(None, None, Some("k1"), None)).unwrap().items.len(),
        4,
        "i = 10, 40, 70 and the extra"
    );
    assert_eq!(s.anomalies(&q(None, None, None, Some(0.9))).unwrap().items.len(), 10);
    assert_eq!(s.anomalies(&q(None, None, Some("nope"), None)).unwrap().items.len(), 0);
}

#[test]
fn retention_removes_old_rows_and_keeps_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(dir.path(), &features()).unwrap();
    s.write(&batch_of(600, 0)).unwrap();
    let mut dl = Batch::default();
    for ts in [1_000, 500_000] {
        dl.dead_letters.push(NewDeadLetter {
            ts,
            stage: "decode".into(),
            reason: "not JSON".into(),
            topic: "in".into(),
            partition: Some(0),
            offset: Some(ts),
            truncated: false,
            original_size: 3,
            payload: b"{{{".to_vec(),
        });
    }
    s.write(&dl).unwrap();
    s.enforce_retention(300_000).unwrap();
    let all = Query { limit: 1000, ..Query::default() };
    let a = s.anomalies(&all).unwrap().items;
    assert!(a.iter().all(|r| r.record["i"].as_i64().unwrap() >= 300), "{}", a.len());
    assert_eq!(a.len(), 30);
    assert_eq!(s.dead_letters(&all).unwrap().items.len(), 1);
    let h = s.history(&all).unwrap().items;
    assert_eq!(h.len(), 5 * 3, "minutes 5-9 remain");
}

#[test]
fn a_truncated_database_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = Store::open(dir.path(), &features()).unwrap();
        s.write(&batch_of(20_000, 0)).unwrap();
    }
    let path = dir.path().join(FILE);
    let len = std::fs::metadata(&path).unwrap().len();
    assert!(len > 100_000, "the log was checkpointed into the file on close: {len}");
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(len / 2).unwrap();
    let err = Store::open(dir.path(), &features()).err().expect("refused").to_string();
    assert!(err.contains("truncated") && err.contains("move it away"), "{err}");
    let err = Store::open_read_only(dir.path()).err().expect("refused").to_string();
    assert!(err.contains("truncated"), "{err}");
    // Not a database at all.
    std::fs::write(&path, b"hello").unwrap();
    let err = Store::open(dir.path(), &features()).err().expect("refused").to_string();
    assert!(err.contains("shorter than a SQLite header"), "{err}");
}

#[test]
fn a_page_damaged_in_place_is_caught_by_the_check_at_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = Store::open(dir.path(), &features()).unwrap();
        s.write(&batch_of(5_000, 0)).unwrap();
    }
    let path = dir.path().join(FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    // Scribble over the middle of the file (b-tree pages), keeping its size.
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 4096] {
        *b = 0xA5;
    }
    std::fs::write(&path, &bytes).unwrap();
    let err = Store::open(dir.path(), &features()).err().expect("refused").to_string();
    assert!(err.contains("damaged") || err.contains("integrity"), "{err}");
}

#[test]
fn cursors_that_were_not_issued_are_refused() {
    for bad in ["", "v1", "v1.zz.1", "v2.1.1", "v1.1.1.1.1", "v1.1.1.abc", "../../etc/passwd", "v1.1.1.ff"] {
        assert!(Cursor::decode(bad).is_err(), "{bad}");
    }
    let c = Cursor { ts: -5, id: 9, key: Some("machine 7/é".into()) };
    assert_eq!(Cursor::decode(&c.encode()).unwrap(), c);
}

#[test]
fn flagged_records_are_compressed_once_a_dictionary_is_trained_and_read_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(dir.path(), &features()).unwrap();
    let record = |i: i64| {
        format!(
            r#"{{"ts":{i},"host":"host-{:03}","cpu":{}.5,"anomaly":{{"score":0.97,"isAnomaly":true,"detector":"robustZ","explanation":[{{"feature":"cpu","weight":1.0,"value":{}.5,"expected":41.0}}]}}}}"#,
            i % 100,
            40 + i % 13,
            40 + i % 13
        )
    };
    for b in 0..3 {
        let mut batch = Batch::default();
        for i in b * 1000..(b + 1) * 1000 {
            batch.anomalies.push(NewAnomaly {
                ts: i,
                key: format!("host-{:03}", i % 100),
                score: 0.97,
                record: record(i),
            });
        }
        s.write(&batch).unwrap();
    }
    // Read back through a fresh read-only handle, as the API does.
    let r = Store::open_read_only(dir.path()).unwrap();
    let mut all = Vec::new();
    let mut cursor = None;
    loop {
        let page = r.anomalies(&Query { limit: 1000, cursor: cursor.take(), ..Query::default() }).unwrap();
        all.extend(page.items);
        match page.next_cursor {
            Some(c) => cursor = Some(Cursor::decode(&c).unwrap()),
            None => break,
        }
    }
    assert_eq!(all.len(), 3000);
    for (i, a) in all.iter().enumerate() {
        let want: serde_json::Value = serde_json::from_str(&record(i as i64)).unwrap();
        assert_eq!(a.record, want, "record {i}");
    }
    let raw: i64 = (0..3000).map(|i| record(i).len() as i64).sum();
    let n_dict: i64 = {
        let c = rusqlite::Connection::open(dir.path().join(FILE)).unwrap();
        c.query_row("SELECT count(*) FROM anomalies WHERE dict != 0", [], |r| r.get(0)).unwrap()
    };
    assert_eq!(n_dict, 2000, "the first 1000 train the dictionary; the rest use it");
    let stored: i64 = {
        let c = rusqlite::Connection::open(dir.path().join(FILE)).unwrap();
        c.query_row("SELECT sum(length(record)) FROM anomalies WHERE dict != 0", [], |r| r.get(0)).unwrap()
    };
    let raw_later: i64 = (1000..3000).map(|i| record(i).len() as i64).sum();
    assert!(stored * 3 < raw_later, "compressed {stored} bytes from {raw_later} ({raw} in all)");
}
