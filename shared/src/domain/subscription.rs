//! A subscription's status and the only ways it changes, as Stripe Billing has them. Every
//! change goes through [`SubscriptionStatus::apply`]: an API call, a renewal job, a Stripe event
//! and a test clock all take the same transitions, and an illegal one is an error naming the
//! current status (the API's 409).

crate::text_enum! {
    /// Where a subscription stands.
    pub enum SubscriptionStatus {
        /// Created without a trial; its first invoice is not paid yet.
        Incomplete = "incomplete",
        /// The first invoice stayed unpaid for 23 hours (it is voided): a dead end.
        IncompleteExpired = "incomplete_expired",
        Trialing = "trialing",
        Active = "active",
        /// A renewal's payment failed; retries follow the dunning policy.
        PastDue = "past_due",
        /// Retries ran out and the tenant chose to keep it, unpaid.
        Unpaid = "unpaid",
        /// Collection is paused (by request, or a trial ended without a payment method).
        Paused = "paused",
        /// Over: a dead end.
        Canceled = "canceled",
    }
}

crate::text_enum! {
    /// How a subscription's invoices are collected.
    pub enum CollectionMethod {
        /// The customer's default payment method is charged when an invoice is finalized.
        ChargeAutomatically = "charge_automatically",
        /// The invoice is sent and due after `days_until_due` days.
        SendInvoice = "send_invoice",
    }
}

crate::text_enum! {
    /// What a change of items or quantities bills.
    pub enum ProrationBehavior {
        /// Proration lines wait for the next invoice.
        CreateProrations = "create_prorations",
        /// Proration lines are invoiced at once.
        AlwaysInvoice = "always_invoice",
        /// Nothing: the new price applies from the next period.
        None = "none",
    }
}

/// Something that happens to a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transition {
    /// An invoice of the subscription was paid: the first one, or one that was past due.
    InvoicePaid,
    /// A charge for the subscription failed.
    PaymentFailed,
    /// The first invoice stayed unpaid for 23 hours.
    FirstInvoiceExpired,
    /// The trial ended with a payment method to charge.
    TrialEnded,
    /// The trial ended with no payment method to charge.
    TrialEndedWithoutPaymentMethod,
    /// Dunning gave up and the tenant's final action is "mark unpaid".
    RetriesExhausted,
    /// Collection paused on request.
    Pause,
    /// Collection resumed.
    Resume,
    /// Canceled now (on request, at a scheduled end, or as dunning's final action).
    Cancel,
    /// The latest invoice, the one it was past due or unpaid for, was voided: nothing is owed
    /// for it any more.
    LatestInvoiceVoided,
}

impl Transition {
    /// What the transition does, for messages (`cannot pause a canceled subscription`).
    pub fn verb(self) -> &'static str {
        match self {
            Transition::InvoicePaid => "record a paid invoice on",
            Transition::PaymentFailed => "record a failed payment on",
            Transition::FirstInvoiceExpired => "expire",
            Transition::TrialEnded | Transition::TrialEndedWithoutPaymentMethod => {
                "end the trial of"
            }
            Transition::RetriesExhausted => "mark unpaid",
            Transition::Pause => "pause",
            Transition::Resume => "resume",
            Transition::Cancel => "cancel",
            Transition::LatestInvoiceVoided => "record a voided latest invoice on",
        }
    }
}

/// A transition the current status does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cannot {} a subscription that is {from}", transition.verb())]
pub struct IllegalTransition {
    pub from: SubscriptionStatus,
    pub transition: Transition,
}

impl SubscriptionStatus {
    /// The status after `transition`, or why it cannot happen now.
    pub fn apply(self, transition: Transition) -> Result<SubscriptionStatus, IllegalTransition> {
        use SubscriptionStatus as S;
        use Transition as T;
        let next = match (self, transition) {
            // A paid invoice brings a subscription that owed money back to active; a trial's
            // (zero) invoice leaves the trial running.
            (S::Incomplete | S::Active | S::PastDue | S::Unpaid, T::InvoicePaid) => S::Active,
            (S::Trialing, T::InvoicePaid) => S::Trialing,
            // The first invoice failing leaves the subscription incomplete until it expires.
            (S::Incomplete, T::PaymentFailed) => S::Incomplete,
            (S::Active | S::PastDue, T::PaymentFailed) => S::PastDue,
            (S::Unpaid, T::PaymentFailed) => S::Unpaid,
            (S::Incomplete, T::FirstInvoiceExpired) => S::IncompleteExpired,
            (S::Trialing, T::TrialEnded) => S::Active,
            (S::Trialing, T::TrialEndedWithoutPaymentMethod) => S::Paused,
            (S::PastDue, T::RetriesExhausted) => S::Unpaid,
            (S::Trialing | S::Active | S::PastDue, T::Pause) => S::Paused,
            (S::Paused, T::Resume) => S::Active,
            (S::PastDue | S::Unpaid, T::LatestInvoiceVoided) => S::Active,
            (
                S::Incomplete | S::Trialing | S::Active | S::PastDue | S::Unpaid | S::Paused,
                T::Cancel,
            ) => S::Canceled,
            (from, transition) => return Err(IllegalTransition { from, transition }),
        };
        Ok(next)
    }

    /// Still a subscription: not canceled, and not expired before it started. A customer with a
    /// live subscription cannot be deleted.
    pub fn is_live(self) -> bool {
        !matches!(
            self,
            SubscriptionStatus::Canceled | SubscriptionStatus::IncompleteExpired
        )
    }

