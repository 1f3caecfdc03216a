//! What the OpenAPI document says beyond what the derive macros can: the constraints the
//! request parsers enforce, so that a client generated from the document sends what the API
//! accepts.
//!
//! - Request bodies accept no property they do not list (`additionalProperties: false`), as
//!   their parsers refuse unknown fields.
//! - [`PROPERTIES`] and [`QUERY`] hold the constraints of the domain parsers (lengths, patterns,
//!   ranges, enumerations) next to each other, one line per field, to be read against
//!   `shared::domain`. Rules that span fields (an interval's count depends on its unit, price
//!   tiers must ascend) or need state (a URL's address, an object that must exist) are stated
//!   in the field's description instead.

use serde_json::{Map, Value, json};
use shared::service::{credit_notes::CreditReason, refunds::RefundReason};

/// Printable text: no control characters.
const TEXT: &str = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$";
/// Printable text with at least one character that is not a space.
const NON_BLANK: &str = "^[^\\u0000-\\u001F\\u007F-\\u009F]*[^\\s\\u0000-\\u001F\\u007F-\\u009F][^\\u0000-\\u001F\\u007F-\\u009F]*$";
/// Text that may also hold tabs and line breaks.
const MULTILINE: &str = "^[^\\u0000-\\u0008\\u000B\\u000C\\u000E-\\u001F\\u007F-\\u009F]*$";
/// An email address.
const EMAIL: &str = "^[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]+(\\.[A-Za-z0-9-]+)+$";
/// A domain name such as `acme.com`.
/// A domain name such as `acme.com`, or nothing.
const DOMAIN: &str = "^$|^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$";
/// An absolute http(s) URL with a host (its address is checked against the network policy when
/// set and at every send, which a schema cannot say).
const URL: &str = "^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[^\\s]*)?$";
/// A password: 10 to 128 characters, not all spaces.
const PASSWORD: &str = "[^\\s]";

/// A product's code.
const CODE: &str = "^[a-z0-9_-]{1,64}$";
/// A billable metric's code.
const METRIC_CODE: &str = "^[a-z0-9_.-]{1,100}$";
/// An event property a billable metric reads.
const PROPERTY: &str = "^[A-Za-z0-9_.-]{1,100}$";

fn text(max: usize) -> Value {
    json!({"maxLength": max, "pattern": TEXT})
}

fn non_blank(max: usize) -> Value {
    json!({"minLength": 1, "maxLength": max, "pattern": NON_BLANK})
}

fn multiline(max: usize) -> Value {
    json!({"maxLength": max, "pattern": MULTILINE})
}

/// An id with its prefix, as the API writes them.
fn id(prefix: &str) -> Value {
    json!({"pattern": format!("^{prefix}_[0-7][0-9a-hjkmnp-tv-z]{{25}}$")})
}

/// Key-value metadata (keys: 1 to 40 characters without brackets, as the description says;
/// OpenAPI 3.0 has no way to constrain keys).
fn metadata() -> Value {
    json!({
        "maxProperties": 50,
        "additionalProperties": {"type": "string", "maxLength": 500, "pattern": TEXT},
    })
}

fn features() -> Value {
    json!({"maxItems": 50, "items": non_blank(200)})
}

/// The ISO 4217 currencies the platform knows.
fn currency() -> Value {
    let codes: Vec<&str> = shared::domain::money::Currency::all()
        .map(shared::domain::money::Currency::as_str)
        .collect();
    json!({ "enum": codes })
}

/// A field that cannot change after creation: listed, so that its problem is explained, but
/// never to be sent.
fn immutable() -> Value {
    json!({"readOnly": true})
}

fn interval_unit() -> Value {
    json!({"enum": ["day", "week", "month", "quarter", "year"]})
}

/// The IANA timezones the platform knows.
fn timezone() -> Value {
    let names: Vec<&str> = shared::domain::customer::Timezone::all().collect();
    json!({ "enum": names })
}

/// A customer's email: an address, or empty for none.
const CLEARABLE_EMAIL: &str = "^$|^[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]+(\\.[A-Za-z0-9-]+)+$";
/// An invoice number prefix, or empty for none.
const CLEARABLE_INVOICE_PREFIX: &str = "^$|^[A-Z0-9]{3,12}$";

