//! Renewals of many subscriptions in one unit of work, in a few statements however many there
//! are: the worker renews a batch of due periods at once, and a renewal of one
//! ([`super::subscriptions::renew`]) is a batch of one, so both take the same path.
//!
//! Each subscription's period is first closed on its own
//! ([`super::subscriptions::close_period`]: stale jobs, scheduled cancels, trial ends and
//! pauses, which are rare); the periods left to invoice are then invoiced together: what they
//! read (items, the periods' invoices, waiting lines, customers, tax rates, prefixes, coupons)
//! is read in one statement each, their invoices and lines are written in one statement each,
//! and so are the subscriptions, their jobs and their events. What an invoice comes to is
//! computed by the same functions as for one ([`invoices::period_lines`], [`invoices::settle`],
//! [`tax_rates::taxed`]...). Numbers are taken at the commit ([`UnitOfWork::defer_numbering`]).

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use chrono::{DateTime, Utc};

use super::{
    ServiceError, ServiceResult, events,
    invoices::{self, Attempt, InvoiceView},
    subscriptions::{self, Closing, Renewal, SubscriptionView},
    tax_rates, usage,
};
use crate::{
    db::{
        self,
        coupons::CouponRow,
        customers::CustomerRow,
        events::NewEvent,
        invoices::{InvoiceRow, LineRow, PaymentRow, PendingLine},
        subscriptions::{ItemRow, SubscriptionRow},
        tax_rates::TaxRateRow,
    },
    domain::{customer::InvoicePrefix, invoice::InvoiceStatus, period::Period},
    ids::{CouponId, CustomerId, InvoiceId, InvoiceItemId, SubscriptionId, TenantId},
    jobs::{self, Job},
    tenancy::Scope,
    uow::UnitOfWork,
};

/// Renews due periods (`subscription.renew` jobs: the subscription and the end of its current
/// period) in the unit of work; the invoices are numbered, and the answers given, in the order
/// given (a customer's second renewal in a batch after the others). Subscriptions are locked in
/// id order, then their customers in id order, before anything else, so that two batches never
/// wait for each other in a cycle. The first failure is the answer, and the unit of work is
/// then to be rolled back (the worker runs the jobs again one by one).
pub async fn renew_many(
    uow: &mut UnitOfWork,
    renewals: &[(Scope, SubscriptionId, DateTime<Utc>)],
) -> ServiceResult<Vec<Renewal>> {
    uow.defer_numbering();
    let keys: Vec<(Scope, SubscriptionId)> = renewals.iter().map(|r| (r.0, r.1)).collect();
    let mut locked: HashMap<SubscriptionId, SubscriptionRow> =
        db::subscriptions::lock_many(uow.conn(), &keys)
            .await?
            .into_iter()
            .map(|s| (s.id, s))
            .collect();
    let mut owners: Vec<(Scope, CustomerId)> = Vec::new();
    let mut seen = HashSet::new();
    for (scope, id) in &keys {
        if let Some(sub) = locked.get(id)
            && seen.insert(sub.customer_id)
        {
            owners.push((*scope, sub.customer_id));
        }
    }
    db::customers::lock_many(uow.conn(), &owners).await?;

    let mut answers: Vec<Option<Renewal>> = vec![None; renewals.len()];
    let mut due = Vec::new();
    // In the order given (all locks are held): invoices are numbered in it.
    for (i, &(scope, id, period_end)) in renewals.iter().enumerate() {
        // A job for a period that is not the current one (given twice, or late) is stale, as
        // is one naming another tenant's subscription; the row stays for the job that is not.
        let current = locked.get(&id).is_some_and(|sub| {
            sub.current_period_end == period_end
                && sub.tenant_id == scope.tenant_id()
                && sub.livemode == scope.livemode()
        });
        let Some(mut sub) = current.then(|| locked.remove(&id)).flatten() else {
            answers[i] = Some(Renewal::Stale);
            continue;
        };
        // A renewal invoice still a draft holds the usage before this period: billed first.
        if sub.usage_draft_until.is_some() {
            finalize_held(uow, scope, &mut sub).await?;
        }
        match subscriptions::close_period(uow, scope, &mut sub, period_end).await? {
            Closing::Done(renewal) => answers[i] = Some(renewal),
            Closing::Invoice => due.push(Due { at: i, scope, sub }),
        }
    }
    // A customer's invoices are made one after the other (each takes its credit and its
    // waiting items from what the one before left): one per customer in each round.
    while !due.is_empty() {
        let mut customers = HashSet::new();
        let (round, later): (Vec<Due>, Vec<Due>) = due
            .into_iter()
            .partition(|d| customers.insert(d.sub.customer_id));
        for (at, renewal) in invoice_periods(uow, round).await? {
            answers[at] = Some(renewal);
        }
        due = later;
    }
    answers
        .into_iter()
        .map(|a| a.ok_or_else(|| ServiceError::internal("a renewal without an answer")))
        .collect()
}

