//! `drain`: a relay running as its own process drains a large backlog (1M events by default).
//!
//! The backlog is written first (not timed). Then `herald serve` is started with only the
//! relay role against the same database and the run's broker, and the clock runs until the
//! outbox is empty. CPU and peak memory are those of the relay process alone. Afterwards the
//! broker is read back, outside the timed part, to check that every committed event arrived
//! exactly once and each key's events in commit order: a real broker through a consumer
//! group; the embedded queue by reading its table directly in publish order (fine for a
//! benchmark, and far quicker than consuming a million messages).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use herald_broker::Broker;
use herald_store::Store;

use super::outbox_write::{count_outbox, prefill};
use super::{KEYS, Options, Progress, outcome};
use crate::broker::{GROUP, read_back, unique_topic};
use crate::report::Outcome;
use crate::target::Target;

/// The embedded queue's topic; a real broker's is new on each run.
const TOPIC: &str = "bench.drain";
const BATCH: usize = 500;

/// Runs the scenario.
pub async fn run(options: &Options) -> anyhow::Result<Vec<Outcome>> {
    let target = Target::create(options.engine, &options.postgres_url, 4).await?;
    herald_store::migrate::migrate(
        &target.store,
        &[
            &herald_outbox::MIGRATIONS,
            &herald_leader::MIGRATIONS,
            options.broker.migrations(),
        ],
    )
    .await?;
    let (target, broker) = options.broker.open(target).await?;
    let topic = if options.broker.is_embedded() {
        TOPIC.to_owned()
    } else {
        unique_topic("drain")
    };
    let result = options
        .broker
        .deleting_topic_after(
            broker.as_ref(),
            &topic,
            drain(options, &target, broker.as_ref(), &topic),
        )
        .await?;
    target.finish().await?;
    Ok(vec![result])
}

async fn drain(
    options: &Options,
    target: &Target,
    broker: &dyn Broker,
    topic: &str,
) -> anyhow::Result<Outcome> {
    let group = options.broker.group_before(broker, topic).await?;
    let committed = prefill(&target.store, options.drain_events, 1000).await?;

    let serve = options.broker.serve_with();
    let dir = std::env::temp_dir().join(format!("herald-drain-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("herald.toml");
    let mut file = std::fs::File::create(&config)?;
    write!(
        file,
        "roles = [\"relay\"]\n[http]\nlisten = \"127.0.0.1:0\"\n[log]\nfilter = \"warn\"\n[store]\nurl = \"{}\"\nauto_migrate = false\n[relay]\ntopic = \"{topic}\"\nbatch_size = {BATCH}\n[broker]\n{}",
        target.url, serve.section
    )?;
    drop(file);

    let exe = std::env::current_exe().context("cannot find the herald binary")?;
    let started = Instant::now();
    let mut command = Command::new(exe);
    command
        .args(["serve", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    for (name, value) in &serve.env {
        command.env(name, value.expose());
    }
    let mut child = command.spawn().context("cannot start the relay process")?;
    let pid = child.id();
    let result = async {
        wait_until_listening(&mut child)?;
        let mut progress = Progress::new("relay process draining", Some(committed.len() as u64));
        let give_up = Instant::now() + Duration::from_secs(1800);
        let mut last_count = Instant::now();
        // A cheap "anything left?" probe every 20 ms; a full count (which scans the table and
        // would slow the relay down if done often) only every 2 s, for the progress line.
        while !outbox_is_empty(&target.store).await? {
            if last_count.elapsed() >= Duration::from_secs(2) {
                let left = count_outbox(&target.store).await?;
                progress.update(committed.len() as u64 - left as u64);
                last_count = Instant::now();
            }
            anyhow::ensure!(
                child.try_wait()?.is_none(),
                "the relay process exited early"
            );
            anyhow::ensure!(
                Instant::now() < give_up,
                "the relay process did not drain the backlog within 30 minutes"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        progress.finish();
        Ok((started.elapsed(), crate::process::usage_of(pid)))
    }
    .await;
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let exited = wait_bounded(&mut child, Duration::from_secs(30));
    let _ = std::fs::remove_dir_all(&dir);
    let (elapsed, usage) = result?;
    anyhow::ensure!(
        exited,
        "the relay process did not stop within 30 s of SIGTERM"
    );

    let checked = if options.broker.is_embedded() {
        check_table(&target.store, &committed).await?
    } else {
        check_read_back(broker, topic, &committed).await?
    };
    drop(group);
    let before = crate::process::Usage::default();
    let mut result = outcome(
        "drain",
        format!("{} events, relay process", committed.len()),
        options.engine,
        options.broker.name(),
        committed.len() as f64 / elapsed.as_secs_f64(),
        "events/s",
        None,
        before,
        checked,
        options.broker.settings(&format!(
            "batch {BATCH}, {KEYS} keys; {}",
            target.durability
        )),
    );
    // The relay process's own figures, not this process's.
    result.cpu_seconds = usage.cpu.as_secs_f64();
    result.peak_rss_mib = usage.peak_rss_bytes as f64 / (1024.0 * 1024.0);
    Ok(result)
}

async fn outbox_is_empty(store: &Store) -> anyhow::Result<bool> {
    let sql = "SELECT NOT EXISTS (SELECT 1 FROM herald_outbox)";
    Ok(match store {
        Store::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await?,
        Store::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await?,
    })
}

fn wait_until_listening(child: &mut std::process::Child) -> anyhow::Result<()> {
    let stdout = child
        .stdout
        .take()
        .context("the relay's stdout is not piped")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("listening on") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .context("the relay process did not start within 30 s")
}

fn wait_bounded(child: &mut std::process::Child, limit: Duration) -> bool {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

/// Reads the real broker's topic back through the checking group.
async fn check_read_back(
    broker: &dyn Broker,
    topic: &str,
    committed: &[String],
) -> anyhow::Result<String> {
    let received = read_back(broker, topic, committed.len()).await?;
    let keys = super::check_order(
        committed,
        received.iter().map(|m| (m.id.as_str(), m.key.as_deref())),
    )
    .context("reading the topic back through a consumer group")?;
    Ok(format!(
        "{}/{} read back once each through a consumer group, order kept on {keys} keys",
        received.len(),
        committed.len()
    ))
}

/// Reads the embedded queue's table for the checking group, in publish order.
async fn check_table(store: &Store, committed: &[String]) -> anyhow::Result<String> {
    let rows: Vec<(String, Option<String>)> = match store {
        Store::Postgres(pool) => {
            sqlx::query_as("SELECT message_id, partition_key FROM herald_queue_messages WHERE topic = $1 AND grp = $2 ORDER BY seq")
                .bind(TOPIC)
                .bind(GROUP)
                .fetch_all(pool)
                .await?
        }
        Store::Sqlite(pool) => {
            sqlx::query_as("SELECT message_id, partition_key FROM herald_queue_messages WHERE topic = ?1 AND grp = ?2 ORDER BY seq")
                .bind(TOPIC)
                .bind(GROUP)
                .fetch_all(pool)
                .await?
        }
    };
    let keys = super::check_order(
        committed,
        rows.iter().map(|(id, key)| (id.as_str(), key.as_deref())),
    )?;
    Ok(format!(
        "{}/{} queued once each, order kept on {keys} keys",
        rows.len(),
        committed.len()
    ))
}
