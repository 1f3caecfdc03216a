//! Customers (`/api/v1/customers`): whom a tenant bills, per mode.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use poem::Request;
use poem_openapi::{ApiResponse, Object, OpenApi, param::Path, param::Query, payload::Json};
use serde::Deserialize;
use shared::{
    domain::{
        ValidationError,
        customer::{
            Address, CardExpiry, CustomerName, ExternalId, InvoicePrefix, TaxId, TaxIds, Timezone,
        },
        email::Email,
        invoice::invoice_text,
        money::Currency,
    },
    ids::{BalanceTransactionId, CustomerId, PaymentMethodId, TaxRateId, TestClockId},
    payments::Gateway,
    service::{
        balance::{self, BalanceTransactionRow},
        customers::{self as service, CustomerRow, CustomerSpec, CustomerUpdate, PaymentMethodRow},
    },
    tenancy::Permission,
};

use super::{
    ApiTags,
    dto::{metadata, page_request},
    invoice_items::MAX_ITEM_AMOUNT,
};
use crate::{
    auth::Auth, body::JsonBody, error::ApiError, middleware::note, state::AppState, work::Work,
};

pub struct CustomersApi;

pub struct PaymentMethodsApi;

/// A postal address; every line is optional.
#[derive(Debug, Clone, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct CustomerAddress {
    #[oai(nullable)]
    pub line1: Option<String>,
    #[oai(nullable)]
    pub line2: Option<String>,
    #[oai(nullable)]
    pub city: Option<String>,
    #[oai(nullable)]
    pub state: Option<String>,
    #[oai(nullable)]
    pub postal_code: Option<String>,
    /// ISO 3166-1 alpha-2 code, such as `FR`.
    #[oai(nullable)]
    pub country: Option<String>,
}

impl From<CustomerAddress> for Address {
    fn from(a: CustomerAddress) -> Self {
        Address {
            line1: a.line1,
            line2: a.line2,
            city: a.city,
            state: a.state,
            postal_code: a.postal_code,
            country: a.country,
        }
    }
}

/// A tax id, as Stripe has them.
#[derive(Debug, Clone, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct CustomerTaxId {
    /// Such as `eu_vat`, `gb_vat` or `us_ein`.
    #[oai(rename = "type")]
    #[serde(rename = "type")]
    pub kind: String,
    pub value: String,
}

/// A customer to create; an empty `email`, `external_id` or `invoice_prefix` is no value.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct CustomerIn {
    #[oai(nullable)]
    pub email: Option<String>,
    /// As invoices show it.
    #[oai(nullable)]
    pub name: Option<String>,
    /// Your own id for the customer, unique per mode.
    #[oai(nullable)]
    pub external_id: Option<String>,
    /// ISO 4217 code of the customer's invoices; set by the first subscription when absent.
    #[oai(nullable)]
    pub currency: Option<String>,
    /// IANA timezone that billing periods follow; default `UTC`.
    #[oai(nullable)]
    pub timezone: Option<String>,
    #[oai(nullable)]
    pub address: Option<CustomerAddress>,
    /// At most 5.
    #[oai(nullable)]
    pub tax_ids: Option<Vec<CustomerTaxId>>,
    /// Exempt customers pay no tax; default `false`.
    #[oai(nullable)]
    pub tax_exempt: Option<bool>,
    /// Tax rates its invoices apply (`txr_…`, at most 10) instead of the tenant's defaults.
    #[oai(nullable)]
    pub tax_rates: Option<Vec<String>>,
    /// The prefix of this customer's invoice numbers instead of the tenant's.
    #[oai(nullable)]
    pub invoice_prefix: Option<String>,
    #[oai(nullable)]
    pub metadata: Option<HashMap<String, String>>,
    /// A test clock (`clock_…`, test mode only) whose time the customer lives in; it never
    /// changes.
    #[oai(nullable)]
    pub test_clock: Option<String>,
}

