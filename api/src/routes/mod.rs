//! The REST API: one `#[OpenApi]` struct per resource, combined here.

pub mod api_keys;
pub mod audit_log;
pub mod billing_runs;
pub mod bundles;
pub mod coupons;
pub mod credit_notes;
pub mod customers;
pub mod dto;
pub mod events;
pub mod invoice_items;
pub mod invoices;
pub mod plans;
pub mod products;
pub mod schema;
pub mod settings;
pub mod stripe;
pub mod stripe_webhooks;
pub mod subscriptions;
pub mod tax_rates;
pub mod tenants;
pub mod test_clocks;
pub mod usage;
pub mod users;
pub mod webhook_endpoints;

use poem_openapi::{OpenApiService, Tags};

/// Tags grouping the operations in the OpenAPI document.
#[derive(Tags)]
pub enum ApiTags {
    /// Registration, login, tokens and the caller's own account.
    Auth,
    /// The tenant's API keys.
    ApiKeys,
    /// The tenant's users and their roles.
    Users,
    /// The append-only record of every mutating request.
    AuditLog,
    /// Webhook endpoints, their deliveries, and the seed's single-webhook configuration.
    Webhooks,
    /// Every state change, as delivered to webhooks.
    Events,
    /// Plans: a product with one recurring price (the seed's plan resource).
    Plans,
    /// The catalog: products, their prices, bundles and coupons.
    Catalog,
    /// Connecting the tenant's Stripe account, and Stripe's webhooks.
    Stripe,
    /// The tenant's customers: whom it bills.
    Customers,
    /// Subscriptions, their invoices and the payments of those.
    Billing,
}

pub type Apis = (
    tenants::TenantsApi,
    api_keys::ApiKeysApi,
    users::UsersApi,
    audit_log::AuditLogApi,
    webhook_endpoints::WebhookEndpointsApi,
    events::EventsApi,
    plans::PlansApi,
    products::ProductsApi,
    bundles::BundlesApi,
    coupons::CouponsApi,
    customers::CustomersApi,
    customers::PaymentMethodsApi,
    // Billing: a tuple of its own (tuples implement `OpenApi` up to 16 members).
    (
        subscriptions::SubscriptionsApi,
        invoices::InvoicesApi,
        invoice_items::InvoiceItemsApi,
        invoices::PaymentsApi,
        credit_notes::CreditNotesApi,
        credit_notes::RefundsApi,
        tax_rates::TaxRatesApi,
        test_clocks::TestClocksApi,
        settings::SettingsApi,
        billing_runs::BillingRunsApi,
        usage::BillableMetricsApi,
        usage::UsageEventsApi,
    ),
    stripe::StripeApi,
    stripe_webhooks::StripeWebhooksApi,
);

/// The OpenAPI service (also the source of the checked-in document).
pub fn service() -> OpenApiService<Apis, ()> {
    OpenApiService::new(
        (
            tenants::TenantsApi,
            api_keys::ApiKeysApi,
            users::UsersApi,
            audit_log::AuditLogApi,
            webhook_endpoints::WebhookEndpointsApi,
            events::EventsApi,
            plans::PlansApi,
            products::ProductsApi,
            bundles::BundlesApi,
            coupons::CouponsApi,
            customers::CustomersApi,
            customers::PaymentMethodsApi,
            (
                subscriptions::SubscriptionsApi,
                invoices::InvoicesApi,
                invoice_items::InvoiceItemsApi,
                invoices::PaymentsApi,
                credit_notes::CreditNotesApi,
                credit_notes::RefundsApi,
                tax_rates::TaxRatesApi,
                test_clocks::TestClocksApi,
                settings::SettingsApi,
                billing_runs::BillingRunsApi,
                usage::BillableMetricsApi,
                usage::UsageEventsApi,
            ),
            stripe::StripeApi,
            stripe_webhooks::StripeWebhooksApi,
        ),
        "Billing Platform API",
        env!("CARGO_PKG_VERSION"),
    )
    .description(include_str!("../../API.md"))
}

/// The OpenAPI document, with what the derive cannot say (see [`schema`]), as pretty JSON with
/// a trailing newline: served at `/openapi.json` and checked in.
pub fn spec_json() -> String {
    let raw = service().spec();
    let mut spec: serde_json::Value = match serde_json::from_str(&raw) {
        Ok(v) => v,
        // The derive's own output always parses; keep it rather than serve nothing.
        Err(_) => return raw,
    };
    schema::make_true(&mut spec);
    let mut s = serde_json::to_string_pretty(&spec).unwrap_or(raw);
    s.push('\n');
    s
}

/// The browsable documentation (Swagger UI) of [`spec_json`].
pub fn docs_html() -> String {
    let svc = service();
    svc.swagger_ui_html()
        .replace(&svc.spec(), spec_json().trim_end())
}
