//! The unit of work of a write request, and the layer that runs it.
//!
//! Every request gets one PostgreSQL transaction, opened when its handler first asks for it
//! with [`Work::begin`] (after authentication, the permission check and parsing); reads never
//! ask. Every `POST`, `PUT`, `PATCH` and `DELETE` (and any request that opened a transaction)
//! leaves an audit row. The transaction holds everything the request does: the claim of its
//! `Idempotency-Key`, the handler's writes with their events and jobs, the stored response and
//! the audit row; it commits once, after the handler. A request that dies before the commit
//! leaves nothing, so its retry runs afresh.
//!
//! - An idempotent replay goes only to the credential that made the first request, and only
//!   after that credential passed the same checks again (the claim happens in
//!   [`Work::begin`]). Another credential using the same key has its own.
//! - Client errors after the claim are stored too (the work is rolled back first); failures on
//!   our side (5xx) and rate limits are not, so a retry runs again.
//! - A deadlock or serialization failure rolls everything back and runs the request again.

use std::{
    ops::{Deref, DerefMut},
    sync::Arc,
};

use bytes::Bytes;
use poem::{
    Body, Endpoint, IntoResponse, Request, Response,
    http::{Method, StatusCode, header},
    web::{LocalAddr, RemoteAddr},
};
use poem_openapi::OperationId;
use sha2::{Digest, Sha256};
use shared::{
    clock::Clock,
    crypto::Encryptor,
    db::{
        audit::{self, AuditEntry},
        idempotency::{self, Claim, KeyScope, Stored},
    },
    tenancy::{Actor, TenantContext},
    uow::UnitOfWork,
};
use sqlx::PgPool;
use tokio::sync::{Mutex, OwnedMappedMutexGuard, OwnedMutexGuard};

use crate::{
    auth::Resolved,
    error::{ApiError, RetryableConflict},
    middleware::{AuditNote, RequestId, problem_response},
    state::AppState,
};

/// How many times a request is run when it keeps hitting deadlocks or serialization failures.
const MAX_RUNS: usize = 3;

/// The idempotency key a request carries, with the fingerprint of the request.
#[derive(Debug, Clone)]
struct Idempotent {
    key: KeyScope,
    hash: [u8; 32],
}

/// What one run of a request left behind.
#[derive(Default)]
pub struct Slot {
    uow: Option<UnitOfWork>,
    /// The key was claimed in `uow`.
    claimed: bool,
    /// The key was used before: this is the response to send again.
    replay: Option<Stored>,
}

/// A request's unit of work as the handler sees it (request extension, one per run).
#[derive(Clone)]
struct RequestWork {
    slot: Arc<Mutex<Slot>>,
    pool: PgPool,
    clock: Arc<dyn Clock>,
    /// The request's idempotency key, or why the one it sent is unusable.
    idempotent: Result<Option<Arc<Idempotent>>, Arc<ApiError>>,
}

/// A handler's hold on its request's unit of work: the transaction, and the time.
pub struct Work(OwnedMappedMutexGuard<Slot, UnitOfWork>);

impl Deref for Work {
    type Target = UnitOfWork;
    fn deref(&self) -> &UnitOfWork {
        &self.0
    }
}

impl DerefMut for Work {
    fn deref_mut(&mut self) -> &mut UnitOfWork {
        &mut self.0
    }
}

impl Work {
    /// Opens the request's transaction (once; later calls get the same one) and claims its
    /// idempotency key. Call it after the permission check and parsing, before anything with
    /// an effect. A key used before answers with its first response instead.
    pub async fn begin(req: &Request) -> Result<Work, ApiError> {
        let Some(rw) = req.extensions().get::<RequestWork>().cloned() else {
            return Err(ApiError::internal(
                "a handler asked for a unit of work outside a write request",
            ));
        };
        let mut slot = rw.slot.clone().lock_owned().await;
        if slot.uow.is_none() {
            let uow = open(&rw, &mut slot).await?;
            slot.uow = Some(uow);
        }
        OwnedMutexGuard::try_map(slot, |s| s.uow.as_mut())
            .map(Work)
            .map_err(|_| ApiError::internal("the unit of work vanished"))
    }
}