/// The properties shared by a customer's creation and change.
fn customer_properties(schema: &'static str) -> Vec<(&'static str, &'static str, Value)> {
    vec![
        (schema, "name", text(250)),
        (
            schema,
            "email",
            json!({"maxLength": 254, "pattern": CLEARABLE_EMAIL}),
        ),
        (schema, "external_id", text(100)),
        (
            schema,
            "invoice_prefix",
            json!({"pattern": CLEARABLE_INVOICE_PREFIX}),
        ),
        (schema, "currency", currency()),
        (schema, "timezone", timezone()),
        (schema, "tax_ids", json!({"maxItems": 5})),
        (
            schema,
            "tax_rates",
            json!({"maxItems": 10, "items": id("txr")}),
        ),
        (schema, "metadata", metadata()),
    ]
}

/// Request-body properties: (schema, property, constraints merged into it).
fn properties() -> Vec<(&'static str, &'static str, Value)> {
    let mut all = customer_properties("CustomerIn");
    all.extend(customer_properties("CustomerPatch"));
    all.extend(vec![
        ("CustomerAddress", "line1", text(200)),
        ("CustomerAddress", "line2", text(200)),
        ("CustomerAddress", "city", text(200)),
        ("CustomerAddress", "state", text(200)),
        ("CustomerAddress", "postal_code", text(200)),
        (
            "CustomerAddress",
            "country",
            json!({"pattern": "^([A-Za-z]{2})?$"}),
        ),
        (
            "CustomerTaxId",
            "type",
            json!({"pattern": "^[a-z_]{2,20}$"}),
        ),
        ("CustomerTaxId", "value", non_blank(50)),
        ("CouponIn", "name", text(250)),
        (
            "CouponIn",
            "percent_off_bps",
            json!({"minimum": 1, "maximum": 10000}),
        ),
        ("CouponIn", "amount_off", json!({"minimum": 1})),
        ("CouponIn", "currency", currency()),
        (
            "CouponIn",
            "duration",
            json!({"enum": ["once", "repeating", "forever"]}),
        ),
        (
            "CouponIn",
            "duration_in_months",
            json!({"minimum": 1, "maximum": 120}),
        ),
        (
            "CouponIn",
            "max_redemptions",
            json!({"minimum": 1, "maximum": 2_147_483_647}),
        ),
        ("CouponIn", "metadata", metadata()),
        ("CouponPatch", "name", text(250)),
        ("CouponPatch", "metadata", metadata()),
        (
            "PaymentMethodIn",
            "token",
            json!({"pattern": shared::payments::CARD_TOKEN_PATTERN, "maxLength": 255}),
        ),
        (
            "PaymentMethodIn",
            "exp_month",
            json!({"minimum": 1, "maximum": 12}),
        ),
    ]);
    all.extend(vec![
        ("RegenerateIn", "confirm", json!({"enum": [true]})),
        ("RevokeIn", "confirm", json!({"enum": [true]})),
        ("RegisterIn", "company_name", non_blank(200)),
        (
            "RegisterIn",
            "email",
            json!({"maxLength": 254, "pattern": EMAIL}),
        ),
        (
            "RegisterIn",
            "password",
            json!({"minLength": 10, "maxLength": 128, "pattern": PASSWORD}),
        ),
        ("RegisterIn", "first_name", text(100)),
        ("RegisterIn", "last_name", text(100)),
        (
            "RegisterIn",
            "domain",
            json!({"maxLength": 253, "pattern": DOMAIN}),
        ),
        (
            "LoginIn",
            "email",
            json!({"maxLength": 254, "pattern": EMAIL}),
        ),
        ("LoginIn", "password", json!({"minLength": 1})),
        (
            "ChangePasswordIn",
            "new_password",
            json!({"minLength": 10, "maxLength": 128, "pattern": PASSWORD}),
        ),
        (
            "UserIn",
            "email",
            json!({"maxLength": 254, "pattern": EMAIL}),
        ),
        (
            "UserIn",
            "password",
            json!({"minLength": 10, "maxLength": 128, "pattern": PASSWORD}),
        ),
        (
            "UserIn",
            "role",
            json!({"enum": ["owner", "admin", "developer", "billing"]}),
        ),
        ("UserIn", "first_name", text(100)),
        ("UserIn", "last_name", text(100)),
        (
            "UserPatch",
            "role",
            json!({"enum": ["owner", "admin", "developer", "billing"]}),
        ),
        ("UserPatch", "first_name", text(100)),
        ("UserPatch", "last_name", text(100)),
        (
            "WebhookEndpointIn",
            "url",
            json!({"maxLength": 2048, "pattern": URL}),
        ),
        ("WebhookEndpointIn", "description", text(500)),
        (
            "WebhookEndpointIn",
            "event_types",
            json!({"minItems": 1, "maxItems": 100, "items": {"minLength": 1, "maxLength": 100, "pattern": "^(\\*|[a-z0-9_]+(\\.[a-z0-9_]+)*(\\.\\*)?)$"}}),
        ),
        (
            "WebhookEndpointPatch",
            "url",
            json!({"maxLength": 2048, "pattern": URL}),
        ),
        ("WebhookEndpointPatch", "description", text(500)),
        (
            "WebhookEndpointPatch",
            "event_types",
            json!({"minItems": 1, "maxItems": 100, "items": {"minLength": 1, "maxLength": 100, "pattern": "^(\\*|[a-z0-9_]+(\\.[a-z0-9_]+)*(\\.\\*)?)$"}}),
        ),
        (
            "WebhookConfigIn",
            "webhook_url",
            json!({"maxLength": 2048, "pattern": URL}),
        ),
        ("PlanIn", "name", non_blank(250)),
        ("PlanIn", "description", multiline(5000)),
        ("PlanIn", "price_cents", json!({"minimum": 0})),
        ("PlanIn", "currency", currency()),
        ("PlanIn", "billing_interval", interval_unit()),
        (
            "PlanIn",
            "interval_count",
            json!({"minimum": 1, "maximum": 365}),
        ),
        ("PlanIn", "trial_days", json!({"maximum": 730})),
        ("PlanIn", "features", features()),
        ("PlanIn", "metadata", metadata()),
        ("PlanPatch", "name", non_blank(250)),
        ("PlanPatch", "description", multiline(5000)),
        ("PlanPatch", "trial_days", json!({"maximum": 730})),
        ("PlanPatch", "features", features()),
        ("PlanPatch", "metadata", metadata()),
        ("UsageLimitIn", "metric", json!({"pattern": METRIC_CODE})),
        ("PlanPatch", "price_cents", immutable()),
        ("PlanPatch", "currency", immutable()),
        ("PlanPatch", "billing_interval", immutable()),
        ("PlanPatch", "interval_count", immutable()),
        ("PlanDuplicateIn", "name", non_blank(250)),
        ("PlanDuplicateIn", "price_cents", json!({"minimum": 0})),
        ("ProductIn", "name", non_blank(250)),
        ("ProductIn", "code", json!({"pattern": CODE})),
        ("ProductIn", "description", multiline(5000)),
        ("ProductIn", "features", features()),
        ("ProductIn", "metadata", metadata()),
        ("ProductPatch", "name", non_blank(250)),
        ("ProductPatch", "description", multiline(5000)),
        ("ProductPatch", "features", features()),
        ("ProductPatch", "metadata", metadata()),
        ("PriceIn", "nickname", text(250)),
        ("PriceIn", "currency", currency()),
        ("PriceIn", "metadata", metadata()),
        ("PricePatch", "nickname", non_blank(250)),
        ("PricePatch", "metadata", metadata()),
        ("PricePatch", "currency", immutable()),
        ("PricePatch", "recurring", immutable()),
        ("PricePatch", "pricing", immutable()),
        ("PricePatch", "usage", immutable()),
        ("RecurringIn", "interval", interval_unit()),
        (
            "RecurringIn",
            "interval_count",
            json!({"minimum": 1, "maximum": 365}),
        ),
        ("FlatTerms", "amount", json!({"minimum": 0})),
        ("PerUnitTerms", "unit_amount", json!({"minimum": 0})),
        ("PackageTerms", "amount", json!({"minimum": 0})),
        ("PackageTerms", "package_size", json!({"minimum": 1})),
        ("PriceTierIn", "up_to", json!({"minimum": 1})),
        ("PriceTierIn", "unit_amount", json!({"minimum": 0})),
        ("PriceTierIn", "flat_amount", json!({"minimum": 0})),
        (
            "GraduatedTerms",
            "tiers",
            json!({"minItems": 1, "maxItems": 50}),
        ),
        (
            "VolumeTerms",
            "tiers",
            json!({"minItems": 1, "maxItems": 50}),
        ),
        ("UsageIn", "metric", json!({"pattern": METRIC_CODE})),
        ("MetricIn", "code", json!({"pattern": METRIC_CODE})),
        ("MetricIn", "name", non_blank(250)),
        ("MetricIn", "description", multiline(5000)),
        ("MetricIn", "field_name", json!({"pattern": PROPERTY})),
        (
            "MetricIn",
            "filters",
            json!({"maxProperties": 20, "additionalProperties": {
                "type": "array", "minItems": 1, "maxItems": 100,
                "items": {"type": "string", "maxLength": 200}}}),
        ),
        ("MetricPatch", "name", non_blank(250)),
        ("MetricPatch", "description", multiline(5000)),
        ("MetricPatch", "code", immutable()),
        ("MetricPatch", "aggregation", immutable()),
        ("MetricPatch", "field_name", immutable()),
        ("MetricPatch", "filters", immutable()),
        (
            "UsageEventIn",
            "transaction_id",
            json!({"minLength": 1, "maxLength": 255, "pattern": TEXT}),
        ),
        ("UsageEventIn", "code", json!({"pattern": METRIC_CODE})),
        ("UsageEventIn", "subscription", id("sub")),
        ("UsageEventIn", "customer", id("cus")),
        (
            "UsageEventIn",
            "properties",
            json!({"type": "object", "maxProperties": 50}),
        ),
        ("BundleIn", "name", non_blank(250)),
        ("BundleIn", "description", multiline(5000)),
        ("BundleIn", "discount_bps", json!({"maximum": 10000})),
        (
            "BundleIn",
            "items",
            json!({"minItems": 2, "maxItems": 20, "uniqueItems": true}),
        ),
        ("BundleIn", "metadata", metadata()),
        ("BundleItemIn", "price_id", id("price")),
        ("BundleItemIn", "quantity", json!({"minimum": 1})),
        ("BundlePatch", "name", non_blank(250)),
        ("BundlePatch", "description", multiline(5000)),
        ("BundlePatch", "discount_bps", json!({"maximum": 10000})),
        ("BundlePatch", "metadata", metadata()),
        ("SubscriptionIn", "customer", id("cus")),
        (
            "SubscriptionIn",
            "items",
            json!({"minItems": 1, "maxItems": 20}),
        ),
        (
            "SubscriptionIn",
            "trial_period_days",
            json!({"maximum": 730}),
        ),
        ("SubscriptionIn", "collection_method", collection_method()),
        ("SubscriptionIn", "days_until_due", json!({"maximum": 365})),
        ("SubscriptionIn", "proration_behavior", proration_behavior()),
        ("SubscriptionIn", "metadata", metadata()),
        ("SubscriptionIn", "coupon", id("coupon")),
        ("SubscriptionIn", "bundle", id("bundle")),
        ("SubscriptionItemIn", "price", id("price")),
        ("SubscriptionItemIn", "plan", id("plan")),
        (
            "SubscriptionItemIn",
            "quantity",
            json!({"minimum": 1, "maximum": 1_000_000}),
        ),
        ("SubscriptionPatch", "proration_behavior", proration_behavior()),
        ("SubscriptionPatch", "metadata", metadata()),
        ("SubscriptionPatch", "items", json!({"minItems": 1, "maxItems": 20})),
        (
            "DunningIn",
            "retry_waits_days",
            json!({"maxItems": 10, "items": {"minimum": 1, "maximum": 60}}),
        ),
        (
            "SubscriptionPreviewIn",
            "items",
            json!({"minItems": 1, "maxItems": 20}),
        ),
        (
            "SubscriptionPreviewIn",
            "proration_behavior",
            proration_behavior(),
        ),
        ("SubscriptionItemChangeIn", "id", id("si")),
        ("SubscriptionItemChangeIn", "price", id("price")),
        ("SubscriptionItemChangeIn", "plan", id("plan")),
        (
            "SubscriptionItemChangeIn",
            "quantity",
            json!({"minimum": 1, "maximum": 1_000_000}),
        ),
        ("TestClockIn", "name", text(250)),
        ("InvoiceIn", "customer", id("cus")),
        ("InvoiceIn", "currency", currency()),
        ("InvoiceIn", "collection_method", collection_method()),
        ("InvoiceIn", "days_until_due", json!({"maximum": 365})),
        ("InvoiceIn", "description", text(500)),
        ("InvoiceIn", "coupon", id("coupon")),
        (
            "InvoiceIn",
            "pending_invoice_items_behavior",
            json!({"enum": ["include", "exclude"]}),
        ),
        ("InvoiceIn", "metadata", metadata()),
        ("TaxRateIn", "display_name", non_blank(100)),
        (
            "TaxRateIn",
            "percentage",
            json!({"minimum": 0, "maximum": 100}),
        ),
        ("TaxRateIn", "description", text(500)),
        ("TaxRateIn", "jurisdiction", text(500)),
        ("TaxRateIn", "metadata", metadata()),
        ("TaxRatePatch", "display_name", non_blank(100)),
        ("TaxRatePatch", "description", text(500)),
        ("TaxRatePatch", "jurisdiction", text(500)),
        ("TaxRatePatch", "metadata", metadata()),
        ("CreditNoteIn", "invoice", id("in")),
        ("CreditNoteIn", "lines", json!({"minItems": 1, "maxItems": 100})),
        ("CreditNoteIn", "amount", positive_amount()),
        (
            "CreditNoteIn",
            "reason",
            enum_of(CreditReason::ALL, CreditReason::as_str),
        ),
        ("CreditNoteIn", "memo", text(500)),
        ("CreditNoteIn", "refund_amount", share_amount()),
        ("CreditNoteIn", "credit_amount", share_amount()),
        ("CreditNoteIn", "out_of_band_amount", share_amount()),
        ("CreditNoteIn", "metadata", metadata()),
        ("CreditNoteLineIn", "invoice_line", id("il")),
        ("CreditNoteLineIn", "description", non_blank(500)),
        ("CreditNoteLineIn", "amount", positive_amount()),
        ("RefundIn", "payment", id("py")),
        ("RefundIn", "amount", positive_amount()),
        (
            "RefundIn",
            "reason",
            enum_of(RefundReason::ALL, RefundReason::as_str),
        ),
        (
            "BalanceAdjustmentIn",
            "amount",
            json!({"minimum": -MAX_AMOUNT, "maximum": MAX_AMOUNT, "not": {"enum": [0]}}),
        ),
        ("BalanceAdjustmentIn", "description", text(500)),
        ("InvoiceItemIn", "customer", id("cus")),
        ("InvoiceItemIn", "amount", signed_amount()),
        ("InvoiceItemIn", "unit_amount", signed_amount()),
        ("InvoiceItemIn", "price", id("price")),
        ("InvoiceItemIn", "invoice", id("in")),
        (
            "InvoiceItemIn",
            "quantity",
            json!({"minimum": 1, "maximum": 1_000_000}),
        ),
        ("InvoiceItemIn", "description", non_blank(500)),
        ("InvoiceItemIn", "currency", currency()),
        ("InvoiceItemIn", "metadata", metadata()),
        ("CustomerIn", "test_clock", id("clock")),
    ]);
    all
}

