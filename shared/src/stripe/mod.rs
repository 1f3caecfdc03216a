//! The Stripe adapter: every call to Stripe goes through async-stripe, here.
//!
//! Requests are built with async-stripe's typed request builders and sent with its client; the
//! answers are read into small structs holding only what the platform uses, so a Stripe
//! account on an older or newer API version (or a Stripe-compatible server) answers fine.
//! Calls on a tenant's behalf carry its connected account (`Stripe-Account`), and every call
//! that creates or changes something carries an idempotency key derived from what it is for.

pub mod webhook;

use std::collections::HashMap;

use stripe::{Client, ClientBuilder, StripeError};
use stripe::{IdempotencyKey, RequestStrategy, StripeRequest};
use stripe_client_core::RequestBuilder;
use stripe_connect::{
    account::{CreateAccount, CreateAccountType, RetrieveAccount},
    account_link::{CreateAccountLink, CreateAccountLinkType},
};
use stripe_core::payment_intent::{
    CancelPaymentIntent, CreatePaymentIntent, CreatePaymentIntentOffSession, RetrievePaymentIntent,
};
use stripe_core::refund::CreateRefund;
use stripe_product::{
    price::{
        CreatePrice, CreatePriceRecurring, CreatePriceRecurringInterval, CreatePriceTiers,
        CreatePriceTiersUpTo, CreatePriceTransformQuantity, CreatePriceTransformQuantityRound,
        UpdatePrice,
    },
    product::{CreateProduct, UpdateProduct},
};
use stripe_shared::{AccountId, PriceBillingScheme, PriceTiersMode};

use crate::config::StripeSettings;

/// Why a Stripe call failed, as far as what to do next is concerned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// Stripe is not configured for this mode.
    #[error("Stripe is not configured for this mode")]
    NotConfigured,
    /// Stripe asked us to slow down (429): back-pressure, try again shortly.
    #[error("rate limited by Stripe")]
    RateLimited,
    /// Network trouble, a timeout or a 5xx: try again later.
    #[error("{0}")]
    Transient(String),
    /// Stripe refused the request as it stands (4xx): retrying it unchanged will not help.
    #[error("{0}")]
    Rejected(String),
    /// The card was declined (402): `code` is the decline code, such as `insufficient_funds`;
    /// `do_not_retry` when the issuer advises never to try the card again (Stripe's
    /// `advice_code` `do_not_try_again`).
    #[error("card declined ({code}): {message}")]
    Declined {
        code: String,
        message: String,
        do_not_retry: bool,
    },
}

fn classify(e: StripeError) -> Failure {
    match e {
        StripeError::Stripe(_, 429) => Failure::RateLimited,
        StripeError::Stripe(err, 402) => {
            let e = PaymentError {
                code: err.code.as_ref().map(|c| c.as_str().to_owned()),
                decline_code: err.decline_code,
                advice_code: err.advice_code,
                message: err.message,
            };
            Failure::Declined {
                code: e.code(),
                do_not_retry: e.do_not_retry(),
                message: e.message.unwrap_or_else(|| "The card was declined.".into()),
            }
        }
        StripeError::Stripe(err, status) if status >= 500 || status == 409 => {
            Failure::Transient(format!(
                "Stripe answered {status}: {}",
                err.message.unwrap_or_default()
            ))
        }
        StripeError::Stripe(err, status) => Failure::Rejected(format!(
            "Stripe answered {status}: {}",
            err.message.unwrap_or_else(|| "request refused".into())
        )),
        StripeError::Timeout => Failure::Transient("Stripe did not answer in time".into()),
        StripeError::ClientError(m) => Failure::Transient(format!("cannot reach Stripe: {m}")),
        // An error body that is not Stripe's (a proxy's, say) or an unreadable answer.
        StripeError::JSONDeserialize(m) => Failure::Transient(format!("unreadable answer: {m}")),
        StripeError::ConfigError(m) => Failure::Rejected(format!("Stripe client: {m}")),
    }
}

/// An object Stripe created or returned: its id.
#[derive(Debug, miniserde::Deserialize)]
struct Created {
    id: String,
}

