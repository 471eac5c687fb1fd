//! The command line.
//!
//! Each command is a function in one of the submodules; they share [`App`],
//! which knows where the project is and how to reach the state store.

/// Prints on stdout like `println!`; a closed pipe (`sluice runs list |
/// head`) ends the process quietly with status 0, as Unix tools do.
macro_rules! outln {
    () => { $crate::cli::write_out(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::cli::write_out(format_args!("{}\n", format_args!($($arg)*))) };
}

/// Prints on stdout like `print!`; see [`outln!`].
#[allow(unused_macros)]
macro_rules! out {
    ($($arg:tt)*) => { $crate::cli::write_out(format_args!($($arg)*)) };
}

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};

use crate::connections::Connections;
use crate::loader::{DagBag, Project};
use crate::logging::LogFormat;
use crate::state::Store;
use crate::template::Templates;

mod assets;
mod backfill;
mod daemon;
mod dags;
mod demo;
mod init;
mod pools;
mod progress;
mod run;
mod runs;
mod tasks;
mod web;

/// Writes to stdout; a reader that went away ends the process quietly.
pub fn write_out(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    if let Err(e) = o.write_fmt(args).and_then(|_| o.flush())
        && e.kind() == std::io::ErrorKind::BrokenPipe
    {
        crate::process::kill_all_before_exit();
        std::process::exit(0);
    }
}

/// EX_CONFIG from sysexits.h: a configuration file is invalid.
pub const EXIT_CONFIG: u8 = 78;

/// A configuration problem (a missing DAG folder, no database URL, an
/// invalid setting): sluice exits with [`EXIT_CONFIG`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

#[derive(Parser, Debug)]
#[command(name = "sluice", version, about = "A batch ETL orchestrator: YAML DAGs, Postgres state, one small binary.")]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// The folder holding the DAG files; the project root is its parent.
    #[arg(long, global = true, env = "SLUICE_DAGS_DIR", default_value = "dags")]
    pub dags_dir: PathBuf,
    /// The state store: a PostgreSQL URL.
    #[arg(long, global = true, env = "SLUICE_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// The schema holding sluice's tables in the state database.
    #[arg(long, global = true, env = "SLUICE_SCHEMA", default_value = crate::state::DEFAULT_SCHEMA)]
    pub schema: String,
    /// Log format on stderr.
    #[arg(long, global = true, env = "SLUICE_LOG_FORMAT", value_enum, default_value = "human")]
    pub log_format: LogFormat,
    /// More log output on stderr (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Whether a DAG the state store has not seen yet starts paused
    /// (Airflow's `dags_are_paused_at_creation`, true there).
    #[arg(long, global = true, env = "SLUICE_DAGS_PAUSED_AT_CREATION", default_value_t = false, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub dags_paused_at_creation: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// List, check and draw DAGs.
    #[command(subcommand)]
    Dags(dags::DagsCmd),
    /// Create a new project: dags/ with a commented example, config/, sql/,
    /// a small CSV, the DAG schema for editors, a .gitignore.
    Init(init::InitArgs),
    /// Run one DAG run in the foreground.
    Run(run::RunArgs),
    /// The shop's whole job on this machine: a private PostgreSQL if none is
    /// configured, 90 days of generated exports, the daily ETL over them,
    /// customer grades, and a summary. Safe to run again.
    Demo(demo::DemoArgs),
    /// Run the scheduler: create runs on schedule and run their tasks.
    Daemon(daemon::DaemonArgs),
    /// Show the daemons, their heartbeats and the running tasks.
    Status {
        /// Workers silent for longer than this are shown as stale.
        #[arg(long, default_value = "60s", value_parser = crate::dag::duration::parse)]
        heartbeat_timeout: std::time::Duration,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Run a DAG for every schedule interval in a date range (resumable).
    Backfill(backfill::BackfillArgs),
    /// Test or clear tasks.
    #[command(subcommand)]
    Tasks(tasks::TasksCmd),
    /// Look at past runs.
    #[command(subcommand)]
    Runs(runs::RunsCmd),
    /// Show a task try's log.
    Logs(runs::LogsArgs),
    /// Manage the state database.
    #[command(subcommand)]
    Db(DbCmd),
    /// Serve the web UI: DAGs, grid, graph, runs, logs and actions.
    Web(web::WebArgs),
    /// Manage the web UI's users.
    #[command(subcommand)]
    Users(web::UsersCmd),
    /// The assets DAGs update and are scheduled on.
    #[command(subcommand)]
    Assets(assets::AssetsCmd),
    /// Manage the pools whose slots tasks share.
    #[command(subcommand)]
    Pools(pools::PoolsCmd),
    /// Generate an online shop's raw exports (users, products, orders, a
    /// partner XML feed and visit logs) for a date range.
    Generate(GenerateArgs),
}

