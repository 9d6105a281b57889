//! The broker backends against real servers: the shared conformance suite on every backend,
//! the log contract on every real broker, and what only one backend offers.

#![allow(clippy::unwrap_used)]

mod conformance;
mod embedded;
mod kafka;
mod log_brokers;
mod log_contract;
mod memory_log;
mod nats;
mod rabbitmq;
mod redis;
mod restart;
mod tidy;

conformance::conformance_suite!(embedded_postgres, crate::embedded::on_postgres);
conformance::conformance_suite!(embedded_sqlite, crate::embedded::on_sqlite);
conformance::conformance_suite!(log_on_memory, crate::log_brokers::on_memory);
conformance::conformance_suite!(log_on_nats, crate::log_brokers::on_nats);
conformance::conformance_suite!(log_on_redis, crate::log_brokers::on_redis);
conformance::conformance_suite!(log_on_rabbitmq, crate::log_brokers::on_rabbitmq);
conformance::conformance_suite!(log_on_kafka, crate::log_brokers::on_kafka);
log_contract::log_suite!(memory_log_contract, crate::memory_log::log);
