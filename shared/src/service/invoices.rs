//! Invoices and their payments.
//!
//! - Numbers are assigned at finalization in the finalizing transaction, sequential per
//!   (tenant, mode, prefix) with no gaps.
//! - A subscription's period is invoiced once ([`invoice_period`]: the subscription is locked
//!   and the period's invoice looked up first; a unique index backs it).
//! - A charge is three steps, so that a crash anywhere charges at most once:
//!   [`start_attempts`] re-reads the invoice under its lock (a paid or void invoice is never
//!   charged) and records a pending attempt with its idempotency key; [`charge`] calls the
//!   gateway with that key outside any transaction; [`record_outcome`] writes the answer. A run
//!   that dies after the first step finds the pending attempt and sends the same key again.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::{
    ServiceError, ServiceResult,
    balance::{self, Why},
    events, tax_rates,
};
use crate::{
    db::{
        self,
        customers::CustomerRow,
        events::NewEvent,
        invoices::{LineRow, PaymentStatus},
        pagination::{Page, PageRequest},
        subscriptions::{ItemRow, SubscriptionRow},
    },
    domain::{
        coupon::{Discount, allocate},
        customer::InvoicePrefix,
        invoice::{InvoiceStatus, InvoiceTransition, Totals, is_hard_decline},
        money::Currency,
        period::Period,
        pricing::PriceModel,
        subscription::{CollectionMethod, Transition},
    },
    ids::{
        CustomerId, InvoiceId, InvoiceItemId, InvoiceLineId, PaymentId, PaymentMethodId,
        SubscriptionId, TenantId,
    },
    payments::{ChargeOutcome, Gateway, application_fee},
    stripe::{Failure, Stripe},
    tenancy::{Scope, TenantContext},
    uow::UnitOfWork,
};

/// What the operations of this module take and return.
pub use crate::db::invoices::{InvoiceFilter, InvoiceRow, PaymentRow};

const WHAT: &str = "invoice";
const PAYMENT: &str = "payment";

/// `ACME-000123`: the prefix and the number, at least six digits.
pub fn format_number(prefix: &InvoicePrefix, number: i64) -> String {
    prefix.number(number)
}

/// The next invoice number of `prefix` (the customer's, or the tenant's), taken in the unit of
/// work: concurrent finalizations take turns, and one that rolls back gives its number back.
pub async fn assign_number(
    uow: &mut UnitOfWork,
    ctx: &TenantContext,
    prefix: &InvoicePrefix,
) -> ServiceResult<String> {
    next_number(uow, ctx.scope(), prefix).await
}

async fn next_number(
    uow: &mut UnitOfWork,
    scope: Scope,
    prefix: &InvoicePrefix,
) -> ServiceResult<String> {
    let n = db::invoice_numbers::next(uow.conn(), scope, prefix.as_str()).await?;
    Ok(format_number(prefix, n))
}

/// The prefix of a customer's invoice numbers: its own, or the tenant's (from its slug).
async fn prefix_of(
    uow: &mut UnitOfWork,
    scope: Scope,
    customer: &CustomerRow,
) -> ServiceResult<InvoicePrefix> {
    if let Some(p) = own_prefix(customer) {
        return Ok(p);
    }
    let profile = db::tenants::billing_profile(uow.conn(), scope.tenant_id()).await?;
    Ok(InvoicePrefix::from_slug(&profile.slug))
}

/// The customer's own prefix, when it has one (else the tenant's is used).
pub(crate) fn own_prefix(customer: &CustomerRow) -> Option<InvoicePrefix> {
    customer
        .invoice_prefix
        .as_deref()
        .and_then(|p| InvoicePrefix::parse(p).ok())
}

/// What an item bills for a whole period at its quantity, and the price of one unit when the
/// price has one. A flat price is a fixed fee per item: a quantity of them bills it that many
/// times.
pub fn item_amount(item: &ItemRow) -> ServiceResult<(i64, Option<i64>)> {
    let model: PriceModel =
        serde_json::from_value(item.model.clone()).map_err(ServiceError::internal)?;
    let quantity = u64::try_from(item.quantity).map_err(ServiceError::internal)?;
    let (amount, unit) = if model.is_flat() {
        let unit = model.amount_for(1).ok();
        (unit.and_then(|a| a.checked_mul(item.quantity)), unit)
    } else {
        (model.amount_for(quantity).ok(), model.unit_amount_hint())
    };
    let amount = amount.ok_or_else(|| {
        ServiceError::invalid(
            "quantity",
            format!("makes the amount of {} too large", item.description()),
        )
    })?;
    Ok((amount, unit))
}

/// How a line names an item and its quantity.
pub fn item_label(item: &ItemRow) -> String {
    if item.quantity == 1 {
        item.description()
    } else {
        format!("{} × {}", item.quantity, item.description())
    }
}

/// The lines a period of `items` bills in advance: one per licensed item, each its price for
/// the quantity (metered items bill their usage in arrears: [`super::usage`]).
pub fn period_lines(
    invoice: InvoiceId,
    items: &[ItemRow],
    period: Period,
) -> ServiceResult<Vec<LineRow>> {
    items
        .iter()
        .filter(|item| item.usage.is_none())
        .enumerate()
        .map(|(i, item)| {
            let (amount, unit_amount) = item_amount(item)?;
            Ok(LineRow {
                id: InvoiceLineId::new(),
                invoice_id: invoice,
                position: i32::try_from(i).map_err(ServiceError::internal)?,
                description: item_label(item),
                price_id: Some(item.price_id),
                subscription_item_id: Some(item.id),
                quantity: item.quantity,
                unit_amount,
                amount,
                discount_amount: 0,
                proration: false,
                period_start: period.start,
                period_end: period.end,
            })
        })
        .collect()
}

/// Invoices one period of a subscription (the subscription must be locked, and the caller
/// saves it): the items' lines for the period (less its coupon's discount), then the lines
/// waiting for this invoice (prorations), finalized with the next number (see [`issue`]). Returns the period's invoice and whether it was made now; a period
/// already invoiced gets nothing new.
pub async fn invoice_period(
    uow: &mut UnitOfWork,
    scope: Scope,
    sub: &mut SubscriptionRow,
    items: &[ItemRow],
    period: Period,
    billing_reason: &str,
) -> ServiceResult<(InvoiceRow, bool)> {
    if let Some(existing) = db::invoices::of_period(uow.conn(), scope, sub.id, period.start).await?
    {
        return Ok((existing, false));
    }
    // A renewal invoice still a draft bills the usage before its period first.
    super::renewals::finalize_held(uow, scope, sub).await?;
    let id = InvoiceId::new();
    let mut lines = period_lines(id, items, period)?;
    let usage = super::usage::Billable {
        scope,
        sub,
        until: period.start,
        invoice: id,
        position: lines.len(),
    };
    lines.extend(super::usage::bill(uow, &[usage]).await?.concat());
    // Usage before the period is on this invoice (or was free): events for it are refused.
    sub.usage_billed_until = sub.usage_billed_until.max(Some(period.start));
    discount(uow, scope, sub, &mut lines, period).await?;
    let mut pending = db::invoices::pending_of(uow.conn(), scope, sub.id).await?;
    // The customer's one-off items in the currency come along (as at Stripe). The customer is
    // locked before them, as creating a subscription (which invoices its first period) does.
    db::customers::lock(uow.conn(), scope, sub.customer_id).await?;
    pending.extend(
        db::invoices::pending_of_customer(uow.conn(), scope, sub.customer_id, &sub.currency)
            .await?,
    );
    append_pending(&mut lines, &pending, id)?;
    let draft = Draft {
        id,
        lines,
        taken: &pending,
        period,
        billing_reason,
    };
    let invoice = issue(uow, scope, sub, draft).await?;
    if sub.coupon_id.is_some() {
        // One more period invoice since the redemption (saved with the subscription).
        sub.coupon_invoices = sub.coupon_invoices.saturating_add(1);
    }
    Ok((invoice, true))
}

/// Applies the subscription's discounts to a period's lines: its bundle's, then its coupon's
/// (on what the bundle left) while the coupon's duration lasts; each the discount of the
/// lines' sum, split over them in proportion ([`allocate`]).
pub(crate) async fn discount(
    uow: &mut UnitOfWork,
    scope: Scope,
    sub: &SubscriptionRow,
    lines: &mut [LineRow],
    period: Period,
) -> ServiceResult<()> {
    if !apply_bundle(sub, lines)? {
        return Ok(());
    }
    let Some(coupon) = sub.coupon_id else {
        return Ok(());
    };
    let coupon = db::coupons::get_any(uow.conn(), scope, coupon).await?;
    apply_coupon(sub, &coupon, lines, period)
}

/// Applies the subscription's bundle discount to a period's lines (see [`discount`]), and
/// says whether it has a coupon to apply after it ([`apply_coupon`]).
pub(crate) fn apply_bundle(sub: &SubscriptionRow, lines: &mut [LineRow]) -> ServiceResult<bool> {
    let currency = Currency::parse(&sub.currency).map_err(ServiceError::internal)?;
    if let Ok(bps @ 1..) = u32::try_from(sub.bundle_discount_bps) {
        split_discount(lines, Discount::Percent(bps), currency);
    }
    Ok(sub.coupon_id.is_some() && sub.coupon_redeemed_at.is_some())
}

/// Applies the subscription's coupon (its row) to a period's lines, on what the bundle left,
/// while the coupon's duration lasts (see [`discount`]).
pub(crate) fn apply_coupon(
    sub: &SubscriptionRow,
    coupon: &db::coupons::CouponRow,
    lines: &mut [LineRow],
    period: Period,
) -> ServiceResult<()> {
    let currency = Currency::parse(&sub.currency).map_err(ServiceError::internal)?;
    let Some(redeemed_at) = sub.coupon_redeemed_at else {
        return Ok(());
    };
    let (off, duration) = coupon
        .terms()
        .ok_or_else(|| ServiceError::internal("stored coupon terms"))?;
    let nth = u32::try_from(sub.coupon_invoices).unwrap_or(u32::MAX);
    if !duration.applies(redeemed_at, nth, period.start) {
        return Ok(());
    }
    split_discount(lines, off, currency);
    Ok(())
}

