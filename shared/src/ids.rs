//! Prefixed, time-sortable identifiers (`ten_…`, `usr_…`, `key_…`).
//!
//! An id is a UUIDv7 (48-bit millisecond timestamp first) rendered as the type prefix, an
//! underscore and 26 lowercase Crockford base32 characters, so ids sort by creation time both as
//! strings and as database UUIDs. Parsing rejects a wrong prefix.

use std::fmt;

use uuid::Uuid;

const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// Why an id string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("expected an id starting with `{0}_`")]
    WrongPrefix(&'static str),
    #[error("malformed id")]
    Malformed,
}

/// Encodes 128 bits as 26 base32 characters (the first carries the top 3 bits).
pub fn encode_uuid(uuid: Uuid) -> String {
    let mut value = uuid.as_u128();
    let mut out = [0u8; 26];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(value & 0x1f) as usize];
        value >>= 5;
    }
    out.iter().map(|&b| b as char).collect()
}

/// Decodes the 26-character body of an id.
pub fn decode_uuid(body: &str) -> Result<Uuid, IdError> {
    if body.len() != 26 {
        return Err(IdError::Malformed);
    }
    let mut value: u128 = 0;
    for (i, c) in body.bytes().enumerate() {
        let digit = ALPHABET
            .iter()
            .position(|&a| a == c)
            .ok_or(IdError::Malformed)? as u128;
        if i == 0 && digit > 7 {
            return Err(IdError::Malformed);
        }
        value = (value << 5) | digit;
    }
    Ok(Uuid::from_u128(value))
}

/// Declares a prefixed id type backed by a UUIDv7.
#[macro_export]
macro_rules! define_id {
    ($(#[$meta:meta])* $name:ident, $prefix:literal) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, sqlx::Type)]
        #[sqlx(transparent)]
        pub struct $name(uuid::Uuid);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// A new id for an object created now.
            pub fn new() -> Self {
                Self(uuid::Uuid::now_v7())
            }

            pub fn from_uuid(uuid: uuid::Uuid) -> Self {
                Self(uuid)
            }

            pub fn as_uuid(&self) -> uuid::Uuid {
                self.0
            }

            /// Parses `prefix_body`, rejecting any other prefix.
            pub fn parse(s: &str) -> Result<Self, $crate::ids::IdError> {
                let body = s
                    .strip_prefix($prefix)
                    .and_then(|rest| rest.strip_prefix('_'))
                    .ok_or($crate::ids::IdError::WrongPrefix($prefix))?;
                $crate::ids::decode_uuid(body).map(Self)
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}_{}", $prefix, $crate::ids::encode_uuid(self.0))
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                std::fmt::Display::fmt(self, f)
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::ids::IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }
    };
}

define_id!(
    /// A tenant (a company using the platform).
    TenantId,
    "ten"
);
define_id!(
    /// A user of a tenant (dashboard login).
    UserId,
    "usr"
);
define_id!(
    /// An API key.
    ApiKeyId,
    "key"
);

define_id!(
    /// An event (a state change, delivered to webhook endpoints).
    EventId,
    "evt"
);
define_id!(
    /// A webhook endpoint.
    WebhookEndpointId,
    "we"
);
define_id!(
    /// A webhook delivery: one event to one endpoint; its id is the `webhook-id` header.
    DeliveryId,
    "msg"
);
define_id!(
    /// A job in the outbox.
    JobId,
    "job"
);

define_id!(
    /// A plan (the seed's product-with-one-price).
    PlanId,
    "plan"
);
define_id!(
    /// A product of the tenant's catalog.
    ProductId,
    "prod"
);
define_id!(
    /// A price of a product (one of its plans or tiers).
    PriceId,
    "price"
);
define_id!(
    /// A bundle of prices sold together at a discount.
    BundleId,
    "bundle"
);
define_id!(
    /// A customer of a tenant (whom the tenant bills).
    CustomerId,
    "cus"
);
define_id!(
    /// A coupon: a discount customers redeem.
    CouponId,
    "coupon"
);
define_id!(
    /// A customer's payment method (a card).
    PaymentMethodId,
    "pm"
);
define_id!(
    /// A customer's subscription to recurring prices.
    SubscriptionId,
    "sub"
);
define_id!(
    /// A price and quantity a subscription bills each period.
    SubscriptionItemId,
    "si"
);
define_id!(
    /// An invoice.
    InvoiceId,
    "in"
);
define_id!(
    /// An invoice item: a line waiting for a customer's next invoice, or on a draft.
    InvoiceItemId,
    "ii"
);
define_id!(
    /// A line of an invoice.
    InvoiceLineId,
    "il"
);
define_id!(
    /// A payment attempt of an invoice.
    PaymentId,
    "py"
);
define_id!(
    /// A credit note: money an invoice no longer asks for, or gives back.
    CreditNoteId,
    "cn"
);
define_id!(
    /// A line of a credit note.
    CreditNoteLineId,
    "cnl"
);
define_id!(
    /// A refund of (part of) a payment.
    RefundId,
    "re"
);
define_id!(
    /// A change of a customer's credit balance.
    BalanceTransactionId,
    "cbtxn"
);
define_id!(
    /// A tax rate of a tenant.
    TaxRateId,
    "txr"
);
define_id!(
    /// A test clock: a frozen time for test-mode customers, moved forward by hand.
    TestClockId,
    "clock"
);
define_id!(
    /// A billable metric: what a metered price measures.
    BillableMetricId,
    "bm"
);
define_id!(
    /// A usage event reported for a subscription.
    UsageEventId,
    "uevt"
);
define_id!(
    /// A billing run: one tick of the fleet's schedule (or an operator's request).
    BillingRunId,
    "brun"
);

/// Formats an id for log lines without the type.
pub struct Short<'a>(pub &'a str);

impl fmt::Display for Short<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn id_round_trips_through_its_string_form() {
        let id = TenantId::new();
        let text = id.to_string();
        assert!(text.starts_with("ten_"));
        assert_eq!(text.len(), 4 + 26);
        assert_eq!(TenantId::parse(&text), Ok(id));
    }

    #[test]
    fn parsing_rejects_a_wrong_prefix() {
        let user = UserId::new().to_string();
        assert_eq!(TenantId::parse(&user), Err(IdError::WrongPrefix("ten")));
    }

    #[test]
    fn parsing_rejects_garbage_bodies() {
        assert_eq!(TenantId::parse("ten_"), Err(IdError::Malformed));
        assert_eq!(
            TenantId::parse("ten_zzzzzzzzzzzzzzzzzzzzzzzzzz"),
            Err(IdError::Malformed)
        );
        assert_eq!(
            TenantId::parse("ten_0000000000000000000000000u"),
            Err(IdError::Malformed)
        );
    }

    proptest! {
        #[test]
        fn encoding_preserves_order_and_value(a: u128, b: u128) {
            let (ea, eb) = (encode_uuid(Uuid::from_u128(a)), encode_uuid(Uuid::from_u128(b)));
            prop_assert_eq!(decode_uuid(&ea).map(|u| u.as_u128()), Ok(a));
            prop_assert_eq!(a.cmp(&b), ea.cmp(&eb));
        }
    }
}
