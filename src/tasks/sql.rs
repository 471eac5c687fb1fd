//! `sql`: runs SQL against a Postgres connection, in one transaction.
//!
//! ```yaml
//! - id: refresh_counts
//!   type: sql
//!   conn: warehouse
//!   file: sql/refresh_counts.sql
//!   parameters: ["{{ ds }}", "{{ params.min_orders }}"]   # $1, $2
//! ```
//!
//! The SQL (inline or from a file) is a template; values that come from
//! outside are better passed as bind parameters (`$1`, `$2`...), which is
//! safe from SQL injection. A parameter written as exactly one template
//! expression keeps the expression's type (`"{{ params.limit }}"` binds an
//! integer); other strings bind as text, so cast them in SQL (`$1::date`).

use std::time::Instant;

use schemars::JsonSchema;
use serde::Deserialize;
use sqlx::{Acquire, PgConnection};

use super::{Outcome, Run, TaskCtx, TaskError, TaskType, ValidateCx};

/// Runs SQL statements against Postgres, in one transaction.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SqlConfig {
    /// The id of a Postgres connection.
    pub conn: String,
    /// The SQL to run, inline. Several statements separated by `;` are allowed.
    pub sql: Option<String>,
    /// A file holding the SQL, relative to the project root (e.g. `sql/load.sql`).
    pub file: Option<String>,
    /// Values bound to `$1`, `$2`, ... in every statement that uses them.
    #[serde(default)]
    #[schemars(with = "Vec<serde_json::Value>")]
    pub parameters: Vec<serde_yaml::Value>,
    /// Run all statements in one transaction (the default). Set to false for
    /// statements Postgres refuses inside a transaction (`VACUUM`,
    /// `CREATE INDEX CONCURRENTLY`).
    pub transaction: Option<bool>,
}

pub struct Sql {
    conn: String,
    pool: sqlx::PgPool,
    statements: Vec<Statement>,
    params: Vec<serde_json::Value>,
    transaction: bool,
    source: String,
}

impl TaskType for SqlConfig {
    const NAME: &'static str = "sql";
    const RAW_KEYS: &'static [&'static str] = &["parameters"];
    type Built = Sql;

    fn validate(&self, cx: &mut ValidateCx<'_, '_>) {
        cx.check_conn("conn", &self.conn, "postgres");
        let text = match (&self.sql, &self.file) {
            (Some(s), None) => Some(s.clone()),
            (None, Some(f)) => cx.check_file("file", f),
            (Some(_), Some(_)) => {
                cx.error("file", "give either `sql` or `file`, not both");
                None
            }
            (None, None) => {
                cx.error("conn", "a sql task needs `sql` (inline SQL) or `file` (a SQL file)");
                None
            }
        };
        if let Some(text) = text
            && !crate::template::is_template(&text) {
                let stmts = split_statements(&text);
                if stmts.is_empty() {
                    cx.error(if self.file.is_some() { "file" } else { "sql" }, "there is no SQL statement to run");
                }
                for s in &stmts {
                    if s.max_param > self.parameters.len() {
                        cx.error(
                            "parameters",
                            format!(
                                "the statement on line {} uses ${} but only {} parameter(s) are given",
                                s.line,
                                s.max_param,
                                self.parameters.len()
                            ),
                        );
                    }
                }
            }
    }

    fn connections(&self) -> Vec<String> {
        vec![self.conn.clone()]
    }

    async fn build(self, ctx: &TaskCtx) -> Result<Sql, TaskError> {
        let (text, source) = match (&self.sql, &self.file) {
            (Some(s), _) => (s.clone(), "inline SQL".to_string()),
            (None, Some(f)) => (ctx.read_template_file(f)?, f.clone()),
            (None, None) => return Err(TaskError::Config("a sql task needs `sql` or `file`".into())),
        };
        let statements = split_statements(&text);
        if statements.is_empty() {
            return Err(TaskError::Config(format!("{source} holds no SQL statement")));
        }
        let params = self.parameters.iter().map(|p| ctx.render_native(p)).collect::<Result<Vec<_>, _>>()?;
        for s in &statements {
            if s.max_param > params.len() {
                return Err(TaskError::Config(format!(
                    "{source}, line {}: the statement uses ${} but only {} parameter(s) are given",
                    s.line,
                    s.max_param,
                    params.len()
                )));
            }
        }
        let pool = ctx.pg(&self.conn).await?;
        Ok(Sql { conn: self.conn.clone(), pool, statements, params, transaction: self.transaction.unwrap_or(true), source })
    }
}