async fn open(rw: &RequestWork, slot: &mut Slot) -> Result<UnitOfWork, ApiError> {
    let mut uow = UnitOfWork::begin(&rw.pool, &*rw.clock)
        .await
        .map_err(ApiError::db)?;
    let idem = match &rw.idempotent {
        Ok(Some(idem)) => idem,
        Ok(None) => return Ok(uow),
        Err(e) => {
            uow.rollback().await;
            return Err(ApiError::clone(e));
        }
    };
    let now = uow.now();
    match idempotency::claim(uow.conn(), &idem.key, &idem.hash, now)
        .await
        .map_err(ApiError::db)?
    {
        Claim::New => {
            slot.claimed = true;
            Ok(uow)
        }
        Claim::Replay(stored) => {
            uow.rollback().await;
            slot.replay = Some(stored);
            // Never rendered: the layer answers with the stored response.
            Err(ApiError::new(
                StatusCode::OK,
                "idempotent_replay",
                "replayed from the stored response",
            ))
        }
        Claim::Mismatch => {
            uow.rollback().await;
            Err(ApiError::conflict(
                "idempotency_key_reused",
                "This Idempotency-Key was used with a different request.",
            ))
        }
    }
}

/// The credential an idempotency key belongs to.
fn actor_key(ctx: &TenantContext) -> String {
    match &ctx.actor() {
        Actor::ApiKey { id, .. } => id.to_string(),
        Actor::User { id, .. } => id.to_string(),
    }
}

/// The request's fingerprint: method, path, query and body.
fn fingerprint(req: &Request, body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(req.method().as_str().as_bytes());
    h.update([0]);
    h.update(req.uri().path().trim_end_matches('/').as_bytes());
    h.update([0]);
    h.update(req.uri().query().unwrap_or("").as_bytes());
    h.update([0]);
    h.update(body);
    h.finalize().into()
}

/// What is needed to run a request again (its body was read once, with the size limit).
struct Template {
    method: Method,
    uri: poem::http::Uri,
    version: poem::http::Version,
    headers: poem::http::HeaderMap,
    extensions: poem::http::Extensions,
    local: LocalAddr,
    remote: RemoteAddr,
    scheme: poem::http::uri::Scheme,
    body: Bytes,
}

impl Template {
    fn of(req: &Request, body: Bytes) -> Self {
        Self {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
            extensions: req.extensions().clone(),
            local: LocalAddr(req.local_addr().0.clone()),
            remote: RemoteAddr(req.remote_addr().0.clone()),
            scheme: req.scheme().clone(),
            body,
        }
    }

    fn request(&self) -> Request {
        let mut head = poem::http::Request::new(());
        *head.method_mut() = self.method.clone();
        *head.uri_mut() = self.uri.clone();
        *head.version_mut() = self.version;
        *head.headers_mut() = self.headers.clone();
        *head.extensions_mut() = self.extensions.clone();
        let (parts, ()) = head.into_parts();
        let parts = poem::RequestParts::from((
            parts,
            self.local.clone(),
            self.remote.clone(),
            self.scheme.clone(),
        ));
        Request::from_parts(parts, Body::from(self.body.clone()))
    }
}

fn is_write(method: &Method) -> bool {
    matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
}