/// What the platform reads of a connected account.
#[derive(Debug, Clone, miniserde::Deserialize)]
struct AccountBody {
    id: String,
    charges_enabled: Option<bool>,
    payouts_enabled: Option<bool>,
    details_submitted: Option<bool>,
    requirements: Option<miniserde::json::Value>,
}

#[derive(Debug, miniserde::Deserialize)]
struct LinkBody {
    url: String,
    expires_at: i64,
}

/// A connected account as Stripe describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub id: String,
    pub charges_enabled: bool,
    pub payouts_enabled: bool,
    pub details_submitted: bool,
    /// What Stripe still needs (`currently_due`, `past_due`…), as Stripe words it.
    pub requirements: serde_json::Value,
}

/// An onboarding link.
#[derive(Debug, Clone)]
pub struct OnboardingLink {
    pub url: String,
    pub expires_at: i64,
}

/// How a price charges, in Stripe's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scheme {
    /// One amount per unit (a flat price is one unit).
    PerUnit(i64),
    /// Tiers (`up_to` None for the last), graduated or volume.
    Tiered {
        graduated: bool,
        tiers: Vec<(Option<u64>, i64, i64)>,
    },
    /// `amount` per package of `size` units, rounded up.
    Package { amount: i64, size: u64 },
}

/// A Stripe Price to create.
#[derive(Debug, Clone)]
pub struct PriceSpec<'a> {
    pub product: &'a str,
    pub currency: &'a str,
    pub nickname: &'a str,
    /// Stripe's interval (`day`, `week`, `month`, `year`) and count; None for one-time.
    pub recurring: Option<(&'static str, u32)>,
    pub scheme: Scheme,
    pub metadata: HashMap<String, String>,
}

/// A charge to make.
#[derive(Debug, Clone)]
pub struct ChargeSpec<'a> {
    pub amount: i64,
    pub currency: &'a str,
    pub payment_method: &'a str,
    pub customer: Option<&'a str>,
    pub description: &'a str,
    /// The platform's cut, in minor units (0: none).
    pub application_fee: i64,
    /// The customer is not present (renewals, retries).
    pub off_session: bool,
    pub metadata: HashMap<String, String>,
}

#[derive(Debug, miniserde::Deserialize)]
struct IntentBody {
    id: String,
    status: String,
    last_payment_error: Option<PaymentError>,
}

impl From<IntentBody> for PaymentIntent {
    fn from(pi: IntentBody) -> Self {
        PaymentIntent {
            id: pi.id,
            status: pi.status,
            last_payment_error: pi.last_payment_error,
        }
    }
}

/// What Stripe says of a payment that failed: a card error's fields, or a PaymentIntent's
/// `last_payment_error` (the same fields).
#[derive(Debug, Clone, Default, PartialEq, Eq, miniserde::Deserialize)]
pub struct PaymentError {
    pub code: Option<String>,
    pub decline_code: Option<String>,
    pub advice_code: Option<String>,
    pub message: Option<String>,
}

impl PaymentError {
    /// The code a decline is recorded under: the issuer's `decline_code` (`lost_card`), else
    /// Stripe's error `code` (`expired_card`), else `card_declined`.
    pub fn code(&self) -> String {
        self.decline_code
            .as_deref()
            .or(self.code.as_deref())
            .unwrap_or("card_declined")
            .to_owned()
    }

    /// Whether the issuer advises never to try the card again (`advice_code`
    /// `do_not_try_again`).
    pub fn do_not_retry(&self) -> bool {
        self.advice_code.as_deref() == Some("do_not_try_again")
    }
}

#[derive(Debug, miniserde::Deserialize)]
struct RefundBody {
    id: String,
    status: Option<String>,
}

/// A Refund as Stripe answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StripeRefund {
    pub id: String,
    pub status: String,
}

/// A PaymentIntent as Stripe answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentIntent {
    pub id: String,
    /// `succeeded`, `requires_action`, `processing`, `requires_payment_method`…
    pub status: String,
    /// Why the last attempt to pay failed, when it did (an intent back at
    /// `requires_payment_method`).
    pub last_payment_error: Option<PaymentError>,
}

#[derive(Debug, miniserde::Deserialize)]
struct PaymentMethodBody {
    card: Option<CardBody>,
    customer: Option<String>,
}

