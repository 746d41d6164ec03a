//! Planning: one proposal's effects worked out against the state as it is,
//! per command. Reads only; [`MetadataState::commit`] installs the plan.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde_json::{Map, Value};

use super::super::command::{Command, Kind, MergeSummary, Outcome, Refusal, RemoteChanges};
use super::super::compact::Merged;
use super::super::doc::{DocError, EntityDoc};
use super::super::ledger::{GrantReply, GrantRequest, long_over};
use super::{
    Effect, EntityKey, MAX_LEDGERS_DROPPED, MAX_REGION_NAME, MetadataState, StoredDoc, has_home,
    id_field, parse_typed, stored_id, to_json, token_bytes,
};

/// Works out one proposal's effects against the state as it is.
pub(super) struct Planner<'a> {
    pub(super) state: &'a MetadataState,
    pub(super) at_ms: u64,
    /// `at_ms` in seconds: records' `created_at` / `updated_at`.
    pub(super) now: u64,
    /// The last change number handed out so far.
    pub(super) next_seq: u64,
    pub(super) effects: Vec<Effect>,
    /// Why a document could not be read, if one could not.
    pub(super) fault: Option<String>,
}

/// A refusal ends planning; its plan has no effects.
pub(super) type Planned<T = Outcome> = Result<T, Outcome>;

pub(super) fn done(records: Vec<Value>, missing: Vec<String>) -> Outcome {
    Outcome::Done { records, missing }
}

pub(super) fn invalid(message: impl Into<String>) -> Outcome {
    Outcome::refused(Refusal::Invalid, message)
}

