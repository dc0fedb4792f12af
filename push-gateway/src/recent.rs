//! A bounded set of recently seen keys that forgets them after a while: the pushkeys push
//! services reported gone (rejected on the next notify that names them) and the (pushkey, event)
//! pairs already accepted (a repeated notify is not pushed twice).

use std::{
    collections::{HashMap, VecDeque},
    hash::Hash,
    time::{Duration, Instant},
};

pub struct Recent<K> {
    keep: Duration,
    max: usize,
    since: HashMap<K, Instant>,
    order: VecDeque<(Instant, K)>,
}

impl<K: Hash + Eq + Clone> Recent<K> {
    pub fn new(keep: Duration, max: usize) -> Self {
        Self {
            keep,
            max,
            since: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Adds the key; false if it was already there (and not expired).
    pub fn insert(&mut self, key: K, now: Instant) -> bool {
        self.expire(now);
        if self.since.contains_key(&key) {
            return false;
        }
        while self.since.len() >= self.max {
            match self.order.pop_front() {
                Some((at, old)) => {
                    if self.since.get(&old) == Some(&at) {
                        self.since.remove(&old);
                    }
                }
                None => break,
            }
        }
        self.since.insert(key.clone(), now);
        self.order.push_back((now, key));
        true
    }

    pub fn contains(&mut self, key: &K, now: Instant) -> bool {
        self.expire(now);
        self.since.contains_key(key)
    }

    fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) < self.keep {
                break;
            }
            let (at, key) = self.order.pop_front().expect("front exists");
            if self.since.get(&key) == Some(&at) {
                self.since.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_for_a_while_and_stays_bounded() {
        let mut r = Recent::new(Duration::from_secs(10), 3);
        let t0 = Instant::now();
        assert!(r.insert("a", t0));
        assert!(!r.insert("a", t0 + Duration::from_secs(1)));
        assert!(r.contains(&"a", t0 + Duration::from_secs(9)));
        assert!(!r.contains(&"a", t0 + Duration::from_secs(10)));
        assert!(r.insert("a", t0 + Duration::from_secs(11)));
        for k in ["b", "c", "d"] {
            r.insert(k, t0 + Duration::from_secs(12));
        }
        // Bounded: the oldest went.
        assert!(!r.contains(&"a", t0 + Duration::from_secs(12)));
        assert!(r.contains(&"d", t0 + Duration::from_secs(12)));
    }
}
