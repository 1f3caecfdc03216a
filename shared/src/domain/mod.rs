//! Domain types: values that cannot be constructed invalid.

pub mod api_key;
pub mod bundle;
pub mod catalog;
pub mod coupon;
pub mod customer;
pub mod dunning;
pub mod email;
pub mod interval;
pub mod invoice;
pub mod mode;
pub mod money;
pub mod password;
pub mod period;
pub mod person_name;
pub mod pricing;
pub mod role;
pub mod subscription;
pub mod tax;
pub mod tenant;
pub mod usage;
pub mod webhook;

/// A value that failed to parse, with the reason a client can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ValidationError(pub String);
