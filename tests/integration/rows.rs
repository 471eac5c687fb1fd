//! Every input row is accounted for: each folder under `tests/dags/rows/`
//! is a project with dirty files and `expected.yaml`, which lists for each
//! extract task its state and, when it succeeds, the rows read, the ids of
//! the rows loaded, and the line and reason of every quarantined row (or
//! how many were skipped). A case fails on any row not accounted for:
//! read must equal loaded + quarantined + skipped, and both the dataset
//! and the `_rejects` dataset are read back from the staging area.
//!
//! The same corpus runs again with every extract streaming its rows into a
//! table (`into`): the same counts, the same rows in the table, and no table
//! at all when the task fails.

use std::collections::BTreeMap;
use std::path::Path;

use polars::prelude::*;
use serde::Deserialize;

use crate::harness::{Project, repo};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expected {
    state: String,
    /// A part of the error, for failed tasks.
    error: Option<String>,
    read: Option<u64>,
    /// The `id` column of the loaded rows, in order.
    loaded_ids: Option<Vec<i64>>,
    #[serde(default)]
    quarantined: Vec<(i64, String)>,
    #[serde(default)]
    skipped: u64,
    /// XML records lost after a syntax error (keep_rows_before_error).
    #[serde(default)]
    lost: u64,
}

fn read_parquet(path: &Path) -> DataFrame {
    ParquetReader::new(std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).finish().unwrap()
}

/// Where a case's extracts put their rows.
#[derive(Clone, Copy, PartialEq)]
enum Into {
    /// Their datasets.
    Dataset,
    /// A table named after the task (`into`, created by the load).
    Table,
}

/// Checks one task of a case; returns what is wrong.
fn check(p: &Project, run: i64, task: &str, want: &Expected, into: Into) -> Vec<String> {
    let mut wrong = Vec::new();
    let t = p.task_json(run, task);
    let state = t["state"].as_str().unwrap_or_default();
    if state != want.state {
        return vec![format!("{task}: state {state}, expected {} ({})", want.state, t["error"])];
    }
    if let Some(e) = &want.error {
        let got = t["error"].as_str().unwrap_or_default();
        if !got.contains(e.as_str()) {
            wrong.push(format!("{task}: error `{got}` does not contain `{e}`"));
        }
    }
    if state != "success" {
        if into == Into::Table && !p.scalar(&format!("SELECT to_regclass('{task}')")).is_empty() {
            wrong.push(format!("{task}: failed, but its table exists: the load was not rolled back"));
        }
        return wrong;
    }
    let m = &t["output"]["metrics"];
    let n = |k: &str| m[k].as_u64().unwrap_or(0);
    let (read, loaded, quarantined, skipped) = (n("rows_read"), n("rows"), n("rows_quarantined"), n("rows_skipped"));
    if read != loaded + quarantined + skipped {
        wrong.push(format!("{task}: {read} rows read but {loaded} loaded + {quarantined} quarantined + {skipped} skipped"));
    }
    if let Some(r) = want.read
        && r != read
    {
        wrong.push(format!("{task}: {read} rows read, expected {r}"));
    }
    if skipped != want.skipped {
        wrong.push(format!("{task}: {skipped} rows skipped, expected {}", want.skipped));
    }
    if n("rows_lost") != want.lost {
        wrong.push(format!("{task}: {} rows lost, expected {}", n("rows_lost"), want.lost));
    }
    let staging = p.path().join(format!(".sluice/staging/case/{run}"));
    // The ids of the rows loaded, in order.
    let got: Vec<i64> = match into {
        Into::Dataset => {
            let ds = read_parquet(&staging.join(format!("{task}.parquet")));
            ds.column("id").unwrap().i64().unwrap().into_no_null_iter().collect()
        }
        Into::Table => {
            if n("rows_inserted") != loaded {
                wrong.push(format!("{task}: {} rows inserted into the table, the extract says {loaded}", n("rows_inserted")));
            }
            // One COPY into a new table: its physical order is the order sent.
            p.sql(&format!("SELECT id FROM {task} ORDER BY ctid")).iter().map(|v| v.parse().unwrap()).collect()
        }
    };
    if got.len() as u64 != loaded {
        wrong.push(format!("{task}: {} rows were loaded, the task says {loaded}", got.len()));
    }
    if let Some(ids) = &want.loaded_ids
        && &got != ids
    {
        wrong.push(format!("{task}: loaded ids {got:?}, expected {ids:?}"));
    }
    let rejects_path = staging.join(format!("{task}_rejects.parquet"));
    let got: Vec<(i64, String)> = if rejects_path.exists() {
        let r = read_parquet(&rejects_path);
        let lines = r.column("line").unwrap().i64().unwrap().into_no_null_iter();
        let reasons = r.column("reason").unwrap().str().unwrap().iter().map(|v| v.unwrap_or_default().to_string());
        lines.zip(reasons).collect()
    } else {
        Vec::new()
    };
    if got != want.quarantined {
        wrong.push(format!("{task}: quarantined {got:?}, expected {:?}", want.quarantined));
    }
    if got.len() as u64 != quarantined {
        wrong.push(format!("{task}: {} rows in the rejects dataset, the task says {quarantined}", got.len()));
    }
    wrong
}

#[test]
fn every_row_of_every_format_is_accounted_for() {
    run_corpus(Into::Dataset);
}

#[test]
fn every_row_of_every_format_is_accounted_for_when_streamed_into_a_table() {
    run_corpus(Into::Table);
}

/// Gives every extract of a DAG file `into: <a table named after it>`.
fn stream_into_tables(dag: &Path) {
    let mut doc: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(dag).unwrap()).unwrap();
    for t in doc["tasks"].as_sequence_mut().unwrap() {
        if t["type"].as_str() == Some("extract") {
            let id = t["id"].as_str().unwrap().to_string();
            let into = format!("{{conn: warehouse, table: {id}, mode: replace, create: true}}");
            t.as_mapping_mut().unwrap().insert("into".into(), serde_yaml::from_str(&into).unwrap());
        }
    }
    std::fs::write(dag, serde_yaml::to_string(&doc).unwrap()).unwrap();
}

fn run_corpus(into: Into) {
    let root = repo().join("tests/dags/rows");
    let mut cases: Vec<_> = std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect();
    cases.sort();
    assert!(cases.len() >= 9, "the corpus is missing cases");
    let mut failures = Vec::new();
    for case in cases {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        let p = Project::new(&format!("rows_{name}{}", if into == Into::Table { "_into" } else { "" }));
        p.copy_from(&format!("tests/dags/rows/{name}"));
        if into == Into::Table {
            stream_into_tables(&p.path().join("dags/case.yaml"));
        }
        let expected: BTreeMap<String, Expected> =
            serde_yaml::from_str(&std::fs::read_to_string(case.join("expected.yaml")).unwrap()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let out = p.sluice(&["run", "case", "--date", "2024-01-05"]);
        let want_code = if expected.values().all(|e| e.state == "success") { 0 } else { 1 };
        if out.code != want_code {
            failures.push(format!("{name}: exit {} (want {want_code})\n{}", out.code, out.all()));
            continue;
        }
        let run = p.last_run("case");
        for (task, want) in &expected {
            for w in check(&p, run, task, want, into) {
                failures.push(format!("{name}: {w}"));
            }
        }
    }
    assert!(failures.is_empty(), "{} problem(s):\n{}", failures.len(), failures.join("\n"));
}
