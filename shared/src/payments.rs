//! Charging a tenant's customers: the payment gateway.
//!
//! `Stripe` charges through a PaymentIntent on the tenant's connected account, with the
//! tenant's platform fee as the application fee. `Sandbox` needs no network and answers
//! deterministically from Stripe's published test card numbers (and their `pm_card_…` test
//! payment methods), so the platform runs on a laptop with no credentials. A mode whose Stripe
//! key is not configured gets the sandbox.

use std::collections::HashMap;

use crate::{
    domain::money::basis_points,
    stripe::{ChargeSpec, Failure, PaymentIntent, Stripe},
};

/// A charge to make.
#[derive(Debug, Clone)]
pub struct Charge<'a> {
    pub amount: i64,
    pub currency: &'a str,
    /// A payment method id (`pm_…`) or, in the sandbox, a test card number.
    pub payment_method: &'a str,
    pub customer: Option<&'a str>,
    pub description: &'a str,
    /// Derived from what is being paid and the attempt (`in_…-attempt-2`): a retried request
    /// never charges twice.
    pub idempotency_key: &'a str,
    /// The platform's fee on this charge, in minor units ([`application_fee`] of the amount
    /// at the tenant's rate), taken on a connected account only. An attempt records it when it
    /// starts, and a resumed attempt sends the recorded one: the same request under the same
    /// idempotency key, whatever the tenant's rate is by then.
    pub application_fee: i64,
    /// The tenant's connected account (`acct_…`); the sandbox ignores it.
    pub account: Option<&'a str>,
    pub metadata: HashMap<String, String>,
}

/// How a charge ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeOutcome {
    Succeeded {
        id: String,
    },
    /// The customer must act (3-D Secure): not paid yet.
    RequiresAction {
        id: String,
    },
    /// Accepted and on its way (a bank debit takes days): not paid yet, and not to be charged
    /// again meanwhile; the gateway's later answer (a Stripe event) settles it.
    Processing {
        id: String,
    },
    /// Declined: `code` such as `card_declined` or `insufficient_funds`; `do_not_retry` when
    /// the issuer advises never to try again (a hard decline whatever its code).
    Declined {
        code: String,
        message: String,
        do_not_retry: bool,
    },
    /// Canceled before it took any money (at the gateway, or by us when a new payment method
    /// replaces one waiting for the customer to authenticate): not a decline of the customer's
    /// payment method.
    Canceled {
        message: String,
    },
}

/// The platform's fee on an amount: the one rounding rule (half away from zero).
pub fn application_fee(amount: i64, fee_bps: u32) -> i64 {
    basis_points(amount, fee_bps).unwrap_or(0)
}

#[derive(Debug, Clone)]
pub enum Gateway {
    Stripe(Box<Stripe>),
    Sandbox,
}

impl Gateway {
    /// Stripe when it is configured for the mode, else the sandbox.
    pub fn for_mode(stripe: &Stripe, livemode: bool) -> Self {
        if stripe.configured(livemode) {
            Gateway::Stripe(Box::new(stripe.clone()))
        } else {
            Gateway::Sandbox
        }
    }

    /// How payments record it.
    pub fn name(&self) -> &'static str {
        match self {
            Gateway::Stripe(_) => "stripe",
            Gateway::Sandbox => "sandbox",
        }
    }

    pub async fn charge(&self, livemode: bool, c: &Charge<'_>) -> Result<ChargeOutcome, Failure> {
        match self {
            Gateway::Sandbox => Ok(sandbox(c)),
            Gateway::Stripe(stripe) => {
                // The fee applies to charges on a connected account.
                let fee = if c.account.is_some() {
                    c.application_fee
                } else {
                    0
                };
                let spec = ChargeSpec {
                    amount: c.amount,
                    currency: c.currency,
                    payment_method: c.payment_method,
                    customer: c.customer,
                    description: c.description,
                    application_fee: fee,
                    off_session: c.account.is_some(),
                    metadata: c.metadata.clone(),
                };
                match stripe
                    .charge(livemode, c.account, c.idempotency_key, &spec)
                    .await
                {
                    Ok(pi) => Ok(intent_outcome(pi)),
                    Err(Failure::Declined {
                        code,
                        message,
                        do_not_retry,
                    }) => Ok(ChargeOutcome::Declined {
                        code,
                        message,
                        do_not_retry,
                    }),
                    Err(e) => Err(e),
                }
            }
        }
    }
}

