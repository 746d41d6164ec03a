//! Who may do what through the admin API: every decision in this module —
//! here the routes, in `fields.rs` what may be set, in `growth.rs` how much
//! a non-admin may make the metadata hold. The
//! role table in `docs/security.md` says the same in words, and the
//! adversarial suite (`node/tests/security_roles.rs`) reads that table and
//! tries every cell against a running gateway.
//!
//! A caller's role comes only from records an admin wrote: the `user_role`
//! of the user its key names (a key's owner is set by admins only, or by the
//! owner for its own new keys), and the teams that list that user as an
//! `admin`. Nothing a caller writes into its own key raises what it may do.
//!
//! Non-admins may only tighten: a key's limits may go down, never up or
//! away; its models, routes, residency and expiry may narrow, never widen;
//! its owner, team, budget template, enforcement and block are admins'.

use meridian_consensus::metadata::{KeyRecord, MetadataState, TeamRole, UserRole};

use crate::auth::Principal;
use crate::error::{Error, Result};

mod fields;
mod growth;

pub use fields::{create_key, update_key, update_team};
pub use growth::{KeysMade, check_history, check_key_count, check_member};

/// The roles of `docs/security.md`, as the caller's records make them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Master,
    ProxyAdmin,
    ProxyAdminViewer,
    InternalUser,
    InternalUserViewer,
    /// A key that belongs to no user: it may call models and read itself.
    NoUser,
}

pub fn role(p: &Principal) -> Role {
    match p.caller() {
        None => Role::Master,
        Some(c) => match c.role {
            None => Role::NoUser,
            Some(UserRole::ProxyAdmin) => Role::ProxyAdmin,
            Some(UserRole::ProxyAdminViewer) => Role::ProxyAdminViewer,
            Some(UserRole::InternalUser) => Role::InternalUser,
            Some(UserRole::InternalUserViewer) => Role::InternalUserViewer,
        },
    }
}

/// "your key's user `u` has role r", for 403 messages.
pub fn describe(p: &Principal) -> String {
    match p.caller() {
        None => "the master key may do this".to_owned(),
        Some(c) => match (&c.key.user_id, c.role) {
            (None, _) => "your key belongs to no user".to_owned(),
            (Some(u), Some(role)) => format!("your key's user `{u}` has role {}", role_name(role)),
            (Some(u), None) => format!("your key's user `{u}` does not exist"),
        },
    }
}

fn role_name(role: UserRole) -> &'static str {
    match role {
        UserRole::ProxyAdmin => "proxy_admin",
        UserRole::ProxyAdminViewer => "proxy_admin_viewer",
        UserRole::InternalUser => "internal_user",
        UserRole::InternalUserViewer => "internal_user_viewer",
    }
}

pub(super) fn deny(what: impl Into<String>, p: &Principal) -> Error {
    Error::Forbidden(format!("{}; {}", what.into(), describe(p)))
}

pub(super) fn require(allowed: bool, p: &Principal, what: impl FnOnce() -> String) -> Result<()> {
    if allowed {
        Ok(())
    } else {
        Err(deny(what(), p))
    }
}

/// The caller must be an admin (master key or `proxy_admin`).
pub fn admin(p: &Principal, action: &str) -> Result<()> {
    require(p.is_admin(), p, || {
        format!("{action} requires the master key or the proxy_admin role")
    })
}

/// The caller must be able to read everything (admin or `proxy_admin_viewer`).
pub fn reader(p: &Principal, action: &str) -> Result<()> {
    require(p.may_read_all(), p, || {
        format!("{action} requires the proxy_admin or proxy_admin_viewer role")
    })
}

/// Whether `p`'s user is an admin of team `team_id`. Admins are not implied:
/// this is the team relation itself.
pub fn team_admin_of(state: &MetadataState, p: &Principal, team_id: &str) -> bool {
    role(p) == Role::InternalUser
        && p.user_id().is_some_and(|u| {
            state
                .team(team_id)
                .is_some_and(|t| t.members.get(u) == Some(&TeamRole::Admin))
        })
}

