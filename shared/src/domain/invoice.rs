//! Invoices: their status and the only ways it changes, how their totals add up, and which card
//! declines are final.

crate::text_enum! {
    /// Where an invoice stands.
    pub enum InvoiceStatus {
        /// Being put together: lines may still change; no number yet.
        Draft = "draft",
        /// Finalized (numbered) and owed.
        Open = "open",
        Paid = "paid",
        /// Cancelled: nothing is owed. A dead end.
        Void = "void",
        /// Written off; it can still be paid or voided.
        Uncollectible = "uncollectible",
    }
}

/// Something that happens to an invoice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InvoiceTransition {
    Finalize,
    Pay,
    Void,
    MarkUncollectible,
}

impl InvoiceTransition {
    pub fn verb(self) -> &'static str {
        match self {
            InvoiceTransition::Finalize => "finalize",
            InvoiceTransition::Pay => "pay",
            InvoiceTransition::Void => "void",
            InvoiceTransition::MarkUncollectible => "mark uncollectible",
        }
    }
}

/// A transition the invoice's status does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cannot {} an invoice that is {from}", transition.verb())]
pub struct IllegalInvoiceTransition {
    pub from: InvoiceStatus,
    pub transition: InvoiceTransition,
}

impl InvoiceStatus {
    /// The status after `transition`, or why it cannot happen now.
    pub fn apply(
        self,
        transition: InvoiceTransition,
    ) -> Result<InvoiceStatus, IllegalInvoiceTransition> {
        use InvoiceStatus as S;
        use InvoiceTransition as T;
        match (self, transition) {
            (S::Draft, T::Finalize) => Ok(S::Open),
            (S::Open | S::Uncollectible, T::Pay) => Ok(S::Paid),
            (S::Open | S::Uncollectible, T::Void) => Ok(S::Void),
            (S::Open, T::MarkUncollectible) => Ok(S::Uncollectible),
            (from, transition) => Err(IllegalInvoiceTransition { from, transition }),
        }
    }

    /// Whether money is still owed on it, so a charge may be attempted.
    pub fn is_payable(self) -> bool {
        matches!(self, InvoiceStatus::Open | InvoiceStatus::Uncollectible)
    }
}

/// What a line contributes: its amount (negative for a credit) and the discount on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineAmount {
    pub amount: i64,
    pub discount: i64,
}

/// An invoice's totals, in minor units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Totals {
    /// The sum of the lines.
    pub subtotal: i64,
    /// The sum of the lines' discounts.
    pub discount: i64,
    pub tax: i64,
    /// `subtotal − discount + tax` (the tax passed to [`Totals::compute`]: the exclusive taxes;
    /// an invoice's `tax` also counts the inclusive ones, which are inside the lines already);
    /// negative when credits outweigh charges.
    pub total: i64,
    /// The customer's credit used to pay it.
    pub balance_applied: i64,
    /// What is left to pay: never negative.
    pub amount_due: i64,
    /// A negative total, as credit for the customer's balance.
    pub credit_to_balance: i64,
}

/// Why totals cannot be computed: amounts past what an `i64` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the invoice's amounts are too large")]
pub struct TotalsOverflow;

impl Totals {
    /// Adds up `lines` and `tax`, then applies up to `balance` of the customer's credit (a
    /// negative balance is not credit and applies nothing). A negative total owes nothing and
    /// becomes credit for the customer.
    pub fn compute(lines: &[LineAmount], tax: i64, balance: i64) -> Result<Totals, TotalsOverflow> {
        let mut subtotal: i64 = 0;
        let mut discount: i64 = 0;
        for l in lines {
            subtotal = subtotal.checked_add(l.amount).ok_or(TotalsOverflow)?;
            discount = discount.checked_add(l.discount).ok_or(TotalsOverflow)?;
        }
        let total = subtotal
            .checked_sub(discount)
            .and_then(|t| t.checked_add(tax))
            .ok_or(TotalsOverflow)?;
        let credit_to_balance = total.checked_neg().ok_or(TotalsOverflow)?.max(0);
        let owed = total.max(0);
        let balance_applied = balance.clamp(0, owed);
        Ok(Totals {
            subtotal,
            discount,
            tax,
            total,
            balance_applied,
            amount_due: owed - balance_applied,
            credit_to_balance,
        })
    }
}

/// What an invoice or one of its lines says: at most 500 printable characters, trimmed; empty
/// only when not `required`.
pub fn invoice_text(raw: &str, required: bool) -> Result<String, super::ValidationError> {
    super::catalog::text(raw, 500, required)
}

/// Declines that trying the same card again cannot fix (Stripe's list, plus any decline that
/// says "do not try again"): no retry, straight to the final action.
pub const HARD_DECLINES: [&str; 10] = [
    "incorrect_number",
    "lost_card",
    "pickup_card",
    "stolen_card",
    "revocation_of_authorization",
    "revocation_of_all_authorizations",
    "authentication_required",
    "highest_risk_level",
    "transaction_not_allowed",
    "do_not_try_again",
];

/// Whether a decline code is final.
pub fn is_hard_decline(code: &str) -> bool {
    HARD_DECLINES.contains(&code)
}