/// Changes to a customer: an absent or `null` field stays as it is; an empty string clears
/// `email`, `external_id` and `invoice_prefix`, and an address with no lines clears it.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct CustomerPatch {
    #[oai(nullable)]
    pub email: Option<String>,
    #[oai(nullable)]
    pub name: Option<String>,
    #[oai(nullable)]
    pub external_id: Option<String>,
    #[oai(nullable)]
    pub currency: Option<String>,
    #[oai(nullable)]
    pub timezone: Option<String>,
    #[oai(nullable)]
    pub address: Option<CustomerAddress>,
    #[oai(nullable)]
    pub tax_ids: Option<Vec<CustomerTaxId>>,
    #[oai(nullable)]
    pub tax_exempt: Option<bool>,
    /// Replaces its tax rates; `[]`: the tenant's defaults again.
    #[oai(nullable)]
    pub tax_rates: Option<Vec<String>>,
    #[oai(nullable)]
    pub invoice_prefix: Option<String>,
    #[oai(nullable)]
    pub metadata: Option<HashMap<String, String>>,
}

/// A customer.
#[derive(Debug, Object)]
pub struct CustomerOut {
    /// Customer id (`cus_…`).
    pub id: String,
    /// Always `customer`.
    pub object: String,
    #[oai(nullable)]
    pub email: Option<String>,
    pub name: String,
    #[oai(nullable)]
    pub external_id: Option<String>,
    #[oai(nullable)]
    pub currency: Option<String>,
    pub timezone: String,
    #[oai(nullable)]
    pub address: Option<CustomerAddress>,
    pub tax_ids: Vec<CustomerTaxId>,
    pub tax_exempt: bool,
    /// The tax rates its invoices apply (`txr_…`); empty: the tenant's default rates.
    pub tax_rates: Vec<String>,
    /// Its mirror on the tenant's connected Stripe account (`cus_…` of Stripe).
    #[oai(nullable)]
    pub stripe_customer_id: Option<String>,
    /// `pending`, `synced`, `failed` or `not_synced` (no Stripe account connected).
    pub sync_status: String,
    #[oai(nullable)]
    pub invoice_prefix: Option<String>,
    pub metadata: serde_json::Value,
    /// Credit in minor units of `currency`, applied to the customer's next invoices.
    pub balance: i64,
    /// The test clock it lives on (`clock_…`).
    #[oai(nullable)]
    pub test_clock: Option<String>,
    pub livemode: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<CustomerRow> for CustomerOut {
    fn from(c: CustomerRow) -> Self {
        let address = c
            .address
            .and_then(|a| serde_json::from_value::<Address>(a).ok())
            .map(|a| CustomerAddress {
                line1: a.line1,
                line2: a.line2,
                city: a.city,
                state: a.state,
                postal_code: a.postal_code,
                country: a.country,
            });
        let tax_ids: Vec<TaxId> = serde_json::from_value(c.tax_ids).unwrap_or_default();
        Self {
            id: c.id.to_string(),
            object: "customer".into(),
            email: c.email,
            name: c.name,
            external_id: c.external_id,
            currency: c.currency,
            timezone: c.timezone,
            address,
            tax_ids: tax_ids
                .into_iter()
                .map(|t| CustomerTaxId {
                    kind: t.kind,
                    value: t.value,
                })
                .collect(),
            tax_exempt: c.tax_exempt,
            stripe_customer_id: c.stripe_customer_id,
            sync_status: c.sync_status.as_str().into(),
            tax_rates: c
                .tax_rate_ids
                .iter()
                .map(|t| TaxRateId::from_uuid(*t).to_string())
                .collect(),
            invoice_prefix: c.invoice_prefix,
            metadata: c.metadata,
            balance: c.balance,
            test_clock: c.test_clock_id.map(|c| c.to_string()),
            livemode: c.livemode,
            created_at: c.created_at,
            updated_at: c.updated_at,
        }
    }
}

/// A deleted customer.
#[derive(Debug, Object)]
pub struct DeletedCustomer {
    pub id: String,
    /// Always `customer`.
    pub object: String,
    /// Always `true`.
    pub deleted: bool,
}

#[derive(Debug, Object)]
pub struct CustomerList {
    pub data: Vec<CustomerOut>,
    pub has_more: bool,
}

#[derive(ApiResponse)]
pub enum CreatedCustomer {
    /// The customer was created.
    #[oai(status = 201)]
    Created(Json<CustomerOut>),
}

/// A card to attach.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct PaymentMethodIn {
    /// In the sandbox: one of Stripe's test card numbers (`4242 4242 4242 4242`) or test
    /// payment methods (`pm_card_visa`); the number is never stored. With the tenant's Stripe
    /// account connected: a card payment method of that account (`pm_…`, made by Stripe.js),
    /// whose brand, last 4 and expiry are read from Stripe (in test mode, Stripe's test cards
    /// too).
    pub token: String,
    /// 1 to 12; default 12 (a Stripe payment method's own expiry wins).
    #[oai(nullable)]
    pub exp_month: Option<u32>,
    /// Not in the past; default three years ahead (a Stripe payment method's own expiry wins).
    #[oai(nullable)]
    pub exp_year: Option<u32>,
}

