//! Loading a [`MetadataState`] back from storage or a snapshot, and
//! listing it for one.

use super::*;

impl MetadataState {
    /// Installs a record read back from storage or a snapshot.
    pub fn load(&mut self, kind: Kind, id: &str, json: &[u8]) -> Result<(), String> {
        // Stored bytes are already canonical: parse straight into the typed
        // record (start-up loads every key this way).
        fn parse<T: DeserializeOwned>(kind: Kind, id: &str, json: &[u8]) -> Result<Arc<T>, String> {
            serde_json::from_slice(json)
                .map(Arc::new)
                .map_err(|e| format!("{} `{id}`: {e}", kind.noun()))
        }
        let id_owned = || id.to_owned();
        match kind {
            Kind::Key => {
                let hash = token_bytes(id)
                    .ok_or_else(|| format!("key `{id}`: not a hex SHA-256 token"))?;
                self.keys.insert(hash, parse(kind, id, json)?);
            }
            Kind::Team => {
                self.teams.insert(id_owned(), parse(kind, id, json)?);
            }
            Kind::User => {
                self.users.insert(id_owned(), parse(kind, id, json)?);
            }
            Kind::Customer => {
                self.customers.insert(id_owned(), parse(kind, id, json)?);
            }
            Kind::Budget => {
                self.budgets.insert(id_owned(), parse(kind, id, json)?);
            }
            Kind::Model => {
                self.models.insert(id_owned(), parse(kind, id, json)?);
                self.models_generation = next_generation();
            }
            Kind::Tag => {
                self.tags.insert(id_owned(), parse(kind, id, json)?);
            }
        }
        Ok(())
    }

    /// Installs a document read back from storage or a snapshot
    /// ([`StoredDoc::encode`] bytes).
    pub fn load_doc(&mut self, kind: Kind, id: &str, bytes: &[u8]) -> Result<(), String> {
        let mut doc = StoredDoc::decode(bytes)
            .map_err(|e| format!("{} `{id}`'s document: {e}", kind.noun()))?;
        // One allocation per region name, not per document.
        doc.echo = doc.echo.map(|name| self.intern(&name));
        self.install_doc((kind, Arc::from(id)), doc);
        Ok(())
    }

    /// Installs a sync cursor read back from storage or a snapshot.
    pub fn load_cursor(&mut self, region: &str, seq: u64) {
        self.cursors.insert(region.to_owned(), seq);
    }

    /// Loads a stored rights ledger.
    pub fn load_ledger(&mut self, counter: &[u8], json: &[u8]) -> Result<(), String> {
        let ledger: Ledger = serde_json::from_slice(json)
            .map_err(|e| format!("rights ledger {}: {e}", hex(counter)))?;
        self.install_ledger(counter.to_vec(), Some(ledger));
        Ok(())
    }

    /// The rights ledger of `counter`, if this region issues its rights.
    pub fn ledger(&self, counter: &[u8]) -> Option<&Ledger> {
        self.ledgers.get(counter)
    }

    /// Every rights ledger as `(counter, json)`.
    pub fn ledgers(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.ledgers
            .iter()
            .map(|(c, l)| (c.clone(), to_json(l).to_string().into_bytes()))
            .collect()
    }

    /// Gives a document to every record that has none (records stored before
    /// documents existed), made at the record's `updated_at`; returns the
    /// changes to write. Run after loading; usually does nothing.
    pub fn adopt_records(&mut self) -> Vec<Change> {
        let mut missing: Vec<(Kind, String)> = Vec::new();
        let has = |docs: &HashMap<EntityKey, StoredDoc>, kind: Kind, id: &str| {
            docs.contains_key(&(kind, Arc::from(id)))
        };
        for key in self.keys.values() {
            if !has(&self.docs, Kind::Key, &key.token) {
                missing.push((Kind::Key, key.token.clone()));
            }
        }
        fn others<T>(
            out: &mut Vec<(Kind, String)>,
            docs: &HashMap<EntityKey, StoredDoc>,
            kind: Kind,
            m: &BTreeMap<String, Arc<T>>,
        ) {
            out.extend(
                m.keys()
                    .filter(|id| !docs.contains_key(&(kind, Arc::from(id.as_str()))))
                    .map(|id| (kind, id.clone())),
            );
        }
        others(&mut missing, &self.docs, Kind::Team, &self.teams);
        others(&mut missing, &self.docs, Kind::User, &self.users);
        others(&mut missing, &self.docs, Kind::Customer, &self.customers);
        others(&mut missing, &self.docs, Kind::Budget, &self.budgets);
        others(&mut missing, &self.docs, Kind::Model, &self.models);
        others(&mut missing, &self.docs, Kind::Tag, &self.tags);
        missing.sort();
        let mut changes = Vec::new();
        for (kind, id) in missing {
            let Some(Value::Object(record)) = self.get_json(kind, &id) else {
                continue;
            };
            let at_ms = record
                .get("updated_at")
                .and_then(Value::as_u64)
                .unwrap_or(0)
                .saturating_mul(1000);
            match EntityDoc::new(&self.actor, at_ms, &record) {
                Ok(doc) => {
                    let stored = StoredDoc {
                        seq: self.seq + 1,
                        echo: None,
                        saved: doc.save().into_boxed_slice(),
                    };
                    changes.push(Change::Doc {
                        kind,
                        id: id.clone(),
                        bytes: stored.encode(),
                        seq: stored.seq,
                        replaces: None,
                    });
                    self.install_doc((kind, Arc::from(id.as_str())), stored);
                }
                Err(e) => {
                    tracing::warn!(kind = kind.noun(), %id, error = %e, "no document for a stored record")
                }
            }
        }
        changes
    }

    /// Every record as `(kind, id, json)`, in a deterministic order.
    pub fn records(&self) -> Vec<(Kind, String, Vec<u8>)> {
        let mut out = Vec::new();
        for key in self.keys() {
            out.push((
                Kind::Key,
                key.token.clone(),
                to_json(&**key).to_string().into_bytes(),
            ));
        }
        fn all<T: Serialize>(
            out: &mut Vec<(Kind, String, Vec<u8>)>,
            kind: Kind,
            m: &BTreeMap<String, Arc<T>>,
        ) {
            for (id, r) in m {
                out.push((kind, id.clone(), to_json(&**r).to_string().into_bytes()));
            }
        }
        all(&mut out, Kind::Team, &self.teams);
        all(&mut out, Kind::User, &self.users);
        all(&mut out, Kind::Customer, &self.customers);
        all(&mut out, Kind::Budget, &self.budgets);
        all(&mut out, Kind::Model, &self.models);
        all(&mut out, Kind::Tag, &self.tags);
        out
    }

    /// Every document as `(kind, id, StoredDoc::encode bytes)`, in change
    /// order (from the source too: a snapshot reads them all).
    pub fn documents(&self) -> Result<Vec<(Kind, String, Vec<u8>)>, String> {
        let (changed, _) = self.changed_after(0, usize::MAX)?;
        let mut out = Vec::with_capacity(changed.len());
        for (_, key) in changed {
            if let Some(doc) = self.stored_doc(&key)? {
                out.push((key.0, key.1.to_string(), doc.encode()));
            }
        }
        Ok(out)
    }
}
