//! PostgreSQL errors in words: the server's message with its detail, hint
//! and context, secrets masked. Shared by the state store and the tasks.

/// Formats a sqlx error with the server's detail and hint when it has them.
pub fn describe(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => {
            let mut s = db.message().to_string();
            if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                if let Some(d) = pg.detail() {
                    s.push_str(&format!(" ({d})"));
                }
                if let Some(h) = pg.hint() {
                    s.push_str(&format!("; hint: {h}"));
                }
                if let Some(w) = pg.r#where() {
                    let first = w.lines().next().unwrap_or_default();
                    s.push_str(&format!(" [at: {first}]"));
                }
            }
            crate::secrets::mask(&s)
        }
        other => crate::secrets::mask(&other.to_string()),
    }
}
