//! Single-core throughput on the records users run, parse to encode
//! (issue 13, part 1): the peer data set of `../shared/peers/` (JSON lines,
//! 100 keys, four numeric features) through each shipped online detector,
//! and a wide nested record (30 fields) through a transform-heavy pipeline.
//!
//! Two figures per pipeline, both on one core:
//! - **engine**: the records already in memory, decoded, transformed,
//!   scored and encoded by one `Engine` (what a runner's processing thread
//!   does between the consumer and the producer);
//! - **vigil local**: the release binary reading a file and writing every
//!   scored record to /dev/null, timed from process start to exit.
//!
//! `cargo bench -p vigil-runner --bench peer`. The records are generated
//! here in the peer data set's shape (8-cluster mixture, 0.1 % outliers,
//! six decimals); `VIGIL_PEER_DATA=DIR` reads the files of
//! `gen_jsonl.py --out DIR` instead. `VIGIL_PEER_RECORDS` (default
//! 2,000,000) sets how many. Results in runner/BENCHMARKS.md.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use vigil_runner::codec::Meta;
use vigil_runner::engine::{Engine, Event};

const PEER_PIPELINES: [&str; 4] = ["robust-z", "seasonal", "sensor-z", "half-space-trees"];
const WIDE_PIPELINE: &str = "wide-transforms";
const ROUNDS: usize = 3;

/// splitmix64, for reproducible data without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.unit().max(f64::MIN_POSITIVE), self.unit());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// The peer data set's shape: `{"ts","key","f1".."f4"}`, 100 keys, features
/// from a mixture of 8 unit Gaussians with centres in [-10, 10]^4, 0.1 %
/// uniform outliers in [-30, 30]^4.
fn peer_records(n: usize) -> Vec<u8> {
    let mut rng = Rng(7);
    let centres: Vec<[f64; 4]> = (0..8).map(|_| std::array::from_fn(|_| rng.unit() * 20.0 - 10.0)).collect();
    let mut out = Vec::with_capacity(n * 100);
    for i in 0..n {
        let c = &centres[(rng.next() % 8) as usize];
        let outlier = rng.unit() < 0.001;
        let f: [f64; 4] =
            std::array::from_fn(|d| if outlier { rng.unit() * 60.0 - 30.0 } else { c[d] + rng.normal() });
        let key = rng.next() % 100;
        writeln!(
            out,
            r#"{{"ts":{},"key":"sensor-{key}","f1":{:.6},"f2":{:.6},"f3":{:.6},"f4":{:.6}}}"#,
            1_700_000_000_000u64 + i as u64,
            f[0],
            f[1],
            f[2],
            f[3]
        )
        .expect("write to memory");
    }
    out
}

/// A wide record as devices send them: 30 leaves under nested objects,
/// a number sent as a string, a sometimes-missing reading, text to drop.
fn wide_records(n: usize) -> Vec<u8> {
    let mut rng = Rng(11);
    let mut out = Vec::with_capacity(n * 700);
    for i in 0..n {
        let dev = rng.next() % 1000;
        let temp_in = 20.0 + 5.0 * rng.normal();
        let humidity =
            if rng.unit() < 0.02 { "null".to_string() } else { format!("{:.2}", 40.0 + 10.0 * rng.unit()) };
        let code = if rng.unit() < 0.01 { 503 } else { 200 };
        writeln!(
            out,
            concat!(
                r#"{{"ts":{},"device_id":"dev-{}","device":{{"model":"X{}","firmware":"2.{}.1"}},"#,
                r#""site":{{"name":"plant-{}","address":"Industriestrasse {}, 8000 Zurich","zone":"{}"}},"#,
                r#""status":{{"code":"{}","uptime_s":{},"restarts":{}}},"#,
                r#""metrics":{{"temp_in":{:.3},"temp_out":{:.3},"voltage":{:.2},"current":{:.3},"rpm":"{:.1}","#,
                r#""humidity":{},"pressure":{:.2},"vibration_x":{:.4},"vibration_y":{:.4},"vibration_z":{:.4},"#,
                r#""flow":{:.3},"level":{:.2},"torque":{:.3},"noise_db":{:.1}}},"#,
                r#""alarms":{{"overheat":{},"low_flow":{}}},"operator":"shift-{}","batch":{},"notes":"routine reading, nothing to report"}}"#
            ),
            1_700_000_000_000u64 + i as u64,
            dev,
            dev % 7,
            dev % 5,
            dev % 12,
            dev % 200,
            ["north", "south", "east"][(dev % 3) as usize],
            code,
            1_000_000 + i,
            dev % 4,
            temp_in,
            temp_in + 8.0 + rng.normal(),
            230.0 + 3.0 * rng.normal(),
            4.0 + 0.2 * rng.normal(),
            1500.0 + 30.0 * rng.normal(),
            humidity,
            1013.0 + 5.0 * rng.normal(),
            0.01 * rng.normal(),
            0.01 * rng.normal(),
            0.01 * rng.normal(),
            12.0 + rng.normal(),
            3.0 + 0.1 * rng.normal(),
            80.0 + 4.0 * rng.normal(),
            70.0 + 3.0 * rng.normal(),
            rng.unit() < 0.001,
            rng.unit() < 0.001,
            i % 3,
            i / 1000,
        )
        .expect("write to memory");
    }
    out
}

