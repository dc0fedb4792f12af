//! Server-side key backup (`/room_keys`): encrypted room keys a user's devices store so that a
//! device signed in later can read the history (A-ROOM-17). The server keeps the better of two
//! copies of a session's key and never sees inside one.

use std::collections::BTreeMap;

use ruma::{
    OwnedRoomId, UInt, UserId,
    api::client::backup::{BackupAlgorithm, KeyBackupData, RoomKeyBackup},
    serde::Raw,
};
use serde_json::Value;

use crate::{
    error::{Error, Result},
    homeserver::Homeserver,
    store::{BackupKeyRow, BackupVersionRow, BackupWrite},
};

/// Room keys one request may store at most.
const MAX_KEYS_PER_REQUEST: usize = 100_000;

/// A backup version as the API shows it.
pub struct BackupInfo {
    pub version: String,
    pub algorithm: Raw<BackupAlgorithm>,
    pub count: UInt,
    pub etag: String,
}

/// What a key write reports: the version's etag and key count.
pub struct BackupState {
    pub etag: String,
    pub count: UInt,
}

fn parse_version(version: &str) -> Result<i64> {
    version
        .parse::<i64>()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| Error::not_found("unknown backup version"))
}

fn info(row: BackupVersionRow) -> Result<BackupInfo> {
    let auth_data: Value = serde_json::from_str(&row.auth_data).map_err(Error::internal)?;
    let algorithm = serde_json::json!({ "algorithm": row.algorithm, "auth_data": auth_data });
    Ok(BackupInfo {
        version: row.version.to_string(),
        algorithm: Raw::from_json(
            serde_json::value::to_raw_value(&algorithm).map_err(Error::internal)?,
        ),
        count: UInt::new_saturating(row.count as u64),
        etag: row.etag.to_string(),
    })
}

/// The one backup algorithm the spec defines.
const MEGOLM_BACKUP_V1: &str = "m.megolm_backup.v1.curve25519-aes-sha2";

/// `algorithm` and `auth_data` of a backup algorithm object. Read here rather than by Ruma's
/// type, which insists on `signatures` in `auth_data` where the spec does not (clients may
/// sign the backup later); other algorithms than the spec's one are refused.
fn split_algorithm(raw: &Raw<BackupAlgorithm>) -> Result<(String, String)> {
    let v: Value = serde_json::from_str(raw.json().get())
        .map_err(|e| Error::bad_json(format!("backup algorithm: {e}")))?;
    let algorithm = v
        .get("algorithm")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::bad_json("backup algorithm lacks `algorithm`"))?;
    if algorithm != MEGOLM_BACKUP_V1 {
        return Err(Error::invalid_param(format!(
            "unsupported backup algorithm; use {MEGOLM_BACKUP_V1}"
        )));
    }
    let auth_data = v
        .get("auth_data")
        .filter(|a| a.is_object())
        .ok_or_else(|| Error::bad_json("backup algorithm lacks `auth_data`"))?;
    let public_key = auth_data.get("public_key").and_then(Value::as_str);
    if public_key
        .is_none_or(|k| ruma::serde::Base64::<ruma::serde::base64::Standard>::parse(k).is_err())
    {
        return Err(Error::bad_json(
            "auth_data.public_key must be a base64 Curve25519 key",
        ));
    }
    if auth_data.get("signatures").is_some_and(|s| !s.is_object()) {
        return Err(Error::bad_json("auth_data.signatures must be an object"));
    }
    Ok((algorithm.to_owned(), auth_data.to_string()))
}

fn key_row(room_id: &str, session_id: &str, raw: &Raw<KeyBackupData>) -> Result<BackupKeyRow> {
    let data = raw
        .deserialize()
        .map_err(|e| Error::bad_json(format!("room key {session_id}: {e}")))?;
    let v: Value = serde_json::from_str(raw.json().get()).map_err(Error::internal)?;
    Ok(BackupKeyRow {
        room_id: room_id.to_owned(),
        session_id: session_id.to_owned(),
        first_message_index: u64::from(data.first_message_index) as i64,
        forwarded_count: u64::from(data.forwarded_count) as i64,
        is_verified: data.is_verified,
        session_data: v
            .get("session_data")
            .map(Value::to_string)
            .unwrap_or_default(),
    })
}

fn key_data(row: &BackupKeyRow) -> Result<Raw<KeyBackupData>> {
    let session_data: Value = serde_json::from_str(&row.session_data).map_err(Error::internal)?;
    let v = serde_json::json!({
        "first_message_index": row.first_message_index,
        "forwarded_count": row.forwarded_count,
        "is_verified": row.is_verified,
        "session_data": session_data,
    });
    Ok(Raw::from_json(
        serde_json::value::to_raw_value(&v).map_err(Error::internal)?,
    ))
}

fn written(w: BackupWrite) -> Result<BackupState> {
    match w {
        BackupWrite::Done { etag, count } => Ok(BackupState {
            etag: etag.to_string(),
            count: UInt::new_saturating(count as u64),
        }),
        BackupWrite::WrongVersion {
            current: Some(current),
        } => Err(Error::WrongRoomKeysVersion {
            current: current.to_string(),
        }),
        BackupWrite::WrongVersion { current: None } => {
            Err(Error::not_found("no backup version exists"))
        }
    }
}

