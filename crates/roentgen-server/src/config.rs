//! roentgen's one typed configuration tree: a TOML file, then `ROENTGEN_*` environment
//! variables, then command-line flags, each overriding the one before.
//!
//! Environment variables name a key by its path in upper case, sections joined by a double
//! underscore: `ROENTGEN_HTTP_ADDRESS`, `ROENTGEN_STORE__RETENTION_DAYS`. Unknown keys are
//! errors everywhere, so a typo never silently does nothing.

use std::collections::BTreeMap;
use std::path::PathBuf;

use roentgen_store::StoreConfig;
use serde::{Deserialize, Serialize};

/// Everything `roentgen serve` can be told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Log filter, in `tracing` syntax (`info`, `roentgen_server=debug`).
    pub log: String,
    /// Local directory for the WAL and, by default, the blocks.
    pub data_dir: PathBuf,
    /// Where blocks are stored: empty for `<data_dir>/blocks`, or a directory / `file:///path`.
    pub storage: String,
    /// UDP address of the X-Ray daemon protocol.
    pub udp_address: String,
    /// TCP address of the X-Ray API, the SDK sampling calls and `/metrics`.
    pub http_address: String,
    /// Reserved for OTLP/gRPC ingest, which this version does not serve yet.
    pub otlp_grpc_address: String,
    /// Reserved for OTLP/HTTP ingest, which this version does not serve yet.
    pub otlp_http_address: String,
    /// Allow listening on a non-loopback address although requests are not authenticated.
    pub allow_insecure_remote: bool,
    /// Region and account that appear in ARNs (sampling rules, groups).
    pub region: String,
    pub account_id: String,
    pub ingest: IngestConfig,
    pub groups: GroupsConfig,
    pub sampling: SamplingConfig,
    pub query: QueryConfig,
    pub store: StoreConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            log: "info".into(),
            data_dir: PathBuf::from("./roentgen-data"),
            storage: String::new(),
            udp_address: "127.0.0.1:2000".into(),
            http_address: "127.0.0.1:2000".into(),
            otlp_grpc_address: "127.0.0.1:4317".into(),
            otlp_http_address: "127.0.0.1:4318".into(),
            allow_insecure_remote: false,
            region: "us-east-1".into(),
            account_id: "000000000000".into(),
            ingest: IngestConfig::default(),
            groups: GroupsConfig::default(),
            sampling: SamplingConfig::default(),
            query: QueryConfig::default(),
            store: StoreConfig::default(),
        }
    }
}

/// Limits on what clients may send; the defaults are X-Ray's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    pub max_document_bytes: usize,
    pub max_documents_per_request: usize,
    pub max_request_bytes: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_document_bytes: roentgen_model::MAX_DOCUMENT_BYTES,
            max_documents_per_request: 50,
            max_request_bytes: 8 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueryConfig {
    /// Trace summaries per `GetTraceSummaries` page.
    pub summaries_page_size: usize,
    /// Traces per `BatchGetTraces` page.
    pub traces_page_size: usize,
    /// Services (nodes) per `GetServiceGraph` page.
    pub graph_page_size: usize,
    /// Fraction of traces `Sampling: true` keeps when no `SamplingStrategy` value is given.
    pub default_sampling_rate: f64,
}

impl Default for QueryConfig {
    fn default() -> Self {
        Self { summaries_page_size: 100, traces_page_size: 10, graph_page_size: 1000, default_sampling_rate: 0.25 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GroupsConfig {
    /// Groups allowed (X-Ray's quota is 25).
    pub max_groups: usize,
}

impl Default for GroupsConfig {
    fn default() -> Self {
        Self { max_groups: 25 }
    }
}

/// Central sampling: how many rules, and how quotas are handed out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingConfig {
    /// Custom rules allowed besides `Default` (X-Ray's quota is 25).
    pub max_rules: usize,
    /// Seconds between a client's reports, returned as `Interval`.
    pub report_interval_seconds: f64,
    /// Seconds a reservoir quota stays valid, returned as `ReservoirQuotaTTL`.
    pub quota_ttl_seconds: f64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self { max_rules: 25, report_interval_seconds: 10.0, quota_ttl_seconds: 30.0 }
    }
}

/// A setting that could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("environment variable {name}: {message}")]
    Env { name: String, message: String },
    #[error("invalid setting: {0}")]
    Invalid(String),
}

