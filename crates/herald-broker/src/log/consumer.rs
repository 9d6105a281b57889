//! One consumer of a group on a [`Log`]: the partitions it owns, what it has read of them,
//! and what it has handed out.
//!
//! A background task heartbeats every [`LogOptions::heartbeat`]: it renews the consumer's
//! membership, assigns partitions (partition `p` goes to the `p mod n`-th live member, sorted
//! by id), claims the ones assigned to it, gives up the others once nothing of them is in
//! flight, and writes each owned partition's progress under its fencing token. A partition
//! whose write is refused was taken over (the lease ran out): it is dropped, and settles of
//! its deliveries fail with [`BrokerError::LeaseLost`].
//!
//! Each owned partition has a reader task that reads ahead up to [`LogOptions::prefetch`]
//! records. [`Subscription::receive`] hands out, in log order, each record that is ready and
//! whose key has no earlier record pending, so a key's records go one at a time and other keys
//! are not held up. Before handing records out it stores what a consumer that takes the
//! partition over needs to go on counting receives: the counts of records received before,
//! and, for first receives, a mark [`COUNT_AHEAD`] records past them, below which a new owner
//! counts any record as received once. (One write per step instead of one per receive: a
//! partition's row is written over and over, and while a long transaction is open anywhere
//! in the database every version of it is kept, and each write gets slower.) Acks mark records done; the done prefix
//! becomes the partition's committed position at the next heartbeat. Visibility timeouts,
//! nack delays and extensions are timers here; dead letters go to the database.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use herald_store::Store;
use herald_store::sql::now_ms;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::group::{self, Progress};
use super::{Log, LogOptions, PartitionReader, Position, Record};
use crate::{
    BoxFuture, BrokerError, Delivery, Message, Nacked, Settle, SubscribeOptions, Subscription,
};

/// The most records one read asks a partition for.
const READ_BATCH: usize = 256;
/// How long a reader task waits for records before looking again at its partition's state.
const READ_WAIT: Duration = Duration::from_millis(500);

#[derive(Debug)]
enum State {
    /// Waiting to be handed out from `at` on.
    Ready { at: Instant },
    /// Handed out under `lease`, invisible until `until`.
    Held { lease: u64, until: Instant },
    /// Being written to the dead letters.
    Dying,
    /// Acked or dead-lettered.
    Done,
}

#[derive(Debug)]
struct Entry {
    position: Position,
    message: Message,
    count: u32,
    last_error: String,
    state: State,
}

#[derive(Debug)]
struct Part {
    token: i64,
    /// Read, not yet committed records, in log order.
    entries: VecDeque<Entry>,
    /// Where the reader goes on (after the last record read).
    read_position: Position,
    /// Stored receive counts of records not read yet.
    stored_counts: HashMap<Position, u32>,
    /// Records before this position, with no stored count, may have been handed out once by
    /// an earlier owner: they start counted once.
    inherited_until: Position,
    /// Stored: records before this position may have been handed out once. Raised by
    /// [`COUNT_AHEAD`] when a first receive reaches it, so most first receives need no write.
    counted_until: Position,
    /// Assigned to another consumer: nothing more is handed out, and the partition is
    /// released once nothing is in flight.
    draining: bool,
    /// The task reading ahead (set right after the part is in place, which it checks).
    reader: Option<JoinHandle<()>>,
}

impl Part {
    fn next_position(&self) -> Position {
        self.entries
            .front()
            .map_or(self.read_position, |e| e.position)
    }

    fn progress(&self, part: u32) -> Progress {
        // Records done out of order (behind one still pending) are stored with count 0, so a
        // new owner skips them instead of delivering them again.
        let pending = self.entries.iter().filter_map(|e| match e.state {
            State::Done => Some((e.position, 0)),
            _ if e.count > 0 => Some((e.position, e.count)),
            _ => None,
        });
        let unread = self.stored_counts.iter().map(|(p, c)| (*p, *c));
        Progress {
            part,
            token: self.token,
            next_position: self.next_position(),
            counts: group::encode_counts(pending.chain(unread)),
            counted_until: self.counted_until,
        }
    }

