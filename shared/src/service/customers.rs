//! Customers: whom a tenant bills, per mode. Each change records its event
//! (`customer.created`, `customer.updated`, `customer.deleted`); a change that changes nothing
//! writes and records nothing.

use serde_json::Value;
use sqlx::PgPool;

use super::{ServiceError, ServiceResult, events, settle, tentative};
use crate::{
    config::StripeSettings,
    db::{
        self, DbError,
        catalog_sync::{self, Synced},
        customers::{CustomerChanges, NewCustomer, NewPaymentMethod},
        pagination::{Page, PageRequest},
    },
    domain::{
        catalog::Metadata,
        customer::{
            Address, CardExpiry, CustomerName, ExternalId, InvoicePrefix, TaxIds, Timezone,
        },
        email::Email,
        money::Currency,
    },
    ids::{CustomerId, PaymentMethodId, TaxRateId, TestClockId},
    payments::{self, Gateway},
    stripe::Stripe,
    tenancy::TenantContext,
    uow::UnitOfWork,
};

/// What the operations of this module return.
pub use crate::db::{
    catalog_sync::SyncStatus,
    customers::{CustomerRow, PaymentMethodRow},
};

const WHAT: &str = "customer";

fn customer_error(e: DbError) -> ServiceError {
    ServiceError::taken(
        "customers_external_id_key",
        "customer_external_id_taken",
        "external_id",
        "A customer with this external_id already exists.",
        WHAT,
    )(e)
}

/// A customer to create.
#[derive(Debug, Default)]
pub struct CustomerSpec<'a> {
    pub email: Option<&'a Email>,
    pub name: CustomerName,
    pub external_id: Option<&'a ExternalId>,
    pub currency: Option<Currency>,
    /// UTC when not given.
    pub timezone: Option<Timezone>,
    pub address: Option<&'a Address>,
    pub tax_ids: TaxIds,
    pub tax_exempt: bool,
    pub invoice_prefix: Option<&'a InvoicePrefix>,
    pub metadata: Metadata,
    /// A test clock (test mode only) whose time the customer lives in, for good.
    pub test_clock: Option<TestClockId>,
    /// Tax rates its invoices apply instead of the tenant's defaults.
    pub tax_rates: &'a [TaxRateId],
}

pub async fn create_customer(
    uow: &mut UnitOfWork,
    ctx: &TenantContext,
    stripe: &StripeSettings,
    spec: CustomerSpec<'_>,
) -> ServiceResult<CustomerRow> {
    let now = uow.now();
    if let Some(clock) = spec.test_clock {
        if ctx.livemode() {
            return Err(ServiceError::invalid(
                "test_clock",
                "exists in test mode only",
            ));
        }
        db::test_clocks::get(uow.conn(), ctx.scope(), clock)
            .await
            .map_err(ServiceError::unknown("test_clock", "test clock"))?;
    }
    let tax_rates = known_tax_rates(uow, ctx, spec.tax_rates).await?;
    let address = spec.address.map(Address::to_json);
    let row = db::customers::create(
        uow.conn(),
        ctx.scope(),
        NewCustomer {
            id: CustomerId::new(),
            email: spec.email.map(Email::as_str),
            name: spec.name.as_str(),
            external_id: spec.external_id.map(ExternalId::as_str),
            currency: spec.currency.map(Currency::as_str),
            timezone: spec.timezone.unwrap_or(Timezone::UTC).name(),
            address: address.as_ref(),
            tax_ids: &spec.tax_ids.to_json(),
            tax_exempt: spec.tax_exempt,
            invoice_prefix: spec.invoice_prefix.map(InvoicePrefix::as_str),
            metadata: &spec.metadata.to_json(),
            test_clock: spec.test_clock,
            tax_rates: &tax_rates,
        },
        now,
    )
    .await
    .map_err(customer_error)?;
    // Mirrored on the tenant's connected Stripe account, when it has one.
    catalog_sync::changed(
        uow.conn(),
        stripe,
        Synced::Customer,
        ctx.scope(),
        row.id.as_uuid(),
        now,
    )
    .await?;
    events::record(uow, ctx.scope(), "customer.created", row.to_json()).await?;
    Ok(row)
}

pub async fn list_customers(
    pool: &PgPool,
    ctx: &TenantContext,
    search: Option<&str>,
    page: PageRequest,
) -> ServiceResult<Page<CustomerRow>> {
    let search = super::search_text(search)?;
    Ok(db::customers::list(pool, ctx.scope(), search, page).await?)
}