impl Run for Sql {
    async fn run(self, ctx: &TaskCtx) -> Result<Outcome, TaskError> {
        let mut conn = self.pool.acquire().await.map_err(|e| TaskError::sql(format!("connection `{}`", self.conn), &e))?;
        let result = self.run_on(ctx, &mut conn).await;
        if result.is_err() {
            // A connection that saw an error is closed, never returned to
            // the pool: a later task must not inherit its state.
            conn.close_on_drop();
        }
        let (n, last_rows) = result?;
        let plural = if n == 1 { "" } else { "s" };
        Ok(Outcome::note(format!("{n} statement{plural}, last: {} rows", super::thousands(last_rows)))
            .metric("statements", n as u64)
            .metric("rows", last_rows))
    }
}

impl Sql {
    /// Runs the statements; returns how many ran and the rows the last one
    /// affected, as the server reported them.
    async fn run_on(&self, ctx: &TaskCtx, conn: &mut PgConnection) -> Result<(usize, u64), TaskError> {
        let n = self.statements.len();
        let mut last_rows = 0u64;
        if self.transaction {
            let mut tx = conn.begin().await.map_err(|e| TaskError::sql("BEGIN", &e))?;
            if let Some(left) = ctx.remaining() {
                // Stop the server-side work too when the try times out.
                let ms = left.as_millis().max(1);
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SET LOCAL statement_timeout = {ms}"))).execute(&mut *tx).await?;
            }
            for (i, s) in self.statements.iter().enumerate() {
                last_rows = self.execute(&mut tx, s, i, n).await?;
            }
            tx.commit().await.map_err(|e| TaskError::sql("COMMIT", &e))?;
        } else {
            for (i, s) in self.statements.iter().enumerate() {
                last_rows = self.execute(conn, s, i, n).await?;
            }
        }
        Ok((n, last_rows))
    }
}

impl Sql {
    async fn execute(&self, conn: &mut PgConnection, s: &Statement, i: usize, n: usize) -> Result<u64, TaskError> {
        let started = Instant::now();
        let result = if s.max_param == 0 {
            sqlx::raw_sql(sqlx::AssertSqlSafe(s.text.clone())).execute(&mut *conn).await
        } else {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(s.text.clone()));
            for p in &self.params[..s.max_param] {
                q = bind_json(q, p);
            }
            q.execute(&mut *conn).await
        };
        let r = result.map_err(|e| TaskError::sql(format!("{}, statement {}/{} (line {})", self.source, i + 1, n, s.line), &e))?;
        tracing::info!(
            "statement {}/{} (line {}): {} rows in {}",
            i + 1,
            n,
            s.line,
            r.rows_affected(),
            crate::dag::duration::format_elapsed(started.elapsed())
        );
        Ok(r.rows_affected())
    }
}

type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// Binds a JSON value with the matching Postgres type.
pub fn bind_json<'q>(q: PgQuery<'q>, v: &serde_json::Value) -> PgQuery<'q> {
    use serde_json::Value;
    match v {
        Value::Null => q.bind(None::<String>),
        Value::Bool(b) => q.bind(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => q.bind(i),
            None => q.bind(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => q.bind(s.clone()),
        other => q.bind(other.clone()),
    }
}

/// One SQL statement of a script.
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    pub text: String,
    /// The line the statement starts on (1-based).
    pub line: usize,
    /// The highest `$n` placeholder used, 0 for none.
    pub max_param: usize,
}

