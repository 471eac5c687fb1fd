//! Tidy: the invariants of `docs/ARCHITECTURE.md` that can be read off the
//! source, checked as rust-analyzer's tidy test does. A failure names the
//! file and line that breaks a rule; fix the code, or change the rule and
//! its documentation together.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir`, relative to the repository root.
fn rust_files(dir: &str) -> Vec<PathBuf> {
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&root().join(dir), &mut out);
    out.sort();
    out.into_iter().map(|p| p.strip_prefix(root()).unwrap().to_path_buf()).collect()
}

/// The lines of a file that are not tests, comments or doc comments, with
/// their numbers. Everything after `#[cfg(test)]` is a test module here.
fn code_lines(file: &Path) -> Vec<(usize, String)> {
    let text = std::fs::read_to_string(root().join(file)).unwrap();
    text.lines()
        .enumerate()
        .take_while(|(_, l)| l.trim() != "#[cfg(test)]")
        .filter(|(_, l)| !l.trim_start().starts_with("//"))
        .map(|(i, l)| (i + 1, l.to_string()))
        .collect()
}

/// Fails listing every `file:line` under `dirs` (minus `except`) whose code
/// contains one of `needles`.
#[track_caller]
fn forbid(rule: &str, dirs: &[&str], except: &[&str], needles: &[&str]) {
    let mut found = Vec::new();
    for dir in dirs {
        for f in rust_files(dir) {
            if except.iter().any(|e| f.starts_with(e)) {
                continue;
            }
            for (n, line) in code_lines(&f) {
                if let Some(needle) = needles.iter().find(|x| line.contains(**x)) {
                    found.push(format!("{}:{n}: `{needle}` in: {}", f.display(), line.trim()));
                }
            }
        }
    }
    assert!(found.is_empty(), "{rule}:\n{}", found.join("\n"));
}

#[test]
fn dag_does_no_io() {
    forbid(
        "`dag/` does no IO (files and connections come through ValidationEnv)",
        &["src/dag"],
        &[],
        &["std::fs", "tokio::fs", "File::", "std::net", "tokio::net", "sqlx::", "reqwest", "std::process", "std::env::var"],
    );
}

#[test]
fn report_rendering_does_no_io_beyond_fonts() {
    forbid(
        "`report/` renders rows it is given (only `report/mod.rs` reads font files)",
        &["src/report"],
        &["src/report/mod.rs"],
        &["std::fs", "tokio::fs", "File::", "std::net", "sqlx::", "reqwest", "std::process"],
    );
    forbid("`report/mod.rs` only reads font files", &["src/report"], &[], &["sqlx::", "reqwest", "fs::write", "tokio::"]);
}

#[test]
fn task_commands_start_through_the_spawner() {
    // A command started any other way would not be in its own process
    // group, nor die with its worker (see src/process/).
    forbid(
        "tasks start commands with `crate::process::spawn` only",
        &["src/tasks", "src/runner", "src/daemon", "src/report"],
        &[],
        &["Command::new", "process::Command", "libc::fork", "posix_spawn"],
    );
}

#[test]
fn anyhow_only_in_the_cli() {
    forbid("`anyhow` only in `cli/` (precise error types below it)", &["src"], &["src/cli", "src/main.rs"], &["anyhow"]);
}

#[test]
fn tasks_never_touch_the_state_store() {
    forbid(
        "tasks and the report renderer never touch the state store (the report reads run statistics through `PipelineView`)",
        &["src/tasks", "src/report"],
        &[],
        &["crate::state", "sluice.dag_runs", "task_tries", "task_instances"],
    );
}

#[test]
fn only_tasks_mod_names_task_types() {
    // The type names, from each task file's `const NAME`.
    let mut names = Vec::new();
    for f in rust_files("src/tasks") {
        for (_, line) in code_lines(&f) {
            if let Some(rest) = line.trim().strip_prefix("const NAME: &'static str = \"") {
                names.push(rest.trim_end_matches("\";").to_string());
            }
        }
    }
    assert!(names.len() >= 9, "found the task types {names:?}");
    // Each is registered in the one registry.
    let registry = std::fs::read_to_string(root().join("src/tasks/mod.rs")).unwrap();
    let block = &registry[registry.find("registry! {").expect("the registry")..];
    let block = &block[..block.find('}').unwrap()];
    for f in rust_files("src/tasks") {
        let module = f.file_stem().unwrap().to_string_lossy().to_string();
        let has_name = code_lines(&f).iter().any(|(_, l)| l.contains("const NAME: &'static str = \""));
        if has_name {
            assert!(
                block.contains(&format!(" {module}::")),
                "{} defines a task type that is not in the registry of src/tasks/mod.rs",
                f.display()
            );
        }
    }
    // No code outside `tasks/` decides by a type's name. (`s3` is also a
    // connection kind, which connections, resources and the S3 source of
    // `expand` may name; `email` is also a notifier's key, which the DAG
    // parser names.)
    let mut found = Vec::new();
    for f in rust_files("src") {
        if f.starts_with("src/tasks") {
            continue;
        }
        for (n, line) in code_lines(&f) {
            for name in &names {
                let connection_kind = name == "s3"
                    && (f.ends_with("connections.rs")
                        || f.ends_with("resources.rs")
                        || f.ends_with("runner/expand.rs")
                        || f.ends_with("dag/parse.rs"));
                let notifier_key = name == "email" && f.ends_with("dag/parse.rs") && line.contains("check_notice_addresses");
                if line.contains(&format!("\"{name}\"")) && !connection_kind && !notifier_key {
                    found.push(format!("{}:{n}: task type `{name}` named in: {}", f.display(), line.trim()));
                }
            }
        }
    }
    assert!(found.is_empty(), "only src/tasks/ names task types:\n{}", found.join("\n"));
}

#[test]
fn the_web_ui_reads_the_store_through_its_methods() {
    forbid(
        "the web UI reads the state store through Store methods, not SQL (docs/ARCHITECTURE.md)",
        &["src/web"],
        &[],
        &["sqlx::", "query("],
    );
}

#[test]
fn every_file_has_a_module_doc() {
    let mut missing = Vec::new();
    for dir in ["src", "tests"] {
        for f in rust_files(dir) {
            let text = std::fs::read_to_string(root().join(&f)).unwrap();
            if !text.trim_start().starts_with("//!") {
                missing.push(f.display().to_string());
            }
        }
    }
    assert!(missing.is_empty(), "files without a `//!` module doc saying what they are for:\n{}", missing.join("\n"));
}
