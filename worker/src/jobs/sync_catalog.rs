//! Keeps Stripe in step with a product or price of the catalog (a plan is a product and its
//! plan price), on the tenant's connected account.
//!
//! Every Stripe call carries an idempotency key derived from the object and what the call is
//! for, and a Stripe id is recorded the moment it exists, so a run that is repeated — after a
//! crash, a lost lease or a failing Stripe — never creates a second object. Stripe's prices are
//! immutable: a price is created once and afterwards only (de)activated.

use shared::{
    db::{
        DbError,
        catalog_sync::{self, Synced},
        stripe_accounts, unscoped,
    },
    domain::{
        ValidationError,
        catalog::Metadata,
        interval::Interval,
        pricing::{PriceModel, PriceModelIn},
    },
    ids::{CustomerId, PlanId, ProductId},
    jobs::{Claimed, Finished, Outcome},
    service::invoices,
    stripe::{CustomerSpec, Failure, PriceSpec, ProductSpec, Scheme},
    tenancy::Scope,
};
use uuid::Uuid;

use crate::{Runtime, jobs::stripe_rate};

/// Why a sync did not (fully) happen.
#[derive(Debug)]
enum Stop {
    /// There is no Stripe to sync with; nothing to retry.
    NotSynced(&'static str),
    /// The object is gone.
    Gone,
    /// The platform's own rate limit for the account, or Stripe's 429: come back shortly.
    Later,
    Stripe(Failure),
    Db(DbError),
    /// Synced, but what follows (the charges that waited for it) is not done yet: again.
    After(shared::service::ServiceError),
}

impl From<DbError> for Stop {
    fn from(e: DbError) -> Self {
        match e {
            DbError::NotFound => Stop::Gone,
            other => Stop::Db(other),
        }
    }
}

impl From<Failure> for Stop {
    fn from(f: Failure) -> Self {
        match f {
            Failure::RateLimited => Stop::Later,
            Failure::NotConfigured => Stop::NotSynced("Stripe is not configured for this mode"),
            other => Stop::Stripe(other),
        }
    }
}

/// The account to act on, or why there is none.
async fn account(rt: &Runtime, scope: Scope) -> Result<String, Stop> {
    if !rt.stripe.configured(scope.livemode()) {
        return Err(Stop::NotSynced("Stripe is not configured for this mode"));
    }
    let mut conn = rt.pool.acquire().await.map_err(DbError::from)?;
    let row = stripe_accounts::get(&mut conn, scope).await?;
    row.as_ref()
        .and_then(|r| r.usable_id())
        .map(str::to_owned)
        .ok_or(Stop::NotSynced(
            "no Stripe account is connected in this mode",
        ))
}

fn metadata(
    object: &str,
    id: &str,
    scope: Scope,
    own: &serde_json::Value,
) -> std::collections::HashMap<String, String> {
    let mut m = Metadata::from_json(own);
    m.insert(format!("platform_{object}_id"), id.to_owned());
    m.insert("platform_tenant_id".into(), scope.tenant_id().to_string());
    m
}

/// Runs one sync job and decides what follows.
pub async fn run(rt: &Runtime, job: &Claimed, what: Synced) -> Finished {
    let id = job.id;
    let result = match what {
        Synced::Product => sync_product(rt, id, PlanPrice::Along).await.map(|_| ()),
        Synced::Price => sync_price(rt, id).await,
        Synced::Customer => sync_customer(rt, id).await.map(|_| ()),
        Synced::PaymentMethod => sync_payment_method(rt, id).await,
    };
    let now = rt.clock.now();
    let outcome = match result {
        Ok(()) => Outcome::Succeeded,
        Err(Stop::Gone) => Outcome::Succeeded,
        Err(Stop::NotSynced(reason)) => {
            match catalog_sync::mark_not_synced(&rt.pool, what, id, reason).await {
                Ok(()) => Outcome::Succeeded,
                Err(e) => retry(rt, job, e.to_string()),
            }
        }
        Err(Stop::Later) => Outcome::Defer {
            at: now + chrono::Duration::milliseconds(500 + i64::from(rand_ms())),
        },
        Err(Stop::Stripe(failure)) => {
            let error = failure.to_string();
            let version = current_version(rt, what, id).await;
            let _ = catalog_sync::mark_failed(&rt.pool, what, id, version, &error).await;
            match failure {
                // Retrying a refused request unchanged cannot help: an operator (or a change
                // to the object, which queues a new run) must.
                Failure::Rejected(_) => Outcome::Dead { error },
                _ => retry(rt, job, error),
            }
        }
        Err(Stop::Db(e)) => retry(rt, job, e.to_string()),
        Err(Stop::After(e)) => retry(rt, job, e.to_string()),
    };
    Finished {
        id: job.id,
        token: job.token,
        outcome,
    }
}

fn rand_ms() -> u16 {
    rand::random::<u16>() % 500
}

fn retry(rt: &Runtime, job: &Claimed, error: String) -> Outcome {
    Outcome::after_failure(
        crate::retry_policy(&rt.settings, shared::jobs::Queue::StripeSync),
        job.attempts,
        job.max_attempts,
        rt.clock.now(),
        error,
    )
}

async fn current_version(rt: &Runtime, what: Synced, id: Uuid) -> i32 {
    match what {
        Synced::Product => unscoped::product(&rt.pool, id)
            .await
            .map(|p| p.sync_version),
        Synced::Price => unscoped::price(&rt.pool, id).await.map(|p| p.sync_version),
        Synced::Customer => unscoped::customer(&rt.pool, id)
            .await
            .map(|c| c.sync_version),
        Synced::PaymentMethod => unscoped::payment_method(&rt.pool, id)
            .await
            .map(|p| p.sync_version),
    }
    .unwrap_or(0)
}

/// One run's view of the object it syncs: where, which version, and what Stripe had.
struct Run<'a> {
    rt: &'a Runtime,
    what: Synced,
    id: Uuid,
    /// The object's prefixed id: the stem of its idempotency keys and its metadata.
    key: String,
    scope: Scope,
    account: String,
    version: i32,
    synced_version: i32,
}