pub async fn get_customer(
    pool: &PgPool,
    ctx: &TenantContext,
    id: CustomerId,
) -> ServiceResult<CustomerRow> {
    let mut conn = pool.acquire().await.map_err(DbError::from)?;
    db::customers::get(&mut conn, ctx.scope(), id)
        .await
        .map_err(ServiceError::not_found(WHAT))
}

/// Changes to a customer: `None` leaves a field as it is; `Some(None)` clears an optional one.
#[derive(Debug, Default)]
pub struct CustomerUpdate<'a> {
    pub email: Option<Option<&'a Email>>,
    pub name: Option<&'a CustomerName>,
    pub external_id: Option<Option<&'a ExternalId>>,
    pub currency: Option<Currency>,
    pub timezone: Option<Timezone>,
    pub address: Option<Option<&'a Address>>,
    pub tax_ids: Option<&'a TaxIds>,
    pub tax_exempt: Option<bool>,
    pub invoice_prefix: Option<Option<&'a InvoicePrefix>>,
    pub metadata: Option<&'a Metadata>,
    pub tax_rates: Option<&'a [TaxRateId]>,
}

/// The ids of `rates`, each a tax rate of the mode (`400 tax_rates` otherwise), once each.
async fn known_tax_rates(
    uow: &mut UnitOfWork,
    ctx: &TenantContext,
    rates: &[TaxRateId],
) -> ServiceResult<Vec<uuid::Uuid>> {
    let mut ids: Vec<uuid::Uuid> = Vec::with_capacity(rates.len());
    for r in rates {
        if !ids.contains(&r.as_uuid()) {
            ids.push(r.as_uuid());
        }
    }
    if ids.len() > 10 {
        return Err(ServiceError::invalid(
            "tax_rates",
            "must hold at most 10 rates",
        ));
    }
    let found = db::tax_rates::get_many(uow.conn(), ctx.scope(), &ids).await?;
    if let Some(archived) = found.iter().find(|f| !f.active) {
        return Err(ServiceError::invalid(
            "tax_rates",
            format!("names {}, which is archived", archived.id),
        ));
    }
    if let Some(missing) = rates.iter().find(|r| !found.iter().any(|f| f.id == **r)) {
        return Err(ServiceError::invalid(
            "tax_rates",
            format!("names {missing}, which is no tax rate of this mode"),
        ));
    }
    Ok(ids)
}

/// What a change can touch, to tell a change that changes nothing.
fn content(c: &CustomerRow) -> Value {
    let mut v = c.to_json();
    if let Some(o) = v.as_object_mut() {
        o.remove("updated_at");
    }
    v
}

pub async fn update_customer(
    uow: &mut UnitOfWork,
    ctx: &TenantContext,
    stripe: &StripeSettings,
    id: CustomerId,
    changes: CustomerUpdate<'_>,
) -> ServiceResult<CustomerRow> {
    let now = uow.now();
    let before = db::customers::get(uow.conn(), ctx.scope(), id)
        .await
        .map_err(ServiceError::not_found(WHAT))?;
    let address = changes.address.map(|a| a.map(Address::to_json));
    let tax_ids = changes.tax_ids.map(TaxIds::to_json);
    let metadata = changes.metadata.map(Metadata::to_json);
    let tax_rates = match changes.tax_rates {
        Some(r) => Some(known_tax_rates(uow, ctx, r).await?),
        None => None,
    };
    tentative(uow).await?;
    let after = db::customers::update(
        uow.conn(),
        ctx.scope(),
        id,
        CustomerChanges {
            email: changes.email.map(|e| e.map(Email::as_str)),
            name: changes.name.map(CustomerName::as_str),
            external_id: changes.external_id.map(|e| e.map(ExternalId::as_str)),
            currency: changes.currency.map(Currency::as_str),
            timezone: changes.timezone.map(Timezone::name),
            address: address.as_ref().map(Option::as_ref),
            tax_ids: tax_ids.as_ref(),
            tax_exempt: changes.tax_exempt,
            invoice_prefix: changes.invoice_prefix.map(|p| p.map(InvoicePrefix::as_str)),
            metadata: metadata.as_ref(),
            tax_rates: tax_rates.as_deref(),
        },
        now,
    )
    .await
    .map_err(customer_error)?;
    let same = content(&after) == content(&before);
    settle(uow, !same).await?;
    if same {
        return Ok(before);
    }
    if after.name != before.name || after.email != before.email || after.metadata != before.metadata
    {
        let id = after.id.as_uuid();
        catalog_sync::bump(uow.conn(), Synced::Customer, id).await?;
        catalog_sync::changed(uow.conn(), stripe, Synced::Customer, ctx.scope(), id, now).await?;
    }
    events::record(uow, ctx.scope(), "customer.updated", after.to_json()).await?;
    Ok(after)
}

