//! The tenant's users (`/api/v1/users`): everyone may read, owners and admins manage.

use poem::Request;
use poem_openapi::{ApiResponse, Object, OpenApi, param::Path, param::Query, payload::Json};
use serde::Deserialize;
use shared::{
    db::{
        self, DbError,
        users::{NewUser, UserChanges},
    },
    domain::{email::Email, password::NewPassword, person_name::PersonName, role::Role},
    ids::UserId,
    tenancy::{Permission, TenantContext},
};

use super::{
    ApiTags,
    dto::{UserOut, page_request},
};
use crate::{
    auth::Auth, body::JsonBody, error::ApiError, middleware::note, state::AppState, work::Work,
};

pub struct UsersApi;

#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct UserIn {
    pub email: String,
    /// Initial password (at least 10 characters); the user should change it.
    pub password: String,
    /// `admin`, `developer` or `billing` (only an owner may add another `owner`).
    pub role: String,
    /// At most 100 characters, no control characters.
    #[oai(nullable)]
    pub first_name: Option<String>,
    /// At most 100 characters, no control characters.
    #[oai(nullable)]
    pub last_name: Option<String>,
}

#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct UserPatch {
    #[oai(nullable)]
    pub role: Option<String>,
    /// `false` deactivates the user: they can no longer log in and their tokens stop working.
    #[oai(nullable)]
    pub is_active: Option<bool>,
    /// At most 100 characters, no control characters.
    #[oai(nullable)]
    pub first_name: Option<String>,
    /// At most 100 characters, no control characters.
    #[oai(nullable)]
    pub last_name: Option<String>,
}

#[derive(Debug, Object)]
pub struct UserList {
    pub data: Vec<UserOut>,
    pub has_more: bool,
}

#[derive(ApiResponse)]
pub enum CreatedUser {
    /// The user was created.
    #[oai(status = 201)]
    Created(Json<UserOut>),
}

fn parse_user_id(raw: &str) -> Result<UserId, ApiError> {
    UserId::parse(raw).map_err(|_| ApiError::not_found("user"))
}

/// A first or last name if one was given.
fn name(v: Option<&str>, field: &str) -> Result<Option<PersonName>, ApiError> {
    v.map(PersonName::parse)
        .transpose()
        .map_err(ApiError::invalid(field))
}

/// Rules beyond the role matrix: admins cannot touch owners or create them; nobody changes
/// their own role or deactivates themselves.
fn check_target(
    ctx: &TenantContext,
    target_id: UserId,
    target_role: Role,
    new_role: Option<Role>,
    deactivate: bool,
) -> Result<(), ApiError> {
    let me = ctx.role();
    if me == Some(Role::Admin) && (target_role == Role::Owner || new_role == Some(Role::Owner)) {
        return Err(ApiError::forbidden(
            "permission_denied",
            "Only an owner can change owners or make someone an owner.",
        ));
    }
    if ctx.user_id() == Some(target_id)
        && (deactivate || new_role.is_some_and(|r| r != target_role))
    {
        return Err(ApiError::conflict(
            "cannot_modify_self",
            "You cannot change your own role or deactivate yourself.",
        ));
    }
    Ok(())
}

fn map_update_err(e: DbError) -> ApiError {
    match e {
        DbError::UniqueViolation(c) if c == "last_owner" => ApiError::conflict(
            "last_owner",
            "A tenant must keep at least one active owner.",
        ),
        other => ApiError::from_db("user")(other),
    }
}