impl<'a> Run<'a> {
    async fn new(
        rt: &'a Runtime,
        what: Synced,
        id: Uuid,
        key: String,
        scope: Scope,
        versions: (i32, i32),
    ) -> Result<Run<'a>, Stop> {
        let account = account(rt, scope).await?;
        Ok(Run {
            rt,
            what,
            id,
            key,
            scope,
            account,
            version: versions.0,
            synced_version: versions.1,
        })
    }

    /// Stripe has not yet seen this version.
    fn changed(&self) -> bool {
        self.synced_version < self.version
    }

    /// Waits for the account's rate limit, then makes the call.
    async fn call<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, Failure>>,
    ) -> Result<T, Stop> {
        if !stripe_rate::acquire(self.rt, self.scope.livemode(), &self.account).await {
            return Err(Stop::Later);
        }
        f.await.map_err(Stop::from)
    }

    /// Creates the Stripe product once (its id recorded at once), or brings it up to date.
    async fn product(
        &self,
        existing: Option<&String>,
        spec: &ProductSpec<'_>,
    ) -> Result<String, Stop> {
        let (stripe, lm, acct) = (&self.rt.stripe, self.scope.livemode(), &self.account);
        let Some(existing) = existing else {
            let key = format!("{}-product", self.key);
            let created = self
                .call(stripe.create_product(lm, acct, &key, spec))
                .await?;
            catalog_sync::record_stripe_id(&self.rt.pool, self.what, self.id, &created).await?;
            return Ok(created);
        };
        if self.changed() {
            let key = format!("{}-product-v{}", self.key, self.version);
            self.call(stripe.update_product(lm, acct, &key, existing, spec))
                .await?;
        }
        Ok(existing.clone())
    }

    /// Creates the Stripe price once (prices are immutable in Stripe), then keeps only its
    /// `active` flag in step.
    async fn price(
        &self,
        existing: Option<&String>,
        spec: impl FnOnce() -> Result<PriceSpec<'a>, Stop>,
        active: bool,
    ) -> Result<String, Stop> {
        let (stripe, lm, acct) = (&self.rt.stripe, self.scope.livemode(), &self.account);
        let active_key = format!("{}-price-active-v{}", self.key, self.version);
        let Some(existing) = existing else {
            let key = format!("{}-price", self.key);
            let created = self
                .call(stripe.create_price(lm, acct, &key, &spec()?))
                .await?;
            catalog_sync::record_stripe_id(&self.rt.pool, self.what, self.id, &created).await?;
            if !active {
                self.call(stripe.set_price_active(lm, acct, &active_key, &created, false))
                    .await?;
            }
            return Ok(created);
        };
        if self.changed() {
            self.call(stripe.set_price_active(lm, acct, &active_key, existing, active))
                .await?;
        }
        Ok(existing.clone())
    }

    async fn synced(&self, stripe_id: Option<&str>) -> Result<(), Stop> {
        catalog_sync::mark_synced(
            &self.rt.pool,
            self.what,
            self.id,
            self.version,
            stripe_id,
            self.rt.clock.now(),
        )
        .await?;
        Ok(())
    }
}