#[cfg(test)]
mod tests {
    use super::{InvoiceStatus as S, InvoiceTransition as T, *};

    fn line(amount: i64, discount: i64) -> LineAmount {
        LineAmount { amount, discount }
    }

    #[test]
    fn the_status_table_is_exactly_this() {
        let transitions = [T::Finalize, T::Pay, T::Void, T::MarkUncollectible];
        let n = None;
        let table = [
            (S::Draft, [Some(S::Open), n, n, n]),
            (
                S::Open,
                [n, Some(S::Paid), Some(S::Void), Some(S::Uncollectible)],
            ),
            (S::Paid, [n, n, n, n]),
            (S::Void, [n, n, n, n]),
            (S::Uncollectible, [n, Some(S::Paid), Some(S::Void), n]),
        ];
        assert_eq!(table.len(), S::ALL.len());
        for (from, row) in table {
            for (t, expected) in transitions.into_iter().zip(row) {
                assert_eq!(from.apply(t).ok(), expected, "{from} {t:?}");
                if expected.is_none() {
                    let e = from.apply(t).unwrap_err();
                    assert_eq!(e.from, from);
                    assert_eq!(e.transition, t);
                }
            }
        }
    }

    #[test]
    fn illegal_transitions_name_the_current_status() {
        let e = S::Paid.apply(T::Void).unwrap_err();
        assert_eq!(e.to_string(), "cannot void an invoice that is paid");
        let e = S::Void.apply(T::MarkUncollectible).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot mark uncollectible an invoice that is void"
        );
        assert_eq!(
            S::Open.apply(T::Finalize).unwrap_err().to_string(),
            "cannot finalize an invoice that is open"
        );
        assert_eq!(
            S::Draft.apply(T::Pay).unwrap_err().to_string(),
            "cannot pay an invoice that is draft"
        );
    }

    #[test]
    fn only_open_and_uncollectible_invoices_are_payable() {
        let payable: Vec<S> = S::ALL.iter().copied().filter(|s| s.is_payable()).collect();
        assert_eq!(payable, vec![S::Open, S::Uncollectible]);
    }

    #[test]
    fn totals_add_lines_take_discounts_and_add_tax() {
        let t = Totals::compute(&[line(1000, 100), line(2500, 0), line(-300, 0)], 50, 0).unwrap();
        assert_eq!(
            t,
            Totals {
                subtotal: 3200,
                discount: 100,
                tax: 50,
                total: 3150,
                balance_applied: 0,
                amount_due: 3150,
                credit_to_balance: 0,
            }
        );
    }

    #[test]
    fn credit_pays_part_or_all_of_an_invoice_and_never_more() {
        let lines = [line(1000, 0)];
        let part = Totals::compute(&lines, 0, 400).unwrap();
        assert_eq!((part.balance_applied, part.amount_due), (400, 600));
        let all = Totals::compute(&lines, 0, 1000).unwrap();
        assert_eq!((all.balance_applied, all.amount_due), (1000, 0));
        let more = Totals::compute(&lines, 0, 5000).unwrap();
        assert_eq!((more.balance_applied, more.amount_due), (1000, 0));
        // A negative balance is money owed, not credit: it pays nothing.
        let owed = Totals::compute(&lines, 0, -700).unwrap();
        assert_eq!((owed.balance_applied, owed.amount_due), (0, 1000));
    }

    #[test]
    fn a_negative_total_owes_nothing_and_becomes_credit() {
        let t = Totals::compute(&[line(-1500, 0), line(500, 0)], 0, 300).unwrap();
        assert_eq!(t.total, -1000);
        assert_eq!(t.amount_due, 0);
        assert_eq!(t.balance_applied, 0);
        assert_eq!(t.credit_to_balance, 1000);
        let zero = Totals::compute(&[], 0, 0).unwrap();
        assert_eq!(zero, Totals::default());
    }

    #[test]
    fn totals_past_i64_are_an_error_not_a_wrap() {
        assert_eq!(
            Totals::compute(&[line(i64::MAX, 0), line(1, 0)], 0, 0),
            Err(TotalsOverflow)
        );
        assert_eq!(
            Totals::compute(&[line(0, i64::MAX), line(0, 1)], 0, 0),
            Err(TotalsOverflow)
        );
        assert_eq!(
            Totals::compute(&[line(i64::MIN, 0)], 0, 0).map(|t| t.total),
            Err(TotalsOverflow),
            "a total of i64::MIN cannot be turned into credit"
        );
        assert_eq!(
            Totals::compute(&[line(-5, 1)], i64::MIN, 0),
            Err(TotalsOverflow)
        );
        assert_eq!(
            Totals::compute(&[line(i64::MAX, 0)], 1, 0),
            Err(TotalsOverflow)
        );
    }

    #[test]
    fn hard_declines_are_the_listed_codes_only() {
        for code in HARD_DECLINES {
            assert!(is_hard_decline(code), "{code}");
        }
        for code in [
            "card_declined",
            "insufficient_funds",
            "expired_card",
            "incorrect_cvc",
            "",
        ] {
            assert!(!is_hard_decline(code), "{code}");
        }
    }
}