impl Gateway {
    /// Cancels the charge `id` (one waiting for the customer to authenticate) so that it never
    /// takes the money; the answer is its outcome: canceled when it was, or what it
    /// became first (the customer completed it just before: succeeded, or processing). The
    /// sandbox's such charges are never completed: always canceled.
    pub async fn cancel(
        &self,
        livemode: bool,
        id: &str,
        account: Option<&str>,
        idempotency_key: &str,
    ) -> Result<ChargeOutcome, Failure> {
        match self {
            Gateway::Sandbox => Ok(intent_outcome(PaymentIntent {
                id: id.into(),
                status: "canceled".into(),
                last_payment_error: None,
            })),
            Gateway::Stripe(stripe) => {
                let pi = stripe
                    .cancel_intent(livemode, account, idempotency_key, id)
                    .await?;
                Ok(intent_outcome(pi))
            }
        }
    }
}

/// What a payment intent says of a charge: only `succeeded` is money taken. An intent left
/// at any other status did not go through: a decline, under its `last_payment_error` when it
/// has one (so a `lost_card` there is the hard decline it is), else under the status.
pub fn intent_outcome(pi: PaymentIntent) -> ChargeOutcome {
    let PaymentIntent {
        id,
        status,
        last_payment_error,
    } = pi;
    match status.as_str() {
        "succeeded" => ChargeOutcome::Succeeded { id },
        "processing" => ChargeOutcome::Processing { id },
        "requires_action" => ChargeOutcome::RequiresAction { id },
        "canceled" => ChargeOutcome::Canceled {
            message: "The payment was canceled.".into(),
        },
        _ => match last_payment_error {
            Some(e) => ChargeOutcome::Declined {
                code: e.code(),
                do_not_retry: e.do_not_retry(),
                message: e
                    .message
                    .unwrap_or_else(|| "The payment did not go through.".into()),
            },
            None => ChargeOutcome::Declined {
                code: status,
                message: "The payment did not go through.".into(),
                do_not_retry: false,
            },
        },
    }
}

/// How a refund ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundOutcome {
    /// Accepted: the money goes back to the customer.
    Succeeded { id: String },
    /// Refused by the gateway: the money stays.
    Failed { reason: String },
}

/// A refund to make, of a payment the gateway took.
#[derive(Debug, Clone)]
pub struct RefundRequest<'a> {
    /// The gateway's id of the charge (`pi_…`).
    pub charge: &'a str,
    pub amount: i64,
    /// The refund's own id: a retried call never refunds twice.
    pub idempotency_key: &'a str,
    /// The tenant's connected account (`acct_…`); the sandbox ignores it.
    pub account: Option<&'a str>,
}

impl Gateway {
    /// The gateway that took a payment recorded with `name` (`sandbox` or `stripe`).
    pub fn named(stripe: &Stripe, name: &str) -> Option<Self> {
        match name {
            "sandbox" => Some(Gateway::Sandbox),
            "stripe" => Some(Gateway::Stripe(Box::new(stripe.clone()))),
            _ => None,
        }
    }

    pub async fn refund(
        &self,
        livemode: bool,
        r: &RefundRequest<'_>,
    ) -> Result<RefundOutcome, Failure> {
        match self {
            Gateway::Sandbox => Ok(RefundOutcome::Succeeded {
                id: format!(
                    "re_sandbox_{}",
                    &hex::encode(crate::crypto::sha256(r.idempotency_key.as_bytes()))[..24]
                ),
            }),
            Gateway::Stripe(stripe) => {
                match stripe
                    .refund(livemode, r.account, r.idempotency_key, r.charge, r.amount)
                    .await
                {
                    Ok(re) if re.status == "failed" || re.status == "canceled" => {
                        Ok(RefundOutcome::Failed {
                            reason: format!("the refund was {}", re.status),
                        })
                    }
                    Ok(re) => Ok(RefundOutcome::Succeeded { id: re.id }),
                    Err(Failure::Rejected(message)) => {
                        Ok(RefundOutcome::Failed { reason: message })
                    }
                    Err(Failure::Declined { message, .. }) => {
                        Ok(RefundOutcome::Failed { reason: message })
                    }
                    Err(e) => Err(e),
                }
            }
        }
    }
}

/// A card the sandbox knows: Stripe's published test cards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TestCard {
    /// Stripe's test payment method for the card: what is stored and charged (never the
    /// number).
    pub token: &'static str,
    pub brand: &'static str,
    pub last4: &'static str,
}

/// Stripe's test cards: (number, test payment method, brand).
const TEST_CARDS: [(&str, &str, &str); 10] = [
    ("4242424242424242", "pm_card_visa", "visa"),
    ("5555555555554444", "pm_card_mastercard", "mastercard"),
    ("4000056655665556", "pm_card_visa_debit", "visa"),
    ("4000002500003155", "pm_card_authenticationRequired", "visa"),
    ("4000000000000002", "pm_card_chargeDeclined", "visa"),
    (
        "4000000000009995",
        "pm_card_chargeDeclinedInsufficientFunds",
        "visa",
    ),
    ("4000000000009987", "pm_card_chargeDeclinedLostCard", "visa"),
    (
        "4000000000000069",
        "pm_card_chargeDeclinedExpiredCard",
        "visa",
    ),
    ("4000000000000341", "pm_card_chargeCustomerFail", "visa"),
    (
        "4000002760003184",
        "pm_card_authenticationRequiredOnSetup",
        "visa",
    ),
];

