//! The Redis backend (feature `redis`): leases kept in Redis, fenced in the database.
//!
//! [`Leases::redis`](crate::Leases::redis) keeps leases in Redis instead of `herald_leases`,
//! for deployments that would rather not renew leases in their database. The writes a lease
//! guards are still in the database, so that is where they are fenced: see
//! [Fencing](#fencing).
//!
//! # Keys
//!
//! With the key prefix `herald` (the default), lease `outbox-relay` is the hash
//! `herald:lease:outbox-relay`, with fields `holder`, `token`, `expires_at` and `acquired_at`
//! (milliseconds by Redis's clock, `TIME`). Like a row of `herald_leases`, it is never deleted
//! and never expires: releasing or running out only leaves `expires_at` in the past, so the
//! token carries on from where it was. One lease is one key, so it works on a cluster too.
//!
//! # Operations
//!
//! Acquire, renew, release, state and the holder's own check are each one Lua script
//! (`EVAL`), so each reads and writes its hash atomically with
//! Redis's clock: no other client's command runs between its read and its write. They do what
//! the database backend's statements do ([`Leases`](crate::Leases) documents it): a lease is
//! taken when it is free or its holder takes it again (keeping its token); renewing and
//! releasing succeed only for the current holder with the current token, and renewing only
//! before the lease ran out.
//!
//! # Tokens
//!
//! Each new holding's token is the previous token plus one, or Redis's clock in milliseconds
//! when that is larger. The clock part is for a Redis that forgot the lease (restarted without
//! persistence, or failed over to a replica that had not got the last write): the tokens it
//! hands out next are still larger than those the database has seen, so the new leader is not
//! fenced out until a counter starting at 1 caught up.
//!
//! # Fencing
//!
//! Redis cannot see the database transaction a leader writes in, so the check is made in the
//! database, on `herald_fences` (one row per lease: the largest token checked). The holder's
//! check ([`Fence::check_postgres`](crate::Fence::check_postgres), `check_sqlite`) is a
//! compare-and-advance in the transaction whose writes it guards: it raises the row to its
//! token and fails when the row is already larger. Once a new holder has checked, every later
//! check of an older token fails, and the row lock (PostgreSQL) or the write lock (SQLite) the
//! check takes orders the transactions of the two holders: an older holder's write can come
//! before the new holder's first write, never after it.
//!
//! This is weaker than the database backend in one way: the database does not know when a
//! Redis lease runs out, so a former holder's write still passes until the new holder has
//! checked once (which the relay does first thing when it leads). And it is exactly as strong
//! as Redis's memory: a Redis that loses acknowledged writes can give the lease to a second
//! holder while the first still holds it (a token may even repeat, and two holders with one
//! token both pass); run it with `appendfsync always` and without failover to a lagging
//! replica where that matters.
//!
//! # Clocks
//!
//! When a lease runs out is decided by Redis's clock alone, so instances whose clocks disagree
//! still agree on it. A holder counts its own lease from *before* its request, by its own
//! monotonic clock, so it stops leading before Redis lets another take over.

use std::fmt;
use std::sync::LazyLock;
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, Cmd};
use herald_core::Secret;

use crate::{Fence, KeptIn, LeaseError, LeaseState};

/// How to reach Redis for leases. Build with [`RedisLeaseOptions::new`] and change fields as
/// needed.
#[derive(Debug, Clone)]
pub struct RedisLeaseOptions {
    /// The server, e.g. `redis://127.0.0.1:6379` or `redis://:password@host:6379/2`. TLS
    /// (`rediss://`) is not built in.
    pub url: Secret<String>,
    /// Put before every key (`<prefix>:lease:<name>`). A lease's name is per database (the
    /// relay's is `outbox-relay` in every installation), so installations with their own
    /// databases that share one Redis need their own prefixes, or they share one leader.
    /// 1 to 100 bytes of `[A-Za-z0-9._:-]`. Default `herald`.
    pub key_prefix: String,
    /// How long to wait for a connection to open. Default 5 s.
    pub connect_timeout: Duration,
    /// How long to wait for a reply; a renewal that waits longer counts as failed. Default 2 s.
    pub response_timeout: Duration,
}

impl RedisLeaseOptions {
    /// The default options for the server at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: Secret::new(url.into()),
            key_prefix: "herald".to_owned(),
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(2),
        }
    }
}

/// How many times the connection retries reconnecting before a command fails.
const RECONNECT_RETRIES: usize = 2;
/// The longest pause between reconnection attempts.
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(1);

/// Leases in one Redis, under one key prefix.
#[derive(Clone)]
pub(crate) struct RedisLeases {
    /// Connects at the first command, and again after a connection failed.
    manager: ConnectionManager,
    /// The server's address, without credentials, for `Debug`.
    shown: String,
    prefix: String,
}