/// Whether `p`'s user is a member (any role) of team `team_id`.
pub fn member_of(state: &MetadataState, p: &Principal, team_id: &str) -> bool {
    p.user_id().is_some_and(|u| {
        state
            .team(team_id)
            .is_some_and(|t| t.members.contains_key(u))
    })
}

/// An admin, or the admin of team `team_id`.
pub fn admin_or_team_admin(state: &MetadataState, p: &Principal, team_id: &str) -> Result<()> {
    require(p.is_admin() || team_admin_of(state, p, team_id), p, || {
        format!("this needs the proxy_admin role or admin of team `{team_id}`")
    })
}

/// The role of the user a key belongs to, if it has one that exists.
fn owner_role(state: &MetadataState, key: &KeyRecord) -> Option<UserRole> {
    key.user_id
        .as_deref()
        .and_then(|u| state.user(u))
        .map(|u| u.user_role)
}

/// Keys of proxy admins and admin viewers are managed by admins only:
/// a team admin who could regenerate one would hold an admin's key.
fn privileged_owner(state: &MetadataState, key: &KeyRecord) -> bool {
    matches!(
        owner_role(state, key),
        Some(UserRole::ProxyAdmin | UserRole::ProxyAdminViewer)
    )
}

/// Whether the key's owner is the caller's own user.
fn own(p: &Principal, key: &KeyRecord) -> bool {
    p.user_id().is_some() && key.user_id.as_deref() == p.user_id()
}

/// What is being done to an existing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAction {
    Update,
    Delete,
    Regenerate,
    Block,
    Unblock,
}

/// May `p` do `action` to `key`?
pub fn manage_key(
    state: &MetadataState,
    p: &Principal,
    key: &KeyRecord,
    action: KeyAction,
) -> Result<()> {
    if p.is_admin() {
        return Ok(());
    }
    let denied = || {
        deny(
            match action {
                KeyAction::Block | KeyAction::Unblock => {
                    "blocking and unblocking a key needs the proxy_admin role or admin of the key's team"
                }
                _ => {
                    "managing this key needs the proxy_admin role, admin of the key's team, or being the key's own internal_user"
                }
            },
            p,
        )
    };
    if role(p) != Role::InternalUser || privileged_owner(state, key) {
        return Err(denied());
    }
    let team_admin = key
        .team_id
        .as_deref()
        .is_some_and(|t| team_admin_of(state, p, t));
    let allowed = match action {
        KeyAction::Update | KeyAction::Delete => team_admin || own(p, key),
        // A team admin may regenerate only keys that carry no one else's
        // rights or budget: its own, and its team's keys of no user.
        KeyAction::Regenerate => own(p, key) || (team_admin && key.user_id.is_none()),
        KeyAction::Block => team_admin,
        KeyAction::Unblock => {
            if team_admin && key.admin_blocked {
                return Err(deny(
                    "this key was blocked by an admin; only an admin can unblock it",
                    p,
                ));
            }
            team_admin
        }
    };
    if allowed { Ok(()) } else { Err(denied()) }
}

/// May `p` see `key` (`/key/info`, `/key/list`)?
pub fn see_key(state: &MetadataState, p: &Principal, key: &KeyRecord) -> bool {
    KeyReader::new(state, p).sees(key)
}

/// What `p` may see of keys, taken from the state once so that a listing
/// filters outside the state's lock.
pub struct KeyReader<'p> {
    p: &'p Principal,
    administered: std::collections::BTreeSet<String>,
}

impl<'p> KeyReader<'p> {
    pub fn new(state: &MetadataState, p: &'p Principal) -> Self {
        let administered = if role(p) == Role::InternalUser {
            state
                .teams()
                .filter(|t| team_admin_of(state, p, &t.team_id))
                .map(|t| t.team_id.clone())
                .collect()
        } else {
            Default::default()
        };
        Self { p, administered }
    }

    pub fn sees(&self, key: &KeyRecord) -> bool {
        self.p.may_read_all()
            || own(self.p, key)
            || self.p.caller().is_some_and(|c| c.key.token == key.token)
            || key
                .team_id
                .as_ref()
                .is_some_and(|t| self.administered.contains(t))
    }
}
