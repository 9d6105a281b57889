//! The token bucket under tokio's paused clock: rates are checked exactly, with no dependence
//! on how busy the machine is.

use std::sync::Arc;
use std::time::Duration;

use herald_router::limit::{RateLimit, RateLimitError, TokenBucket};
use tokio::time::Instant;

fn limit(per_second: f64, burst: u32) -> RateLimit {
    RateLimit { per_second, burst }
}

/// Takes tokens as fast as allowed until `window` after `start` and returns how many.
async fn taken_within(bucket: &TokenBucket, start: Instant, window: Duration) -> u64 {
    let mut taken = 0_u64;
    while Instant::now() < start + window {
        bucket.acquire().await;
        taken += 1;
        assert!(taken < 10_000_000, "the bucket never ran dry");
    }
    taken
}

#[tokio::test(start_paused = true)]
async fn holds_the_rate_over_ten_seconds() {
    // Timers fire on millisecond ticks, so a burst of at least 10 ms worth of tokens is what
    // a pool needs to reach high rates; 8 callers share the bucket as a pool's workers do.
    for per_second in [1.0, 50.0, 333.0, 5000.0] {
        let burst = ((per_second / 100.0) as u32).max(1);
        let bucket = Arc::new(TokenBucket::new(limit(per_second, burst)).unwrap());
        let start = Instant::now();
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let bucket = bucket.clone();
            workers
                .spawn(async move { taken_within(&bucket, start, Duration::from_secs(10)).await });
        }
        let mut taken = 0;
        while let Some(count) = workers.join_next().await {
            taken += count.unwrap();
        }
        // Each worker's last token may fall just past the window; the first burst is free.
        let expected = per_second * 10.0 + f64::from(burst);
        let taken = taken as f64;
        assert!(
            (taken - expected).abs() <= expected * 0.05 + 8.0,
            "{per_second}/s: {taken} in 10 s, expected {expected} ± 5%"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn allows_a_burst_after_a_quiet_spell_and_no_more() {
    let bucket = TokenBucket::new(limit(10.0, 5)).unwrap();
    for _ in 0..5 {
        bucket.try_acquire().unwrap();
    }
    let wait = bucket.try_acquire().unwrap_err();
    assert_eq!(wait, Duration::from_millis(100));
    tokio::time::advance(Duration::from_secs(60)).await;
    for _ in 0..5 {
        bucket.try_acquire().unwrap();
    }
    assert!(
        bucket.try_acquire().is_err(),
        "a quiet minute saves only `burst` tokens"
    );
}

#[tokio::test(start_paused = true)]
async fn a_new_limit_applies_to_waiting_callers() {
    let bucket = Arc::new(TokenBucket::new(limit(1.0, 1)).unwrap());
    bucket.try_acquire().unwrap();
    bucket.set(limit(100.0, 1)).unwrap();
    let taken = taken_within(&bucket, Instant::now(), Duration::from_secs(1)).await;
    assert!((95..=101).contains(&taken), "{taken} at 100/s");
    assert_eq!(bucket.limit(), limit(100.0, 1));

    let err = bucket.set(limit(0.0, 1)).unwrap_err();
    assert_eq!(err, RateLimitError::PerSecond);
    assert_eq!(
        bucket.limit(),
        limit(100.0, 1),
        "a bad limit changes nothing"
    );
}

#[test]
fn bad_limits_are_refused() {
    for (per_second, burst, expected) in [
        (0.0, 1, RateLimitError::PerSecond),
        (-1.0, 1, RateLimitError::PerSecond),
        (f64::NAN, 1, RateLimitError::PerSecond),
        (f64::INFINITY, 1, RateLimitError::PerSecond),
        (1.0, 0, RateLimitError::Burst),
        (1.0, 1_000_001, RateLimitError::Burst),
    ] {
        assert_eq!(
            TokenBucket::new(limit(per_second, burst)).unwrap_err(),
            expected,
            "{per_second}/s burst {burst}"
        );
    }
}
