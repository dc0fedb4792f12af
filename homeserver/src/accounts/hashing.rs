//! Password hashing for the whole process: argon2id off the async threads, at most
//! `max_concurrent` hashes at once across all tenants, waiting callers served first come first
//! served (a tokio semaphore is fair), and at most `max_queued` of them waiting — so requests
//! spread over many Host names cannot multiply the hashes' memory.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use rand::RngCore;

use crate::{
    config::Argon2Config,
    error::{Error, Result},
};

/// The longest password accepted when one is set (registration, change, admin reset).
pub const MAX_PASSWORD_BYTES: usize = 512;

pub struct PasswordHashing {
    params: argon2::Params,
    slots: Arc<tokio::sync::Semaphore>,
    waiting: AtomicUsize,
    max_queued: usize,
}

impl PasswordHashing {
    pub fn new(config: &Argon2Config) -> Result<Self> {
        let params = argon2::Params::new(config.m_cost_kib, config.t_cost, config.p_cost, None)
            .map_err(|e| Error::internal(format!("argon2 parameters: {e}")))?;
        let slots = match config.max_concurrent {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            n => n,
        };
        Ok(Self {
            params,
            slots: Arc::new(tokio::sync::Semaphore::new(slots)),
            waiting: AtomicUsize::new(0),
            max_queued: config.max_queued,
        })
    }

    fn hasher(&self) -> Argon2<'static> {
        Argon2::new(
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            self.params.clone(),
        )
    }

    /// Runs `work` on a blocking thread once a hashing slot is free. The slot is held by the
    /// blocking work itself, so a request that goes away while its hash runs does not free
    /// the slot (and its memory) early; a request that goes away while waiting leaves the
    /// queue.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(Argon2<'static>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let _waiting = Waiting::enter(&self.waiting, self.max_queued).ok_or_else(|| {
                    metrics::counter!("tim_password_hash_refused_total").increment(1);
                    Error::LimitExceeded {
                        retry_after_ms: 1000,
                    }
                })?;
                self.slots
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(Error::internal)?
            }
        };
        let hasher = self.hasher();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work(hasher)
        })
        .await
        .map_err(Error::internal)?
    }

    /// A new argon2id hash (PHC string) of `password`.
    pub async fn hash(&self, password: &str) -> Result<String> {
        let password = password.to_owned();
        self.run(move |hasher| {
            let mut salt = [0u8; 16];
            rand::thread_rng().fill_bytes(&mut salt);
            hasher
                .hash_password_with_salt(password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(Error::internal)
        })
        .await
    }

    /// Whether `password` matches the PHC string `hash`.
    pub async fn verify(&self, hash: &str, password: &str) -> Result<bool> {
        let (hash, password) = (hash.to_owned(), password.to_owned());
        self.run(move |hasher| {
            let parsed = PasswordHash::new(&hash).map_err(Error::internal)?;
            Ok(hasher.verify_password(password.as_bytes(), &parsed).is_ok())
        })
        .await
    }
}

/// A place in the hashing queue, given up when dropped (also when the waiting request is).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn enter(waiting: &'a AtomicUsize, max: usize) -> Option<Self> {
        waiting
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(waiting))
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A password someone wants to set: 1 to `MAX_PASSWORD_BYTES` bytes.
pub fn check_new_password(password: &str) -> Result<()> {
    if password.is_empty() || password.len() > MAX_PASSWORD_BYTES {
        return Err(Error::invalid_param(format!(
            "passwords have 1 to {MAX_PASSWORD_BYTES} bytes"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap(max_concurrent: usize, max_queued: usize) -> PasswordHashing {
        PasswordHashing::new(&Argon2Config {
            m_cost_kib: 64,
            t_cost: 1,
            p_cost: 1,
            max_concurrent,
            max_queued,
        })
        .unwrap()
    }

    #[tokio::test]
    async fn hashes_verify() {
        let h = cheap(1, 4);
        let phc = h.hash("correct horse").await.unwrap();
        assert!(h.verify(&phc, "correct horse").await.unwrap());
        assert!(!h.verify(&phc, "wrong").await.unwrap());
    }

    #[tokio::test]
    async fn the_queue_is_bounded() {
        // One slot, one waiter: of 8 simultaneous hashes, some are refused with 429 instead
        // of all queueing, and the others complete.
        let h = std::sync::Arc::new(cheap(1, 1));
        let all = futures::future::join_all((0..8).map(|_| {
            let h = h.clone();
            async move { h.hash("pw").await }
        }))
        .await;
        let refused = all
            .iter()
            .filter(|r| matches!(r, Err(Error::LimitExceeded { .. })))
            .count();
        assert!(refused >= 1, "nothing refused");
        assert!(all.iter().any(|r| r.is_ok()));
        assert_eq!(h.waiting.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_waiter_that_goes_away_leaves_the_queue() {
        let h = std::sync::Arc::new(cheap(1, 1));
        let slot = h.slots.clone().try_acquire_owned().unwrap();
        // Waits for the slot, then is dropped (a client that disconnected).
        let waiter = tokio::time::timeout(std::time::Duration::from_millis(50), h.hash("pw")).await;
        assert!(waiter.is_err());
        assert_eq!(h.waiting.load(Ordering::SeqCst), 0);
        drop(slot);
        h.hash("pw").await.unwrap();
    }

    #[test]
    fn new_passwords_are_bounded() {
        assert!(check_new_password("").is_err());
        assert!(check_new_password(&"x".repeat(513)).is_err());
        check_new_password(&"x".repeat(512)).unwrap();
    }
}
