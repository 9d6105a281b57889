//! [`lead`]: campaign for a lease, do the work while holding it, stop when it is lost.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::{Fence, Leases};

/// How [`lead`] holds its lease.
#[derive(Debug, Clone, Copy)]
pub struct LeaderOptions {
    /// How long a lease lasts unless renewed: a dead leader is replaced after at most this
    /// long (plus `retry`).
    pub ttl: Duration,
    /// How often a follower tries to take the lease, and how long to wait after an error.
    pub retry: Duration,
}

impl Default for LeaderOptions {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(10),
            retry: Duration::from_secs(1),
        }
    }
}

impl LeaderOptions {
    /// Renewals happen this often: three chances before the lease runs out.
    fn renew_every(self) -> Duration {
        (self.ttl / 3).max(Duration::from_millis(1))
    }

    fn ttl_ms(self) -> i64 {
        i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX)
    }
}

/// Tells the work [`lead`] runs to stop: the lease was lost, or [`lead`] is shutting down.
#[derive(Debug, Clone)]
pub struct Stop(watch::Receiver<bool>);

impl Stop {
    /// Completes when the work must stop.
    pub async fn wait(mut self) {
        // An error means the sender is gone, which also means stop.
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    /// Whether the work must stop now.
    pub fn is_stopped(&self) -> bool {
        *self.0.borrow()
    }
}

/// Holds lease `name` of `leases` (in the database or in Redis) as `holder` whenever it can,
/// and runs `work` while holding it.
///
/// Until `shutdown` completes: tries to acquire the lease every `retry`; once it has it,
/// starts `work` with the holding's [`Fence`] (for the work's writes to check) and a
/// [`Stop`], and renews the lease every third of the TTL. When a renewal is refused (another
/// instance took the lease), or renewals keep failing until the lease may have run out, the
/// work is told to stop and, once it has, `lead` campaigns again. If `work` ends by itself,
/// the lease is given up and `lead` campaigns again after `retry`; an error from `work` is
/// returned (after giving the lease up). On shutdown the work is told to stop, awaited, and
/// the lease is released so another instance takes over at once.
///
/// The work must stop promptly when told: until it does, it may still be writing, and only
/// its fence keeps those writes out once another instance leads.
pub async fn lead<W, F, E>(
    leases: Leases,
    name: &str,
    holder: &str,
    options: LeaderOptions,
    shutdown: impl Future<Output = ()>,
    mut work: W,
) -> Result<(), E>
where
    W: FnMut(Fence, Stop) -> F,
    F: Future<Output = Result<(), E>>,
{
    tokio::pin!(shutdown);
    loop {
        let fence = tokio::select! {
            () = &mut shutdown => return Ok(()),
            fence = campaign(&leases, name, holder, options) => fence,
        };
        tracing::info!(
            lease = name,
            holder,
            token = fence.token,
            "took the lease; leading"
        );
        let (stop_tx, stop_rx) = watch::channel(false);
        let job = work(fence.clone(), Stop(stop_rx));
        tokio::pin!(job);
        let mut renew = tokio::time::interval(options.renew_every());
        renew.tick().await;
        // Renewal is measured from before the statement ran: the lease surely lasts until
        // then plus the TTL, whatever the answer's delay.
        let mut held_until = Instant::now() + options.ttl;
        let ended = loop {
            tokio::select! {
                result = &mut job => break Ended::Work(result),
                () = &mut shutdown => break Ended::Shutdown,
                _ = renew.tick() => {
                    let asked = Instant::now();
                    match leases.renew(&fence, holder, options.ttl_ms()).await {
                        Ok(true) => held_until = asked + options.ttl,
                        Ok(false) => break Ended::Lost("another instance took it, or it ran out"),
                        Err(err) => {
                            tracing::warn!(lease = name, error = herald_core::error_chain(&err), "cannot renew the lease");
                            if Instant::now() + options.renew_every() >= held_until {
                                break Ended::Lost("it could not be renewed before it ran out");
                            }
                        }
                    }
                }
            }
        };
        match ended {
            Ended::Work(result) => {
                give_up(&leases, &fence, holder).await;
                result?;
                tracing::info!(lease = name, "the work ended; gave the lease up");
                tokio::select! {
                    () = &mut shutdown => return Ok(()),
                    () = tokio::time::sleep(options.retry) => {}
                }
            }
            Ended::Shutdown => {
                let _ = stop_tx.send(true);
                let result = job.await;
                give_up(&leases, &fence, holder).await;
                tracing::info!(lease = name, "stopped; gave the lease up");
                return result;
            }
            Ended::Lost(why) => {
                tracing::warn!(
                    lease = name,
                    token = fence.token,
                    "lost the lease: {why}; stopping"
                );
                let _ = stop_tx.send(true);
                job.await?;
            }
        }
    }
}

enum Ended<E> {
    Work(Result<(), E>),
    Shutdown,
    Lost(&'static str),
}

/// Tries to take the lease until it has it.
async fn campaign(leases: &Leases, name: &str, holder: &str, options: LeaderOptions) -> Fence {
    let mut logged = false;
    loop {
        match leases.acquire(name, holder, options.ttl_ms()).await {
            Ok(Some(fence)) => return fence,
            Ok(None) => {
                if !logged {
                    tracing::info!(lease = name, "another instance leads; standing by");
                    logged = true;
                }
            }
            Err(err) => tracing::warn!(
                lease = name,
                error = herald_core::error_chain(&err),
                "cannot take the lease"
            ),
        }
        tokio::time::sleep(options.retry).await;
    }
}

async fn give_up(leases: &Leases, fence: &Fence, holder: &str) {
    if let Err(err) = leases.release(fence, holder).await {
        tracing::warn!(
            lease = %fence.name,
            error = herald_core::error_chain(&err),
            "cannot give the lease up; it runs out by itself"
        );
    }
}
