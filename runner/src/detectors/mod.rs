//! Detectors: score each record in [0, 1] and explain the score.
//!
//! An algorithm (one file each) provides a per-key `Scorer`; the
//! `DetectorStage` here reads the features from the record, keeps one scorer
//! per key in a bounded LRU, applies the threshold, and builds the
//! `anomaly` object of the output record. Trained models plug in as
//! algorithms whose scorers share one fitted model.

mod half_space_trees;
pub mod likelihood;
mod profile;
mod robust_z;
mod seasonal;
mod sensor_z;

use std::sync::Arc;

use vigil_crds::{Algorithm, DetectorParams, DetectorSpec};

use crate::models::Model;

use crate::keyed::Keyed;
use crate::record::{FieldId, Interner, Record, Value};

/// How much each feature drove a score.
#[derive(Debug, Clone, PartialEq)]
pub struct Contribution {
    /// Index into the detector's features.
    pub feature: usize,
    /// Share of the score, in [0, 1]; the shares of one score sum to 1.
    pub weight: f64,
    /// What the detector expected the value to be, when it has a notion of that.
    pub expected: Option<f64>,
}

/// Contributions, largest first. Inline up to four (the usual feature
/// count), so scoring a record allocates nothing.
pub type Explanation = smallvec::SmallVec<[Contribution; 4]>;

/// A score and its explanation.
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    /// In [0, 1]; higher is more anomalous.
    pub value: f64,
    /// Features by contribution, largest first.
    pub explanation: Explanation,
}

/// One key's detector state.
pub trait Scorer: Send {
    /// Score an observation (feature values in order), then learn from it.
    fn score(&mut self, x: &[f64]) -> Score;
}

/// Creates scorers for new keys.
pub trait Factory: Send {
    /// The algorithm's name in output records.
    fn name(&self) -> &'static str;
    /// A fresh scorer for a key seen for the first time.
    fn scorer(&self) -> Box<dyn Scorer>;
    /// The threshold when the spec sets none.
    fn default_threshold(&self) -> f64;
    /// Approximate bytes of one key's state, for documentation and metrics.
    fn bytes_per_key(&self) -> usize;
}

/// Build the factory of an online algorithm.
pub fn factory(algorithm: Algorithm, features: usize, params: &DetectorParams) -> Box<dyn Factory> {
    match algorithm.resolve(features) {
        Algorithm::RobustZ => Box::new(robust_z::RobustZFactory::new(params)),
        Algorithm::Seasonal => Box::new(seasonal::SeasonalFactory::new(params)),
        Algorithm::HalfSpaceTrees => Box::new(half_space_trees::HstFactory::new(features, params)),
        Algorithm::SensorZ | Algorithm::Auto => Box::new(sensor_z::SensorZFactory::new(features, params)),
    }
}

/// The outcome of scoring one record.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    /// The score, or `None` when a feature was null (not scored yet: e.g. a
    /// `diff` without history).
    pub score: Option<Score>,
    /// Whether the score reached the threshold.
    pub is_anomaly: bool,
    /// The predicted class (supervised models), as JSON.
    pub class: Option<serde_json::Value>,
}

/// The detector step of a pipeline.
pub struct DetectorStage {
    features: Vec<FieldId>,
    feature_names: Vec<String>,
    factory: Box<dyn Factory>,
    states: Keyed<Box<dyn Scorer>>,
    threshold: f64,
    model_version: Option<i64>,
    /// A trained model, scored directly (no per-key state).
    model: Option<Arc<Model>>,
    /// Whether the threshold was set by the spec (kept across model swaps).
    threshold_from_spec: bool,
    buf: Vec<f64>,
    parts: Vec<f64>,
}

impl DetectorStage {
    /// Build from a spec with an online algorithm.
    pub fn new(spec: &DetectorSpec, interner: &mut Interner) -> Result<Self, String> {
        let Some(algorithm) = spec.algorithm else {
            return Err("detector.modelRef: trained models are not served by this runner yet".into());
        };
        let params = spec.params.clone().unwrap_or_default();
        let factory = factory(algorithm, spec.features.len(), &params);
        Self::with_factory(spec, factory, None, interner)
    }

