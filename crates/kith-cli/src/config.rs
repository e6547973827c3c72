//! `kith.toml`, the lowest layer of configuration (environment and flags override it).

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
    #[serde(default)]
    pub ingest: IngestConfig,
    #[serde(default)]
    pub query: QueryConfig,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// Write buffered events to Delta at least this often.
    pub flush_interval_ms: Option<u64>,
    /// ...or as soon as this many rows wait.
    pub flush_rows: Option<usize>,
    /// Answer 429 while this many rows wait in memory for Delta.
    pub max_buffered_rows: Option<usize>,
    /// Answer 429 while this many MiB of events wait for the journal's disk write.
    pub max_queued_mb: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryConfig {
    pub timeout_secs: Option<u64>,
    pub memory_mb: Option<usize>,
    pub max_rows: Option<usize>,
}

pub const DEFAULT_DATA_DIR: &str = "./kith-data";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8417";

impl FileConfig {
    /// Reads the given file, or `./kith.toml` when none is given and it exists.
    pub fn load(path: Option<&Path>) -> anyhow::Result<FileConfig> {
        let (path, required) = match path {
            Some(path) => (path.to_path_buf(), true),
            None => (PathBuf::from("kith.toml"), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(FileConfig::default());
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot read config file {}", path.display()));
            }
        };
        toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
    }

    /// The data directory: flag or env (already merged by clap) over the file over the default.
    pub fn data_dir(&self, from_cli: Option<PathBuf>) -> PathBuf {
        from_cli
            .or_else(|| self.data_dir.clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_errors_and_known_ones_parse() {
        let config: FileConfig = toml::from_str(
            "data_dir = '/tmp/k'\nlisten = '0.0.0.0:1'\n[ingest]\nflush_interval_ms = 5\n",
        )
        .unwrap();
        assert_eq!(config.data_dir, Some(PathBuf::from("/tmp/k")));
        assert_eq!(config.ingest.flush_interval_ms, Some(5));
        assert!(toml::from_str::<FileConfig>("data_dri = 'x'").is_err());
        assert_eq!(
            config.data_dir(Some(PathBuf::from("/flag"))),
            PathBuf::from("/flag")
        );
        assert_eq!(
            FileConfig::default().data_dir(None),
            PathBuf::from(DEFAULT_DATA_DIR)
        );
    }
}