/// Adds to the lines' discounts `off` of what their charges add up to after the discounts
/// they have (credits are not discounted), split over the charges in proportion
/// ([`allocate`]).
pub(crate) fn split_discount(lines: &mut [LineRow], off: Discount, currency: Currency) {
    let amounts: Vec<i64> = lines.iter().map(|l| l.amount - l.discount_amount).collect();
    let charged = amounts
        .iter()
        .try_fold(0i64, |a, b| a.checked_add((*b).max(0)));
    let total = off.off(charged.unwrap_or(0), currency);
    for (line, part) in lines.iter_mut().zip(allocate(total, &amounts)) {
        line.discount_amount += part;
    }
}

/// Invoices the lines waiting for the subscription's next invoice now (a change made with
/// `always_invoice`), and with `usage_until` (a subscription ending) the usage of its metered
/// items not invoiced yet up to then; `None` when there is nothing to invoice.
pub async fn invoice_pending(
    uow: &mut UnitOfWork,
    scope: Scope,
    sub: &SubscriptionRow,
    usage_until: Option<DateTime<Utc>>,
) -> ServiceResult<Option<InvoiceRow>> {
    let id = InvoiceId::new();
    let mut lines = Vec::new();
    if let Some(until) = usage_until {
        let usage = super::usage::Billable {
            scope,
            sub,
            until,
            invoice: id,
            position: 0,
        };
        lines.extend(super::usage::bill(uow, &[usage]).await?.concat());
        // As on a period invoice: the subscription's bundle and coupon apply to its usage.
        if let (Some(start), Some(end)) = (
            lines.iter().map(|l| l.period_start).min(),
            lines.iter().map(|l| l.period_end).max(),
        ) {
            discount(uow, scope, sub, &mut lines, Period { start, end }).await?;
        }
    }
    let pending = db::invoices::pending_of(uow.conn(), scope, sub.id).await?;
    let (Some(start), Some(end)) = (
        pending
            .iter()
            .map(|l| l.period_start)
            .chain(lines.iter().map(|l| l.period_start))
            .min(),
        pending
            .iter()
            .map(|l| l.period_end)
            .chain(lines.iter().map(|l| l.period_end))
            .max(),
    ) else {
        return Ok(None);
    };
    append_pending(&mut lines, &pending, id)?;
    let period = Period { start, end };
    let draft = Draft {
        id,
        lines,
        taken: &pending,
        period,
        billing_reason: "subscription_update",
    };
    Ok(Some(issue(uow, scope, sub, draft).await?))
}

/// Appends the lines waiting for an invoice to the lines of `invoice`.
pub(crate) fn append_pending(
    lines: &mut Vec<LineRow>,
    pending: &[db::invoices::PendingLine],
    invoice: InvoiceId,
) -> ServiceResult<()> {
    for p in pending {
        let position = i32::try_from(lines.len()).map_err(ServiceError::internal)?;
        lines.push(pending_line(p, invoice, position));
    }
    Ok(())
}

/// A line waiting for an invoice, as a line of `invoice` at `position`.
fn pending_line(p: &db::invoices::PendingLine, invoice: InvoiceId, position: i32) -> LineRow {
    LineRow {
        id: InvoiceLineId::new(),
        invoice_id: invoice,
        position,
        description: p.description.clone(),
        price_id: p.price_id,
        subscription_item_id: p.subscription_item_id,
        quantity: p.quantity,
        unit_amount: p.unit_amount,
        amount: p.amount,
        discount_amount: 0,
        proration: p.proration,
        period_start: p.period_start,
        period_end: p.period_end,
    }
}

/// An invoice to make: its lines, which include the waiting lines `taken`.
struct Draft<'a> {
    id: InvoiceId,
    lines: Vec<LineRow>,
    taken: &'a [db::invoices::PendingLine],
    period: Period,
    billing_reason: &'a str,
}

/// Makes an invoice of `lines`, which include the waiting lines `taken` (marked as invoiced by
/// it): applies the customer's credit (a negative total becomes credit), finalizes it with the next
/// number and records `invoice.created` and `invoice.finalized` (and `invoice.paid` when
/// nothing is due).
async fn issue(
    uow: &mut UnitOfWork,
    scope: Scope,
    sub: &SubscriptionRow,
    draft: Draft<'_>,
) -> ServiceResult<InvoiceRow> {
    let Draft {
        id,
        lines,
        taken,
        period,
        billing_reason,
    } = draft;
    let now = uow.now();
    let mut invoice = blank_of(scope, id, sub, billing_reason, period, now);
    finalize_row(uow, scope, &mut invoice, &lines, sub.days_until_due).await?;
    let settled = invoice.status == InvoiceStatus::Paid;
    if !db::invoices::insert(uow.conn(), scope, &invoice).await? {
        return Err(ServiceError::conflict(
            "period_already_invoiced",
            "This period of the subscription is already invoiced.",
        ));
    }
    db::invoices::insert_lines(uow.conn(), scope, &lines).await?;
    let taken: Vec<InvoiceItemId> = taken.iter().map(|p| p.id).collect();
    db::invoices::mark_invoiced(uow.conn(), scope, &taken, id).await?;
    let json = invoice.to_json(&lines);
    events::record(uow, scope, "invoice.created", json.clone()).await?;
    events::record(uow, scope, "invoice.finalized", json.clone()).await?;
    if settled {
        events::record(uow, scope, "invoice.paid", json).await?;
    }
    Ok(invoice)
}

/// A draft invoice of a subscription's `period` with nothing on it yet.
pub(crate) fn blank_of(
    scope: Scope,
    id: InvoiceId,
    sub: &SubscriptionRow,
    billing_reason: &str,
    period: Period,
    now: DateTime<Utc>,
) -> InvoiceRow {
    let mut invoice = blank(
        scope,
        id,
        sub.customer_id,
        &sub.currency,
        &sub.collection_method,
        billing_reason,
        period,
        now,
    );
    invoice.subscription_id = Some(sub.id);
    invoice
}

/// A draft invoice with nothing on it yet.
#[allow(clippy::too_many_arguments)]
pub(crate) fn blank(
    scope: Scope,
    id: InvoiceId,
    customer: CustomerId,
    currency: &str,
    collection_method: &str,
    billing_reason: &str,
    period: Period,
    now: DateTime<Utc>,
) -> InvoiceRow {
    InvoiceRow {
        id,
        tenant_id: scope.tenant_id(),
        livemode: scope.livemode(),
        customer_id: customer,
        subscription_id: None,
        status: InvoiceStatus::Draft,
        number: None,
        currency: currency.to_owned(),
        billing_reason: billing_reason.to_owned(),
        collection_method: collection_method.to_owned(),
        period_start: period.start,
        period_end: period.end,
        subtotal: 0,
        discount: 0,
        tax: 0,
        total: 0,
        balance_applied: 0,
        amount_due: 0,
        amount_paid: 0,
        amount_remaining: 0,
        attempt_count: 0,
        due_date: None,
        finalized_at: None,
        paid_at: None,
        voided_at: None,
        metadata: serde_json::json!({}),
        created_at: now,
        updated_at: now,
        description: None,
        sent_at: None,
        days_until_due: None,
        coupon_id: None,
        amount_credited: 0,
        credit_note_count: 0,
        tax_amounts: serde_json::json!([]),
    }
}

/// Finalizes `invoice` (a draft of `lines`) in the unit of work: applies the customer's credit
/// (a negative total becomes credit), takes the next number, and sets its status (paid when
/// nothing is due), totals and due date (`send_invoice`: `days_until_due`, default 30, from
/// now). The caller writes the row and records the events.
pub(crate) async fn finalize_row(
    uow: &mut UnitOfWork,
    scope: Scope,
    invoice: &mut InvoiceRow,
    lines: &[LineRow],
    days_until_due: Option<i32>,
) -> ServiceResult<()> {
    let now = uow.now();
    let customer = db::customers::lock(uow.conn(), scope, invoice.customer_id)
        .await
        .map_err(ServiceError::not_found("customer"))?;
    let taxed = tax_rates::taxed_totals(uow, scope, customer.id, lines, customer.balance).await?;
    let totals = taxed.totals;
    invoice.tax_amounts = taxed.tax_amounts;
    use_balance(uow, scope, customer.id, invoice.id, &totals).await?;
    let prefix = prefix_of(uow, scope, &customer).await?;
    if uow.numbering_deferred() {
        // Numbered at the commit, with the events recorded about it meanwhile.
        uow.number_at_commit(scope, prefix, invoice.id);
    } else {
        let number = next_number(uow, scope, &prefix).await?;
        db::invoice_numbers::hold(uow.conn(), scope, &number, invoice.id).await?;
        invoice.number = Some(number);
    }
    settle(invoice, &totals, now, days_until_due);
    Ok(())
}

/// Records in the customer's balance what finalizing an invoice of `totals` takes from it
/// (credit applied) or gives it (a negative total).
pub(crate) async fn use_balance(
    uow: &mut UnitOfWork,
    scope: Scope,
    customer: CustomerId,
    invoice: InvoiceId,
    totals: &Totals,
) -> ServiceResult<()> {
    balance::record(
        uow,
        scope,
        customer,
        -totals.balance_applied,
        Why::AppliedToInvoice(invoice),
        None,
    )
    .await?;
    balance::record(
        uow,
        scope,
        customer,
        totals.credit_to_balance,
        Why::InvoiceCredit(invoice),
        None,
    )
    .await?;
    Ok(())
}

/// Sets the totals a draft of `totals` shows until it is finalized (the customer's credit is
/// applied then).
pub(crate) fn show_totals(invoice: &mut InvoiceRow, totals: &Totals, now: DateTime<Utc>) {
    invoice.subtotal = totals.subtotal;
    invoice.discount = totals.discount;
    invoice.tax = totals.tax;
    invoice.total = totals.total;
    invoice.amount_due = totals.amount_due;
    invoice.amount_remaining = totals.amount_due;
    invoice.updated_at = now;
}

