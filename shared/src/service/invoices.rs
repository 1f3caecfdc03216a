//! Invoices. So far: their numbers, assigned at finalization in the finalizing transaction,
//! sequential per (tenant, mode, prefix) with no gaps.

use super::ServiceResult;
use crate::{db, domain::customer::InvoicePrefix, tenancy::TenantContext, uow::UnitOfWork};

/// `ACME-000123`: the prefix and the number, at least six digits.
pub fn format_number(prefix: &InvoicePrefix, number: i64) -> String {
    format!("{}-{number:06}", prefix.as_str())
}

/// The next invoice number of `prefix` (the customer's, or the tenant's), taken in the unit of
/// work: concurrent finalizations take turns, and one that rolls back gives its number back.
pub async fn assign_number(
    uow: &mut UnitOfWork,
    ctx: &TenantContext,
    prefix: &InvoicePrefix,
) -> ServiceResult<String> {
    let n = db::invoice_numbers::next(uow.conn(), ctx.scope(), prefix.as_str()).await?;
    Ok(format_number(prefix, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_have_their_prefix_and_at_least_six_digits() {
        let acme = InvoicePrefix::parse("ACME").unwrap();
        assert_eq!(format_number(&acme, 1), "ACME-000001");
        assert_eq!(format_number(&acme, 123), "ACME-000123");
        assert_eq!(format_number(&acme, 1_234_567), "ACME-1234567");
    }
}