/// The generated shop's size and seed, shared by `sluice generate` and
/// `sluice demo`.
#[derive(Args, Debug)]
pub struct ShopArgs {
    /// The first day of generated data.
    #[arg(long, default_value = "2024-09-01")]
    pub start: chrono::NaiveDate,
    /// How many days of exports, from --start.
    #[arg(long, default_value_t = 90)]
    pub days: u32,
    /// Customers who exist on the first day (more sign up every day).
    #[arg(long, default_value_t = 10_000)]
    pub users: u32,
    /// Products in the catalogue.
    #[arg(long, default_value_t = 20_000)]
    pub products: u32,
    /// The same seed gives the same bytes.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

impl ShopArgs {
    pub fn options(&self, out: PathBuf, dirty: bool) -> crate::generate::Options {
        crate::generate::Options {
            out,
            start: self.start,
            days: self.days,
            users: self.users,
            products: self.products,
            seed: self.seed,
            dirty,
        }
    }
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Where the files go: one folder per day.
    #[arg(long, default_value = "data/raw")]
    pub out: PathBuf,
    #[command(flatten)]
    pub shop: ShopArgs,
    /// Inject realistic faults (malformed lines, unknown ids, negative
    /// quantities, duplicate lines, CP949 files), listed in faults.json.
    #[arg(long)]
    pub dirty: bool,
}

#[derive(Subcommand, Debug)]
pub enum DbCmd {
    /// Create or upgrade sluice's tables (also done automatically on first use).
    Migrate,
}

/// What every command can use.
pub struct App {
    pub global: Global,
    pub project: Project,
    pub templates: Arc<Templates>,
}

impl App {
    pub fn new(global: Global) -> App {
        let project = Project::new(global.dags_dir.clone());
        App { global, project, templates: Arc::new(Templates::new()) }
    }

    /// Loads the project's connections and DAGs.
    pub fn load(&self, use_env: bool) -> Result<(DagBag, Arc<Connections>)> {
        let (conns, conn_diags) = Connections::load(&self.project.root, use_env);
        let files = crate::loader::dag_files(std::slice::from_ref(&self.project.dags_dir))
            .map_err(|e| ConfigError(format!("{e}; pass --dags-dir or set SLUICE_DAGS_DIR to the folder holding your DAG files")))?;
        let mut bag = crate::loader::load(&files, &self.project.root, &conns, &self.templates);
        bag.diagnostics.extend(conn_diags);
        crate::diag::sort(&mut bag.diagnostics);
        Ok((bag, Arc::new(conns)))
    }

    /// Connects to the state store (migrating it on first use).
    pub async fn store(&self) -> Result<Store> {
        self.open_store(false).await
    }

    /// [`App::store`] with a pool that stays open while idle (the daemon).
    pub async fn store_warm(&self) -> Result<Store> {
        self.open_store(true).await
    }