/// An amount in minor units, as credit notes, refunds and invoice items bound them.
fn positive_amount() -> Value {
    json!({"minimum": 1, "maximum": MAX_AMOUNT})
}

fn share_amount() -> Value {
    json!({"minimum": 0, "maximum": MAX_AMOUNT})
}

fn signed_amount() -> Value {
    json!({"minimum": -MAX_AMOUNT, "maximum": MAX_AMOUNT})
}

const MAX_AMOUNT: i64 = super::invoice_items::MAX_ITEM_AMOUNT;

/// The values of a status enum (`text_enum!`), as an enumeration.
fn enum_of<T: Copy>(all: &[T], text: fn(T) -> &'static str) -> Value {
    let values: Vec<&str> = all.iter().map(|v| text(*v)).collect();
    json!({ "enum": values })
}

fn collection_method() -> Value {
    use shared::domain::subscription::CollectionMethod as C;
    enum_of(C::ALL, C::as_str)
}

fn proration_behavior() -> Value {
    use shared::domain::subscription::ProrationBehavior as P;
    enum_of(P::ALL, P::as_str)
}

fn subscription_status() -> Value {
    use shared::domain::subscription::SubscriptionStatus as S;
    enum_of(S::ALL, S::as_str)
}

fn invoice_status() -> Value {
    use shared::domain::invoice::InvoiceStatus as S;
    enum_of(S::ALL, S::as_str)
}