/// What a card token looks like: a payment method id (`pm_…`, Stripe's own or one of its test
/// payment methods) or a card number (spaces allowed).
pub const CARD_TOKEN_PATTERN: &str = "^(pm_[A-Za-z0-9_]+|[0-9 ]{12,23})$";

/// Whether `token` is a Stripe payment method id (`pm_` then letters, digits and `_`).
pub fn is_payment_method_id(token: &str) -> bool {
    token.len() <= 255
        && token.strip_prefix("pm_").is_some_and(|rest| {
            !rest.is_empty() && rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

/// Every token [`test_card`] knows: the test card numbers and their test payment methods.
pub fn test_card_tokens() -> impl Iterator<Item = &'static str> {
    TEST_CARDS.iter().flat_map(|(number, pm, _)| [*number, *pm])
}

/// The test card a sandbox token names: a test card number (spaces allowed) or its test
/// payment method (`pm_card_visa`).
pub fn test_card(token: &str) -> Option<TestCard> {
    let digits: String = token.chars().filter(|c| *c != ' ').collect();
    TEST_CARDS
        .iter()
        .find(|(number, pm, _)| *number == digits || *pm == token)
        .map(|(number, pm, brand)| TestCard {
            token: pm,
            brand,
            last4: &number[number.len() - 4..],
        })
}

/// Stripe's test cards, by number or test payment method.
fn sandbox(c: &Charge<'_>) -> ChargeOutcome {
    let id = format!(
        "pi_sandbox_{}",
        &hex::encode(crate::crypto::sha256(c.idempotency_key.as_bytes()))[..24]
    );
    let declined = |code: &str, message: &str| ChargeOutcome::Declined {
        do_not_retry: false,
        code: code.into(),
        message: message.into(),
    };
    match c.payment_method {
        "4242424242424242" | "4000056655665556" | "5555555555554444" | "pm_card_visa"
        | "pm_card_visa_debit" | "pm_card_mastercard" => ChargeOutcome::Succeeded { id },
        "4000002500003155"
        | "4000002760003184"
        | "pm_card_authenticationRequired"
        | "pm_card_authenticationRequiredOnSetup" => ChargeOutcome::RequiresAction { id },
        "4000000000009995" | "pm_card_chargeDeclinedInsufficientFunds" => {
            declined("insufficient_funds", "Your card has insufficient funds.")
        }
        "4000000000000069" | "pm_card_chargeDeclinedExpiredCard" => {
            declined("expired_card", "Your card has expired.")
        }
        "4000000000009987" | "pm_card_chargeDeclinedLostCard" => {
            declined("lost_card", "Your card was declined.")
        }
        // Attaches, then fails when charged.
        "4000000000000341" | "pm_card_chargeCustomerFail" => {
            declined("card_declined", "Your card was declined.")
        }
        "4000000000000002" | "pm_card_chargeDeclined" => {
            declined("card_declined", "Your card was declined.")
        }
        _ => declined(
            "invalid_payment_method",
            "The sandbox knows only Stripe's test cards.",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stripe::PaymentError;

    fn charge(pm: &str) -> Charge<'_> {
        Charge {
            amount: 1000,
            currency: "usd",
            payment_method: pm,
            customer: None,
            description: "",
            idempotency_key: "in_1-attempt-1",
            application_fee: 150,
            account: None,
            metadata: HashMap::new(),
        }
    }

    #[tokio::test]
    async fn the_sandbox_answers_from_stripes_test_cards() {
        let g = Gateway::Sandbox;
        assert!(matches!(
            g.charge(false, &charge("4242424242424242")).await.unwrap(),
            ChargeOutcome::Succeeded { .. }
        ));
        assert!(matches!(
            g.charge(false, &charge("pm_card_authenticationRequired"))
                .await
                .unwrap(),
            ChargeOutcome::RequiresAction { .. }
        ));
        assert_eq!(
            g.charge(false, &charge("4000000000009995")).await.unwrap(),
            ChargeOutcome::Declined {
                code: "insufficient_funds".into(),
                message: "Your card has insufficient funds.".into(),
                do_not_retry: false,
            }
        );
    }

    #[tokio::test]
    async fn a_test_card_is_charged_the_same_by_its_number_and_by_its_token() {
        let g = Gateway::Sandbox;
        for (number, token, brand) in TEST_CARDS {
            let card = test_card(number).unwrap();
            assert_eq!(card.token, token);
            assert_eq!(card.brand, brand);
            assert_eq!(card.last4, &number[12..]);
            assert_eq!(test_card(token), Some(card));
            let by_number = g.charge(false, &charge(number)).await.unwrap();
            let by_token = g.charge(false, &charge(token)).await.unwrap();
            assert_eq!(by_number, by_token, "{number}");
        }
        assert_eq!(
            test_card("4242 4242 4242 4242").unwrap().token,
            "pm_card_visa"
        );
        assert_eq!(test_card("4111111111111111"), None);
        assert_eq!(test_card_tokens().count(), 2 * TEST_CARDS.len());
        assert!(test_card_tokens().all(|t| test_card(t).is_some()));
        assert_eq!(test_card("pm_card_unknown"), None);
    }

    #[test]
    fn only_a_succeeded_intent_is_money_taken_and_a_processing_one_is_still_in_flight() {
        let of = |status: &str| {
            intent_outcome(PaymentIntent {
                id: "pi_1".into(),
                status: status.into(),
                last_payment_error: None,
            })
        };
        assert_eq!(
            of("succeeded"),
            ChargeOutcome::Succeeded { id: "pi_1".into() }
        );
        assert_eq!(
            of("processing"),
            ChargeOutcome::Processing { id: "pi_1".into() }
        );
        assert_eq!(
            of("requires_action"),
            ChargeOutcome::RequiresAction { id: "pi_1".into() }
        );
        assert_eq!(
            of("canceled"),
            ChargeOutcome::Canceled {
                message: "The payment was canceled.".into()
            }
        );
        assert_eq!(
            of("requires_payment_method"),
            ChargeOutcome::Declined {
                code: "requires_payment_method".into(),
                message: "The payment did not go through.".into(),
                do_not_retry: false,
            }
        );
    }

    #[test]
    fn an_intent_back_at_requires_payment_method_is_declined_as_its_last_payment_error_says() {
        let of = |e: PaymentError| {
            intent_outcome(PaymentIntent {
                id: "pi_1".into(),
                status: "requires_payment_method".into(),
                last_payment_error: Some(e),
            })
        };
        // The issuer's decline code, its advice and its message.
        assert_eq!(
            of(PaymentError {
                code: Some("card_declined".into()),
                decline_code: Some("lost_card".into()),
                advice_code: Some("do_not_try_again".into()),
                message: Some("Your card has been declined.".into()),
            }),
            ChargeOutcome::Declined {
                code: "lost_card".into(),
                message: "Your card has been declined.".into(),
                do_not_retry: true,
            }
        );
        // No decline code: Stripe's error code; no message: the usual one.
        assert_eq!(
            of(PaymentError {
                code: Some("expired_card".into()),
                ..PaymentError::default()
            }),
            ChargeOutcome::Declined {
                code: "expired_card".into(),
                message: "The payment did not go through.".into(),
                do_not_retry: false,
            }
        );
        // Neither: a plain decline.
        assert_eq!(
            of(PaymentError::default()),
            ChargeOutcome::Declined {
                code: "card_declined".into(),
                message: "The payment did not go through.".into(),
                do_not_retry: false,
            }
        );
        // Any other advice may be tried again.
        assert_eq!(
            of(PaymentError {
                decline_code: Some("insufficient_funds".into()),
                advice_code: Some("try_again_later".into()),
                ..PaymentError::default()
            }),
            ChargeOutcome::Declined {
                code: "insufficient_funds".into(),
                message: "The payment did not go through.".into(),
                do_not_retry: false,
            }
        );
    }

    #[tokio::test]
    async fn lost_cards_and_customer_fail_cards_are_declined_when_charged() {
        let g = Gateway::Sandbox;
        let code = |o: ChargeOutcome| match o {
            ChargeOutcome::Declined { code, .. } => code,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            code(g.charge(false, &charge("4000000000009987")).await.unwrap()),
            "lost_card"
        );
        assert_eq!(
            code(
                g.charge(false, &charge("pm_card_chargeCustomerFail"))
                    .await
                    .unwrap()
            ),
            "card_declined"
        );
    }

    #[tokio::test]
    async fn the_same_idempotency_key_gives_the_same_sandbox_charge() {
        let g = Gateway::Sandbox;
        let a = g.charge(false, &charge("pm_card_visa")).await.unwrap();
        let b = g.charge(false, &charge("pm_card_visa")).await.unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn the_platform_fee_rounds_half_away_from_zero() {
        assert_eq!(application_fee(1000, 1500), 150);
        assert_eq!(application_fee(2999, 1500), 450); // 449.85
        assert_eq!(application_fee(1, 5000), 1); // 0.5
        assert_eq!(application_fee(0, 1500), 0);
    }
}