/// A subscription whose new period is to be invoiced, and where its answer goes.
struct Due {
    at: usize,
    scope: Scope,
    sub: SubscriptionRow,
}

/// What invoicing a round of periods reads, in one statement each.
struct Reads {
    items: HashMap<SubscriptionId, Vec<ItemRow>>,
    invoiced: HashMap<SubscriptionId, InvoiceRow>,
    waiting: HashMap<SubscriptionId, Vec<PendingLine>>,
    customers: HashMap<CustomerId, CustomerRow>,
    one_offs: HashMap<CustomerId, Vec<PendingLine>>,
    rates: HashMap<CustomerId, Vec<TaxRateRow>>,
    slugs: HashMap<TenantId, String>,
    coupons: HashMap<CouponId, CouponRow>,
}

/// Reads what invoicing the periods of `due` (one per customer) needs, locking the lines
/// waiting for them, then their customers, as invoicing one period does.
async fn read(uow: &mut UnitOfWork, due: &[Due]) -> ServiceResult<Reads> {
    let subs: Vec<(Scope, SubscriptionId)> = due.iter().map(|d| (d.scope, d.sub.id)).collect();
    let mut items: HashMap<SubscriptionId, Vec<ItemRow>> = HashMap::new();
    for item in db::subscriptions::items_many(uow.conn(), &subs).await? {
        items.entry(item.subscription_id).or_default().push(item);
    }
    let periods: Vec<(Scope, SubscriptionId, DateTime<Utc>)> = due
        .iter()
        .map(|d| (d.scope, d.sub.id, d.sub.current_period_start))
        .collect();
    let invoiced: HashMap<SubscriptionId, InvoiceRow> =
        db::invoices::of_periods(uow.conn(), &periods)
            .await?
            .into_iter()
            .filter_map(|i| i.subscription_id.map(|s| (s, i)))
            .collect();
    let new: Vec<&Due> = due
        .iter()
        .filter(|d| !invoiced.contains_key(&d.sub.id))
        .collect();
    let new_subs: Vec<(Scope, SubscriptionId)> = new.iter().map(|d| (d.scope, d.sub.id)).collect();
    let mut waiting: HashMap<SubscriptionId, Vec<PendingLine>> = HashMap::new();
    for line in db::invoices::pending_of_many(uow.conn(), &new_subs).await? {
        if let Some(sub) = line.subscription_id {
            waiting.entry(sub).or_default().push(line);
        }
    }
    let owners: Vec<(Scope, CustomerId)> =
        new.iter().map(|d| (d.scope, d.sub.customer_id)).collect();
    let customers: HashMap<CustomerId, CustomerRow> = db::customers::lock_many(uow.conn(), &owners)
        .await?
        .into_iter()
        .map(|c| (c.id, c))
        .collect();
    let currencies: Vec<(Scope, CustomerId, &str)> = new
        .iter()
        .map(|d| (d.scope, d.sub.customer_id, d.sub.currency.as_str()))
        .collect();
    let mut one_offs: HashMap<CustomerId, Vec<PendingLine>> = HashMap::new();
    for line in db::invoices::pending_of_customers(uow.conn(), &currencies).await? {
        one_offs.entry(line.customer_id).or_default().push(line);
    }
    let mut rates: HashMap<CustomerId, Vec<TaxRateRow>> = HashMap::new();
    for (customer, rate) in db::tax_rates::for_customers(uow.conn(), &owners).await? {
        rates.entry(customer).or_default().push(rate);
    }
    let mut tenants: Vec<TenantId> = customers
        .values()
        .filter(|c| invoices::own_prefix(c).is_none())
        .map(|c| c.tenant_id)
        .collect();
    tenants.sort_by_key(TenantId::as_uuid);
    tenants.dedup();
    let slugs = db::tenants::billing_profiles(uow.conn(), &tenants)
        .await?
        .into_iter()
        .map(|(t, p)| (t, p.slug))
        .collect();
    let mut coupons = HashMap::new();
    for d in &new {
        if let (Some(coupon), Some(_)) = (d.sub.coupon_id, d.sub.coupon_redeemed_at)
            && !coupons.contains_key(&coupon)
        {
            coupons.insert(
                coupon,
                db::coupons::get_any(uow.conn(), d.scope, coupon).await?,
            );
        }
    }
    Ok(Reads {
        items,
        invoiced,
        waiting,
        customers,
        one_offs,
        rates,
        slugs,
        coupons,
    })
}

