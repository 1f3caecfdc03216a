//! Who is calling, for which tenant, in which mode, and what they may do.
//!
//! Every repository function for tenant data takes a [`TenantContext`] first and filters by its
//! tenant and mode; handlers get one only from the authentication layer.

use crate::{
    domain::{api_key::KeyKind, mode::Mode, role::Role},
    ids::{ApiKeyId, TenantId, UserId},
};

/// The credential behind a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// A dashboard user with a JWT.
    User { id: UserId, role: Role },
    /// An API key; `display` is its prefix and last four (`sk_test_…abcd`).
    ApiKey {
        id: ApiKeyId,
        kind: KeyKind,
        display: String,
    },
}

impl Actor {
    /// How the audit log names this actor (never a secret).
    pub fn audit_name(&self) -> String {
        match self {
            Actor::User { id, .. } => id.to_string(),
            Actor::ApiKey { display, .. } => display.clone(),
        }
    }
}

/// What a request may do, by endpoint group. The table in the README mirrors [`TenantContext::can`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Tenant details and key verification.
    ReadTenant,
    /// List and read the tenant's users.
    ReadUsers,
    /// Invite users, change roles, deactivate.
    ManageUsers,
    /// List, regenerate and revoke API keys; read the audit log.
    ManageApiKeys,
    /// Own profile and password (users only).
    OwnAccount,
    /// Read billing resources (customers, plans, invoices…).
    ReadBilling,
    /// Create and change billing resources.
    WriteBilling,
    /// Create, change and delete webhook endpoints; redeliver events.
    ManageWebhooks,
    /// Connect and disconnect the tenant's Stripe account (owners and admins).
    ManageStripe,
}

/// A tenant and a mode: where tenant-owned rows live. Every query for tenant data filters by
/// both; a [`TenantContext`] gives one, and so does a job for the tenant that queued it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Scope {
    pub(crate) tenant_id: TenantId,
    pub(crate) livemode: bool,
}

impl Scope {
    pub fn tenant_id(&self) -> TenantId {
        self.tenant_id
    }

    pub fn livemode(&self) -> bool {
        self.livemode
    }
}

/// The authenticated caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantContext {
    pub(crate) tenant_id: TenantId,
    pub(crate) mode: Mode,
    pub(crate) actor: Actor,
}

impl TenantContext {
    pub fn tenant_id(&self) -> TenantId {
        self.tenant_id
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn actor(&self) -> &Actor {
        &self.actor
    }

    pub fn livemode(&self) -> bool {
        self.mode.livemode()
    }

    pub fn scope(&self) -> Scope {
        self.scope_for(self.mode)
    }

    /// The tenant's scope in `mode`, for what belongs to the tenant in both modes (users, keys)
    /// and is recorded in each.
    pub fn scope_for(&self, mode: Mode) -> Scope {
        Scope {
            tenant_id: self.tenant_id,
            livemode: mode.livemode(),
        }
    }

    /// The role a user holds; `None` for API keys.
    pub fn role(&self) -> Option<Role> {
        match &self.actor {
            Actor::User { role, .. } => Some(*role),
            Actor::ApiKey { .. } => None,
        }
    }

    pub fn user_id(&self) -> Option<UserId> {
        match &self.actor {
            Actor::User { id, .. } => Some(*id),
            Actor::ApiKey { .. } => None,
        }
    }

    /// The permission matrix.
    pub fn can(&self, p: Permission) -> bool {
        use Permission::*;
        match &self.actor {
            Actor::ApiKey {
                kind: KeyKind::Publishable,
                ..
            } => matches!(p, ReadTenant),
            Actor::ApiKey {
                kind: KeyKind::Secret,
                ..
            } => {
                matches!(
                    p,
                    ReadTenant | ReadUsers | ReadBilling | WriteBilling | ManageWebhooks
                )
            }
            Actor::User { role, .. } => match role {
                Role::Owner | Role::Admin => true,
                Role::Developer => !matches!(p, ManageUsers | ManageApiKeys | ManageStripe),
                Role::Billing => matches!(p, ReadTenant | ReadUsers | OwnAccount | ReadBilling),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(role: Role) -> TenantContext {
        TenantContext {
            tenant_id: TenantId::new(),
            mode: Mode::Test,
            actor: Actor::User {
                id: UserId::new(),
                role,
            },
        }
    }

    fn key(kind: KeyKind) -> TenantContext {
        TenantContext {
            tenant_id: TenantId::new(),
            mode: Mode::Test,
            actor: Actor::ApiKey {
                id: ApiKeyId::new(),
                kind,
                display: "sk_test_…abcd".into(),
            },
        }
    }

    #[test]
    fn only_owners_and_admins_manage_users_and_keys() {
        for role in [Role::Owner, Role::Admin] {
            assert!(user(role).can(Permission::ManageUsers));
            assert!(user(role).can(Permission::ManageApiKeys));
        }
        for role in [Role::Developer, Role::Billing] {
            assert!(!user(role).can(Permission::ManageUsers));
            assert!(!user(role).can(Permission::ManageApiKeys));
        }
        assert!(!key(KeyKind::Secret).can(Permission::ManageApiKeys));
    }

    #[test]
    fn only_owners_and_admins_manage_the_stripe_connection() {
        for role in [Role::Owner, Role::Admin] {
            assert!(user(role).can(Permission::ManageStripe));
        }
        for role in [Role::Developer, Role::Billing] {
            assert!(!user(role).can(Permission::ManageStripe));
        }
        assert!(!key(KeyKind::Secret).can(Permission::ManageStripe));
    }

    #[test]
    fn billing_role_is_read_only() {
        let b = user(Role::Billing);
        assert!(b.can(Permission::ReadBilling));
        assert!(!b.can(Permission::WriteBilling));
    }

    #[test]
    fn publishable_keys_can_only_read_the_tenant() {
        let pk = key(KeyKind::Publishable);
        assert!(pk.can(Permission::ReadTenant));
        assert!(!pk.can(Permission::ReadUsers));
        assert!(!pk.can(Permission::WriteBilling));
    }
}
