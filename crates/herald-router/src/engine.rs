//! [`Engine`]: the router. It takes due dispatch jobs from the store and delivers them
//! through their subscription's pool.
//!
//! One scheduling loop visits the enabled subscriptions in turn (starting one further along
//! each round, so none is always first). For each it works out how many deliveries may start
//! now:
//!
//! - the pool's free slots (`concurrency` minus requests in flight);
//! - the subscription's share: when several subscriptions use a pool, one may hold at most
//!   half its slots, so a slow endpoint cannot take a shared pool over;
//! - the pool's rate limit: tokens are taken before the claim (and unused ones given back);
//! - the endpoint's circuit breaker: none while it is open, one probe after its cooldown.
//!
//! It claims that many jobs and starts one task per claimed job: tasks exist only for
//! requests in flight, never for waiting jobs, which stay rows. A claim is a short lease in
//! the store (`lease`, 5 s by default) that a heartbeat renews, in one statement, for every
//! job the router holds, so a router that dies gives its jobs up within a lease; a request
//! runs only while its lease is known to be held, and a job a renewal finds under another
//! router's lease is dropped without recording anything (see [`lease`](crate::lease) for why
//! two routers never deliver one job at once). Under load a claim per freed slot would bound
//! the router by the claim query's latency, so when neither a rate limit nor a breaker probe
//! is in play it claims up to the subscription's share at once and keeps the rest *ahead*,
//! started first as slots free (their leases renewed meanwhile, and only while a renewal has
//! confirmed them); jobs ahead are given back (due again at once) when the breaker stops
//! admitting, after 10 s of waiting, and when the router stops, and dropped when a renewal
//! finds them under another router's lease. FIFO order and the absence of head-of-line
//! blocking across keys come from the claim (see [`job`](crate::job)). When nothing could be
//! claimed the loop sleeps until a delivery finishes, it is woken, or `poll_interval` passes.
//!
//! Pools and subscriptions are re-read every `refresh`: a pool's new concurrency or rate
//! applies within that time, without a restart.
//!
//! After each attempt: 2xx marks the job delivered; 410 marks it dead and disables the
//! subscription; anything else schedules a retry with exponential backoff and full jitter,
//! honouring `Retry-After`, until the subscription's `max_attempts`, when the job is dead
//! (the dead-letter queue is the jobs in status `dead`; the API retries them).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_core::id::SubscriptionId;
use herald_store::Store;
use herald_telemetry::metrics::{PoolLabels, WebhookLabels, metrics};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::breaker::{Admits, Breaker, BreakerOptions};
use crate::job::{self, Attempt, Claimed, Next};
use crate::lease::{Held, Lapse, Leases};
use crate::limit::TokenBucket;
use crate::mediator::{self, Mediator};
use crate::outcome::{Backoff, Outcome};
use crate::pool::{self, Pool};
use crate::sql::now_ms;
use crate::subscription::{self, Subscription};

/// How often finished jobs past the retention are deleted.
const PURGE_INTERVAL: Duration = Duration::from_secs(60);
/// Rows deleted per statement when purging.
const PURGE_BATCH: u32 = 1000;
/// Batches per purge round.
const PURGE_BATCHES: u32 = 10;

/// The router's settings.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// The longest sleep when there is nothing to do.
    pub poll_interval: Duration,
    /// How often pools and subscriptions are re-read.
    pub refresh: Duration,
    /// How long one request may take.
    pub request_timeout: Duration,
    /// Retry delays.
    pub backoff: Backoff,
    /// Circuit breaker settings, per subscription.
    pub breaker: BreakerOptions,
    /// How long finished jobs (delivered or dead), their attempts and the events no job needs
    /// are kept; also how far back a replay can reach.
    pub retention: Duration,
    /// How long a claimed job stays this router's without a renewal, between
    /// [`MIN_LEASE`] and [`MAX_LEASE`]. The router renews the leases of the jobs it holds
    /// every quarter of it, so a request may take longer (up to `request_timeout`); a router
    /// that dies gives its jobs up this long after its last renewal.
    pub lease: Duration,
}

/// The shortest [`EngineOptions::lease`].
pub const MIN_LEASE: Duration = Duration::from_secs(1);
/// The longest [`EngineOptions::lease`].
pub const MAX_LEASE: Duration = Duration::from_secs(300);

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_millis(200),
            refresh: Duration::from_secs(1),
            request_timeout: Duration::from_secs(10),
            backoff: Backoff::default(),
            breaker: BreakerOptions::default(),
            retention: Duration::from_secs(7 * 24 * 3600),
            lease: Duration::from_secs(5),
        }
    }
}