impl Config {
    /// Builds the configuration from an optional TOML file and an environment, without flags.
    pub fn load(
        file: Option<&std::path::Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut config = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
                toml::from_str(&text)
                    .map_err(|e| ConfigError::File { path: path.to_path_buf(), message: e.to_string() })?
            }
            None => Config::default(),
        };
        let overrides: BTreeMap<String, String> =
            env.into_iter().filter(|(k, _)| k.starts_with("ROENTGEN_") && k != "ROENTGEN_CONFIG").collect();
        if !overrides.is_empty() {
            let mut tree = toml::Table::try_from(&config).map_err(|e| ConfigError::Invalid(e.to_string()))?;
            for (name, value) in overrides {
                set_from_env(&mut tree, &name, &value)?;
            }
            config = tree.try_into().map_err(|e: toml::de::Error| ConfigError::Invalid(e.to_string()))?;
        }
        Ok(config)
    }

    /// Checks what serde cannot, and fills the store's copy of the top-level paths.
    pub fn finish(mut self) -> Result<Self, ConfigError> {
        self.store.data_dir = self.data_dir.clone();
        self.store.storage = self.storage.clone();
        self.store.validate().map_err(ConfigError::Invalid)?;
        if self.ingest.max_documents_per_request == 0 || self.ingest.max_document_bytes == 0 {
            return Err(ConfigError::Invalid("ingest limits must be positive".into()));
        }
        if self.query.summaries_page_size == 0 || self.query.traces_page_size == 0 || self.query.graph_page_size == 0 {
            return Err(ConfigError::Invalid("query page sizes must be positive".into()));
        }
        let s = &self.sampling;
        if !(s.report_interval_seconds >= 1.0 && s.quota_ttl_seconds >= s.report_interval_seconds) {
            return Err(ConfigError::Invalid(
                "sampling.report_interval_seconds must be at least 1 and quota_ttl_seconds at least that".into(),
            ));
        }
        Ok(self)
    }
}

/// Sets the key an environment variable names, parsing its value as the type already there.
fn set_from_env(tree: &mut toml::Table, name: &str, value: &str) -> Result<(), ConfigError> {
    let err = |message: String| ConfigError::Env { name: name.to_owned(), message };
    let path: Vec<String> = name["ROENTGEN_".len()..].split("__").map(str::to_ascii_lowercase).collect();
    let (last, sections) = path.split_last().ok_or_else(|| err("names no setting".into()))?;
    let mut table = tree;
    for section in sections {
        table = match table.get_mut(section) {
            Some(toml::Value::Table(t)) => t,
            _ => return Err(err(format!("there is no section {section:?}"))),
        };
    }
    let slot = table.get_mut(last).ok_or_else(|| err(format!("there is no setting {:?}", path.join("."))))?;
    *slot = match slot {
        toml::Value::Boolean(_) => {
            toml::Value::Boolean(value.parse().map_err(|_| err(format!("expected true or false, got {value:?}")))?)
        }
        toml::Value::Integer(_) => {
            toml::Value::Integer(value.parse().map_err(|_| err(format!("expected an integer, got {value:?}")))?)
        }
        toml::Value::Float(_) => {
            toml::Value::Float(value.parse().map_err(|_| err(format!("expected a number, got {value:?}")))?)
        }
        toml::Value::String(_) => toml::Value::String(value.to_owned()),
        _ => return Err(err(format!("{:?} is a section, not a setting", path.join(".")))),
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn file_then_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("roentgen.toml");
        std::fs::write(&path, "http_address = \"127.0.0.1:9000\"\n[store]\nretention_days = 7\n").unwrap();
        let config = Config::load(
            Some(&path),
            env(&[("ROENTGEN_UDP_ADDRESS", "127.0.0.1:9001"), ("ROENTGEN_STORE__RETENTION_DAYS", "3"), ("HOME", "/x")]),
        )
        .unwrap()
        .finish()
        .unwrap();
        assert_eq!(config.http_address, "127.0.0.1:9000");
        assert_eq!(config.udp_address, "127.0.0.1:9001");
        assert_eq!(config.store.retention_days, 3.0);
        assert_eq!(config.store.data_dir, PathBuf::from("./roentgen-data"));
    }

    #[test]
    fn unknown_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("roentgen.toml");
        std::fs::write(&path, "htp_address = \"x\"\n").unwrap();
        let err = Config::load(Some(&path), env(&[])).unwrap_err().to_string();
        assert!(err.contains("htp_address"), "{err}");
        let err = Config::load(None, env(&[("ROENTGEN_STORE__RETENTON_DAYS", "1")])).unwrap_err().to_string();
        assert!(err.contains("ROENTGEN_STORE__RETENTON_DAYS") && err.contains("store.retenton_days"), "{err}");
        let err = Config::load(None, env(&[("ROENTGEN_STORE__RETENTION_DAYS", "soon")])).unwrap_err().to_string();
        assert!(err.contains("expected a number"), "{err}");
    }

    #[test]
    fn validation() {
        let mut config = Config::default();
        config.store.retention_days = 0.0;
        assert!(config.finish().is_err());
    }
}
