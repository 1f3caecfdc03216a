use super::ValidationError;

/// A user's role inside its tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Owner,
    Admin,
    Developer,
    /// Read-only access to billing data.
    Billing,
}

impl Role {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        match raw {
            "owner" => Ok(Role::Owner),
            "admin" => Ok(Role::Admin),
            "developer" => Ok(Role::Developer),
            "billing" => Ok(Role::Billing),
            _ => Err(ValidationError(
                "must be one of owner, admin, developer, billing".into(),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Developer => "developer",
            Role::Billing => "billing",
        }
    }
}
