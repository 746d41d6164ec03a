//! This node's view of every counter: its own slots (durable before they are
//! acknowledged or gossiped) and what peers sent (persisted lazily, relearned
//! by anti-entropy after a restart).
//!
//! Change numbers. Every change to an own slot takes the next number of this
//! replica; a slot remembers the number of its last change. A node "holds up
//! to `w` of replica `r`" when it holds every change of `r` numbered `≤ w`
//! (the digest). Pushes carry complete ranges of numbers, so a receiver can
//! raise its mark; a sync sends every slot numbered above the caller's mark.
//!
//! Durability. [`Counters::update`] changes memory at once (so the next
//! admission on this node sees it) and returns a [`Ticket`]. Pending own
//! slots are written in one batch: by [`Counters::durable`], on the task that
//! waits for the ticket, when no other write is under way (else by the
//! flusher task right after that write, which then covers every waiter);
//! a change nobody waits for (a reservation, a grant, the charge of an
//! abandoned call) is written with the next awaited one, or by the flusher
//! within [`LAZY_FLUSH`]. Only durable own slots are ever gossiped: a node
//! that is killed and restarts can never hold an own slot lower than what a
//! peer saw, which would make peers ignore its next changes.
//!
//! Size: past the ~600-line rule (about 770 lines before its tests),
//! knowingly for now. Local updates with their durability, the peers'
//! side (merge, digest, anti-entropy pages) and collection all change one
//! private table under one writing lock. The next split moves the peers'
//! side into a child module of methods, as `consensus`'s metadata state
//! does with its documents.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::Duration;

use meridian_storage::{Cf, Durability, Store, WriteBatch};
use tokio::sync::{Notify, watch};

use crate::Error;
use crate::crdt::{CounterId, PnCounter, Replica, Slot};
use crate::wire;

/// Store keys below the counters' (whose first byte is their format, 1).
const INCARNATION_KEY: &[u8] = &[0, b'i'];
const VERSION_KEY: &[u8] = &[0, b'v'];

/// The most slots one sync reply carries (about 10 MiB on the wire).
const MAX_SYNC_SLOTS: usize = 100_000;

/// How long an own change that nobody waits for may stay in memory only.
/// Writing each one at once cost a second store write per request (the
/// reservation's, then the settlement's) and two task hand-offs; the wait
/// delays only when peers see it (gossip shows durable slots, every 100 ms
/// by default), never an acknowledgement.
pub const LAZY_FLUSH: Duration = Duration::from_millis(10);

/// Changes pending (calls of [`Counters::update`] that changed something)
/// that a waiter writes at once instead of yielding first: a call makes two,
/// its reservation and its settlement. More than that means other calls
/// are in flight, and letting them reach their settlement first makes one
/// write cover them all.
const ALONE: u64 = 2;

/// A change waiting to become durable: its change number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[must_use = "wait for it with `Counters::durable` before acknowledging"]
pub struct Ticket(u64);

/// One slot of one counter, as gossip carries it.
pub type SlotDelta = (CounterId, Replica, Slot);

pub struct Counters {
    me: Replica,
    store: Arc<dyn Store>,
    durability: Durability,
    table: Mutex<Table>,
    /// Held from encoding a batch until it is written: two writers (the
    /// flusher, peers' changes, collection) must not land an older copy of a
    /// counter over a newer one.
    writing: Mutex<()>,
    /// Someone waits for a change: write now.
    flush_wanted: Notify,
    /// A first change while the flusher had nothing pending: write it
    /// within [`LAZY_FLUSH`].
    changed: Notify,
    /// The highest change number that is durable, and whether the latest
    /// write failed.
    flushed: watch::Sender<Flushed>,
}

/// What waiters on [`Counters::durable`] watch.
#[derive(Clone, Copy, Debug, Default)]
struct Flushed {
    /// The highest change number that is durable.
    through: u64,
    /// The latest write failed (set by a failed write, cleared by the next
    /// one that succeeds): waiters give up instead of waiting for a disk
    /// that may never come back.
    failing: bool,
}