/// What is shown of a card.
#[derive(Debug, Object)]
pub struct CardOut {
    /// `visa`, `mastercard`…
    pub brand: String,
    pub last4: String,
    pub exp_month: i32,
    pub exp_year: i32,
}

/// A customer's payment method.
#[derive(Debug, Object)]
pub struct PaymentMethodOut {
    /// Payment method id (`pm_…`).
    pub id: String,
    /// Always `payment_method`.
    pub object: String,
    pub customer_id: String,
    /// Always `card`.
    #[oai(rename = "type")]
    pub kind: String,
    pub card: CardOut,
    /// What renewals charge.
    pub is_default: bool,
    pub livemode: bool,
    pub created_at: DateTime<Utc>,
}

impl From<PaymentMethodRow> for PaymentMethodOut {
    fn from(p: PaymentMethodRow) -> Self {
        Self {
            id: p.id.to_string(),
            object: "payment_method".into(),
            customer_id: p.customer_id.to_string(),
            kind: "card".into(),
            card: CardOut {
                brand: p.brand,
                last4: p.last4,
                exp_month: p.exp_month,
                exp_year: p.exp_year,
            },
            is_default: p.is_default,
            livemode: p.livemode,
            created_at: p.created_at,
        }
    }
}

#[derive(Debug, Object)]
pub struct PaymentMethodList {
    pub data: Vec<PaymentMethodOut>,
    pub has_more: bool,
}

#[derive(ApiResponse)]
pub enum AttachedPaymentMethod {
    /// The card was attached.
    #[oai(status = 201)]
    Created(Json<PaymentMethodOut>),
}

fn parse_payment_method_id(raw: &str) -> Result<PaymentMethodId, ApiError> {
    PaymentMethodId::parse(raw).map_err(|_| ApiError::not_found("payment method"))
}

/// A change of a customer's balance to make.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct BalanceAdjustmentIn {
    /// Minor units of the customer's currency: positive gives credit, negative takes it back.
    pub amount: i64,
    /// Why; at most 500 characters.
    #[oai(nullable)]
    pub description: Option<String>,
}

/// A change of a customer's credit balance (credit is positive).
#[derive(Debug, Object)]
pub struct BalanceTransactionOut {
    /// Balance transaction id (`cbtxn_…`).
    pub id: String,
    /// Always `customer_balance_transaction`.
    pub object: String,
    pub customer: String,
    /// `adjustment`, `applied_to_invoice`, `unapplied_from_invoice`, `invoice_credit`,
    /// `credit_note`, `overpayment` or `refund_failed`.
    pub r#type: String,
    /// Positive: credit given; negative: credit used.
    pub amount: i64,
    /// The balance after it.
    pub ending_balance: i64,
    #[oai(nullable)]
    pub invoice: Option<String>,
    #[oai(nullable)]
    pub credit_note: Option<String>,
    #[oai(nullable)]
    pub description: Option<String>,
    pub livemode: bool,
    pub created_at: DateTime<Utc>,
}