/// Sets what finalizing gives an invoice of `totals` at `now`: its status (paid when nothing
/// is due), totals and due date (`send_invoice`: `days_until_due`, default 30, from now).
pub(crate) fn settle(
    invoice: &mut InvoiceRow,
    totals: &Totals,
    now: DateTime<Utc>,
    days_until_due: Option<i32>,
) {
    let settled = totals.amount_due == 0;
    invoice.status = if settled {
        InvoiceStatus::Paid
    } else {
        InvoiceStatus::Open
    };
    show_totals(invoice, totals, now);
    invoice.balance_applied = totals.balance_applied;
    invoice.amount_paid = 0;
    let send = invoice.collection_method == CollectionMethod::SendInvoice.as_str();
    let days = u64::try_from(days_until_due.unwrap_or(30)).unwrap_or(30);
    invoice.due_date = send.then(|| now + chrono::Days::new(days));
    invoice.finalized_at = Some(now);
    invoice.paid_at = settled.then_some(now);
    invoice.updated_at = now;
}

// ---- reading ----

/// An invoice with its lines.
#[derive(Debug, Clone)]
pub struct InvoiceView {
    pub invoice: InvoiceRow,
    pub lines: Vec<LineRow>,
}

impl InvoiceView {
    pub fn to_json(&self) -> serde_json::Value {
        self.invoice.to_json(&self.lines)
    }
}

async fn with_lines(
    pool: &PgPool,
    scope: Scope,
    invoices: Vec<InvoiceRow>,
) -> ServiceResult<Vec<InvoiceView>> {
    let ids: Vec<uuid::Uuid> = invoices.iter().map(|i| i.id.as_uuid()).collect();
    let mut lines: HashMap<InvoiceId, Vec<LineRow>> = HashMap::new();
    for l in db::invoices::lines(pool, scope, &ids).await? {
        lines.entry(l.invoice_id).or_default().push(l);
    }
    Ok(invoices
        .into_iter()
        .map(|invoice| InvoiceView {
            lines: lines.remove(&invoice.id).unwrap_or_default(),
            invoice,
        })
        .collect())
}

pub async fn get_invoice(pool: &PgPool, scope: Scope, id: InvoiceId) -> ServiceResult<InvoiceView> {
    let mut conn = pool.acquire().await.map_err(db::DbError::from)?;
    let invoice = db::invoices::get(&mut conn, scope, id)
        .await
        .map_err(ServiceError::not_found(WHAT))?;
    drop(conn);
    let lines = db::invoices::lines(pool, scope, &[id.as_uuid()]).await?;
    Ok(InvoiceView { invoice, lines })
}

pub async fn list_invoices(
    pool: &PgPool,
    scope: Scope,
    filter: InvoiceFilter,
    page: PageRequest,
) -> ServiceResult<Page<InvoiceView>> {
    let page = db::invoices::list(pool, scope, filter, page).await?;
    let has_more = page.has_more;
    let items = with_lines(pool, scope, page.items).await?;
    Ok(Page { items, has_more })
}

pub async fn get_payment(pool: &PgPool, scope: Scope, id: PaymentId) -> ServiceResult<PaymentRow> {
    let mut conn = pool.acquire().await.map_err(db::DbError::from)?;
    db::invoices::get_payment(&mut conn, scope, id)
        .await
        .map_err(ServiceError::not_found(PAYMENT))
}

pub async fn list_payments(
    pool: &PgPool,
    scope: Scope,
    invoice: Option<InvoiceId>,
    page: PageRequest,
) -> ServiceResult<Page<PaymentRow>> {
    Ok(db::invoices::list_payments(pool, scope, invoice, page).await?)
}

// ---- status changes ----

async fn lines_of(
    uow: &mut UnitOfWork,
    scope: Scope,
    id: InvoiceId,
) -> ServiceResult<Vec<LineRow>> {
    Ok(db::invoices::lines(uow.conn(), scope, &[id.as_uuid()]).await?)
}

fn illegal(e: impl std::fmt::Display) -> ServiceError {
    ServiceError::conflict("invalid_invoice_status", e.to_string())
}

/// Voids an open or uncollectible invoice: nothing is owed on it any more, and it is never
/// charged again.
pub async fn void_invoice(
    uow: &mut UnitOfWork,
    scope: Scope,
    id: InvoiceId,
) -> ServiceResult<InvoiceView> {
    let mut invoice = lock_with_subscription(uow, scope, id).await?;
    void_locked(uow, scope, &mut invoice).await?;
    if let Some(sub) = invoice.subscription_id {
        // A subscription past due (or unpaid) for its latest invoice owes nothing for it now:
        // active again, as when it is paid.
        let mut sub = db::subscriptions::lock(uow.conn(), scope, sub).await?;
        let voided = Transition::LatestInvoiceVoided;
        if sub.latest_invoice_id == Some(invoice.id)
            && let Ok(next) = sub.status.apply(voided)
        {
            super::subscriptions::move_to(uow, scope, &mut sub, next, voided).await?;
        }
    }
    let lines = lines_of(uow, scope, id).await?;
    Ok(InvoiceView { invoice, lines })
}

pub(crate) async fn void_locked(
    uow: &mut UnitOfWork,
    scope: Scope,
    invoice: &mut InvoiceRow,
) -> ServiceResult<()> {
    let now = uow.now();
    invoice.status = invoice
        .status
        .apply(InvoiceTransition::Void)
        .map_err(illegal)?;
    refuse_while_in_flight(uow, scope, invoice.id).await?;
    if db::invoices::credited_by_proration(uow.conn(), scope, invoice.id).await? {
        // The credit was given for what this invoice billed: voiding it would give it twice.
        return Err(ServiceError::conflict(
            "invoice_credited",
            "A later change of the subscription credited lines of this invoice; it cannot be \
             voided.",
        ));
    }
    invoice.amount_remaining = 0;
    invoice.voided_at = Some(now);
    invoice.updated_at = now;
    db::invoices::save(uow.conn(), scope, invoice).await?;
    // One-off items it billed wait for the customer's next invoice again.
    db::invoices::release_items(uow.conn(), scope, invoice.id, true).await?;
    // Credit that paid part of it goes back to the customer.
    balance::record(
        uow,
        scope,
        invoice.customer_id,
        invoice.balance_applied,
        Why::UnappliedFromInvoice(invoice.id),
        None,
    )
    .await?;
    let lines = lines_of(uow, scope, invoice.id).await?;
    events::record(uow, scope, "invoice.voided", invoice.to_json(&lines)).await?;
    Ok(())
}

/// Marks an open invoice uncollectible (written off; it can still be paid or voided).
pub async fn mark_uncollectible(
    uow: &mut UnitOfWork,
    scope: Scope,
    id: InvoiceId,
) -> ServiceResult<InvoiceView> {
    let now = uow.now();
    let mut invoice = db::invoices::lock(uow.conn(), scope, id)
        .await
        .map_err(ServiceError::not_found(WHAT))?;
    invoice.status = invoice
        .status
        .apply(InvoiceTransition::MarkUncollectible)
        .map_err(illegal)?;
    invoice.updated_at = now;
    db::invoices::save(uow.conn(), scope, &invoice).await?;
    let lines = lines_of(uow, scope, id).await?;
    events::record(
        uow,
        scope,
        "invoice.marked_uncollectible",
        invoice.to_json(&lines),
    )
    .await?;
    Ok(InvoiceView { invoice, lines })
}

// ---- payments ----

/// What [`start_attempts`] found to do.
#[derive(Debug, Clone)]
pub enum Attempt {
    /// Charge this pending attempt with this gateway token.
    Charge {
        payment: PaymentRow,
        token: String,
        customer: ChargeCustomer,
        account: Option<String>,
    },
    /// Nothing to charge: the attempt was recorded already (failed at once: no payment
    /// method), or the invoice owes nothing, or the attempt number was used.
    Nothing(Option<PaymentRow>),
    /// Not yet: the payment method is not attached to its customer on the connected Stripe
    /// account yet; nothing was recorded, and the job looks again shortly.
    Waiting,
    /// First cancel this attempt at the gateway: it waits for the customer to authenticate
    /// with a payment method that is no longer the customer's default, and the attempt asked
    /// for is the next one, with the new default. Then the attempt asked for starts.
    Supersede {
        payment: PaymentRow,
        account: Option<String>,
    },
}

/// The Stripe customer a charge names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeCustomer {
    /// None: a test card (or the sandbox), charged on its own.
    None,
    /// The customer a payment method of the connected account is attached to (Stripe charges
    /// such a method only with its customer).
    Stripe(String),
}

/// What a charge of `method` sends, on `account` (the connected one, if any): the payment
/// method and the customer. `None`: a payment method of the connected account not attached
/// to its customer there yet (its sync has not run), which must not be charged before (Stripe
/// would not let it be attached after).
fn charge_with(
    method: db::customers::ChargeMethod,
    account: Option<&str>,
) -> Option<(String, ChargeCustomer)> {
    if account.is_none() || crate::payments::test_card(&method.gateway_token).is_some() {
        return Some((method.gateway_token, ChargeCustomer::None));
    }
    match (method.stripe_payment_method_id, method.stripe_customer_id) {
        (Some(pm), Some(customer)) => Some((pm, ChargeCustomer::Stripe(customer))),
        _ => None,
    }
}

/// The answer to a charge that waits for its payment method's sync.
fn not_synced_yet() -> ServiceError {
    ServiceError::conflict(
        "payment_method_not_synced",
        "The payment method is not attached to its customer on the connected Stripe account yet.",
    )
}

/// Locks an invoice the way every change that may also touch its subscription does:
/// subscription first, then invoice (then customer), so that a cancel and a payment's outcome
/// never wait for each other in a cycle.
pub(crate) async fn lock_with_subscription(
    uow: &mut UnitOfWork,
    scope: Scope,
    id: InvoiceId,
) -> ServiceResult<InvoiceRow> {
    let unlocked = db::invoices::get(uow.conn(), scope, id)
        .await
        .map_err(ServiceError::not_found(WHAT))?;
    if let Some(sub) = unlocked.subscription_id {
        db::subscriptions::lock(uow.conn(), scope, sub).await?;
    }
    Ok(db::invoices::lock(uow.conn(), scope, id).await?)
}