fn read_peer_dir(dir: &Path, limit: usize) -> Vec<u8> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("VIGIL_PEER_DATA={}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        out.extend(std::fs::read(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display())));
        if bytecount_lines(&out) >= limit {
            break;
        }
    }
    out
}

fn bytecount_lines(b: &[u8]) -> usize {
    b.iter().filter(|&&c| c == b'\n').count()
}

fn pipeline_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/peer").join(format!("{name}.yaml"))
}

/// Records/s of one engine over the records in memory, best of `ROUNDS`
/// fresh engines (each run starts with no key state, as a process does).
fn engine_rate(name: &str, data: &[u8]) -> (f64, usize) {
    let text = std::fs::read_to_string(pipeline_path(name)).expect("bench pipeline");
    let spec = vigil_crds::manifest::single_pipeline(&text).expect("valid bench pipeline").spec;
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
    let mut best = 0.0f64;
    let mut outputs = 0;
    for _ in 0..ROUNDS {
        let mut engine = Engine::new(&spec, None, None).expect("engine");
        let (mut out, mut bytes) = (0usize, 0usize);
        let start = Instant::now();
        for line in &lines {
            engine.process(line, Meta::default(), &mut |ev| {
                if let Event::Output(o) = ev {
                    out += 1;
                    bytes += o.json.len();
                }
            });
        }
        let secs = start.elapsed().as_secs_f64();
        std::hint::black_box(bytes);
        best = best.max(lines.len() as f64 / secs);
        outputs = out;
    }
    (best, outputs)
}

/// Records/s of `vigil local` over `file`, process start to exit, best of
/// `ROUNDS`.
fn local_rate(name: &str, file: &Path, records: usize) -> f64 {
    let mut best = 0.0f64;
    for _ in 0..ROUNDS {
        let start = Instant::now();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
            .arg("local")
            .arg(pipeline_path(name))
            .args(["--format", "json", "-o", "/dev/null", "-i"])
            .arg(file)
            .output()
            .expect("run vigil local");
        let secs = start.elapsed().as_secs_f64();
        assert!(out.status.success(), "vigil local {name}: {}", String::from_utf8_lossy(&out.stderr));
        best = best.max(records as f64 / secs);
    }
    best
}

fn main() {
    let records: usize =
        std::env::var("VIGIL_PEER_RECORDS").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000_000);
    let peer = match std::env::var_os("VIGIL_PEER_DATA") {
        Some(dir) => read_peer_dir(Path::new(&dir), records),
        None => peer_records(records),
    };
    let peer_n = bytecount_lines(&peer);
    let wide_n = records / 4;
    let wide = wide_records(wide_n);
    let dir = tempfile::tempdir().expect("temp dir");
    let peer_file = dir.path().join("peer.jsonl");
    let wide_file = dir.path().join("wide.jsonl");
    std::fs::write(&peer_file, &peer).expect("write peer data");
    std::fs::write(&wide_file, &wide).expect("write wide data");
    println!(
        "peer data: {peer_n} records, {:.0} bytes each; wide: {wide_n} records, {:.0} bytes each",
        peer.len() as f64 / peer_n as f64,
        wide.len() as f64 / wide_n as f64
    );
    println!("{:<18} {:>14} {:>16} {:>10}", "pipeline", "engine rec/s", "vigil local rec/s", "outputs");
    let cases = PEER_PIPELINES.iter().map(|p| (*p, &peer, &peer_file, peer_n)).chain([(
        WIDE_PIPELINE,
        &wide,
        &wide_file,
        wide_n,
    )]);
    for (name, data, file, n) in cases {
        let (engine, outputs) = engine_rate(name, data);
        let local = local_rate(name, file, n);
        println!("{name:<18} {engine:>14.0} {local:>16.0} {outputs:>10}");
    }
}
