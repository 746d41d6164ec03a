//! The document store of [`MetadataState`]: each entity's document as
//! stored ([`StoredDoc`]), where documents not in memory are read from
//! ([`DocSource`]), and the documents another region is sent ([`Outbox`]).

use super::*;

/// One entity's document as the state keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredDoc {
    /// The state's change number at the document's last change.
    pub seq: u64,
    /// The region whose merge made the document what it is, when that
    /// region's document was then exactly this one: it needs nothing back.
    pub echo: Option<Arc<str>>,
    /// [`EntityDoc::save`].
    pub saved: Box<[u8]>,
}

impl StoredDoc {
    const FORMAT: u8 = 1;

    /// `[format][seq: u64 BE][echo length: u8][echo][saved document]`.
    pub fn encode(&self) -> Vec<u8> {
        let echo = self.echo.as_deref().unwrap_or("").as_bytes();
        let mut out = Vec::with_capacity(10 + echo.len() + self.saved.len());
        out.push(Self::FORMAT);
        out.extend_from_slice(&self.seq.to_be_bytes());
        // Region names are validated short (`MergeRemote` refuses longer).
        out.push(u8::try_from(echo.len()).unwrap_or(0));
        if echo.len() <= usize::from(u8::MAX) {
            out.extend_from_slice(echo);
        }
        out.extend_from_slice(&self.saved);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let [format, rest @ ..] = bytes else {
            return Err("empty".into());
        };
        if *format != Self::FORMAT {
            return Err(format!("unknown document format {format}"));
        }
        let (seq, rest) = rest
            .split_first_chunk::<8>()
            .ok_or("truncated change number")?;
        let (len, rest) = rest.split_first().ok_or("truncated echo")?;
        let len = usize::from(*len);
        if rest.len() < len {
            return Err("truncated echo".into());
        }
        let (echo, saved) = rest.split_at(len);
        let echo = std::str::from_utf8(echo).map_err(|e| e.to_string())?;
        Ok(Self {
            seq: u64::from_be_bytes(*seq),
            echo: (!echo.is_empty()).then(|| Arc::from(echo)),
            saved: saved.into(),
        })
    }
}

/// Where a state reads the documents it does not hold in memory: what was
/// written from its [`Change::Doc`]s.
pub trait DocSource: Send + Sync + std::fmt::Debug {
    /// An entity's document ([`StoredDoc::encode`] bytes).
    fn get(&self, kind: Kind, id: &str) -> Result<Option<Vec<u8>>, String>;
    /// At most `limit` entities whose documents last changed after change
    /// number `after`, with that number, in change order.
    fn changed_after(&self, after: u64, limit: usize) -> Result<Vec<(u64, Kind, String)>, String>;
}

/// A document to send to another region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutgoingDoc {
    pub kind: Kind,
    pub id: String,
    /// The document's change number.
    pub seq: u64,
    /// [`EntityDoc::save`]: load it to take its changes.
    pub saved: Vec<u8>,
}

/// The documents to send to a region, and the change number they cover:
/// every document changed after the requested number and up to `through`
/// is in `docs`, or needs nothing sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outbox {
    pub through: u64,
    pub docs: Vec<OutgoingDoc>,
}

/// Bounds on one [`Outbox`].
#[derive(Clone, Copy, Debug)]
pub struct OutboxLimits {
    pub max_docs: usize,
    /// Saved document bytes (changes are about the same size).
    pub max_bytes: usize,
    /// Documents looked at, sent or not (bounds the time under the lock).
    pub max_scan: usize,
}

impl MetadataState {
    /// An entity's document (deleted entities included).
    pub fn document(&self, kind: Kind, id: &str) -> Option<Result<EntityDoc, DocError>> {
        match self.stored_doc(&(kind, Arc::from(id))) {
            Ok(doc) => doc.map(|d| EntityDoc::load(&d.saved)),
            Err(e) => Some(Err(DocError::Storage(e))),
        }
    }

    /// The saved size of an entity's document, in bytes: how much history
    /// its edits have built up.
    pub fn document_size(&self, kind: Kind, id: &str) -> Option<usize> {
        self.stored_doc(&(kind, Arc::from(id)))
            .ok()
            .flatten()
            .map(|d| d.saved.len())
    }

    /// How many documents the state has (deleted entities included). Reads
    /// the whole index of a source: for tools and tests.
    pub fn document_count(&self) -> Result<usize, String> {
        let stored = match &self.source {
            None => return Ok(self.docs.len()),
            Some(source) => source.changed_after(0, usize::MAX)?,
        };
        let new = self
            .docs
            .keys()
            .filter(|key| {
                !stored
                    .iter()
                    .any(|(_, kind, id)| *kind == key.0 && **id == *key.1)
            })
            .count();
        Ok(stored.len() + new)
    }