/// How long a job held back by a payment in flight (`payment_in_progress`) waits before it
/// looks again (a test clock's: past the advance that found it so).
pub const PAYMENT_IN_PROGRESS_RECHECK: chrono::Duration = chrono::Duration::hours(1);

/// Refuses a change that would leave an attempt in flight charging an invoice that no longer
/// owes it.
pub(crate) async fn refuse_while_in_flight(
    uow: &mut UnitOfWork,
    scope: Scope,
    id: InvoiceId,
) -> ServiceResult<()> {
    match db::invoices::in_flight_payment(uow.conn(), scope, id).await? {
        Some(p) => Err(in_progress(&p)),
        None => Ok(()),
    }
}

/// The conflict of a payment in flight: wait for its outcome.
fn in_progress(p: &PaymentRow) -> ServiceError {
    ServiceError::conflict(
        "payment_in_progress",
        format!(
            "Payment {} of this invoice is {}; wait for its outcome.",
            p.id, p.status
        ),
    )
}

/// Locks invoices of any tenants the way [`lock_with_subscription`] locks one: their
/// subscriptions first (in id order), then the invoices (in id order). Returns the locked
/// invoices and subscriptions by id.
async fn lock_many_with_subscriptions(
    uow: &mut UnitOfWork,
    keys: &[(Scope, InvoiceId)],
) -> ServiceResult<(
    HashMap<InvoiceId, InvoiceRow>,
    HashMap<SubscriptionId, SubscriptionRow>,
)> {
    let unlocked = db::invoices::get_many(uow.conn(), keys, false).await?;
    let subs: Vec<(Scope, SubscriptionId)> = unlocked
        .iter()
        .filter_map(|i| i.subscription_id.map(|s| (scope_of(i), s)))
        .collect();
    let subs = db::subscriptions::lock_many(uow.conn(), &subs)
        .await?
        .into_iter()
        .map(|s| (s.id, s))
        .collect();
    let invoices = db::invoices::get_many(uow.conn(), keys, true)
        .await?
        .into_iter()
        .map(|i| (i.id, i))
        .collect();
    Ok((invoices, subs))
}

/// The tenant and mode an invoice is in.
fn scope_of(invoice: &InvoiceRow) -> Scope {
    Scope {
        tenant_id: invoice.tenant_id,
        livemode: invoice.livemode,
    }
}

/// Step 1 of charges (scope, invoice, attempt number): under the invoices' locks, decides for
/// each whether to make attempt `number` and records it as pending (or finds the attempt a
/// crashed run left in flight). What all of them read, and the attempts they record, take one
/// statement each; the answers are in the order given.
pub async fn start_attempts(
    uow: &mut UnitOfWork,
    stripe: &Stripe,
    charges: &[(Scope, InvoiceId, i32)],
) -> ServiceResult<Vec<Attempt>> {
    let now = uow.now();
    let keys: Vec<(Scope, InvoiceId)> = charges.iter().map(|c| (c.0, c.1)).collect();
    let (mut invoices, _) = lock_many_with_subscriptions(uow, &keys).await?;
    let in_flight: HashMap<InvoiceId, PaymentRow> =
        db::invoices::in_flight_payments(uow.conn(), &keys)
            .await?
            .into_iter()
            .map(|p| (p.invoice_id, p))
            .collect();
    let mut last: HashMap<InvoiceId, i32> = db::invoices::last_attempts(uow.conn(), &keys)
        .await?
        .into_iter()
        .collect();
    let owners: Vec<(Scope, CustomerId)> = invoices
        .values()
        .map(|i| (scope_of(i), i.customer_id))
        .collect();
    let ChargeTerms {
        fees,
        accounts,
        methods,
    } = ChargeTerms::read(uow, &owners).await?;
    // An attempt with no payment method fails at once, and its decline reads the customer
    // under its lock: those customers are locked now, in id order, after the invoices.
    let unequipped: Vec<(Scope, CustomerId)> = owners
        .iter()
        .filter(|(_, c)| !methods.contains_key(c))
        .copied()
        .collect();
    if !unequipped.is_empty() {
        db::customers::lock_many(uow.conn(), &unequipped).await?;
    }

    let mut attempts = Vec::with_capacity(charges.len());
    let mut started: Vec<PaymentRow> = Vec::new();
    let mut changed: Vec<InvoiceId> = Vec::new();
    let mut charging = HashSet::new();
    for &(scope, id, number) in charges {
        let invoice = invoices.get_mut(&id).ok_or(ServiceError::NotFound(WHAT))?;
        let account = accounts.get(&scope).cloned();
        let platform_fee_bps = fee_of(&fees, scope)?;
        if charging.contains(&id) {
            // Charged earlier in this batch: once is enough.
            attempts.push(Attempt::Nothing(None));
            continue;
        }
        let resumed = match in_flight.get(&id) {
            // Interrupted before the gateway answered: charged again with its key, never twice.
            Some(p) if p.status == PaymentStatus::Pending && p.gateway_id.is_none() => {
                Some(p.clone())
            }
            // Waiting for the customer to authenticate with a card that is no longer the
            // default, and the attempt asked for is the next (a new default card's): that one
            // is canceled first, so that it can never take the money too.
            Some(p)
                if p.status == PaymentStatus::RequiresAction
                    && p.gateway_id.is_some()
                    && number == p.attempt + 1
                    && methods
                        .get(&invoice.customer_id)
                        .is_some_and(|m| Some(m.id) != p.payment_method_id) =>
            {
                charging.insert(id);
                attempts.push(Attempt::Supersede {
                    payment: p.clone(),
                    account,
                });
                continue;
            }
            // The customer may still confirm that one, or the gateway is processing it: a
            // second charge could take the money twice; its outcome comes as a gateway event.
            Some(_) => {
                attempts.push(Attempt::Nothing(None));
                continue;
            }
            None => None,
        };
        if let Some(payment) = resumed {
            charging.insert(id);
            let method = match payment.payment_method_id {
                Some(pm) => db::customers::payment_token(uow.conn(), scope, pm).await?,
                None => return Err(ServiceError::internal("a pending payment without a method")),
            };
            let Some((token, customer)) = charge_with(method, account.as_deref()) else {
                attempts.push(Attempt::Waiting);
                continue;
            };
            attempts.push(Attempt::Charge {
                payment,
                token,
                customer,
                account,
            });
            continue;
        }
        if !invoice.status.is_payable()
            || invoice.amount_remaining == 0
            // Each attempt number is made once.
            || number <= last.get(&id).copied().unwrap_or(0)
        {
            attempts.push(Attempt::Nothing(None));
            continue;
        }
        let method = methods.get(&invoice.customer_id).cloned();
        let method_id = method.as_ref().map(|m| m.id);
        let charged = method.and_then(|m| charge_with(m, account.as_deref()));
        if method_id.is_some() && charged.is_none() {
            attempts.push(Attempt::Waiting);
            continue;
        }
        let mut payment = PendingAttempt {
            scope,
            number,
            method: method_id,
            gateway: Gateway::for_mode(stripe, scope.livemode()).name(),
            on_account: account.is_some(),
            platform_fee_bps,
        }
        .record_on(invoice, now);
        changed.push(id);
        last.insert(id, number);
        let Some((token, customer)) = charged else {
            payment.status = PaymentStatus::Failed;
            payment.failure_code = Some("payment_method_missing".into());
            payment.failure_message = Some("The customer has no default payment method.".into());
            db::invoices::insert_payment(uow.conn(), scope, &payment).await?;
            let invoice = invoice.clone();
            after_failure(uow, scope, &invoice, &payment).await?;
            attempts.push(Attempt::Nothing(Some(payment)));
            continue;
        };
        charging.insert(id);
        started.push(payment.clone());
        attempts.push(Attempt::Charge {
            payment,
            token,
            customer,
            account,
        });
    }
    changed.sort_by_key(InvoiceId::as_uuid);
    changed.dedup();
    let rows: Vec<&InvoiceRow> = changed.iter().filter_map(|id| invoices.get(id)).collect();
    db::invoices::save_many(uow.conn(), &rows).await?;
    let rows: Vec<&PaymentRow> = started.iter().collect();
    db::invoices::insert_payments(uow.conn(), &rows).await?;
    Ok(attempts)
}

/// What charging customers' invoices takes, read in one statement each: each tenant's platform
/// fee (basis points), each mode's connected Stripe account (when usable), and each
/// customer's default payment method.
struct ChargeTerms {
    fees: HashMap<TenantId, i32>,
    accounts: HashMap<Scope, String>,
    methods: HashMap<CustomerId, db::customers::ChargeMethod>,
}

impl ChargeTerms {
    /// The terms of charging these customers (each in its scope).
    async fn read(uow: &mut UnitOfWork, owners: &[(Scope, CustomerId)]) -> ServiceResult<Self> {
        let mut tenants: Vec<TenantId> = owners.iter().map(|o| o.0.tenant_id()).collect();
        tenants.sort_by_key(TenantId::as_uuid);
        tenants.dedup();
        let fees = db::tenants::billing_profiles(uow.conn(), &tenants)
            .await?
            .into_iter()
            .map(|(t, p)| (t, p.platform_fee_bps))
            .collect();
        let mut scopes: Vec<Scope> = owners.iter().map(|o| o.0).collect();
        scopes.sort_by_key(|s| (s.tenant_id().as_uuid(), s.livemode()));
        scopes.dedup();
        let accounts = db::stripe_accounts::get_many(uow.conn(), &scopes)
            .await?
            .into_iter()
            .filter_map(|a| a.usable_id().map(|id| (a.scope(), id.to_owned())))
            .collect();
        let methods = db::customers::default_payment_tokens(uow.conn(), owners)
            .await?
            .into_iter()
            .map(|m| (m.customer_id, m))
            .collect();
        Ok(Self {
            fees,
            accounts,
            methods,
        })
    }
}