/// An invoice made in a round, with its lines and the waiting lines it took; a draft is
/// finalized at `finalize_at`. A finalized one may have its first charge (or overdue check),
/// and that charge its first attempt, started when the caller runs it at once.
struct Made {
    scope: Scope,
    invoice: InvoiceRow,
    lines: Vec<LineRow>,
    taken: Vec<InvoiceItemId>,
    finalize_at: Option<DateTime<Utc>>,
    charge: Option<jobs::NewJob>,
    attempt: Option<Attempt>,
}

/// Invoices the new periods of `due` (at most one per customer), saves the subscriptions and
/// queues their next renewals and first charges, and records the events invoicing one period
/// records, in this order for each: `invoice.created`, `invoice.finalized` (`invoice.paid` when
/// nothing is due), `customer.subscription.updated`; an invoice kept a draft for its grace
/// period gets `invoice.created` and its `invoice.finalize` job instead of the others but the
/// last. A period already invoiced gets nothing new. First charges the caller runs itself
/// ([`UnitOfWork::hold_jobs`]) are queued leased to it, with their first attempts started
/// ([`invoices::first_attempts`]); the events show the invoices before them.
async fn invoice_periods(
    uow: &mut UnitOfWork,
    due: Vec<Due>,
) -> ServiceResult<Vec<(usize, Renewal)>> {
    let now = uow.now();
    let mut reads = read(uow, &due).await?;
    let mut usage = bill_usage(uow, &reads, &due).await?;
    let graces = grace_periods(uow, &usage, &due).await?;
    let mut made: Vec<Made> = Vec::new();
    let mut done: Vec<(Due, InvoiceId, bool)> = Vec::with_capacity(due.len());
    for mut d in due {
        if let Some(existing) = reads.invoiced.remove(&d.sub.id) {
            done.push((d, existing.id, false));
            continue;
        }
        let (id, used) = usage
            .remove(&d.sub.id)
            .unwrap_or_else(|| (InvoiceId::new(), Vec::new()));
        let grace = graces.get(&d.sub.id).copied();
        let mut m = invoice_period(uow, &mut reads, &mut d.sub, d.scope, id, used, grace).await?;
        if m.finalize_at.is_none() {
            m.charge = subscriptions::first_charge(d.scope, &d.sub, &m.invoice, now);
        }
        done.push((d, m.invoice.id, true));
        made.push(m);
    }
    // First charges the caller runs itself, when it does (off test clocks), start their first
    // attempts here: recorded pending with the invoices, one transaction fewer for each.
    let holding = uow.holding();
    let held_now = |charge: &jobs::NewJob| {
        holding.is_some() && charge.test_clock.is_none() && charge.run_at <= now
    };
    if let Some((_, stripe)) = &holding {
        let (at, mut firsts): (Vec<usize>, Vec<(Scope, &mut InvoiceRow)>) = made
            .iter_mut()
            .enumerate()
            .filter(|(_, m)| {
                m.charge
                    .as_ref()
                    .is_some_and(|c| c.kind == Job::PAY_INVOICE && held_now(c))
            })
            .map(|(i, m)| (i, (m.scope, &mut m.invoice)))
            .unzip();
        let started = invoices::first_attempts(uow, stripe, &mut firsts).await?;
        for (i, attempt) in at.into_iter().zip(started) {
            made[i].attempt = attempt;
        }
    }
    let rows: Vec<&InvoiceRow> = made.iter().map(|m| &m.invoice).collect();
    if db::invoices::insert_many(uow.conn(), &rows).await? != rows.len() as u64 {
        return Err(ServiceError::conflict(
            "period_already_invoiced",
            "This period of the subscription is already invoiced.",
        ));
    }
    let payments: Vec<&PaymentRow> = made
        .iter()
        .filter_map(|m| match &m.attempt {
            Some(Attempt::Charge { payment, .. }) => Some(payment),
            _ => None,
        })
        .collect();
    db::invoices::insert_payments(uow.conn(), &payments).await?;
    let lines: Vec<(Scope, &LineRow)> = made
        .iter()
        .flat_map(|m| m.lines.iter().map(move |l| (m.scope, l)))
        .collect();
    db::invoices::insert_lines_many(uow.conn(), &lines).await?;
    let taken: Vec<(Scope, InvoiceItemId, InvoiceId)> = made
        .iter()
        .flat_map(|m| m.taken.iter().map(move |t| (m.scope, *t, m.invoice.id)))
        .collect();
    db::invoices::mark_invoiced_many(uow.conn(), &taken).await?;

    // The attempts started, by their charges' jobs.
    let mut attempts: HashMap<uuid::Uuid, Attempt> = HashMap::new();
    for m in &mut made {
        if let (Some(charge), Some(attempt)) = (&m.charge, m.attempt.take()) {
            attempts.insert(charge.id, attempt);
        }
    }
    let invoices_by_id: HashMap<InvoiceId, &Made> =
        made.iter().map(|m| (m.invoice.id, m)).collect();
    let mut jobs = Vec::new();
    let mut charges = Vec::new();
    let mut recorded: Vec<(Scope, NewEvent)> = Vec::new();
    for (d, invoice, fresh) in &mut done {
        d.sub.latest_invoice_id = Some(*invoice);
        d.sub.updated_at = now;
        jobs.push(subscriptions::renewal(d.scope, &d.sub));
        if let Some(m) = invoices_by_id.get(invoice).filter(|_| *fresh) {
            // The invoice as it stands, shown by each of its events; before its first
            // attempt, when that started here.
            let json = if m.invoice.attempt_count > 0 {
                let before = InvoiceRow {
                    attempt_count: 0,
                    ..m.invoice.clone()
                };
                Arc::new(before.to_json(&m.lines))
            } else {
                Arc::new(m.invoice.to_json(&m.lines))
            };
            recorded.push((d.scope, NewEvent::shared("invoice.created", json.clone())));
            if let Some(at) = m.finalize_at {
                // A draft: finalized (and charged) at the end of its grace period.
                let finalize = Job::FinalizeInvoice {
                    invoice: *invoice,
                    at,
                };
                jobs.push(subscriptions::on_clock(
                    finalize.to_new(Some(d.scope), at),
                    &d.sub,
                ));
            } else {
                recorded.push((d.scope, NewEvent::shared("invoice.finalized", json.clone())));
                if m.invoice.status == InvoiceStatus::Paid {
                    recorded.push((d.scope, NewEvent::shared("invoice.paid", json)));
                }
                if let Some(charge) = m.charge.clone() {
                    // (An overdue check, due later, is not held.)
                    if held_now(&charge) {
                        charges.push(charge);
                    } else {
                        jobs.push(charge);
                    }
                }
            }
        }
        let view = SubscriptionView {
            subscription: d.sub.clone(),
            items: reads.items.remove(&d.sub.id).unwrap_or_default(),
        };
        recorded.push((
            d.scope,
            NewEvent::new("customer.subscription.updated", view.to_json()),
        ));
    }
    let subs: Vec<&SubscriptionRow> = done.iter().map(|(d, ..)| &d.sub).collect();
    db::subscriptions::save_many(uow.conn(), &subs).await?;
    jobs::enqueue(uow.conn(), &jobs, now).await?;
    if let Some((until, _)) = holding {
        let held = jobs::enqueue_held(uow.conn(), &charges, now, until).await?;
        let held = held
            .into_iter()
            .map(|job| {
                let attempt = attempts.remove(&job.id);
                (job, attempt)
            })
            .collect();
        uow.held(held);
    }
    events::record_all(uow, recorded).await?;
    Ok(done
        .into_iter()
        .map(|(d, invoice, _)| {
            let renewal = Renewal::Renewed {
                invoice: Some(invoice),
            };
            (d.at, renewal)
        })
        .collect())
}