    async fn open_store(&self, warm: bool) -> Result<Store> {
        let Some(url) = &self.global.database_url else {
            return Err(ConfigError(
                "no state database: set SLUICE_DATABASE_URL (e.g. postgres://user:pass@localhost:5432/sluice) or pass --database-url"
                    .into(),
            )
            .into());
        };
        let store = match warm {
            true => Store::connect_warm(url, &self.global.schema).await?,
            false => Store::connect(url, &self.global.schema).await?,
        };
        let store = store.with_paused_at_creation(self.global.dags_paused_at_creation);
        // config/pools.yaml is written into the store by every command
        // that opens it: the file wins for the pools it lists.
        let pools = crate::pools::load(&self.project.root).map_err(ConfigError)?;
        let rows: Vec<(String, i32, String)> =
            pools.into_iter().map(|(name, p)| (name, i32::try_from(p.slots).unwrap_or(i32::MAX), p.description)).collect();
        store.put_pools(&rows).await?;
        Ok(store)
    }

    /// The clients tasks share. An invalid `SLUICE_STAGING` is a config error.
    pub fn resources(&self, conns: Arc<Connections>) -> Result<Arc<crate::resources::Resources>> {
        let res = crate::resources::Resources::new(self.project.root.clone(), conns, self.templates.clone())
            .map_err(|e| ConfigError(format!("SLUICE_STAGING: {e}")))?;
        Ok(Arc::new(res))
    }