/// Whole request bodies: (schema, keywords merged into it).
fn objects() -> Vec<(&'static str, Value)> {
    // The keys of a mode: `mode`, or its other name `key_type`; one of them, not both.
    let one_name = json!({"oneOf": [
        {"required": ["mode"], "not": {"required": ["key_type"]}},
        {"required": ["key_type"], "not": {"required": ["mode"]}},
    ]});
    vec![("RegenerateIn", one_name.clone()), ("RevokeIn", one_name)]
}

/// Query parameters: (path, or `*` for every operation, parameter, constraints; `required`
/// applies to the parameter itself).
fn query() -> Vec<(&'static str, &'static str, Value)> {
    vec![
        ("*", "limit", json!({"minimum": 1, "maximum": 100})),
        ("/api/v1/users", "starting_after", id("usr")),
        ("/api/v1/users", "ending_before", id("usr")),
        ("/api/v1/webhook-endpoints", "starting_after", id("we")),
        ("/api/v1/webhook-endpoints", "ending_before", id("we")),
        (
            "/api/v1/webhook-endpoints/{id}/deliveries",
            "starting_after",
            id("msg"),
        ),
        (
            "/api/v1/webhook-endpoints/{id}/deliveries",
            "ending_before",
            id("msg"),
        ),
        ("/api/v1/events", "starting_after", id("evt")),
        ("/api/v1/events", "ending_before", id("evt")),
        (
            "/api/v1/events",
            "type",
            json!({"maxLength": 100, "pattern": TEXT}),
        ),
        ("/api/v1/events/{id}/redeliver", "endpoint_id", id("we")),
        ("/api/v1/plans", "starting_after", id("plan")),
        ("/api/v1/plans", "ending_before", id("plan")),
        ("/api/v1/plans", "billing_interval", interval_unit()),
        ("/api/v1/plans", "search", text(100)),
        ("/api/v1/products", "starting_after", id("prod")),
        ("/api/v1/products", "ending_before", id("prod")),
        ("/api/v1/coupons", "starting_after", id("coupon")),
        ("/api/v1/coupons", "ending_before", id("coupon")),
        ("/api/v1/customers", "starting_after", id("cus")),
        ("/api/v1/customers", "ending_before", id("cus")),
        ("/api/v1/customers", "search", text(100)),
        (
            "/api/v1/customers/{id}/payment-methods",
            "starting_after",
            id("pm"),
        ),
        (
            "/api/v1/customers/{id}/payment-methods",
            "ending_before",
            id("pm"),
        ),
        ("/api/v1/subscriptions", "customer", id("cus")),
        ("/api/v1/subscriptions", "status", subscription_status()),
        ("/api/v1/subscriptions", "starting_after", id("sub")),
        ("/api/v1/subscriptions", "ending_before", id("sub")),
        ("/api/v1/invoices", "customer", id("cus")),
        ("/api/v1/invoices", "subscription", id("sub")),
        ("/api/v1/invoices", "status", invoice_status()),
        ("/api/v1/invoices", "starting_after", id("in")),
        ("/api/v1/invoices", "ending_before", id("in")),
        ("/api/v1/billable-metrics", "starting_after", id("bm")),
        ("/api/v1/billable-metrics", "ending_before", id("bm")),
        ("/api/v1/tax-rates", "starting_after", id("txr")),
        ("/api/v1/tax-rates", "ending_before", id("txr")),
        ("/api/v1/billing-runs", "starting_after", id("brun")),
        ("/api/v1/billing-runs", "ending_before", id("brun")),
        ("/api/v1/credit-notes", "invoice", id("in")),
        ("/api/v1/credit-notes", "customer", id("cus")),
        ("/api/v1/credit-notes", "starting_after", id("cn")),
        ("/api/v1/credit-notes", "ending_before", id("cn")),
        ("/api/v1/refunds", "payment", id("py")),
        ("/api/v1/refunds", "starting_after", id("re")),
        ("/api/v1/refunds", "ending_before", id("re")),
        (
            "/api/v1/customers/{id}/balance-transactions",
            "starting_after",
            id("cbtxn"),
        ),
        (
            "/api/v1/customers/{id}/balance-transactions",
            "ending_before",
            id("cbtxn"),
        ),
        ("/api/v1/invoice-items", "customer", id("cus")),
        ("/api/v1/invoice-items", "invoice", id("in")),
        ("/api/v1/invoice-items", "starting_after", id("ii")),
        ("/api/v1/invoice-items", "ending_before", id("ii")),
        ("/api/v1/test-clocks", "starting_after", id("clock")),
        ("/api/v1/test-clocks", "ending_before", id("clock")),
        ("/api/v1/payments", "invoice", id("in")),
        ("/api/v1/payments", "starting_after", id("py")),
        ("/api/v1/payments", "ending_before", id("py")),
        ("/api/v1/bundles", "starting_after", id("bundle")),
        ("/api/v1/bundles", "ending_before", id("bundle")),
        (
            "/api/v1/prices/{id}/amount",
            "quantity",
            json!({"minimum": 0}),
        ),
        ("/api/v1/audit-log", "before", json!({"minimum": 1})),
        (
            "/api/v1/auth/tenants/stripe/disconnect",
            "confirm",
            json!({"enum": [true], "required": true}),
        ),
    ]
}