/// The layer: runs a write request in its unit of work (see the module documentation).
pub async fn transact<E: Endpoint>(
    state: AppState,
    ep: Arc<E>,
    req: Request,
) -> poem::Result<Response> {
    let write = is_write(req.method());
    let resolved = req.extensions().get::<Resolved>().cloned();
    let ctx = resolved
        .as_ref()
        .and_then(|r| r.0.as_ref().as_ref().ok().cloned());
    let body = req
        .extensions()
        .get::<crate::middleware::RawBody>()
        .map(|b| b.0.clone())
        .unwrap_or_default();
    // An unusable key is reported when the handler begins its work (as the problem of the
    // operation, audited as such).
    let idempotent = idempotency_key(&req, ctx.as_ref(), &body)
        .map(|i| i.map(Arc::new))
        .map_err(Arc::new);
    let template = Template::of(&req, body);
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default();
    let client_addr = req
        .remote_addr()
        .as_socket_addr()
        .map(|a| a.ip().to_string());
    let mut req = req;
    let mut run = 1;
    loop {
        let work = RequestWork {
            slot: Arc::new(Mutex::new(Slot::default())),
            pool: state.pool.clone(),
            clock: state.clock.clone(),
            idempotent: idempotent.clone(),
        };
        let note = AuditNote::default();
        req.extensions_mut().insert(work.clone());
        req.extensions_mut().insert(note.clone());
        let resp = match ep.call(req).await {
            Ok(r) => r.into_response(),
            Err(e) => problem_response(e, resolved.as_ref()),
        };
        let slot = std::mem::take(&mut *work.slot.lock().await);
        let audit = Audit {
            ctx: ctx.as_ref(),
            note: &note,
            request_id: &request_id,
            client_addr: client_addr.as_deref(),
        };
        if let Some(stored) = slot.replay {
            let replay = replayed(&state.encryptor, stored, &resp);
            let entry = audit.entry(&replay, state.clock.now());
            record_alone(&state, entry, None).await;
            return Ok(replay);
        }
        if !write && slot.uow.is_none() {
            // A read: nothing to commit or audit.
            return Ok(resp);
        }
        match finish(
            &state,
            slot,
            resp,
            &audit,
            idempotent.as_ref().ok().and_then(Option::as_deref),
        )
        .await
        {
            Finished::Done(resp) => return Ok(resp),
            Finished::Conflict(resp) if run >= MAX_RUNS => {
                tracing::warn!(run, "transaction conflict again; giving up");
                let entry = audit.entry(&resp, state.clock.now());
                record_alone(&state, entry, None).await;
                return Ok(resp);
            }
            Finished::Conflict(_) => {
                tracing::info!(run, "transaction conflict; running the request again");
                run += 1;
                req = template.request();
            }
        }
    }
}

/// The request's idempotency key, if it is a `POST` by a credential carrying one.
fn idempotency_key(
    req: &Request,
    ctx: Option<&TenantContext>,
    body: &[u8],
) -> Result<Option<Idempotent>, ApiError> {
    let (Some(raw), Some(ctx), true) = (
        req.headers().get("idempotency-key"),
        ctx,
        *req.method() == Method::POST,
    ) else {
        return Ok(None);
    };
    let key = match raw.to_str() {
        Ok(k) if !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic()) => k,
        _ => {
            return Err(ApiError::validation(
                "Idempotency-Key",
                "must be 1 to 255 visible ASCII characters",
            ));
        }
    };
    Ok(Some(Idempotent {
        key: KeyScope {
            scope: ctx.scope(),
            actor: actor_key(ctx),
            key: key.to_owned(),
        },
        hash: fingerprint(req, body),
    }))
}

/// The stored response, sent again (with the operation of `resp`, for metrics and audit).
fn replayed(encryptor: &Encryptor, stored: Stored, resp: &Response) -> Response {
    let op = resp.data::<OperationId>().copied();
    let mut replay = replay_of(encryptor, stored);
    if let Some(op) = op {
        replay.set_data(op);
    }
    replay
}

fn replay_of(encryptor: &Encryptor, stored: Stored) -> Response {
    let Ok(body) = encryptor.decrypt(&stored.body_enc) else {
        // Stored under another APP_SECRET: nothing sensible to replay.
        return ApiError::internal("a stored idempotent response cannot be decrypted")
            .into_response();
    };
    let mut resp = Response::builder()
        .status(
            StatusCode::from_u16(u16::try_from(stored.status).unwrap_or(500))
                .unwrap_or(StatusCode::OK),
        )
        .header("idempotent-replayed", "true");
    if let Some(ct) = stored.content_type {
        resp = resp.header(header::CONTENT_TYPE, ct);
    }
    resp.body(body)
}

/// Who did what, for the audit row.
struct Audit<'a> {
    ctx: Option<&'a TenantContext>,
    note: &'a AuditNote,
    request_id: &'a str,
    client_addr: Option<&'a str>,
}

