//! Benchmark results: one [`Outcome`] per measured figure, printed as a table or JSON.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::stats::Percentiles;

/// One measured figure.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    /// The scenario, e.g. `relay`.
    pub scenario: String,
    /// What exactly was measured, e.g. `throughput` or `latency at 1000/s`.
    pub case: String,
    /// `postgres` or `sqlite`.
    pub store: String,
    /// The broker, e.g. `embedded`, or `-`.
    pub broker: String,
    /// The main figure.
    pub value: f64,
    /// Its unit, e.g. `events/s`.
    pub unit: String,
    /// Latency percentiles, where measured.
    pub latency: Option<Percentiles>,
    /// CPU seconds used by this process during the case.
    pub cpu_seconds: f64,
    /// Peak resident memory of this process so far, in MiB.
    pub peak_rss_mib: f64,
    /// What the scenario verified, e.g. `100000/100000 published, order kept on 100 keys`.
    pub checked: String,
    /// Settings that matter for reading the figure (durability, batch size …).
    pub settings: String,
}

impl Outcome {
    /// `scenario / case / store`, and the broker where there is one, e.g.
    /// `relay / drain 100000 events / postgres / nats`.
    pub fn title(&self) -> String {
        let mut title = format!("{} / {} / {}", self.scenario, self.case, self.store);
        if self.broker != "-" {
            title.push_str(" / ");
            title.push_str(&self.broker);
        }
        title
    }
}

/// A whole run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// The Herald version that ran it.
    pub version: String,
    /// Logical CPUs of the machine.
    pub cpus: usize,
    /// The results.
    pub outcomes: Vec<Outcome>,
}

impl Report {
    /// An empty report for this machine.
    pub fn new() -> Self {
        Self {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            cpus: std::thread::available_parallelism().map_or(1, usize::from),
            outcomes: Vec::new(),
        }
    }

    /// The results as an aligned text table.
    pub fn table(&self) -> String {
        let mut rows = vec![[
            "scenario".to_owned(),
            "case".to_owned(),
            "store".to_owned(),
            "broker".to_owned(),
            "result".to_owned(),
            "p50 ms".to_owned(),
            "p90 ms".to_owned(),
            "p99 ms".to_owned(),
            "max ms".to_owned(),
            "cpu s".to_owned(),
            "rss MiB".to_owned(),
        ]];
        for o in &self.outcomes {
            let ms = |f: fn(&Percentiles) -> f64| {
                o.latency
                    .as_ref()
                    .map_or("-".to_owned(), |p| format!("{:.1}", f(p)))
            };
            rows.push([
                o.scenario.clone(),
                o.case.clone(),
                o.store.clone(),
                o.broker.clone(),
                format!("{:.0} {}", o.value, o.unit),
                ms(|p| p.p50_ms),
                ms(|p| p.p90_ms),
                ms(|p| p.p99_ms),
                ms(|p| p.max_ms),
                format!("{:.1}", o.cpu_seconds),
                format!("{:.0}", o.peak_rss_mib),
            ]);
        }
        let widths: Vec<usize> = (0..rows[0].len())
            .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for row in &rows {
            let line: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(cell, width)| format!("{cell:<width$}"))
                .collect();
            let _ = writeln!(out, "{}", line.join("  ").trim_end());
        }
        for o in &self.outcomes {
            let _ = writeln!(
                out,
                "\n{}: checked {}; {}",
                o.title(),
                o.checked,
                o.settings
            );
        }
        out
    }
}

impl Default for Report {
    fn default() -> Self {
        Self::new()
    }
}