/// The grace periods (hours) of the new periods of `due` whose invoices bill usage (`usage`:
/// their usage lines, [`bill_usage`]), in tenants' modes that set one (in one statement):
/// those invoices are drafts until then.
async fn grace_periods(
    uow: &mut UnitOfWork,
    usage: &HashMap<SubscriptionId, (InvoiceId, Vec<LineRow>)>,
    due: &[Due],
) -> ServiceResult<HashMap<SubscriptionId, u8>> {
    let metered: Vec<&Due> = due
        .iter()
        .filter(|d| usage.get(&d.sub.id).is_some_and(|(_, l)| !l.is_empty()))
        .collect();
    if metered.is_empty() {
        return Ok(HashMap::new());
    }
    let mut scopes: Vec<Scope> = metered.iter().map(|d| d.scope).collect();
    scopes.sort_by_key(|s| (s.tenant_id().as_uuid(), s.livemode()));
    scopes.dedup();
    let graces: HashMap<Scope, u8> = db::invoice_settings::grace_periods(uow.conn(), &scopes)
        .await?
        .into_iter()
        .collect();
    Ok(metered
        .iter()
        .filter_map(|d| graces.get(&d.scope).map(|h| (d.sub.id, *h)))
        .collect())
}

/// The invoice ids of the new periods of `due` with metered items, and the lines billing
/// their usage up to the periods' starts (for all in one statement; see [`usage::bill`]).
async fn bill_usage(
    uow: &mut UnitOfWork,
    reads: &Reads,
    due: &[Due],
) -> ServiceResult<HashMap<SubscriptionId, (InvoiceId, Vec<LineRow>)>> {
    let mut billable = Vec::new();
    for d in due {
        if reads.invoiced.contains_key(&d.sub.id) {
            continue;
        }
        let items = reads.items.get(&d.sub.id).map_or(&[][..], Vec::as_slice);
        billable.push(usage::Billable {
            scope: d.scope,
            sub: &d.sub,
            until: d.sub.current_period_start,
            invoice: InvoiceId::new(),
            position: items.iter().filter(|i| i.usage.is_none()).count(),
        });
    }
    let lines = usage::bill(uow, &billable).await?;
    Ok(billable
        .iter()
        .zip(lines)
        .map(|(b, l)| (b.sub.id, (b.invoice, l)))
        .collect())
}

