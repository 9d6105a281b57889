//! Classifying answers and backing off.

use std::time::Duration;

use herald_router::outcome::{Backoff, Outcome};

#[test]
fn answers_are_classified_as_documented() {
    let retry = |after| Outcome::Retry { retry_after: after };
    let cases = [
        (200, None, Outcome::Delivered),
        (204, None, Outcome::Delivered),
        (299, None, Outcome::Delivered),
        (301, None, Outcome::Failed),
        (304, None, Outcome::Failed),
        (400, None, Outcome::Failed),
        (404, None, Outcome::Failed),
        (410, None, Outcome::Gone),
        (429, Some("7"), retry(Some(Duration::from_secs(7)))),
        (429, Some("Wed, 21 Oct 2015 07:28:00 GMT"), retry(None)),
        (429, Some("-3"), retry(None)),
        (500, None, retry(None)),
        (503, Some(" 120 "), retry(Some(Duration::from_secs(120)))),
        (599, None, retry(None)),
        (600, None, Outcome::Failed),
    ];
    for (status, header, expected) in cases {
        assert_eq!(
            Outcome::of_status(status, header),
            expected,
            "{status} {header:?}"
        );
    }
}

#[test]
fn backoff_doubles_with_full_jitter_and_honours_retry_after() {
    let backoff = Backoff {
        base: Duration::from_secs(1),
        max: Duration::from_secs(60),
    };
    let top: Vec<Duration> = (1..=8).map(|n| backoff.delay(n, 0.999_999, None)).collect();
    let secs: Vec<u64> = top.iter().map(|d| d.as_secs_f64().round() as u64).collect();
    assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60]);
    assert_eq!(
        backoff.delay(3, 0.0, None),
        Duration::ZERO,
        "full jitter reaches zero"
    );
    assert_eq!(backoff.delay(3, 0.5, None), Duration::from_secs(2));
    assert_eq!(backoff.delay(u32::MAX, 0.5, None), Duration::from_secs(30));
    assert_eq!(
        backoff.delay(1, 0.5, Some(Duration::from_secs(20))),
        Duration::from_secs(20),
        "Retry-After longer than the backoff wins"
    );
    assert_eq!(
        backoff.delay(1, 0.5, Some(Duration::from_secs(86_400))),
        Duration::from_secs(60),
        "but never past max"
    );
    assert_eq!(
        backoff.delay(7, 1.0, Some(Duration::from_secs(1))),
        Duration::from_secs(60)
    );
}
