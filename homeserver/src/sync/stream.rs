//! Stream positions. Every persisted change of a tenant (event, account data) gets the next
//! position from one in-process counter (a tenant is served by one process at a time). Writes
//! to different rooms commit concurrently, so positions can commit out of order; readers only
//! see up to `visible()`: the highest position below which every allocated position has
//! finished. Finishing a position returns the wake-ups that became visible with it. A position
//! dropped without `finish` (failed or no-op write) is abandoned, so it can never block
//! readers; the wake-ups of later positions it releases go to the `on_release` callback.

use std::{collections::BTreeMap, sync::Mutex};

pub struct StreamIds<W> {
    inner: Mutex<Inner<W>>,
    /// Delivers wake-ups released by an abandoned position.
    on_release: Box<dyn Fn(Vec<W>) + Send + Sync>,
}

enum Done<W> {
    Committed(Vec<W>),
    Abandoned,
}

struct Inner<W> {
    last_allocated: i64,
    visible: i64,
    /// Allocated positions not yet visible: `None` while in flight, `Some(Done)` when done.
    pending: BTreeMap<i64, Option<Done<W>>>,
}

/// An allocated position; finish it when its write committed.
pub struct Position<'a, W> {
    ids: &'a StreamIds<W>,
    pos: i64,
    done: bool,
}

impl<W> Position<'_, W> {
    pub fn pos(&self) -> i64 {
        self.pos
    }

    /// The write committed: returns the wake-ups that became visible and the visible position.
    pub fn finish(mut self, wakes: Vec<W>) -> (Vec<W>, i64) {
        self.done = true;
        self.ids.complete(self.pos, Done::Committed(wakes))
    }
}

impl<W> Drop for Position<'_, W> {
    fn drop(&mut self) {
        if !self.done {
            let (released, _) = self.ids.complete(self.pos, Done::Abandoned);
            if !released.is_empty() {
                (self.ids.on_release)(released);
            }
        }
    }
}

impl<W> StreamIds<W> {
    pub fn new(current: i64, on_release: impl Fn(Vec<W>) + Send + Sync + 'static) -> Self {
        Self {
            inner: Mutex::new(Inner {
                last_allocated: current,
                visible: current,
                pending: BTreeMap::new(),
            }),
            on_release: Box::new(on_release),
        }
    }

    /// Allocates the next position.
    pub fn next(&self) -> Position<'_, W> {
        let mut inner = self.inner.lock().expect("stream lock");
        inner.last_allocated += 1;
        let pos = inner.last_allocated;
        inner.pending.insert(pos, None);
        Position {
            ids: self,
            pos,
            done: false,
        }
    }

    pub fn visible(&self) -> i64 {
        self.inner.lock().expect("stream lock").visible
    }

    /// Readers (and sync tokens) advance only to committed positions: a token never names a
    /// position that holds nothing, which after a restart could be handed out again.
    fn complete(&self, pos: i64, done: Done<W>) -> (Vec<W>, i64) {
        let mut inner = self.inner.lock().expect("stream lock");
        inner.pending.insert(pos, Some(done));
        let mut out = Vec::new();
        while let Some(entry) = inner.pending.first_entry() {
            if entry.get().is_none() {
                break;
            }
            let (p, done) = entry.remove_entry();
            if let Some(Done::Committed(wakes)) = done {
                out.extend(wakes);
                inner.visible = p;
            }
        }
        (out, inner.visible)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_order_commits_stay_invisible_until_the_gap_closes() {
        let ids = StreamIds::<&str>::new(10, |_| {});
        let a = ids.next();
        let b = ids.next();
        assert_eq!((a.pos(), b.pos()), (11, 12));
        let (w, v) = b.finish(vec!["b"]);
        assert!(w.is_empty());
        assert_eq!(v, 10);
        let (w, v) = a.finish(vec!["a"]);
        assert_eq!(w, vec!["a", "b"]);
        assert_eq!(v, 12);
        assert_eq!(ids.visible(), 12);
    }

    #[test]
    fn dropped_positions_do_not_block_nor_lose_wakes() {
        let released = std::sync::Arc::new(Mutex::new(Vec::new()));
        let sink = released.clone();
        let ids = StreamIds::<&str>::new(0, move |w| sink.lock().unwrap().extend(w));
        let a = ids.next();
        let b = ids.next();
        b.finish(vec!["bob"]);
        drop(a);
        assert_eq!(ids.visible(), 2);
        assert_eq!(*released.lock().unwrap(), vec!["bob"]);
    }

    #[test]
    fn tokens_never_name_an_abandoned_position() {
        let ids = StreamIds::<()>::new(5, |_| {});
        ids.next().finish(vec![]);
        drop(ids.next());
        assert_eq!(ids.visible(), 6);
        ids.next().finish(vec![]);
        assert_eq!(ids.visible(), 8);
    }
}