    fn in_flight(&self) -> bool {
        self.entries
            .iter()
            .any(|e| matches!(e.state, State::Held { .. } | State::Dying))
    }

    fn commit_done_prefix(&mut self) {
        while self
            .entries
            .front()
            .is_some_and(|e| matches!(e.state, State::Done))
        {
            self.entries.pop_front();
        }
    }

    fn entry_mut(&mut self, position: Position) -> Option<&mut Entry> {
        let index = self
            .entries
            .binary_search_by_key(&position, |e| e.position)
            .ok()?;
        self.entries.get_mut(index)
    }
}

impl Drop for Part {
    fn drop(&mut self) {
        if let Some(reader) = &self.reader {
            reader.abort();
        }
    }
}

#[derive(Debug, Default)]
struct Owned {
    parts: BTreeMap<u32, Part>,
    next_lease: u64,
    /// Where the next receive starts looking, so partitions take turns.
    turn: u32,
}

/// How far ahead of a first receive an owner marks records as possibly handed out (see
/// [`Part::counted_until`]): one write per this many first receives. After a take-over, up to
/// this many records that were never handed out count as received once, so each gets one
/// delivery fewer before it is dead-lettered; a record is never dead-lettered unreceived.
const COUNT_AHEAD: Position = 256;

#[derive(Debug)]
struct Shared {
    log: Arc<dyn Log>,
    store: Store,
    topic: String,
    group: String,
    member: String,
    options: SubscribeOptions,
    log_options: LogOptions,
    owned: Mutex<Owned>,
    /// Records arrived, a key was freed or ownership changed.
    changed: Notify,
    /// A partition's buffer has room again.
    room: Notify,
}

impl Shared {
    fn owned(&self) -> MutexGuard<'_, Owned> {
        self.owned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lease_until(&self) -> i64 {
        now_ms() + millis(self.log_options.session_timeout)
    }

    /// Writes the progress of a partition this consumer keeps, renewing its lease; a
    /// partition whose claim was taken over meanwhile is lost (see [`lose`]).
    async fn save_held(&self, progress: &Progress) -> Result<(), BrokerError> {
        let kept = group::save(
            &self.store,
            &self.topic,
            &self.group,
            &self.member,
            progress,
            Some(self.lease_until()),
        )
        .await?;
        if !kept {
            lose(self, progress);
        }
        Ok(())
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// A consumer of a group; see the [module docs](self).
#[derive(Debug)]
pub(super) struct LogSubscription {
    shared: Arc<Shared>,
    heartbeat: JoinHandle<()>,
    /// [`Subscription::close`] has left the group already.
    closed: bool,
}

impl LogSubscription {
    /// Joins the group and takes the first turn of assignments before returning, so the
    /// partitions assigned to it are being read once it is back.
    pub(super) async fn start(
        log: Arc<dyn Log>,
        store: Store,
        topic: &str,
        group: &str,
        options: SubscribeOptions,
        log_options: LogOptions,
    ) -> Result<Self, BrokerError> {
        let member = format!("{}", uuid::Uuid::now_v7().simple());
        let shared = Arc::new(Shared {
            log,
            store,
            topic: topic.to_owned(),
            group: group.to_owned(),
            member,
            options,
            log_options,
            owned: Mutex::default(),
            changed: Notify::new(),
            room: Notify::new(),
        });
        rebalance(&shared).await?;
        let heartbeat = tokio::spawn(heartbeat_loop(shared.clone()));
        Ok(Self {
            shared,
            heartbeat,
            closed: false,
        })
    }
}

impl LogSubscription {
    /// Stops heartbeating and takes what this consumer owns, for [`leave`].
    fn take_leave(&mut self) -> Vec<Progress> {
        self.heartbeat.abort();
        let parts = std::mem::take(&mut self.shared.owned().parts);
        parts.iter().map(|(p, part)| part.progress(*p)).collect()
    }
}

/// Releases the partitions this consumer owned (with their progress) and leaves the group.
async fn leave(shared: Arc<Shared>, progress: Vec<Progress>) {
    for progress in &progress {
        let released = group::save(
            &shared.store,
            &shared.topic,
            &shared.group,
            &shared.member,
            progress,
            None,
        )
        .await;
        if let Err(error) = released {
            tracing::warn!(topic = %shared.topic, group = %shared.group, part = progress.part,
                error = %herald_core::error_chain(&error), "could not release a partition; its lease will run out");
        }
    }
    if let Err(error) =
        group::leave(&shared.store, &shared.topic, &shared.group, &shared.member).await
    {
        tracing::warn!(error = %herald_core::error_chain(&error), "could not leave the group; the membership will run out");
    }
}

impl Drop for LogSubscription {
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        let progress = self.take_leave();
        // Leaving is best effort: without a runtime, the leases simply run out.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(leave(self.shared.clone(), progress));
        }
    }
}