fn rejected(e: ValidationError) -> Stop {
    Stop::Stripe(Failure::Rejected(e.0))
}

/// The object a product speaks for in Stripe, and the stem of its idempotency keys and
/// metadata: a plan's product (and price) keep the plan's id (`plan_…`), as when plans were
/// synced on their own, so a sync begun then is finished without a second Stripe object.
fn stem(plan: bool, product: ProductId) -> (&'static str, String) {
    if plan {
        ("plan", PlanId::from_uuid(product.as_uuid()).to_string())
    } else {
        ("product", product.to_string())
    }
}

/// Whether a plan's product brings its plan price along.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PlanPrice {
    /// The product's own job: a new plan is created in Stripe by one job, product then price.
    Along,
    /// The price's job, syncing the product it needs first.
    Apart,
}

/// Syncs a product (and a plan's price when it is behind); returns its Stripe id.
async fn sync_product(rt: &Runtime, id: Uuid, plan_price: PlanPrice) -> Result<String, Stop> {
    let p = unscoped::product(&rt.pool, id).await?;
    let scope = p.scope();
    let (object, key) = stem(p.plan, p.id);
    let versions = (p.sync_version, p.synced_version);
    let run = Run::new(rt, Synced::Product, id, key.clone(), scope, versions).await?;
    let stripe_id = run
        .product(
            p.stripe_product_id.as_ref(),
            &ProductSpec {
                name: &p.name,
                description: &p.description,
                active: p.active,
                metadata: metadata(object, &key, scope, &p.metadata),
            },
        )
        .await?;
    run.synced(Some(&stripe_id)).await?;
    if p.plan && plan_price == PlanPrice::Along {
        let price = unscoped::plan_price(&rt.pool, id).await?;
        if let Some(price) = price.filter(|pr| pr.synced_version < pr.sync_version) {
            Box::pin(sync_price(rt, price.id.as_uuid())).await?;
        }
    }
    Ok(stripe_id)
}

/// Stripe's terms for a price model.
fn scheme(model: &PriceModel) -> Scheme {
    let tiers = |t: &[shared::domain::pricing::Tier]| {
        t.iter()
            .map(|t| (t.up_to, t.unit_amount, t.flat_amount))
            .collect()
    };
    match model.terms() {
        // A flat price is one unit of its amount.
        PriceModelIn::Flat { amount } => Scheme::PerUnit(*amount),
        PriceModelIn::PerUnit { unit_amount } => Scheme::PerUnit(*unit_amount),
        PriceModelIn::Graduated { tiers: t } => Scheme::Tiered {
            graduated: true,
            tiers: tiers(t),
        },
        PriceModelIn::Volume { tiers: t } => Scheme::Tiered {
            graduated: false,
            tiers: tiers(t),
        },
        PriceModelIn::Package {
            amount,
            package_size,
        } => Scheme::Package {
            amount: *amount,
            size: *package_size,
        },
    }
}

async fn sync_price(rt: &Runtime, id: Uuid) -> Result<(), Stop> {
    let p = unscoped::price(&rt.pool, id).await?;
    if p.usage.is_some() {
        return Err(Stop::NotSynced(
            "metered prices are billed by the platform's usage billing, not by Stripe",
        ));
    }
    let scope = p.scope();
    // A plan's price speaks for the plan, as its product does.
    let (object, key) = if p.plan {
        stem(true, p.product_id)
    } else {
        ("price", p.id.to_string())
    };
    let versions = (p.sync_version, p.synced_version);
    let run = Run::new(rt, Synced::Price, id, key.clone(), scope, versions).await?;
    // The product first (once), then the price on it.
    let product = match &p.stripe_price_id {
        Some(_) => String::new(),
        None => match unscoped::product(&rt.pool, p.product_id.as_uuid()).await? {
            q if q.stripe_product_id.is_some() && q.synced_version >= q.sync_version => {
                q.stripe_product_id.unwrap_or_default()
            }
            _ => sync_product(rt, p.product_id.as_uuid(), PlanPrice::Apart).await?,
        },
    };
    let stripe_id = run
        .price(
            p.stripe_price_id.as_ref(),
            || {
                let model: PriceModel = serde_json::from_value(p.model.clone()).map_err(|e| {
                    Stop::Stripe(Failure::Rejected(format!("stored price model: {e}")))
                })?;
                let recurring = p
                    .interval
                    .as_deref()
                    .map(|unit| Interval::from_stored(unit, p.interval_count.unwrap_or(1)))
                    .transpose()
                    .map_err(rejected)?
                    .map(Interval::to_stripe);
                Ok(PriceSpec {
                    product: &product,
                    currency: &p.currency,
                    nickname: &p.nickname,
                    recurring,
                    scheme: scheme(&model),
                    metadata: metadata(object, &key, scope, &p.metadata),
                })
            },
            p.active,
        )
        .await?;
    run.synced(Some(&stripe_id)).await
}