/// Why the router stopped.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The HTTP client could not be built.
    #[error(transparent)]
    Client(#[from] mediator::BuildError),
    /// [`EngineOptions::lease`] is out of its bounds.
    #[error("the job lease {0:?} is not between {MIN_LEASE:?} and {MAX_LEASE:?}")]
    Lease(Duration),
}

#[derive(Debug)]
struct PoolState {
    pool: Pool,
    bucket: Option<Arc<TokenBucket>>,
    /// A token taken from an empty bucket, due at this instant.
    reserved: Mutex<Option<Instant>>,
    in_flight: Arc<AtomicU32>,
    subscriptions: u32,
}

#[derive(Debug)]
struct SubState {
    subscription: Arc<Subscription>,
    breaker: Arc<Mutex<Breaker>>,
    in_flight: Arc<AtomicU32>,
    /// Jobs claimed ahead of free slots, with when: started first, given back when stale.
    ahead: Mutex<VecDeque<(Taken, Instant)>>,
}

/// A job this router claimed, and its lease (renewed while this lives).
#[derive(Debug)]
struct Taken {
    job: Claimed,
    lease: Held,
}

/// How long a job claimed ahead may wait for a free slot before it is given back, so that a
/// router whose slots stay busy does not sit on jobs another could deliver. The heartbeat
/// renews a waiting job's lease like any other, so this may exceed the lease; what decides
/// whether a waiting job may still start is its lease (`Held::is_held`), checked when it
/// leaves the queue.
const AHEAD_STALE: Duration = Duration::from_secs(10);

/// See the [module docs](self).
#[derive(Debug)]
pub struct Engine {
    store: Store,
    mediator: Mediator,
    options: EngineOptions,
    wake: Arc<Notify>,
    leases: Arc<Leases>,
}

/// Wakes a router (after a job is created or retried in the same process).
#[derive(Debug, Clone)]
pub struct Waker(Arc<Notify>);

impl Waker {
    /// Makes the router look for due jobs now.
    pub fn wake(&self) {
        self.0.notify_one();
    }
}

impl Engine {
    /// A router over `store`.
    pub fn new(store: Store, options: EngineOptions) -> Result<Self, EngineError> {
        if !(MIN_LEASE..=MAX_LEASE).contains(&options.lease) {
            return Err(EngineError::Lease(options.lease));
        }
        Ok(Self {
            store,
            mediator: Mediator::new(options.request_timeout)?,
            leases: Leases::new(options.lease),
            options,
            wake: Arc::new(Notify::new()),
        })
    }

    /// A handle that wakes this router.
    pub fn waker(&self) -> Waker {
        Waker(self.wake.clone())
    }

