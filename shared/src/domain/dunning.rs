//! Dunning: what follows a declined charge of an invoice collected automatically, by the
//! tenant's policy (a list of waits between attempts, and a final action).

use std::time::Duration;

use super::ValidationError;

crate::text_enum! {
    /// What happens to the subscription when dunning gives up.
    pub enum FinalAction {
        /// Canceled at once (Stripe's default).
        Cancel = "cancel",
        /// Marked unpaid: it stays, and its next invoices are still made.
        MarkUnpaid = "mark_unpaid",
        /// Left past due.
        LeavePastDue = "leave_past_due",
    }
}

/// Most retries a policy can schedule.
pub const MAX_RETRIES: usize = 10;
/// Longest wait before a retry, in days.
pub const MAX_WAIT_DAYS: u16 = 60;

/// Declines that a new payment method fixes, not another try of the same one: no retry is
/// scheduled; a new default payment method is charged at once.
pub const NEEDS_NEW_PAYMENT_METHOD: [&str; 3] =
    ["expired_card", "incorrect_cvc", "payment_method_missing"];

/// A tenant's dunning policy (one per mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DunningPolicy {
    retry_waits_days: Vec<u16>,
    pub final_action: FinalAction,
    /// Whether the invoice is marked uncollectible when dunning gives up.
    pub mark_uncollectible: bool,
}

impl Default for DunningPolicy {
    /// Retries after 3, 5 and 7 days (4 attempts over 15 days), then cancel.
    fn default() -> Self {
        Self {
            retry_waits_days: vec![3, 5, 7],
            final_action: FinalAction::Cancel,
            mark_uncollectible: false,
        }
    }
}

/// What comes after a declined attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterDecline {
    /// The next attempt, after this wait.
    RetryAfter(Duration),
    /// No retry with this payment method: a new default one is charged at once; otherwise
    /// the final action after this wait (when the schedule's last attempt would have been).
    AwaitPaymentMethod(Duration),
    /// The final action, now.
    GiveUp,
}

impl DunningPolicy {
    /// A policy; refused when there are more than [`MAX_RETRIES`] waits, or a wait is not 1 to
    /// [`MAX_WAIT_DAYS`] days. No waits: no retry (the final action follows the first decline).
    pub fn new(
        retry_waits_days: Vec<u16>,
        final_action: FinalAction,
        mark_uncollectible: bool,
    ) -> Result<Self, ValidationError> {
        if retry_waits_days.len() > MAX_RETRIES {
            return Err(ValidationError(format!(
                "must have at most {MAX_RETRIES} waits"
            )));
        }
        if retry_waits_days
            .iter()
            .any(|d| *d == 0 || *d > MAX_WAIT_DAYS)
        {
            return Err(ValidationError(format!(
                "each wait must be 1 to {MAX_WAIT_DAYS} days"
            )));
        }
        Ok(Self {
            retry_waits_days,
            final_action,
            mark_uncollectible,
        })
    }

    /// The waits before each retry, in days.
    pub fn retry_waits_days(&self) -> &[u16] {
        &self.retry_waits_days
    }

    /// What follows the decline of attempt `attempt` (the first is 1) with `code` (`hard`:
    /// the issuer advised never to try again): a hard decline gives up at once; one that needs
    /// a new payment method waits for one until the schedule would have ended; any other is
    /// retried after the next wait, while there is one.
    pub fn after_decline(&self, attempt: i32, code: &str, hard: bool) -> AfterDecline {
        let used = usize::try_from(attempt.max(1) - 1).unwrap_or(0);
        let left = self.retry_waits_days.get(used..).unwrap_or(&[]);
        if hard || super::invoice::is_hard_decline(code) || left.is_empty() {
            return AfterDecline::GiveUp;
        }
        if NEEDS_NEW_PAYMENT_METHOD.contains(&code) {
            return AfterDecline::AwaitPaymentMethod(days(
                left.iter().map(|d| u64::from(*d)).sum(),
            ));
        }
        AfterDecline::RetryAfter(days(u64::from(left[0])))
    }
}

impl DunningPolicy {
    /// How long attempt `attempt` (the first is 1) may wait for the customer to authenticate
    /// before dunning ends: until the schedule would have ended (the waits left after it), and
    /// at least [`AUTHENTICATION_WINDOW_DAYS`], so that even a policy without retries leaves the
    /// customer time to act.
    pub fn authentication_window(&self, attempt: i32) -> Duration {
        let used = usize::try_from(attempt.max(1) - 1).unwrap_or(0);
        let left = self.retry_waits_days.get(used..).unwrap_or(&[]);
        let left: u64 = left.iter().map(|d| u64::from(*d)).sum();
        days(left.max(AUTHENTICATION_WINDOW_DAYS))
    }
}

