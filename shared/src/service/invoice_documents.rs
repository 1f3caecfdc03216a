//! An invoice as a document: a PDF (rendered in-process by [`crate::pdf`]) and the same as an
//! HTML page. Both show the tenant (name and branding), the customer, the number, the dates, the
//! lines and the totals.

use sqlx::PgPool;

use super::{ServiceError, ServiceResult, invoices};
use crate::{
    db::{self, customers::CustomerRow},
    domain::money::{Currency, Money},
    ids::InvoiceId,
    pdf::{self, Line},
    tenancy::Scope,
};

/// What an invoice document shows.
#[derive(Debug, Clone)]
pub struct InvoiceDocument {
    pub invoice: invoices::InvoiceView,
    pub customer: CustomerRow,
    pub tenant_name: String,
    /// The tenant's accent colour (`branding.primary_color`, `#rrggbb`), if it set one.
    pub color: Option<String>,
}

pub async fn document(
    pool: &PgPool,
    scope: Scope,
    id: InvoiceId,
) -> ServiceResult<InvoiceDocument> {
    let invoice = invoices::get_invoice(pool, scope, id).await?;
    let mut conn = pool.acquire().await.map_err(db::DbError::from)?;
    let customer = db::customers::get_any(&mut conn, scope, invoice.invoice.customer_id).await?;
    let (name, branding): (String, serde_json::Value) =
        sqlx::query_as("SELECT company_name, branding FROM tenants WHERE id = $1")
            .bind(scope.tenant_id())
            .fetch_one(&mut *conn)
            .await
            .map_err(db::DbError::from)?;
    let color = branding["primary_color"]
        .as_str()
        .filter(|c| {
            c.len() == 7 && c.starts_with('#') && c[1..].chars().all(|h| h.is_ascii_hexdigit())
        })
        .map(str::to_owned);
    Ok(InvoiceDocument {
        invoice,
        customer,
        tenant_name: name,
        color,
    })
}

impl InvoiceDocument {
    fn money(&self, amount: i64) -> ServiceResult<String> {
        let currency =
            Currency::parse(&self.invoice.invoice.currency).map_err(ServiceError::internal)?;
        Ok(Money::new(amount, currency).display())
    }

    fn number(&self) -> String {
        self.invoice
            .invoice
            .number
            .clone()
            .unwrap_or_else(|| "Draft".into())
    }

    /// (label, amount) rows of the totals, in order.
    fn totals(&self) -> ServiceResult<Vec<(&'static str, String)>> {
        let i = &self.invoice.invoice;
        let mut rows = vec![("Subtotal", self.money(i.subtotal)?)];
        if i.discount != 0 {
            rows.push(("Discount", self.money(-i.discount)?));
        }
        // Exclusive taxes add to the total; inclusive ones are inside the prices already.
        let added = i.total - (i.subtotal - i.discount);
        if added != 0 {
            rows.push(("Tax", self.money(added)?));
        }
        rows.push(("Total", self.money(i.total)?));
        if i.tax != added {
            rows.push(("Tax included in prices", self.money(i.tax - added)?));
        }
        if i.balance_applied != 0 {
            rows.push(("Credit applied", self.money(-i.balance_applied)?));
        }
        rows.push(("Amount due", self.money(i.amount_due)?));
        rows.push(("Amount paid", self.money(i.amount_paid)?));
        rows.push(("Amount remaining", self.money(i.amount_remaining)?));
        Ok(rows)
    }

    fn dates(&self) -> Vec<(&'static str, String)> {
        let i = &self.invoice.invoice;
        let day = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%d").to_string();
        let mut rows = vec![
            ("Date of issue", day(i.finalized_at.unwrap_or(i.created_at))),
            (
                "Period",
                format!("{} to {}", day(i.period_start), day(i.period_end)),
            ),
        ];
        if let Some(d) = i.due_date {
            rows.push(("Due", day(d)));
        }
        if let Some(p) = i.paid_at {
            rows.push(("Paid", day(p)));
        }
        rows
    }

