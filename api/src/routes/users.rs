//! The tenant's users (`/api/v1/users`): everyone may read, owners and admins manage.

use poem::Request;
use poem_openapi::{ApiResponse, Object, OpenApi, param::Path, param::Query, payload::Json};
use serde::Deserialize;
use shared::{
    domain::{email::Email, password::NewPassword, person_name::PersonName, role::Role},
    ids::UserId,
    service::{
        sessions::PasswordHash,
        users::{self, Invitation, UserUpdate},
    },
    tenancy::Permission,
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
        let page = users::list(&state.pool, ctx, page).await?;
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
        let first = name(b.first_name.as_deref(), "first_name")?;
        let last = name(b.last_name.as_deref(), "last_name")?;
        let hash = PasswordHash::of(&pw).await?;
        let mut work = Work::begin(req).await?;
        let row = users::invite(
            &mut work,
            ctx,
            Invitation {
                email: &email,
                password: &hash,
                role,
                first_name: first.as_ref(),
                last_name: last.as_ref(),
            },
        )
        .await?;
        let id = row.id;
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
        let row = users::get(&state.pool, ctx, id).await?;
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
        let row = users::update(
            &mut work,
            ctx,
            id,
            UserUpdate {
                role,
                is_active: b.is_active,
                first_name: first.as_ref(),
                last_name: last.as_ref(),
            },
        )
        .await?;
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
        let row = users::deactivate(&mut work, ctx, id).await?;
        let cache = state.clone();
        work.after_commit(move || cache.users.clear());
        Ok(Json(row.into()))
    }
}