impl From<BalanceTransactionRow> for BalanceTransactionOut {
    fn from(t: BalanceTransactionRow) -> Self {
        Self {
            id: t.id.to_string(),
            object: "customer_balance_transaction".into(),
            customer: t.customer_id.to_string(),
            r#type: t.r#type,
            amount: t.amount,
            ending_balance: t.ending_balance,
            invoice: t.invoice_id.map(|i| i.to_string()),
            credit_note: t.credit_note_id.map(|c| c.to_string()),
            description: t.description,
            livemode: t.livemode,
            created_at: t.created_at,
        }
    }
}

#[derive(Debug, Object)]
pub struct BalanceTransactionList {
    pub data: Vec<BalanceTransactionOut>,
    pub has_more: bool,
}

#[derive(ApiResponse)]
pub enum CreatedBalanceTransaction {
    /// The balance changed.
    #[oai(status = 201)]
    Created(Json<BalanceTransactionOut>),
}

/// The tax rates a body names, as ids (`400 tax_rates` for a malformed one).
fn tax_rate_ids(raw: Option<&[String]>) -> Result<Option<Vec<TaxRateId>>, ApiError> {
    raw.map(|ids| {
        ids.iter()
            .map(|t| TaxRateId::parse(t))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ApiError::validation("tax_rates", e.to_string()))
    })
    .transpose()
}

fn customer_id(raw: &str) -> Result<CustomerId, ApiError> {
    CustomerId::parse(raw).map_err(|_| ApiError::not_found("customer"))
}

/// An optional text field: absent, or empty to mean none (`Some(None)` in a change).
fn clearable<T>(
    raw: Option<&str>,
    field: &'static str,
    parse: impl Fn(&str) -> Result<T, ValidationError>,
) -> Result<Option<Option<T>>, ApiError> {
    match raw.map(str::trim) {
        None => Ok(None),
        Some("") => Ok(Some(None)),
        Some(v) => parse(v)
            .map(|t| Some(Some(t)))
            .map_err(ApiError::invalid(field)),
    }
}

fn address(raw: Option<CustomerAddress>) -> Result<Option<Address>, ApiError> {
    raw.map(|a| Address::parse(a.into()))
        .transpose()
        .map_err(|(field, e)| ApiError::validation(field, e.0))
}

fn tax_ids(raw: Option<Vec<CustomerTaxId>>) -> Result<Option<TaxIds>, ApiError> {
    raw.map(|ids| {
        TaxIds::parse(
            ids.into_iter()
                .map(|t| TaxId {
                    kind: t.kind,
                    value: t.value,
                })
                .collect(),
        )
    })
    .transpose()
    .map_err(ApiError::invalid("tax_ids"))
}

/// The parsed optional values of a create or a change.
struct Parsed {
    email: Option<Option<Email>>,
    external_id: Option<Option<ExternalId>>,
    invoice_prefix: Option<Option<InvoicePrefix>>,
    currency: Option<Currency>,
    timezone: Option<Timezone>,
    address: Option<Address>,
    tax_ids: Option<TaxIds>,
}

#[allow(clippy::too_many_arguments)]
fn parse(
    email: Option<&str>,
    external_id: Option<&str>,
    invoice_prefix: Option<&str>,
    currency: Option<&str>,
    timezone: Option<&str>,
    addr: Option<CustomerAddress>,
    ids: Option<Vec<CustomerTaxId>>,
) -> Result<Parsed, ApiError> {
    Ok(Parsed {
        email: clearable(email, "email", Email::parse)?,
        external_id: clearable(external_id, "external_id", ExternalId::parse)?,
        invoice_prefix: clearable(invoice_prefix, "invoice_prefix", InvoicePrefix::parse)?,
        currency: currency
            .map(Currency::parse)
            .transpose()
            .map_err(ApiError::invalid("currency"))?,
        timezone: timezone
            .map(Timezone::parse)
            .transpose()
            .map_err(ApiError::invalid("timezone"))?,
        address: address(addr)?,
        tax_ids: tax_ids(ids)?,
    })
}