#[derive(Debug, miniserde::Deserialize)]
struct CardBody {
    brand: String,
    last4: String,
    exp_month: i64,
    exp_year: i64,
}

/// What is kept of a card payment method: its brand, last 4 digits and expiry; and the
/// Stripe customer it is attached to, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardDetails {
    pub brand: String,
    pub last4: String,
    pub exp_month: i32,
    pub exp_year: i32,
    pub customer: Option<String>,
}

#[derive(serde::Serialize)]
struct Attach<'a> {
    customer: &'a str,
}

/// A Stripe Customer to create or update (form-encoded as Stripe takes it).
#[derive(Debug, Clone, serde::Serialize)]
pub struct CustomerSpec<'a> {
    pub name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<&'a str>,
    pub metadata: HashMap<String, String>,
}

/// A Stripe Product to create or update.
#[derive(Debug, Clone)]
pub struct ProductSpec<'a> {
    pub name: &'a str,
    pub description: &'a str,
    pub active: bool,
    pub metadata: HashMap<String, String>,
}

/// The platform's Stripe clients, one per configured mode.
#[derive(Clone)]
pub struct Stripe {
    test: Option<Client>,
    live: Option<Client>,
}

impl std::fmt::Debug for Stripe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stripe")
            .field("test", &self.test.is_some())
            .field("live", &self.live.is_some())
            .finish()
    }
}

fn key(raw: &str) -> Result<RequestStrategy, Failure> {
    IdempotencyKey::new(raw)
        .map(RequestStrategy::Idempotent)
        .map_err(|e| Failure::Rejected(format!("idempotency key: {e:?}")))
}

/// The Stripe client cannot be built from the settings.
#[derive(Debug, thiserror::Error)]
#[error("the Stripe client cannot be built: {0}")]
pub struct SetupError(String);

impl Stripe {
    pub fn new(settings: &StripeSettings) -> Result<Self, SetupError> {
        let build = |secret: &str| {
            ClientBuilder::new(secret)
                .url(settings.api_base.clone())
                .timeout(settings.timeout)
                .app_info(
                    "billing-platform",
                    Some(env!("CARGO_PKG_VERSION").into()),
                    None,
                )
                .build()
                .map_err(|e| SetupError(e.to_string()))
        };
        Ok(Self {
            test: settings
                .secret_key_test
                .as_ref()
                .map(|k| build(k.expose()))
                .transpose()?,
            live: settings
                .secret_key_live
                .as_ref()
                .map(|k| build(k.expose()))
                .transpose()?,
        })
    }

    pub fn configured(&self, livemode: bool) -> bool {
        self.client(livemode).is_ok()
    }

    fn client(&self, livemode: bool) -> Result<&Client, Failure> {
        if livemode {
            self.live.as_ref()
        } else {
            self.test.as_ref()
        }
        .ok_or(Failure::NotConfigured)
    }

    /// Sends a request on a connected account with an idempotency key.
    async fn send<T: miniserde::Deserialize>(
        &self,
        livemode: bool,
        account: Option<&str>,
        idempotency_key: Option<&str>,
        req: RequestBuilder,
    ) -> Result<T, Failure> {
        let client = self.client(livemode)?;
        let mut req = req.customize::<T>();
        if let Some(k) = idempotency_key {
            req = req.request_strategy(key(k)?);
        }
        if let Some(a) = account {
            req = req.account_id(AccountId::from(a));
        }
        req.send(client).await.map_err(classify)
    }

    pub async fn create_product(
        &self,
        livemode: bool,
        account: &str,
        idempotency_key: &str,
        p: &ProductSpec<'_>,
    ) -> Result<String, Failure> {
        let mut req = CreateProduct::new(p.name)
            .active(p.active)
            .metadata(p.metadata.clone());
        if !p.description.is_empty() {
            req = req.description(p.description);
        }
        let created: Created = self
            .send(livemode, Some(account), Some(idempotency_key), req.build())
            .await?;
        Ok(created.id)
    }

    pub async fn update_product(
        &self,
        livemode: bool,
        account: &str,
        idempotency_key: &str,
        id: &str,
        p: &ProductSpec<'_>,
    ) -> Result<(), Failure> {
        let mut req = UpdateProduct::new(id)
            .name(p.name)
            .active(p.active)
            .metadata(p.metadata.clone());
        if !p.description.is_empty() {
            req = req.description(p.description);
        }
        let _: Created = self
            .send(livemode, Some(account), Some(idempotency_key), req.build())
            .await?;
        Ok(())
    }

