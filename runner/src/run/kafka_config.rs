//! Kafka client settings of a runner: the bootstrap servers (flag or env
//! over the spec), and SASL/TLS settings from the pipeline's Secret, which
//! the operator mounts as one file per key.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use rdkafka::ClientConfig;
use vigil_crds::KafkaConnection;

/// Settings every client of the pipeline shares.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KafkaSettings {
    /// `host:port,...`
    pub bootstrap: String,
    /// librdkafka properties from the Secret.
    pub properties: BTreeMap<String, String>,
}

impl KafkaSettings {
    /// Resolve from the spec, an override, and a mounted Secret directory.
    pub fn resolve(
        spec: &KafkaConnection,
        bootstrap: Option<&str>,
        secret_dir: Option<&Path>,
    ) -> Result<Self> {
        let bootstrap = bootstrap
            .map(str::to_string)
            .or_else(|| spec.bootstrap_servers.clone())
            .filter(|b| !b.trim().is_empty())
            .context("no Kafka bootstrap servers: set spec.kafka.bootstrapServers, --bootstrap-servers or VIGIL_KAFKA_BOOTSTRAP")?;
        let mut properties = BTreeMap::new();
        if let Some(dir) = secret_dir.filter(|d| d.is_dir()) {
            for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                // Kubernetes Secret volumes hold `..data` links beside the keys.
                if name.starts_with('.') || entry.path().is_dir() {
                    continue;
                }
                let path = entry.path();
                let (key, value) = match name.as_str() {
                    "ca.crt" => ("ssl.ca.location".to_string(), path.display().to_string()),
                    "tls.crt" => ("ssl.certificate.location".to_string(), path.display().to_string()),
                    "tls.key" => ("ssl.key.location".to_string(), path.display().to_string()),
                    "bootstrap.servers" => bail!(
                        "the Kafka Secret may not set bootstrap.servers; use spec.kafka.bootstrapServers"
                    ),
                    _ => {
                        let v = std::fs::read_to_string(&path)
                            .with_context(|| format!("cannot read {}", path.display()))?;
                        (name.clone(), v.trim().to_string())
                    }
                };
                properties.insert(key, value);
            }
        }
        Ok(KafkaSettings { bootstrap, properties })
    }

    /// A client config with these settings.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap);
        // When no known broker answers metadata, re-bootstrap after 10 s
        // rather than librdkafka's five minutes. (A client left with no
        // broker at all never gets there; `run::OrphanWatch` handles that.)
        c.set("metadata.recovery.rebootstrap.trigger.ms", "10000");
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_files_become_client_properties() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("security.protocol"), "SASL_SSL\n").unwrap();
        std::fs::write(dir.path().join("sasl.password"), "s3cret").unwrap();
        std::fs::write(dir.path().join("ca.crt"), "---").unwrap();
        std::fs::create_dir(dir.path().join("..data")).unwrap();
        let spec = KafkaConnection { bootstrap_servers: Some("spec:9092".into()), secret_ref: None };
        let s = KafkaSettings::resolve(&spec, None, Some(dir.path())).unwrap();
        assert_eq!(s.bootstrap, "spec:9092");
        assert_eq!(s.properties["security.protocol"], "SASL_SSL");
        assert_eq!(s.properties["sasl.password"], "s3cret");
        assert!(s.properties["ssl.ca.location"].ends_with("ca.crt"));
        assert_eq!(s.properties.len(), 3);
        let c = s.client_config();
        assert_eq!(c.get("sasl.password"), Some("s3cret"));
        assert_eq!(c.get("metadata.recovery.rebootstrap.trigger.ms"), Some("10000"));
    }

    #[test]
    fn the_override_wins_and_absence_is_an_error() {
        let spec = KafkaConnection { bootstrap_servers: Some("spec:9092".into()), secret_ref: None };
        assert_eq!(KafkaSettings::resolve(&spec, Some("flag:1"), None).unwrap().bootstrap, "flag:1");
        let err = KafkaSettings::resolve(&KafkaConnection::default(), None, None).unwrap_err();
        assert!(err.to_string().contains("spec.kafka.bootstrapServers"), "{err}");
    }
}