/// The least time a charge waits for the customer to authenticate before dunning ends.
pub const AUTHENTICATION_WINDOW_DAYS: u64 = 1;

fn days(n: u64) -> Duration {
    Duration::from_secs(n * 86_400)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(waits: &[u16]) -> DunningPolicy {
        DunningPolicy::new(waits.to_vec(), FinalAction::Cancel, false).unwrap()
    }

    #[test]
    fn the_default_retries_after_3_5_and_7_days_then_gives_up() {
        let p = DunningPolicy::default();
        assert_eq!(p.retry_waits_days(), &[3, 5, 7]);
        assert_eq!(p.final_action, FinalAction::Cancel);
        assert!(!p.mark_uncollectible);
        let soft = "card_declined";
        assert_eq!(
            p.after_decline(1, soft, false),
            AfterDecline::RetryAfter(days(3))
        );
        assert_eq!(
            p.after_decline(2, soft, false),
            AfterDecline::RetryAfter(days(5))
        );
        assert_eq!(
            p.after_decline(3, soft, false),
            AfterDecline::RetryAfter(days(7))
        );
        assert_eq!(p.after_decline(4, soft, false), AfterDecline::GiveUp);
        assert_eq!(p.after_decline(9, soft, false), AfterDecline::GiveUp);
    }

    #[test]
    fn an_issuer_advising_never_to_try_again_gives_up_at_once_whatever_the_code() {
        let p = policy(&[3, 5, 7]);
        for code in ["insufficient_funds", "card_declined", "expired_card"] {
            assert_eq!(
                p.after_decline(1, code, true),
                AfterDecline::GiveUp,
                "{code}"
            );
        }
        assert_eq!(
            p.after_decline(1, "insufficient_funds", false),
            AfterDecline::RetryAfter(days(3))
        );
    }

    #[test]
    fn hard_declines_give_up_at_once_whatever_is_left() {
        let p = DunningPolicy::default();
        for code in super::super::invoice::HARD_DECLINES {
            assert_eq!(
                p.after_decline(1, code, false),
                AfterDecline::GiveUp,
                "{code}"
            );
        }
        assert_eq!(
            p.after_decline(1, "insufficient_funds", false),
            AfterDecline::RetryAfter(days(3))
        );
    }

    #[test]
    fn a_decline_a_new_card_fixes_waits_until_the_schedule_would_end() {
        let p = policy(&[3, 5, 7]);
        for code in NEEDS_NEW_PAYMENT_METHOD {
            assert_eq!(
                p.after_decline(1, code, false),
                AfterDecline::AwaitPaymentMethod(days(15)),
                "{code}"
            );
            assert_eq!(
                p.after_decline(3, code, false),
                AfterDecline::AwaitPaymentMethod(days(7))
            );
            assert_eq!(p.after_decline(4, code, false), AfterDecline::GiveUp);
        }
    }

    #[test]
    fn a_charge_waits_for_authentication_until_the_schedule_would_end_and_at_least_a_day() {
        let p = DunningPolicy::default();
        assert_eq!(p.authentication_window(1), days(15));
        assert_eq!(p.authentication_window(2), days(12));
        assert_eq!(p.authentication_window(3), days(7));
        assert_eq!(p.authentication_window(4), days(1));
        assert_eq!(p.authentication_window(0), days(15));
        assert_eq!(policy(&[]).authentication_window(1), days(1));
        assert_eq!(policy(&[2]).authentication_window(1), days(2));
    }

    #[test]
    fn no_waits_means_no_retry_and_attempt_numbers_below_one_count_as_the_first() {
        assert_eq!(
            policy(&[]).after_decline(1, "card_declined", false),
            AfterDecline::GiveUp
        );
        let p = policy(&[2, 4]);
        assert_eq!(
            p.after_decline(0, "card_declined", false),
            AfterDecline::RetryAfter(days(2))
        );
        assert_eq!(
            p.after_decline(-3, "card_declined", false),
            AfterDecline::RetryAfter(days(2))
        );
        assert_eq!(
            p.after_decline(2, "card_declined", false),
            AfterDecline::RetryAfter(days(4))
        );
    }

    #[test]
    fn waits_are_1_to_60_days_and_at_most_10() {
        assert!(DunningPolicy::new(vec![1, 60], FinalAction::MarkUnpaid, true).is_ok());
        assert!(DunningPolicy::new(vec![0], FinalAction::Cancel, false).is_err());
        assert!(DunningPolicy::new(vec![61], FinalAction::Cancel, false).is_err());
        assert!(DunningPolicy::new(vec![7; 10], FinalAction::Cancel, false).is_ok());
        assert!(DunningPolicy::new(vec![7; 11], FinalAction::Cancel, false).is_err());
        assert_eq!(days(2), Duration::from_secs(172_800));
    }
}
