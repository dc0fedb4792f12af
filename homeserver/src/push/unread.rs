//! Notification and highlight counts for sync, kept per user and room so that a sync reads
//! only the events since the previous one instead of everything after the read receipt.
//!
//! A count is "what notifies the user after their read receipt and after their own last write
//! (whoever writes has read what came before)". Event rows never change the columns it depends
//! on, and every positive stream position at or below the visible one is committed, so the
//! count up to position `p` plus the count over `(p, upto]` is the count up to `upto` — unless
//! the user wrote in that range, which restarts it. A moved receipt starts the room afresh.

use std::{
    collections::{HashMap, hash_map::Entry},
    hash::{BuildHasher, RandomState},
    sync::{Arc, Mutex},
};

use crate::store::{PushStore, StoreResult, UnreadSpan};

/// Shards of the cache, so that syncs of different users rarely wait for each other.
const SHARDS: usize = 16;
/// Rooms counted per shard before it is emptied: bounds the memory (about 100 bytes a room)
/// while every active user's rooms fit.
const ROOMS_PER_SHARD: usize = 4096;

/// Counts as of a stream position, for one receipt position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Counted {
    receipt: i64,
    upto: i64,
    notifications: i64,
    highlights: i64,
}

impl Counted {
    /// These counts carried on over the next range (`span` is what that range holds). A
    /// receipt ahead of `upto` (set by another device after the sync began) stays the start.
    fn then(self, span: Option<&UnreadSpan>, upto: i64) -> Counted {
        let (notifications, highlights) = match span {
            Some(s) if s.own_write => (s.notifications, s.highlights),
            Some(s) => (
                self.notifications + s.notifications,
                self.highlights + s.highlights,
            ),
            None => (self.notifications, self.highlights),
        };
        Counted {
            upto: upto.max(self.upto),
            notifications,
            highlights,
            ..self
        }
    }
}

/// Users' counted rooms, and how many rooms that is.
#[derive(Default)]
struct Shard {
    users: HashMap<String, HashMap<String, Counted>>,
    rooms: usize,
}

pub struct UnreadCounts {
    store: Arc<dyn PushStore>,
    shards: [Mutex<Shard>; SHARDS],
    hasher: RandomState,
}

impl UnreadCounts {
    pub fn new(store: Arc<dyn PushStore>) -> Self {
        Self {
            store,
            shards: std::array::from_fn(|_| Mutex::default()),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, user: &str) -> std::sync::MutexGuard<'_, Shard> {
        let i = self.hasher.hash_one(user) as usize % SHARDS;
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `(notifications, highlights)` of the user in each of the rooms as of stream position
    /// `upto` (a position sync has made visible).
    pub async fn counts(
        &self,
        user: &str,
        rooms: &[String],
        upto: i64,
    ) -> StoreResult<HashMap<String, (i64, i64)>> {
        let receipts = self.store.read_receipts(user, rooms).await?;
        // Where each room's count stands: carried on from the cache when the receipt is where
        // it was, else started afresh at the receipt.
        let mut out = HashMap::with_capacity(rooms.len());
        let mut starts: Vec<(String, Counted)> = Vec::new();
        {
            let shard = self.shard(user);
            let counted = shard.users.get(user);
            for room in rooms {
                let receipt = receipts.get(room).copied().unwrap_or(0);
                match counted.and_then(|c| c.get(room)) {
                    Some(c) if c.receipt == receipt && c.upto >= upto => {
                        // Another sync already counted further; its counts are as good.
                        out.insert(room.clone(), (c.notifications, c.highlights));
                    }
                    Some(c) if c.receipt == receipt => starts.push((room.clone(), *c)),
                    _ => starts.push((
                        room.clone(),
                        Counted {
                            receipt,
                            upto: receipt,
                            notifications: 0,
                            highlights: 0,
                        },
                    )),
                }
            }
        }
        if starts.is_empty() {
            return Ok(out);
        }
        let ranges: Vec<(String, i64)> = starts.iter().map(|(r, c)| (r.clone(), c.upto)).collect();
        let spans: HashMap<String, UnreadSpan> = self
            .store
            .unread_between(user, &ranges, upto)
            .await?
            .into_iter()
            .map(|s| (s.room_id.clone(), s))
            .collect();
        let counted_now: Vec<(String, Counted)> = starts
            .into_iter()
            .map(|(room, start)| {
                let now = start.then(spans.get(&room), upto);
                out.insert(room.clone(), (now.notifications, now.highlights));
                (room, now)
            })
            .collect();
        // Kept, more rooms than half a shard holds would empty it for everyone: a sync that
        // counts that many is counted afresh each time.
        if counted_now.len() > ROOMS_PER_SHARD / 2 {
            return Ok(out);
        }
        let mut guard = self.shard(user);
        let shard = &mut *guard;
        if shard.rooms + counted_now.len() > ROOMS_PER_SHARD {
            shard.users.clear();
            shard.rooms = 0;
        }
        let counted = shard.users.entry(user.to_owned()).or_default();
        for (room, now) in counted_now {
            match counted.entry(room) {
                Entry::Vacant(slot) => {
                    slot.insert(now);
                    shard.rooms += 1;
                }
                // A concurrent sync may have stored a later count meanwhile; keep the latest.
                Entry::Occupied(mut slot) => {
                    if slot.get().upto <= now.upto {
                        slot.insert(now);
                    }
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(own_write: bool, notifications: i64, highlights: i64) -> UnreadSpan {
        UnreadSpan {
            room_id: "!r:x".into(),
            own_write,
            notifications,
            highlights,
        }
    }

    const START: Counted = Counted {
        receipt: 5,
        upto: 10,
        notifications: 3,
        highlights: 1,
    };

    #[test]
    fn new_notifications_add_to_the_count() {
        let c = START.then(Some(&span(false, 2, 1)), 20);
        assert_eq!((c.upto, c.notifications, c.highlights), (20, 5, 2));
        assert_eq!(c.receipt, 5);
    }

    #[test]
    fn an_own_write_restarts_the_count() {
        let c = START.then(Some(&span(true, 1, 0)), 20);
        assert_eq!((c.notifications, c.highlights), (1, 0));
        let c = START.then(Some(&span(true, 0, 0)), 20);
        assert_eq!((c.notifications, c.highlights), (0, 0));
    }

    #[test]
    fn a_receipt_ahead_of_the_sync_stays_the_start() {
        let fresh = Counted {
            receipt: 50,
            upto: 50,
            notifications: 0,
            highlights: 0,
        };
        let c = fresh.then(None, 40);
        assert_eq!((c.upto, c.notifications), (50, 0));
    }

    #[test]
    fn a_quiet_range_keeps_the_count() {
        let c = START.then(None, 30);
        assert_eq!((c.upto, c.notifications, c.highlights), (30, 3, 1));
    }
}