/// Merges `patch` into `target`, object by object (so `items` constraints join the item type).
fn merge(target: &mut Value, patch: &Value) {
    if let (Some(t), Some(p)) = (target.as_object_mut(), patch.as_object()) {
        for (k, v) in p {
            match t.get_mut(k) {
                Some(existing) if existing.is_object() && v.is_object() => merge(existing, v),
                _ => {
                    t.insert(k.clone(), v.clone());
                }
            }
        }
    }
}

/// The range of an integer format, as the parsers check it.
fn integer_range(format: &str) -> Option<(Value, Value)> {
    Some(match format {
        "int32" => (json!(i32::MIN), json!(i32::MAX)),
        "int64" => (json!(i64::MIN), json!(i64::MAX)),
        "uint32" => (json!(0), json!(u32::MAX)),
        "uint64" => (json!(0), json!(u64::MAX)),
        _ => return None,
    })
}

/// Bounds every integer by its format's range (tighter bounds set later win).
fn bound_integers(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if m.get("type").and_then(Value::as_str) == Some("integer")
                && let Some((min, max)) = m
                    .get("format")
                    .and_then(Value::as_str)
                    .and_then(integer_range)
            {
                m.entry("minimum").or_insert(min);
                m.entry("maximum").or_insert(max);
            }
            m.values_mut().for_each(bound_integers);
        }
        Value::Array(a) => a.iter_mut().for_each(bound_integers),
        _ => {}
    }
}

