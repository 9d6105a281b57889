//! `BENCHMARKS.md` from `herald bench --json` output, so the published table is generated
//! from measurements and never typed by hand.
//!
//! Each figure is shown beside the goal the project set for it (see [`GOALS`]) and, where the
//! same run measured one, beside the machine's raw limit, as a ratio: a limit of the same
//! store and the same broker, so a relay on a real broker is compared with that broker's own
//! raw publish rate.

use std::fmt::Write as _;

use crate::report::{Outcome, Report};

/// A goal: which outcome it applies to and what it asks.
#[derive(Debug, Clone, Copy)]
pub struct Goal {
    /// The scenario.
    pub scenario: &'static str,
    /// A prefix of the case.
    pub case: &'static str,
    /// What is compared.
    pub measure: Measure,
    /// The bound.
    pub bound: f64,
    /// How the goal is written in the table.
    pub text: &'static str,
}

/// The figure a goal bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    /// The main value must be at least the bound.
    AtLeast,
    /// The p99 latency must be at most the bound, in ms.
    P99AtMost,
    /// The peak RSS must be below the bound, in MiB.
    RssBelow,
    /// The cost per event may exceed the same scenario's `without …` case by at most the
    /// bound (a fraction).
    AddedCostAtMost,
    /// The main value must be at least the bound (a fraction) of its limit in the same run.
    FractionOfLimitAtLeast,
}

/// The goals, from the project's issues.
pub const GOALS: &[Goal] = &[
    Goal {
        scenario: "relay",
        case: "drain",
        measure: Measure::AtLeast,
        bound: 10_000.0,
        text: "≥ 10,000 events/s",
    },
    Goal {
        scenario: "relay",
        case: "latency at 1000/s",
        measure: Measure::P99AtMost,
        bound: 50.0,
        text: "p99 ≤ 50 ms at 1,000/s",
    },
    Goal {
        scenario: "inbox",
        case: "with the inbox",
        measure: Measure::AddedCostAtMost,
        bound: 0.20,
        text: "adds ≤ 20% per event",
    },
    Goal {
        scenario: "deliver",
        case: "signed",
        measure: Measure::AtLeast,
        bound: 5_000.0,
        text: "≥ 5,000 deliveries/s",
    },
    Goal {
        scenario: "deliver",
        case: "signed",
        measure: Measure::FractionOfLimitAtLeast,
        bound: 0.70,
        text: "≥ 70% of plain HTTP",
    },
    Goal {
        scenario: "drain",
        case: "",
        measure: Measure::AtLeast,
        bound: 20_000.0,
        text: "≥ 20,000 events/s",
    },
    Goal {
        scenario: "drain",
        case: "",
        measure: Measure::RssBelow,
        bound: 50.0,
        text: "relay RSS < 50 MiB",
    },
];

/// Which limit an outcome is compared with: (scenario, case prefix) of the limit, which must
/// also have the outcome's store and broker.
fn limit_of(outcome: &Outcome) -> Option<(&'static str, &'static str)> {
    match outcome.scenario.as_str() {
        "relay" if outcome.case.starts_with("drain") => Some(("limit", "raw publish")),
        "drain" => Some(("limit", "raw publish")),
        "deliver" => Some(("limit", "plain HTTP")),
        "outbox-write" if outcome.case.starts_with("1 per tx") => {
            Some(("limit", "single-row INSERT"))
        }
        _ => None,
    }
}

/// The limit `outcome` is compared with, when the same run measured it.
fn limit_for<'a>(outcome: &Outcome, all: &[&'a Outcome]) -> Option<&'a Outcome> {
    let (scenario, case) = limit_of(outcome)?;
    all.iter().copied().find(|l| {
        l.scenario == scenario
            && l.case.starts_with(case)
            && l.store == outcome.store
            && l.broker == outcome.broker
    })
}

fn goals_of(outcome: &Outcome) -> Vec<&'static Goal> {
    GOALS
        .iter()
        .filter(|g| g.scenario == outcome.scenario && outcome.case.starts_with(g.case))
        .collect()
}

fn verdict(goal: &Goal, outcome: &Outcome, all: &[&Outcome]) -> &'static str {
    let met = match goal.measure {
        Measure::AddedCostAtMost => all
            .iter()
            .find(|b| {
                b.scenario == outcome.scenario
                    && b.case.starts_with("without")
                    && b.store == outcome.store
                    && b.broker == outcome.broker
            })
            .is_some_and(|baseline| baseline.value / outcome.value - 1.0 <= goal.bound),
        Measure::AtLeast => outcome.value >= goal.bound,
        Measure::FractionOfLimitAtLeast => {
            limit_for(outcome, all).is_some_and(|limit| outcome.value / limit.value >= goal.bound)
        }
        Measure::P99AtMost => outcome.latency.is_some_and(|l| l.p99_ms <= goal.bound),
        Measure::RssBelow => outcome.peak_rss_mib < goal.bound,
    };
    if met { "met" } else { "**missed**" }
}