/// Makes the invoice of `sub`'s current period from what was read (as
/// [`invoices::invoice_period`] does for one): the items' lines less the subscription's
/// discounts, then the lines waiting for it and its customer's one-off items, taxed, with the
/// customer's credit applied (recorded in its balance now), numbered at the commit. With a
/// `grace` period (hours) it is a draft until then instead, its usage lines what is recorded so
/// far: usage for the period before is still recorded, and billed when it is finalized
/// ([`finalize_held`]).
async fn invoice_period(
    uow: &mut UnitOfWork,
    reads: &mut Reads,
    sub: &mut SubscriptionRow,
    scope: Scope,
    id: InvoiceId,
    usage: Vec<LineRow>,
    grace: Option<u8>,
) -> ServiceResult<Made> {
    let now = uow.now();
    let period = Period {
        start: sub.current_period_start,
        end: sub.current_period_end,
    };
    let items = reads.items.get(&sub.id).map_or(&[][..], Vec::as_slice);
    let mut lines = invoices::period_lines(id, items, period)?;
    lines.extend(usage);
    let finalize_at = grace.map(|hours| period.start + chrono::Duration::hours(i64::from(hours)));
    if finalize_at.is_some() {
        sub.usage_draft_until = Some(period.start);
    } else {
        // Usage before the period is on this invoice (or was free): events for it are refused.
        sub.usage_billed_until = sub.usage_billed_until.max(Some(period.start));
    }
    if invoices::apply_bundle(sub, &mut lines)?
        && let Some(coupon) = sub.coupon_id.and_then(|c| reads.coupons.get(&c))
    {
        invoices::apply_coupon(sub, coupon, &mut lines, period)?;
    }
    let mut pending = reads.waiting.remove(&sub.id).unwrap_or_default();
    // The customer's one-off items in the subscription's currency come along (as at Stripe).
    pending.extend(reads.one_offs.remove(&sub.customer_id).unwrap_or_default());
    invoices::append_pending(&mut lines, &pending, id)?;
    let customer = reads
        .customers
        .get(&sub.customer_id)
        .ok_or(ServiceError::NotFound("customer"))?;
    let rates = reads.rates.get(&customer.id).map_or(&[][..], Vec::as_slice);
    // A draft takes the customer's credit when it is finalized.
    let balance = if finalize_at.is_some() {
        0
    } else {
        customer.balance
    };
    let taxed = tax_rates::taxed(rates, &lines, balance)?;
    let prefix = match invoices::own_prefix(customer) {
        Some(p) => p,
        None => {
            let slug = reads
                .slugs
                .get(&customer.tenant_id)
                .ok_or_else(|| ServiceError::internal("a customer's tenant without a profile"))?;
            InvoicePrefix::from_slug(slug)
        }
    };
    let mut invoice = invoices::blank_of(scope, id, sub, "subscription_cycle", period, now);
    invoice.tax_amounts = taxed.tax_amounts;
    if finalize_at.is_some() {
        invoices::show_totals(&mut invoice, &taxed.totals, now);
    } else {
        invoices::use_balance(uow, scope, customer.id, id, &taxed.totals).await?;
        uow.number_at_commit(scope, prefix, id);
        invoices::settle(&mut invoice, &taxed.totals, now, sub.days_until_due);
    }
    if sub.coupon_id.is_some() {
        // One more period invoice since the redemption (saved with the subscription).
        sub.coupon_invoices = sub.coupon_invoices.saturating_add(1);
    }
    Ok(Made {
        scope,
        invoice,
        lines,
        taken: pending.iter().map(|p| p.id).collect(),
        finalize_at,
        charge: None,
        attempt: None,
    })
}