impl Planner<'_> {
    pub(super) fn command(&mut self, command: &Command) -> Planned {
        match command {
            Command::Create { kind, record } => self.create(*kind, record),
            Command::Update { kind, id, patch } => self.update(*kind, id, patch),
            Command::Delete { kind, ids } => {
                let (mut removed, mut missing) = (Vec::new(), Vec::new());
                let mut seen = BTreeSet::new();
                for id in ids {
                    let found = match seen.insert(id.as_str()) {
                        true => self.state.get_json(*kind, id),
                        false => None, // deleted a moment ago
                    };
                    match found {
                        Some(record) => {
                            self.remove(*kind, &stored_id(*kind, id, record.get("token")))?;
                            removed.push(record);
                        }
                        None => missing.push(id.clone()),
                    }
                }
                Ok(done(removed, missing))
            }
            Command::AddMember {
                team_id,
                user_id,
                role,
            } => {
                let Some(team) = self.state.teams.get(team_id) else {
                    return Err(Outcome::refused(
                        Refusal::NotFound,
                        format!("team `{team_id}` does not exist"),
                    ));
                };
                let mut members = team.members.clone();
                members.insert(user_id.clone(), *role);
                let mut patch = Map::new();
                patch.insert("members".into(), to_json(&members));
                self.update(Kind::Team, team_id, &patch)
            }
            Command::RemoveMember { team_id, user_id } => {
                let Some(team) = self.state.teams.get(team_id) else {
                    return Err(Outcome::refused(
                        Refusal::NotFound,
                        format!("team `{team_id}` does not exist"),
                    ));
                };
                if !team.members.contains_key(user_id) {
                    return Err(Outcome::refused(
                        Refusal::NotFound,
                        format!("`{user_id}` is not a member of team `{team_id}`"),
                    ));
                }
                let mut members = team.members.clone();
                members.remove(user_id);
                let mut patch = Map::new();
                patch.insert("members".into(), to_json(&members));
                self.update(Kind::Team, team_id, &patch)
            }
            Command::Regenerate {
                old_token,
                new_token,
                key_name,
            } => {
                let (Some(old), Some(new_hash)) = (token_bytes(old_token), token_bytes(new_token))
                else {
                    return Err(invalid("tokens must be hex SHA-256"));
                };
                if self.state.keys.contains_key(&new_hash) {
                    return Err(Outcome::refused(
                        Refusal::AlreadyExists,
                        "the new key already exists",
                    ));
                }
                let Some(record) = self.state.keys.get(&old) else {
                    return Err(Outcome::refused(Refusal::NotFound, "key not found"));
                };
                let mut record = (**record).clone();
                self.remove(Kind::Key, &record.token)?;
                record.token = new_token.clone();
                record.key_name = key_name.clone();
                record.updated_at = self.now;
                let json = self.put(Kind::Key, new_token, to_json(&record))?;
                Ok(done(vec![json], vec![]))
            }
            Command::MergeRemote {
                source,
                since,
                through,
                entities,
            } => self.merge_remote(source, *since, *through, entities),
            Command::Grant(request) => Ok(self.grant(request)),
            Command::Compact { kind, id, heads } => self.compact(*kind, id, heads),
        }
    }

    /// Applies a rights request to its counter's ledger, dropping ledgers
    /// whose period ended long enough ago.
    fn grant(&mut self, request: &GrantRequest) -> Outcome {
        // A period long over (a node with a very slow clock): its ledger may
        // be gone, and a new one must not hand its headroom out again.
        if long_over(request.ends_at_ms, self.at_ms) {
            return done(vec![to_json(&GrantReply::default())], vec![]);
        }
        let mut ledger = self
            .state
            .ledgers
            .get(&request.counter)
            .cloned()
            .unwrap_or_default();
        let reply = ledger.grant(request);
        for (_, counter) in self
            .state
            .ledger_expiry
            .iter()
            .take_while(|(end, _)| long_over(Some(*end), self.at_ms))
            .take(MAX_LEDGERS_DROPPED)
        {
            if *counter != request.counter {
                self.effects.push(Effect::Ledger {
                    counter: counter.clone(),
                    ledger: None,
                });
            }
        }
        self.effects.push(Effect::Ledger {
            counter: request.counter.clone(),
            ledger: Some(ledger),
        });
        done(vec![to_json(&reply)], vec![])
    }

    fn create(&mut self, kind: Kind, record: &Value) -> Planned {
        let mut record = match record {
            Value::Object(m) => m.clone(),
            _ => return Err(invalid("a record must be an object")),
        };
        record.insert("created_at".into(), self.now.into());
        record.insert("updated_at".into(), self.now.into());
        if has_home(kind) {
            record.insert("home_region".into(), self.state.region.to_string().into());
        }
        let Some(id) = record
            .get(id_field(kind))
            .and_then(Value::as_str)
            .map(str::to_owned)
        else {
            return Err(invalid(format!(
                "{} needs `{}`",
                kind.noun(),
                id_field(kind)
            )));
        };
        if self.state.exists(kind, &id) {
            return Err(Outcome::refused(
                Refusal::AlreadyExists,
                format!("{} `{id}` already exists", kind.noun()),
            ));
        }
        let json = self.put(kind, &id, Value::Object(record))?;
        Ok(done(vec![json], vec![]))
    }

    fn update(&mut self, kind: Kind, id: &str, patch: &Map<String, Value>) -> Planned {
        let Some(Value::Object(mut record)) = self.state.get_json(kind, id) else {
            return Err(Outcome::refused(
                Refusal::NotFound,
                format!("{} `{id}` does not exist", kind.noun()),
            ));
        };
        for (field, value) in patch {
            // Identity and history are not the caller's to change.
            if field == id_field(kind) || field == "created_at" || field == "home_region" {
                continue;
            }
            record.insert(field.clone(), value.clone());
        }
        // Records made before homes existed get this region's.
        if has_home(kind) && !record.contains_key("home_region") {
            record.insert("home_region".into(), self.state.region.to_string().into());
        }
        record.insert("updated_at".into(), self.now.into());
        let id = stored_id(kind, id, record.get("token"));
        let json = self.put(kind, &id, Value::Object(record))?;
        Ok(done(vec![json], vec![]))
    }

    /// Stores `json` as `kind`'s record `id` and makes its document hold it;
    /// returns the canonical record.
    fn put(&mut self, kind: Kind, id: &str, json: Value) -> Planned<Value> {
        let (typed, canonical) = parse_typed(kind, id, json).map_err(invalid)?;
        if let Value::Object(fields) = &canonical {
            self.write_doc(kind, id, Some(fields))?;
        }
        self.effects.push(Effect::Put {
            kind,
            id: id.to_owned(),
            typed,
            json: canonical.to_string().into_bytes(),
        });
        Ok(canonical)
    }

    /// Removes record `id` and tombstones its document.
    fn remove(&mut self, kind: Kind, id: &str) -> Planned<()> {
        self.write_doc(kind, id, None)?;
        self.effects.push(Effect::Remove {
            kind,
            id: id.to_owned(),
        });
        Ok(())
    }

    /// Makes entity `id`'s document hold `record`, or deleted (`None`), as
    /// this region's actor at the proposal's time.
    fn write_doc(
        &mut self,
        kind: Kind,
        id: &str,
        record: Option<&Map<String, Value>>,
    ) -> Planned<()> {
        let failed = |e: DocError| invalid(format!("{} `{id}`'s document: {e}", kind.noun()));
        let actor = &self.state.actor;
        let at = self.at_ms;
        let key: EntityKey = (kind, Arc::from(id));
        let stored = self.current_doc(&key)?;
        let replaces = stored.as_ref().map(|d| d.seq);
        let current = match stored {
            Some(stored) => Some(EntityDoc::load(&stored.saved).map_err(failed)?),
            None => None,
        };
        let doc = match (current, record) {
            (None, Some(record)) => EntityDoc::new(actor, at, record).map_err(failed)?,
            (Some(mut doc), Some(record)) => {
                let changed = if doc.is_deleted() {
                    doc.recreate(actor, at, record)
                } else {
                    let kept = self.with_unknown_fields(kind, id, &doc, record);
                    doc.update(actor, at, kept.as_ref().unwrap_or(record))
                };
                if !changed.map_err(failed)? {
                    return Ok(());
                }
                doc
            }
            (Some(mut doc), None) => {
                if !doc.delete(actor, at).map_err(failed)? {
                    return Ok(());
                }
                doc
            }
            (None, None) => {
                // A record stored before documents existed: its document
                // starts with what it held, then the delete.
                let Some(Value::Object(old)) = self.state.get_json(kind, id) else {
                    return Ok(());
                };
                let mut doc = EntityDoc::new(actor, at, &old).map_err(failed)?;
                doc.delete(actor, at).map_err(failed)?;
                doc
            }
        };
        self.push_doc(kind, key.1, doc.save(), None, replaces);
        Ok(())
    }

    /// The effect that stores a document's new saved form under the next
    /// change number.
    pub(super) fn push_doc(
        &mut self,
        kind: Kind,
        id: Arc<str>,
        saved: Vec<u8>,
        echo: Option<Arc<str>>,
        replaces: Option<u64>,
    ) {
        self.next_seq += 1;
        self.effects.push(Effect::Doc {
            kind,
            id,
            doc: StoredDoc {
                seq: self.next_seq,
                echo,
                saved: saved.into_boxed_slice(),
            },
            replaces,
        });
    }

    /// An entity's current document; a read failure ends planning, faulted.
    pub(super) fn current_doc(&mut self, key: &EntityKey) -> Planned<Option<StoredDoc>> {
        match self.state.stored_doc(key) {
            Ok(doc) => Ok(doc.map(std::borrow::Cow::into_owned)),
            Err(e) => {
                let refusal = invalid(format!("storage: {e}"));
                self.fault = Some(e);
                Err(refusal)
            }
        }
    }

    /// `record` plus the fields `doc` holds that this build's record type
    /// does not know (written by a newer region): an update here must not
    /// delete them. `None` when there are none.
    fn with_unknown_fields(
        &self,
        kind: Kind,
        id: &str,
        doc: &EntityDoc,
        record: &Map<String, Value>,
    ) -> Option<Map<String, Value>> {
        let Some(Value::Object(known)) = self.state.get_json(kind, id) else {
            return None;
        };
        let held = doc.record().ok().flatten()?;
        let mut unknown = held
            .into_iter()
            .filter(|(field, _)| !known.contains_key(field) && !record.contains_key(field))
            .peekable();
        unknown.peek()?;
        let mut out = record.clone();
        out.extend(unknown);
        Some(out)
    }

    fn merge_remote(
        &mut self,
        source: &str,
        since: u64,
        through: u64,
        entities: &[RemoteChanges],
    ) -> Planned {
        if source.is_empty() || source.len() > MAX_REGION_NAME {
            return Err(invalid(format!(
                "a region name has 1 to {MAX_REGION_NAME} bytes"
            )));
        }
        if source == &*self.state.region {
            return Err(invalid(format!(
                "changes from region `{source}` are this region's own"
            )));
        }
        // Every document the batch names, merged in order (an entity may
        // appear more than once), with whether it changed.
        // Per entity: its document, whether the batch changed it, the source's
        // heads for it, and the change number of the document it replaces.
        #[allow(clippy::type_complexity)]
        let mut work: BTreeMap<EntityKey, (EntityDoc, bool, &[String], Option<u64>)> =
            BTreeMap::new();
        // Documents not now held as the source sent them (see `Merged`).
        let mut not_held: Vec<(Kind, String)> = Vec::new();
        for entity in entities {
            let (kind, id) = (entity.kind, entity.id.as_str());
            let failed =
                |e: DocError| invalid(format!("{} `{id}` from {source}: {e}", kind.noun()));
            if kind == Kind::Key && token_bytes(id).is_none() {
                return Err(invalid(format!("key `{id}` from {source}: not a token")));
            }
            let key: EntityKey = (kind, Arc::from(id));
            let slot = match work.entry(key) {
                std::collections::btree_map::Entry::Occupied(slot) => slot.into_mut(),
                std::collections::btree_map::Entry::Vacant(slot) => {
                    let stored = self.current_doc(slot.key())?;
                    match stored {
                        Some(stored) => {
                            let doc = EntityDoc::load(&stored.saved).map_err(failed)?;
                            slot.insert((doc, false, &[], Some(stored.seq)))
                        }
                        None => {
                            let doc = EntityDoc::from_changes(&entity.changes).map_err(failed)?;
                            slot.insert((doc, true, &entity.heads, None))
                        }
                    }
                }
            };
            // A whole document, perhaps of another compaction epoch.
            let merged = slot.0.merge_document(&entity.changes).map_err(failed)?;
            slot.1 |= merged.changed();
            if let Merged::Skipped(why) = merged {
                tracing::warn!(kind = kind.noun(), source, why, "document not merged");
            }
            if !merged.held() {
                not_held.push((kind, id.to_owned()));
            }
            slot.2 = &entity.heads;
        }
        let source_name: Arc<str> = Arc::from(source);
        let mut merged = 0u64;
        for ((kind, id), (doc, changed, heads, replaces)) in work {
            if !changed {
                continue;
            }
            merged += 1;
            let record = doc
                .record()
                .map_err(|e| invalid(format!("{} `{id}` from {source}: {e}", kind.noun())))?;
            match record {
                Some(mut fields) => {
                    if kind == Kind::Key && meridian_bugs::on(meridian_bugs::Bug::RenameRemoteKeys)
                    {
                        fields.insert("key_name".into(), Value::from("sk-...bug"));
                    }
                    let named = fields.get(id_field(kind)).and_then(Value::as_str);
                    if named != Some(&*id) {
                        return Err(invalid(format!(
                            "{} `{id}` from {source}: its document names another entity",
                            kind.noun()
                        )));
                    }
                    let (typed, canonical) = parse_typed(kind, &id, Value::Object(fields))
                        .map_err(|e| {
                            invalid(format!("{} `{id}` from {source}: {e}", kind.noun()))
                        })?;
                    self.effects.push(Effect::Put {
                        kind,
                        id: id.to_string(),
                        typed,
                        json: canonical.to_string().into_bytes(),
                    });
                }
                None => {
                    if self.state.exists(kind, &id) {
                        self.effects.push(Effect::Remove {
                            kind,
                            id: id.to_string(),
                        });
                    }
                }
            }
            // The source holds exactly this document: nothing to send back.
            let ours: Vec<String> = doc.heads().iter().map(ToString::to_string).collect();
            let mut theirs = heads.to_vec();
            theirs.sort();
            let echo = (!theirs.is_empty() && ours == theirs).then(|| source_name.clone());
            self.push_doc(kind, id, doc.save(), echo, replaces);
        }
        // Everything in (since, through] is merged now; with nothing missed
        // before `since`, the source is merged through `through`. (A stale
        // batch may move the cursor back: that only makes the source resend.)
        let mut cursor = self.state.sync_cursor(source);
        if since <= cursor && through != cursor {
            cursor = through;
            self.effects.push(Effect::Cursor {
                region: source.to_owned(),
                seq: cursor,
            });
        }
        not_held.sort();
        not_held.dedup();
        let summary = MergeSummary {
            source: source.to_owned(),
            cursor,
            merged,
            not_held,
        };
        Ok(done(vec![to_json(&summary)], vec![]))
    }
}