/// Renders the results table of `reports` (several runs may be combined, e.g. one per store).
pub fn render(reports: &[Report]) -> String {
    let all: Vec<&Outcome> = reports.iter().flat_map(|r| &r.outcomes).collect();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| scenario | case | store | broker | result | p50 ms | p99 ms | max ms | CPU s | RSS MiB | vs. limit | goal |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for o in &all {
        let ms = |f: fn(&crate::stats::Percentiles) -> f64| {
            o.latency
                .as_ref()
                .map_or("–".to_owned(), |p| format!("{:.1}", f(p)))
        };
        let vs_limit = limit_for(o, &all).map_or("–".to_owned(), |limit| {
            format!(
                "{:.0}% of {:.0} {}",
                100.0 * o.value / limit.value,
                limit.value,
                limit.unit
            )
        });
        let goals: Vec<String> = goals_of(o)
            .iter()
            .map(|g| format!("{}: {}", g.text, verdict(g, o, &all)))
            .collect();
        let goal = if goals.is_empty() {
            "–".to_owned()
        } else {
            goals.join("; ")
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.0} {} | {} | {} | {} | {:.1} | {:.0} | {} | {} |",
            o.scenario,
            o.case,
            o.store,
            o.broker,
            o.value,
            o.unit,
            ms(|p| p.p50_ms),
            ms(|p| p.p99_ms),
            ms(|p| p.max_ms),
            o.cpu_seconds,
            o.peak_rss_mib,
            vs_limit,
            goal
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "What each run checked, and its settings:");
    let _ = writeln!(out);
    for o in &all {
        let _ = writeln!(out, "- {}: {}; {}.", o.title(), o.checked, o.settings);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Percentiles;

    fn outcome(scenario: &str, case: &str, value: f64, unit: &str, p99: Option<f64>) -> Outcome {
        on("embedded", scenario, case, value, unit, p99)
    }

    fn on(
        broker: &str,
        scenario: &str,
        case: &str,
        value: f64,
        unit: &str,
        p99: Option<f64>,
    ) -> Outcome {
        Outcome {
            scenario: scenario.into(),
            case: case.into(),
            store: "postgres".into(),
            broker: broker.into(),
            value,
            unit: unit.into(),
            latency: p99.map(|p99_ms| Percentiles {
                count: 10,
                p50_ms: 1.0,
                p90_ms: 2.0,
                p99_ms,
                max_ms: p99_ms + 1.0,
            }),
            cpu_seconds: 1.0,
            peak_rss_mib: 20.0,
            checked: "all".into(),
            settings: "defaults".into(),
        }
    }

    #[test]
    fn shows_goals_verdicts_and_ratios() {
        let mut report = Report::new();
        report.outcomes = vec![
            outcome(
                "limit",
                "raw publish, batches of 500",
                40_000.0,
                "messages/s",
                None,
            ),
            outcome("relay", "drain 100000 events", 20_000.0, "events/s", None),
            outcome(
                "relay",
                "latency at 1000/s",
                1000.0,
                "events/s offered",
                Some(75.0),
            ),
        ];
        let text = render(&[report]);
        assert!(
            text.contains("| 50% of 40000 messages/s | ≥ 10,000 events/s: met |"),
            "{text}"
        );
        assert!(
            text.contains("p99 ≤ 50 ms at 1,000/s: **missed**"),
            "{text}"
        );
    }

    #[test]
    fn a_broker_is_compared_with_its_own_limit() {
        let mut embedded = Report::new();
        embedded.outcomes = vec![outcome(
            "limit",
            "raw publish, batches of 500",
            40_000.0,
            "messages/s",
            None,
        )];
        let mut nats = Report::new();
        nats.outcomes = vec![
            on(
                "nats",
                "limit",
                "raw publish, batches of 500",
                8_000.0,
                "messages/s",
                None,
            ),
            on(
                "nats",
                "relay",
                "drain 20000 events",
                4_000.0,
                "events/s",
                None,
            ),
        ];
        let text = render(&[embedded, nats]);
        assert!(
            text.contains(
                "| nats | 4000 events/s | – | – | – | 1.0 | 20 | 50% of 8000 messages/s |"
            ),
            "{text}"
        );
        assert!(
            text.contains("- relay / drain 20000 events / postgres / nats: all; defaults."),
            "{text}"
        );
    }

    #[test]
    fn deliveries_are_judged_against_plain_http() {
        let mut report = Report::new();
        report.outcomes = vec![
            on(
                "-",
                "limit",
                "plain HTTP POST, concurrency 32",
                10_000.0,
                "requests/s",
                None,
            ),
            on(
                "-",
                "deliver",
                "signed webhooks, concurrency 32",
                6_000.0,
                "deliveries/s",
                None,
            ),
        ];
        let text = render(&[report]);
        assert!(
            text.contains(
                "| 60% of 10000 requests/s | ≥ 5,000 deliveries/s: met; ≥ 70% of plain HTTP: **missed** |"
            ),
            "{text}"
        );
    }
}