    /// Creates a customer on the connected account; returns its id.
    pub async fn create_customer(
        &self,
        livemode: bool,
        account: &str,
        idempotency_key: &str,
        c: &CustomerSpec<'_>,
    ) -> Result<String, Failure> {
        let req = RequestBuilder::new(stripe_client_core::StripeMethod::Post, "/customers").form(c);
        let created: Created = self
            .send(livemode, Some(account), Some(idempotency_key), req)
            .await?;
        Ok(created.id)
    }

    /// Brings a customer of the connected account up to date.
    pub async fn update_customer(
        &self,
        livemode: bool,
        account: &str,
        idempotency_key: &str,
        id: &str,
        c: &CustomerSpec<'_>,
    ) -> Result<(), Failure> {
        let req = RequestBuilder::new(
            stripe_client_core::StripeMethod::Post,
            format!("/customers/{id}"),
        )
        .form(c);
        let _: Created = self
            .send(livemode, Some(account), Some(idempotency_key), req)
            .await?;
        Ok(())
    }

    /// Attaches a payment method (or one of Stripe's test payment methods, such as
    /// `pm_card_visa`, which makes a new one) to a customer of the connected account; returns
    /// the attached payment method's id.
    pub async fn attach_payment_method(
        &self,
        livemode: bool,
        account: &str,
        idempotency_key: &str,
        payment_method: &str,
        customer: &str,
    ) -> Result<String, Failure> {
        let req = RequestBuilder::new(
            stripe_client_core::StripeMethod::Post,
            format!("/payment_methods/{payment_method}/attach"),
        )
        .form(&Attach { customer });
        let attached: Created = self
            .send(livemode, Some(account), Some(idempotency_key), req)
            .await?;
        Ok(attached.id)
    }

    /// Detaches a payment method from its customer on the connected account (it can no longer
    /// be charged there).
    pub async fn detach_payment_method(
        &self,
        livemode: bool,
        account: &str,
        idempotency_key: &str,
        payment_method: &str,
    ) -> Result<(), Failure> {
        let req = RequestBuilder::new(
            stripe_client_core::StripeMethod::Post,
            format!("/payment_methods/{payment_method}/detach"),
        );
        let _: Created = self
            .send(livemode, Some(account), Some(idempotency_key), req)
            .await?;
        Ok(())
    }

    /// The card of a payment method of the connected account (`None`: the account has no such
    /// payment method, or it is not a card).
    pub async fn card_of(
        &self,
        livemode: bool,
        account: &str,
        payment_method: &str,
    ) -> Result<Option<CardDetails>, Failure> {
        let client = self.client(livemode)?;
        let req = RequestBuilder::new(
            stripe_client_core::StripeMethod::Get,
            format!("/payment_methods/{payment_method}"),
        )
        .customize::<PaymentMethodBody>()
        .account_id(AccountId::from(account));
        let pm = match req.send(client).await {
            Ok(pm) => pm,
            Err(StripeError::Stripe(_, 404)) => return Ok(None),
            Err(e) => return Err(classify(e)),
        };
        let customer = pm.customer;
        Ok(pm.card.map(|c| CardDetails {
            brand: c.brand,
            last4: c.last4,
            exp_month: i32::try_from(c.exp_month).unwrap_or(0),
            exp_year: i32::try_from(c.exp_year).unwrap_or(0),
            customer,
        }))
    }