/// Deletes a customer (refused while a subscription of it is live): it answers 404 from then on
/// and its `external_id` is free again; the row stays for what it was billed.
pub async fn delete_customer(
    uow: &mut UnitOfWork,
    ctx: &TenantContext,
    id: CustomerId,
) -> ServiceResult<CustomerRow> {
    let now = uow.now();
    // Locked first, so a subscription cannot start while the customer goes.
    db::customers::lock(uow.conn(), ctx.scope(), id)
        .await
        .map_err(ServiceError::not_found(WHAT))?;
    if let Some(sub) = db::subscriptions::live_of_customer(uow.conn(), ctx.scope(), id).await? {
        return Err(ServiceError::conflict(
            "customer_has_subscription",
            format!("The customer has a live subscription ({sub}); cancel it first."),
        ));
    }
    let row = db::customers::delete(uow.conn(), ctx.scope(), id, now)
        .await
        .map_err(ServiceError::not_found(WHAT))?;
    let mut data = row.to_json();
    if let Some(o) = data.as_object_mut() {
        o.insert("deleted".into(), Value::Bool(true));
    }
    events::record(uow, ctx.scope(), "customer.deleted", data).await?;
    Ok(row)
}

// ---- payment methods ----

const PAYMENT_METHOD: &str = "payment method";

/// A card to attach: what the gateway charges, and what is shown of it.
#[derive(Debug, Clone)]
pub struct CardToAttach {
    token: String,
    brand: String,
    last4: String,
    /// The expiry the gateway knows (a Stripe payment method's), which wins over the one given.
    expiry: Option<CardExpiry>,
    /// The Stripe customer the payment method is attached to already, if any.
    stripe_customer: Option<String>,
}

/// The card a token names, read before any transaction (it may ask Stripe):
/// - in the sandbox, one of Stripe's test cards (by number or test payment method);
/// - with Stripe, in test mode, one of those too (attached to the Stripe customer by the
///   customer's sync);
/// - with Stripe and the tenant's account connected, a payment method of that account
///   (`pm_…`, as Stripe.js makes them), whose brand, last 4 and expiry are read from Stripe.
pub async fn card_for_token(
    pool: &PgPool,
    stripe: &Stripe,
    gateway: &Gateway,
    ctx: &TenantContext,
    token: &str,
    today: chrono::NaiveDate,
) -> ServiceResult<CardToAttach> {
    let token = token.trim();
    let test = |mode: &str| {
        payments::test_card(token)
            .map(|c| CardToAttach {
                token: c.token.to_owned(),
                brand: c.brand.to_owned(),
                last4: c.last4.to_owned(),
                expiry: None,
                stripe_customer: None,
            })
            .ok_or_else(|| {
                ServiceError::invalid(
                    "token",
                    format!(
                        "must be one of Stripe's test cards (such as 4242 4242 4242 4242){mode}"
                    ),
                )
            })
    };
    if matches!(gateway, Gateway::Sandbox) {
        return test(" in the sandbox");
    }
    if !ctx.livemode() && payments::test_card(token).is_some() {
        return test("");
    }
    if !payments::is_payment_method_id(token) {
        let what = if ctx.livemode() {
            "must be a payment method (pm_…) of the connected Stripe account"
        } else {
            "must be a payment method (pm_…) of the connected Stripe account or one of \
             Stripe's test cards"
        };
        return Err(ServiceError::invalid("token", what));
    }
    let mut conn = pool.acquire().await.map_err(db::DbError::from)?;
    let account = db::stripe_accounts::get(&mut conn, ctx.scope())
        .await?
        .and_then(|a| a.usable_id().map(str::to_owned));
    drop(conn);
    let Some(account) = account else {
        return Err(ServiceError::conflict(
            "stripe_account_not_connected",
            "Connect a Stripe account before attaching its payment methods.",
        ));
    };
    let not_ours = || {
        ServiceError::invalid(
            "token",
            "is not a card payment method of the connected Stripe account",
        )
    };
    let Some(card) = stripe.card_of(ctx.livemode(), &account, token).await? else {
        return Err(not_ours());
    };
    let month = u32::try_from(card.exp_month).unwrap_or(0);
    let year = u32::try_from(card.exp_year).unwrap_or(0);
    let expiry = CardExpiry::parse(month, year, today)
        .map_err(|_| ServiceError::invalid("token", "is a card that has expired"))?;
    Ok(CardToAttach {
        token: token.to_owned(),
        brand: card.brand,
        last4: card.last4,
        expiry: Some(expiry),
        stripe_customer: card.customer,
    })
}