/// The platform's fee in `scope`'s tenant (basis points), as read by [`ChargeTerms::read`].
fn fee_of(fees: &HashMap<TenantId, i32>, scope: Scope) -> ServiceResult<u32> {
    let fee = fees
        .get(&scope.tenant_id())
        .ok_or_else(|| ServiceError::internal("an invoice's tenant without a profile"))?;
    Ok(u32::try_from(*fee).unwrap_or(0))
}

/// Attempt `number` of an invoice, about to be recorded as pending.
struct PendingAttempt {
    scope: Scope,
    number: i32,
    /// The payment method charged, when the customer has one.
    method: Option<PaymentMethodId>,
    /// The gateway's name ([`Gateway::name`]).
    gateway: &'static str,
    /// Whether it is charged on the tenant's connected account (which pays the platform fee).
    on_account: bool,
    platform_fee_bps: u32,
}

impl PendingAttempt {
    /// The pending payment of this attempt of `invoice`, for what it still owes, and the
    /// invoice counting it (not saved).
    fn record_on(&self, invoice: &mut InvoiceRow, now: DateTime<Utc>) -> PaymentRow {
        let (id, number) = (invoice.id, self.number);
        invoice.attempt_count = number;
        invoice.updated_at = now;
        PaymentRow {
            id: PaymentId::new(),
            tenant_id: self.scope.tenant_id(),
            livemode: self.scope.livemode(),
            invoice_id: id,
            customer_id: invoice.customer_id,
            attempt: number,
            amount: invoice.amount_remaining,
            currency: invoice.currency.clone(),
            application_fee: if self.on_account {
                application_fee(invoice.amount_remaining, self.platform_fee_bps)
            } else {
                0
            },
            status: PaymentStatus::Pending,
            gateway: self.gateway.into(),
            gateway_id: None,
            idempotency_key: format!("{id}-attempt-{number}"),
            payment_method_id: self.method,
            failure_code: None,
            failure_message: None,
            hard_decline: false,
            amount_refunded: 0,
            dispute_status: None,
            disputed_amount: 0,
            credited_to_balance: 0,
            created_at: now,
            updated_at: now,
        }
    }
}

/// Starts the first attempts of new invoices (scope, invoice, to be inserted in this unit of
/// work) that the caller charges itself once it commits: for each, the attempt to charge, or
/// `None` where [`start_attempts`] is to decide (no payment method, or one not synced to the
/// connected account yet). The invoices count their attempt; the pending payments are returned
/// to be inserted after them. What they read takes one statement each, as in
/// [`start_attempts`], which resumes such an attempt with its key should the caller not charge
/// it (it crashed).
pub(crate) async fn first_attempts(
    uow: &mut UnitOfWork,
    stripe: &Stripe,
    invoices: &mut [(Scope, &mut InvoiceRow)],
) -> ServiceResult<Vec<Option<Attempt>>> {
    if invoices.is_empty() {
        return Ok(Vec::new());
    }
    let now = uow.now();
    let owners: Vec<(Scope, CustomerId)> =
        invoices.iter().map(|i| (i.0, i.1.customer_id)).collect();
    let ChargeTerms {
        fees,
        accounts,
        mut methods,
    } = ChargeTerms::read(uow, &owners).await?;
    let mut attempts = Vec::with_capacity(invoices.len());
    for (scope, invoice) in invoices.iter_mut() {
        let account = accounts.get(scope).cloned();
        let platform_fee_bps = fee_of(&fees, *scope)?;
        let Some(method) = methods.remove(&invoice.customer_id) else {
            attempts.push(None);
            continue;
        };
        let method_id = method.id;
        let Some((token, customer)) = charge_with(method, account.as_deref()) else {
            attempts.push(None);
            continue;
        };
        let payment = PendingAttempt {
            scope: *scope,
            number: 1,
            method: Some(method_id),
            gateway: Gateway::for_mode(stripe, scope.livemode()).name(),
            on_account: account.is_some(),
            platform_fee_bps,
        }
        .record_on(invoice, now);
        attempts.push(Some(Attempt::Charge {
            payment,
            token,
            customer,
            account,
        }));
    }
    Ok(attempts)
}

/// Step 2: asks the gateway, with the attempt's idempotency key (a repeat of the same attempt
/// never charges twice). No transaction is open while it waits. An error is worth trying again
/// with the same attempt (the gateway could not be reached); a refusal is an outcome.
pub async fn charge(
    gateway: &Gateway,
    scope: Scope,
    attempt: &Attempt,
) -> Result<Option<ChargeOutcome>, Failure> {
    let Attempt::Charge {
        payment,
        token,
        customer,
        account,
    } = attempt
    else {
        return Ok(None);
    };
    let customer = match customer {
        ChargeCustomer::None => None,
        ChargeCustomer::Stripe(c) => Some(c.as_str()),
    };
    let description = format!("Invoice {}", payment.invoice_id);
    let metadata = HashMap::from([
        ("invoice".to_owned(), payment.invoice_id.to_string()),
        ("payment".to_owned(), payment.id.to_string()),
    ]);
    let outcome = gateway
        .charge(
            scope.livemode(),
            &crate::payments::Charge {
                amount: payment.amount,
                currency: &payment.currency,
                payment_method: token,
                customer,
                description: &description,
                idempotency_key: &payment.idempotency_key,
                // As recorded when the attempt started (a resumed one sends the same).
                application_fee: payment.application_fee,
                account: account.as_deref(),
                metadata,
            },
        )
        .await;
    match outcome {
        Ok(o) => Ok(Some(o)),
        // A refusal that is not a decline is still final for this attempt.
        Err(Failure::Rejected(message)) => Ok(Some(ChargeOutcome::Declined {
            code: "processing_error".into(),
            message,
            do_not_retry: false,
        })),
        Err(e) => Err(e),
    }
}

/// Step 3: records the gateway's answer on the pending attempt and what follows from it: a
/// paid invoice (and an active subscription), or a failed attempt (and a past-due
/// subscription).
///
/// What the gateway says later (a Stripe event) is recorded the same way, in any order: an
/// attempt in flight (pending, or waiting for the customer to authenticate) takes any final
/// answer; a failed one can still succeed (money that came in is never lost: it pays the
/// invoice, or becomes the customer's credit); a succeeded one never changes.
pub async fn record_outcome(
    uow: &mut UnitOfWork,
    scope: Scope,
    payment: &PaymentRow,
    outcome: &ChargeOutcome,
) -> ServiceResult<PaymentRow> {
    let now = uow.now();
    let mut invoice = lock_with_subscription(uow, scope, payment.invoice_id).await?;
    let mut p = db::invoices::get_payment(uow.conn(), scope, payment.id).await?;
    let applies = match (p.status, outcome) {
        // Still processing: only the gateway's id is new.
        (PaymentStatus::Pending, ChargeOutcome::Processing { id }) => {
            p.gateway_id.as_ref() != Some(id)
        }
        // Processing already (it has the gateway's id): asking the customer to act is behind
        // it (a replayed first answer); only a final answer settles it.
        (PaymentStatus::Pending, ChargeOutcome::RequiresAction { .. }) => p.gateway_id.is_none(),
        (PaymentStatus::Pending, _) => true,
        (PaymentStatus::RequiresAction, ChargeOutcome::RequiresAction { .. }) => false,
        (PaymentStatus::RequiresAction, _) => true,
        (PaymentStatus::Failed, ChargeOutcome::Succeeded { .. }) => true,
        _ => false,
    };
    if !applies {
        return Ok(p);
    }
    p.updated_at = now;
    match outcome {
        ChargeOutcome::Succeeded { id } => {
            p.status = PaymentStatus::Succeeded;
            p.gateway_id = Some(id.clone());
            p.failure_code = None;
            p.failure_message = None;
            p.hard_decline = false;
            db::invoices::save_payment(uow.conn(), scope, &p).await?;
            events::record(uow, scope, "payment.succeeded", p.to_json()).await?;
            if invoice.status.is_payable() {
                invoice.status = invoice
                    .status
                    .apply(InvoiceTransition::Pay)
                    .map_err(illegal)?;
                // More than it still owes (a credit note lowered it after the attempt began):
                // the rest is the customer's credit.
                let applied = p.amount.min(invoice.amount_remaining);
                let excess = p.amount - applied;
                if excess > 0 {
                    balance::record(
                        uow,
                        scope,
                        p.customer_id,
                        excess,
                        Why::Overpayment(invoice.id),
                        None,
                    )
                    .await?;
                    db::invoices::add_credited(uow.conn(), scope, p.id, excess).await?;
                }
                invoice.amount_paid += applied;
                invoice.amount_remaining -= applied;
                invoice.paid_at = Some(now);
                invoice.updated_at = now;
                db::invoices::save(uow.conn(), scope, &invoice).await?;
                let lines = lines_of(uow, scope, invoice.id).await?;
                events::record(uow, scope, "invoice.paid", invoice.to_json(&lines)).await?;
                if let Some(sub) = invoice.subscription_id {
                    transition_if_allowed(uow, scope, sub, Transition::InvoicePaid).await?;
                }
            } else {
                // Paid meanwhile by another path (or voided): what came in is the customer's
                // credit, never lost.
                balance::record(
                    uow,
                    scope,
                    p.customer_id,
                    p.amount,
                    Why::Overpayment(invoice.id),
                    None,
                )
                .await?;
                // Given as credit: never refunded as well.
                db::invoices::add_credited(uow.conn(), scope, p.id, p.amount).await?;
            }
        }
        ChargeOutcome::RequiresAction { id } => {
            p.status = PaymentStatus::RequiresAction;
            p.gateway_id = Some(id.clone());
            db::invoices::save_payment(uow.conn(), scope, &p).await?;
            let lines = lines_of(uow, scope, invoice.id).await?;
            events::record(
                uow,
                scope,
                "invoice.payment_action_required",
                invoice.to_json(&lines),
            )
            .await?;
            super::dunning::after_action_required(uow, scope, &invoice, &p).await?;
        }
        ChargeOutcome::Processing { id } => {
            // In flight until the gateway says how it ended: the invoice stays open and is
            // not charged again meanwhile (a pending attempt is resumed, never doubled).
            p.status = PaymentStatus::Pending;
            p.gateway_id = Some(id.clone());
            db::invoices::save_payment(uow.conn(), scope, &p).await?;
        }
        ChargeOutcome::Declined {
            code,
            message,
            do_not_retry,
        } => {
            p.status = PaymentStatus::Failed;
            p.failure_code = Some(code.clone());
            p.failure_message = Some(message.clone());
            p.hard_decline = is_hard_decline(code) || *do_not_retry;
            db::invoices::save_payment(uow.conn(), scope, &p).await?;
            after_failure(uow, scope, &invoice, &p).await?;
        }
        ChargeOutcome::Canceled { message } => {
            // Over without money taken, but not a decline of the customer's payment method:
            // `payment.canceled`, never `payment.failed` or `invoice.payment_failed`. The
            // invoice is as unpaid as after a decline, and dunning goes on the same way (a new
            // default card's attempt at once).
            record_canceled(uow, scope, &mut p, message).await?;
            left_unpaid(uow, scope, &invoice, &p).await?;
        }
    }
    Ok(p)
}

