//! The state store's schema migrations: the SQL files of
//! `src/state/migrations/`, embedded in the binary and applied in order by
//! sqlx's migrator, which records each one's version and checksum in
//! `_sqlx_migrations` and refuses a store whose applied migrations differ.
//!
//! The list is written out here instead of made by sqlx's `migrate!`
//! macro, whose proc macro compiles sqlx, tokio, rustls and ring a second
//! time, for the compiler (62 more units in a cold build). Each migration
//! gets the version, description and checksum (SHA-384 of the file) that
//! `migrate!` gave it, so a store migrated by an earlier build is taken
//! as it is. A new migration is a new file and a new line below; the test
//! at the bottom fails when a file of the directory is not listed.

use std::sync::LazyLock;

use sqlx::SqlStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

/// Each migration's file name and text, in order of version.
macro_rules! migrations {
    ($($file:literal),* $(,)?) => {
        &[$(($file, include_str!(concat!("migrations/", $file)))),*]
    };
}

const FILES: &[(&str, &str)] = migrations![
    "0001_init.sql",
    "0002_error_kinds_and_worker_failures.sql",
    "0003_notices.sql",
    "0004_web.sql",
    "0005_dag_versions.sql",
    "0006_sensors_and_notices.sql",
    "0007_assets.sql",
    "0008_claim_function.sql",
    "0009_apply_decisions_plan_cached.sql",
    "0010_finish_and_claim.sql",
    "0011_open_run.sql",
    "0012_finish_run_with_last_end.sql",
    "0013_chain_step_by_key.sql",
];

/// The migrator of the state store's schema.
pub(super) static MIGRATOR: LazyLock<Migrator> = LazyLock::new(|| Migrator::with_migrations(FILES.iter().map(migration).collect()));

/// A migration from its file, named `<version>_<description>.sql`, as
/// sqlx reads a migrations directory: underscores in the description
/// become spaces, and a file starting with `-- no-transaction` runs outside
/// a transaction.
fn migration(&(file, sql): &(&'static str, &'static str)) -> Migration {
    let (version, description) = file
        .strip_suffix(".sql")
        .and_then(|stem| stem.split_once('_'))
        .and_then(|(v, d)| Some((v.parse::<i64>().ok()?, d)))
        .unwrap_or_else(|| panic!("migration file {file} is not named <version>_<description>.sql"));
    Migration::new(
        version,
        description.replace('_', " ").into(),
        MigrationType::Simple,
        SqlStr::from_static(sql),
        sql.starts_with("-- no-transaction"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file of the directory is a migration here, in order, and
    /// named as sqlx's own reading of the directory names it.
    #[test]
    fn every_migration_file_is_listed_in_order() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/state/migrations");
        let mut on_disk: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        on_disk.sort();
        let listed: Vec<&str> = FILES.iter().map(|(f, _)| *f).collect();
        assert_eq!(listed, on_disk, "list each file of src/state/migrations in FILES (src/state/migrate.rs), in order");

        let versions: Vec<i64> = MIGRATOR.iter().map(|m| m.version).collect();
        assert_eq!(versions, (1..=FILES.len() as i64).collect::<Vec<_>>());
        let first = MIGRATOR.iter().next().unwrap();
        assert_eq!(first.description, "init");
        let twelfth = MIGRATOR.iter().nth(11).unwrap();
        assert_eq!(twelfth.description, "finish run with last end");
        assert!(MIGRATOR.iter().all(|m| !m.no_tx && m.migration_type == MigrationType::Simple));
    }

    /// Each migration's checksum is the one `migrate!` recorded: these are
    /// `SELECT version, encode(checksum, 'hex') FROM _sqlx_migrations` in a
    /// store migrated by the build of bd7c0fa, the last made with the
    /// macro. A released migration is never edited (a store that applied
    /// it would refuse to start); a new one goes in a new file.
    #[test]
    fn checksums_are_those_recorded_by_earlier_builds() {
        const RECORDED: &[(i64, &str)] = &[
            (1, "2d48d87d4843ff8997559189c06224363aa7979dc92ffd8b4f238729421d06a535a4de9d40e49cbce1d2400b89b7778e"),
            (2, "d79e6fa7f4f3e577e0bfa791e91dd89f0051e2c6c287dbfbac25210f802c7fdb5352257001ead2bb368c8090ab31d14c"),
            (3, "9dab1580f9527758e13c0f04c46dcea741ec672ee96a6212a606eb8908779f055f17aeeb3747c4b69651dac20dab1f8a"),
            (4, "7c39ce00d028999802401603433bf0d9edc004f7f0ba5bbf5cf9785e058009ec60ace1c299d65eae43cc489bdc049034"),
            (5, "6138c380a20d65b38d6ec0348d2d685972c55d02ffe24b690ee1d59c3ca00a7a1e3747c16e2bcf8f837c00f40d2385e7"),
            (6, "b04edd78a95532305d98b124241e72ab57bcd27d5825c0877e75dddb0a0fc16e80eea7e05c7a73b864de99dbfb53d3db"),
            (7, "b259adca22242c7df46a884ec08c0b25bf78d03fdfb8db715ca91476bab943bb39d8d66ab29f8c8e00dfd31939b9b873"),
            (8, "620617f8e479f2384927b4b3665e41165448aec1d88f700e9ff6cfe3215c6798af9d3321ab5f703f377f6d7b87a6a6a1"),
            (9, "c67ce414cd1aef772ee12c8691b04dcf291a5c5106abe4a0be93e2b1acf308913388c0529080be93101e8daa9278da07"),
            (10, "4388b6cae523565db88ba9dfc46e0665166f5f73eb14dcc3ce43f0f6b8fb7687e1da36e31a775c6acd2ca74c9ab63e39"),
            (11, "ae14c67c7832cdfa14bb3d3dd40a3842542fde14df0da4330e6b5cbc40efb83077cc07763a1d943597efbdc49c00752f"),
            (12, "e56069be74aa7dc4245be3ecf7b8474eefb196060d3249618db561e7d6b94846560155420554f138a40d13e28cc36b37"),
        ];
        for &(version, recorded) in RECORDED {
            let m = MIGRATOR.iter().find(|m| m.version == version).unwrap();
            let hex: String = m.checksum.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(hex, recorded, "migration {version} ({}) differs from the one stores have applied", m.description);
        }
    }
}