impl Audit<'_> {
    fn entry(&self, resp: &Response, at: chrono::DateTime<chrono::Utc>) -> Option<AuditEntry> {
        let note = std::mem::take(&mut *self.note.0.lock().unwrap_or_else(|p| p.into_inner()));
        let (tenant_id, livemode) = self
            .ctx
            .map(|c| (c.tenant_id(), c.livemode()))
            .or(note.tenant)?;
        Some(AuditEntry {
            tenant_id,
            livemode,
            actor: note
                .actor
                .or_else(|| self.ctx.map(|c| c.actor().audit_name()))
                .unwrap_or_else(|| "anonymous".into()),
            action: resp
                .data::<OperationId>()
                .map(|o| o.0)
                .unwrap_or("unmatched")
                .to_owned(),
            object_id: note.object_id,
            request_id: self.request_id.to_owned(),
            client_addr: self.client_addr.map(str::to_owned),
            outcome: i16::try_from(resp.status().as_u16()).unwrap_or(0),
            at,
        })
    }
}

enum Finished {
    Done(Response),
    /// A deadlock or serialization failure: everything was rolled back.
    Conflict(Response),
}

async fn into_parts(resp: Response) -> (Response, Bytes) {
    let (parts, body) = resp.into_parts();
    let bytes = body.into_bytes().await.unwrap_or_default();
    (Response::from_parts(parts, bytes.clone().into()), bytes)
}

/// Commits (success) or rolls back (failure) the run's unit of work, with the stored response
/// and the audit row.
async fn finish(
    state: &AppState,
    slot: Slot,
    resp: Response,
    audit: &Audit<'_>,
    idem: Option<&Idempotent>,
) -> Finished {
    if resp.data::<RetryableConflict>().is_some() {
        if let Some(uow) = slot.uow {
            uow.rollback().await;
        }
        return Finished::Conflict(resp);
    }
    let (resp, bytes) = into_parts(resp).await;
    let status = resp.status();
    let stored = || Stored {
        status: i16::try_from(status.as_u16()).unwrap_or(500),
        content_type: resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        body_enc: state.encryptor.encrypt(&bytes),
    };
    match slot.uow {
        Some(mut uow) if status.as_u16() < 400 => {
            let now = uow.now();
            let entry = audit.entry(&resp, now);
            let done = async {
                if let (true, Some(idem)) = (slot.claimed, idem) {
                    idempotency::complete(uow.conn(), &idem.key, &stored(), now).await?;
                }
                if let Some(entry) = &entry {
                    audit::record(uow.conn(), entry).await?;
                }
                uow.commit().await
            }
            .await;
            match done {
                Ok(()) => Finished::Done(resp),
                Err(e) => {
                    let err = ApiError::db(e);
                    let conflict = err.is_retryable_conflict();
                    let resp = err.into_response();
                    if conflict {
                        Finished::Conflict(resp)
                    } else {
                        // Nothing happened; say so in the audit log.
                        let entry = audit.entry(&resp, state.clock.now());
                        record_alone(state, entry, None).await;
                        Finished::Done(resp)
                    }
                }
            }
        }
        uow => {
            // A failure (nothing the handler wrote stays), or a write request that opened no
            // transaction. A client error after the claim is the key's answer; ours (5xx) and
            // rate limits are not, so a retry runs again.
            if let Some(uow) = uow {
                uow.rollback().await;
            }
            let keep =
                slot.claimed && status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS;
            let stored = keep.then(|| idem.map(|i| (i, stored()))).flatten();
            let entry = audit.entry(&resp, state.clock.now());
            record_alone(state, entry, stored).await;
            Finished::Done(resp)
        }
    }
}

/// Writes an audit row (and a stored response) in a transaction of their own, best effort.
async fn record_alone(
    state: &AppState,
    entry: Option<AuditEntry>,
    stored: Option<(&Idempotent, Stored)>,
) {
    if entry.is_none() && stored.is_none() {
        return;
    }
    let done = async {
        let mut uow = UnitOfWork::begin(&state.pool, &*state.clock).await?;
        let now = uow.now();
        if let Some((idem, stored)) = &stored {
            idempotency::store(uow.conn(), &idem.key, &idem.hash, stored, now).await?;
        }
        if let Some(entry) = &entry {
            audit::record(uow.conn(), entry).await?;
        }
        uow.commit().await
    }
    .await;
    if let Err(e) = done {
        tracing::error!(error = %e, "could not write the audit entry of a failed request");
    }
}
