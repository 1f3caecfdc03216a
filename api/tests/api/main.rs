//! Integration tests: the API on a random port over a fresh database per test, a fresh Redis
//! key prefix, real PostgreSQL and Redis.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod api_keys;
mod auth;
mod billing_runs;
mod catalog;
mod compose;
mod coupons;
mod credit_notes;
mod customers;
mod dunning;
mod errors;
mod events;
mod health;
mod helpers;
mod idempotency;
mod invoices;
mod one_off_invoices;
mod openapi;
mod outages;
mod permissions;
mod plans;
mod rate_limits;
mod startup;
mod stripe_events;
mod subscriptions;
mod tax_rates;
mod tenancy;
mod test_clocks;
mod usage;
mod users;
mod webhooks;
