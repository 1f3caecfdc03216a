//! One-off invoicing: invoice items a tenant adds for a customer, draft invoices that collect
//! them, and finalizing, sending and deleting those drafts.
//!
//! - An item without a subscription is pending until an invoice of its customer in its currency
//!   takes it: a draft created for the customer (or named when the item is created), or else
//!   the customer's next subscription invoice in that currency. A subscription's proration
//!   items wait for that subscription's next invoice.
//! - A draft's lines are its items, written again (with its coupon's discount) whenever its
//!   items change. Its number is taken and the customer's credit applied when it is finalized;
//!   deleting it makes its items pending again.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::{
    ServiceError, ServiceResult, events,
    invoices::{self, InvoiceView},
    subscriptions::{at_clock_time, redeem_coupon},
    tax_rates,
};
use crate::{
    db::{
        self,
        invoices::{ItemFilter, LineRow, PendingLine},
        pagination::{Page, PageRequest},
    },
    domain::{
        catalog::Metadata,
        invoice::{InvoiceStatus, InvoiceTransition},
        money::Currency,
        period::Period,
        pricing::PriceModel,
        subscription::CollectionMethod,
    },
    ids::{CouponId, CustomerId, InvoiceId, InvoiceItemId, PriceId},
    jobs::{self, Job},
    tenancy::Scope,
    uow::UnitOfWork,
};

/// What the operations of this module take and return.
pub use crate::db::invoices::{ItemFilter as InvoiceItemFilter, PendingLine as InvoiceItemRow};

pub use crate::db::invoice_settings::{InvoiceSettings, MAX_GRACE_PERIOD_HOURS};

const ITEM: &str = "invoice item";

/// The invoicing settings of a tenant's mode (no grace period until set).
pub async fn get_settings(pool: &PgPool, scope: Scope) -> ServiceResult<InvoiceSettings> {
    let mut conn = pool.acquire().await.map_err(db::DbError::from)?;
    Ok(db::invoice_settings::get(&mut conn, scope).await?)
}

/// Sets the grace period of a tenant's mode: how long a renewal invoice that bills usage stays
/// a draft after its period ends (usage for that period is recorded until it is finalized).
/// Renewals from now on follow it; a draft already made keeps its time.
pub async fn set_settings(
    uow: &mut UnitOfWork,
    scope: Scope,
    grace_period_hours: u8,
) -> ServiceResult<InvoiceSettings> {
    if grace_period_hours > MAX_GRACE_PERIOD_HOURS {
        return Err(ServiceError::invalid(
            "grace_period_hours",
            format!("must be 0 to {MAX_GRACE_PERIOD_HOURS}"),
        ));
    }
    let now = uow.now();
    db::invoice_settings::set(uow.conn(), scope, grace_period_hours, now).await?;
    Ok(db::invoice_settings::get(uow.conn(), scope).await?)
}

/// What an item charges (negative: a credit).
#[derive(Debug, Clone, Copy)]
pub enum ItemAmount {
    /// This amount, once.
    Amount(i64),
    /// `quantity` × `unit_amount`.
    PerUnit { unit_amount: i64, quantity: i64 },
    /// What the price asks for `quantity` (in the price's currency).
    Price { price: PriceId, quantity: i64 },
}

/// An invoice item to add.
#[derive(Debug)]
pub struct ItemSpec<'a> {
    pub customer: CustomerId,
    pub amount: ItemAmount,
    /// Defaults to the price's, or else the customer's.
    pub currency: Option<Currency>,
    /// Defaults to the price's product (and nickname); required without a price.
    pub description: Option<&'a str>,
    /// What it covers; defaults to the moment it is added.
    pub period: Option<Period>,
    /// A draft invoice of the customer to add it to; otherwise it is pending.
    pub invoice: Option<InvoiceId>,
    pub metadata: &'a Metadata,
}

/// The time of a customer's world: its test clock's, or now.
async fn now_for(
    uow: &mut UnitOfWork,
    scope: Scope,
    customer: CustomerId,
) -> ServiceResult<DateTime<Utc>> {
    Ok(match at_clock_time(uow, scope, customer).await? {
        Some(t) => t,
        None => uow.now(),
    })
}

/// Refuses to change a subscription's renewal draft by hand: its lines are its period's and
/// its usage's, and it is finalized at the end of its grace period (or by finalizing it).
fn refuse_renewal_draft(invoice: &db::invoices::InvoiceRow) -> ServiceResult<()> {
    match invoice.subscription_id {
        Some(sub) => Err(ServiceError::conflict(
            "invoice_not_editable",
            format!(
                "Invoice {} is subscription {sub}'s renewal, a draft until its grace period \
                 ends: its items cannot change (a pending item goes on the next invoice), and \
                 it can be finalized but not deleted.",
                invoice.id
            ),
        )),
        None => Ok(()),
    }
}

