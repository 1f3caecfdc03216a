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
    /// Items older than the first id and newer than the second, newest first.
    Between(Uuid, Uuid),
}

/// A page of items and whether more exist in the direction of travel.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub has_more: bool,
}

impl PageRequest {
    /// The SQL condition on `id` and the ordering; `$param` is the `uuid[]` of [`Self::bounds`].
    pub fn sql(&self, param: usize) -> (String, String) {
        self.sql_on("id", param)
    }

    /// [`Self::sql`] on another column (`d.id`, say).
    pub fn sql_on(&self, column: &str, param: usize) -> (String, String) {
        let b = format!("(${param}::uuid[])");
        match self.cursor {
            Cursor::First => (format!("cardinality({b}) = 0"), format!("{column} DESC")),
            Cursor::StartingAfter(_) => (format!("{column} < {b}[1]"), format!("{column} DESC")),
            Cursor::EndingBefore(_) => (format!("{column} > {b}[1]"), format!("{column} ASC")),
            Cursor::Between(_, _) => (
                format!("{column} < {b}[1] AND {column} > {b}[2]"),
                format!("{column} DESC"),
            ),
        }
    }

    /// The cursor's ids, bound as the `uuid[]` parameter of [`Self::sql`].
    pub fn bounds(&self) -> Vec<Uuid> {
        match self.cursor {
            Cursor::First => Vec::new(),
            Cursor::StartingAfter(u) | Cursor::EndingBefore(u) => vec![u],
            Cursor::Between(after, before) => vec![after, before],
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_binds_both_ids_and_lists_newest_first() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let page = PageRequest {
            limit: 2,
            cursor: Cursor::Between(b, a),
        };
        assert_eq!(page.bounds(), vec![b, a]);
        let (cond, order) = page.sql(3);
        assert_eq!(cond, "id < ($3::uuid[])[1] AND id > ($3::uuid[])[2]");
        assert_eq!(order, "id DESC");
        let done = page.finish(vec![3, 2, 1]);
        assert_eq!((done.items, done.has_more), (vec![3, 2], true));
    }

    #[test]
    fn a_previous_page_is_fetched_oldest_first_and_shown_newest_first() {
        let page = PageRequest {
            limit: 2,
            cursor: Cursor::EndingBefore(Uuid::now_v7()),
        };
        assert_eq!(page.sql(4).1, "id ASC");
        let done = page.finish(vec![1, 2]);
        assert_eq!((done.items, done.has_more), (vec![2, 1], false));
    }
}