#[OpenApi]
impl UsersApi {
    /// List users
    ///
    /// The tenant's users, newest first, with cursor pagination.
    #[oai(
        path = "/api/v1/users",
        method = "get",
        operation_id = "users.list",
        tag = "ApiTags::Users"
    )]
    async fn list(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        /// 1 to 100; default 10.
        limit: Query<Option<i64>>,
        /// A user id: return users older than it (the next page).
        starting_after: Query<Option<String>>,
        /// A user id: return users newer than it (the previous page).
        ending_before: Query<Option<String>>,
    ) -> Result<Json<UserList>, ApiError> {
        let ctx = auth.require(Permission::ReadUsers)?;
        let page = page_request(limit.0, starting_after.0, ending_before.0, |s| {
            UserId::parse(s).map(|id| id.as_uuid())
        })?;
        let page = db::users::list(&state.pool, ctx, page)
            .await
            .map_err(ApiError::from_db("user"))?;
        Ok(Json(UserList {
            data: page.items.into_iter().map(Into::into).collect(),
            has_more: page.has_more,
        }))
    }

    /// Invite a user
    ///
    /// Adds a user to the tenant with a role and an initial password. Owners and admins only.
    #[oai(
        path = "/api/v1/users",
        method = "post",
        operation_id = "users.create",
        tag = "ApiTags::Users"
    )]
    async fn create(
        &self,
        req: &Request,
        auth: Auth,
        body: JsonBody<UserIn>,
    ) -> Result<CreatedUser, ApiError> {
        let ctx = auth.require(Permission::ManageUsers)?;
        let b = body.0;
        let email = Email::parse(&b.email).map_err(ApiError::invalid("email"))?;
        let pw = NewPassword::parse(&b.password).map_err(ApiError::invalid("password"))?;
        let role = Role::parse(&b.role).map_err(ApiError::invalid("role"))?;
        if role == Role::Owner && ctx.role() != Some(Role::Owner) {
            return Err(ApiError::forbidden(
                "permission_denied",
                "Only an owner can add an owner.",
            ));
        }
        let first = name(b.first_name.as_deref(), "first_name")?;
        let last = name(b.last_name.as_deref(), "last_name")?;
        let pw = pw.expose().to_owned();
        let hash = tokio::task::spawn_blocking(move || shared::auth::password::hash(&pw))
            .await
            .map_err(ApiError::internal)?
            .map_err(ApiError::internal)?;
        let id = UserId::new();
        let mut work = Work::begin(req).await?;
        let now = work.now();
        let row = db::users::create(
            work.conn(),
            ctx,
            NewUser {
                id,
                email: email.as_str(),
                password_hash: &hash,
                first_name: first.as_ref().map_or("", PersonName::as_str),
                last_name: last.as_ref().map_or("", PersonName::as_str),
                role,
            },
            now,
        )
        .await
        .map_err(|e| match e {
            DbError::UniqueViolation(c) if c == "users_email_key" => ApiError {
                field: Some("email".into()),
                ..ApiError::conflict("email_taken", "An account with this email already exists.")
            },
            other => ApiError::from_db("user")(other),
        })?;
        note(req, |n| n.object_id = Some(id.to_string()));
        Ok(CreatedUser::Created(Json(row.into())))
    }

    /// Get a user
    #[oai(
        path = "/api/v1/users/:id",
        method = "get",
        operation_id = "users.get",
        tag = "ApiTags::Users"
    )]
    async fn get(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        id: Path<String>,
    ) -> Result<Json<UserOut>, ApiError> {
        let ctx = auth.require(Permission::ReadUsers)?;
        let id = parse_user_id(&id.0)?;
        let row = db::users::get(&state.pool, ctx, id)
            .await
            .map_err(ApiError::from_db("user"))?;
        Ok(Json(row.into()))
    }

    /// Update a user
    ///
    /// Changes role, name or active flag. Owners and admins only; admins cannot change owners.
    #[oai(
        path = "/api/v1/users/:id",
        method = "patch",
        operation_id = "users.update",
        tag = "ApiTags::Users"
    )]
    async fn update(
        &self,
        state: poem::web::Data<&AppState>,
        req: &Request,
        auth: Auth,
        id: Path<String>,
        body: JsonBody<UserPatch>,
    ) -> Result<Json<UserOut>, ApiError> {
        let ctx = auth.require(Permission::ManageUsers)?;
        let id = parse_user_id(&id.0)?;
        note(req, |n| n.object_id = Some(id.to_string()));
        let b = body.0;
        let role = b
            .role
            .as_deref()
            .map(Role::parse)
            .transpose()
            .map_err(ApiError::invalid("role"))?;
        let first = name(b.first_name.as_deref(), "first_name")?;
        let last = name(b.last_name.as_deref(), "last_name")?;
        let mut work = Work::begin(req).await?;
        let now = work.now();
        let target = db::users::get(work.conn(), ctx, id)
            .await
            .map_err(ApiError::from_db("user"))?;
        check_target(ctx, id, target.role(), role, b.is_active == Some(false))?;
        let row = db::users::update(
            work.conn(),
            ctx,
            id,
            UserChanges {
                role,
                is_active: b.is_active,
                first_name: first.as_ref().map(PersonName::as_str),
                last_name: last.as_ref().map(PersonName::as_str),
            },
            now,
        )
        .await
        .map_err(map_update_err)?;
        let cache = state.clone();
        work.after_commit(move || cache.users.clear());
        Ok(Json(row.into()))
    }

    /// Deactivate a user
    ///
    /// The user can no longer log in and their tokens stop working. The record is kept.
    #[oai(
        path = "/api/v1/users/:id",
        method = "delete",
        operation_id = "users.deactivate",
        tag = "ApiTags::Users"
    )]
    async fn deactivate(
        &self,
        state: poem::web::Data<&AppState>,
        req: &Request,
        auth: Auth,
        id: Path<String>,
    ) -> Result<Json<UserOut>, ApiError> {
        let ctx = auth.require(Permission::ManageUsers)?;
        let id = parse_user_id(&id.0)?;
        note(req, |n| n.object_id = Some(id.to_string()));
        let mut work = Work::begin(req).await?;
        let now = work.now();
        let target = db::users::get(work.conn(), ctx, id)
            .await
            .map_err(ApiError::from_db("user"))?;
        check_target(ctx, id, target.role(), None, true)?;
        let row = db::users::update(
            work.conn(),
            ctx,
            id,
            UserChanges {
                is_active: Some(false),
                ..Default::default()
            },
            now,
        )
        .await
        .map_err(map_update_err)?;
        let cache = state.clone();
        work.after_commit(move || cache.users.clear());
        Ok(Json(row.into()))
    }
}