    /// Build for a trained model: its features (the spec's, if given, must
    /// be the same), its calibrated threshold unless the spec sets one.
    pub fn for_model(
        spec: &DetectorSpec,
        model: Arc<Model>,
        interner: &mut Interner,
    ) -> Result<Self, String> {
        let meta = &model.artifact.metadata;
        if !spec.features.is_empty() && spec.features != meta.features {
            return Err(format!(
                "features: {:?} differ from the features Model {} v{} was trained on ({:?}); leave them empty to use the Model's",
                spec.features, meta.model, meta.version, meta.features
            ));
        }
        if let Some(r) = &spec.model_ref {
            if let Some(v) = r.version.filter(|v| *v != meta.version) {
                return Err(format!(
                    "modelRef.version: pinned to {v}, but the artifact is Model {} v{}",
                    meta.model, meta.version
                ));
            }
        }
        let mut spec = spec.clone();
        spec.features = meta.features.clone();
        let factory = Box::new(crate::models::ModelFactory::new(model.clone()));
        let mut stage = Self::with_factory(&spec, factory, Some(meta.version), interner)?;
        stage.model = Some(model);
        Ok(stage)
    }

    /// Serve another version of the model, from the next record on.
    pub fn swap_model(&mut self, model: Arc<Model>) -> Result<(), String> {
        let Some(current) = &self.model else {
            return Err("this detector does not score with a model".into());
        };
        let (old, new) = (&current.artifact.metadata, &model.artifact.metadata);
        if old.features != new.features {
            return Err(format!(
                "Model {} v{} reads {:?}, but the pipeline was built for {:?}; restart the runner to serve it",
                new.model, new.version, new.features, old.features
            ));
        }
        if old.transforms_hash != new.transforms_hash {
            return Err(format!(
                "Model {} v{} was trained with other transforms than v{}; restart the runner to serve it",
                new.model, new.version, old.version
            ));
        }
        if !self.threshold_from_spec {
            self.threshold = new.threshold;
        }
        self.model_version = Some(new.version);
        self.factory = Box::new(crate::models::ModelFactory::new(model.clone()));
        self.model = Some(model);
        Ok(())
    }

    /// The model served, if any.
    pub fn model(&self) -> Option<&Arc<Model>> {
        self.model.as_ref()
    }

    /// Build around any factory (online algorithm or trained model).
    pub fn with_factory(
        spec: &DetectorSpec,
        factory: Box<dyn Factory>,
        model_version: Option<i64>,
        interner: &mut Interner,
    ) -> Result<Self, String> {
        if spec.features.is_empty() {
            return Err("detector.features: at least one feature is needed".into());
        }
        let features = spec
            .features
            .iter()
            .map(|f| interner.intern(f))
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        Ok(DetectorStage {
            features,
            feature_names: spec.features.clone(),
            threshold: spec.threshold.unwrap_or_else(|| factory.default_threshold()),
            threshold_from_spec: spec.threshold.is_some(),
            model: None,
            parts: Vec::with_capacity(spec.features.len()),
            states: Keyed::new(usize::try_from(spec.max_keys).unwrap_or(1)),
            factory,
            model_version,
            buf: Vec::with_capacity(spec.features.len()),
        })
    }