fn component<'a>(spec: &'a mut Value, name: &str) -> Option<&'a mut Value> {
    spec.get_mut("components")?
        .get_mut("schemas")?
        .get_mut(name)
}

fn property_schema<'a>(schema: &'a mut Value, property: &str) -> Option<&'a mut Value> {
    schema.get_mut("properties")?.get_mut(property)
}

/// The names of the component schemas that request bodies use, with every schema they refer
/// to.
fn request_schemas(spec: &Value) -> Vec<String> {
    let mut todo: Vec<String> = Vec::new();
    if let Some(paths) = spec["paths"].as_object() {
        for op in paths
            .values()
            .filter_map(Value::as_object)
            .flat_map(Map::values)
        {
            collect_refs(&op["requestBody"], &mut todo);
        }
    }
    let mut seen: Vec<String> = Vec::new();
    while let Some(name) = todo.pop() {
        if seen.contains(&name) {
            continue;
        }
        collect_refs(&spec["components"]["schemas"][&name], &mut todo);
        seen.push(name);
    }
    seen
}

/// Writes a schema that is an `allOf` of objects (inline, or components) as one object.
fn flatten_all_of(spec: &mut Value, name: &str) {
    let Some(parts) = spec["components"]["schemas"][name]["allOf"]
        .as_array()
        .cloned()
    else {
        return;
    };
    let mut properties = Map::new();
    let mut required: Vec<Value> = Vec::new();
    for part in &parts {
        let part = match part.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let target = r.strip_prefix("#/components/schemas/").unwrap_or(r);
                spec["components"]["schemas"][target].clone()
            }
            None => part.clone(),
        };
        if part.get("type").and_then(Value::as_str) != Some("object") {
            return;
        }
        if let Some(p) = part.get("properties").and_then(Value::as_object) {
            properties.extend(p.clone());
        }
        if let Some(r) = part.get("required").and_then(Value::as_array) {
            required.extend(r.iter().cloned());
        }
    }
    if let Some(schema) = component(spec, name).and_then(Value::as_object_mut) {
        schema.remove("allOf");
        schema.insert("type".into(), json!("object"));
        schema.insert("properties".into(), Value::Object(properties));
        schema.insert("required".into(), Value::Array(required));
    }
}

