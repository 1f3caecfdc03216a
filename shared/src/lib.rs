//! Shared library of the billing platform: domain types, configuration, database access,
//! authentication primitives and rate limiting, used by both `api` and `worker`.

pub mod auth;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod db;
pub mod domain;
pub mod health;
pub mod ids;
pub mod jobs;
pub mod metrics;
pub mod payments;
pub mod pdf;
pub mod ratelimit;
pub mod secret;
pub mod service;
pub mod status;
pub mod stripe;
pub mod tenancy;
pub mod uow;
