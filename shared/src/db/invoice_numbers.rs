//! Gap-free invoice numbers: a counter row per (tenant, mode, prefix).

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{
    DbError,
    events::{self, NewEvent},
};
use crate::{
    domain::customer::InvoicePrefix,
    ids::{EventId, InvoiceId},
    tenancy::Scope,
};

/// Takes the next number of `prefix` in this transaction (the first is 1). The counter row
/// stays locked until the transaction ends: another finalization waits, and a rollback gives
/// the number back.
pub async fn next(conn: &mut PgConnection, scope: Scope, prefix: &str) -> Result<i64, DbError> {
    sqlx::query_scalar(
        "INSERT INTO invoice_number_counters (tenant_id, livemode, prefix, last_number) \
         VALUES ($1, $2, $3, 1) \
         ON CONFLICT (tenant_id, livemode, prefix) \
         DO UPDATE SET last_number = invoice_number_counters.last_number + 1 \
         RETURNING last_number",
    )
    .bind(scope.tenant_id)
    .bind(scope.livemode)
    .bind(prefix)
    .fetch_one(conn)
    .await
    .map_err(Into::into)
}

/// Holds `number` for `invoice`: a number is on one invoice of its tenant and mode at most
/// (the counter hands each out once; this is the database's word for it).
pub async fn hold(
    conn: &mut PgConnection,
    scope: Scope,
    number: &str,
    invoice: InvoiceId,
) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO invoice_numbers (tenant_id, livemode, number, invoice_id) \
         VALUES ($1, $2, $3, $4)",
    )
    .bind(scope.tenant_id)
    .bind(scope.livemode)
    .bind(number)
    .bind(invoice.as_uuid())
    .execute(conn)
    .await?;
    Ok(())
}

/// Invoices finalized in a unit of work whose numbers are taken at its commit, and the events
/// recorded in it, kept to be inserted then (they carry the number of the invoice they show).
#[derive(Debug, Default)]
pub struct Deferred {
    invoices: Vec<(Scope, InvoicePrefix, InvoiceId)>,
    events: Vec<(EventId, Scope, NewEvent)>,
}

impl Deferred {
    pub fn invoice(&mut self, scope: Scope, prefix: InvoicePrefix, invoice: InvoiceId) {
        self.invoices.push((scope, prefix, invoice));
    }

    /// An event recorded in the unit of work, with the id it took then: inserted at the commit,
    /// after the numbering, with the number of the invoice it is about.
    pub fn event(&mut self, id: EventId, scope: Scope, event: NewEvent) {
        self.events.push((id, scope, event));
    }

    /// Numbers the invoices, in the order they were finalized within each (tenant, mode,
    /// prefix), the counters moved on in one statement in a fixed order (so that two units of
    /// work never wait for each other's counters in a cycle), and writes the number into the
    /// invoices and into the events about them.
    pub async fn assign(self, conn: &mut PgConnection, now: DateTime<Utc>) -> Result<(), DbError> {
        let Self {
            invoices,
            mut events,
        } = self;
        let numbers = number(conn, &invoices, now).await?;
        // An object several events share is numbered once, and they share the numbered copy.
        // The map keeps each original beside its copy: no other object can take its address.
        let mut numbered: HashMap<usize, (Arc<serde_json::Value>, Arc<serde_json::Value>)> =
            HashMap::new();
        for (_, _, event) in &mut events {
            let key = Arc::as_ptr(&event.object).addr();
            if let Some((_, copy)) = numbered.get(&key) {
                event.object = copy.clone();
                continue;
            }
            let Some(number) = event
                .object
                .get("id")
                .and_then(serde_json::Value::as_str)
                .and_then(|id| numbers.get(id))
            else {
                continue;
            };
            let mut copy = (*event.object).clone();
            if let Some(fields) = copy.as_object_mut() {
                fields.insert("number".into(), serde_json::Value::String(number.clone()));
            }
            let copy = Arc::new(copy);
            let original = std::mem::replace(&mut event.object, copy.clone());
            numbered.insert(key, (original, copy));
        }
        let ids: Vec<EventId> = events.iter().map(|e| e.0).collect();
        let scoped: Vec<(Scope, &NewEvent)> = events.iter().map(|e| (e.1, &e.2)).collect();
        events::record_with_ids(conn, &ids, &scoped, now).await
    }
}

