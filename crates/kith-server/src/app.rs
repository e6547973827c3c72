//! Start-up, shared state, routes and the background flusher.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use kith_analytics::identities::IdentityIndex;
use kith_journal::{JournalError, JournalOptions};
use kith_lake::{LakeError, QueryLimits};
use kith_profiles::{ProfileError, ProfileSettings};
use kith_state::{StateError, StateStore};
use thiserror::Error;
use tower_http::cors::CorsLayer;

use crate::auth::KeyResolver;
use crate::pipeline::Pipeline;
use crate::starting::Listening;
use crate::{
    analytics, errors, imports, ingest, models, ops, pixel, profiles, query, rudderstack, traits,
};

#[derive(Debug, Error)]
pub enum ServerError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Lake(#[from] LakeError),
    #[error(transparent)]
    Profiles(#[from] ProfileError),
    #[error("cannot start the unify thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("the data directory {path} is in use by another kith process{}; stop it, or give this one another data directory", holder.map(|pid| format!(" (pid {pid})")).unwrap_or_default())]
    DataDirLocked {
        path: String,
        /// The process holding it, as it wrote in `kith.lock`.
        holder: Option<u32>,
    },
    #[error("cannot use the data directory {path}: {source}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on `{addr}`: {source}{hint}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
        /// What to do about it, when the cause says (starts with "; ").
        hint: &'static str,
    },
    #[error("journal record {seq} cannot be decoded: {reason}")]
    BadRecord { seq: u64, reason: String },
    #[error(
        "the event tables could not be written as the server stopped ({source}); nothing is \
         lost: every acknowledged event is in the journal, and reaches the tables at the next \
         start{hint}"
    )]
    FinalFlush {
        #[source]
        source: LakeError,
        /// What to do first, when the cause says (starts with " (").
        hint: &'static str,
    },
}

impl ServerError {
    fn final_flush(source: LakeError) -> ServerError {
        // The object store's errors come as text: ENOSPC is found in it.
        let text = source.to_string();
        let hint = if text.contains("No space left on device") || text.contains("os error 28") {
            " (free space on the disk first)"
        } else {
            ""
        };
        ServerError::FinalFlush { source, hint }
    }
}

/// Everything `kith serve` can be told.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub listen: String,
    /// Buffered rows are written to Delta at least this often...
    pub flush_interval: Duration,
    /// ...or as soon as this many rows wait.
    pub flush_rows: usize,
    /// Rows waiting in memory for Delta beyond which ingestion answers 429, so a flush that
    /// falls behind or keeps failing slows clients down instead of exhausting memory.
    pub max_buffered_rows: usize,
    pub query_limits: QueryLimits,
    /// Runs `POST /v1/query` in worker processes (the `kith` binary), so that no query can take
    /// the server's memory or threads; none runs them in the server.
    pub query_worker: Option<Arc<kith_lake::query::worker::QueryWorker>>,
    pub journal: JournalOptions,
    /// Identity resolution: default phone region, block list, merge guards, identifier traits.
    pub profiles: ProfileSettings,
    /// Serves `POST /internal/noop/batch`, which parses and authenticates like `/v1/batch` but
    /// stores nothing: the ceiling the ingest benchmark compares against.
    pub noop_endpoint: bool,
    /// Whether events get the client's IP address in `context.ip` (off, truncated or full).
    pub client_ip: crate::caller::ClientIpPolicy,
    /// The proxies whose `Forwarded` / `X-Forwarded-*` headers are believed.
    pub trusted_proxies: crate::caller::TrustedProxies,
    /// When the models that score profiles (CLV, RFM, risk, preferences) rerun without being
    /// asked, and with which definitions.
    pub models: models::ModelSchedules,
    /// How long the event tables keep replaced files and old log entries.
    pub housekeeping: kith_lake::Housekeeping,
    /// How long a connection may keep the server waiting, how much memory the requests being
    /// received may hold, and how many connections are served at once.
    pub connections: crate::connections::ConnectionLimits,
}

