//! The unify stage: durable events → identity resolution and profiles.
//!
//! Identity facts are extracted on the request's own thread (in parallel, before the journal),
//! handed over by the journal's sink once durable, and applied by one `kith-unify` thread within
//! milliseconds, so a profile is current well within a second of the ack while the ingest path
//! never waits on it. The thread writes `profiles.db` about once a second; the journal keeps every
//! record that is not in both the event tables and `profiles.db`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kith_profiles::{EventFacts, ProfileStore};

/// What the journal carries to its sink for one entry besides the encoded record: the event
/// itself is dropped once encoded (on the thread that parsed it), and the tables read the record.
pub struct Ingested {
    /// Identity facts of an accepted event (`None` for rejections).
    pub facts: Option<EventFacts>,
}

enum Command {
    Apply(Vec<(u64, EventFacts)>),
    /// Drop every value of a computed trait, then say so.
    ResetTrait(String, tokio::sync::oneshot::Sender<()>),
    Stop,
}

/// Handle on the unify thread.
pub struct Unifier {
    commands: Sender<Command>,
    /// Events handed over and not applied yet.
    backlog: Arc<AtomicUsize>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl Unifier {
    pub fn start(profiles: Arc<ProfileStore>, persist_every: Duration) -> std::io::Result<Unifier> {
        let (commands, receiver) = mpsc::channel();
        let backlog = Arc::new(AtomicUsize::new(0));
        let worker_backlog = backlog.clone();
        let worker = std::thread::Builder::new()
            .name("kith-unify".into())
            .spawn(move || run(&profiles, &receiver, &worker_backlog, persist_every))?;
        Ok(Unifier {
            commands,
            backlog,
            worker: Mutex::new(Some(worker)),
        })
    }

    /// Queues durable events for resolution.
    pub fn send(&self, events: Vec<(u64, EventFacts)>) {
        if events.is_empty() {
            return;
        }
        self.backlog.fetch_add(events.len(), Ordering::SeqCst);
        if self.commands.send(Command::Apply(events)).is_err() {
            tracing::error!("the unify thread has stopped; profiles will catch up on restart");
        }
    }

    /// Queues the reset of a computed trait behind the events already handed over.
    pub fn reset_trait(&self, name: String, done: tokio::sync::oneshot::Sender<()>) {
        if self.commands.send(Command::ResetTrait(name, done)).is_err() {
            tracing::error!("the unify thread has stopped; the trait is reset on restart");
        }
    }

    pub fn backlog(&self) -> usize {
        self.backlog.load(Ordering::SeqCst)
    }

    /// Whether the thread applying events to profiles still runs (it ends only when stopped,
    /// or by a bug).
    pub fn is_running(&self) -> bool {
        self.worker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|worker| !worker.is_finished())
    }

    /// Applies what is queued, writes `profiles.db` and ends the thread.
    pub fn stop(&self) {
        let _ = self.commands.send(Command::Stop);
        if let Some(worker) = self.worker.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = worker.join();
        }
    }
}

fn run(
    profiles: &ProfileStore,
    commands: &mpsc::Receiver<Command>,
    backlog: &AtomicUsize,
    persist_every: Duration,
) {
    let mut last_persist = Instant::now();
    loop {
        let stop = match commands.recv_timeout(persist_every) {
            Ok(Command::Apply(events)) => {
                profiles.apply(&events);
                backlog.fetch_sub(events.len(), Ordering::SeqCst);
                metrics::counter!("kith_profile_events_applied_total")
                    .increment(events.len() as u64);
                false
            }
            Ok(Command::ResetTrait(name, done)) => {
                if let Err(e) = profiles.reset_trait(&name) {
                    // Identifiers read back from disk later may still show old values.
                    tracing::error!(trait_name = %name, error = %e, "a computed trait's stored values could not all be dropped");
                }
                let _ = done.send(());
                false
            }
            Ok(Command::Stop) | Err(RecvTimeoutError::Disconnected) => true,
            Err(RecvTimeoutError::Timeout) => false,
        };
        if stop || last_persist.elapsed() >= persist_every {
            if let Err(e) = profiles.persist() {
                metrics::counter!("kith_profile_persist_errors_total").increment(1);
                tracing::error!(error = %e, "writing profiles.db failed; will retry");
            }
            last_persist = Instant::now();
        }
        if stop {
            return;
        }
    }
}