/// Attaches a card ([`card_for_token`]) to a customer; only its brand, last 4 and expiry are
/// kept (and what the gateway charges). The customer's first card becomes its default.
pub async fn attach_payment_method(
    uow: &mut UnitOfWork,
    ctx: &TenantContext,
    stripe: &StripeSettings,
    customer: CustomerId,
    card: CardToAttach,
    expiry: CardExpiry,
) -> ServiceResult<PaymentMethodRow> {
    let expiry = card.expiry.unwrap_or(expiry);
    let now = uow.now();
    let owner = db::customers::lock(uow.conn(), ctx.scope(), customer)
        .await
        .map_err(ServiceError::not_found(WHAT))?;
    // A payment method belongs to one Stripe customer: one attached to another cannot be
    // charged for this one (Stripe would refuse to attach it to this one's).
    if let Some(other) = card.stripe_customer.as_deref()
        && owner.stripe_customer_id.as_deref() != Some(other)
    {
        return Err(ServiceError::conflict(
            "payment_method_attached_elsewhere",
            "This payment method is attached to another Stripe customer of the account; \
             detach it there first.",
        ));
    }
    let row = db::customers::attach_payment_method(
        uow.conn(),
        ctx.scope(),
        NewPaymentMethod {
            id: PaymentMethodId::new(),
            customer_id: customer,
            gateway_token: &card.token,
            brand: &card.brand,
            last4: &card.last4,
            exp_month: expiry.month,
            exp_year: expiry.year,
        },
        now,
    )
    .await?;
    payment_method_changed(uow, ctx, stripe, &row, "payment_method.attached").await?;
    if row.is_default {
        // A customer's first card: what dunning waited for.
        super::dunning::retry_now(uow, ctx.scope(), customer).await?;
    }
    Ok(row)
}

/// After a payment method changed: its sync to the connected Stripe account is queued (attached
/// to, or detached from, its Stripe customer there) and `event_type` recorded.
async fn payment_method_changed(
    uow: &mut UnitOfWork,
    ctx: &TenantContext,
    stripe: &StripeSettings,
    row: &PaymentMethodRow,
    event_type: &str,
) -> ServiceResult<()> {
    let now = uow.now();
    let id = row.id.as_uuid();
    catalog_sync::changed(
        uow.conn(),
        stripe,
        Synced::PaymentMethod,
        ctx.scope(),
        id,
        now,
    )
    .await?;
    events::record(uow, ctx.scope(), event_type, row.to_json()).await?;
    Ok(())
}

pub async fn list_payment_methods(
    pool: &PgPool,
    ctx: &TenantContext,
    customer: CustomerId,
    page: PageRequest,
) -> ServiceResult<Page<PaymentMethodRow>> {
    get_customer(pool, ctx, customer).await?;
    Ok(db::customers::list_payment_methods(pool, ctx.scope(), customer, page).await?)
}

/// Makes a payment method the customer's default: what renewals charge.
pub async fn set_default_payment_method(
    uow: &mut UnitOfWork,
    ctx: &TenantContext,
    customer: CustomerId,
    id: PaymentMethodId,
) -> ServiceResult<PaymentMethodRow> {
    db::customers::lock(uow.conn(), ctx.scope(), customer)
        .await
        .map_err(ServiceError::not_found(WHAT))?;
    tentative(uow).await?;
    let was_default =
        db::customers::default_payment_method(uow.conn(), ctx.scope(), customer).await?;
    let row = db::customers::set_default_payment_method(uow.conn(), ctx.scope(), customer, id)
        .await
        .map_err(ServiceError::not_found(PAYMENT_METHOD))?;
    let changed = was_default != Some(id);
    settle(uow, changed).await?;
    if changed {
        events::record(uow, ctx.scope(), "payment_method.updated", row.to_json()).await?;
        // What dunning waited for: the customer's invoices in dunning are charged again now.
        super::dunning::retry_now(uow, ctx.scope(), customer).await?;
    }
    Ok(row)
}

/// Detaches a payment method; it is charged no more.
pub async fn detach_payment_method(
    uow: &mut UnitOfWork,
    ctx: &TenantContext,
    stripe: &StripeSettings,
    customer: CustomerId,
    id: PaymentMethodId,
) -> ServiceResult<PaymentMethodRow> {
    let now = uow.now();
    db::customers::lock(uow.conn(), ctx.scope(), customer)
        .await
        .map_err(ServiceError::not_found(WHAT))?;
    let row = db::customers::detach_payment_method(uow.conn(), ctx.scope(), customer, id, now)
        .await
        .map_err(ServiceError::not_found(PAYMENT_METHOD))?;
    // Detached from its Stripe customer too, when it was attached there.
    payment_method_changed(uow, ctx, stripe, &row, "payment_method.detached").await?;
    Ok(row)
}