    pub async fn create_price(
        &self,
        livemode: bool,
        account: &str,
        idempotency_key: &str,
        p: &PriceSpec<'_>,
    ) -> Result<String, Failure> {
        let currency: stripe_types::Currency = p
            .currency
            .parse()
            .map_err(|_| Failure::Rejected(format!("currency {}", p.currency)))?;
        let mut req = CreatePrice::new(currency)
            .product(p.product)
            .metadata(p.metadata.clone());
        if !p.nickname.is_empty() {
            req = req.nickname(p.nickname);
        }
        if let Some((interval, count)) = p.recurring {
            let interval = match interval {
                "day" => CreatePriceRecurringInterval::Day,
                "week" => CreatePriceRecurringInterval::Week,
                "month" => CreatePriceRecurringInterval::Month,
                _ => CreatePriceRecurringInterval::Year,
            };
            let mut recurring = CreatePriceRecurring::new(interval);
            recurring.interval_count = Some(u64::from(count));
            req = req.recurring(recurring);
        }
        req = match &p.scheme {
            Scheme::PerUnit(amount) => req
                .billing_scheme(PriceBillingScheme::PerUnit)
                .unit_amount(*amount),
            Scheme::Package { amount, size } => req
                .billing_scheme(PriceBillingScheme::PerUnit)
                .unit_amount(*amount)
                .transform_quantity(CreatePriceTransformQuantity {
                    divide_by: i64::try_from(*size).unwrap_or(i64::MAX),
                    round: CreatePriceTransformQuantityRound::Up,
                }),
            Scheme::Tiered { graduated, tiers } => req
                .billing_scheme(PriceBillingScheme::Tiered)
                .tiers_mode(if *graduated {
                    PriceTiersMode::Graduated
                } else {
                    PriceTiersMode::Volume
                })
                .tiers(
                    tiers
                        .iter()
                        .map(|(up_to, unit, flat)| {
                            let mut t = CreatePriceTiers::new(match up_to {
                                Some(n) => {
                                    CreatePriceTiersUpTo::I64(i64::try_from(*n).unwrap_or(i64::MAX))
                                }
                                None => CreatePriceTiersUpTo::Inf,
                            });
                            t.unit_amount = Some(*unit);
                            if *flat > 0 {
                                t.flat_amount = Some(*flat);
                            }
                            t
                        })
                        .collect::<Vec<_>>(),
                ),
        };
        let created: Created = self
            .send(livemode, Some(account), Some(idempotency_key), req.build())
            .await?;
        Ok(created.id)
    }

    /// Prices cannot change in Stripe: only their `active` flag.
    pub async fn set_price_active(
        &self,
        livemode: bool,
        account: &str,
        idempotency_key: &str,
        id: &str,
        active: bool,
    ) -> Result<(), Failure> {
        let req = UpdatePrice::new(id).active(active);
        let _: Created = self
            .send(livemode, Some(account), Some(idempotency_key), req.build())
            .await?;
        Ok(())
    }

    /// Creates and confirms a PaymentIntent off-session (a charge), on the connected account
    /// when one is given, with the platform's fee as `application_fee_amount`.
    pub async fn charge(
        &self,
        livemode: bool,
        account: Option<&str>,
        idempotency_key: &str,
        c: &ChargeSpec<'_>,
    ) -> Result<PaymentIntent, Failure> {
        let currency: stripe_types::Currency = c
            .currency
            .parse()
            .map_err(|_| Failure::Rejected(format!("currency {}", c.currency)))?;
        let mut req = CreatePaymentIntent::new(c.amount, currency)
            .payment_method(c.payment_method)
            .confirm(true)
            .metadata(c.metadata.clone());
        if c.off_session {
            req = req.off_session(CreatePaymentIntentOffSession::Bool(true));
        }
        if let Some(customer) = c.customer {
            req = req.customer(customer);
        }
        if !c.description.is_empty() {
            req = req.description(c.description);
        }
        if c.application_fee > 0 {
            req = req.application_fee_amount(c.application_fee);
        }
        let pi: IntentBody = self
            .send(livemode, account, Some(idempotency_key), req.build())
            .await?;
        Ok(pi.into())
    }

    /// Cancels a PaymentIntent that has not taken the money (one waiting for the customer to
    /// authenticate, say), so that it never can. When Stripe refuses because the intent moved
    /// on meanwhile (the customer authenticated just before), the intent as it is now: its
    /// status says what became of it.
    pub async fn cancel_intent(
        &self,
        livemode: bool,
        account: Option<&str>,
        idempotency_key: &str,
        intent: &str,
    ) -> Result<PaymentIntent, Failure> {
        let req = CancelPaymentIntent::new(intent);
        let canceled: Result<IntentBody, Failure> = self
            .send(livemode, account, Some(idempotency_key), req.build())
            .await;
        let pi = match canceled {
            Ok(pi) => pi,
            Err(Failure::Rejected(_)) => {
                let req = RetrievePaymentIntent::new(intent);
                self.send(livemode, account, None, req.build()).await?
            }
            Err(e) => return Err(e),
        };
        Ok(pi.into())
    }