    /// The event a change into this status records.
    pub fn event_type(self, transition: Transition) -> &'static str {
        match (self, transition) {
            (SubscriptionStatus::Canceled, _) => "customer.subscription.deleted",
            (SubscriptionStatus::Paused, _) => "customer.subscription.paused",
            (_, Transition::Resume) => "customer.subscription.resumed",
            _ => "customer.subscription.updated",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{SubscriptionStatus as S, Transition as T, *};

    const TRANSITIONS: [T; 10] = [
        T::InvoicePaid,
        T::PaymentFailed,
        T::FirstInvoiceExpired,
        T::TrialEnded,
        T::TrialEndedWithoutPaymentMethod,
        T::RetriesExhausted,
        T::Pause,
        T::Resume,
        T::Cancel,
        T::LatestInvoiceVoided,
    ];

    /// The whole table, written out: status, then the result of each transition in the order
    /// of `TRANSITIONS` (`None`: illegal).
    fn table() -> Vec<(S, [Option<S>; 10])> {
        let n = None;
        vec![
            (
                S::Incomplete,
                [
                    Some(S::Active),
                    Some(S::Incomplete),
                    Some(S::IncompleteExpired),
                    n,
                    n,
                    n,
                    n,
                    n,
                    Some(S::Canceled),
                    n,
                ],
            ),
            (S::IncompleteExpired, [n, n, n, n, n, n, n, n, n, n]),
            (
                S::Trialing,
                [
                    Some(S::Trialing),
                    n,
                    n,
                    Some(S::Active),
                    Some(S::Paused),
                    n,
                    Some(S::Paused),
                    n,
                    Some(S::Canceled),
                    n,
                ],
            ),
            (
                S::Active,
                [
                    Some(S::Active),
                    Some(S::PastDue),
                    n,
                    n,
                    n,
                    n,
                    Some(S::Paused),
                    n,
                    Some(S::Canceled),
                    n,
                ],
            ),
            (
                S::PastDue,
                [
                    Some(S::Active),
                    Some(S::PastDue),
                    n,
                    n,
                    n,
                    Some(S::Unpaid),
                    Some(S::Paused),
                    n,
                    Some(S::Canceled),
                    Some(S::Active),
                ],
            ),
            (
                S::Unpaid,
                [
                    Some(S::Active),
                    Some(S::Unpaid),
                    n,
                    n,
                    n,
                    n,
                    n,
                    n,
                    Some(S::Canceled),
                    Some(S::Active),
                ],
            ),
            (
                S::Paused,
                [n, n, n, n, n, n, n, Some(S::Active), Some(S::Canceled), n],
            ),
            (S::Canceled, [n, n, n, n, n, n, n, n, n, n]),
        ]
    }

    #[test]
    fn every_status_and_transition_gives_what_the_table_says() {
        let table = table();
        assert_eq!(table.len(), S::ALL.len(), "every status is in the table");
        for (from, row) in table {
            for (transition, expected) in TRANSITIONS.into_iter().zip(row) {
                let got = from.apply(transition);
                match expected {
                    Some(to) => assert_eq!(got, Ok(to), "{from} {transition:?}"),
                    None => assert_eq!(
                        got,
                        Err(IllegalTransition { from, transition }),
                        "{from} {transition:?}"
                    ),
                }
            }
        }
    }

    #[test]
    fn an_illegal_transition_names_the_current_status() {
        let err = S::Canceled.apply(T::Pause).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot pause a subscription that is canceled"
        );
        let err = S::Active.apply(T::Resume).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot resume a subscription that is active"
        );
        let err = S::Active.apply(T::TrialEnded).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot end the trial of a subscription that is active"
        );
    }

    #[test]
    fn every_transition_has_its_own_words() {
        let verbs: std::collections::HashSet<&str> = TRANSITIONS.iter().map(|t| t.verb()).collect();
        // The two trial endings share theirs.
        assert_eq!(verbs.len(), TRANSITIONS.len() - 1);
        assert_eq!(T::InvoicePaid.verb(), "record a paid invoice on");
        assert_eq!(T::PaymentFailed.verb(), "record a failed payment on");
        assert_eq!(T::FirstInvoiceExpired.verb(), "expire");
        assert_eq!(T::RetriesExhausted.verb(), "mark unpaid");
        assert_eq!(T::Cancel.verb(), "cancel");
    }

    #[test]
    fn only_canceled_and_expired_subscriptions_are_over() {
        let over: Vec<S> = S::ALL.iter().copied().filter(|s| !s.is_live()).collect();
        assert_eq!(over, vec![S::IncompleteExpired, S::Canceled]);
    }

    #[test]
    fn each_change_records_the_event_stripe_sends_for_it() {
        assert_eq!(
            S::Canceled.event_type(T::Cancel),
            "customer.subscription.deleted"
        );
        assert_eq!(
            S::Paused.event_type(T::Pause),
            "customer.subscription.paused"
        );
        assert_eq!(
            S::Paused.event_type(T::TrialEndedWithoutPaymentMethod),
            "customer.subscription.paused"
        );
        assert_eq!(
            S::Active.event_type(T::Resume),
            "customer.subscription.resumed"
        );
        assert_eq!(
            S::PastDue.event_type(T::PaymentFailed),
            "customer.subscription.updated"
        );
        assert_eq!(
            S::Active.event_type(T::InvoicePaid),
            "customer.subscription.updated"
        );
    }

    #[test]
    fn statuses_read_back_from_their_stored_text() {
        for s in S::ALL {
            assert_eq!(S::parse(s.as_str()), Some(*s));
        }
        assert_eq!(S::parse("cancelled"), None);
    }
}