    /// The invoice as a PDF.
    pub fn pdf(&self) -> ServiceResult<Vec<u8>> {
        let i = &self.invoice.invoice;
        let amount_x = pdf::RIGHT - 90.0;
        let mut lines = vec![
            Line::text(20.0, &self.tenant_name).bold(),
            Line::text(16.0, format!("Invoice {}", self.number())).after(10.0),
            Line::text(10.0, format!("Status: {}", i.status)),
        ];
        for (label, value) in self.dates() {
            lines.push(Line::text(10.0, format!("{label}: {value}")));
        }
        lines.push(Line::text(11.0, "Billed to").bold().after(12.0));
        lines.push(Line::text(10.0, &self.customer.name));
        if let Some(email) = &self.customer.email {
            lines.push(Line::text(10.0, email));
        }
        lines.push(
            Line::text(10.0, "Description")
                .at(amount_x - 70.0, "Qty")
                .at(amount_x, "Amount")
                .bold()
                .after(14.0),
        );
        for l in &self.invoice.lines {
            let mut description = l.description.clone();
            if description.chars().count() > 60 {
                description = description.chars().take(59).collect::<String>() + "…";
            }
            lines.push(
                Line::text(10.0, description)
                    .at(amount_x - 70.0, l.quantity.to_string())
                    .at(amount_x, self.money(l.amount)?),
            );
        }
        for (n, (label, value)) in self.totals()?.into_iter().enumerate() {
            let line = Line::text(10.0, "")
                .at(amount_x - 120.0, label)
                .at(amount_x, value);
            lines.push(if n == 0 { line.after(10.0) } else { line });
        }
        Ok(pdf::render(&format!("Invoice {}", self.number()), &lines))
    }

    /// The invoice as an HTML page.
    pub fn html(&self) -> ServiceResult<String> {
        let i = &self.invoice.invoice;
        let color = self.color.as_deref().unwrap_or("#1f2937");
        let mut rows = String::new();
        for l in &self.invoice.lines {
            rows.push_str(&format!(
                "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>\n",
                escape(&l.description),
                l.quantity,
                escape(&self.money(l.amount)?)
            ));
        }
        let mut totals = String::new();
        for (label, value) in self.totals()? {
            totals.push_str(&format!(
                "<tr><th colspan=\"2\">{label}</th><td class=\"n\">{}</td></tr>\n",
                escape(&value)
            ));
        }
        let mut dates = String::new();
        for (label, value) in self.dates() {
            dates.push_str(&format!("<p>{label}: {}</p>\n", escape(&value)));
        }
        let email = self
            .customer
            .email
            .as_deref()
            .map(|e| format!("<p>{}</p>", escape(e)))
            .unwrap_or_default();
        Ok(format!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <title>Invoice {number}</title>\
             <style>body{{font-family:Helvetica,Arial,sans-serif;margin:3em;color:#111}}\
             h1{{color:{color}}}table{{border-collapse:collapse;width:100%;margin-top:2em}}\
             td,th{{padding:.4em;border-bottom:1px solid #ddd;text-align:left}}\
             .n{{text-align:right}}</style></head><body>\n\
             <h1>{tenant}</h1>\n<h2>Invoice {number}</h2>\n<p>Status: {status}</p>\n{dates}\
             <h3>Billed to</h3>\n<p>{customer}</p>{email}\n\
             <table><thead><tr><th>Description</th><th class=\"n\">Qty</th>\
             <th class=\"n\">Amount</th></tr></thead>\n<tbody>\n{rows}</tbody>\n\
             <tfoot>\n{totals}</tfoot></table>\n</body></html>\n",
            number = escape(&self.number()),
            tenant = escape(&self.tenant_name),
            status = i.status,
            customer = escape(&self.customer.name),
        ))
    }
}

/// Text made safe for HTML.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn html_special_characters_are_escaped() {
        assert_eq!(
            escape("<b>\"Tom\" & 'Jerry'</b>"),
            "&lt;b&gt;&quot;Tom&quot; &amp; &#39;Jerry&#39;&lt;/b&gt;"
        );
    }
}
