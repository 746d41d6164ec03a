//! What a non-admin can make the replicated metadata hold, bounded: the
//! keys a user owns, the members a team admin adds, and the edit history a
//! record's document carries (every region and every snapshot holds it).
//! Admins are not bounded here: they are trusted with the whole store.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use meridian_consensus::metadata::{Kind, MetadataState};

use super::deny;
use crate::auth::Principal;
use crate::error::{Error, Result};

/// The most keys one user may own, made by themselves or a team admin.
pub const MAX_KEYS_PER_USER: usize = 1000;

/// The most members a team admin may bring a team to.
pub const MAX_TEAM_MEMBERS: usize = 10_000;

/// How large a record's document may grow through non-admins' edits. A
/// document keeps its whole edit history, compressed: a small edit adds a
/// few bytes (tens of thousands of them fit), a new 16 KiB `metadata` about
/// that much (a few fit). Every edit rewrites the document, so this also
/// bounds what one edit costs. Past it only an admin may change the record.
pub const MAX_HISTORY_BYTES: usize = 64 * 1024;

/// A non-admin may edit a record only while its history is under
/// [`MAX_HISTORY_BYTES`].
pub fn check_history(state: &MetadataState, p: &Principal, kind: Kind, id: &str) -> Result<()> {
    if p.is_admin() {
        return Ok(());
    }
    match state.document_size(kind, id) {
        Some(size) if size >= MAX_HISTORY_BYTES => Err(deny(
            format!(
                "this {} has been changed too many times ({size} bytes of history, at most {MAX_HISTORY_BYTES} through non-admins); an admin can still change it",
                kind.noun()
            ),
            p,
        )),
        _ => Ok(()),
    }
}

/// A non-admin's new key for `owner` must leave them at most
/// [`MAX_KEYS_PER_USER`] keys.
pub fn check_key_count(state: &MetadataState, p: &Principal, owner: Option<&str>) -> Result<()> {
    let Some(owner) = owner.filter(|_| !p.is_admin()) else {
        return Ok(());
    };
    let owned = state
        .key_snapshot()
        .iter()
        .filter(|k| k.user_id.as_deref() == Some(owner))
        .count();
    if owned >= MAX_KEYS_PER_USER {
        return Err(deny(
            format!(
                "user `{owner}` already has {owned} keys, the most a non-admin may make ({MAX_KEYS_PER_USER})"
            ),
            p,
        ));
    }
    Ok(())
}

/// A team admin may add only users that exist, up to [`MAX_TEAM_MEMBERS`].
pub fn check_member(state: &MetadataState, p: &Principal, team_id: &str, user: &str) -> Result<()> {
    if p.is_admin() {
        return Ok(());
    }
    if state.user(user).is_none() {
        return Err(Error::invalid(
            format!("user `{user}` does not exist"),
            Some("member.user_id"),
        ));
    }
    let members = state.team(team_id).map_or(0, |t| t.members.len());
    if members >= MAX_TEAM_MEMBERS {
        return Err(deny(
            format!(
                "team `{team_id}` has {members} members, the most a team admin may add ({MAX_TEAM_MEMBERS})"
            ),
            p,
        ));
    }
    Ok(())
}

/// Keys (new or regenerated) a non-admin user may make in an hour, on one
/// node. Every key made leaves a document that every region keeps (a
/// deleted key's document stays, as its tombstone), so making and deleting
/// keys in a loop is bounded by time, on every node.
pub const MAX_KEYS_MADE_PER_HOUR: u32 = 100;

/// How many keys each user made on this node in the current hour.
#[derive(Default)]
pub struct KeysMade {
    /// user → (hour, keys made in it). Users are made by admins only, so
    /// the map is bounded by the users that exist.
    counts: Mutex<HashMap<String, (u64, u32)>>,
}

impl KeysMade {
    /// Counts one key made by `p` at `now_ms`, or refuses it.
    pub fn count(&self, p: &Principal, now_ms: u64) -> Result<()> {
        let Some(user) = p.user_id().filter(|_| !p.is_admin()) else {
            return Ok(());
        };
        let hour = now_ms / 3_600_000;
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = counts.entry(user.to_owned()).or_insert((hour, 0));
        if entry.0 != hour {
            *entry = (hour, 0);
        }
        if entry.1 >= MAX_KEYS_MADE_PER_HOUR {
            return Err(Error::Forbidden(format!(
                "user `{user}` made {MAX_KEYS_MADE_PER_HOUR} keys on this node this hour, the most a non-admin may; try again next hour"
            )));
        }
        entry.1 += 1;
        Ok(())
    }
}