/// Where the server keeps its data unless told otherwise, and where `kith` commands look.
pub const DEFAULT_DATA_DIR: &str = "./kith-data";

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            listen: "127.0.0.1:8417".to_string(),
            flush_interval: Duration::from_secs(2),
            flush_rows: 200_000,
            max_buffered_rows: 1_000_000,
            query_limits: QueryLimits::default(),
            query_worker: None,
            journal: JournalOptions::default(),
            profiles: ProfileSettings::default(),
            noop_endpoint: false,
            client_ip: crate::caller::ClientIpPolicy::Off,
            trusted_proxies: crate::caller::TrustedProxies::default(),
            models: models::ModelSchedules::default(),
            housekeeping: kith_lake::Housekeeping::default(),
            connections: crate::connections::ConnectionLimits::default(),
        }
    }
}

pub struct AppState {
    pub config: ServerConfig,
    pub state: Arc<StateStore>,
    pub keys: KeyResolver,
    pub pipeline: Pipeline,
    /// `profile_identities` as analyses last built it, reused while no event has changed it.
    pub identities: crate::profiles::IdentityTableCache,
    /// Background model runs (CLV), for their status endpoints.
    pub models: models::ModelJobs,
}

/// Binds `addr` (`HOST:PORT`) for [`Server::start_on`]; the error says what to change when the
/// address is malformed, taken or not this machine's.
pub fn bind(addr: &str) -> Result<std::net::TcpListener, ServerError> {
    std::net::TcpListener::bind(addr).map_err(|source| {
        let hint = match source.kind() {
            std::io::ErrorKind::InvalidInput => {
                "; give HOST:PORT, e.g. 127.0.0.1:8417 or 0.0.0.0:8417 (--listen, KITH_LISTEN or `listen` in kith.toml)"
            }
            std::io::ErrorKind::AddrInUse => {
                "; another program (perhaps another kith) listens there: stop it, or choose another port with --listen HOST:PORT"
            }
            std::io::ErrorKind::AddrNotAvailable => {
                "; that address is not one of this machine's: use 127.0.0.1, 0.0.0.0 (every interface) or one of its own"
            }
            std::io::ErrorKind::PermissionDenied => {
                "; ports below 1024 need privileges: choose a port from 1024 up with --listen HOST:PORT"
            }
            // A host name that does not resolve (`:8417`, ` 127.0.0.1:8417`, a typo).
            _ if addr.parse::<std::net::SocketAddr>().is_err() => {
                "; give HOST:PORT with a host this machine can look up, e.g. 127.0.0.1:8417, \
                 0.0.0.0:8417 or localhost:8417 (--listen, KITH_LISTEN or `listen` in kith.toml)"
            }
            _ => "",
        };
        ServerError::Listen {
            addr: addr.to_string(),
            source,
            hint,
        }
    })
}

/// A started server: bound, replayed, flushing.
pub struct Server {
    app: Arc<AppState>,
    listening: Listening,
}

impl Server {
    /// Binds the listener, then opens the data directory and replays the journal.
    pub async fn start(config: ServerConfig) -> Result<Server, ServerError> {
        let listener = bind(&config.listen)?;
        Server::start_on(config, listener).await
    }

    /// Opens the data directory and replays the journal, to serve on a listener bound with
    /// [`bind`] (so that a wrong or busy address is reported before anything is opened or loaded).
    /// Meanwhile the listener answers `/healthz`, and other paths `503 starting`.
    pub async fn start_on(
        config: ServerConfig,
        listener: std::net::TcpListener,
    ) -> Result<Server, ServerError> {
        let listening = Listening::begin(listener, config.connections).map_err(|source| {
            ServerError::Listen {
                addr: config.listen.clone(),
                source,
                hint: "",
            }
        })?;
        Server::open(config, listening).await
    }

