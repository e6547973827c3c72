//! Where commands that write (imports, manual merges) send their work: straight into the data
//! directory when no server holds it, or to the server that does, through its API with the local
//! token it publishes (see `kith_server::local`). Either way the events take the same path.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use kith_core::Event;
use kith_profiles::{ChangeTally, ProfileSettings};
use kith_server::imports::ImportResult;
use kith_server::local::LocalServer;
use kith_server::{Pipeline, ServerError};
use serde_json::Value;
use tokio::runtime::Runtime;

/// Most JSON bytes in one request to a server (its limit is 500 KB).
const REQUEST_BYTES: usize = 400 * 1024;

/// Events an offline import may write ahead of identity resolution.
const OFFLINE_MAX_BACKLOG: usize = 300_000;

/// Rows an offline import buffers before writing them to Delta (the server's default).
const OFFLINE_FLUSH_ROWS: usize = 200_000;

pub enum Destination {
    /// This process owns the data directory.
    Offline {
        /// The data directory, as given.
        data_dir: PathBuf,
        pipeline: Pipeline,
        runtime: Runtime,
        /// What the writes so far changed in profiles, counted by the unify thread as it
        /// applies them (writes do not wait for it; [`Destination::settle`] does).
        tally: Arc<ChangeTally>,
        last_seq: std::sync::atomic::AtomicU64,
    },
    /// A running server does.
    Server {
        data_dir: PathBuf,
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
            Ok(pipeline) => {
                // A bulk load: its files are written with the event names in runs, which
                // analyses reading a few names scan far faster (see `cluster_flushes`).
                pipeline.lake.events.cluster_flushes(true);
                Ok(Destination::Offline {
                    data_dir: data_dir.to_path_buf(),
                    pipeline,
                    runtime,
                    tally: Arc::default(),
                    last_seq: Default::default(),
                })
            }
            Err(ServerError::DataDirLocked { path, holder }) => {
                let Some(server) = kith_server::local::find(data_dir) else {
                    let holder = holder
                        .map(|pid| format!(" (pid {pid})"))
                        .unwrap_or_default();
                    bail!(
                        "the data directory {path} is in use by another kith process{holder} that publishes no address; wait for it to finish or stop it"
                    );
                };
                let agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(300)))
                    .build()
                    .into();
                tracing::info!(url = %server.url, "sending to the running server");
                Ok(Destination::Server {
                    data_dir: data_dir.to_path_buf(),
                    server,
                    agent,
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The data directory written to, by itself or through its server: an import's checkpoint
    /// is this directory's, and never resumes an import into another.
    pub fn data_dir(&self) -> &Path {
        match self {
            Destination::Offline { data_dir, .. } | Destination::Server { data_dir, .. } => {
                data_dir
            }
        }
    }

    /// A description for messages.
    pub fn describe(&self) -> String {
        match self {
            Destination::Offline { .. } => "the data directory".into(),
            Destination::Server { server, .. } => format!("the running server at {}", server.url),
        }
    }

    /// Rows a batch should hold: in-process writes take larger batches (fewer fsyncs); a server
    /// gets requests of a few hundred KB either way.
    pub fn batch_rows(&self) -> usize {
        match self {
            Destination::Offline { .. } => 10_000,
            Destination::Server { .. } => 1_000,
        }
    }

    /// Writes events durably. What they changed in profiles is in the answer when a server
    /// applied them; in-process it is counted in the background and [`Destination::settle`]
    /// gives the total.
    pub fn write(&self, events: Vec<Event>) -> anyhow::Result<ImportResult> {
        match self {
            Destination::Offline {
                pipeline,
                runtime,
                tally,
                last_seq,
                ..
            } => runtime.block_on(async {
                let written = pipeline.write(events, Some(tally)).await?;
                if let Some(seq) = written.last_seq() {
                    last_seq.fetch_max(seq, std::sync::atomic::Ordering::Relaxed);
                }
                // Reading runs ahead of identity resolution; a bounded lead keeps memory bounded.
                while pipeline.unifier.backlog() > OFFLINE_MAX_BACKLOG {
                    tokio::time::sleep(Duration::from_millis(2)).await;
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
                    changes: kith_profiles::ChangeCounts::default(),
                })
            }),
            Destination::Server { .. } => {
                // Requests stay under the server's 500 KB limit whatever the events' size.
                let mut total = ImportResult::default();
                let mut chunk: Vec<Value> = Vec::new();
                let mut bytes = 0;
                let mut flush = |chunk: &mut Vec<Value>| -> anyhow::Result<()> {
                    if chunk.is_empty() {
                        return Ok(());
                    }
                    let body = serde_json::to_vec(&serde_json::json!({ "events": chunk }))?;
                    chunk.clear();
                    let answer: ImportResult =
                        serde_json::from_value(self.post("/v1/imports", body)?)?;
                    total.stored += answer.stored;
                    total.duplicates += answer.duplicates;
                    total.changes += answer.changes;
                    Ok(())
                };
                for event in events {
                    let value = serde_json::to_value(&event)?;
                    let size = value.to_string().len();
                    if bytes + size > REQUEST_BYTES {
                        flush(&mut chunk)?;
                        bytes = 0;
                    }
                    bytes += size;
                    chunk.push(value);
                }
                flush(&mut chunk)?;
                Ok(total)
            }
        }
    }

    /// POSTs JSON to the server, waiting out `429 overloaded`; an error names the server's reason.
    pub fn post(&self, path: &str, body: Vec<u8>) -> anyhow::Result<Value> {
        let Destination::Server { server, agent, .. } = self else {
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

    /// Waits until every write is applied to profiles and returns what the writes changed that
    /// [`Destination::write`] did not report (in-process writes; nothing for a server).
    pub fn settle(&self) -> kith_profiles::ChangeCounts {
        match self {
            Destination::Offline {
                pipeline,
                runtime,
                tally,
                last_seq,
                ..
            } => {
                let through = last_seq.load(std::sync::atomic::Ordering::Relaxed);
                runtime.block_on(pipeline.wait_for_profiles(through));
                tally.counts()
            }
            Destination::Server { .. } => kith_profiles::ChangeCounts::default(),
        }
    }

    /// What in-process writes changed in profiles so far, without waiting for those not yet
    /// applied (nothing for a server, whose answers say it).
    pub fn changes_so_far(&self) -> kith_profiles::ChangeCounts {
        match self {
            Destination::Offline { tally, .. } => tally.counts(),
            Destination::Server { .. } => kith_profiles::ChangeCounts::default(),
        }
    }

    /// How many likely duplicates (score 0.5 or more) the profiles now hold.
    pub fn duplicate_count(&self) -> anyhow::Result<usize> {
        match self {
            Destination::Offline { pipeline, .. } => {
                self.settle();
                Ok(pipeline.profiles.find_duplicates(0.5, 0)?.total)
            }
            Destination::Server { server, agent, .. } => {
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
            Destination::Offline {
                pipeline, runtime, ..
            } => {
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