    /// Delivers until `shutdown` completes, then waits for the requests in flight. Dropped
    /// before, it stops at once: its requests are dropped and its jobs come back to any
    /// router when their leases run out.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), EngineError> {
        // Renews while requests are in flight, until they are all over (or `run` is dropped).
        let _heartbeat = self.leases.start(self.store.clone());
        let mut shutdown = std::pin::pin!(shutdown);
        let mut pools: HashMap<String, PoolState> = HashMap::new();
        let mut subs: Vec<SubState> = Vec::new();
        let mut refreshed: Option<Instant> = None;
        let mut tasks = JoinSet::new();
        let mut start = 0_usize;
        let mut purged: Option<Instant> = None;
        tracing::info!("the router is delivering");
        loop {
            while tasks.try_join_next().is_some() {}
            if purged.is_none_or(|at| at.elapsed() >= PURGE_INTERVAL) {
                self.purge().await;
                purged = Some(Instant::now());
            }
            if refreshed.is_none_or(|at| at.elapsed() >= self.options.refresh) {
                self.refresh(&mut pools, &mut subs).await;
                refreshed = Some(Instant::now());
            }
            let mut claimed_any = false;
            let mut sleep = self.options.poll_interval;
            let count = subs.len();
            for offset in 0..count {
                let sub = &subs[(start + offset) % count];
                let Some(pool) = pools.get(&sub.subscription.pool) else {
                    continue;
                };
                let (claimed, token_due, probe) = self.claim_for(sub, pool).await;
                if let Some(due) = token_due {
                    sleep = sleep.min(due.saturating_duration_since(Instant::now()));
                }
                if claimed.is_empty() {
                    continue;
                }
                claimed_any = true;
                for job in claimed {
                    pool.in_flight.fetch_add(1, Ordering::SeqCst);
                    sub.in_flight.fetch_add(1, Ordering::SeqCst);
                    tasks.spawn(self.deliver(job, sub, pool, probe));
                }
            }
            start = start.wrapping_add(1);
            if claimed_any {
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::task::yield_now() => {}
                }
            } else {
                tokio::select! {
                    () = &mut shutdown => break,
                    () = self.wake.notified() => {}
                    () = tokio::time::sleep(sleep) => {}
                }
            }
        }
        tracing::info!(in_flight = tasks.len(), "the router is stopping");
        for sub in &subs {
            self.give_back(sub).await;
        }
        while tasks.join_next().await.is_some() {}
        Ok(())
    }

    /// Deletes what the retention no longer keeps, at most [`PURGE_BATCHES`] batches at a
    /// time so deliveries are not held up; what is left goes at the next interval.
    async fn purge(&self) {
        let retention_ms = i64::try_from(self.options.retention.as_millis()).unwrap_or(i64::MAX);
        let before = now_ms().saturating_sub(retention_ms);
        let mut total = job::Purged::default();
        for _ in 0..PURGE_BATCHES {
            match job::purge(&self.store, before, PURGE_BATCH).await {
                Ok(purged) => {
                    total.jobs += purged.jobs;
                    total.events += purged.events;
                    if purged.jobs < u64::from(PURGE_BATCH)
                        && purged.events < u64::from(PURGE_BATCH)
                    {
                        break;
                    }
                }
                Err(err) => {
                    tracing::warn!(
                        error = herald_core::error_chain(&err),
                        "cannot purge old dispatch jobs"
                    );
                    break;
                }
            }
        }
        if total != job::Purged::default() {
            tracing::info!(
                jobs = total.jobs,
                events = total.events,
                "purged old dispatch jobs and events"
            );
        }
    }

    /// Re-reads pools and subscriptions; keeps breakers, counters and buckets of those that
    /// stay. A store error keeps the previous view (and is logged).
    async fn refresh(&self, pools: &mut HashMap<String, PoolState>, subs: &mut Vec<SubState>) {
        let (fresh_pools, fresh_subs) = match (
            pool::list(&self.store).await,
            subscription::list(&self.store, true).await,
        ) {
            (Ok(p), Ok(s)) => (p, s),
            (Err(err), _) => {
                tracing::warn!(error = herald_core::error_chain(&err), "cannot read pools");
                return;
            }
            (_, Err(err)) => {
                tracing::warn!(
                    error = herald_core::error_chain(&err),
                    "cannot read subscriptions"
                );
                return;
            }
        };
        let mut next_pools = HashMap::with_capacity(fresh_pools.len());
        for fresh in fresh_pools {
            let state = match pools.remove(&fresh.code) {
                Some(mut state) => {
                    state.bucket = match (fresh.rate_limit, state.bucket.take()) {
                        (Some(limit), Some(bucket)) => {
                            if bucket.limit() != limit && bucket.set(limit).is_err() {
                                tracing::warn!(pool = %fresh.code, "the stored rate limit is out of range; keeping the old one");
                            }
                            Some(bucket)
                        }
                        (Some(limit), None) => TokenBucket::new(limit).ok().map(Arc::new),
                        (None, _) => None,
                    };
                    if state.bucket.is_none() {
                        *lock(&state.reserved) = None;
                    }
                    state.pool = fresh;
                    state
                }
                None => PoolState {
                    bucket: fresh
                        .rate_limit
                        .and_then(|limit| TokenBucket::new(limit).ok())
                        .map(Arc::new),
                    pool: fresh,
                    reserved: Mutex::new(None),
                    in_flight: Arc::new(AtomicU32::new(0)),
                    subscriptions: 0,
                },
            };
            next_pools.insert(state.pool.code.clone(), state);
        }
        let mut old: HashMap<SubscriptionId, SubState> =
            subs.drain(..).map(|s| (s.subscription.id, s)).collect();
        for fresh in fresh_subs {
            let state = match old.remove(&fresh.id) {
                Some(mut state) => {
                    state.subscription = Arc::new(fresh);
                    state
                }
                None => SubState {
                    subscription: Arc::new(fresh),
                    breaker: Arc::new(Mutex::new(Breaker::new(self.options.breaker))),
                    in_flight: Arc::new(AtomicU32::new(0)),
                    ahead: Mutex::new(VecDeque::new()),
                },
            };
            subs.push(state);
        }
        for state in next_pools.values_mut() {
            state.subscriptions = 0;
        }
        for sub in subs.iter() {
            if let Some(pool) = next_pools.get_mut(&sub.subscription.pool) {
                pool.subscriptions += 1;
            }
        }
        *pools = next_pools;
    }

    /// Claims as many of `sub`'s due jobs as may start now. When the pool's rate limit is
    /// what holds it back, also says when the next token is due; and whether the job is the
    /// breaker's probe.
    async fn claim_for(
        &self,
        sub: &SubState,
        pool: &PoolState,
    ) -> (Vec<Taken>, Option<Instant>, bool) {
        let concurrency = pool.pool.concurrency;
        let free = concurrency.saturating_sub(pool.in_flight.load(Ordering::SeqCst));
        let share = if pool.subscriptions > 1 {
            (concurrency / 2).max(1)
        } else {
            concurrency
        };
        let room = share.saturating_sub(sub.in_flight.load(Ordering::SeqCst));
        let mut wanted = free.min(room);
        if wanted == 0 {
            return (Vec::new(), None, false);
        }
        let admits = lock(&sub.breaker).admits();
        if admits != Admits::Any {
            // Jobs claimed ahead wait for a breaker that may stay open: give them back.
            self.give_back(sub).await;
        }
        match admits {
            Admits::None => return (Vec::new(), None, false),
            Admits::Probe => wanted = 1,
            Admits::Any => {}
        }
        let mut tokens = 0;
        if let Some(bucket) = &pool.bucket {
            match take_tokens(bucket, &pool.reserved, wanted) {
                Ok(taken) => tokens = taken,
                Err(due) => return (Vec::new(), Some(due), false),
            }
            wanted = tokens;
        }
        let mut claimed = Vec::new();
        let mut stale = Vec::new();
        let mut unsure = Vec::new();
        let renewals_late = {
            let mut ahead = lock(&sub.ahead);
            while claimed.len() < wanted as usize
                && let Some((taken, at)) = ahead.pop_front()
            {
                if taken.lease.is_lost() {
                    // Another router has it now: not ours to start or give back.
                    tracing::warn!(
                        job_id = %taken.job.id,
                        "a job claimed ahead is under another lease now; it is dropped"
                    );
                } else if at.elapsed() >= AHEAD_STALE {
                    stale.push(taken);
                } else if taken.lease.is_held() {
                    claimed.push(taken);
                } else {
                    // Renewals are late: it may not start until one confirms its lease (or
                    // finds it lost). Giving it back would be one more write to a store that
                    // is already slow; it waits, in its place.
                    unsure.push((taken, at));
                }
            }
            let late = !unsure.is_empty();
            for entry in unsure.into_iter().rev() {
                ahead.push_front(entry);
            }
            late
        };
        self.release(stale).await;
        let need = wanted.saturating_sub(u32::try_from(claimed.len()).unwrap_or(u32::MAX));
        if need > 0 {
            // One claim query per freed slot would bound the router by the query's latency:
            // claim up to the subscription's share at once and keep the rest ahead. Not with
            // a rate limit or a probe, which must not hold more than they may start, nor while
            // renewals are late (jobs ahead wait for them).
            let extra = if admits == Admits::Any && pool.bucket.is_none() && !renewals_late {
                share.saturating_sub(need)
            } else {
                0
            };
            let sent = Instant::now();
            let lease_ms = self.leases.length_ms();
            match job::claim(&self.store, sub.subscription.id, need + extra, lease_ms).await {
                Ok(fresh) => {
                    let mut fresh: Vec<Taken> = fresh
                        .into_iter()
                        .map(|job| Taken {
                            lease: self.leases.hold(&job, sent),
                            job,
                        })
                        .collect();
                    let keep = fresh.split_off((need as usize).min(fresh.len()));
                    claimed.append(&mut fresh);
                    let now = Instant::now();
                    lock(&sub.ahead).extend(keep.into_iter().map(|taken| (taken, now)));
                }
                Err(err) => {
                    tracing::warn!(
                        subscription_id = %sub.subscription.id,
                        error = herald_core::error_chain(&err),
                        "cannot claim dispatch jobs"
                    );
                }
            }
        }
        if let Some(bucket) = &pool.bucket {
            let used = u32::try_from(claimed.len()).unwrap_or(tokens);
            bucket.refund(tokens.saturating_sub(used));
        }
        let probe = admits == Admits::Probe && !claimed.is_empty();
        if probe {
            // Marks the probe as out; the breaker refuses others until it reports.
            let _ = lock(&sub.breaker).allow();
        }
        (claimed, None, probe)
    }

    /// Gives back every job `sub` claimed ahead.
    async fn give_back(&self, sub: &SubState) {
        let taken: Vec<Taken> = lock(&sub.ahead).drain(..).map(|(taken, _)| taken).collect();
        self.release(taken).await;
    }

    /// Releases `taken` in the store, so they are due again now rather than when their lease
    /// runs out (only those still under this router's token: the release checks it).
    async fn release(&self, taken: Vec<Taken>) {
        // Forgets the leases first, so the heartbeat stops renewing them.
        let jobs: Vec<Claimed> = taken.into_iter().map(|taken| taken.job).collect();
        if let Err(err) = job::release(&self.store, &jobs).await {
            tracing::warn!(
                jobs = jobs.len(),
                error = herald_core::error_chain(&err),
                "cannot give claimed jobs back; they are due again when their lease runs out"
            );
        }
    }

    /// The task that makes one attempt at `taken` and records it; `probe` if it is the
    /// breaker's probe.
    fn deliver(
        &self,
        taken: Taken,
        sub: &SubState,
        pool: &PoolState,
        probe: bool,
    ) -> impl Future<Output = ()> + Send + 'static {
        let store = self.store.clone();
        let mediator = self.mediator.clone();
        let backoff = self.options.backoff;
        let subscription = sub.subscription.clone();
        let breaker = sub.breaker.clone();
        let counters = [pool.in_flight.clone(), sub.in_flight.clone()];
        let wake = self.wake.clone();
        let labels = PoolLabels {
            pool: pool.pool.code.clone(),
        };
        async move {
            let in_flight = metrics().webhook_in_flight.get_or_create(&labels).clone();
            in_flight.inc();
            attempt(
                &store,
                &mediator,
                backoff,
                &subscription,
                (&breaker, probe),
                &taken,
                &labels,
            )
            .await;
            // Stops renewing the lease (the job is finished, or abandoned).
            drop(taken);
            in_flight.dec();
            for counter in counters {
                counter.fetch_sub(1, Ordering::SeqCst);
            }
            wake.notify_one();
        }
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Takes up to `wanted` tokens (`wanted` ≥ 1). Whenever the bucket runs dry, the next token
/// is reserved (taken in debt) and kept until it is due; `Err` says when, if no token could
/// be taken now. Reserving rather than waiting for the bucket to refill means a scheduler
/// that comes back late loses no throughput, even with a burst of 1.
fn take_tokens(
    bucket: &TokenBucket,
    reserved: &Mutex<Option<Instant>>,
    wanted: u32,
) -> Result<u32, Instant> {
    let mut held = lock(reserved);
    let mut tokens = 0;
    match *held {
        Some(due) if due > Instant::now() => return Err(due),
        Some(_) => {
            *held = None;
            tokens = 1;
        }
        None => {}
    }
    while tokens < wanted && bucket.try_acquire().is_ok() {
        tokens += 1;
    }
    if tokens < wanted {
        // The bucket is empty: reserve the next token now, so it accrues even if the
        // scheduler comes back late.
        let due = bucket.reserve();
        if due <= Instant::now() {
            tokens += 1;
        } else {
            *held = Some(due);
        }
    }
    match *held {
        Some(due) if tokens == 0 => Err(due),
        _ => Ok(tokens),
    }
}