/// Records attempt `p` as over without money taken: failed, code `canceled`, told by
/// `payment.canceled`.
async fn record_canceled(
    uow: &mut UnitOfWork,
    scope: Scope,
    p: &mut PaymentRow,
    message: &str,
) -> ServiceResult<()> {
    p.status = PaymentStatus::Failed;
    p.failure_code = Some("canceled".into());
    p.failure_message = Some(message.to_owned());
    p.hard_decline = false;
    db::invoices::save_payment(uow.conn(), scope, p).await?;
    events::record(uow, scope, "payment.canceled", p.to_json()).await?;
    Ok(())
}

/// Cancels attempt `payment`, waiting for the customer, at the gateway that made it (on the
/// connected `account`, when there is one), under the one key every cancel of it uses; the
/// answer is its outcome (see [`Gateway::cancel`]).
async fn cancel_at_gateway(
    stripe: &Stripe,
    scope: Scope,
    payment: &PaymentRow,
    account: Option<&str>,
) -> ServiceResult<ChargeOutcome> {
    let gateway = Gateway::named(stripe, &payment.gateway)
        .ok_or_else(|| ServiceError::internal("a payment of an unknown gateway"))?;
    let id = payment.gateway_id.as_deref().unwrap_or_default();
    let key = format!("{}-cancel", payment.idempotency_key);
    Ok(gateway.cancel(scope.livemode(), id, account, &key).await?)
}

/// Step 3 for many answers (each its scope, the pending attempt and the gateway's answer), in
/// the order given. The common answer, a first success on an invoice that owes all of it, is
/// recorded for all in a few statements, as [`record_outcome`] records one: the payment
/// succeeded, the invoice paid, `payment.succeeded` and `invoice.paid`, then its subscription
/// active. Any other answer, and every answer about an invoice or a subscription that another
/// answer of the batch is about too, is recorded by [`record_outcome`] after them, in the
/// order given (so that a subscription ends where the last answer about it leaves it).
pub async fn record_outcomes(
    uow: &mut UnitOfWork,
    answers: &[(Scope, &PaymentRow, &ChargeOutcome)],
) -> ServiceResult<Vec<PaymentRow>> {
    let now = uow.now();
    let keys: Vec<(Scope, InvoiceId)> = answers.iter().map(|a| (a.0, a.1.invoice_id)).collect();
    let (mut invoices, mut subs) = lock_many_with_subscriptions(uow, &keys).await?;
    let ids: Vec<(Scope, PaymentId)> = answers.iter().map(|a| (a.0, a.1.id)).collect();
    let mut payments: HashMap<PaymentId, PaymentRow> = db::invoices::get_payments(uow.conn(), &ids)
        .await?
        .into_iter()
        .map(|p| (p.id, p))
        .collect();
    // A first success on an invoice that owes all of it, and whose invoice and subscription
    // no other answer of the batch is about (those are recorded one by one, in the order given).
    let first_success = |(_, payment, outcome): &(Scope, &PaymentRow, &ChargeOutcome)| {
        let (Some(p), Some(invoice)) =
            (payments.get(&payment.id), invoices.get(&payment.invoice_id))
        else {
            return false;
        };
        matches!(outcome, ChargeOutcome::Succeeded { .. })
            && p.status == PaymentStatus::Pending
            && invoice.status.is_payable()
            && p.amount <= invoice.amount_remaining
    };
    let mut answered: HashMap<uuid::Uuid, usize> = HashMap::new();
    for (_, payment, _) in answers {
        let invoice = invoices.get(&payment.invoice_id);
        let sub = invoice.and_then(|i| i.subscription_id).map(|s| s.as_uuid());
        for key in std::iter::once(payment.invoice_id.as_uuid()).chain(sub) {
            *answered.entry(key).or_default() += 1;
        }
    }
    let alone = |payment: &PaymentRow| {
        let sub = invoices
            .get(&payment.invoice_id)
            .and_then(|i| i.subscription_id)
            .map(|s| s.as_uuid());
        std::iter::once(payment.invoice_id.as_uuid())
            .chain(sub)
            .all(|key| answered.get(&key) == Some(&1))
    };
    let (fast, others): (Vec<usize>, Vec<usize>) =
        (0..answers.len()).partition(|i| first_success(&answers[*i]) && alone(answers[*i].1));
    let mut paid: Vec<(usize, Scope, PaymentId, InvoiceId)> = Vec::with_capacity(fast.len());
    for i in fast {
        let (scope, payment, outcome) = answers[i];
        let (ChargeOutcome::Succeeded { id: gateway_id }, Some(p), Some(invoice)) = (
            outcome,
            payments.get_mut(&payment.id),
            invoices.get_mut(&payment.invoice_id),
        ) else {
            return Err(ServiceError::internal("a first success without its rows"));
        };
        p.status = PaymentStatus::Succeeded;
        p.gateway_id = Some(gateway_id.clone());
        p.failure_code = None;
        p.failure_message = None;
        p.hard_decline = false;
        p.updated_at = now;
        invoice.status = invoice
            .status
            .apply(InvoiceTransition::Pay)
            .map_err(illegal)?;
        invoice.amount_paid += p.amount;
        invoice.amount_remaining -= p.amount;
        invoice.paid_at = Some(now);
        invoice.updated_at = now;
        paid.push((i, scope, p.id, invoice.id));
    }
    let rows: Vec<&PaymentRow> = paid.iter().filter_map(|t| payments.get(&t.2)).collect();
    db::invoices::save_payments(uow.conn(), &rows).await?;
    let rows: Vec<&InvoiceRow> = paid.iter().filter_map(|t| invoices.get(&t.3)).collect();
    db::invoices::save_many(uow.conn(), &rows).await?;
    let keys: Vec<(Scope, InvoiceId)> = paid.iter().map(|t| (t.1, t.3)).collect();
    let mut lines: HashMap<InvoiceId, Vec<LineRow>> = HashMap::new();
    for line in db::invoices::lines_many(uow.conn(), &keys).await? {
        lines.entry(line.invoice_id).or_default().push(line);
    }
    let mut recorded = Vec::with_capacity(paid.len() * 2);
    for (_, scope, payment, invoice) in &paid {
        if let (Some(p), Some(i)) = (payments.get(payment), invoices.get(invoice)) {
            let json = i.to_json(lines.get(invoice).map_or(&[][..], Vec::as_slice));
            recorded.push((*scope, NewEvent::new("payment.succeeded", p.to_json())));
            recorded.push((*scope, NewEvent::new("invoice.paid", json)));
        }
    }
    events::record_all(uow, recorded).await?;
    // Then their subscriptions (an active one's paid renewal changes nothing about it).
    for (_, scope, _, invoice) in &paid {
        let Some(sub) = invoices
            .get(invoice)
            .and_then(|i| i.subscription_id)
            .and_then(|s| subs.get_mut(&s))
        else {
            continue;
        };
        if let Ok(next) = sub.status.apply(Transition::InvoicePaid)
            && next != sub.status
        {
            super::subscriptions::move_to(uow, *scope, sub, next, Transition::InvoicePaid).await?;
        }
    }
    let mut results: Vec<Option<PaymentRow>> = vec![None; answers.len()];
    for (i, _, payment, _) in paid {
        results[i] = payments.remove(&payment);
    }
    // The others one by one, after: they see what these wrote. Their customers are locked
    // first, in id order (a decline reads the customer's default payment method under its lock).
    let owners: Vec<(Scope, CustomerId)> = others
        .iter()
        .map(|i| (answers[*i].0, answers[*i].1.customer_id))
        .collect();
    if !owners.is_empty() {
        db::customers::lock_many(uow.conn(), &owners).await?;
    }
    for i in others {
        let (scope, payment, outcome) = answers[i];
        results[i] = Some(record_outcome(uow, scope, payment, outcome).await?);
    }
    results
        .into_iter()
        .map(|r| r.ok_or_else(|| ServiceError::internal("an answer not recorded")))
        .collect()
}

/// A declined attempt: `payment.failed`, `invoice.payment_failed`, and what follows
/// ([`left_unpaid`]).
async fn after_failure(
    uow: &mut UnitOfWork,
    scope: Scope,
    invoice: &InvoiceRow,
    payment: &PaymentRow,
) -> ServiceResult<()> {
    events::record(uow, scope, "payment.failed", payment.to_json()).await?;
    let lines = lines_of(uow, scope, invoice.id).await?;
    events::record(
        uow,
        scope,
        "invoice.payment_failed",
        invoice.to_json(&lines),
    )
    .await?;
    left_unpaid(uow, scope, invoice, payment).await
}