/// Creates the customer on the connected account once (its id recorded at once), or brings it
/// up to date; returns its Stripe id. A deleted customer is left as Stripe has it.
async fn sync_customer(rt: &Runtime, id: Uuid) -> Result<String, Stop> {
    let c = unscoped::customer(&rt.pool, id).await?;
    let scope = c.scope();
    let key = c.id.to_string();
    let versions = (c.sync_version, c.synced_version);
    let run = Run::new(rt, Synced::Customer, id, key.clone(), scope, versions).await?;
    let (stripe, lm, acct) = (&rt.stripe, scope.livemode(), &run.account);
    let spec = CustomerSpec {
        name: &c.name,
        email: c.email.as_deref(),
        metadata: metadata("customer", &key, scope, &c.metadata),
    };
    let stripe_id = match &c.stripe_customer_id {
        None => {
            let created = run
                .call(stripe.create_customer(lm, acct, &format!("{key}-customer"), &spec))
                .await?;
            catalog_sync::record_stripe_id(&rt.pool, Synced::Customer, id, &created).await?;
            created
        }
        Some(existing) => {
            if run.changed() && !c.deleted {
                let k = format!("{key}-customer-v{}", run.version);
                run.call(stripe.update_customer(lm, acct, &k, existing, &spec))
                    .await?;
            }
            existing.clone()
        }
    };
    run.synced(Some(&stripe_id)).await?;
    Ok(stripe_id)
}

/// Attaches a payment method to its customer on the connected account once (the customer
/// synced first); its Stripe id is recorded at once. A detached one is detached there too (once
/// it was attached; one detached before that is never attached).
async fn sync_payment_method(rt: &Runtime, id: Uuid) -> Result<(), Stop> {
    let pm = unscoped::payment_method(&rt.pool, id).await?;
    let scope = pm.scope();
    let key = pm.id.to_string();
    if pm.detached {
        let versions = (pm.sync_version, pm.synced_version);
        let run = Run::new(rt, Synced::PaymentMethod, id, key.clone(), scope, versions).await?;
        if let Some(stripe_id) = &pm.stripe_payment_method_id {
            run.call(rt.stripe.detach_payment_method(
                scope.livemode(),
                &run.account,
                &format!("{key}-detach"),
                stripe_id,
            ))
            .await?;
        }
        return run.synced(None).await;
    }
    if pm.stripe_payment_method_id.is_some() {
        let versions = (pm.sync_version, pm.synced_version);
        let run = Run::new(rt, Synced::PaymentMethod, id, key, scope, versions).await?;
        run.synced(None).await?;
        return charge_again(rt, scope, pm.customer_id).await;
    }
    let versions = (pm.sync_version, pm.synced_version);
    let run = Run::new(rt, Synced::PaymentMethod, id, key.clone(), scope, versions).await?;
    let customer = match unscoped::customer(&rt.pool, pm.customer_id.as_uuid()).await? {
        c if c.stripe_customer_id.is_some() && c.synced_version >= c.sync_version => {
            c.stripe_customer_id.unwrap_or_default()
        }
        _ => sync_customer(rt, pm.customer_id.as_uuid()).await?,
    };
    let attached = run
        .call(rt.stripe.attach_payment_method(
            scope.livemode(),
            &run.account,
            &format!("{key}-attach"),
            &pm.gateway_token,
            &customer,
        ))
        .await?;
    catalog_sync::record_stripe_id(&rt.pool, Synced::PaymentMethod, id, &attached).await?;
    run.synced(Some(&attached)).await?;
    charge_again(rt, scope, pm.customer_id).await
}

/// The charges of a customer whose payment method is attached at Stripe now, that failed
/// (or died) because it was not yet, run again ([`invoices::charge_after_sync`]). A failure
/// is the sync job's: it runs again, finds the method synced, and comes here again.
async fn charge_again(rt: &Runtime, scope: Scope, customer: CustomerId) -> Result<(), Stop> {
    let n = invoices::charge_after_sync(&rt.pool, rt.clock.as_ref(), scope, customer)
        .await
        .map_err(Stop::After)?;
    if n > 0 {
        tracing::info!(%customer, charges = n, "charges waiting for a payment method's sync run again");
    }
    Ok(())
}
