//! The outbound sender: one queue per destination, fed by the outbox the event's own
//! transaction wrote (so a crash loses nothing and a server that is down costs no memory),
//! sent in transactions of at most 50 PDUs and 100 EDUs (to-device messages, device-list
//! updates, queued the same way), retried with exponential backoff, woken early
//! when the destination shows it is back (it contacts us).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedServerName, OwnedTransactionId, ServerName,
    api::federation::transactions::send_transaction_message,
};
use ruma::{api::federation::transactions::edu::Edu, serde::Raw};
use serde_json::{Value, value::RawValue};
use tokio::sync::Notify;

use super::client::{FederationClient, FederationError};
use crate::{
    clock::Clock,
    policy::federation::{FederationScope, may_federate_with},
    rooms::Outbound,
    store::{FederationStore, GraphStore, QueuedEdu},
};

/// PDUs and EDUs per transaction (the spec's limits).
const BATCH: i64 = 50;
const EDU_BATCH: i64 = 100;
/// Bytes of PDUs and EDUs in one transaction at most (below the 1 MiB request limit common
/// servers, ours included, apply); a single larger item goes alone.
const MAX_TXN_BYTES: usize = 768 * 1024;
/// How long a typing notification is worth sending: one that waited longer (the destination
/// was down) is dropped, not shown late (typing shows for 30 s where it arrives).
const TYPING_LIFETIME_MS: i64 = 30_000;
const FIRST_RETRY: Duration = Duration::from_secs(1);
const LAST_RETRY: Duration = Duration::from_secs(600);

pub struct Sender {
    inner: Arc<Inner>,
}

struct Inner {
    origin: OwnedServerName,
    client: Arc<FederationClient>,
    store: Arc<dyn FederationStore>,
    graph: Arc<dyn GraphStore>,
    scope: FederationScope,
    clock: Arc<dyn Clock>,
    /// Destinations with a running queue, and how to wake it.
    running: Mutex<HashMap<OwnedServerName, Arc<Wake>>>,
}

/// How a destination's queue is woken.
#[derive(Default)]
struct Wake {
    /// New items were queued (checked before the queue ends; it does not cut a backoff short:
    /// a server that is down is not asked again for every new message).
    work: Notify,
    /// The destination contacted us: it is back, retry now.
    contact: Notify,
}

