//! The unit of work: one PostgreSQL transaction per request or job, with the time it runs at.
//!
//! Everything a piece of work writes goes through [`UnitOfWork::conn`] and commits once, so a
//! crash or an error anywhere before [`UnitOfWork::commit`] leaves nothing behind.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool, Postgres, Transaction};

use crate::{clock::Clock, db::DbError};

/// Something to do once the work has committed.
type AfterCommit = Box<dyn FnOnce() + Send>;

/// One transaction and the time read from the clock when it began.
pub struct UnitOfWork {
    tx: Transaction<'static, Postgres>,
    now: DateTime<Utc>,
    after_commit: Vec<AfterCommit>,
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
        })
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

    pub async fn commit(self) -> Result<(), DbError> {
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
