//! The circuit breaker under tokio's paused clock.

use std::time::Duration;

use herald_router::breaker::{Breaker, BreakerOptions, BreakerState};

fn options() -> BreakerOptions {
    BreakerOptions {
        threshold: 3,
        cooldown: Duration::from_secs(5),
        max_cooldown: Duration::from_secs(12),
    }
}

#[tokio::test(start_paused = true)]
async fn opens_after_the_threshold_and_probes_after_the_cooldown() {
    let mut breaker = Breaker::new(options());
    for _ in 0..2 {
        breaker.allow().unwrap();
        breaker.failed();
    }
    breaker.succeeded();
    for _ in 0..2 {
        breaker.failed();
    }
    assert_eq!(
        breaker.state(),
        BreakerState::Closed,
        "a success resets the count"
    );
    breaker.failed();
    assert!(matches!(breaker.state(), BreakerState::Open { .. }));
    assert_eq!(breaker.allow(), Err(Duration::from_secs(5)));

    tokio::time::advance(Duration::from_secs(5)).await;
    breaker.allow().unwrap();
    assert_eq!(breaker.state(), BreakerState::HalfOpen);
    assert_eq!(breaker.allow(), Err(Duration::ZERO), "one probe at a time");
    breaker.succeeded();
    assert_eq!(breaker.state(), BreakerState::Closed);
    breaker.allow().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_doubles_the_cooldown_up_to_the_maximum() {
    let mut breaker = Breaker::new(options());
    for _ in 0..3 {
        breaker.failed();
    }
    for expected in [10, 12, 12] {
        let wait = breaker.allow().unwrap_err();
        tokio::time::advance(wait).await;
        breaker.allow().unwrap();
        breaker.failed();
        assert_eq!(breaker.allow(), Err(Duration::from_secs(expected)));
    }
    let wait = breaker.allow().unwrap_err();
    tokio::time::advance(wait).await;
    breaker.allow().unwrap();
    breaker.succeeded();
    for _ in 0..3 {
        breaker.failed();
    }
    assert_eq!(
        breaker.allow(),
        Err(Duration::from_secs(5)),
        "a success resets the cooldown"
    );
}

#[tokio::test(start_paused = true)]
async fn an_abandoned_probe_lets_another_go_at_once() {
    let mut breaker = Breaker::new(options());
    for _ in 0..3 {
        breaker.failed();
    }
    tokio::time::advance(Duration::from_secs(5)).await;
    breaker.allow().unwrap();
    assert_eq!(breaker.state(), BreakerState::HalfOpen);
    breaker.abandoned();
    breaker
        .allow()
        .expect("an abandoned probe said nothing: the next call probes");
    assert_eq!(breaker.state(), BreakerState::HalfOpen);
    breaker.succeeded();
    breaker.abandoned();
    assert_eq!(
        breaker.state(),
        BreakerState::Closed,
        "abandoning changes nothing but a probe"
    );
}