#[OpenApi]
impl CustomersApi {
    /// Create a customer
    #[oai(
        path = "/api/v1/customers",
        method = "post",
        operation_id = "customers.create",
        tag = "ApiTags::Customers"
    )]
    async fn create(
        &self,
        state: poem::web::Data<&AppState>,
        req: &Request,
        auth: Auth,
        body: JsonBody<CustomerIn>,
    ) -> Result<CreatedCustomer, ApiError> {
        let ctx = auth.require(Permission::WriteBilling)?;
        let b = body.0;
        let name = CustomerName::parse(b.name.as_deref().unwrap_or(""))
            .map_err(ApiError::invalid("name"))?;
        let metadata = metadata(b.metadata.as_ref())?.unwrap_or_default();
        let p = parse(
            b.email.as_deref(),
            b.external_id.as_deref(),
            b.invoice_prefix.as_deref(),
            b.currency.as_deref(),
            b.timezone.as_deref(),
            b.address,
            b.tax_ids,
        )?;
        let test_clock = b
            .test_clock
            .as_deref()
            .map(TestClockId::parse)
            .transpose()
            .map_err(|e| ApiError::validation("test_clock", e.to_string()))?;
        let tax_rates = tax_rate_ids(b.tax_rates.as_deref())?.unwrap_or_default();
        let mut work = Work::begin(req).await?;
        let row = service::create_customer(
            &mut work,
            ctx,
            &state.settings.stripe,
            CustomerSpec {
                email: p.email.as_ref().and_then(Option::as_ref),
                name,
                external_id: p.external_id.as_ref().and_then(Option::as_ref),
                currency: p.currency,
                timezone: p.timezone,
                address: p.address.as_ref(),
                tax_ids: p.tax_ids.unwrap_or_default(),
                tax_exempt: b.tax_exempt.unwrap_or(false),
                invoice_prefix: p.invoice_prefix.as_ref().and_then(Option::as_ref),
                metadata,
                test_clock,
                tax_rates: &tax_rates,
            },
        )
        .await?;
        let out = CustomerOut::from(row);
        note(req, |n| n.object_id = Some(out.id.clone()));
        Ok(CreatedCustomer::Created(Json(out)))
    }

    /// List customers
    ///
    /// Newest first.
    #[oai(
        path = "/api/v1/customers",
        method = "get",
        operation_id = "customers.list",
        tag = "ApiTags::Customers"
    )]
    async fn list(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        /// Text the email, the name or the external id contains (ignoring case).
        search: Query<Option<String>>,
        /// 1 to 100; default 10.
        limit: Query<Option<i64>>,
        /// A customer id: return older customers (the next page).
        starting_after: Query<Option<String>>,
        /// A customer id: return newer customers (the previous page).
        ending_before: Query<Option<String>>,
    ) -> Result<Json<CustomerList>, ApiError> {
        let ctx = auth.require(Permission::ReadBilling)?;
        let page = page_request(limit.0, starting_after.0, ending_before.0, |s| {
            CustomerId::parse(s).map(|id| id.as_uuid())
        })?;
        let page = service::list_customers(&state.pool, ctx, search.0.as_deref(), page).await?;
        Ok(Json(CustomerList {
            data: page.items.into_iter().map(Into::into).collect(),
            has_more: page.has_more,
        }))
    }

    /// Get a customer
    #[oai(
        path = "/api/v1/customers/:id",
        method = "get",
        operation_id = "customers.get",
        tag = "ApiTags::Customers"
    )]
    async fn get(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        /// Customer id (`cus_…`).
        id: Path<String>,
    ) -> Result<Json<CustomerOut>, ApiError> {
        let ctx = auth.require(Permission::ReadBilling)?;
        let id = customer_id(&id.0)?;
        Ok(Json(
            service::get_customer(&state.pool, ctx, id).await?.into(),
        ))
    }

    /// Update a customer
    ///
    /// An absent or `null` field stays as it is; an empty string clears `email`, `external_id`
    /// and `invoice_prefix`, and an address with no lines clears the address.
    #[oai(
        path = "/api/v1/customers/:id",
        method = "patch",
        operation_id = "customers.update",
        tag = "ApiTags::Customers"
    )]
    async fn update(
        &self,
        state: poem::web::Data<&AppState>,
        req: &Request,
        auth: Auth,
        /// Customer id (`cus_…`).
        id: Path<String>,
        body: JsonBody<CustomerPatch>,
    ) -> Result<Json<CustomerOut>, ApiError> {
        let ctx = auth.require(Permission::WriteBilling)?;
        let id = customer_id(&id.0)?;
        let b = body.0;
        let name = b
            .name
            .as_deref()
            .map(CustomerName::parse)
            .transpose()
            .map_err(ApiError::invalid("name"))?;
        let metadata = metadata(b.metadata.as_ref())?;
        let p = parse(
            b.email.as_deref(),
            b.external_id.as_deref(),
            b.invoice_prefix.as_deref(),
            b.currency.as_deref(),
            b.timezone.as_deref(),
            b.address,
            b.tax_ids,
        )?;
        // An address with no line left is no address.
        let address = p
            .address
            .map(|a| Some(a).filter(|a| *a != Address::default()));
        let tax_rates = tax_rate_ids(b.tax_rates.as_deref())?;
        let mut work = Work::begin(req).await?;
        let row = service::update_customer(
            &mut work,
            ctx,
            &state.settings.stripe,
            id,
            CustomerUpdate {
                email: p.email.as_ref().map(Option::as_ref),
                name: name.as_ref(),
                external_id: p.external_id.as_ref().map(Option::as_ref),
                currency: p.currency,
                timezone: p.timezone,
                address: address.as_ref().map(Option::as_ref),
                tax_ids: p.tax_ids.as_ref(),
                tax_exempt: b.tax_exempt,
                invoice_prefix: p.invoice_prefix.as_ref().map(Option::as_ref),
                metadata: metadata.as_ref(),
                tax_rates: tax_rates.as_deref(),
            },
        )
        .await?;
        let out = CustomerOut::from(row);
        note(req, |n| n.object_id = Some(out.id.clone()));
        Ok(Json(out))
    }

    /// Delete a customer
    ///
    /// The customer answers 404 from then on and its `external_id` is free again; what it was
    /// billed stays.
    #[oai(
        path = "/api/v1/customers/:id",
        method = "delete",
        operation_id = "customers.delete",
        tag = "ApiTags::Customers"
    )]
    async fn delete(
        &self,
        req: &Request,
        auth: Auth,
        /// Customer id (`cus_…`).
        id: Path<String>,
    ) -> Result<Json<DeletedCustomer>, ApiError> {
        let ctx = auth.require(Permission::WriteBilling)?;
        let id = customer_id(&id.0)?;
        note(req, |n| n.object_id = Some(id.to_string()));
        let mut work = Work::begin(req).await?;
        let row = service::delete_customer(&mut work, ctx, id).await?;
        Ok(Json(DeletedCustomer {
            id: row.id.to_string(),
            object: "customer".into(),
            deleted: true,
        }))
    }

    /// Adjust a customer's balance
    ///
    /// Gives the customer credit (a positive `amount`, in minor units of the customer's
    /// currency) that its next invoices use, or takes some back (negative); the balance never
    /// goes below zero. Every change of the balance is a transaction.
    #[oai(
        path = "/api/v1/customers/:id/balance-transactions",
        method = "post",
        operation_id = "customers.balance_transactions.create",
        tag = "ApiTags::Customers"
    )]
    async fn adjust_balance(
        &self,
        req: &Request,
        auth: Auth,
        /// Customer id (`cus_…`).
        id: Path<String>,
        body: JsonBody<BalanceAdjustmentIn>,
    ) -> Result<CreatedBalanceTransaction, ApiError> {
        let ctx = auth.require(Permission::WriteBilling)?;
        let id = customer_id(&id.0)?;
        let b = body.0;
        if !(-MAX_ITEM_AMOUNT..=MAX_ITEM_AMOUNT).contains(&b.amount) {
            return Err(ApiError::validation(
                "amount",
                format!("must be -{MAX_ITEM_AMOUNT} to {MAX_ITEM_AMOUNT}"),
            ));
        }
        let description = b
            .description
            .as_deref()
            .map(|d| invoice_text(d, false))
            .transpose()
            .map_err(ApiError::invalid("description"))?
            .filter(|d| !d.is_empty());
        note(req, |n| n.object_id = Some(id.to_string()));
        let mut work = Work::begin(req).await?;
        let row =
            balance::adjust(&mut work, ctx.scope(), id, b.amount, description.as_deref()).await?;
        Ok(CreatedBalanceTransaction::Created(Json(row.into())))
    }

    /// List a customer's balance transactions
    ///
    /// Every change of the balance, newest first, with the balance after it.
    #[oai(
        path = "/api/v1/customers/:id/balance-transactions",
        method = "get",
        operation_id = "customers.balance_transactions.list",
        tag = "ApiTags::Customers"
    )]
    async fn balance_transactions(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        /// Customer id (`cus_…`).
        id: Path<String>,
        /// 1 to 100; default 10.
        limit: Query<Option<i64>>,
        /// A transaction id: return older ones (the next page).
        starting_after: Query<Option<String>>,
        /// A transaction id: return newer ones (the previous page).
        ending_before: Query<Option<String>>,
    ) -> Result<Json<BalanceTransactionList>, ApiError> {
        let ctx = auth.require(Permission::ReadBilling)?;
        let id = customer_id(&id.0)?;
        let page = page_request(limit.0, starting_after.0, ending_before.0, |s| {
            BalanceTransactionId::parse(s).map(|id| id.as_uuid())
        })?;
        let page = balance::list_transactions(&state.pool, ctx.scope(), id, page).await?;
        Ok(Json(BalanceTransactionList {
            data: page.items.into_iter().map(Into::into).collect(),
            has_more: page.has_more,
        }))
    }
}