    /// Reads documents not held in memory from `source`, whose documents
    /// were written from this state's changes, the latest with change number
    /// `seq`; and lets go of those held.
    pub fn attach_documents(&mut self, source: Arc<dyn DocSource>, seq: u64) {
        self.seq = self.seq.max(seq);
        self.source = Some(source);
        self.flushed();
    }

    /// The documents held in memory: change number, kind and id.
    pub fn document_index(&self) -> Vec<(u64, Kind, Arc<str>)> {
        self.by_seq
            .iter()
            .map(|(seq, (kind, id))| (*seq, *kind, id.clone()))
            .collect()
    }

    /// How many documents are held in memory (all, without a source).
    pub fn documents_in_memory(&self) -> usize {
        self.docs.len()
    }

    /// Every change returned so far is written to the source: the documents
    /// held in memory can be let go. (Without a source, nothing happens.)
    pub fn flushed(&mut self) {
        if self.source.is_some() {
            self.docs = HashMap::new();
            self.by_seq = BTreeMap::new();
        }
    }

    /// An entity's document: held in memory, else from the source.
    pub(super) fn stored_doc(
        &self,
        key: &EntityKey,
    ) -> Result<Option<std::borrow::Cow<'_, StoredDoc>>, String> {
        if let Some(doc) = self.docs.get(key) {
            return Ok(Some(std::borrow::Cow::Borrowed(doc)));
        }
        let Some(source) = &self.source else {
            return Ok(None);
        };
        match source.get(key.0, &key.1)? {
            None => Ok(None),
            Some(bytes) => StoredDoc::decode(&bytes)
                .map(|d| Some(std::borrow::Cow::Owned(d)))
                .map_err(|e| format!("{} `{}`'s stored document: {e}", key.0.noun(), key.1)),
        }
    }

    /// Entities whose documents changed after `after`, in change order, at
    /// most `limit` from the source (then every one held in memory), and
    /// whether the source had more.
    pub(super) fn changed_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<(u64, EntityKey)>, bool), String> {
        let mut out: Vec<(u64, EntityKey)> = Vec::new();
        let mut more = false;
        if let Some(source) = &self.source {
            let stored = source.changed_after(after, limit)?;
            more = stored.len() >= limit;
            out.extend(
                stored
                    .into_iter()
                    .map(|(seq, kind, id)| (seq, (kind, Arc::from(id))))
                    // A document held in memory is newer than its stored copy.
                    .filter(|(_, key)| !self.docs.contains_key(key)),
            );
        }
        let cap = match (more, out.last()) {
            (true, Some((seq, _))) => *seq,
            _ => u64::MAX,
        };
        out.extend(
            self.by_seq
                .range(after.saturating_add(1)..=cap)
                .map(|(seq, key)| (*seq, key.clone())),
        );
        out.sort_by_key(|(seq, _)| *seq);
        Ok((out, more))
    }

    /// The latest change number: it grows with every document change.
    pub fn change_seq(&self) -> u64 {
        self.seq
    }

    /// The change number of `region` through which its changes are merged
    /// here (0: none yet).
    pub fn sync_cursor(&self, region: &str) -> u64 {
        self.cursors.get(region).copied().unwrap_or(0)
    }

    /// Every sync cursor.
    pub fn sync_cursors(&self) -> &BTreeMap<String, u64> {
        &self.cursors
    }

    /// The documents to send to `to_region`, which holds this region's
    /// changes through change number `after`: those changed since, in change
    /// order, within `limits`. A document whose last change merged exactly
    /// what `to_region` sent is covered but not sent (no echo).
    pub fn outbox(&self, after: u64, to_region: &str, limits: OutboxLimits) -> Outbox {
        let mut out = Outbox {
            through: self.seq.max(after),
            docs: Vec::new(),
        };
        let (changed, more) = match self.changed_after(after, limits.max_scan) {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %e, "documents to sync could not be read");
                out.through = after;
                return out;
            }
        };
        if more && let Some((seq, _)) = changed.last() {
            // The source had more than were read: only these are covered.
            out.through = out.through.min(*seq);
        }
        let (mut bytes, mut scanned) = (0usize, 0usize);
        for (seq, key) in &changed {
            if out.docs.len() >= limits.max_docs
                || bytes >= limits.max_bytes
                || scanned >= limits.max_scan
            {
                // Everything before this document is covered.
                out.through = seq - 1;
                break;
            }
            scanned += 1;
            let doc = match self.stored_doc(key) {
                Ok(Some(doc)) => doc,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "a document to sync could not be read");
                    out.through = seq - 1;
                    break;
                }
            };
            if doc.echo.as_deref() == Some(to_region) {
                continue;
            }
            bytes += doc.saved.len();
            out.docs.push(OutgoingDoc {
                kind: key.0,
                id: key.1.to_string(),
                seq: doc.seq,
                saved: doc.saved.to_vec(),
            });
        }
        out
    }
}