    /// The algorithm's name.
    pub fn name(&self) -> &'static str {
        self.factory.name()
    }

    /// The threshold in force.
    pub fn threshold(&self) -> f64 {
        self.threshold
    }

    /// The feature names, in order.
    pub fn feature_names(&self) -> &[String] {
        &self.feature_names
    }

    /// The model version, for trained models.
    pub fn model_version(&self) -> Option<i64> {
        self.model_version
    }

    /// Keys with state, and keys evicted so far.
    pub fn keys(&self) -> (usize, u64) {
        (self.states.len(), self.states.evicted())
    }

    /// Approximate bytes of one key's state.
    pub fn bytes_per_key(&self) -> usize {
        self.factory.bytes_per_key()
    }

    /// Score a record. Errors name the feature that is missing or not a number.
    pub fn score(&mut self, rec: &Record, interner: &Interner) -> Result<Scored, String> {
        self.buf.clear();
        for id in &self.features {
            match rec.get(*id) {
                Some(Value::Null) => return Ok(Scored { score: None, is_anomaly: false, class: None }),
                Some(v) => match v.as_f64() {
                    Some(x) => self.buf.push(x),
                    None => {
                        return Err(format!(
                            "feature {:?} is not a number: {}",
                            interner.name(*id),
                            v.describe()
                        ));
                    }
                },
                None => return Err(format!("feature {:?} is missing", interner.name(*id))),
            }
        }
        if let Some(model) = &self.model {
            let (mut score, class) = model.score(&self.buf, &mut self.parts);
            score.value = score.value.clamp(0.0, 1.0);
            let is_anomaly = score.value >= self.threshold;
            let class = class.and_then(|c| model.class_name(c)).cloned();
            return Ok(Scored { score: Some(score), is_anomaly, class });
        }
        let factory = &self.factory;
        let scorer = self.states.get(&rec.key, || factory.scorer());
        let mut score = scorer.score(&self.buf);
        score.value = score.value.clamp(0.0, 1.0);
        let is_anomaly = score.value >= self.threshold;
        Ok(Scored { score: Some(score), is_anomaly, class: None })
    }

    /// Append the `"anomaly":{...}` member for a scored record.
    pub fn write_anomaly(&self, buf: &mut Vec<u8>, scored: &Scored, values: &[f64]) {
        use crate::codec::json::{write_f64, write_str, write_unit};
        buf.extend_from_slice(b"\"anomaly\":{\"score\":");
        match &scored.score {
            Some(s) => write_unit(buf, s.value),
            None => buf.extend_from_slice(b"null"),
        }
        buf.extend_from_slice(if scored.is_anomaly {
            b",\"isAnomaly\":true"
        } else {
            b",\"isAnomaly\":false"
        });
        buf.extend_from_slice(b",\"detector\":");
        write_str(buf, self.name());
        buf.extend_from_slice(b",\"modelVersion\":");
        match self.model_version {
            Some(v) => buf.extend_from_slice(itoa::Buffer::new().format(v).as_bytes()),
            None => buf.extend_from_slice(b"null"),
        }
        if let Some(c) = &scored.class {
            buf.extend_from_slice(b",\"class\":");
            buf.extend_from_slice(c.to_string().as_bytes());
        }
        buf.extend_from_slice(b",\"explanation\":[");
        if let Some(s) = &scored.score {
            for (i, c) in s.explanation.iter().enumerate() {
                if i > 0 {
                    buf.push(b',');
                }
                buf.extend_from_slice(b"{\"feature\":");
                write_str(buf, &self.feature_names[c.feature]);
                buf.extend_from_slice(b",\"weight\":");
                write_unit(buf, c.weight);
                if let Some(v) = values.get(c.feature) {
                    buf.extend_from_slice(b",\"value\":");
                    write_f64(buf, *v);
                }
                if let Some(e) = c.expected {
                    buf.extend_from_slice(b",\"expected\":");
                    write_f64(buf, e);
                }
                buf.push(b'}');
            }
        }
        buf.extend_from_slice(b"]}");
    }

    /// The feature values of the last scored record.
    pub fn last_values(&self) -> &[f64] {
        &self.buf
    }
}

/// Contributions proportional to `weights` (absolute values), largest first;
/// zero weights are left out.
pub fn contributions(weights: &[f64], expected: &[Option<f64>]) -> Explanation {
    let total: f64 = weights.iter().map(|w| w.abs()).sum();
    let mut out: Explanation = weights
        .iter()
        .enumerate()
        .filter(|(_, w)| w.abs() > 0.0)
        .map(|(i, w)| Contribution {
            feature: i,
            weight: if total > 0.0 { w.abs() / total } else { 0.0 },
            expected: expected.get(i).copied().flatten(),
        })
        .collect();
    out.sort_by(|a, b| b.weight.total_cmp(&a.weight));
    out
}