    /// Opens the data directory and replays the journal, while `listening` answers that the
    /// server is starting.
    pub async fn open(config: ServerConfig, listening: Listening) -> Result<Server, ServerError> {
        let state = Arc::new(StateStore::open(&config.data_dir)?);
        let pipeline = Pipeline::open(
            &config.data_dir,
            config.profiles.clone(),
            config.journal.clone(),
        )
        .await?;

        let local_token = crate::local::new_token();
        let bound = listening.local_addr();
        crate::local::publish(&config.data_dir, bound, &local_token).map_err(|source| {
            ServerError::DataDir {
                path: config.data_dir.display().to_string(),
                source,
            }
        })?;
        let app = Arc::new(AppState {
            keys: KeyResolver::new(
                state.clone(),
                Some(crate::auth::LocalToken {
                    secret: local_token,
                    listening_on: bound.ip(),
                }),
            ),
            config,
            state,
            pipeline,
            identities: Default::default(),
            models: Default::default(),
        });
        // Ready: from here on the server's routes answer (before `run` starts the flusher, which
        // the first requests do not need), so whoever is told the server listens finds it so.
        listening.route_to(router(app.clone()));
        Ok(Server { app, listening })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listening.local_addr()
    }

    pub fn state(&self) -> Arc<AppState> {
        self.app.clone()
    }

    /// Serves until `shutdown` resolves, then writes every buffered row to Delta.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let (stop_flushing, stop_signal) = tokio::sync::watch::channel(false);
        let flusher =
            crate::runtimes::flushes().spawn(flush_loop(self.app.clone(), stop_signal.clone()));
        let scheduler = tokio::spawn(models::schedule_loop(self.app.clone(), stop_signal));
        // Analyses attribute events through `profile_identities`: build it now (a quarter of a
        // second at 200k profiles) rather than in the first analysis someone asks for.
        let warm = self.app.clone();
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let (table, index) = warm.identities.get_indexed(&warm.pipeline.profiles);
            let table_ms = started.elapsed().as_millis();
            index.get_or_init(|| IdentityIndex::from_tables(std::slice::from_ref(&table)));
            tracing::info!(
                identifiers = table.batches.iter().map(|b| b.num_rows()).sum::<usize>(),
                table_ms,
                index_ms = started.elapsed().as_millis() - table_ms,
                "identity table for analyses built"
            );
        });
        shutdown.await;
        let served = self.listening.stop().await;
        // Let a flush in progress finish: cancelling it between its Delta commit and the buffer
        // update would write the same rows twice.
        let _ = stop_flushing.send(true);
        let _ = flusher.await;
        let _ = scheduler.await;
        if let Err(e) = served {
            tracing::error!(error = %e, "server stopped with an error");
        }
        let lake = self.app.pipeline.lake.clone();
        let flushed = crate::runtimes::flushes()
            .spawn(async move { lake.flush().await })
            .await
            .map_err(|e| LakeError::Delta(format!("final flush task failed: {e}")))
            .and_then(|flushed| flushed);
        // Profiles are written, and the server's address withdrawn, whether or not the tables
        // could be.
        self.app.pipeline.unifier.stop();
        crate::local::withdraw(&self.app.config.data_dir);
        tracing::info!(
            persisted_seq = self.app.pipeline.profiles.persisted_seq(),
            "profiles written"
        );
        let rows = flushed.map_err(ServerError::final_flush)?;
        tracing::info!(rows, "final flush done");
        Ok(())
    }
}

pub fn router(app: Arc<AppState>) -> Router {
    let mut router = Router::new()
        .route("/", get(crate::welcome::welcome))
        .route("/v1/batch", post(ingest::batch))
        .route("/v1/b", post(ingest::batch))
        .route("/v1/import", post(ingest::import))
        .route("/v1/projects/{write_key}/settings", get(ingest::settings))
        .route("/beacon/v1/batch", post(rudderstack::beacon_batch))
        .route("/v1/pixel/{call}", get(pixel::segment_pixel))
        .route("/pixel/v1/track", get(pixel::rudderstack_track))
        .route("/pixel/v1/page", get(pixel::rudderstack_page))
        .route("/sourceConfig", get(rudderstack::source_config))
        .route("/sourceConfig/", get(rudderstack::source_config))
        .route("/v1/{call}", post(ingest::single))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi))
        .route("/docs/errors", get(errors::error_docs))
        .merge(
            api_routes().route_layer(axum::middleware::from_fn_with_state(
                app.clone(),
                crate::auth::local_token_stays_local,
            )),
        );
    if app.config.noop_endpoint {
        router = router.route("/internal/noop/batch", post(ops::noop_batch));
    }
    router
        .fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed)
        // Bodies are read with our own limit so the answer is our JSON error.
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn(
            crate::body_budget::refuse_heads_over_budget,
        ))
        .layer(axum::middleware::map_response(
            errors::answer_errors_as_json,
        ))
        .layer(cors())
        .with_state(app)
}