/// An attempt that ended without taking the money (declined or canceled): the subscription
/// past due, and dunning's next step.
async fn left_unpaid(
    uow: &mut UnitOfWork,
    scope: Scope,
    invoice: &InvoiceRow,
    payment: &PaymentRow,
) -> ServiceResult<()> {
    // An invoice sent for payment is late only after its due date (its overdue check makes
    // the subscription past due then): a charge its customer tried before that and that
    // failed does not.
    let early = match invoice.due_date {
        Some(due) if invoice.collection_method != "charge_automatically" => {
            super::test_clocks::customer_now(uow, scope, invoice.customer_id).await? < due
        }
        _ => false,
    };
    if let Some(sub) = invoice.subscription_id.filter(|_| !early) {
        transition_if_allowed(uow, scope, sub, Transition::PaymentFailed).await?;
    }
    super::dunning::after_decline(uow, scope, invoice, payment).await
}

/// Applies `transition` to the subscription when its status allows it (a payment landing on a
/// canceled subscription changes nothing about it).
pub(crate) async fn transition_if_allowed(
    uow: &mut UnitOfWork,
    scope: Scope,
    sub: crate::ids::SubscriptionId,
    transition: Transition,
) -> ServiceResult<()> {
    let mut row = db::subscriptions::lock(uow.conn(), scope, sub).await?;
    // An active subscription's paid renewal changes nothing about it.
    if let Ok(next) = row.status.apply(transition)
        && next != row.status
    {
        super::subscriptions::move_to(uow, scope, &mut row, next, transition).await?;
    }
    Ok(())
}

/// Asks for a charge of an open invoice now (on request): queues the next attempt, which the
/// worker fleet makes as it makes every other (or the one interrupted before the gateway
/// answered whose job died, resumed). Asking again before it ran queues nothing more.
pub async fn request_payment(
    uow: &mut UnitOfWork,
    scope: Scope,
    id: InvoiceId,
) -> ServiceResult<InvoiceView> {
    let invoice = db::invoices::lock(uow.conn(), scope, id)
        .await
        .map_err(ServiceError::not_found(WHAT))?;
    if !invoice.status.is_payable() || invoice.amount_remaining == 0 {
        return Err(illegal(format!(
            "cannot pay an invoice that is {}",
            invoice.status
        )));
    }
    let attempt = match db::invoices::in_flight_payment(uow.conn(), scope, id).await? {
        // Interrupted before the gateway answered, and its job dead (it resumes it otherwise):
        // the charge asked for is that one, resumed with its key, never a second.
        Some(p) if p.status == PaymentStatus::Pending && p.gateway_id.is_none() => {
            let job = crate::jobs::Job::PayInvoice {
                invoice: id,
                attempt: p.attempt,
            };
            if !crate::jobs::is_dead(uow.conn(), job.id()).await? {
                return Err(in_progress(&p));
            }
            p.attempt
        }
        Some(p) => return Err(in_progress(&p)),
        None => db::invoices::last_attempt(uow.conn(), scope, id).await? + 1,
    };
    queue_attempt(uow, scope, &invoice, attempt).await?;
    let lines = lines_of(uow, scope, id).await?;
    Ok(InvoiceView { invoice, lines })
}

/// Queues attempt `attempt` to charge `invoice`, now (a test clock's customer: at the clock's
/// time, when its next advance runs): the attempt dunning scheduled for later is brought
/// forward; one running or made already is left as it is.
pub(crate) async fn queue_attempt(
    uow: &mut UnitOfWork,
    scope: Scope,
    invoice: &InvoiceRow,
    attempt: i32,
) -> ServiceResult<()> {
    let job = crate::jobs::Job::PayInvoice {
        invoice: invoice.id,
        attempt,
    };
    let now = chrono::Duration::zero();
    queue_for_customer_after(uow, scope, invoice.customer_id, vec![job], now, true).await
}

/// Queues billing jobs about a customer's money, due after `wait` (on the customer's test
/// clock, when it has one). With `bring_forward`, one queued already for later is due then
/// instead, unless a run holds it or it ended; without, queuing it again adds nothing.
pub(crate) async fn queue_for_customer_after(
    uow: &mut UnitOfWork,
    scope: Scope,
    customer: CustomerId,
    jobs: Vec<crate::jobs::Job>,
    wait: chrono::Duration,
    bring_forward: bool,
) -> ServiceResult<()> {
    queue_for_customer(uow, scope, customer, jobs, wait, bring_forward).await?;
    Ok(())
}

/// [`queue_for_customer_after`], answering when the jobs are due.
async fn queue_for_customer(
    uow: &mut UnitOfWork,
    scope: Scope,
    customer: CustomerId,
    jobs: Vec<crate::jobs::Job>,
    wait: chrono::Duration,
    bring_forward: bool,
) -> ServiceResult<DateTime<Utc>> {
    let now = uow.now();
    let clock = db::test_clocks::of_customer(uow.conn(), scope, customer).await?;
    let at = clock.as_ref().map_or(now, |c| c.frozen_time) + wait;
    let clock = clock.map(|c| c.id.as_uuid());
    let jobs: Vec<crate::jobs::NewJob> = jobs
        .iter()
        .map(|j| j.to_new(Some(scope), at).on_clock(clock))
        .collect();
    crate::jobs::enqueue(uow.conn(), &jobs, now).await?;
    if bring_forward {
        let ids: Vec<uuid::Uuid> = jobs.iter().map(|j| j.id).collect();
        crate::jobs::bring_forward(uow.conn(), &ids, at, now).await?;
    }
    Ok(at)
}

/// For the attempts of `attempts` that supersede one waiting for the customer
/// ([`Attempt::Supersede`]): cancels each at the gateway that made it and records what that
/// says (canceled: an attempt over unpaid, after which the new default payment method's is
/// asked for at once; or what it became first, a success say), then starts the attempts asked
/// for again in their place. A gateway failure is that attempt's result (the job runs again).
async fn supersede(
    pool: &PgPool,
    clock: &dyn crate::clock::Clock,
    stripe: &Stripe,
    given: &[(Scope, InvoiceId, i32)],
    attempts: &mut [Attempt],
    results: &mut [Option<ServiceResult<Option<PaymentRow>>>],
) -> ServiceResult<()> {
    let canceled = futures_util::future::join_all(attempts.iter().zip(given).map(
        |(attempt, (scope, ..))| async move {
            let Attempt::Supersede { payment, account } = attempt else {
                return None;
            };
            Some(cancel_at_gateway(stripe, *scope, payment, account.as_deref()).await)
        },
    ))
    .await;
    let mut again = Vec::new();
    let mut outcomes = Vec::new();
    for (i, answer) in canceled.into_iter().enumerate() {
        let (Some(answer), Attempt::Supersede { payment, .. }) = (answer, &attempts[i]) else {
            continue;
        };
        match answer {
            Ok(mut outcome) => {
                if let ChargeOutcome::Canceled { message } = &mut outcome {
                    *message = "Canceled: the customer's default payment method changed while \
                                this charge waited for authentication."
                        .into();
                }
                again.push(i);
                outcomes.push((given[i].0, payment, outcome));
            }
            Err(e) => results[i] = Some(Err(e)),
        }
    }
    let mut uow = UnitOfWork::begin(pool, clock).await?;
    // (Locked as every batch of answers is: subscriptions, invoices, then customers.)
    let answered: Vec<(Scope, &PaymentRow, &ChargeOutcome)> =
        outcomes.iter().map(|(s, p, o)| (*s, *p, o)).collect();
    record_outcomes(&mut uow, &answered).await?;
    let keys: Vec<(Scope, InvoiceId, i32)> = again.iter().map(|i| given[*i]).collect();
    let redone = start_attempts(&mut uow, stripe, &keys).await?;
    uow.commit().await?;
    for (i, attempt) in again.into_iter().zip(redone) {
        attempts[i] = attempt;
    }
    Ok(())
}

/// Before an invoice is voided: an attempt still waiting for the customer to authenticate
/// (`requires_action`) is canceled at the gateway that made it, so that it never takes the
/// money, and recorded as canceled (`payment.canceled`), without dunning's next step: the
/// invoice is about to owe nothing. Should the gateway say it went through first (the customer
/// authenticated just before), that is recorded as any answer is: the invoice is paid, and
/// voiding it is refused. Any other attempt in flight is left as it is (voiding waits for its
/// outcome). No transaction is open while the gateway answers.
pub async fn cancel_waiting_attempt(
    pool: &PgPool,
    clock: &dyn crate::clock::Clock,
    stripe: &Stripe,
    scope: Scope,
    id: InvoiceId,
) -> ServiceResult<()> {
    let mut uow = UnitOfWork::begin(pool, clock).await?;
    let waiting = db::invoices::in_flight_payment(uow.conn(), scope, id)
        .await?
        .filter(|p| p.status == PaymentStatus::RequiresAction && p.gateway_id.is_some());
    let Some(payment) = waiting else {
        return Ok(());
    };
    // Not when voiding is refused anyway (the void says why): the charge keeps waiting.
    let invoice = db::invoices::get(uow.conn(), scope, id).await?;
    if invoice.status.apply(InvoiceTransition::Void).is_err()
        || db::invoices::credited_by_proration(uow.conn(), scope, id).await?
    {
        return Ok(());
    }
    let account = db::stripe_accounts::get_many(uow.conn(), &[scope])
        .await?
        .into_iter()
        .find_map(|a| a.usable_id().map(str::to_owned));
    uow.rollback().await;
    let outcome = cancel_at_gateway(stripe, scope, &payment, account.as_deref()).await?;
    let mut uow = UnitOfWork::begin(pool, clock).await?;
    // Locked as every answer is recorded: its subscription, then the invoice; at the time of
    // the customer's test clock, when it has one.
    lock_with_subscription(&mut uow, scope, id).await?;
    super::subscriptions::at_clock_time(&mut uow, scope, payment.customer_id).await?;
    let mut p = db::invoices::get_payment(uow.conn(), scope, payment.id).await?;
    match outcome {
        ChargeOutcome::Canceled { .. } => {
            // Unless an answer was recorded meanwhile.
            if p.status == PaymentStatus::RequiresAction {
                p.updated_at = uow.now();
                let message = "Canceled: the invoice was voided while this charge waited for \
                               authentication.";
                record_canceled(&mut uow, scope, &mut p, message).await?;
            }
        }
        other => {
            record_outcome(&mut uow, scope, &p, &other).await?;
        }
    }
    uow.commit().await?;
    Ok(())
}