fn not_draft(invoice: &db::invoices::InvoiceRow) -> ServiceError {
    ServiceError::conflict(
        "invoice_not_draft",
        format!(
            "Invoice {} is {}; only a draft invoice's items can change.",
            invoice.id, invoice.status
        ),
    )
}

/// Adds an invoice item for a customer: pending, or on the draft `spec.invoice`.
pub async fn create_item(
    uow: &mut UnitOfWork,
    scope: Scope,
    spec: ItemSpec<'_>,
) -> ServiceResult<InvoiceItemRow> {
    let customer = db::customers::get(uow.conn(), scope, spec.customer)
        .await
        .map_err(ServiceError::unknown("customer", "customer"))?;
    let now = now_for(uow, scope, customer.id).await?;
    let mut price_id = None;
    let mut price_currency = None;
    let mut label = None;
    let (amount, unit_amount, quantity) = match spec.amount {
        ItemAmount::Amount(a) => (Some(a), None, 1),
        ItemAmount::PerUnit {
            unit_amount,
            quantity,
        } => (
            unit_amount.checked_mul(quantity),
            Some(unit_amount),
            quantity,
        ),
        ItemAmount::Price { price, quantity } => {
            let terms = db::subscriptions::price_terms(uow.conn(), scope, &[price.as_uuid()])
                .await?
                .into_iter()
                .next()
                .ok_or_else(|| ServiceError::invalid("price", "is not a price of this mode"))?;
            if !terms.active {
                return Err(ServiceError::invalid("price", "is archived"));
            }
            if terms.metered {
                return Err(ServiceError::invalid(
                    "price",
                    "is metered: its usage is billed by its subscription",
                ));
            }
            let model: PriceModel =
                serde_json::from_value(terms.model).map_err(ServiceError::internal)?;
            let units = u64::try_from(quantity).map_err(ServiceError::internal)?;
            let amount = if model.is_flat() {
                model
                    .amount_for(1)
                    .ok()
                    .and_then(|a| a.checked_mul(quantity))
            } else {
                model.amount_for(units).ok()
            };
            price_id = Some(price);
            price_currency = Some(terms.currency);
            label = db::invoices::price_label(uow.conn(), scope, price).await?;
            (amount, model.unit_amount_hint(), quantity)
        }
    };
    let amount =
        amount.ok_or_else(|| ServiceError::invalid("quantity", "makes the amount too large"))?;
    let currency = match (spec.currency, price_currency, customer.currency.as_deref()) {
        (Some(c), Some(p), _) if c.as_str() != p => {
            return Err(ServiceError::invalid(
                "currency",
                format!("differs from the price's ({p})"),
            ));
        }
        (Some(c), _, _) => c.as_str().to_owned(),
        (None, Some(p), _) => p,
        (None, None, Some(c)) => c.to_owned(),
        (None, None, None) => {
            return Err(ServiceError::invalid(
                "currency",
                "is required: the customer has no currency",
            ));
        }
    };
    if let Some(c) = customer.currency.as_deref()
        && c != currency
    {
        return Err(ServiceError::invalid(
            "currency",
            format!("must be the customer's ({c})"),
        ));
    }
    let description = match (spec.description, label) {
        (Some(d), _) => d.to_owned(),
        (None, Some(l)) => l,
        (None, None) => return Err(ServiceError::invalid("description", "is required")),
    };
    let period = spec.period.unwrap_or(Period {
        start: now,
        end: now,
    });
    let mut draft = None;
    if let Some(id) = spec.invoice {
        let invoice = db::invoices::lock(uow.conn(), scope, id)
            .await
            .map_err(ServiceError::unknown("invoice", "invoice"))?;
        if invoice.customer_id != customer.id {
            return Err(ServiceError::invalid(
                "invoice",
                "is another customer's invoice",
            ));
        }
        if invoice.currency != currency {
            return Err(ServiceError::invalid(
                "invoice",
                format!("is in {}, and the item in {currency}", invoice.currency),
            ));
        }
        if invoice.status != InvoiceStatus::Draft {
            return Err(not_draft(&invoice));
        }
        refuse_renewal_draft(&invoice)?;
        draft = Some(invoice);
    }
    let item = PendingLine {
        id: InvoiceItemId::new(),
        customer_id: customer.id,
        subscription_id: None,
        subscription_item_id: None,
        price_id,
        description,
        currency,
        quantity,
        unit_amount,
        amount,
        proration: false,
        period_start: period.start,
        period_end: period.end,
        invoice_id: draft.as_ref().map(|d| d.id),
        metadata: spec.metadata.to_json(),
        livemode: scope.livemode(),
        created_at: now,
    };
    db::invoices::insert_pending(uow.conn(), scope, std::slice::from_ref(&item)).await?;
    if let Some(mut invoice) = draft {
        refresh_draft(uow, scope, &mut invoice).await?;
    }
    events::record(uow, scope, "invoice_item.created", item.to_json()).await?;
    Ok(item)
}