    /// [`App::resources`], with the staging area checked: an S3 staging
    /// prefix that cannot be reached is a config error at start.
    pub async fn checked_resources(&self, conns: Arc<Connections>) -> Result<Arc<crate::resources::Resources>> {
        let res = self.resources(conns)?;
        res.check_staging().await.map_err(ConfigError)?;
        Ok(res)
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The daemon says what it does at the default level (what it loaded,
    // where it listens, each run created and finished); other commands
    // print their own output and only warnings besides.
    let quiet = if matches!(cli.command, Command::Daemon(_) | Command::Web(_)) { tracing::Level::INFO } else { tracing::Level::WARN };
    let default_level = match cli.global.verbose {
        0 => quiet,
        1 => tracing::Level::INFO,
        _ => tracing::Level::DEBUG,
    };
    crate::logging::init(cli.global.log_format, default_level, cli.global.verbose > 0);
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(dispatch(cli));
    // Do not wait for detached background work (pool reapers...).
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    // Commands of interrupted or timed-out tries get their SIGKILL now:
    // none outlives sluice.
    crate::process::kill_all_before_exit();
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", crate::secrets::mask(&format!("{e:#}")));
            if e.chain().any(|c| c.downcast_ref::<ConfigError>().is_some()) { ExitCode::from(EXIT_CONFIG) } else { ExitCode::FAILURE }
        }
    }
}

async fn dispatch(cli: Cli) -> Result<ExitCode> {
    let app = App::new(cli.global);
    match cli.command {
        Command::Dags(cmd) => dags::run(&app, cmd).await,
        Command::Init(args) => init::run(args),
        Command::Run(args) => run::run(&app, args).await,
        Command::Backfill(args) => backfill::run(&app, args).await,
        Command::Demo(args) => demo::run(&app, args).await,
        Command::Daemon(args) => daemon::daemon(&app, args).await,
        Command::Status { heartbeat_timeout, json } => daemon::status(&app, heartbeat_timeout, json).await,
        Command::Tasks(cmd) => tasks::run(&app, cmd).await,
        Command::Runs(cmd) => runs::run(&app, cmd).await,
        Command::Logs(args) => runs::logs(&app, args).await,
        Command::Web(args) => web::web(&app, args).await,
        Command::Users(cmd) => web::users(&app, cmd).await,
        Command::Pools(cmd) => pools::run(&app, cmd).await,
        Command::Assets(cmd) => assets::run(&app, cmd).await,
        Command::Generate(a) => {
            let opts = a.shop.options(a.out.clone(), a.dirty);
            let started = std::time::Instant::now();
            let s = tokio::task::spawn_blocking(move || crate::generate::generate(&opts)).await??;
            outln!(
                "generated {} days into {}: {} users, {} products, {} orders ({} lines), {} visit events, {} faults, {:.1} MB in {}",
                s.days,
                a.out.display(),
                s.users,
                s.products,
                s.orders,
                s.order_lines,
                s.visit_lines,
                s.faults,
                s.bytes as f64 / 1e6,
                crate::dag::duration::format_elapsed(started.elapsed())
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Db(DbCmd::Migrate) => {
            let store = app.store().await.context("opening the state database")?;
            outln!("state database is up to date (schema `{}`)", store.schema());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Parses `--date YYYY-MM-DD` / `--logical-date RFC3339` into a manual run date.
/// A DAG with the connections it may use.
pub type Loaded = (Arc<crate::dag::Dag>, Arc<Connections>);

/// Loads one DAG by id. An `Err` inside is the exit code after printing why
/// it could not be loaded (EX_CONFIG).
pub fn load_dag(app: &App, dag_id: &str) -> Result<Result<Loaded, ExitCode>> {
    let (bag, conns) = app.load(true)?;
    match bag.get(dag_id) {
        Ok(d) => Ok(Ok((d, conns))),
        Err(e) => Ok(Err(config_exit(&e))),
    }
}

/// The DAG's params with `--conf KEY=VALUE` applied. An `Err` inside is the
/// exit code after printing which value does not fit its param (EX_CONFIG).
pub fn conf_params(dag: &crate::dag::Dag, conf: &[String]) -> Result<Result<serde_json::Map<String, serde_json::Value>, ExitCode>> {
    let conf = crate::dag::parse_conf_args(conf).map_err(anyhow::Error::msg)?;
    Ok(dag.resolve_params(&conf).map_err(|e| config_exit(&e)))
}

/// The interval a manual run covers and the params it overrides: the same
/// flags for `sluice run`, `sluice dags trigger` and `sluice tasks test`.
#[derive(clap::Args, Debug)]
pub struct IntervalArgs {
    /// The interval that starts on this day (YYYY-MM-DD, in the DAG's time zone). Default: now.
    #[arg(long, conflicts_with = "logical_date")]
    pub date: Option<String>,
    /// The interval that starts at this tick (RFC 3339).
    #[arg(long)]
    pub logical_date: Option<String>,
    /// Override a param: KEY=VALUE (repeatable), or one JSON object.
    #[arg(long = "conf", value_name = "KEY=VALUE")]
    pub conf: Vec<String>,
}

impl IntervalArgs {
    pub fn when(&self) -> Result<crate::dag::ManualWhen> {
        manual_when(self.date.as_deref(), self.logical_date.as_deref())
    }
}

fn manual_when(date: Option<&str>, logical: Option<&str>) -> Result<crate::dag::ManualWhen> {
    use crate::dag::ManualWhen;
    match (date, logical) {
        (Some(_), Some(_)) => bail!("give --date or --logical-date, not both"),
        (Some(d), None) => {
            let d = chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").with_context(|| format!("--date {d}: expected YYYY-MM-DD"))?;
            Ok(ManualWhen::Date(d))
        }
        (None, Some(t)) => {
            let t = chrono::DateTime::parse_from_rfc3339(t)
                .with_context(|| format!("--logical-date {t}: expected an RFC 3339 timestamp such as 2024-01-05T00:00:00Z"))?;
            Ok(ManualWhen::Logical(t.with_timezone(&chrono::Utc)))
        }
        (None, None) => Ok(ManualWhen::Now),
    }
}

/// A fatal config problem with a DAG: print it and exit with EX_CONFIG.
/// An action refused: bad input or an unknown id exits 78 with the reason;
/// a conflict with the current state and a store failure are errors.
pub fn action_exit(e: crate::actions::ActionError) -> Result<ExitCode> {
    use crate::actions::ActionError;
    match e {
        ActionError::Invalid(m) | ActionError::NotFound(m) => Ok(config_exit(&m)),
        ActionError::Conflict(m) => Err(anyhow::Error::msg(m)),
        ActionError::State(e) => Err(e.into()),
    }
}

pub fn config_exit(msg: &str) -> ExitCode {
    eprintln!("error: {}", crate::secrets::mask(msg));
    ExitCode::from(EXIT_CONFIG)
}