/// A random number in `[0, 1)`, for jitter.
fn unit_random() -> f64 {
    let mut bytes = [0_u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        return 0.5;
    }
    // 53 random bits: every value is exact in an f64.
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1_u64 << 53) as f64
}

async fn attempt(
    store: &Store,
    mediator: &Mediator,
    backoff: Backoff,
    subscription: &Subscription,
    (breaker, probe): (&Mutex<Breaker>, bool),
    Taken { job, lease }: &Taken,
    pool: &PoolLabels,
) {
    let started_at = now_ms();
    let body = match &job.body {
        Some(body) => body,
        None => {
            if probe {
                // The endpoint was not called: the probe says nothing about it.
                lock(breaker).abandoned();
            }
            let attempt = Attempt {
                started_at,
                status_code: None,
                latency_ms: 0,
                outcome: "failed",
                error: Some(format!("the event {} is no longer stored", job.event_id)),
            };
            record(store, job, &attempt, Next::Dead).await;
            return;
        }
    };
    let request = mediator.send(mediator::Request {
        url: &subscription.url,
        event_id: &job.event_id,
        body,
        secret: &subscription.secret,
        headers: &subscription.headers,
    });
    // The request goes on only while the lease is known to be ours (see `lease`).
    let answer = match lease.run(request).await {
        Ok(answer) => answer,
        Err(lapse) => {
            let why = match lapse {
                Lapse::Lost => "the job is under another router's lease now",
                Lapse::Expiring => "its lease could not be renewed and is about to run out",
            };
            tracing::warn!(
                job_id = %job.id,
                reason = why,
                "a delivery was abandoned; nothing is recorded, and the job is delivered again"
            );
            if probe {
                lock(breaker).abandoned();
            }
            return;
        }
    };
    let attempt_no = job.attempts.saturating_add(1);
    let used = attempt_no.saturating_sub(job.budget_from);
    let (outcome, next) = match answer.outcome {
        Outcome::Delivered => {
            lock(breaker).succeeded();
            ("delivered", Next::Delivered)
        }
        Outcome::Gone => {
            let reason = format!(
                "the endpoint answered 410 Gone to dispatch job {} at {}",
                job.id,
                crate::sql::rfc3339(started_at)
            );
            if let Err(err) = subscription::disable(store, subscription.id, &reason).await {
                tracing::error!(
                    error = herald_core::error_chain(&err),
                    "cannot disable a subscription"
                );
            }
            tracing::warn!(subscription_id = %subscription.id, "the endpoint answered 410; the subscription is disabled");
            ("gone", Next::Dead)
        }
        Outcome::Retry { retry_after } => {
            lock(breaker).failed();
            (
                "retry",
                next_after(backoff, used, subscription, retry_after),
            )
        }
        Outcome::Failed => {
            // The endpoint is up and refused this one: not a reason to stop calling it.
            lock(breaker).succeeded();
            ("failed", next_after(backoff, used, subscription, None))
        }
    };
    let metrics = metrics();
    metrics
        .webhook_attempts
        .get_or_create(&WebhookLabels {
            pool: pool.pool.clone(),
            outcome: outcome.to_owned(),
        })
        .inc();
    metrics
        .webhook_duration
        .get_or_create(pool)
        .observe(answer.latency.as_secs_f64());
    if next == Next::Dead {
        metrics.webhook_dead.get_or_create(pool).inc();
    }
    if next == Next::Dead && outcome != "gone" {
        tracing::warn!(
            job_id = %job.id,
            event_id = %job.event_id,
            subscription_id = %subscription.id,
            attempts = used,
            error = answer.error.as_deref().unwrap_or(""),
            "a delivery was dead-lettered"
        );
    }
    let attempt = Attempt {
        started_at,
        status_code: answer.status,
        latency_ms: i64::try_from(answer.latency.as_millis()).unwrap_or(i64::MAX),
        outcome,
        error: answer.error,
    };
    record(store, job, &attempt, next).await;
}

fn next_after(
    backoff: Backoff,
    used: u32,
    subscription: &Subscription,
    retry_after: Option<Duration>,
) -> Next {
    if used >= subscription.max_attempts {
        return Next::Dead;
    }
    let delay = backoff.delay(used, unit_random(), retry_after);
    let delay_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 2);
    Next::RetryAt(now_ms().saturating_add(delay_ms))
}

async fn record(store: &Store, job: &Claimed, attempt: &Attempt, next: Next) {
    match job::finish(store, job, attempt, next).await {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            job_id = %job.id,
            "the job's lease ran out during the attempt; another router has it"
        ),
        Err(err) => tracing::warn!(
            job_id = %job.id,
            error = herald_core::error_chain(&err),
            "cannot record an attempt; the job will be tried again when its lease runs out"
        ),
    }
}
