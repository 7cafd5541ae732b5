//! The processing core shared by every mode (`vigil local`, `vigil run`,
//! `vigil eval`, benchmarks): bytes in, decoded, transformed, scored and
//! encoded, or rejected with the stage and reason. No I/O happens here.

use vigil_crds::{PipelineSpec, RecordFormat};

use crate::codec::json::write_fields;
use crate::codec::{Decoder, Meta};
use std::sync::Arc;

use crate::detectors::{DetectorStage, Scored};
use crate::models::Model;
use crate::record::{Interner, Record};
use crate::transforms::{self, BuildCtx, Ctx, Transform};

/// Why a record could not be processed: where, and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// `decode`, `transforms[2].cast`, `detector`, ...
    pub stage: String,
    /// What was wrong, naming the field.
    pub reason: String,
}

/// A scored record ready to write.
#[derive(Debug)]
pub struct Emitted<'a> {
    /// The output record as JSON.
    pub json: &'a [u8],
    /// The record's key.
    pub key: &'a str,
    /// Event time, ms since the epoch.
    pub ts_ms: i64,
    /// The score, if the record was scored.
    pub score: Option<f64>,
    /// Whether it is flagged.
    pub is_anomaly: bool,
    /// The record itself (fields as typed values).
    pub record: &'a Record,
}

/// What processing one input produced, in order.
#[derive(Debug)]
pub enum Event<'a> {
    /// A scored record.
    Output(Emitted<'a>),
    /// A record that must go to the dead-letter sink (the input's bytes,
    /// with this reason).
    Rejected(Rejection),
}

/// Counters of one engine's work.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Inputs offered.
    pub records_in: u64,
    /// Records written out.
    pub records_out: u64,
    /// Of those, flagged anomalous.
    pub anomalies: u64,
    /// Inputs (or derived records) rejected.
    pub dead_lettered: u64,
    /// Records a filter dropped.
    pub filtered: u64,
}

/// Transforms to build: where errors point, the prefix of stage names in
/// dead letters, and the transforms.
type Step<'a> = (&'a str, &'a str, &'a [vigil_crds::Transform]);

/// One pipeline's processing state.
pub struct Engine {
    interner: Interner,
    decoder: Decoder,
    stages: Vec<(String, Box<dyn Transform>)>,
    /// `None` for a transform-only engine (training data).
    detector: Option<DetectorStage>,
    rec: Record,
    bufs: [Vec<Record>; 2],
    out: Vec<u8>,
    counts: Counts,
}

impl Engine {
    /// Build from a spec. `format` and `columns` override the spec's input
    /// encoding (a file's extension and header in local mode). A spec whose
    /// detector is a `modelRef` needs `with_model`.
    pub fn new(
        spec: &PipelineSpec,
        format: Option<RecordFormat>,
        columns: Option<&[String]>,
    ) -> Result<Self, String> {
        Self::with_model(spec, format, columns, None)
    }

    /// Build from a spec whose detector scores with `model` (the Model's
    /// transforms run after the Pipeline's).
    pub fn with_model(
        spec: &PipelineSpec,
        format: Option<RecordFormat>,
        columns: Option<&[String]>,
        model: Option<Arc<Model>>,
    ) -> Result<Self, String> {
        let max_keys = usize::try_from(spec.detector.max_keys).unwrap_or(1);
        let mut steps: Vec<Step> = vec![("spec.", "", &spec.transforms)];
        let model_prefix = model.as_ref().map(|m| format!("Model {} spec.", m.artifact.metadata.model));
        if let (Some(m), Some(prefix)) = (&model, &model_prefix) {
            steps.push((prefix, "model.", &m.artifact.metadata.transforms));
        }
        let mut engine = Self::build(&spec.input.encoding, format, columns, &steps, max_keys)?;
        let detector = match model {
            Some(m) => DetectorStage::for_model(&spec.detector, m, &mut engine.interner),
            None => DetectorStage::new(&spec.detector, &mut engine.interner),
        };
        engine.detector = Some(detector.map_err(|e| format!("spec.detector: {e}"))?);
        Ok(engine)
    }

    /// An engine that decodes and transforms but does not score: every
    /// record that comes through is emitted as it is (training data).
    pub fn transform_only(
        encoding: &vigil_crds::RecordEncoding,
        format: RecordFormat,
        columns: Option<&[String]>,
        transforms: &[vigil_crds::Transform],
    ) -> Result<Self, String> {
        Self::build(encoding, Some(format), columns, &[("spec.", "", transforms)], 10_000)
    }