pub async fn get_item(
    pool: &PgPool,
    scope: Scope,
    id: InvoiceItemId,
) -> ServiceResult<InvoiceItemRow> {
    let mut conn = pool.acquire().await.map_err(db::DbError::from)?;
    db::invoices::get_item(&mut conn, scope, id, false)
        .await
        .map_err(ServiceError::not_found(ITEM))
}

pub async fn list_items(
    pool: &PgPool,
    scope: Scope,
    filter: ItemFilter,
    page: PageRequest,
) -> ServiceResult<Page<InvoiceItemRow>> {
    Ok(db::invoices::list_items(pool, scope, filter, page).await?)
}

/// Deletes an item that no finalized invoice bills: a pending one, or one on a draft (whose
/// lines and totals follow). A subscription's proration items are its own.
pub async fn delete_item(
    uow: &mut UnitOfWork,
    scope: Scope,
    id: InvoiceItemId,
) -> ServiceResult<InvoiceItemRow> {
    let unlocked = db::invoices::get_item(uow.conn(), scope, id, false)
        .await
        .map_err(ServiceError::not_found(ITEM))?;
    // Invoice first, then item: the order in which a draft's changes lock them.
    let draft = match unlocked.invoice_id {
        Some(invoice) => Some(
            db::invoices::lock(uow.conn(), scope, invoice)
                .await
                .map_err(|e| match e {
                    // The draft was deleted meanwhile: the item is pending again.
                    db::DbError::NotFound => ServiceError::conflict(
                        "invoice_item_changed",
                        "The item's draft was deleted meanwhile; read the item again.",
                    ),
                    other => other.into(),
                })?,
        ),
        None => None,
    };
    let item = db::invoices::get_item(uow.conn(), scope, id, true)
        .await
        .map_err(ServiceError::not_found(ITEM))?;
    if item.invoice_id != unlocked.invoice_id {
        return Err(ServiceError::conflict(
            "invoice_item_changed",
            "The item was invoiced meanwhile; read it again.",
        ));
    }
    if item.subscription_id.is_some() {
        return Err(ServiceError::conflict(
            "subscription_invoice_item",
            "This item is a proration of a subscription change; it is billed on the \
             subscription's next invoice.",
        ));
    }
    if let Some(invoice) = &draft
        && invoice.status != InvoiceStatus::Draft
    {
        return Err(ServiceError::conflict(
            "invoice_item_invoiced",
            format!(
                "Invoice {} bills this item; it is {}.",
                invoice.id, invoice.status
            ),
        ));
    }
    if let Some(invoice) = &draft {
        refuse_renewal_draft(invoice)?;
    }
    db::invoices::delete_item(uow.conn(), scope, id).await?;
    if let Some(mut invoice) = draft {
        refresh_draft(uow, scope, &mut invoice).await?;
    }
    events::record(uow, scope, "invoice_item.deleted", item.to_json()).await?;
    Ok(item)
}

// ---- drafts ----

/// A one-off invoice to draft.
#[derive(Debug)]
pub struct DraftSpec<'a> {
    pub customer: CustomerId,
    /// Defaults to the customer's.
    pub currency: Option<Currency>,
    pub collection_method: CollectionMethod,
    /// With `send_invoice`: days from finalization until it is due (default 30).
    pub days_until_due: Option<u32>,
    pub description: Option<&'a str>,
    pub coupon: Option<CouponId>,
    /// Take the customer's pending items in the invoice's currency (default).
    pub include_pending: bool,
    pub metadata: &'a Metadata,
}