impl fmt::Debug for RedisLeases {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLeases")
            .field("server", &self.shown)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Every script starts by reading the lease and Redis's clock: `now` (milliseconds), and the
/// lease's `holder`, `token` and `expires_at` (`nil` when it was never taken); `held` is
/// whether it is held now. `ms` writes a number without an exponent.
const PRELUDE: &str = "
local function ms(n) return string.format('%.0f', n) end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local lease = redis.call('HMGET', KEYS[1], 'holder', 'token', 'expires_at')
local holder, token, expires_at = lease[1], tonumber(lease[2]), tonumber(lease[3])
local held = expires_at ~= nil and expires_at > now
";

fn script(body: &str) -> String {
    format!("{PRELUDE}{body}")
}

/// ARGV: holder, TTL (ms). The token, or nil while another holder has the lease.
static ACQUIRE: LazyLock<String> = LazyLock::new(|| {
    script(
        "
if held and holder ~= ARGV[1] then return false end
if not held then
  token = math.max((token or 0) + 1, now)
  redis.call('HSET', KEYS[1], 'holder', ARGV[1], 'token', ms(token), 'acquired_at', ms(now))
end
redis.call('HSET', KEYS[1], 'expires_at', ms(now + tonumber(ARGV[2])))
return token
",
    )
});

/// ARGV: holder, token, TTL (ms). 1 when renewed.
static RENEW: LazyLock<String> = LazyLock::new(|| {
    script(
        "
if held and holder == ARGV[1] and token == tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'expires_at', ms(now + tonumber(ARGV[3])))
  return 1
end
return 0
",
    )
});

/// ARGV: holder, token. 1 when released.
static RELEASE: LazyLock<String> = LazyLock::new(|| {
    script(
        "
if held and holder == ARGV[1] and token == tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'expires_at', ms(now - 1))
  return 1
end
return 0
",
    )
});

/// No ARGV. `{holder, token, remaining ms}`, or nil when never taken.
static STATE: LazyLock<String> = LazyLock::new(|| {
    script(
        "
if not holder then return false end
return {holder, token, expires_at - now}
",
    )
});

/// ARGV: token. 1 while the lease is held with it.
static HOLDS: LazyLock<String> = LazyLock::new(|| {
    script(
        "
if held and token == tonumber(ARGV[1]) then return 1 end
return 0
",
    )
});

impl RedisLeases {
    /// Leases in the Redis at `options.url`, connected at the first command: a Redis that is
    /// down does not stop a caller from starting, and each command fails until it is back.
    pub(crate) fn new(options: RedisLeaseOptions) -> Result<Self, LeaseError> {
        let prefix = options.key_prefix;
        if prefix.is_empty()
            || prefix.len() > 100
            || !prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
        {
            return Err(LeaseError::Invalid(format!(
                "the Redis key prefix `{prefix}` must be 1 to 100 ASCII letters, digits, `.`, `_`, `:` or `-`"
            )));
        }
        if options.connect_timeout.is_zero() || options.response_timeout.is_zero() {
            return Err(LeaseError::Invalid(
                "the Redis connect and response timeouts must be more than zero".to_owned(),
            ));
        }
        // The parser's message could quote the URL, password and all: it is not passed on.
        let client = Client::open(options.url.expose().as_str()).map_err(|_| {
            LeaseError::Invalid(
                "the Redis URL is not valid; write it like redis://127.0.0.1:6379 (the value may \
                 be secret and is not shown)"
                    .to_owned(),
            )
        })?;
        let shown = client.get_connection_info().addr().to_string();
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.connect_timeout))
            .set_response_timeout(Some(options.response_timeout))
            .set_number_of_retries(RECONNECT_RETRIES)
            .set_max_delay(RECONNECT_MAX_DELAY);
        let manager = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self {
            manager,
            shown,
            prefix,
        })
    }

    /// `EVAL` of `script` on lease `name`'s key; the caller adds the script's arguments.
    fn eval(&self, script: &str, name: &str) -> Cmd {
        let mut eval = ::redis::cmd("EVAL");
        eval.arg(script)
            .arg(1)
            .arg(format!("{}:lease:{name}", self.prefix));
        eval
    }

    pub(crate) async fn acquire(
        &self,
        name: &str,
        holder: &str,
        ttl_ms: i64,
    ) -> Result<Option<Fence>, LeaseError> {
        let token: Option<i64> = self
            .eval(&ACQUIRE, name)
            .arg(holder)
            .arg(ttl_ms.max(1))
            .query_async(&mut self.manager.clone())
            .await?;
        Ok(token.map(|token| Fence::new(name, token, KeptIn::Redis)))
    }

    pub(crate) async fn renew(
        &self,
        fence: &Fence,
        holder: &str,
        ttl_ms: i64,
    ) -> Result<bool, LeaseError> {
        let renewed: i64 = self
            .eval(&RENEW, &fence.name)
            .arg(holder)
            .arg(fence.token)
            .arg(ttl_ms.max(1))
            .query_async(&mut self.manager.clone())
            .await?;
        Ok(renewed == 1)
    }

    pub(crate) async fn release(&self, fence: &Fence, holder: &str) -> Result<(), LeaseError> {
        let _released: i64 = self
            .eval(&RELEASE, &fence.name)
            .arg(holder)
            .arg(fence.token)
            .query_async(&mut self.manager.clone())
            .await?;
        Ok(())
    }

    pub(crate) async fn state(&self, name: &str) -> Result<Option<LeaseState>, LeaseError> {
        let state: Option<(String, i64, i64)> = self
            .eval(&STATE, name)
            .query_async(&mut self.manager.clone())
            .await?;
        Ok(state.map(|(holder, token, remaining_ms)| LeaseState {
            holder,
            token,
            remaining_ms,
        }))
    }

    pub(crate) async fn holds(&self, fence: &Fence) -> Result<bool, LeaseError> {
        let holds: i64 = self
            .eval(&HOLDS, &fence.name)
            .arg(fence.token)
            .query_async(&mut self.manager.clone())
            .await?;
        Ok(holds == 1)
    }

    pub(crate) async fn ping(&self) -> Result<(), LeaseError> {
        let _pong: String = ::redis::cmd("PING")
            .query_async(&mut self.manager.clone())
            .await?;
        Ok(())
    }
}
