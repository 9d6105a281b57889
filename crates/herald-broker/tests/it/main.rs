//! The broker backends against real databases: the shared conformance suite on every backend,
//! and what only the embedded backend offers.

#![allow(clippy::unwrap_used)]

mod conformance;
mod embedded;

conformance::conformance_suite!(embedded_postgres, crate::embedded::on_postgres);
conformance::conformance_suite!(embedded_sqlite, crate::embedded::on_sqlite);