async fn heartbeat_loop(shared: Arc<Shared>) {
    let mut failures = 0u32;
    loop {
        tokio::time::sleep(shared.log_options.heartbeat).await;
        match rebalance(&shared).await {
            Ok(()) => failures = 0,
            Err(error) => {
                failures += 1;
                if failures == 1 || failures.is_power_of_two() {
                    tracing::warn!(topic = %shared.topic, group = %shared.group, failures,
                        error = %herald_core::error_chain(&error), "a consumer heartbeat failed; retrying");
                }
            }
        }
    }
}

/// One heartbeat: membership, assignment, claims, releases and progress.
async fn rebalance(shared: &Arc<Shared>) -> Result<(), BrokerError> {
    let members = group::heartbeat(
        &shared.store,
        &shared.topic,
        &shared.group,
        &shared.member,
        shared.lease_until(),
    )
    .await?;
    let partitions = shared.log_options.partitions;
    let assigned: HashSet<u32> = match members.iter().position(|m| *m == shared.member) {
        Some(index) if !members.is_empty() => (0..partitions)
            .filter(|p| usize::try_from(*p).unwrap_or(0) % members.len() == index)
            .collect(),
        _ => HashSet::new(),
    };

    // Progress of what it owns; what is no longer its own is released once idle.
    let (to_save, to_release): (Vec<Progress>, Vec<Progress>) = {
        let mut owned = shared.owned();
        let mut save = Vec::new();
        let mut release = Vec::new();
        for (p, part) in &mut owned.parts {
            part.commit_done_prefix();
            if assigned.contains(p) {
                part.draining = false;
                save.push(part.progress(*p));
            } else {
                part.draining = true;
                if part.in_flight() {
                    save.push(part.progress(*p));
                } else {
                    release.push(part.progress(*p));
                }
            }
        }
        (save, release)
    };
    for progress in &to_save {
        shared.save_held(progress).await?;
    }
    for progress in &to_release {
        // Dropped first, so nothing more is handed out; then written and let go.
        let part = {
            let mut owned = shared.owned();
            match owned.parts.get(&progress.part) {
                Some(part) if part.token == progress.token && !part.in_flight() => {
                    owned.parts.remove(&progress.part)
                }
                _ => None,
            }
        };
        if let Some(part) = part {
            let progress = part.progress(progress.part);
            drop(part);
            group::save(
                &shared.store,
                &shared.topic,
                &shared.group,
                &shared.member,
                &progress,
                None,
            )
            .await?;
        }
    }

    let missing: Vec<u32> = {
        let owned = shared.owned();
        let mut missing: Vec<u32> = assigned
            .iter()
            .copied()
            .filter(|p| !owned.parts.contains_key(p))
            .collect();
        missing.sort_unstable();
        missing
    };
    for p in missing {
        let Some(claimed) = group::claim(
            &shared.store,
            &shared.topic,
            &shared.group,
            p,
            &shared.member,
            shared.lease_until(),
        )
        .await?
        else {
            continue;
        };
        let part = Part {
            token: claimed.token,
            entries: VecDeque::new(),
            read_position: claimed.next_position,
            stored_counts: claimed.counts,
            inherited_until: claimed.counted_until,
            counted_until: claimed.counted_until,
            draining: false,
            reader: None,
        };
        let mut owned = shared.owned();
        owned.parts.insert(p, part);
        let reader = tokio::spawn(read_loop(
            shared.clone(),
            p,
            claimed.token,
            claimed.next_position,
        ));
        if let Some(part) = owned.parts.get_mut(&p) {
            part.reader = Some(reader);
        }
        drop(owned);
        tracing::debug!(topic = %shared.topic, group = %shared.group, part = p, "partition claimed");
    }
    shared.changed.notify_waiters();
    Ok(())
}