#[OpenApi]
impl PaymentMethodsApi {
    /// Attach a payment method
    ///
    /// The customer's first payment method becomes its default.
    #[oai(
        path = "/api/v1/customers/:id/payment-methods",
        method = "post",
        operation_id = "payment_methods.attach",
        tag = "ApiTags::Customers"
    )]
    async fn attach(
        &self,
        state: poem::web::Data<&AppState>,
        req: &Request,
        auth: Auth,
        /// Customer id (`cus_…`).
        id: Path<String>,
        body: JsonBody<PaymentMethodIn>,
    ) -> Result<AttachedPaymentMethod, ApiError> {
        use chrono::Datelike;
        let ctx = auth.require(Permission::WriteBilling)?;
        let customer = customer_id(&id.0)?;
        let b = body.0;
        let gateway = Gateway::for_mode(&state.stripe, ctx.livemode());
        // Read before the work begins: it may ask Stripe.
        let today = state.clock.now().date_naive();
        let card =
            service::card_for_token(&state.pool, &state.stripe, &gateway, ctx, &b.token, today)
                .await?;
        let mut work = Work::begin(req).await?;
        let today = work.now().date_naive();
        let expiry = CardExpiry::parse(
            b.exp_month.unwrap_or(12),
            b.exp_year
                .unwrap_or(u32::try_from(today.year() + 3).unwrap_or(0)),
            today,
        )
        .map_err(|(field, e)| ApiError::validation(field, e.0))?;
        let row = service::attach_payment_method(
            &mut work,
            ctx,
            &state.settings.stripe,
            customer,
            card,
            expiry,
        )
        .await?;
        let out = PaymentMethodOut::from(row);
        note(req, |n| n.object_id = Some(out.id.clone()));
        Ok(AttachedPaymentMethod::Created(Json(out)))
    }

    /// List a customer's payment methods
    ///
    /// Newest first.
    #[oai(
        path = "/api/v1/customers/:id/payment-methods",
        method = "get",
        operation_id = "payment_methods.list",
        tag = "ApiTags::Customers"
    )]
    async fn list(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        /// Customer id (`cus_…`).
        id: Path<String>,
        /// 1 to 100; default 10.
        limit: Query<Option<i64>>,
        /// A payment method id: return older ones (the next page).
        starting_after: Query<Option<String>>,
        /// A payment method id: return newer ones (the previous page).
        ending_before: Query<Option<String>>,
    ) -> Result<Json<PaymentMethodList>, ApiError> {
        let ctx = auth.require(Permission::ReadBilling)?;
        let customer = customer_id(&id.0)?;
        let page = page_request(limit.0, starting_after.0, ending_before.0, |s| {
            PaymentMethodId::parse(s).map(|id| id.as_uuid())
        })?;
        let page = service::list_payment_methods(&state.pool, ctx, customer, page).await?;
        Ok(Json(PaymentMethodList {
            data: page.items.into_iter().map(Into::into).collect(),
            has_more: page.has_more,
        }))
    }

    /// Make a payment method the default
    ///
    /// The default is what renewals charge.
    #[oai(
        path = "/api/v1/customers/:id/payment-methods/:payment_method_id/default",
        method = "post",
        operation_id = "payment_methods.set_default",
        tag = "ApiTags::Customers"
    )]
    async fn set_default(
        &self,
        req: &Request,
        auth: Auth,
        /// Customer id (`cus_…`).
        id: Path<String>,
        /// Payment method id (`pm_…`).
        payment_method_id: Path<String>,
    ) -> Result<Json<PaymentMethodOut>, ApiError> {
        let ctx = auth.require(Permission::WriteBilling)?;
        let customer = customer_id(&id.0)?;
        let pm = parse_payment_method_id(&payment_method_id.0)?;
        note(req, |n| n.object_id = Some(pm.to_string()));
        let mut work = Work::begin(req).await?;
        let row = service::set_default_payment_method(&mut work, ctx, customer, pm).await?;
        Ok(Json(row.into()))
    }

    /// Detach a payment method
    #[oai(
        path = "/api/v1/customers/:id/payment-methods/:payment_method_id",
        method = "delete",
        operation_id = "payment_methods.detach",
        tag = "ApiTags::Customers"
    )]
    async fn detach(
        &self,
        state: poem::web::Data<&AppState>,
        req: &Request,
        auth: Auth,
        /// Customer id (`cus_…`).
        id: Path<String>,
        /// Payment method id (`pm_…`).
        payment_method_id: Path<String>,
    ) -> Result<Json<PaymentMethodOut>, ApiError> {
        let ctx = auth.require(Permission::WriteBilling)?;
        let customer = customer_id(&id.0)?;
        let pm = parse_payment_method_id(&payment_method_id.0)?;
        note(req, |n| n.object_id = Some(pm.to_string()));
        let mut work = Work::begin(req).await?;
        let row =
            service::detach_payment_method(&mut work, ctx, &state.settings.stripe, customer, pm)
                .await?;
        Ok(Json(row.into()))
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use poem_openapi::types::ToJSON;
    use serde_json::json;
    use shared::ids::TenantId;

    use super::*;

    fn row(address: Option<serde_json::Value>, tax_ids: serde_json::Value) -> CustomerRow {
        CustomerRow {
            id: CustomerId::new(),
            tenant_id: TenantId::new(),
            livemode: false,
            email: Some("jo@example.com".into()),
            name: "Jo".into(),
            external_id: None,
            currency: Some("eur".into()),
            timezone: "Europe/Paris".into(),
            address,
            tax_ids,
            tax_exempt: true,
            invoice_prefix: Some("JO".into()),
            metadata: json!({"k": "v"}),
            balance: 250,
            test_clock_id: None,
            tax_rate_ids: vec![],
            stripe_customer_id: None,
            sync_status: shared::service::customers::SyncStatus::NotSynced,
            created_at: Utc.with_ymd_and_hms(2026, 1, 31, 1, 2, 3).unwrap(),
            updated_at: Utc.with_ymd_and_hms(2026, 2, 1, 1, 2, 3).unwrap(),
        }
    }

    #[test]
    fn customers_render_in_events_as_the_api_shows_them() {
        let full = Address {
            line1: Some("1 rue de la Paix".into()),
            city: Some("Paris".into()),
            country: Some("FR".into()),
            ..Address::default()
        };
        for (address, tax_ids) in [
            (None, json!([])),
            (
                Some(full.to_json()),
                json!([{"type": "eu_vat", "value": "FR1"}]),
            ),
        ] {
            let r = row(address, tax_ids);
            assert_eq!(CustomerOut::from(r.clone()).to_json().unwrap(), r.to_json());
        }
    }
}