/// Drafts a one-off invoice for a customer, with its pending items unless told otherwise. It
/// owes nothing until it is finalized.
pub async fn create_invoice(
    uow: &mut UnitOfWork,
    scope: Scope,
    spec: DraftSpec<'_>,
) -> ServiceResult<InvoiceView> {
    let customer = db::customers::get(uow.conn(), scope, spec.customer)
        .await
        .map_err(ServiceError::unknown("customer", "customer"))?;
    let now = now_for(uow, scope, customer.id).await?;
    let currency = match (spec.currency, customer.currency.as_deref()) {
        (Some(c), Some(own)) if c.as_str() != own => {
            return Err(ServiceError::invalid(
                "currency",
                format!("must be the customer's ({own})"),
            ));
        }
        (Some(c), _) => c.as_str().to_owned(),
        (None, Some(own)) => own.to_owned(),
        (None, None) => {
            return Err(ServiceError::invalid(
                "currency",
                "is required: the customer has no currency",
            ));
        }
    };
    let send = spec.collection_method == CollectionMethod::SendInvoice;
    if spec.days_until_due.is_some() && !send {
        return Err(ServiceError::invalid(
            "days_until_due",
            "applies only with collection_method send_invoice",
        ));
    }
    if let Some(coupon) = spec.coupon {
        redeem_coupon(uow, scope, coupon, &currency, now).await?;
    }
    let mut invoice = invoices::blank(
        scope,
        InvoiceId::new(),
        customer.id,
        &currency,
        spec.collection_method.as_str(),
        "manual",
        Period {
            start: now,
            end: now,
        },
        now,
    );
    invoice.description = spec.description.map(str::to_owned);
    invoice.days_until_due = spec
        .days_until_due
        .map(|d| i32::try_from(d).map_err(ServiceError::internal))
        .transpose()?;
    invoice.coupon_id = spec.coupon;
    invoice.metadata = spec.metadata.to_json();
    db::invoices::insert(uow.conn(), scope, &invoice).await?;
    if spec.include_pending {
        let pending =
            db::invoices::pending_of_customer(uow.conn(), scope, customer.id, &currency).await?;
        let ids: Vec<InvoiceItemId> = pending.iter().map(|p| p.id).collect();
        db::invoices::mark_invoiced(uow.conn(), scope, &ids, invoice.id).await?;
    }
    let lines = refresh_draft(uow, scope, &mut invoice).await?;
    events::record(uow, scope, "invoice.created", invoice.to_json(&lines)).await?;
    Ok(InvoiceView { invoice, lines })
}

/// Writes a draft's lines from its items (its coupon's discount split over them) and its
/// totals; the draft must be locked. Its period runs from its items' earliest start to their
/// latest end (its creation, without items).
async fn refresh_draft(
    uow: &mut UnitOfWork,
    scope: Scope,
    invoice: &mut db::invoices::InvoiceRow,
) -> ServiceResult<Vec<LineRow>> {
    let items = db::invoices::items_of(uow.conn(), scope, invoice.id).await?;
    let mut lines = Vec::with_capacity(items.len());
    invoices::append_pending(&mut lines, &items, invoice.id)?;
    if let Some(coupon) = invoice.coupon_id {
        let coupon = db::coupons::get_any(uow.conn(), scope, coupon).await?;
        let (off, _) = coupon
            .terms()
            .ok_or_else(|| ServiceError::internal("stored coupon terms"))?;
        let currency = Currency::parse(&invoice.currency).map_err(ServiceError::internal)?;
        invoices::split_discount(&mut lines, off, currency);
    }
    let taxed = tax_rates::taxed_totals(uow, scope, invoice.customer_id, &lines, 0).await?;
    invoice.tax_amounts = taxed.tax_amounts;
    invoices::show_totals(invoice, &taxed.totals, uow.now());
    invoice.period_start = items
        .iter()
        .map(|i| i.period_start)
        .min()
        .unwrap_or(invoice.created_at);
    invoice.period_end = items
        .iter()
        .map(|i| i.period_end)
        .max()
        .unwrap_or(invoice.created_at);
    db::invoices::delete_lines(uow.conn(), scope, invoice.id).await?;
    db::invoices::insert_lines(uow.conn(), scope, &lines).await?;
    db::invoices::save(uow.conn(), scope, invoice).await?;
    Ok(lines)
}

fn illegal(e: impl std::fmt::Display) -> ServiceError {
    ServiceError::conflict("invalid_invoice_status", e.to_string())
}