    /// Refunds `amount` of a PaymentIntent (on the connected `account` that took it). The
    /// answer's status: `succeeded`, `pending` (accepted, settling), `failed` or `canceled`.
    pub async fn refund(
        &self,
        livemode: bool,
        account: Option<&str>,
        idempotency_key: &str,
        payment_intent: &str,
        amount: i64,
    ) -> Result<StripeRefund, Failure> {
        let req = CreateRefund::new()
            .payment_intent(payment_intent)
            .amount(amount);
        let r: RefundBody = self
            .send(livemode, account, Some(idempotency_key), req.build())
            .await?;
        Ok(StripeRefund {
            id: r.id,
            status: r.status.unwrap_or_else(|| "succeeded".into()),
        })
    }

    /// Creates an Express account for a tenant (the platform's own request: no
    /// `Stripe-Account`).
    pub async fn create_account(
        &self,
        livemode: bool,
        idempotency_key: &str,
        email: &str,
        metadata: HashMap<String, String>,
    ) -> Result<String, Failure> {
        let req = CreateAccount::new()
            .type_(CreateAccountType::Express)
            .email(email)
            .metadata(metadata);
        let created: Created = self
            .send(livemode, None, Some(idempotency_key), req.build())
            .await?;
        Ok(created.id)
    }

    /// An onboarding link for an account.
    pub async fn onboarding_link(
        &self,
        livemode: bool,
        account: &str,
        refresh_url: &str,
        return_url: &str,
    ) -> Result<OnboardingLink, Failure> {
        let req = CreateAccountLink::new(account, CreateAccountLinkType::AccountOnboarding)
            .refresh_url(refresh_url)
            .return_url(return_url);
        let link: LinkBody = self.send(livemode, None, None, req.build()).await?;
        Ok(OnboardingLink {
            url: link.url,
            expires_at: link.expires_at,
        })
    }

    /// Reads an account's current state.
    pub async fn account(&self, livemode: bool, account: &str) -> Result<Account, Failure> {
        let req = RetrieveAccount::new(account).build();
        let a: AccountBody = self.send(livemode, None, None, req).await?;
        Ok(Account {
            id: a.id,
            charges_enabled: a.charges_enabled.unwrap_or(false),
            payouts_enabled: a.payouts_enabled.unwrap_or(false),
            details_submitted: a.details_submitted.unwrap_or(false),
            requirements: a
                .requirements
                .and_then(|r| serde_json::from_str(&miniserde::json::to_string(&r)).ok())
                .unwrap_or_else(|| serde_json::json!({})),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_intent_is_read_with_its_last_payment_error_when_it_has_one() {
        let failed: IntentBody = miniserde::json::from_str(
            r#"{"id": "pi_1", "object": "payment_intent", "status": "requires_payment_method",
                "amount": 1000, "last_payment_error": {"type": "card_error",
                "code": "card_declined", "decline_code": "stolen_card",
                "advice_code": "do_not_try_again", "message": "Your card was declined.",
                "payment_method": {"id": "pm_1"}}}"#,
        )
        .unwrap();
        assert_eq!(
            PaymentIntent::from(failed),
            PaymentIntent {
                id: "pi_1".into(),
                status: "requires_payment_method".into(),
                last_payment_error: Some(PaymentError {
                    code: Some("card_declined".into()),
                    decline_code: Some("stolen_card".into()),
                    advice_code: Some("do_not_try_again".into()),
                    message: Some("Your card was declined.".into()),
                }),
            }
        );
        let paid: IntentBody = miniserde::json::from_str(
            r#"{"id": "pi_2", "status": "succeeded", "last_payment_error": null}"#,
        )
        .unwrap();
        assert_eq!(PaymentIntent::from(paid).last_payment_error, None);
    }

    #[test]
    fn idempotency_keys_are_checked() {
        assert!(key("plan_1:create").is_ok());
        assert!(key("").is_err());
        assert!(key(&"x".repeat(300)).is_err());
    }
}