impl Sender {
    pub fn new(
        origin: OwnedServerName,
        client: Arc<FederationClient>,
        (store, graph): (Arc<dyn FederationStore>, Arc<dyn GraphStore>),
        scope: FederationScope,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                origin,
                client,
                store,
                graph,
                scope,
                clock,
                running: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Starts the queues of destinations with events left from before a restart.
    pub async fn resume(&self) {
        match self.inner.store.outbox_destinations().await {
            Ok(destinations) => {
                for d in destinations {
                    if let Ok(d) = OwnedServerName::try_from(d) {
                        self.wake(&d);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "federation outbox unreadable"),
        }
    }

    /// Something waits for `destination`: starts its queue (one waiting out a failure keeps
    /// waiting — see `contacted`).
    pub fn wake(&self, destination: &ServerName) {
        let mut running = self.inner.running.lock().expect("sender lock");
        if let Some(wake) = running.get(destination) {
            wake.work.notify_one();
            return;
        }
        let wake = Arc::new(Wake::default());
        running.insert(destination.to_owned(), wake.clone());
        tokio::spawn(run(
            Arc::downgrade(&self.inner),
            destination.to_owned(),
            wake,
        ));
    }

    /// Queues EDUs `(destination, EDU type, content)` durably and wakes their queues;
    /// destinations we do not federate with are left out.
    pub async fn queue_edus(
        &self,
        edus: Vec<(OwnedServerName, String, Value)>,
    ) -> crate::error::Result<()> {
        let rows: Vec<(String, String, String)> = edus
            .iter()
            .filter(|(d, _, _)| *d != self.inner.origin && may_federate_with(&self.inner.scope, d))
            .map(|(d, kind, content)| (d.to_string(), kind.clone(), content.to_string()))
            .collect();
        if rows.is_empty() {
            return Ok(());
        }
        self.inner
            .store
            .queue_edus(&rows, self.inner.clock.now_ms())
            .await?;
        for (d, _, _) in &rows {
            if let Ok(d) = <&ServerName>::try_from(d.as_str()) {
                self.wake(d);
            }
        }
        Ok(())
    }

    /// `server` contacted us: if its queue is waiting out a failure, try again now.
    pub fn contacted(&self, server: &ServerName) {
        if let Some(wake) = self.inner.running.lock().expect("sender lock").get(server) {
            wake.contact.notify_one();
        }
    }
}

#[async_trait::async_trait]
impl crate::e2ee::device_lists::RemoteUpdates for Sender {
    async fn queue(&self, edus: Vec<(OwnedServerName, String, Value)>) -> crate::error::Result<()> {
        self.queue_edus(edus).await
    }
}

impl Outbound for Sender {
    fn destinations(&self, servers: &mut dyn Iterator<Item = &ServerName>) -> Vec<String> {
        servers
            .filter(|s| *s != self.inner.origin && may_federate_with(&self.inner.scope, s))
            .map(|s| s.to_string())
            .collect()
    }

    fn queued(&self, destinations: &[String]) {
        for d in destinations {
            if let Ok(d) = <&ServerName>::try_from(d.as_str()) {
                self.wake(d);
            }
        }
    }
}

/// One destination's queue: until its outbox is empty, a transaction at a time.
async fn run(inner: Weak<Inner>, destination: OwnedServerName, wake: Arc<Wake>) {
    let mut retry = FIRST_RETRY;
    loop {
        let Some(this) = inner.upgrade() else {
            return;
        };
        let batch = this.store.outbox(destination.as_str(), BATCH).await;
        let edus = this.store.edu_outbox(destination.as_str(), EDU_BATCH).await;
        let (batch, edus) = match (batch, edus) {
            (Ok(b), Ok(e)) => (b, e),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(%destination, error = %e, "federation outbox unreadable");
                (vec![], vec![])
            }
        };
        if batch.is_empty() && edus.is_empty() {
            let mut running = this.running.lock().expect("sender lock");
            // Nothing can be added between this read and the removal unnoticed: a writer
            // wakes the queue after committing, and finds it gone or notifies it.
            if notify_pending(&wake.work) {
                continue;
            }
            running.remove(&destination);
            return;
        }
        let outcome = send(&this, &destination, &batch, &edus).await;
        let done = match outcome {
            Ok(carried) => Some(carried),
            Err(Failed {
                reason,
                permanent: Some(carried),
            }) => {
                // Sending the same again cannot succeed; it would block everything after it.
                tracing::warn!(%destination, %reason, events = carried.positions.len(), edus = carried.ids.len(), "the destination refused a transaction; dropped");
                Some(carried)
            }
            Err(Failed {
                reason,
                permanent: None,
            }) => {
                tracing::info!(%destination, %reason, retry_secs = retry.as_secs(), "federation transaction failed");
                None
            }
        };
        match done {
            Some(carried) => {
                let dest = destination.as_str();
                let taken_off = async {
                    if !carried.positions.is_empty() {
                        this.store.outbox_sent(dest, &carried.positions).await?;
                    }
                    if !carried.ids.is_empty() {
                        this.store.edu_outbox_sent(dest, &carried.ids).await?;
                    }
                    Ok::<_, crate::store::StoreError>(())
                };
                if let Err(e) = taken_off.await {
                    tracing::warn!(%destination, error = %e, "federation outbox not updated");
                }
                retry = FIRST_RETRY;
            }
            None => {
                drop(this);
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {}
                    _ = wake.contact.notified() => {}
                }
                retry = (retry * 2).min(LAST_RETRY);
            }
        }
    }
}

/// A transaction id naming a batch: event positions and EDU ids, hashed.
fn txn_id(positions: impl Iterator<Item = i64>, edus: impl Iterator<Item = i64>) -> String {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    for p in positions {
        hash.update(format!("p{p};"));
    }
    for e in edus {
        hash.update(format!("e{e};"));
    }
    hash.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether a queued EDU is no longer worth sending at `now`: a typing notification that
/// waited longer than it would be shown.
fn outlived(edu: &QueuedEdu, now: i64) -> bool {
    edu.kind == "m.typing" && now - edu.queued_ts > TYPING_LIFETIME_MS
}

/// Whether a wake-up arrived (consumes it).
fn notify_pending(notify: &Notify) -> bool {
    use std::future::Future;
    let notified = notify.notified();
    let mut notified = std::pin::pin!(notified);
    let waker = futures::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    notified.as_mut().poll(&mut cx).is_ready()
}

/// What a transaction carried (event positions, EDU ids), to be taken off the outbox.
struct Carried {
    positions: Vec<i64>,
    ids: Vec<i64>,
}

/// A transaction that failed: `permanent` when the destination refused its contents (400,
/// 413), so sending the same again cannot succeed.
struct Failed {
    reason: String,
    permanent: Option<Carried>,
}

/// Sends the oldest waiting events and EDUs, as many as fit in `MAX_TXN_BYTES` (at least one).
async fn send(
    inner: &Inner,
    destination: &ServerName,
    batch: &[(i64, String)],
    edus: &[QueuedEdu],
) -> Result<Carried, Failed> {
    let failed = |reason: String| Failed {
        reason,
        permanent: None,
    };
    let ids: Vec<String> = batch.iter().map(|(_, id)| id.clone()).collect();
    let stored = inner
        .graph
        .pdus(&ids)
        .await
        .map_err(|e| failed(e.to_string()))?;
    let mut budget = MAX_TXN_BYTES;
    let mut carried = Carried {
        positions: vec![],
        ids: vec![],
    };
    let mut pdus: Vec<Box<RawValue>> = Vec::new();
    // In the order they were written.
    for (pos, event_id) in batch {
        let json = stored
            .iter()
            .find(|p| p.event_id == *event_id)
            .map(|p| &p.json);
        let size = json.map_or(0, |j| j.len());
        if size > budget && !carried.positions.is_empty() {
            break;
        }
        budget = budget.saturating_sub(size);
        carried.positions.push(*pos);
        if let Some(raw) = json.and_then(|j| RawValue::from_string(j.clone()).ok()) {
            pdus.push(raw);
        }
    }
    let mut raw_edus: Vec<Raw<Edu>> = Vec::new();
    let now = inner.clock.now_ms();
    for edu in edus {
        if outlived(edu, now) {
            carried.ids.push(edu.id);
            continue;
        }
        let json = format!(
            r#"{{"edu_type":{},"content":{}}}"#,
            Value::from(edu.kind.as_str()),
            edu.content
        );
        if json.len() > budget && !(carried.positions.is_empty() && carried.ids.is_empty()) {
            break;
        }
        budget = budget.saturating_sub(json.len());
        carried.ids.push(edu.id);
        if let Ok(raw) = RawValue::from_string(json) {
            raw_edus.push(Raw::from_json(raw));
        }
    }
    // Only outlived EDUs: taken off without asking the destination.
    if pdus.is_empty() && raw_edus.is_empty() {
        return Ok(carried);
    }
    // The id is a digest of exactly what the transaction carries: a retry after a lost
    // answer is recognised, and different contents never share an id.
    let txn_id = OwnedTransactionId::from(txn_id(
        carried.positions.iter().copied(),
        carried.ids.iter().copied(),
    ));
    let mut request = send_transaction_message::v1::Request::new(
        txn_id,
        inner.origin.clone(),
        MilliSecondsSinceUnixEpoch::now(),
    );
    request.pdus = pdus;
    request.edus = raw_edus;
    let response = match inner.client.request(destination, request).await {
        Ok(r) => r,
        Err(e) => {
            let permanent = matches!(
                e,
                FederationError::Remote {
                    status: 400 | 413,
                    ..
                }
            );
            return Err(Failed {
                reason: e.to_string(),
                permanent: permanent.then_some(carried),
            });
        }
    };
    for (event_id, result) in response.pdus {
        if let Err(error) = result {
            tracing::info!(%destination, %event_id, %error, "the destination did not accept an event");
        }
    }
    Ok(carried)
}

#[cfg(test)]
mod tests {
    use super::{QueuedEdu, TYPING_LIFETIME_MS, outlived, txn_id};

    #[test]
    fn typing_notifications_that_waited_too_long_are_not_sent() {
        let edu = |kind: &str, queued_ts| QueuedEdu {
            id: 1,
            kind: kind.into(),
            content: "{}".into(),
            queued_ts,
        };
        let now = 1_000_000;
        assert!(!outlived(&edu("m.typing", now - 1_000), now));
        assert!(outlived(
            &edu("m.typing", now - TYPING_LIFETIME_MS - 1),
            now
        ));
        // Queued before the time was recorded: long ago.
        assert!(outlived(&edu("m.typing", 0), now));
        // What must arrive however late: keys, device lists, receipts, presence.
        for kind in [
            "m.direct_to_device",
            "m.device_list_update",
            "m.receipt",
            "m.presence",
        ] {
            assert!(!outlived(&edu(kind, 0), now), "{kind}");
        }
    }

    #[test]
    fn transaction_ids_name_exactly_what_is_carried() {
        let id = |p: &[i64], e: &[i64]| txn_id(p.iter().copied(), e.iter().copied());
        assert_eq!(id(&[5, 6, 8], &[]), id(&[5, 6, 8], &[]));
        // A position that committed late makes another transaction, not a repeat.
        assert_ne!(id(&[5, 6, 8], &[]), id(&[5, 6, 7, 8], &[]));
        // Event positions and EDU ids are told apart.
        assert_ne!(id(&[3], &[]), id(&[], &[3]));
        assert_eq!(id(&[1], &[2]).len(), 32);
    }
}
