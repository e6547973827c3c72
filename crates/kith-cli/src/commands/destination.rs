//! Where commands that write (imports, manual merges) send their work: straight into the data
//! directory when no server holds it, or to the server that does, through its API with the local
//! token it publishes (see `kith_server::local`). Either way the events take the same path.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use kith_core::Event;
use kith_profiles::{ChangeTally, ProfileSettings};
use kith_server::imports::{ImportBatch, ImportResult};
use kith_server::local::LocalServer;
use kith_server::{Pipeline, ServerError};
use serde_json::Value;
use tokio::runtime::Runtime;

/// Rows an offline import buffers before writing them to Delta (the server's default).
const OFFLINE_FLUSH_ROWS: usize = 200_000;

pub enum Destination {
    /// This process owns the data directory.
    Offline {
        pipeline: Pipeline,
        runtime: Runtime,
    },
    /// A running server does.
    Server {
        server: LocalServer,
        agent: ureq::Agent,
    },
}

impl Destination {
    pub fn open(data_dir: &Path, settings: ProfileSettings) -> anyhow::Result<Destination> {
        let runtime = super::runtime()?;
        let opened = runtime.block_on(Pipeline::open(
            data_dir,
            settings,
            kith_journal::JournalOptions::default(),
        ));
        match opened {
            Ok(pipeline) => Ok(Destination::Offline { pipeline, runtime }),
            Err(ServerError::DataDirLocked(dir)) => {
                let Some(server) = kith_server::local::find(data_dir) else {
                    bail!(
                        "the data directory {dir} is in use by another kith process that publishes no address; wait for it to finish or stop it"
                    );
                };
                let agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(300)))
                    .build()
                    .into();
                tracing::info!(url = %server.url, "sending to the running server");
                Ok(Destination::Server { server, agent })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// A description for messages.
    pub fn describe(&self) -> String {
        match self {
            Destination::Offline { .. } => "the data directory".into(),
            Destination::Server { server, .. } => format!("the running server at {}", server.url),
        }
    }

    /// Writes events and reports what they changed in profiles.
    pub fn write(&self, events: Vec<Event>) -> anyhow::Result<ImportResult> {
        match self {
            Destination::Offline { pipeline, runtime } => runtime.block_on(async {
                let tally = Arc::new(ChangeTally::default());
                let written = pipeline.write(events, Some(&tally)).await?;
                if let Some(seq) = written.last_seq() {
                    pipeline.wait_for_profiles(seq).await;
                }
                // No server runs the flusher here: write to Delta as it would, so a large
                // import holds a bounded number of rows in memory.
                if pipeline.lake.unflushed_rows() >= OFFLINE_FLUSH_ROWS {
                    pipeline
                        .flush_due(OFFLINE_FLUSH_ROWS, Duration::from_secs(2))
                        .await;
                }
                Ok(ImportResult {
                    stored: written.stored(),
                    duplicates: written.duplicates(),
                    changes: tally.counts(),
                })
            }),
            Destination::Server { .. } => {
                let body = serde_json::to_vec(&ImportBatch { events })?;
                let answer = self.post("/v1/imports", body)?;
                Ok(serde_json::from_value(answer)?)
            }
        }
    }

    /// POSTs JSON to the server, waiting out `429 overloaded`; an error names the server's reason.
    pub fn post(&self, path: &str, body: Vec<u8>) -> anyhow::Result<Value> {
        let Destination::Server { server, agent } = self else {
            bail!("not talking to a server");
        };
        let url = format!("{}{path}", server.url);
        loop {
            let mut response = agent
                .post(&url)
                .header("Authorization", &format!("Bearer {}", server.token))
                .header("Content-Type", "application/json")
                .send(&body[..])
                .with_context(|| format!("cannot reach the kith server at {}", server.url))?;
            let status = response.status().as_u16();
            let answer: Value = response
                .body_mut()
                .read_json()
                .with_context(|| format!("the server's answer to {path} is not JSON"))?;
            if status == 429 {
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
            if !(200..300).contains(&status) {
                let message = answer["message"]
                    .as_str()
                    .unwrap_or("no message")
                    .to_string();
                return Err(ApiFailure { status, message }.into());
            }
            return Ok(answer);
        }
    }

    /// How many likely duplicates (score 0.5 or more) the profiles now hold.
    pub fn duplicate_count(&self) -> anyhow::Result<usize> {
        match self {
            Destination::Offline { pipeline, .. } => {
                Ok(kith_profiles::find_duplicates(&pipeline.profiles.all_views(), 0.5).len())
            }
            Destination::Server { server, agent } => {
                let url = format!(
                    "{}/v1/profiles/duplicates?min_score=0.5&limit=1",
                    server.url
                );
                let mut response = agent
                    .get(&url)
                    .header("Authorization", &format!("Bearer {}", server.token))
                    .call()
                    .with_context(|| format!("cannot reach the kith server at {}", server.url))?;
                let answer: Value = response.body_mut().read_json()?;
                answer["total"]
                    .as_u64()
                    .map(|n| n as usize)
                    .with_context(|| format!("unexpected answer to the duplicate search: {answer}"))
            }
        }
    }

    /// Writes everything buffered to disk (offline) before the command exits.
    pub fn close(self) -> anyhow::Result<()> {
        match self {
            Destination::Offline { pipeline, runtime } => {
                runtime.block_on(pipeline.close())?;
                Ok(())
            }
            Destination::Server { .. } => Ok(()),
        }
    }
}

/// An error answer from the server.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiFailure {
    pub status: u16,
    pub message: String,
}