    fn build(
        enc: &vigil_crds::RecordEncoding,
        format: Option<RecordFormat>,
        columns: Option<&[String]>,
        steps: &[Step<'_>],
        max_keys: usize,
    ) -> Result<Self, String> {
        let mut interner = Interner::default();
        let decoder = Decoder::new(enc, format.unwrap_or(enc.format), columns, &mut interner)
            .map_err(|e| e.to_string())?;
        let mut stages = Vec::new();
        for (errors_at, stage_prefix, transforms) in steps {
            for (i, t) in transforms.iter().enumerate() {
                let name = format!("transforms[{i}].{}", transforms::verb(t));
                let built = transforms::build(t, &mut BuildCtx { interner: &mut interner, max_keys })
                    .map_err(|e| format!("{errors_at}{name}: {e}"))?;
                stages.push((format!("{stage_prefix}{name}"), built));
            }
        }
        Ok(Engine {
            interner,
            decoder,
            stages,
            detector: None,
            rec: Record::default(),
            bufs: [Vec::new(), Vec::new()],
            out: Vec::with_capacity(512),
            counts: Counts::default(),
        })
    }

    /// The detector (name, threshold, features); `None` for a
    /// transform-only engine.
    pub fn detector(&self) -> Option<&DetectorStage> {
        self.detector.as_ref()
    }

    /// Swap the model a `modelRef` detector scores with (hot reload), between
    /// two records. Refused when the new version reads other features or
    /// was trained with other transforms.
    pub fn swap_model(&mut self, model: Arc<Model>) -> Result<(), String> {
        match self.detector.as_mut() {
            Some(d) => d.swap_model(model),
            None => Err("this engine has no detector".into()),
        }
    }

    /// The id of a field name (for readers of emitted records).
    pub fn intern(&mut self, name: &str) -> Result<crate::record::FieldId, String> {
        self.interner.intern(name).map_err(|e| e.to_string())
    }

    /// What the engine has done so far.
    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// Process one input record; `sink` sees every output and rejection.
    pub fn process(&mut self, bytes: &[u8], meta: Meta<'_>, sink: &mut impl FnMut(Event<'_>)) {
        self.counts.records_in += 1;
        let mut rec = std::mem::take(&mut self.rec);
        if let Err(reason) = self.decoder.decode(bytes, meta, &mut self.interner, &mut rec) {
            self.rec = rec;
            self.reject("decode".into(), reason, sink);
            return;
        }
        self.run_from(0, rec, sink);
    }

