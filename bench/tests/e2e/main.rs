//! Worker integration tests: real PostgreSQL and Redis, the API in-process, workers in-process
//! or as processes, and a webhook receiver on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod billing;
mod delivery;
mod helpers;
mod leases;
mod process;
mod redis_footprint;
mod resilience;
mod stripe;
mod stripe_fake;
