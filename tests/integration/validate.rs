//! The validation corpus: each folder under `tests/dags/validate/` is a
//! small project with DAG files and `expected.txt`, the exact output of
//! `sluice dags validate`. Optional `args` (extra arguments) and `env`
//! (KEY=VALUE lines) files set up the case. Set SLUICE_BLESS=1 to rewrite
//! the expected files after a deliberate change (and review the diff).

use std::path::Path;
use std::process::Command;

use crate::harness::{bin, repo};

fn run_case(dir: &Path) -> (i32, String) {
    let mut c = Command::new(bin());
    c.current_dir(dir).args(["dags", "validate"]);
    for (k, _) in std::env::vars() {
        if k.starts_with("SLUICE_") {
            c.env_remove(k);
        }
    }
    if let Ok(args) = std::fs::read_to_string(dir.join("args")) {
        c.args(args.split_whitespace());
    }
    if let Ok(env) = std::fs::read_to_string(dir.join("env")) {
        for line in env.lines().filter(|l| l.contains('=')) {
            let (k, v) = line.split_once('=').unwrap();
            c.env(k, v);
        }
    }
    let out = c.output().expect("run sluice");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn validation_corpus() {
    let root = repo().join("tests/dags/validate");
    let bless = std::env::var_os("SLUICE_BLESS").is_some();
    let mut failures = Vec::new();
    let mut cases: Vec<_> = std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect();
    cases.sort();
    assert!(cases.len() >= 15, "the corpus is missing cases");
    for case in cases {
        let (code, stdout) = run_case(&case);
        let expected_path = case.join("expected.txt");
        if bless {
            std::fs::write(&expected_path, &stdout).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        let want_code = if expected.contains(": error: ") { 78 } else { 0 };
        if stdout != expected || code != want_code {
            failures.push(format!(
                "{}: exit {code} (want {want_code})\n--- got\n{stdout}--- want\n{expected}",
                case.file_name().unwrap().to_string_lossy()
            ));
        }
    }
    assert!(failures.is_empty(), "{} case(s) differ:\n\n{}", failures.len(), failures.join("\n"));
}