    /// The input has ended: emit what transforms hold back (open windows).
    pub fn flush(&mut self, sink: &mut impl FnMut(Event<'_>)) {
        for i in 0..self.stages.len() {
            let mut held = Vec::new();
            self.stages[i].1.flush(&mut Ctx { interner: &mut self.interner }, &mut held);
            for rec in held {
                self.run_from(i + 1, rec, sink);
            }
        }
    }

    fn reject(&mut self, stage: String, reason: String, sink: &mut impl FnMut(Event<'_>)) {
        self.counts.dead_lettered += 1;
        sink(Event::Rejected(Rejection { stage, reason }));
    }

    /// Run `rec` through the stages from `first` on, then score and emit.
    fn run_from(&mut self, first: usize, rec: Record, sink: &mut impl FnMut(Event<'_>)) {
        let [mut cur, mut next] = std::mem::take(&mut self.bufs);
        cur.clear();
        cur.push(rec);
        for i in first..self.stages.len() {
            next.clear();
            for rec in cur.drain(..) {
                let (name, stage) = &mut self.stages[i];
                let before = next.len();
                match stage.apply(rec, &mut Ctx { interner: &mut self.interner }, &mut next) {
                    Ok(()) => {
                        if next.len() == before && !is_window(name) {
                            self.counts.filtered += 1;
                        }
                    }
                    Err(reason) => {
                        let stage = name.clone();
                        self.reject(stage, reason, sink);
                    }
                }
            }
            std::mem::swap(&mut cur, &mut next);
        }
        for rec in cur.drain(..) {
            self.score_and_emit(&rec, sink);
            // Keep one record's allocation for the next decode.
            self.rec = rec;
        }
        self.bufs = [cur, next];
    }

    fn score_and_emit(&mut self, rec: &Record, sink: &mut impl FnMut(Event<'_>)) {
        self.out.clear();
        self.out.push(b'{');
        let wrote = write_fields(&mut self.out, &rec.fields, &self.interner);
        let Some(detector) = self.detector.as_mut() else {
            self.out.push(b'}');
            self.counts.records_out += 1;
            sink(Event::Output(Emitted {
                json: &self.out,
                key: &rec.key,
                ts_ms: rec.ts_ms,
                score: None,
                is_anomaly: false,
                record: rec,
            }));
            return;
        };
        let scored: Scored = match detector.score(rec, &self.interner) {
            Ok(s) => s,
            Err(reason) => {
                self.counts.dead_lettered += 1;
                sink(Event::Rejected(Rejection { stage: "detector".into(), reason }));
                return;
            }
        };
        if wrote {
            self.out.push(b',');
        }
        detector.write_anomaly(&mut self.out, &scored, detector.last_values());
        self.out.push(b'}');
        self.counts.records_out += 1;
        self.counts.anomalies += scored.is_anomaly as u64;
        sink(Event::Output(Emitted {
            json: &self.out,
            key: &rec.key,
            ts_ms: rec.ts_ms,
            score: scored.score.as_ref().map(|s| s.value),
            is_anomaly: scored.is_anomaly,
            record: rec,
        }));
    }
}

fn is_window(stage: &str) -> bool {
    stage.ends_with(".window")
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_crds::manifest::single_pipeline;

    fn engine(transforms: &str, detector: &str) -> Engine {
        let yaml = format!(
            "apiVersion: vigil.dev/v1alpha1\nkind: Pipeline\nmetadata: {{name: t}}\nspec:\n  input: {{topic: {{name: in}}, keyField: host}}\n  transforms: {transforms}\n  detector: {detector}\n  output: {{name: out}}\n  deadLetter: {{name: dlq}}\n"
        );
        let p = single_pipeline(&yaml).unwrap_or_else(|e| panic!("{e}"));
        Engine::new(&p.spec, None, None).unwrap()
    }

    fn run(e: &mut Engine, input: &str) -> Vec<Result<String, (String, String)>> {
        let mut out = Vec::new();
        e.process(input.as_bytes(), Meta::default(), &mut |ev| match ev {
            Event::Output(o) => out.push(Ok(String::from_utf8(o.json.to_vec()).unwrap())),
            Event::Rejected(r) => out.push(Err((r.stage, r.reason))),
        });
        out
    }

    #[test]
    fn output_keeps_input_fields_and_adds_the_anomaly_object() {
        let mut e =
            engine("[{derive: {field: pct, expr: 'cpu * 100.0'}}]", "{algorithm: robustZ, features: [pct]}");
        let out = run(&mut e, r#"{"host": "a", "cpu": 0.5}"#);
        assert_eq!(
            out,
            vec![Ok(r#"{"host":"a","cpu":0.5,"pct":50.0,"anomaly":{"score":0.0,"isAnomaly":false,"detector":"robustZ","modelVersion":null,"explanation":[{"feature":"pct","weight":1.0,"value":50.0,"expected":0.0}]}}"#.to_string())]
        );
    }

    #[test]
    fn each_failure_names_its_stage() {
        let mut e = engine(
            "[{filter: {expr: 'cpu >= 0.0'}}, {cast: {fields: {cpu: integer}}}]",
            "{algorithm: robustZ, features: [cpu]}",
        );
        assert_eq!(run(&mut e, "not json")[0].as_ref().unwrap_err().0, "decode");
        assert_eq!(
            run(&mut e, r#"{"host": "a"}"#)[0],
            Err(("transforms[0].filter".into(), "no such field: cpu".into()))
        );
        assert_eq!(
            run(&mut e, r#"{"host": "a", "cpu": 0.5}"#)[0].as_ref().unwrap_err().0,
            "transforms[1].cast"
        );
        assert!(run(&mut e, r#"{"host": "a", "cpu": -1.0}"#).is_empty(), "filtered out");
        let c = e.counts();
        assert_eq!((c.records_in, c.dead_lettered, c.filtered, c.records_out), (4, 3, 1, 0));
    }

    #[test]
    fn a_non_numeric_feature_is_rejected_by_the_detector() {
        let mut e = engine("[]", "{algorithm: robustZ, features: [cpu]}");
        assert_eq!(
            run(&mut e, r#"{"host": "a", "cpu": "high"}"#),
            vec![Err(("detector".into(), "feature \"cpu\" is not a number: string \"high\"".into()))]
        );
    }

    #[test]
    fn windows_emit_on_later_records_and_at_flush() {
        let mut e = engine(
            "[{window: {field: cpu, size: 1s, aggregates: [mean]}}]",
            "{algorithm: robustZ, features: [cpu_mean]}",
        );
        let mut outputs = 0;
        for (t, v) in [(0, 1.0), (500, 3.0), (1500, 5.0)] {
            e.process(
                format!(r#"{{"host": "a", "cpu": {v}}}"#).as_bytes(),
                Meta { key: None, ts_ms: t },
                &mut |ev| outputs += matches!(ev, Event::Output(_)) as usize,
            );
        }
        assert_eq!(outputs, 1, "the first window closed when 1.5s arrived");
        e.flush(&mut |ev| outputs += matches!(ev, Event::Output(_)) as usize);
        assert_eq!(outputs, 2);
    }
}
