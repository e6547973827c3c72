//! The durability tests' load: numbered batches of track events, sent by several client threads
//! that put back whatever was not acknowledged and retry it later, as SDKs do.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{Value, json};

use super::basic;

/// What each batch holds: events `{prefix}-{batch}-{i}` from a fixed set of users.
#[derive(Clone, Copy)]
pub struct Workload {
    pub prefix: &'static str,
    pub events_per_batch: usize,
    pub users: usize,
    /// Bytes of filler in each event's properties.
    pub note_bytes: usize,
    /// How long a client waits for one answer.
    pub timeout: Duration,
}

impl Workload {
    pub fn body(&self, batch: usize) -> String {
        let events: Vec<Value> = (0..self.events_per_batch)
            .map(|i| {
                json!({"type": "track", "userId": format!("user-{}", (batch * 7 + i) % self.users),
                       "event": "Order Completed", "messageId": self.message_id(batch, i),
                       "properties": {"revenue": i as f64 + 0.5, "note": "x".repeat(self.note_bytes)}})
            })
            .collect();
        json!({ "batch": events }).to_string()
    }

    pub fn message_id(&self, batch: usize, event: usize) -> String {
        format!("{}-{batch}-{event}", self.prefix)
    }

    /// Sends one batch; true only when the server acknowledged every event in it (stored, or
    /// stored before).
    pub fn send(&self, base: &str, write_key: &str, batch: usize) -> bool {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(self.timeout))
            .build()
            .into();
        let Ok(mut response) = agent
            .post(format!("{base}/v1/batch"))
            .header("Authorization", &basic(write_key))
            .header("Content-Type", "application/json")
            .send(self.body(batch).as_bytes())
        else {
            return false;
        };
        if response.status().as_u16() != 200 {
            return false;
        }
        let Ok(body) = response.body_mut().read_json::<Value>() else {
            return false;
        };
        let handled =
            body["accepted"].as_u64().unwrap_or(0) + body["duplicates"].as_u64().unwrap_or(0);
        handled == self.events_per_batch as u64
    }
}

/// Which batches wait to be sent (or sent again) and which were acknowledged.
#[derive(Clone)]
pub struct Progress {
    pub pending: Arc<Mutex<VecDeque<usize>>>,
    pub acked: Arc<Mutex<BTreeSet<usize>>>,
}

impl Progress {
    pub fn new(batches: usize) -> Progress {
        Progress {
            pending: Arc::new(Mutex::new((0..batches).collect())),
            acked: Arc::default(),
        }
    }

    pub fn pending(&self) -> usize {
        self.pending.lock().unwrap().len()
    }

    pub fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// `clients` threads sending to `base` until nothing is pending or `stop` is set. Each
    /// returns how many batches it got acknowledged.
    pub fn start_clients(
        &self,
        workload: Workload,
        clients: usize,
        base: &str,
        write_key: &str,
        stop: &Arc<AtomicBool>,
    ) -> Vec<JoinHandle<usize>> {
        (0..clients)
            .map(|_| {
                let (progress, stop) = (self.clone(), stop.clone());
                let (base, key) = (base.to_string(), write_key.to_string());
                std::thread::spawn(move || {
                    let mut acknowledged = 0;
                    while !stop.load(Ordering::SeqCst) {
                        let Some(batch) = progress.pending.lock().unwrap().pop_front() else {
                            break;
                        };
                        if workload.send(&base, &key, batch) {
                            progress.acked.lock().unwrap().insert(batch);
                            acknowledged += 1;
                        } else {
                            // Not acknowledged: retried later, as SDKs do.
                            progress.pending.lock().unwrap().push_back(batch);
                        }
                    }
                    acknowledged
                })
            })
            .collect()
    }
}

/// Waits for the clients; how many batches they got acknowledged.
pub fn acknowledged_by(clients: Vec<JoinHandle<usize>>) -> usize {
    clients.into_iter().map(|c| c.join().unwrap()).sum()
}