/// The schemas joined to a tag in a tagged union: the `$ref`s of component schemas that are an
/// `allOf` of several parts (a property's own `allOf` holds just its type, to carry a
/// description).
fn union_members(spec: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(schemas) = spec["components"]["schemas"].as_object() {
        for schema in schemas.values() {
            if let Some(parts) = schema.get("allOf").and_then(Value::as_array)
                && parts.len() > 1
            {
                collect_refs(&Value::Array(parts.clone()), &mut out);
            }
        }
    }
    out
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(r) = m.get("$ref").and_then(Value::as_str)
                && let Some(name) = r.strip_prefix("#/components/schemas/")
            {
                out.push(name.to_owned());
            }
            m.values().for_each(|x| collect_refs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

/// Applies what the derive cannot say to a generated document.
pub fn make_true(spec: &mut Value) {
    for (name, property, constraints) in properties() {
        match component(spec, name).and_then(|s| property_schema(s, property)) {
            Some(prop) => merge(prop, &constraints),
            None => tracing::error!(name, property, "no such schema property"),
        }
    }
    for (name, keywords) in objects() {
        match component(spec, name) {
            Some(schema) => merge(schema, &keywords),
            None => tracing::error!(name, "no such schema"),
        }
    }
    let requests = request_schemas(spec);
    // A tagged union's member is its tag joined to its fields by `allOf`; written as one object
    // it can refuse other properties, as the parser does.
    for name in &requests {
        flatten_all_of(spec, name);
    }
    // The field types the members were made of keep taking the tag.
    let members = union_members(spec);
    for name in requests {
        if members.contains(&name) {
            continue;
        }
        if let Some(schema) = component(spec, &name)
            && schema.get("properties").is_some()
            && schema.get("additionalProperties").is_none()
        {
            schema["additionalProperties"] = Value::Bool(false);
        }
    }
    let query = query();
    if let Some(paths) = spec.get_mut("paths").and_then(Value::as_object_mut) {
        for (path, ops) in paths.iter_mut() {
            for op in ops.as_object_mut().into_iter().flat_map(|o| o.values_mut()) {
                let params = op.get_mut("parameters").and_then(Value::as_array_mut);
                for param in params.into_iter().flatten() {
                    if param.get("in").and_then(Value::as_str) != Some("query") {
                        continue;
                    }
                    for (at, name, constraints) in &query {
                        let named = param.get("name").and_then(Value::as_str) == Some(*name);
                        if (*at == "*" || at == path) && named {
                            let mut constraints = constraints.clone();
                            if let Some(required) = constraints
                                .as_object_mut()
                                .and_then(|c| c.remove("required"))
                            {
                                param["required"] = required;
                            }
                            if let Some(schema) = param.get_mut("schema") {
                                merge(schema, &constraints);
                            }
                        }
                    }
                }
            }
        }
    }
    // Tighter bounds from the tables above stay; every other integer gets its type's range.
    bound_integers(spec);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_constrained_property_exists_in_the_document() {
        let spec: Value = serde_json::from_str(&super::super::service().spec()).unwrap_or_default();
        for (name, property, _) in properties() {
            assert!(
                spec["components"]["schemas"][name]["properties"][property].is_object(),
                "{name}.{property} is not in the document"
            );
        }
        let mut found = 0;
        for (at, name, _) in query() {
            let ops = spec["paths"].as_object().into_iter().flatten();
            let hit = ops.filter(|(p, _)| at == "*" || *p == at).any(|(_, ops)| {
                ops.as_object().into_iter().flatten().any(|(_, op)| {
                    op["parameters"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|p| p["in"] == "query" && p["name"] == name)
                })
            });
            assert!(hit, "no query parameter {name} at {at}");
            found += 1;
        }
        assert!(found > 0);
    }

    #[test]
    fn request_bodies_refuse_unlisted_properties() {
        let mut spec: Value =
            serde_json::from_str(&super::super::service().spec()).unwrap_or_default();
        make_true(&mut spec);
        assert_eq!(
            spec["components"]["schemas"]["ProductIn"]["additionalProperties"],
            false
        );
        // Responses stay open to new fields.
        assert!(
            spec["components"]["schemas"]["ProductOut"]
                .get("additionalProperties")
                .is_none()
        );
    }
}
