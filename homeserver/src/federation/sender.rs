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

use super::client::FederationClient;
use crate::{
    policy::federation::{FederationScope, may_federate_with},
    rooms::Outbound,
    store::{FederationStore, GraphStore},
};

/// PDUs and EDUs per transaction (the spec's limits).
const BATCH: i64 = 50;
const EDU_BATCH: i64 = 100;
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
    /// Destinations with a running queue, and how to wake it.
    running: Mutex<HashMap<OwnedServerName, Arc<Notify>>>,
}

impl Sender {
    pub fn new(
        origin: OwnedServerName,
        client: Arc<FederationClient>,
        (store, graph): (Arc<dyn FederationStore>, Arc<dyn GraphStore>),
        scope: FederationScope,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                origin,
                client,
                store,
                graph,
                scope,
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

    /// Sends what waits for `destination` now: starts its queue, or cuts a backoff short.
    pub fn wake(&self, destination: &ServerName) {
        let mut running = self.inner.running.lock().expect("sender lock");
        if let Some(notify) = running.get(destination) {
            notify.notify_one();
            return;
        }
        let notify = Arc::new(Notify::new());
        running.insert(destination.to_owned(), notify.clone());
        tokio::spawn(run(
            Arc::downgrade(&self.inner),
            destination.to_owned(),
            notify,
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
        self.inner.store.queue_edus(&rows).await?;
        for (d, _, _) in &rows {
            if let Ok(d) = <&ServerName>::try_from(d.as_str()) {
                self.wake(d);
            }
        }
        Ok(())
    }

    /// `server` contacted us: if its queue is waiting out a failure, try again now.
    pub fn contacted(&self, server: &ServerName) {
        if let Some(notify) = self.inner.running.lock().expect("sender lock").get(server) {
            notify.notify_one();
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
async fn run(inner: Weak<Inner>, destination: OwnedServerName, notify: Arc<Notify>) {
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
            if notify_pending(&notify) {
                continue;
            }
            running.remove(&destination);
            return;
        }
        match send(&this, &destination, &batch, &edus).await {
            Ok(()) => {
                let dest = destination.as_str();
                let done = async {
                    if let Some((last, _)) = batch.last() {
                        this.store.outbox_sent(dest, *last).await?;
                    }
                    if let Some((last, _, _)) = edus.last() {
                        this.store.edu_outbox_sent(dest, *last).await?;
                    }
                    Ok::<_, crate::store::StoreError>(())
                };
                if let Err(e) = done.await {
                    tracing::warn!(%destination, error = %e, "federation outbox not updated");
                }
                retry = FIRST_RETRY;
            }
            Err(reason) => {
                tracing::info!(%destination, %reason, retry_secs = retry.as_secs(), "federation transaction failed");
                drop(this);
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {}
                    _ = notify.notified() => {}
                }
                retry = (retry * 2).min(LAST_RETRY);
            }
        }
    }
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

async fn send(
    inner: &Inner,
    destination: &ServerName,
    batch: &[(i64, String)],
    edus: &[(i64, String, String)],
) -> Result<(), String> {
    let ids: Vec<String> = batch.iter().map(|(_, id)| id.clone()).collect();
    let mut stored = inner.graph.pdus(&ids).await.map_err(|e| e.to_string())?;
    // In the order they were written.
    stored.sort_by_key(|p| ids.iter().position(|id| *id == p.event_id));
    let pdus: Vec<Box<RawValue>> = stored
        .into_iter()
        .filter_map(|p| RawValue::from_string(p.json).ok())
        .collect();
    // The id names the batch's positions, so a retry after a lost answer is recognised.
    let span = |first: Option<i64>, last: Option<i64>| match (first, last) {
        (Some(f), Some(l)) => format!("{f}-{l}"),
        _ => String::new(),
    };
    let txn_id = OwnedTransactionId::from(format!(
        "{}.{}",
        span(batch.first().map(|b| b.0), batch.last().map(|b| b.0)),
        span(edus.first().map(|e| e.0), edus.last().map(|e| e.0)),
    ));
    let edus: Vec<Raw<Edu>> = edus
        .iter()
        .filter_map(|(_, kind, content)| {
            let json = format!(
                r#"{{"edu_type":{},"content":{content}}}"#,
                Value::from(kind.as_str())
            );
            RawValue::from_string(json).ok().map(Raw::from_json)
        })
        .collect();
    let mut request = send_transaction_message::v1::Request::new(
        txn_id,
        inner.origin.clone(),
        MilliSecondsSinceUnixEpoch::now(),
    );
    request.pdus = pdus;
    request.edus = edus;
    let response = inner
        .client
        .request(destination, request)
        .await
        .map_err(|e| e.to_string())?;
    for (event_id, result) in response.pdus {
        if let Err(error) = result {
            tracing::info!(%destination, %event_id, %error, "the destination did not accept an event");
        }
    }
    Ok(())
}
