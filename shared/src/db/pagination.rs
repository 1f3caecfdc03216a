//! Cursor pagination over time-sortable ids, newest first.

use uuid::Uuid;

/// A page request: at most `limit` items after or before a cursor.
#[derive(Debug, Clone, Copy)]
pub struct PageRequest {
    pub limit: i64,
    pub cursor: Cursor,
}

#[derive(Debug, Clone, Copy)]
pub enum Cursor {
    First,
    /// Items older than this id (the next page).
    StartingAfter(Uuid),
    /// Items newer than this id (the previous page).
    EndingBefore(Uuid),
}

/// A page of items and whether more exist in the direction of travel.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub has_more: bool,
}

impl PageRequest {
    /// The SQL condition on `id` (with `$n` for the cursor) and the ordering.
    pub fn sql(&self, param: usize) -> (String, &'static str) {
        match self.cursor {
            Cursor::First => ("TRUE".into(), "id DESC"),
            Cursor::StartingAfter(_) => (format!("id < ${param}"), "id DESC"),
            Cursor::EndingBefore(_) => (format!("id > ${param}"), "id ASC"),
        }
    }

    pub fn cursor_uuid(&self) -> Option<Uuid> {
        match self.cursor {
            Cursor::First => None,
            Cursor::StartingAfter(u) | Cursor::EndingBefore(u) => Some(u),
        }
    }

    /// Turns `limit + 1` fetched rows into a page in newest-first order.
    pub fn finish<T>(&self, mut rows: Vec<T>) -> Page<T> {
        let limit = usize::try_from(self.limit).unwrap_or(0);
        let has_more = rows.len() > limit;
        rows.truncate(limit);
        if matches!(self.cursor, Cursor::EndingBefore(_)) {
            rows.reverse();
        }
        Page {
            items: rows,
            has_more,
        }
    }
}
