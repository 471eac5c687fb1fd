//! Static checks of SQL text at validation: does it parse, and which
//! tables does it read. polars' SQL engine parses with sqlparser's generic
//! dialect, so a query that fails here fails at run time too.

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use sqlparser::ast::{ObjectName, Query, Statement, Visit, Visitor};
use sqlparser::dialect::{Dialect, GenericDialect, PostgreSqlDialect};
use sqlparser::parser::Parser;

/// Which SQL engine runs the text.
#[derive(Debug, Clone, Copy)]
pub enum Engine {
    /// polars' SQL over datasets.
    Polars,
    /// PostgreSQL.
    Postgres,
}

fn dialect(e: Engine) -> Box<dyn Dialect> {
    match e {
        Engine::Polars => Box::new(GenericDialect {}),
        Engine::Postgres => Box::new(PostgreSqlDialect {}),
    }
}

/// Parses SQL; the error names the line and column when sqlparser gives them.
pub fn parse(sql: &str, engine: Engine) -> Result<Vec<Statement>, String> {
    Parser::parse_sql(dialect(engine).as_ref(), sql).map_err(|e| e.to_string().trim_start_matches("sql parser error: ").to_string())
}

/// Table functions polars' SQL knows; they are not tables.
const TABLE_FUNCTIONS: &[&str] = &["read_csv", "read_parquet", "read_json", "read_ipc", "read_ndjson", "unnest", "generate_series"];

/// The tables a query reads, other than its own CTEs, as written.
pub fn tables_read(stmts: &[Statement]) -> BTreeSet<String> {
    struct Collect {
        ctes: BTreeSet<String>,
        tables: BTreeSet<String>,
    }
    impl Visitor for Collect {
        type Break = ();
        fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
            if let Some(w) = &q.with {
                for c in &w.cte_tables {
                    self.ctes.insert(c.alias.name.value.to_lowercase());
                }
            }
            ControlFlow::Continue(())
        }
        fn pre_visit_relation(&mut self, r: &ObjectName) -> ControlFlow<()> {
            let name = r.to_string().trim_matches('"').to_string();
            self.tables.insert(name);
            ControlFlow::Continue(())
        }
    }
    let mut c = Collect { ctes: BTreeSet::new(), tables: BTreeSet::new() };
    for s in stmts {
        let _ = s.visit(&mut c);
    }
    c.tables.into_iter().filter(|t| !c.ctes.contains(&t.to_lowercase()) && !TABLE_FUNCTIONS.contains(&t.to_lowercase().as_str())).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn finds_tables_but_not_ctes() {
        let s = parse(
            "WITH recent AS (SELECT * FROM orders WHERE day > '2024-01-01') SELECT r.*, u.name FROM recent r JOIN users u ON u.id = r.user_id WHERE r.id IN (SELECT id FROM refunds)",
            Engine::Polars,
        )
        .unwrap();
        let t: Vec<String> = tables_read(&s).into_iter().collect();
        assert_eq!(t, vec!["orders", "refunds", "users"]);
        assert!(parse("SELEC 1", Engine::Polars).is_err());
    }

    /// A query nested `n` deep in parentheses, and a third as deep in
    /// subqueries, reading `table`.
    pub(crate) fn nested_sql(n: usize, table: &str) -> String {
        format!(
            "SELECT {}id{} AS x FROM ({}SELECT * FROM {table}{}) q ORDER BY x",
            "(".repeat(n),
            " + 1)".repeat(n),
            "SELECT * FROM (".repeat(n / 3),
            ") s".repeat(n / 3)
        )
    }

    /// The deepest `nested_sql` the parser takes (its recursion limit).
    pub(crate) fn deepest_parsed() -> usize {
        (1..100).rev().find(|&n| parse(&nested_sql(n, "t"), Engine::Polars).is_ok()).unwrap()
    }

    /// Validation parses on an async worker's 2 MiB stack. SQL nested as
    /// deep as sqlparser allows is read there in every build profile
    /// (sqlparser is unoptimised in dev builds: larger frames); deeper SQL
    /// is an error, not a crash.
    #[test]
    fn sql_nested_to_the_parser_limit_parses_on_a_worker_stack() {
        let worker = std::thread::Builder::new().stack_size(2 << 20);
        let read = worker
            .spawn(|| {
                let n = deepest_parsed();
                assert!(n >= 40, "the parser takes SQL {n} deep only");
                let ok = parse(&nested_sql(n, "orders"), Engine::Polars).map(|s| tables_read(&s));
                let pg = parse(&nested_sql(n, "orders"), Engine::Postgres).map(|s| tables_read(&s));
                (ok, pg, parse(&nested_sql(500, "orders"), Engine::Polars).map(|_| ()))
            })
            .unwrap()
            .join()
            .expect("parsing deep SQL panicked");
        assert_eq!(read.0.unwrap().into_iter().collect::<Vec<_>>(), ["orders"]);
        assert_eq!(read.1.unwrap().into_iter().collect::<Vec<_>>(), ["orders"]);
        assert!(read.2.unwrap_err().contains("recursion limit"), "deeper than the limit is refused");
    }
}
