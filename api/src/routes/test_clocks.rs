//! Test clocks (`/api/v1/test-clocks`, test mode only): a frozen time for test customers, moved
//! forward by hand so that months of billing take a request.

use chrono::{DateTime, Utc};
use poem::Request;
use poem_openapi::{ApiResponse, Object, OpenApi, param::Path, param::Query, payload::Json};
use serde::Deserialize;
use shared::{
    domain::customer::CustomerName,
    ids::TestClockId,
    service::test_clocks::{self as service, TestClockRow},
    tenancy::Permission,
};

use super::{ApiTags, dto::page_request};
use crate::{
    auth::Auth, body::JsonBody, error::ApiError, middleware::note, state::AppState, work::Work,
};

pub struct TestClocksApi;

/// A test clock to create.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct TestClockIn {
    /// The clock's time to start with (to the second).
    pub frozen_time: DateTime<Utc>,
    #[oai(nullable)]
    pub name: Option<String>,
}

/// Where to move a clock.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct AdvanceIn {
    /// After the clock's time, and at most 5 years after it.
    pub frozen_time: DateTime<Utc>,
}

/// A test clock.
#[derive(Debug, Object)]
pub struct TestClockOut {
    /// Test clock id (`clock_…`).
    pub id: String,
    /// Always `test_clock`.
    pub object: String,
    pub name: String,
    /// The clock's time: what its customers' billing sees as now.
    pub frozen_time: DateTime<Utc>,
    /// `ready`; `advancing` while what comes due on the way runs; `internal_failure` when an
    /// advance could not go on (the clock stands where it got to; advance it again to go on).
    pub status: String,
    /// Where an advance under way (or the one that failed) goes.
    #[oai(nullable)]
    pub advancing_to: Option<DateTime<Utc>>,
    /// Always `false`.
    pub livemode: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<TestClockRow> for TestClockOut {
    fn from(c: TestClockRow) -> Self {
        Self {
            id: c.id.to_string(),
            object: "test_clock".into(),
            name: c.name,
            frozen_time: c.frozen_time,
            status: c.status.as_str().into(),
            advancing_to: c.advancing_to,
            livemode: c.livemode,
            created_at: c.created_at,
            updated_at: c.updated_at,
        }
    }
}

#[derive(Debug, Object)]
pub struct TestClockList {
    pub data: Vec<TestClockOut>,
    pub has_more: bool,
}

/// A deleted test clock.
#[derive(Debug, Object)]
pub struct DeletedTestClock {
    pub id: String,
    /// Always `test_clock`.
    pub object: String,
    /// Always `true`.
    pub deleted: bool,
}

#[derive(ApiResponse)]
pub enum CreatedTestClock {
    /// The clock was created, ready.
    #[oai(status = 201)]
    Created(Json<TestClockOut>),
}

#[derive(ApiResponse)]
pub enum AdvanceStarted {
    /// The clock is advancing; it is `ready` at its new time once the worker fleet has run
    /// what came due on the way.
    #[oai(status = 202)]
    Accepted(Json<TestClockOut>),
}

fn clock_id(raw: &str) -> Result<TestClockId, ApiError> {
    TestClockId::parse(raw).map_err(|_| ApiError::not_found("test clock"))
}

#[OpenApi]
impl TestClocksApi {
    /// Create a test clock
    ///
    /// Test mode only. Customers created on it (`test_clock`) live in its time.
    #[oai(
        path = "/api/v1/test-clocks",
        method = "post",
        operation_id = "test_clocks.create",
        tag = "ApiTags::Billing"
    )]
    async fn create(
        &self,
        req: &Request,
        auth: Auth,
        body: JsonBody<TestClockIn>,
    ) -> Result<CreatedTestClock, ApiError> {
        let ctx = auth.require(Permission::WriteBilling)?;
        let b = body.0;
        let name = CustomerName::parse(b.name.as_deref().unwrap_or(""))
            .map_err(ApiError::invalid("name"))?;
        let mut work = Work::begin(req).await?;
        let row = service::create_test_clock(&mut work, ctx.scope(), name.as_str(), b.frozen_time)
            .await?;
        let out = TestClockOut::from(row);
        note(req, |n| n.object_id = Some(out.id.clone()));
        Ok(CreatedTestClock::Created(Json(out)))
    }

    /// List test clocks
    ///
    /// Newest first.
    #[oai(
        path = "/api/v1/test-clocks",
        method = "get",
        operation_id = "test_clocks.list",
        tag = "ApiTags::Billing"
    )]
    async fn list(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        /// 1 to 100; default 10.
        limit: Query<Option<i64>>,
        /// A test clock id: return older clocks (the next page).
        starting_after: Query<Option<String>>,
        /// A test clock id: return newer clocks (the previous page).
        ending_before: Query<Option<String>>,
    ) -> Result<Json<TestClockList>, ApiError> {
        let ctx = auth.require(Permission::ReadBilling)?;
        let page = page_request(limit.0, starting_after.0, ending_before.0, |s| {
            TestClockId::parse(s).map(|id| id.as_uuid())
        })?;
        let page = service::list_test_clocks(&state.pool, ctx.scope(), page).await?;
        Ok(Json(TestClockList {
            data: page.items.into_iter().map(TestClockOut::from).collect(),
            has_more: page.has_more,
        }))
    }

    /// Get a test clock
    #[oai(
        path = "/api/v1/test-clocks/:id",
        method = "get",
        operation_id = "test_clocks.get",
        tag = "ApiTags::Billing"
    )]
    async fn get(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        /// Test clock id (`clock_…`).
        id: Path<String>,
    ) -> Result<Json<TestClockOut>, ApiError> {
        let ctx = auth.require(Permission::ReadBilling)?;
        let id = clock_id(&id.0)?;
        Ok(Json(
            service::get_test_clock(&state.pool, ctx.scope(), id)
                .await?
                .into(),
        ))
    }

    /// Delete a test clock
    ///
    /// Its customers are deleted and their subscriptions canceled.
    #[oai(
        path = "/api/v1/test-clocks/:id",
        method = "delete",
        operation_id = "test_clocks.delete",
        tag = "ApiTags::Billing"
    )]
    async fn delete(
        &self,
        req: &Request,
        auth: Auth,
        /// Test clock id (`clock_…`).
        id: Path<String>,
    ) -> Result<Json<DeletedTestClock>, ApiError> {
        let ctx = auth.require(Permission::WriteBilling)?;
        let id = clock_id(&id.0)?;
        note(req, |n| n.object_id = Some(id.to_string()));
        let mut work = Work::begin(req).await?;
        let row = service::delete_test_clock(&mut work, ctx.scope(), id).await?;
        Ok(Json(DeletedTestClock {
            id: row.id.to_string(),
            object: "test_clock".into(),
            deleted: true,
        }))
    }

    /// Advance a test clock
    ///
    /// Moves the clock forward (never back). It is `advancing` while the worker fleet runs, in
    /// time order and at their times, what comes due for its customers on the way (trial ends,
    /// renewals, charges, scheduled cancels), then `ready` at `frozen_time`. A clock whose last
    /// advance failed (`internal_failure`) goes on from where that one stopped.
    #[oai(
        path = "/api/v1/test-clocks/:id/advance",
        method = "post",
        operation_id = "test_clocks.advance",
        tag = "ApiTags::Billing"
    )]
    async fn advance(
        &self,
        req: &Request,
        auth: Auth,
        /// Test clock id (`clock_…`).
        id: Path<String>,
        body: JsonBody<AdvanceIn>,
    ) -> Result<AdvanceStarted, ApiError> {
        let ctx = auth.require(Permission::WriteBilling)?;
        let id = clock_id(&id.0)?;
        note(req, |n| n.object_id = Some(id.to_string()));
        let mut work = Work::begin(req).await?;
        let row = service::start_advance(&mut work, ctx.scope(), id, body.0.frozen_time).await?;
        Ok(AdvanceStarted::Accepted(Json(row.into())))
    }
}