/// Splits a SQL script at top-level `;`, respecting quotes, dollar-quoted
/// bodies and comments, and finds each statement's highest `$n`.
pub fn split_statements(sql: &str) -> Vec<Statement> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    let mut line = 1;
    let mut start_line = 1;
    let mut max_param = 0;
    let mut has_code = false;
    let push = |out: &mut Vec<Statement>, text: &str, line: usize, max_param: usize, has_code: bool| {
        if has_code {
            out.push(Statement { text: text.trim().to_string(), line, max_param });
        }
    };
    while i < b.len() {
        let c = b[i];
        match c {
            b'\n' => {
                line += 1;
                i += 1;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        if b[i] == b'\n' {
                            line += 1;
                        }
                        i += 1;
                    }
                }
            }
            b'\'' | b'"' => {
                if !has_code {
                    start_line = line;
                }
                has_code = true;
                let escapes = c == b'\'' && i > 0 && matches!(b[i - 1], b'E' | b'e');
                i += 1;
                while i < b.len() {
                    if b[i] == b'\n' {
                        line += 1;
                    }
                    if escapes && b[i] == b'\\' {
                        i += 2;
                        continue;
                    }
                    if b[i] == c {
                        if b.get(i + 1) == Some(&c) {
                            i += 2;
                            continue;
                        }
                        i += 1;
                        break;
                    }
                    i += 1;
                }
            }
            b'$' => {
                if !has_code {
                    start_line = line;
                }
                has_code = true;
                // $n placeholder?
                let mut j = i + 1;
                while j < b.len() && b[j].is_ascii_digit() {
                    j += 1;
                }
                if j > i + 1 {
                    let n: usize = sql[i + 1..j].parse().unwrap_or(0);
                    max_param = max_param.max(n);
                    i = j;
                    continue;
                }
                // $tag$ ... $tag$ ?
                let mut k = i + 1;
                while k < b.len() && (b[k].is_ascii_alphanumeric() || b[k] == b'_') {
                    k += 1;
                }
                if k < b.len() && b[k] == b'$' && (k == i + 1 || !b[i + 1].is_ascii_digit()) {
                    let tag = &sql[i..=k];
                    let body_start = k + 1;
                    match sql[body_start..].find(tag) {
                        Some(end) => {
                            line += sql[i..body_start + end].matches('\n').count();
                            i = body_start + end + tag.len();
                        }
                        None => i = b.len(),
                    }
                } else {
                    i += 1;
                }
            }
            b';' => {
                push(&mut out, &sql[start..i], start_line, max_param, has_code);
                i += 1;
                start = i;
                max_param = 0;
                has_code = false;
            }
            c if c.is_ascii_whitespace() => i += 1,
            _ => {
                if !has_code {
                    start_line = line;
                }
                has_code = true;
                i += 1;
            }
        }
    }
    push(&mut out, &sql[start..], start_line, max_param, has_code);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_respecting_quotes_comments_and_dollar_bodies() {
        let sql = "-- header; not a statement\nCREATE TABLE t (a text);\nINSERT INTO t VALUES ('x;y'), ($1);\n\
                   CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql;\n/* c; */ SELECT $2::int, E'a\\';b';\n";
        let s = split_statements(sql);
        assert_eq!(s.len(), 4, "{s:?}");
        assert_eq!(s[0].line, 2);
        assert_eq!(s[1].max_param, 1);
        assert_eq!(s[1].line, 3);
        assert!(s[2].text.contains("SELECT 1;"));
        assert_eq!(s[3].max_param, 2);
        assert_eq!(s[3].line, 5);
    }

    #[test]
    fn empty_scripts_have_no_statements() {
        assert!(split_statements("-- nothing\n;;  \n/* x */").is_empty());
    }
}
