//! The tenant's users: invited with a role, changed and deactivated by owners and admins, under
//! rules the permission table cannot express (admins do not touch owners, nobody demotes or
//! deactivates themselves, a tenant keeps an active owner).

use sqlx::PgPool;

use super::{ServiceError, ServiceResult, sessions::PasswordHash};
use crate::{
    db::{
        self, DbError,
        events::NewEvent,
        pagination::{Page, PageRequest},
        users::{NewUser, UserChanges},
    },
    domain::{email::Email, person_name::PersonName, role::Role},
    ids::UserId,
    tenancy::TenantContext,
    uow::UnitOfWork,
};

/// What the operations of this module return.
pub use crate::db::users::UserRow;

const WHAT: &str = "user";

/// Records an event about a user; users belong to both modes, so it is recorded in each.
async fn record_event(
    uow: &mut UnitOfWork,
    ctx: &TenantContext,
    event_type: &str,
    row: &UserRow,
) -> ServiceResult<()> {
    let now = uow.now();
    db::events::record_tenant_wide(
        uow.conn(),
        ctx.tenant_id,
        NewEvent::new(event_type, row.to_json()),
        now,
    )
    .await?;
    Ok(())
}

pub async fn list(
    pool: &PgPool,
    ctx: &TenantContext,
    page: PageRequest,
) -> ServiceResult<Page<UserRow>> {
    Ok(db::users::list(pool, ctx, page).await?)
}

pub async fn get(pool: &PgPool, ctx: &TenantContext, id: UserId) -> ServiceResult<UserRow> {
    db::users::get(pool, ctx, id)
        .await
        .map_err(ServiceError::not_found(WHAT))
}

/// Who to invite.
pub struct Invitation<'a> {
    pub email: &'a Email,
    pub password: &'a PasswordHash,
    pub role: Role,
    pub first_name: Option<&'a PersonName>,
    pub last_name: Option<&'a PersonName>,
}

/// Adds a user to the caller's tenant. Only an owner may add another owner.
pub async fn invite(
    uow: &mut UnitOfWork,
    ctx: &TenantContext,
    who: Invitation<'_>,
) -> ServiceResult<UserRow> {
    if who.role == Role::Owner && ctx.role() != Some(Role::Owner) {
        return Err(ServiceError::Forbidden {
            code: "permission_denied",
            message: "Only an owner can add an owner.".into(),
        });
    }
    let now = uow.now();
    let row = db::users::create(
        uow.conn(),
        ctx,
        NewUser {
            id: UserId::new(),
            email: who.email.as_str(),
            password_hash: who.password.as_str(),
            first_name: who.first_name.map_or("", PersonName::as_str),
            last_name: who.last_name.map_or("", PersonName::as_str),
            role: who.role,
        },
        now,
    )
    .await
    .map_err(|e| match e {
        DbError::UniqueViolation(c) if c == "users_email_key" => ServiceError::Conflict {
            code: "email_taken",
            field: Some("email".into()),
            message: "An account with this email already exists.".into(),
        },
        other => other.into(),
    })?;
    record_event(uow, ctx, "user.created", &row).await?;
    Ok(row)
}

/// Changes to a user (`None`: unchanged).
#[derive(Debug, Default)]
pub struct UserUpdate<'a> {
    pub role: Option<Role>,
    /// `Some(false)` deactivates: the user can no longer log in and their tokens stop working.
    pub is_active: Option<bool>,
    pub first_name: Option<&'a PersonName>,
    pub last_name: Option<&'a PersonName>,
}

/// Rules beyond the permission table: admins cannot touch owners or make them; nobody changes
/// their own role or deactivates themselves.
fn check_target(
    ctx: &TenantContext,
    target: &UserRow,
    new_role: Option<Role>,
    deactivate: bool,
) -> ServiceResult<()> {
    if ctx.role() == Some(Role::Admin)
        && (target.role() == Role::Owner || new_role == Some(Role::Owner))
    {
        return Err(ServiceError::Forbidden {
            code: "permission_denied",
            message: "Only an owner can change owners or make someone an owner.".into(),
        });
    }
    if ctx.user_id() == Some(target.id)
        && (deactivate || new_role.is_some_and(|r| r != target.role()))
    {
        return Err(ServiceError::conflict(
            "cannot_modify_self",
            "You cannot change your own role or deactivate yourself.",
        ));
    }
    Ok(())
}

/// Changes a user's role, names or active flag. A tenant keeps at least one active owner:
/// changes to one tenant's users are serialised, and a change that would leave none is refused
/// (`last_owner`) with nothing written.
pub async fn update(
    uow: &mut UnitOfWork,
    ctx: &TenantContext,
    id: UserId,
    changes: UserUpdate<'_>,
) -> ServiceResult<UserRow> {
    let now = uow.now();
    db::users::lock_tenant_users(uow.conn(), ctx).await?;
    let target = db::users::get(uow.conn(), ctx, id)
        .await
        .map_err(ServiceError::not_found(WHAT))?;
    check_target(ctx, &target, changes.role, changes.is_active == Some(false))?;
    let row = db::users::update(
        uow.conn(),
        ctx,
        id,
        UserChanges {
            role: changes.role,
            is_active: changes.is_active,
            first_name: changes.first_name.map(PersonName::as_str),
            last_name: changes.last_name.map(PersonName::as_str),
        },
        now,
    )
    .await
    .map_err(ServiceError::not_found(WHAT))?;
    if db::users::active_owners(uow.conn(), ctx).await? == 0 {
        return Err(ServiceError::conflict(
            "last_owner",
            "A tenant must keep at least one active owner.",
        ));
    }
    record_event(uow, ctx, "user.updated", &row).await?;
    Ok(row)
}

/// Deactivates a user (the record is kept).
pub async fn deactivate(
    uow: &mut UnitOfWork,
    ctx: &TenantContext,
    id: UserId,
) -> ServiceResult<UserRow> {
    update(
        uow,
        ctx,
        id,
        UserUpdate {
            is_active: Some(false),
            ..Default::default()
        },
    )
    .await
}