impl Homeserver {
    pub async fn create_backup_version(
        &self,
        user: &UserId,
        algorithm: &Raw<BackupAlgorithm>,
    ) -> Result<String> {
        let (algorithm, auth_data) = split_algorithm(algorithm)?;
        let version = self
            .stores
            .backup
            .create_backup_version(user.as_str(), &algorithm, &auth_data)
            .await?;
        Ok(version.to_string())
    }

    /// A backup version (None: the current one).
    pub async fn backup_info(&self, user: &UserId, version: Option<&str>) -> Result<BackupInfo> {
        let version = version.map(parse_version).transpose()?;
        let row = self
            .stores
            .backup
            .backup_version(user.as_str(), version)
            .await?
            .ok_or_else(|| Error::not_found("no such backup version"))?;
        info(row)
    }

    /// Replaces a version's auth data; its algorithm cannot change.
    pub async fn update_backup_version(
        &self,
        user: &UserId,
        version: &str,
        algorithm: &Raw<BackupAlgorithm>,
    ) -> Result<()> {
        let number = parse_version(version)?;
        let (algorithm, auth_data) = split_algorithm(algorithm)?;
        let existing = self
            .stores
            .backup
            .backup_version(user.as_str(), Some(number))
            .await?
            .ok_or_else(|| Error::not_found("no such backup version"))?;
        if existing.algorithm != algorithm {
            return Err(Error::invalid_param(
                "the algorithm of a backup version cannot change",
            ));
        }
        if !self
            .stores
            .backup
            .update_backup_version(user.as_str(), number, &auth_data)
            .await?
        {
            return Err(Error::not_found("no such backup version"));
        }
        Ok(())
    }

    pub async fn delete_backup_version(&self, user: &UserId, version: &str) -> Result<()> {
        let number = parse_version(version)?;
        if !self
            .stores
            .backup
            .delete_backup_version(user.as_str(), number)
            .await?
        {
            return Err(Error::not_found("no such backup version"));
        }
        Ok(())
    }

    /// Stores room keys in the current version.
    pub async fn put_backup_keys(
        &self,
        user: &UserId,
        version: &str,
        rooms: &BTreeMap<OwnedRoomId, RoomKeyBackup>,
    ) -> Result<BackupState> {
        let number = self.writable_version(user, version).await?;
        let total: usize = rooms.values().map(|r| r.sessions.len()).sum();
        if total > MAX_KEYS_PER_REQUEST {
            return Err(Error::invalid_param(format!(
                "at most {MAX_KEYS_PER_REQUEST} keys per request"
            )));
        }
        let mut rows = Vec::with_capacity(total);
        for (room, backup) in rooms {
            for (session, data) in &backup.sessions {
                rows.push(key_row(room.as_str(), session, data)?);
            }
        }
        written(
            self.stores
                .backup
                .put_backup_keys(user.as_str(), number, &rows)
                .await?,
        )
    }

    /// Room keys of a version: all, of one room, or of one session.
    pub async fn backup_keys(
        &self,
        user: &UserId,
        version: &str,
        room: Option<&str>,
        session: Option<&str>,
    ) -> Result<BTreeMap<OwnedRoomId, RoomKeyBackup>> {
        let number = parse_version(version)?;
        self.stores
            .backup
            .backup_version(user.as_str(), Some(number))
            .await?
            .ok_or_else(|| Error::not_found("no such backup version"))?;
        let mut out: BTreeMap<OwnedRoomId, RoomKeyBackup> = BTreeMap::new();
        for row in self
            .stores
            .backup
            .backup_keys(user.as_str(), number, room, session)
            .await?
        {
            let Ok(room_id) = OwnedRoomId::try_from(row.room_id.as_str()) else {
                continue;
            };
            out.entry(room_id)
                .or_insert_with(|| RoomKeyBackup::new(BTreeMap::new()))
                .sessions
                .insert(row.session_id.clone(), key_data(&row)?);
        }
        Ok(out)
    }

    pub async fn delete_backup_keys(
        &self,
        user: &UserId,
        version: &str,
        room: Option<&str>,
        session: Option<&str>,
    ) -> Result<BackupState> {
        let number = self.writable_version(user, version).await?;
        written(
            self.stores
                .backup
                .delete_backup_keys(user.as_str(), number, room, session)
                .await?,
        )
    }

    /// The version number to write to: it must exist (404) and be the current one (403).
    async fn writable_version(&self, user: &UserId, version: &str) -> Result<i64> {
        let current = self
            .stores
            .backup
            .backup_version(user.as_str(), None)
            .await?
            .map(|r| r.version);
        match (version.parse::<i64>(), current) {
            (_, None) => Err(Error::not_found("no backup version exists")),
            (Ok(v), Some(c)) if v == c => Ok(v),
            (_, Some(c)) => Err(Error::WrongRoomKeysVersion {
                current: c.to_string(),
            }),
        }
    }
}