/// Numbers `invoices` (see [`Deferred::assign`]); each invoice's number, by its public id.
async fn number(
    conn: &mut PgConnection,
    invoices: &[(Scope, InvoicePrefix, InvoiceId)],
    now: DateTime<Utc>,
) -> Result<HashMap<String, String>, DbError> {
    if invoices.is_empty() {
        return Ok(HashMap::new());
    }
    let mut groups: BTreeMap<(Uuid, bool, String), Vec<InvoiceId>> = BTreeMap::new();
    for (scope, prefix, invoice) in invoices {
        groups
            .entry((
                scope.tenant_id.as_uuid(),
                scope.livemode,
                prefix.as_str().to_owned(),
            ))
            .or_default()
            .push(*invoice);
    }
    // Every counter in one statement, in the groups' order (rows are locked in the order
    // they come), each moved on by its group's size.
    let mut keys_tenant: Vec<Uuid> = Vec::with_capacity(groups.len());
    let mut keys_mode: Vec<bool> = Vec::with_capacity(groups.len());
    let mut keys_prefix: Vec<String> = Vec::with_capacity(groups.len());
    let mut sizes: Vec<i64> = Vec::with_capacity(groups.len());
    for ((tenant, livemode, prefix), invoices) in &groups {
        keys_tenant.push(*tenant);
        keys_mode.push(*livemode);
        keys_prefix.push(prefix.clone());
        sizes.push(i64::try_from(invoices.len()).map_err(|e| broken(e.to_string()))?);
    }
    let lasts: Vec<(Uuid, bool, String, i64)> = sqlx::query_as(
        "INSERT INTO invoice_number_counters (tenant_id, livemode, prefix, last_number) \
         SELECT tenant_id, livemode, prefix, k \
         FROM unnest($1::uuid[], $2::bool[], $3::text[], $4::bigint[]) \
             WITH ORDINALITY AS u(tenant_id, livemode, prefix, k, ord) ORDER BY ord \
         ON CONFLICT (tenant_id, livemode, prefix) \
         DO UPDATE SET \
             last_number = invoice_number_counters.last_number + EXCLUDED.last_number \
         RETURNING tenant_id, livemode, prefix, last_number",
    )
    .bind(&keys_tenant)
    .bind(&keys_mode)
    .bind(&keys_prefix)
    .bind(&sizes)
    .fetch_all(&mut *conn)
    .await?;
    let lasts: BTreeMap<(Uuid, bool, String), i64> = lasts
        .into_iter()
        .map(|(t, l, p, last)| ((t, l, p), last))
        .collect();
    let mut ids: Vec<Uuid> = Vec::with_capacity(invoices.len());
    let mut tenants: Vec<Uuid> = Vec::with_capacity(invoices.len());
    let mut modes: Vec<bool> = Vec::with_capacity(invoices.len());
    let mut numbers: Vec<String> = Vec::with_capacity(invoices.len());
    for (key, invoices) in groups {
        let last = *lasts
            .get(&key)
            .ok_or_else(|| broken(format!("no counter came back for prefix {}", key.2)))?;
        let k = i64::try_from(invoices.len()).map_err(|e| broken(e.to_string()))?;
        let (tenant, livemode, prefix) = key;
        let prefix = InvoicePrefix::parse(&prefix).map_err(|e| broken(e.to_string()))?;
        for (i, invoice) in (0..).zip(invoices) {
            ids.push(invoice.as_uuid());
            tenants.push(tenant);
            modes.push(livemode);
            numbers.push(prefix.number(last - k + 1 + i));
        }
    }
    // Held (see [`hold`]) and written into the invoices in one statement.
    let numbered = sqlx::query(
        "WITH u AS (SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::bool[], $4::text[]) \
             AS u(id, tenant_id, livemode, number)), \
         held AS (INSERT INTO invoice_numbers (tenant_id, livemode, number, invoice_id) \
             SELECT tenant_id, livemode, number, id FROM u) \
         UPDATE invoices SET number = u.number, updated_at = $5 FROM u \
         WHERE invoices.id = u.id AND invoices.tenant_id = u.tenant_id \
         AND invoices.livemode = u.livemode AND invoices.number IS NULL",
    )
    .bind(&ids)
    .bind(&tenants)
    .bind(&modes)
    .bind(&numbers)
    .bind(now)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    // Every number taken is on an invoice: otherwise committing would leave a gap.
    if numbered != ids.len() as u64 {
        return Err(broken(format!(
            "{numbered} of {} invoices finalized in the unit of work took their number",
            ids.len()
        )));
    }
    Ok(ids
        .iter()
        .map(|id| InvoiceId::from_uuid(*id).to_string())
        .zip(numbers)
        .collect())
}

/// A broken expectation of the numbering: the unit of work is not to commit.
fn broken(what: String) -> DbError {
    DbError::Other(sqlx::Error::Protocol(what))
}
