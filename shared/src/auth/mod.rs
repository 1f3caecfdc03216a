//! Authentication primitives: password hashing and JSON Web Tokens.

pub mod jwt;
pub mod password;