/// Finalizes a renewal invoice kept a draft for its grace period (an `invoice.finalize` job
/// due `at`, or the tenant finalizing it): see [`finalize_held`]. `None` when it is not such a
/// draft (any more): a job for it is then stale. A job run before its time (another host's
/// clock) is an error, so that it runs again when due.
pub async fn finalize_draft(
    uow: &mut UnitOfWork,
    scope: Scope,
    id: InvoiceId,
    at: Option<DateTime<Utc>>,
) -> ServiceResult<Option<InvoiceView>> {
    let unlocked = db::invoices::get(uow.conn(), scope, id)
        .await
        .map_err(ServiceError::not_found("invoice"))?;
    let Some(sub) = unlocked.subscription_id else {
        return Ok(None);
    };
    // The subscription first, as every change of its invoices does.
    let mut sub = db::subscriptions::lock(uow.conn(), scope, sub).await?;
    if unlocked.status != InvoiceStatus::Draft
        || sub.usage_draft_until != Some(unlocked.period_start)
    {
        return Ok(None);
    }
    subscriptions::at_clock_time(uow, scope, sub.customer_id).await?;
    if let Some(at) = at.filter(|at| uow.now() < *at) {
        return Err(subscriptions::not_due(at));
    }
    finalize_held(uow, scope, &mut sub).await
}