/// A customer's payment method is attached to its customer at Stripe now (its sync is done):
/// the charges of its invoices that failed meanwhile, because it was not yet
/// (`payment_method_not_synced`), run again at once (on its test clock, when it has one),
/// even those that died of it. A charge not tried yet keeps its time (dunning's next attempt
/// stays at its time). Returns how many it made due.
pub async fn charge_after_sync(
    pool: &PgPool,
    clock: &dyn crate::clock::Clock,
    scope: Scope,
    customer: CustomerId,
) -> ServiceResult<u64> {
    let mut uow = UnitOfWork::begin(pool, clock).await?;
    let ids: Vec<uuid::Uuid> = db::dunning::to_charge(uow.conn(), scope, customer)
        .await?
        .into_iter()
        .map(|(invoice, attempt)| crate::jobs::Job::PayInvoice { invoice, attempt }.id())
        .collect();
    if ids.is_empty() {
        return Ok(0);
    }
    let now = uow.now();
    let at = db::test_clocks::of_customer(uow.conn(), scope, customer)
        .await?
        .map_or(now, |c| c.frozen_time);
    let revived = crate::jobs::revive(uow.conn(), &ids, at, now).await?;
    uow.commit().await?;
    Ok(revived)
}

/// Attempts left in flight by a charge job that died after the attempt started and before
/// the gateway answered (its runs used up while the gateway was out of reach, say): nothing
/// else would settle them, and their invoices could be neither paid, voided nor credited.
/// Their jobs start over, due now (on the customer's test clock's time when it has one): each
/// attempt resumes with its idempotency key, never charging twice. Looks at the `limit` oldest
/// attempts not sent yet; returns how many jobs it started over.
pub async fn resume_dead_charges(
    pool: &PgPool,
    clock: &dyn crate::clock::Clock,
    limit: i64,
) -> ServiceResult<u64> {
    let mut uow = UnitOfWork::begin(pool, clock).await?;
    let unsent = db::unscoped::unsent_attempts(uow.conn(), limit).await?;
    let now = uow.now();
    let mut resumed = 0;
    for (scope, invoice, attempt, customer) in unsent {
        let id = crate::jobs::Job::PayInvoice { invoice, attempt }.id();
        if !crate::jobs::is_dead(uow.conn(), id).await? {
            continue;
        }
        let at = db::test_clocks::of_customer(uow.conn(), scope, customer)
            .await?
            .map_or(now, |c| c.frozen_time);
        resumed += crate::jobs::restart_dead(uow.conn(), &[id], at, now).await?;
    }
    uow.commit().await?;
    Ok(resumed)
}

/// Queues charge attempts (`invoice.pay` jobs) of a customer's invoices to run after `wait`
/// (on its test clock, when it has one): queued, or brought forward, or, when such a job ran
/// already and found nothing to do then (the attempt before was still waiting for the
/// customer, say), run again. Each attempt number is made once whatever runs it
/// ([`start_attempts`]).
pub(crate) async fn queue_charges_after(
    uow: &mut UnitOfWork,
    scope: Scope,
    customer: CustomerId,
    charges: Vec<crate::jobs::Job>,
    wait: chrono::Duration,
) -> ServiceResult<()> {
    let ids: Vec<uuid::Uuid> = charges.iter().map(crate::jobs::Job::id).collect();
    let at = queue_for_customer(uow, scope, customer, charges, wait, true).await?;
    let now = uow.now();
    crate::jobs::run_again(uow.conn(), &ids, at, now).await?;
    Ok(())
}

/// Runs one attempt of a charge job: the three steps ([`run_attempts`] of one). A gateway
/// failure that is worth trying again is returned as an error (the job runs again and resumes
/// the pending attempt).
pub async fn run_attempt(
    pool: &PgPool,
    clock: &dyn crate::clock::Clock,
    stripe: &Stripe,
    scope: Scope,
    id: InvoiceId,
    number: i32,
) -> ServiceResult<Option<PaymentRow>> {
    run_attempts(pool, clock, stripe, &[(scope, id, number)])
        .await?
        .pop()
        .unwrap_or_else(|| Err(ServiceError::internal("an attempt without a result")))
}

/// Runs attempts of charge jobs (scope, invoice, attempt number) in three steps for all:
/// their attempts start in one transaction ([`start_attempts`]), the gateway is called for each
/// (all at once), and the answers are recorded in a second ([`record_outcomes`]). Returns each
/// attempt's recorded payment (`None` when there was nothing to charge), or its gateway failure
/// worth trying again (its pending attempt is resumed, with its key, by the next run), in the
/// order given. An error of either transaction is the whole answer: running them again (one by
/// one) resumes the attempts that started, never charging twice.
pub async fn run_attempts(
    pool: &PgPool,
    clock: &dyn crate::clock::Clock,
    stripe: &Stripe,
    given: &[(Scope, InvoiceId, i32)],
) -> ServiceResult<Vec<ServiceResult<Option<PaymentRow>>>> {
    let none = vec![None; given.len()];
    let (results, ..) =
        run_attempts_finishing(pool, clock, stripe, given, none, |_| Vec::new()).await?;
    Ok(results)
}

/// As [`run_attempts`], for jobs: `finish` gives the jobs' outcomes from the attempts' results,
/// recorded in the transaction that records the answers (one commit for both); returns the
/// results, the outcomes, and the ids of the jobs whose outcome was recorded (a job whose lease
/// another run holds now is not: its answer is recorded all the same, and that run finds it).
/// An attempt `started` already (committed pending by the work that queued the job, see
/// [`first_attempts`]) is charged as it is; the others start first, in one transaction.
pub async fn run_attempts_finishing(
    pool: &PgPool,
    clock: &dyn crate::clock::Clock,
    stripe: &Stripe,
    given: &[(Scope, InvoiceId, i32)],
    started: Vec<Option<Attempt>>,
    finish: impl FnOnce(&[ServiceResult<Option<PaymentRow>>]) -> Vec<crate::jobs::Finished>,
) -> ServiceResult<(
    Vec<ServiceResult<Option<PaymentRow>>>,
    Vec<crate::jobs::Finished>,
    Vec<uuid::Uuid>,
)> {
    if started.len() != given.len() {
        return Err(ServiceError::internal(
            "started attempts not one per charge",
        ));
    }
    let to_start: Vec<(Scope, InvoiceId, i32)> = given
        .iter()
        .zip(&started)
        .filter(|(_, s)| s.is_none())
        .map(|(g, _)| *g)
        .collect();
    let mut new = if to_start.is_empty() {
        Vec::new()
    } else {
        let mut uow = UnitOfWork::begin(pool, clock).await?;
        let new = start_attempts(&mut uow, stripe, &to_start).await?;
        uow.commit().await?;
        new
    }
    .into_iter();
    let mut attempts = Vec::with_capacity(given.len());
    for s in started {
        match s.or_else(|| new.next()) {
            Some(a) => attempts.push(a),
            None => return Err(ServiceError::internal("an attempt not started")),
        }
    }
    let mut results: Vec<Option<ServiceResult<Option<PaymentRow>>>> =
        (0..given.len()).map(|_| None).collect();
    if attempts
        .iter()
        .any(|a| matches!(a, Attempt::Supersede { .. }))
    {
        supersede(pool, clock, stripe, given, &mut attempts, &mut results).await?;
    }
    let answers = futures_util::future::join_all(given.iter().zip(&attempts).map(
        |((scope, _, _), attempt)| async move {
            let gateway = Gateway::for_mode(stripe, scope.livemode());
            charge(&gateway, *scope, attempt).await
        },
    ))
    .await;
    let mut to_record: Vec<(usize, Scope, &PaymentRow, ChargeOutcome)> = Vec::new();
    for (i, (((scope, _, _), attempt), answer)) in
        given.iter().zip(&attempts).zip(answers).enumerate()
    {
        if results[i].is_some() {
            continue;
        }
        match (attempt, answer) {
            (Attempt::Charge { payment, .. }, Ok(Some(outcome))) => {
                to_record.push((i, *scope, payment, outcome));
            }
            (Attempt::Nothing(recorded), Ok(_)) => results[i] = Some(Ok(recorded.clone())),
            (Attempt::Waiting, _) => results[i] = Some(Err(not_synced_yet())),
            (Attempt::Charge { .. }, Ok(None)) => {
                results[i] = Some(Err(ServiceError::internal(
                    "a charge always has an outcome",
                )));
            }
            // Still waiting for the customer after a cancel that did not take.
            (Attempt::Supersede { payment, .. }, Ok(_)) => {
                results[i] = Some(Err(in_progress(payment)));
            }
            (_, Err(e)) => results[i] = Some(Err(e.into())),
        }
    }
    let mut uow = UnitOfWork::begin(pool, clock).await?;
    let answered: Vec<(Scope, &PaymentRow, &ChargeOutcome)> =
        to_record.iter().map(|(_, s, p, o)| (*s, *p, o)).collect();
    let recorded = record_outcomes(&mut uow, &answered).await?;
    for ((i, ..), payment) in to_record.iter().zip(recorded) {
        results[*i] = Some(Ok(Some(payment)));
    }
    let results: Vec<ServiceResult<Option<PaymentRow>>> = results.into_iter().flatten().collect();
    let now = uow.now();
    let finished = finish(&results);
    let done = crate::jobs::finish(uow.conn(), &finished, now).await?;
    uow.commit().await?;
    Ok((results, finished, done))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_have_their_prefix_and_at_least_six_digits() {
        let acme = InvoicePrefix::parse("ACME").unwrap();
        assert_eq!(format_number(&acme, 1), "ACME-000001");
        assert_eq!(format_number(&acme, 123), "ACME-000123");
        assert_eq!(format_number(&acme, 1_234_567), "ACME-1234567");
    }
}