/// The partition was taken over: drop it, so its deliveries can no longer be settled.
fn lose(shared: &Shared, progress: &Progress) {
    let mut owned = shared.owned();
    if owned
        .parts
        .get(&progress.part)
        .is_some_and(|part| part.token == progress.token)
    {
        owned.parts.remove(&progress.part);
        tracing::warn!(topic = %shared.topic, group = %shared.group, part = progress.part,
            "a partition was taken over by another consumer; its deliveries here are void");
    }
}

/// Reads partition `p` ahead into its buffer while this claim (`token`) holds, reconnecting
/// with backoff when the broker fails.
async fn read_loop(shared: Arc<Shared>, p: u32, token: i64, from: Position) {
    let mut from = from;
    let mut reader: Option<Box<dyn PartitionReader>> = None;
    let mut backoff = Duration::from_millis(100);
    let mut failing = false;
    loop {
        let room = shared.room.notified();
        let full = {
            let owned = shared.owned();
            match owned.parts.get(&p) {
                Some(part) if part.token == token => {
                    part.entries.len() >= shared.log_options.prefetch
                }
                _ => return,
            }
        };
        if full {
            let _ = tokio::time::timeout(READ_WAIT, room).await;
            continue;
        }
        let result = match reader.as_mut() {
            Some(reader) => reader.read(READ_BATCH, READ_WAIT).await,
            None => match shared.log.reader(&shared.topic, p, from).await {
                Ok(opened) => {
                    reader = Some(opened);
                    continue;
                }
                Err(error) => Err(error),
            },
        };
        let records = match result {
            Ok(records) => {
                if failing {
                    failing = false;
                    tracing::info!(topic = %shared.topic, group = %shared.group, part = p,
                        "reading the partition again");
                }
                backoff = Duration::from_millis(100);
                records
            }
            Err(error) => {
                // Once per outage at warn: the broker's own connection errors say the rest.
                let why = herald_core::error_chain(&error);
                if failing {
                    tracing::debug!(topic = %shared.topic, group = %shared.group, part = p,
                        error = %why, retry_in_ms = backoff.as_millis(), "reading a partition failed; retrying");
                } else {
                    failing = true;
                    tracing::warn!(topic = %shared.topic, group = %shared.group, part = p,
                        error = %why, "reading a partition failed; retrying with backoff until the broker answers");
                }
                reader = None;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if records.is_empty() {
            continue;
        }
        let mut owned = shared.owned();
        let Some(part) = owned.parts.get_mut(&p).filter(|part| part.token == token) else {
            return;
        };
        let now = Instant::now();
        for Record { position, message } in records {
            if position < part.read_position {
                continue;
            }
            part.read_position = position + 1;
            from = position + 1;
            let stored = part.stored_counts.remove(&position);
            let inherited = u32::from(position < part.inherited_until);
            part.entries.push_back(Entry {
                position,
                message,
                count: stored.unwrap_or(inherited),
                last_error: String::new(),
                state: if stored == Some(0) {
                    State::Done
                } else {
                    State::Ready { at: now }
                },
            });
        }
        drop(owned);
        shared.changed.notify_waiters();
    }
}

/// A handed-out record, named for settling.
#[derive(Debug)]
struct Handle {
    part: u32,
    token: i64,
    position: Position,
    lease: u64,
}

/// What one pass over the owned partitions found.
#[derive(Debug, Default)]
struct Pass {
    picked: Vec<(Handle, Message, u32)>,
    dying: Vec<(u32, i64, Position, Message, u32, String)>,
    saves: Vec<Progress>,
    next_timer: Option<Instant>,
}

impl Shared {
    /// Expires timers and picks up to `max` records to hand out.
    fn pass(&self, max: usize) -> Pass {
        let now = Instant::now();
        let visibility = self.options.visibility_timeout;
        let max_deliveries = self.options.max_deliveries;
        let mut pass = Pass::default();
        let mut owned = self.owned();
        let Owned {
            parts,
            next_lease,
            turn,
        } = &mut *owned;
        let order: Vec<u32> = {
            let keys: Vec<u32> = parts.keys().copied().collect();
            let start = keys.iter().position(|p| *p >= *turn).unwrap_or(0);
            keys[start..]
                .iter()
                .chain(&keys[..start])
                .copied()
                .collect()
        };
        *turn = turn.wrapping_add(1);
        let timer = |at: Instant, pass: &mut Pass| {
            pass.next_timer = Some(pass.next_timer.map_or(at, |t| t.min(at)));
        };
        for p in order {
            let Some(part) = parts.get_mut(&p) else {
                continue;
            };
            let mut blocked: HashSet<String> = HashSet::new();
            let mut save = false;
            for entry in &mut part.entries {
                if let State::Held { until, .. } = entry.state {
                    if until <= now {
                        entry.state = if entry.count >= max_deliveries {
                            if entry.last_error.is_empty() {
                                entry.last_error = format!(
                                    "the visibility timeout passed {} times without an ack",
                                    entry.count
                                );
                            }
                            pass.dying.push((
                                p,
                                part.token,
                                entry.position,
                                entry.message.clone(),
                                entry.count,
                                entry.last_error.clone(),
                            ));
                            State::Dying
                        } else {
                            State::Ready { at: now }
                        };
                    } else {
                        timer(until, &mut pass);
                    }
                }
                if matches!(entry.state, State::Done) {
                    continue;
                }
                if let Some(key) = &entry.message.key
                    && !blocked.insert(key.clone())
                {
                    continue;
                }
                let State::Ready { at } = entry.state else {
                    continue;
                };
                if at > now {
                    timer(at, &mut pass);
                    continue;
                }
                if part.draining || pass.picked.len() >= max {
                    continue;
                }
                entry.count = entry.count.saturating_add(1);
                if entry.count > 1 {
                    save = true;
                } else if entry.position >= part.counted_until {
                    part.counted_until = entry.position.saturating_add(COUNT_AHEAD);
                    save = true;
                }
                *next_lease += 1;
                entry.state = State::Held {
                    lease: *next_lease,
                    until: now + visibility,
                };
                timer(now + visibility, &mut pass);
                pass.picked.push((
                    Handle {
                        part: p,
                        token: part.token,
                        position: entry.position,
                        lease: *next_lease,
                    },
                    entry.message.clone(),
                    entry.count,
                ));
            }
            if save {
                pass.saves.push(part.progress(p));
            }
        }
        pass
    }

    /// Settles one delivery with `f`, if its lease still holds.
    fn settle<T>(
        &self,
        handle: &Handle,
        f: impl FnOnce(&mut Entry) -> T,
    ) -> Result<T, BrokerError> {
        let mut owned = self.owned();
        let part = owned
            .parts
            .get_mut(&handle.part)
            .filter(|part| part.token == handle.token)
            .ok_or(BrokerError::LeaseLost)?;
        let entry = part
            .entry_mut(handle.position)
            .ok_or(BrokerError::LeaseLost)?;
        match entry.state {
            State::Held { lease, .. } if lease == handle.lease => Ok(f(entry)),
            _ => Err(BrokerError::LeaseLost),
        }
    }

    /// Marks a record done after it was dead-lettered (or the write failed: ready again).
    fn buried(&self, part: u32, token: i64, position: Position, stored: bool) {
        let mut owned = self.owned();
        if let Some(entry) = owned
            .parts
            .get_mut(&part)
            .filter(|p| p.token == token)
            .and_then(|part| part.entry_mut(position))
        {
            entry.state = if stored {
                State::Done
            } else {
                State::Ready {
                    at: Instant::now() + Duration::from_secs(1),
                }
            };
        }
        drop(owned);
        self.changed.notify_waiters();
        self.room.notify_waiters();
    }

    async fn bury(
        &self,
        part: u32,
        token: i64,
        position: Position,
        message: &Message,
        count: u32,
        error: &str,
    ) -> Result<(), BrokerError> {
        let stored =
            group::dead_letter(&self.store, &self.topic, &self.group, message, count, error).await;
        self.buried(part, token, position, stored.is_ok());
        if stored.is_ok() {
            tracing::warn!(topic = %self.topic, group = %self.group, message_id = %message.id,
                receive_count = count, error, "a message was dead-lettered");
        }
        stored
    }
}

impl Subscription for LogSubscription {
    fn receive(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'_, Result<Vec<Delivery>, BrokerError>> {
        Box::pin(async move {
            if max == 0 {
                return Err(BrokerError::Invalid("max must be at least 1".to_owned()));
            }
            let shared = &self.shared;
            let deadline = Instant::now() + wait;
            loop {
                let changed = shared.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                let pass = shared.pass(max);
                for (part, token, position, message, count, error) in &pass.dying {
                    // A failed write leaves it ready again, to be retried.
                    let _ = shared
                        .bury(*part, *token, *position, message, *count, error)
                        .await;
                }
                if !pass.picked.is_empty() {
                    for progress in &pass.saves {
                        shared.save_held(progress).await?;
                    }
                    let deliveries = pass
                        .picked
                        .into_iter()
                        .map(|(handle, message, count)| {
                            Delivery::new(
                                message,
                                count,
                                Box::new(LogSettle {
                                    shared: shared.clone(),
                                    handle,
                                }),
                            )
                        })
                        .collect();
                    return Ok(deliveries);
                }
                let now = Instant::now();
                if now >= deadline {
                    return Ok(Vec::new());
                }
                let until = pass.next_timer.map_or(deadline, |t| t.min(deadline));
                let _ = tokio::time::timeout_at(until.max(now), changed).await;
            }
        })
    }

    fn close(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if self.closed {
                return;
            }
            self.closed = true;
            let progress = self.take_leave();
            leave(self.shared.clone(), progress).await;
        })
    }
}