#[derive(Default)]
struct Table {
    counters: HashMap<CounterId, PnCounter>,
    /// This replica's last change number.
    version: u64,
    /// Own slots changed in memory, not yet durable.
    unflushed: HashSet<CounterId>,
    /// Own slots as last made durable: what gossip may show.
    durable_own: HashMap<CounterId, Slot>,
    /// Durable own slots not yet pushed, and the range of change numbers they
    /// complete.
    outbox: HashMap<CounterId, Slot>,
    outbox_since: u64,
    outbox_through: u64,
    /// Counters holding peers' changes not yet written.
    remote_dirty: HashSet<CounterId>,
    /// The flusher found nothing pending: the next change must wake it.
    flusher_idle: bool,
    /// Updates that changed something since the last write took its batch.
    updates_pending: u64,
    /// Per replica, the change number up to which this node holds all.
    marks: BTreeMap<Replica, u64>,
}

/// A read-and-write view under the table's lock: admission checks and
/// reserves atomically, so two requests on one node never both take the last
/// unit of headroom.
pub struct Txn<'a> {
    me: &'a Replica,
    table: &'a mut Table,
    changed: bool,
}

impl Txn<'_> {
    /// The counter's value as this node sees it (0 when unknown).
    pub fn value(&self, id: &CounterId) -> u64 {
        self.table.counters.get(id).map_or(0, PnCounter::value)
    }

    /// What this node itself has contributed.
    pub fn own(&self, id: &CounterId) -> Slot {
        self.table
            .counters
            .get(id)
            .map_or_else(Slot::default, |c| c.slot(self.me))
    }

    /// Counts `add` and refunds `refund` in this node's slot.
    pub fn add(&mut self, id: &CounterId, add: u64, refund: u64) {
        if add == 0 && refund == 0 {
            return;
        }
        self.table.version += 1;
        let version = self.table.version;
        self.table
            .counters
            .entry(id.clone())
            .or_default()
            .apply_own(self.me, add, refund, version);
        self.table.unflushed.insert(id.clone());
        self.changed = true;
    }
}

/// What one counter looks like from here.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reading {
    pub value: u64,
    pub by_region: BTreeMap<Arc<str>, u64>,
}

