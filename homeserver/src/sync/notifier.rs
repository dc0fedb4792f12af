//! Wakes long-polling `/sync` requests. Each user with a waiting sync has a watch channel; a
//! change that concerns the user bumps it. No polling: a sync request subscribes before it
//! computes, so a change between computing and waiting is never lost.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, Weak},
};

use ruma::{OwnedUserId, UserId};
use tokio::sync::watch;

#[derive(Default)]
pub struct Notifier {
    users: Mutex<HashMap<OwnedUserId, Weak<watch::Sender<u64>>>>,
}

/// A subscription held by one waiting sync request.
pub struct Subscription {
    rx: watch::Receiver<u64>,
    _tx: Arc<watch::Sender<u64>>,
}

impl Subscription {
    /// Resolves when something changed for the user since subscribing.
    pub async fn changed(&mut self) {
        let _ = self.rx.changed().await;
    }
}

impl Notifier {
    pub fn subscribe(&self, user: &UserId) -> Subscription {
        let mut users = self.users.lock().expect("notifier lock");
        if let Some(tx) = users.get(user).and_then(Weak::upgrade) {
            return Subscription {
                rx: tx.subscribe(),
                _tx: tx,
            };
        }
        let tx = Arc::new(watch::channel(0).0);
        users.insert(user.to_owned(), Arc::downgrade(&tx));
        // Forget users whose last waiting sync went away.
        if users.len() > 64 && users.len().is_power_of_two() {
            users.retain(|_, w| w.strong_count() > 0);
        }
        Subscription {
            rx: tx.subscribe(),
            _tx: tx,
        }
    }

    pub fn wake<'a>(&self, users: impl IntoIterator<Item = &'a UserId>) {
        let map = self.users.lock().expect("notifier lock");
        for user in users {
            if let Some(tx) = map.get(user).and_then(Weak::upgrade) {
                tx.send_modify(|n| *n += 1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wake_reaches_subscriber() {
        let n = Notifier::default();
        let alice = ruma::user_id!("@alice:x");
        let mut sub = n.subscribe(alice);
        n.wake([alice]);
        tokio::time::timeout(std::time::Duration::from_secs(1), sub.changed())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn other_users_are_not_woken() {
        let n = Notifier::default();
        let mut sub = n.subscribe(ruma::user_id!("@alice:x"));
        n.wake([ruma::user_id!("@bob:x")]);
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), sub.changed())
                .await
                .is_err()
        );
    }
}