/// The read and management API, counted and timed by route (see [`crate::api_metrics`]). Every
/// route a read or admin key opens belongs here: the router refuses the local token to callers
/// elsewhere on these routes (see [`crate::auth::local_token_stays_local`]).
fn api_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/query", post(query::query))
        .route("/v1/imports", post(imports::import_batch))
        .route(
            "/v1/computed-traits",
            get(traits::list).post(traits::declare),
        )
        .route(
            "/v1/computed-traits/{name}",
            axum::routing::delete(traits::remove),
        )
        .route("/v1/analytics/{analysis}", post(analytics::analyze))
        .route("/v1/models/{model}", get(models::status))
        .route("/v1/models/{model}/fit", post(models::fit))
        .route("/v1/models/{model}/results", get(models::results))
        .route("/v1/profiles/merge", post(profiles::merge))
        .route("/v1/profiles/duplicates", get(profiles::duplicates))
        .route("/v1/profiles/{lookup}", get(profiles::show))
        .route("/v1/profiles/{lookup}/events", get(profiles::events))
        .route_layer(axum::middleware::from_fn(crate::api_metrics::record))
}

/// Writes buffered rows to Delta when enough wait or they waited long enough, then retires the
/// journal segments Delta now holds.
async fn flush_loop(app: Arc<AppState>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut flushes = 0u64;
    // Once at start too: what an earlier run (or an import) left is deleted even if few events
    // arrive now.
    let mut tidying = Some(spawn_tidy(&app));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let flushed = app
            .pipeline
            .flush_due(app.config.flush_rows, app.config.flush_interval)
            .await;
        if !flushed {
            continue;
        }
        flushes += 1;
        // Compact the many files frequent flushes leave behind and delete what they replaced,
        // on its own thread: flushing goes on meanwhile, so a compaction never holds rows in
        // memory long enough to turn clients away. One at a time: when one is still running as
        // the next falls due, the one after covers the files that accumulated meanwhile.
        if flushes.is_multiple_of(COMPACT_EVERY_FLUSHES)
            && tidying.as_ref().is_none_or(|t| t.is_finished())
        {
            tidying = Some(spawn_tidy(&app));
        }
    }
}

/// Browsers may call every endpoint from any page (a preflight to a path that does not exist is
/// answered too, so the 404 that follows reaches the page's code instead of a CORS error). The request headers a preflight asks for
/// are allowed by name: the Fetch standard does not let `Access-Control-Allow-Headers: *` cover
/// `Authorization`, which the API's keys travel in.
pub(crate) fn cors() -> CorsLayer {
    use tower_http::cors::{AllowHeaders, Any};
    CorsLayer::new()
        .allow_origin(Any)
        .allow_methods(Any)
        .allow_headers(AllowHeaders::mirror_request())
        .expose_headers(Any)
        .max_age(Duration::from_secs(3600))
}

/// Tidies every event table on the compaction thread (see [`kith_lake::Housekeeping`]).
fn spawn_tidy(app: &AppState) -> tokio::task::JoinHandle<()> {
    let lake = app.pipeline.lake.clone();
    let policy = app.config.housekeeping;
    crate::runtimes::spawn_compaction(async move {
        for table in lake.tables() {
            let tidied = table.tidy(&policy).await;
            for failure in &tidied.failed {
                tracing::warn!(table = table.name, %failure, "a tidying step failed");
            }
            tracing::debug!(table = table.name, ?tidied, "tidied");
        }
    })
}

/// Flushes between compactions of the event tables.
const COMPACT_EVERY_FLUSHES: u64 = 50;