impl Counters {
    /// Loads this node's counters from `store`. A store without counters gets
    /// a new incarnation from `fresh_incarnation`, so a node whose data was
    /// wiped writes a new slot rather than an old one from zero.
    pub fn open(
        region: &str,
        node: u64,
        store: Arc<dyn Store>,
        durability: Durability,
        fresh_incarnation: impl FnOnce() -> u64,
    ) -> Result<Self, Error> {
        let incarnation = match store.get(Cf::Counters, INCARNATION_KEY)? {
            Some(bytes) => u64::from_be_bytes(
                bytes
                    .try_into()
                    .map_err(|_| Error::Corrupt("incarnation".into()))?,
            ),
            None => {
                let incarnation = fresh_incarnation();
                let mut batch = WriteBatch::default();
                batch.put(Cf::Counters, INCARNATION_KEY, incarnation.to_be_bytes());
                store.write(batch, Durability::Power)?;
                incarnation
            }
        };
        let me = Replica::new(region, node, incarnation);
        let mut table = Table::default();
        if let Some(bytes) = store.get(Cf::Counters, VERSION_KEY)? {
            table.version = u64::from_be_bytes(
                bytes
                    .try_into()
                    .map_err(|_| Error::Corrupt("change number".into()))?,
            );
        }
        store.scan(Cf::Counters, &[1], None, &mut |key, value| {
            let Ok(id) = CounterId::decode(key) else {
                tracing::warn!("skipping a stored counter with an unreadable id");
                return Ok(());
            };
            let counter = match wire::decode_counter(value) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "skipping an unreadable stored counter");
                    return Ok(());
                }
            };
            let mut counter = counter;
            if meridian_bugs::on(meridian_bugs::Bug::ForgetOwnSlot) {
                counter.forget(&me);
            }
            let own = counter.slot(&me);
            if own != Slot::default() {
                table.durable_own.insert(id.clone(), own);
                table.version = table.version.max(own.version);
            }
            table.counters.insert(id, counter);
            Ok(())
        })?;
        table.outbox_since = table.version;
        table.outbox_through = table.version;
        table.marks.insert(me.clone(), table.version);
        table.flusher_idle = true;
        let (flushed, _) = watch::channel(Flushed {
            through: table.version,
            failing: false,
        });
        Ok(Self {
            me,
            store,
            durability,
            table: Mutex::new(table),
            writing: Mutex::new(()),
            flush_wanted: Notify::new(),
            changed: Notify::new(),
            flushed,
        })
    }

    pub fn me(&self) -> &Replica {
        &self.me
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads and changes counters atomically. Changes are in memory at once;
    /// wait on the ticket before acknowledging them.
    pub fn update<T>(&self, f: impl FnOnce(&mut Txn<'_>) -> T) -> (T, Ticket) {
        let mut table = self.lock();
        let mut txn = Txn {
            me: &self.me,
            table: &mut table,
            changed: false,
        };
        let out = f(&mut txn);
        let changed = txn.changed;
        let ticket = Ticket(table.version);
        if changed {
            table.updates_pending += 1;
        }
        let wake = changed && std::mem::replace(&mut table.flusher_idle, false);
        drop(table);
        if wake {
            self.changed.notify_one();
        }
        (out, ticket)
    }

    /// Reads several counters consistently.
    pub fn read<T>(&self, f: impl FnOnce(&Txn<'_>) -> T) -> T {
        let mut table = self.lock();
        let txn = Txn {
            me: &self.me,
            table: &mut table,
            changed: false,
        };
        f(&txn)
    }

    /// Every counter this node holds, in id order (for checkers, debugging
    /// and tests: it copies the whole table).
    pub fn snapshot(&self) -> BTreeMap<CounterId, PnCounter> {
        let table = self.lock();
        table
            .counters
            .iter()
            .map(|(id, c)| (id.clone(), c.clone()))
            .collect()
    }

    pub fn reading(&self, id: &CounterId) -> Reading {
        let table = self.lock();
        table
            .counters
            .get(id)
            .map(|c| Reading {
                value: c.value(),
                by_region: c.region_values(),
            })
            .unwrap_or_default()
    }

    /// Waits until the changes behind `ticket` are durable: writes them on
    /// this task (after the tasks ready before it had their turn) when no
    /// other write is under way, else has the flusher write them as soon as
    /// that write ends (with every change made meanwhile).
    ///
    /// Fails when the write that was to cover them fails (a full or broken
    /// disk): the changes stay in memory and the flusher keeps retrying, but
    /// the caller must not acknowledge them now.
    pub async fn durable(&self, ticket: Ticket) -> Result<(), Error> {
        if self.flushed.borrow().through >= ticket.0 {
            return Ok(());
        }
        // With other calls in flight, let the tasks ready on this worker
        // make their changes first: one write then covers them all, and most
        // waiters find theirs written when they run again. Alone, write now.
        if self.lock().updates_pending > ALONE {
            tokio::task::yield_now().await;
            if self.flushed.borrow().through >= ticket.0 {
                return Ok(());
            }
        }
        self.write_or_ask();
        let mut flushed = self.flushed.subscribe();
        // `wait_for` only fails when the sender is gone, and `self` holds it.
        let seen = flushed
            .wait_for(|f| f.through >= ticket.0 || f.failing)
            .await
            .map(|f| *f)
            .unwrap_or_default();
        if seen.through >= ticket.0 {
            Ok(())
        } else {
            Err(Error::NotDurable)
        }
    }

    /// Records a write's outcome for waiters, and logs when writes start or
    /// stop failing (not every retry: a dead disk would flood the log).
    fn wrote(&self, result: &Result<(), Error>) {
        let failing = result.is_err();
        let was = self.flushed.send_if_modified(|f| {
            let changed = f.failing != failing;
            f.failing = failing;
            changed
        });
        match result {
            Err(e) if was => {
                tracing::error!(error = %e, "writing counters failed; calls are refused until a retry succeeds");
            }
            Ok(()) if was => tracing::info!("writing counters works again"),
            _ => {}
        }
    }

    /// Writes what is pending now if no other write is under way; else asks
    /// the flusher to write as soon as that one ends. Either way, what a
    /// waiter waits for is written without waiting for [`LAZY_FLUSH`].
    fn write_or_ask(&self) {
        let writing = match self.writing.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => {
                self.flush_wanted.notify_one();
                return;
            }
        };
        if self.flush_holding(&writing).is_err() {
            drop(writing);
            self.flush_wanted.notify_one();
        }
    }

    /// Writes every pending own slot in one batch and releases the tickets it
    /// covers. Runs in the flusher task and in [`Counters::durable`]; tests
    /// call it directly.
    pub fn flush(&self) -> Result<(), Error> {
        let writing = self.writing.lock().unwrap_or_else(PoisonError::into_inner);
        self.flush_holding(&writing)
    }

    /// [`Counters::flush`], `writing` held by the caller.
    fn flush_holding(&self, writing: &MutexGuard<'_, ()>) -> Result<(), Error> {
        let result = self.write_pending(writing);
        self.wrote(&result);
        result
    }

    /// [`Counters::flush_holding`] without the bookkeeping of failures.
    fn write_pending(&self, _writing: &MutexGuard<'_, ()>) -> Result<(), Error> {
        let (batch, snapshot, through) = {
            let mut table = self.lock();
            if table.unflushed.is_empty() {
                // Changes to counters collected meanwhile leave nothing to
                // write; their tickets are released all the same.
                let version = table.version;
                table.flusher_idle = true;
                table.updates_pending = 0;
                drop(table);
                self.flushed.send_if_modified(|f| {
                    let raise = f.through < version;
                    f.through = f.through.max(version);
                    raise
                });
                return Ok(());
            }
            let mut batch = WriteBatch::default();
            let mut snapshot = Vec::with_capacity(table.unflushed.len());
            let ids: Vec<CounterId> = table.unflushed.drain().collect();
            table.updates_pending = 0;
            let table = &mut *table;
            for id in ids {
                if let Some(counter) = table.counters.get(&id) {
                    table.remote_dirty.remove(&id);
                    batch.put(Cf::Counters, id.encode(), wire::encode_counter(counter));
                    snapshot.push((id, counter.slot(&self.me)));
                }
            }
            batch.put(Cf::Counters, VERSION_KEY, table.version.to_be_bytes());
            (batch, snapshot, table.version)
        };
        if let Err(e) = self.store.write(batch, self.durability) {
            // Put them back: the next flush retries, and nothing waiting is
            // released.
            let mut table = self.lock();
            table
                .unflushed
                .extend(snapshot.into_iter().map(|(id, _)| id));
            return Err(e.into());
        }
        {
            let mut table = self.lock();
            for (id, slot) in snapshot {
                table.durable_own.insert(id.clone(), slot);
                table.outbox.insert(id, slot);
            }
            table.outbox_through = table.outbox_through.max(through);
            let me = self.me.clone();
            let mark = table.marks.entry(me).or_default();
            *mark = (*mark).max(through);
            if table.unflushed.is_empty() {
                table.flusher_idle = true;
            }
        }
        self.flushed
            .send_modify(|f| f.through = f.through.max(through));
        Ok(())
    }

    /// Writes counters that only peers changed (their slots are relearned
    /// after a crash anyway: this shortens the relearning).
    pub fn persist_remote(&self) -> Result<(), Error> {
        let _writing = self.writing.lock().unwrap_or_else(PoisonError::into_inner);
        let batch = {
            let mut table = self.lock();
            let mut batch = WriteBatch::default();
            let ids: Vec<CounterId> = table.remote_dirty.drain().collect();
            for id in ids {
                if let Some(counter) = table.counters.get(&id) {
                    batch.put(Cf::Counters, id.encode(), wire::encode_counter(counter));
                }
            }
            batch
        };
        if batch.is_empty() {
            return Ok(());
        }
        Ok(self.store.write(batch, Durability::Process)?)
    }

    /// Flushes at once when a waiter asks, and within [`LAZY_FLUSH`] of a
    /// change nobody waits for, until `shutdown`.
    pub async fn run_flusher(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let idle = self.lock().flusher_idle;
            let lazily = async {
                if idle {
                    self.changed.notified().await;
                }
                let lazy = if meridian_bugs::on(meridian_bugs::Bug::AckBeforeDurable) {
                    Duration::from_secs(1)
                } else {
                    LAZY_FLUSH
                };
                tokio::time::sleep(lazy).await;
            };
            tokio::select! {
                () = self.flush_wanted.notified() => {}
                () = lazily => {}
                () = &mut shutdown => break,
            }
            if self.flush().is_err() {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                self.flush_wanted.notify_one();
            }
        }
        if let Err(e) = self.flush().and_then(|()| self.persist_remote()) {
            tracing::error!(error = %e, "writing counters at shutdown failed");
        }
    }

    /// The durable own slots changed since the last call, and the range of
    /// change numbers they complete.
    pub fn take_outbox(&self) -> Outbox {
        let mut table = self.lock();
        let slots = std::mem::take(&mut table.outbox);
        let since = table.outbox_since;
        let through = table.outbox_through;
        table.outbox_since = through;
        Outbox {
            since,
            through,
            slots: slots.into_iter().collect(),
        }
    }

    /// Merges slots from a peer. `complete` (a push's range, or a sync
    /// reply's digest) says which marks the peer's message lets this node
    /// raise. Slots of periods that ended more than `retention_ms` before
    /// `now_ms` are dropped. Returns how many slots changed.
    pub fn merge(
        &self,
        slots: Vec<SlotDelta>,
        complete: Completes,
        now_ms: u64,
        retention_ms: u64,
    ) -> usize {
        let mut table = self.lock();
        let mut changed = 0;
        for (id, replica, slot) in slots {
            if expired(&id, now_ms, retention_ms) {
                continue;
            }
            if meridian_bugs::on(meridian_bugs::Bug::DropRemoteDeltas)
                && replica.region != self.me.region
            {
                continue;
            }
            if meridian_bugs::on(meridian_bugs::Bug::DropRemoteRequestCounts)
                && replica.region != self.me.region
                && id.metric == crate::crdt::Metric::Requests
            {
                continue;
            }
            if replica == self.me {
                // Only possible when this node's data was restored from an old
                // copy: adopt what peers saw, and continue numbering above it.
                let own = table
                    .counters
                    .get(&id)
                    .map_or_else(Slot::default, |c| c.slot(&self.me));
                if slot.p > own.p || slot.n > own.n {
                    tracing::warn!(
                        "a peer holds a higher own slot than this node: data restored from an old copy?"
                    );
                    table.version = table.version.max(slot.version);
                    table.unflushed.insert(id.clone());
                    self.flush_wanted.notify_one();
                } else {
                    continue;
                }
            }
            let counter = table.counters.entry(id.clone()).or_default();
            if counter.merge_slot(&replica, &slot) {
                changed += 1;
                if replica != self.me {
                    table.remote_dirty.insert(id);
                }
            }
        }
        match complete {
            Completes::Range {
                replica,
                since,
                through,
            } => {
                let mark = table.marks.entry(replica).or_default();
                if *mark >= since {
                    *mark = (*mark).max(through);
                }
            }
            Completes::Digest(digest) => {
                for (replica, w) in digest {
                    if replica == self.me {
                        continue;
                    }
                    let mark = table.marks.entry(replica).or_default();
                    *mark = (*mark).max(w);
                }
            }
        }
        changed
    }

    /// Per replica, the change number up to which this node holds all.
    pub fn digest(&self) -> BTreeMap<Replica, u64> {
        self.lock().marks.clone()
    }

    /// A sync's answer: every slot this node holds that a peer with digest
    /// `theirs` lacks (own slots only as durable), and this node's digest,
    /// taken together so that merging the first really brings the peer up to
    /// the second.
    pub fn missing(
        &self,
        theirs: &BTreeMap<Replica, u64>,
    ) -> (Vec<SlotDelta>, BTreeMap<Replica, u64>) {
        self.missing_page(theirs, MAX_SYNC_SLOTS)
    }

    /// [`Counters::missing`], at most `page` slots. Each replica's slots go
    /// in change-number order, so a reply cut short still proves the peer
    /// holds that replica's changes up to the last one sent; replicas not
    /// reached are left out of the digest, and the next sync continues.
    pub fn missing_page(
        &self,
        theirs: &BTreeMap<Replica, u64>,
        page: usize,
    ) -> (Vec<SlotDelta>, BTreeMap<Replica, u64>) {
        let table = self.lock();
        let lacks = |r: &Replica, v: u64| theirs.get(r).is_none_or(|w| v > *w);
        let mut by_replica: BTreeMap<&Replica, Vec<(u64, &CounterId, Slot)>> = BTreeMap::new();
        for (id, counter) in &table.counters {
            for (replica, slot) in counter.slots() {
                if *replica != self.me && lacks(replica, slot.version) {
                    by_replica
                        .entry(replica)
                        .or_default()
                        .push((slot.version, id, *slot));
                }
            }
        }
        for (id, slot) in &table.durable_own {
            if lacks(&self.me, slot.version) {
                by_replica
                    .entry(&self.me)
                    .or_default()
                    .push((slot.version, id, *slot));
            }
        }
        let mut out = Vec::new();
        let mut digest = BTreeMap::new();
        for (replica, mut slots) in by_replica {
            let mark = table.marks.get(replica).copied().unwrap_or(0);
            let room = page.saturating_sub(out.len());
            if room == 0 {
                break;
            }
            slots.sort_unstable_by_key(|(v, _, _)| *v);
            let cut = slots.len() > room;
            slots.truncate(room);
            let last = slots.last().map_or(0, |(v, _, _)| *v);
            out.extend(
                slots
                    .into_iter()
                    .map(|(_, id, s)| (id.clone(), replica.clone(), s)),
            );
            digest.insert(replica.clone(), if cut { mark.min(last) } else { mark });
            if cut {
                break;
            }
        }
        // Replicas the peer lacks nothing of: this node's marks hold for them.
        if out.len() < page {
            for (r, w) in &table.marks {
                digest.entry(r.clone()).or_insert(*w);
            }
        }
        (out, digest)
    }

    /// Forgets counters whose period ended more than `retention_ms` before
    /// `now_ms`, in memory and in the store.
    pub fn collect(&self, now_ms: u64, retention_ms: u64) -> Result<usize, Error> {
        let _writing = self.writing.lock().unwrap_or_else(PoisonError::into_inner);
        let mut batch = WriteBatch::default();
        {
            let mut table = self.lock();
            let old: Vec<CounterId> = table
                .counters
                .keys()
                .filter(|id| expired(id, now_ms, retention_ms))
                .cloned()
                .collect();
            for id in &old {
                table.counters.remove(id);
                table.durable_own.remove(id);
                table.outbox.remove(id);
                table.remote_dirty.remove(id);
                // A pending own change to an expired counter stays pending
                // only until this write: its ticket is released by the next
                // flush all the same.
                table.unflushed.remove(id);
                batch.delete(Cf::Counters, id.encode());
            }
        }
        let n = batch.ops.len();
        if n > 0 {
            self.store.write(batch, Durability::Process)?;
        }
        Ok(n)
    }

    /// Gives back this node's whole net contribution to every counter
    /// `which` selects. At start-up, for counts of work in flight: the
    /// requests a previous run of this node admitted died with it.
    pub fn release_own(&self, which: impl Fn(&CounterId) -> bool) -> Ticket {
        let ids: Vec<CounterId> = self
            .lock()
            .counters
            .keys()
            .filter(|id| which(id))
            .cloned()
            .collect();
        self.update(|t| {
            for id in &ids {
                let own = t.own(id);
                t.add(id, 0, own.net());
            }
        })
        .1
    }

    /// How many counters this node holds.
    pub fn len(&self) -> usize {
        self.lock().counters.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a merged message proves this node now holds.
pub enum Completes {
    /// A push: every change of `replica` in `(since, through]`.
    Range {
        replica: Replica,
        since: u64,
        through: u64,
    },
    /// A sync reply: everything up to the answering node's digest.
    Digest(BTreeMap<Replica, u64>),
}

/// A push's content.
pub struct Outbox {
    pub since: u64,
    pub through: u64,
    pub slots: Vec<(CounterId, Slot)>,
}

fn expired(id: &CounterId, now_ms: u64, retention_ms: u64) -> bool {
    id.ends_at()
        .is_some_and(|end| end.saturating_add(retention_ms) < now_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crdt::{Metric, Scope, Window};
    use meridian_storage::MemStore;

    fn id(entity: &str) -> CounterId {
        CounterId {
            scope: Scope::Key,
            entity: entity.into(),
            metric: Metric::Requests,
            window: Window::Rate,
            period: 10,
        }
    }

    fn open(store: &Arc<MemStore>, region: &str, node: u64) -> Counters {
        Counters::open(region, node, store.clone(), Durability::Process, || {
            100 + node
        })
        .unwrap()
    }

    fn add(c: &Counters, entity: &str, n: u64) -> Ticket {
        c.update(|t| t.add(&id(entity), n, 0)).1
    }

    #[test]
    fn own_changes_are_gossiped_only_once_durable_and_survive_a_restart() {
        let store = Arc::new(MemStore::new());
        let c = open(&store, "us-east", 1);
        let ticket = add(&c, "k", 3);
        assert_eq!(c.read(|t| t.value(&id("k"))), 3, "visible here at once");
        assert!(c.take_outbox().slots.is_empty(), "not durable: not shown");
        assert!(c.missing(&BTreeMap::new()).0.is_empty());
        c.flush().unwrap();
        assert!(c.flushed.borrow().through >= ticket.0);
        let outbox = c.take_outbox();
        assert_eq!(
            (outbox.since, outbox.through, outbox.slots.len()),
            (0, 1, 1)
        );

        let again = open(&store, "us-east", 1);
        assert_eq!(again.me(), c.me(), "same incarnation after a restart");
        assert_eq!(again.read(|t| t.value(&id("k"))), 3);
        let (_, next) = again.update(|t| t.add(&id("k"), 1, 0));
        assert_eq!(next.0, 2, "numbering continues above what was durable");

        let wiped = open(&Arc::new(MemStore::new()), "us-east", 1);
        assert_eq!(wiped.me().incarnation, 101);
    }

    #[test]
    fn a_push_raises_the_mark_only_when_it_continues_it() {
        let a_store = Arc::new(MemStore::new());
        let a = open(&a_store, "us-east", 1);
        let b = Counters::open(
            "eu-west",
            2,
            Arc::new(MemStore::new()),
            Durability::Process,
            || 7,
        )
        .unwrap();
        let push = |outbox: Outbox| {
            let slots = outbox
                .slots
                .into_iter()
                .map(|(i, s)| (i, a.me().clone(), s))
                .collect();
            b.merge(
                slots,
                Completes::Range {
                    replica: a.me().clone(),
                    since: outbox.since,
                    through: outbox.through,
                },
                0,
                u64::MAX,
            )
        };
        let _ = add(&a, "x", 1);
        a.flush().unwrap();
        let _lost = a.take_outbox();
        let _ = add(&a, "y", 1);
        a.flush().unwrap();
        assert_eq!(push(a.take_outbox()), 1);
        assert_eq!(
            b.digest().get(a.me()).copied().unwrap_or(0),
            0,
            "a gap: the mark stays"
        );
        // A sync repairs the gap and brings the mark up to date.
        let (missing, digest) = a.missing(&b.digest());
        assert_eq!(missing.len(), 2);
        b.merge(missing, Completes::Digest(digest), 0, u64::MAX);
        assert_eq!(b.digest().get(a.me()), Some(&2));
        assert_eq!(b.read(|t| t.value(&id("x")) + t.value(&id("y"))), 2);
        assert!(a.missing(&b.digest()).0.is_empty(), "nothing left to send");
    }

    #[test]
    fn a_sync_reply_is_paged_and_each_page_raises_the_marks_it_proves() {
        let a = open(&Arc::new(MemStore::new()), "us-east", 1);
        for i in 0..10 {
            let _ = add(&a, &format!("k{i}"), 1);
        }
        a.flush().unwrap();
        let b = open(&Arc::new(MemStore::new()), "eu-west", 2);
        let mut pages = 0;
        loop {
            let (slots, digest) = a.missing_page(&b.digest(), 3);
            if slots.is_empty() {
                break;
            }
            assert!(slots.len() <= 3);
            pages += 1;
            b.merge(slots, Completes::Digest(digest), 0, u64::MAX);
        }
        assert_eq!(pages, 4);
        assert_eq!(b.digest().get(a.me()), Some(&10));
        let total: u64 = (0..10)
            .map(|i| b.read(|t| t.value(&id(&format!("k{i}")))))
            .sum();
        assert_eq!(total, 10);
    }

    #[test]
    fn expired_periods_are_dropped_and_collected() {
        let store = Arc::new(MemStore::new());
        let c = open(&store, "us-east", 1);
        let _ = add(&c, "k", 1);
        c.flush().unwrap();
        // Rate window 10 ends at 660 s and is read until 720 s.
        assert_eq!(c.collect(720_000, 0).unwrap(), 0);
        assert_eq!(c.collect(720_001, 0).unwrap(), 1);
        assert!(c.is_empty());
        assert!(
            open(&store, "us-east", 1).is_empty(),
            "gone from the store too"
        );
        let peer = Replica::new("eu-west", 2, 1);
        let slot = Slot {
            p: 1,
            n: 0,
            version: 1,
        };
        let merged = c.merge(
            vec![(id("k"), peer, slot)],
            Completes::Digest(BTreeMap::new()),
            720_001,
            0,
        );
        assert_eq!(merged, 0, "a late delta for a collected period is ignored");
    }

    #[test]
    fn work_in_flight_is_released_after_a_restart() {
        let store = Arc::new(MemStore::new());
        let c = open(&store, "us-east", 1);
        let parallel = CounterId {
            metric: Metric::Parallel,
            window: Window::Lifetime,
            period: 0,
            ..id("k")
        };
        let _ = c.update(|t| {
            t.add(&parallel, 3, 1);
            t.add(&id("k"), 3, 0);
        });
        c.flush().unwrap();
        let again = open(&store, "us-east", 1);
        let _ = again.release_own(|id| id.metric == Metric::Parallel);
        assert_eq!(again.read(|t| t.value(&parallel)), 0);
        assert_eq!(
            again.read(|t| t.value(&id("k"))),
            3,
            "other counters untouched"
        );
    }

    #[tokio::test]
    async fn the_flusher_releases_tickets() {
        let store = Arc::new(MemStore::new());
        let c = Arc::new(open(&store, "us-east", 1));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let flusher = tokio::spawn(c.clone().run_flusher(async {
            let _ = stopped.await;
        }));
        let ticket = add(&c, "k", 2);
        tokio::time::timeout(std::time::Duration::from_secs(5), c.durable(ticket))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(open(&store, "us-east", 1).read(|t| t.value(&id("k"))), 2);
        let _ = stop.send(());
        flusher.await.unwrap();
    }

    #[tokio::test]
    async fn a_waiter_writes_its_change_itself() {
        let store = Arc::new(MemStore::new());
        let c = open(&store, "us-east", 1);
        // No flusher running: the waiting task writes.
        let ticket = add(&c, "k", 2);
        tokio::time::timeout(std::time::Duration::from_secs(5), c.durable(ticket))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(open(&store, "us-east", 1).read(|t| t.value(&id("k"))), 2);
        assert_eq!(c.take_outbox().slots.len(), 1, "durable, so gossiped");
    }

    #[tokio::test]
    async fn a_failing_disk_fails_the_waiter_and_keeps_the_change() {
        let disk = Arc::new(meridian_storage::Faulty::new(MemStore::new()));
        let c = Arc::new(
            Counters::open("us-east", 1, disk.clone(), Durability::Process, || 101).unwrap(),
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let flusher = tokio::spawn(c.clone().run_flusher(async {
            let _ = stopped.await;
        }));
        disk.fail_writes(true);
        let ticket = add(&c, "k", 2);
        let waited = tokio::time::timeout(std::time::Duration::from_secs(5), c.durable(ticket))
            .await
            .expect("a waiter gives up instead of waiting for the disk");
        assert!(matches!(waited, Err(Error::NotDurable)), "{waited:?}");
        assert!(
            c.take_outbox().slots.is_empty(),
            "not durable, not gossiped"
        );
        assert_eq!(c.read(|t| t.value(&id("k"))), 2, "kept in memory");

        disk.fail_writes(false);
        // The flusher retries on its own; a new waiter for the same change
        // sees it durable.
        tokio::time::timeout(std::time::Duration::from_secs(5), c.durable(ticket))
            .await
            .unwrap()
            .unwrap();
        let reopened = Counters::open("us-east", 1, disk, Durability::Process, || 102).unwrap();
        assert_eq!(reopened.read(|t| t.value(&id("k"))), 2);
        let _ = stop.send(());
        flusher.await.unwrap();
    }

    #[tokio::test]
    async fn a_change_nobody_waits_for_is_written_within_the_lazy_delay() {
        let store = Arc::new(MemStore::new());
        let c = Arc::new(open(&store, "us-east", 1));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let flusher = tokio::spawn(c.clone().run_flusher(async {
            let _ = stopped.await;
        }));
        for round in 1..=3 {
            let _ = add(&c, "k", 1);
            tokio::time::sleep(LAZY_FLUSH * 20).await;
            assert_eq!(
                open(&store, "us-east", 1).read(|t| t.value(&id("k"))),
                round,
                "written without a waiter (round {round})"
            );
        }
        let _ = stop.send(());
        flusher.await.unwrap();
    }
}