/// Finalizes the renewal invoice of `sub` (locked) that is still a draft holding its usage
/// (`usage_draft_until`), and saves `sub`: its usage lines are measured again, with what was
/// recorded since the draft was made, its discounts applied again over them, then it is
/// finalized as a renewal invoice is made at once (the customer's credit, the next number,
/// `invoice.finalized`, its first charge). Usage before its period is then refused.
pub(crate) async fn finalize_held(
    uow: &mut UnitOfWork,
    scope: Scope,
    sub: &mut SubscriptionRow,
) -> ServiceResult<Option<InvoiceView>> {
    let Some(until) = sub.usage_draft_until.take() else {
        return Ok(None);
    };
    let now = uow.now();
    let draft = match db::invoices::of_period(uow.conn(), scope, sub.id, until).await? {
        Some(found) => Some(db::invoices::lock(uow.conn(), scope, found.id).await?),
        None => None,
    };
    let made = match draft.filter(|d| d.status == InvoiceStatus::Draft) {
        Some(mut invoice) => {
            let lines = held_lines(uow, scope, sub, &invoice, until).await?;
            invoices::finalize_row(uow, scope, &mut invoice, &lines, sub.days_until_due).await?;
            db::invoices::delete_lines(uow.conn(), scope, invoice.id).await?;
            db::invoices::insert_lines(uow.conn(), scope, &lines).await?;
            db::invoices::save(uow.conn(), scope, &invoice).await?;
            let json = invoice.to_json(&lines);
            events::record(uow, scope, "invoice.finalized", json.clone()).await?;
            if invoice.status == InvoiceStatus::Paid {
                events::record(uow, scope, "invoice.paid", json).await?;
            }
            if let Some(charge) = subscriptions::first_charge(scope, sub, &invoice, now) {
                jobs::enqueue(uow.conn(), &[charge], now).await?;
            }
            Some(InvoiceView { invoice, lines })
        }
        None => None,
    };
    // Usage before the period is on its invoice now: events for it are refused.
    sub.usage_billed_until = sub.usage_billed_until.max(Some(until));
    sub.updated_at = now;
    db::subscriptions::save(uow.conn(), scope, sub).await?;
    Ok(made)
}

/// The lines of a held renewal `invoice` once finalized: its items' lines (the lines of its
/// period), its usage up to `until` measured now, the subscription's discounts over both as
/// when it was made, then the waiting lines it took, as they were.
async fn held_lines(
    uow: &mut UnitOfWork,
    scope: Scope,
    sub: &SubscriptionRow,
    invoice: &InvoiceRow,
    until: DateTime<Utc>,
) -> ServiceResult<Vec<LineRow>> {
    let lines = db::invoices::lines(uow.conn(), scope, &[invoice.id.as_uuid()]).await?;
    let taken = db::invoices::items_of(uow.conn(), scope, invoice.id).await?;
    // The waiting lines come last; before them, the period's lines, then its usage (whose
    // windows end by the period's start).
    let (own, waiting) = lines.split_at(lines.len().saturating_sub(taken.len()));
    let mut line_amounts: Vec<i64> = waiting.iter().map(|l| l.amount).collect();
    let mut item_amounts: Vec<i64> = taken.iter().map(|t| t.amount).collect();
    line_amounts.sort_unstable();
    item_amounts.sort_unstable();
    if line_amounts != item_amounts {
        return Err(ServiceError::internal(format!(
            "the last lines of renewal draft {} are not the items it took",
            invoice.id
        )));
    }
    let mut out: Vec<LineRow> = own
        .iter()
        .filter(|l| l.period_end > invoice.period_start)
        .cloned()
        .map(|mut l| {
            l.discount_amount = 0;
            l
        })
        .collect();
    let usage = usage::Billable {
        scope,
        sub,
        until,
        invoice: invoice.id,
        position: out.len(),
    };
    out.extend(usage::bill(uow, &[usage]).await?.concat());
    let period = Period {
        start: invoice.period_start,
        end: invoice.period_end,
    };
    // The coupon's count of invoices already counts this one.
    let mut as_made = sub.clone();
    as_made.coupon_invoices = as_made.coupon_invoices.saturating_sub(1).max(0);
    invoices::discount(uow, scope, &as_made, &mut out, period).await?;
    out.extend(waiting.iter().cloned());
    for (i, line) in out.iter_mut().enumerate() {
        line.position = i32::try_from(i).map_err(ServiceError::internal)?;
    }
    Ok(out)
}