/// Finalizes a draft: numbered, the customer's credit applied, owed (or paid, when nothing is
/// due). An invoice charged automatically gets its first charge queued; one sent for payment,
/// its overdue check at its due date, as a subscription's does (`invoice.overdue`, then the
/// dunning policy's end: marked uncollectible after its waits when the policy says so).
pub async fn finalize_invoice(
    uow: &mut UnitOfWork,
    scope: Scope,
    id: InvoiceId,
) -> ServiceResult<InvoiceView> {
    // A renewal kept a draft for its grace period bills its usage recorded so far.
    if let Some(view) = super::renewals::finalize_draft(uow, scope, id, None).await? {
        return Ok(view);
    }
    let mut invoice = db::invoices::lock(uow.conn(), scope, id)
        .await
        .map_err(ServiceError::not_found("invoice"))?;
    invoice
        .status
        .apply(InvoiceTransition::Finalize)
        .map_err(illegal)?;
    if invoice.subscription_id.is_some() {
        // Every draft of a subscription is a renewal holding its usage, finalized above.
        return Err(ServiceError::internal(
            "a subscription's draft that holds no usage",
        ));
    }
    now_for(uow, scope, invoice.customer_id).await?;
    let lines = db::invoices::lines(uow.conn(), scope, &[id.as_uuid()]).await?;
    let days = invoice.days_until_due;
    invoices::finalize_row(uow, scope, &mut invoice, &lines, days).await?;
    db::invoices::save(uow.conn(), scope, &invoice).await?;
    let json = invoice.to_json(&lines);
    events::record(uow, scope, "invoice.finalized", json.clone()).await?;
    match invoice.status {
        InvoiceStatus::Paid => {
            events::record(uow, scope, "invoice.paid", json).await?;
        }
        _ if invoice.collection_method == CollectionMethod::ChargeAutomatically.as_str() => {
            invoices::queue_attempt(uow, scope, &invoice, 1).await?;
        }
        _ => {
            // At its due date (on the customer's test clock, when it has one).
            if let Some(due) = invoice.due_date.filter(|_| invoice.amount_remaining > 0) {
                let clock = db::test_clocks::of_customer(uow.conn(), scope, invoice.customer_id)
                    .await?
                    .map(|c| c.id.as_uuid());
                let overdue = Job::InvoiceOverdue { invoice: id }
                    .to_new(Some(scope), due)
                    .on_clock(clock);
                let now = uow.now();
                jobs::enqueue(uow.conn(), &[overdue], now).await?;
            }
        }
    }
    Ok(InvoiceView { invoice, lines })
}

/// Deletes a draft; its items are pending again.
pub async fn delete_draft(
    uow: &mut UnitOfWork,
    scope: Scope,
    id: InvoiceId,
) -> ServiceResult<InvoiceView> {
    let invoice = db::invoices::lock(uow.conn(), scope, id)
        .await
        .map_err(ServiceError::not_found("invoice"))?;
    if invoice.status != InvoiceStatus::Draft {
        return Err(ServiceError::conflict(
            "invalid_invoice_status",
            format!(
                "cannot delete an invoice that is {}; void it instead",
                invoice.status
            ),
        ));
    }
    refuse_renewal_draft(&invoice)?;
    let lines = db::invoices::lines(uow.conn(), scope, &[id.as_uuid()]).await?;
    db::invoices::release_items(uow.conn(), scope, id, false).await?;
    db::invoices::delete_lines(uow.conn(), scope, id).await?;
    db::invoices::delete_draft(uow.conn(), scope, id).await?;
    if let Some(coupon) = invoice.coupon_id {
        // It never discounted anything: the redemption is given back.
        let now = uow.now();
        db::coupons::unredeem(uow.conn(), scope, coupon, now).await?;
    }
    events::record(uow, scope, "invoice.deleted", invoice.to_json(&lines)).await?;
    Ok(InvoiceView { invoice, lines })
}

/// Sends an open invoice to the customer: records when, and `invoice.sent` (which the tenant's
/// webhooks carry to whatever delivers it).
pub async fn send_invoice(
    uow: &mut UnitOfWork,
    scope: Scope,
    id: InvoiceId,
) -> ServiceResult<InvoiceView> {
    let mut invoice = db::invoices::lock(uow.conn(), scope, id)
        .await
        .map_err(ServiceError::not_found("invoice"))?;
    if invoice.status != InvoiceStatus::Open {
        return Err(ServiceError::conflict(
            "invalid_invoice_status",
            format!("cannot send an invoice that is {}", invoice.status),
        ));
    }
    let now = now_for(uow, scope, invoice.customer_id).await?;
    invoice.sent_at = Some(now);
    invoice.updated_at = now;
    db::invoices::save(uow.conn(), scope, &invoice).await?;
    let lines = db::invoices::lines(uow.conn(), scope, &[id.as_uuid()]).await?;
    events::record(uow, scope, "invoice.sent", invoice.to_json(&lines)).await?;
    Ok(InvoiceView { invoice, lines })
}