#[derive(Debug)]
struct LogSettle {
    shared: Arc<Shared>,
    handle: Handle,
}

impl Settle for LogSettle {
    fn ack(&self) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            self.shared
                .settle(&self.handle, |entry| entry.state = State::Done)?;
            self.shared.changed.notify_waiters();
            self.shared.room.notify_waiters();
            Ok(())
        })
    }

    fn nack<'a>(
        &'a self,
        delay: Duration,
        error: &'a str,
    ) -> BoxFuture<'a, Result<Nacked, BrokerError>> {
        Box::pin(async move {
            let max = self.shared.options.max_deliveries;
            let dying = self.shared.settle(&self.handle, |entry| {
                entry.last_error = error.to_owned();
                if entry.count >= max {
                    entry.state = State::Dying;
                    Some((entry.message.clone(), entry.count))
                } else {
                    entry.state = State::Ready {
                        at: Instant::now() + delay,
                    };
                    None
                }
            })?;
            self.shared.changed.notify_waiters();
            let Some((message, count)) = dying else {
                return Ok(Nacked::Retry);
            };
            let Handle {
                part,
                token,
                position,
                ..
            } = self.handle;
            self.shared
                .bury(part, token, position, &message, count, error)
                .await?;
            Ok(Nacked::DeadLettered)
        })
    }

    fn extend(&self, by: Duration) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            self.shared.settle(&self.handle, |entry| {
                if let State::Held { lease, .. } = entry.state {
                    entry.state = State::Held {
                        lease,
                        until: Instant::now() + by,
                    };
                }
            })
        })
    }
}
