//! Version 1 of the users service's HTTP API.

pub mod users;
