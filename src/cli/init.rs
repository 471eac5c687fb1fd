//! `sluice init DIR`: a new project with a working example, so that a first
//! DAG runs minutes after the install: `dags/` with a commented example,
//! `config/` (connections and variables), `sql/`, a small CSV to read, the
//! DAG file schema for editors, and a `.gitignore`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

#[derive(Args, Debug)]
pub struct InitArgs {
    /// The folder to create (it may exist, but must be empty).
    pub dir: PathBuf,
}

const EXAMPLE_DAG: &str = r#"# yaml-language-server: $schema=../dag.schema.json
#
# A first DAG: read a CSV, compute with SQL, check the result, say so.
# Try it:
#   sluice dags validate                    # every problem, with file:line:column
#   sluice run example                      # one run now, with live progress
#   sluice tasks test example daily_totals --run RUN_ID
#                                           # one task again, reading that run's data
description: Daily totals from a CSV export, checked.
# No schedule: it runs when you say (`sluice run`). To run it every day at
# 06:00 in Seoul from the daemon, uncomment:
# schedule: "0 6 * * *"
# timezone: Asia/Seoul
# start_date: 2024-01-01
# catchup: false
default_args:
  retries: 1
  retry_delay: 10s
  # email_on_failure: ["{{ var.alerts_to }}"]

tasks:
  - id: read_sales
    type: extract
    source: data/sales.csv
    schema: { day: date, store: text, amount: int }
    # Bad lines are kept aside with their reason, not lost (one here: an
    # amount that is not a number); more than 10 % bad fails the task.
    on_bad_rows: quarantine

  - id: daily_totals
    type: transform
    inputs: { sales: read_sales }  # the table name in the query, and the task it comes from
    file: sql/daily_totals.sql

  - id: check_totals
    type: check
    input: daily_totals
    checks:
      - row_count: { min: 1 }
      - not_null: [day, total]
      - sql: SELECT * FROM daily_totals WHERE total < 0   # rows returned are failures
        name: no_negative_totals

  - id: report
    type: shell
    depends_on: [daily_totals, check_totals]   # `upstream.X` holds the outputs of the tasks listed here
    command: 'echo "totals for {{ ds }}: {{ upstream.daily_totals.note }}"'

  # To load the totals into Postgres, define the `warehouse` connection in
  # config/connections.yaml and uncomment:
  # - id: load_totals
  #   type: load
  #   conn: warehouse
  #   input: daily_totals
  #   table: reporting.daily_totals
  #   mode: replace            # or append, upsert (with key), replace_partition
  #   create: true
"#;

const EXAMPLE_SQL: &str = "-- polars SQL over the task's inputs (see the README's cookbook).
SELECT day, count(*) AS sales, sum(amount) AS total
FROM sales
GROUP BY day
ORDER BY day
";

const EXAMPLE_CSV: &str = "day,store,amount
2024-11-18,seoul,12000
2024-11-18,busan,8000
2024-11-18,incheon,5000
2024-11-19,seoul,15000
2024-11-19,busan,not-a-number
2024-11-19,incheon,7000
2024-11-20,seoul,9000
2024-11-20,busan,11000
2024-11-20,incheon,4000
2024-11-21,seoul,13000
2024-11-21,busan,6000
2024-11-21,incheon,3000
";

const CONNECTIONS: &str = r#"# Connections, by id. A URI may read the environment as ${VAR} or
# ${VAR:-default}; SLUICE_CONN_<ID> overrides the whole URI. Keep passwords
# in the environment, not in this file.
connections:
  warehouse:
    type: postgres
    description: Where `load` and `sql` tasks write, by default the state database.
    uri: ${SLUICE_DATABASE_URL:-}
  # files:
  #   type: s3
  #   uri: s3://${AWS_ACCESS_KEY_ID}:${AWS_SECRET_ACCESS_KEY}@s3.amazonaws.com?region=ap-northeast-2
  # smtp_default:                # failure notices go through this one
  #   type: smtp
  #   uri: smtp://user:${SMTP_PASSWORD}@smtp.example.com:587?from=etl@example.com
"#;

const VARIABLES: &str = "# Variables, read in templates as {{ var.NAME }}. SLUICE_VAR_<NAME> overrides.
variables:
  alerts_to: data-oncall@example.com
";

const GITIGNORE: &str = "# sluice's working files: staging, private databases, rendered output.
/.sluice/
/outbox/
/reports/out/
";

pub fn run(args: InitArgs) -> Result<ExitCode> {
    let dir = &args.dir;
    if dir.exists() && std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?.next().is_some() {
        return Ok(super::config_exit(&format!(
            "{} is not empty; `sluice init` creates a project in a new or empty folder",
            dir.display()
        )));
    }
    let schema = serde_json::to_string_pretty(&super::dags::dag_schema())?;
    let files: [(&str, &str); 7] = [
        ("dags/example.yaml", EXAMPLE_DAG),
        ("sql/daily_totals.sql", EXAMPLE_SQL),
        ("data/sales.csv", EXAMPLE_CSV),
        ("config/connections.yaml", CONNECTIONS),
        ("config/variables.yaml", VARIABLES),
        (".gitignore", GITIGNORE),
        ("dag.schema.json", &schema),
    ];
    for (rel, text) in files {
        write(dir, rel, text)?;
    }
    outln!("created a sluice project in {}:", dir.display());
    for (rel, _) in files {
        outln!("  {rel}");
    }
    outln!(
        "\nNext:\n  cd {}\n  export SLUICE_DATABASE_URL=postgres://USER:PASSWORD@localhost:5432/DB   # sluice keeps its state there\n  sluice dags validate\n  sluice run example",
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn write(dir: &Path, rel: &str, text: &str) -> Result<()> {
    let path = dir.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}
