//! The unit of work: one PostgreSQL transaction per request or job, with the time it runs at.
//!
//! Everything a piece of work writes goes through [`UnitOfWork::conn`] and commits once, so a
//! crash or an error anywhere before [`UnitOfWork::commit`] leaves nothing behind.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool, Postgres, Transaction};

use crate::{
    clock::Clock,
    db::{DbError, events::NewEvent, invoice_numbers::Deferred},
    domain::customer::InvoicePrefix,
    ids::{EventId, InvoiceId},
    jobs::Claimed,
    service::invoices::Attempt,
    stripe::Stripe,
    tenancy::Scope,
};

/// Something to do once the work has committed.
type AfterCommit = Box<dyn FnOnce() + Send>;

/// One transaction and the time read from the clock when it began.
pub struct UnitOfWork {
    tx: Transaction<'static, Postgres>,
    now: DateTime<Utc>,
    after_commit: Vec<AfterCommit>,
    /// Invoices finalized without their number yet, when numbering is deferred.
    numbering: Option<Deferred>,
    /// The jobs this work queues for its caller to run ([`UnitOfWork::hold_jobs`]).
    holding: Option<Holding>,
}

/// A job queued leased to the caller of a unit of work, and, for a charge, the attempt the
/// work started for it (recorded pending: the charge makes it, with its key).
pub type HeldJob = (Claimed, Option<Attempt>);

/// Jobs queued leased to the caller of a unit of work, which runs them once it commits.
struct Holding {
    /// Until when they are leased to it.
    until: DateTime<Utc>,
    /// The gateways the charges among them go to.
    stripe: Stripe,
    /// Those queued so far, each charge with its attempt when this work started it.
    jobs: Vec<HeldJob>,
}

impl std::fmt::Debug for UnitOfWork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnitOfWork")
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

impl UnitOfWork {
    pub async fn begin(pool: &PgPool, clock: &dyn Clock) -> Result<Self, DbError> {
        Ok(Self {
            tx: pool.begin().await?,
            now: clock.now(),
            after_commit: Vec::new(),
            numbering: None,
            holding: None,
        })
    }

    /// The caller runs the charges this work queues itself once it commits (a worker that
    /// renews subscriptions charges their new invoices at once, through `stripe`'s gateways):
    /// they are queued leased to it until `until`, their first attempts started when they can
    /// be, and [`UnitOfWork::take_held`] gives them. Jobs on a test clock wait for its advance
    /// as always.
    pub fn hold_jobs(&mut self, until: DateTime<Utc>, stripe: &Stripe) {
        self.holding.get_or_insert_with(|| Holding {
            until,
            stripe: stripe.clone(),
            jobs: Vec::new(),
        });
    }

    /// Until when the jobs queued for the caller are leased to it, and the gateways its
    /// charges go to, when it runs them itself.
    pub(crate) fn holding(&self) -> Option<(DateTime<Utc>, Stripe)> {
        self.holding.as_ref().map(|h| (h.until, h.stripe.clone()))
    }

    /// Records jobs queued leased to the caller, each charge with its attempt when started.
    pub(crate) fn held(&mut self, jobs: Vec<HeldJob>) {
        if let Some(h) = self.holding.as_mut() {
            h.jobs.extend(jobs);
        }
    }

    /// The jobs queued leased to the caller ([`UnitOfWork::hold_jobs`]), each charge with the
    /// attempt this work started (recorded pending: the charge makes it, with its key): to run
    /// once the work has committed, and not at all if it does not.
    pub fn take_held(&mut self) -> Vec<HeldJob> {
        self.holding
            .as_mut()
            .map(|h| std::mem::take(&mut h.jobs))
            .unwrap_or_default()
    }

    /// Numbers the invoices this work finalizes at its end, just before committing, not as it
    /// finalizes them: the counter row of a prefix is then locked for the commit only,
    /// not for the rest of the work, and many invoices finalized in one unit of work take
    /// their numbers in one statement. The events recorded in this unit of work from now on are
    /// inserted at the commit too, after the numbering, with the numbers of the invoices they
    /// show: nothing reads either before the commit.
    pub(crate) fn defer_numbering(&mut self) {
        self.numbering.get_or_insert_with(Deferred::default);
    }

    /// Whether finalized invoices are numbered at the commit ([`UnitOfWork::defer_numbering`]).
    pub(crate) fn numbering_deferred(&self) -> bool {
        self.numbering.is_some()
    }

    /// Records that `invoice` takes the next number of `prefix` at the commit (numbering
    /// deferred); in finalization order.
    pub(crate) fn number_at_commit(
        &mut self,
        scope: Scope,
        prefix: InvoicePrefix,
        invoice: InvoiceId,
    ) {
        self.numbering
            .get_or_insert_with(Deferred::default)
            .invoice(scope, prefix, invoice);
    }

    /// Keeps an event to record at the commit, after the numbering, when numbering is deferred
    /// ([`UnitOfWork::defer_numbering`]): an event about an invoice numbered then shows its
    /// number. Its id, taken now; the event back when numbering is not deferred.
    pub(crate) fn record_at_commit(
        &mut self,
        scope: Scope,
        event: NewEvent,
    ) -> Result<EventId, NewEvent> {
        match self.numbering.as_mut() {
            Some(n) => {
                let id = EventId::new();
                n.event(id, scope, event);
                Ok(id)
            }
            None => Err(event),
        }
    }

    /// The connection of the transaction.
    pub fn conn(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    /// The time of this unit of work (read once from the clock).
    pub fn now(&self) -> DateTime<Utc> {
        self.now
    }

    /// Acts at another time from now on: a test clock's, for work on its customers.
    pub fn travel_to(&mut self, now: DateTime<Utc>) {
        self.now = now;
    }

    /// Runs `f` once the work has committed, and not at all if it does not: forgetting cached
    /// credentials, say, which must not happen before the change is visible to others.
    pub fn after_commit(&mut self, f: impl FnOnce() + Send + 'static) {
        self.after_commit.push(Box::new(f));
    }

    pub async fn commit(mut self) -> Result<(), DbError> {
        if let Some(numbering) = self.numbering.take() {
            numbering.assign(&mut self.tx, self.now).await?;
        }
        self.tx.commit().await.map_err(DbError::from)?;
        for f in self.after_commit {
            f();
        }
        Ok(())
    }

    /// Undoes everything (dropping the unit of work does the same).
    pub async fn rollback(self) {
        if let Err(e) = self.tx.rollback().await {
            tracing::debug!(error = %e, "rollback failed; the connection is discarded");
        }
    }
}
