//! Commands that need no database.

use std::process::Command;

use crate::harness::{Project, repo};

#[test]
fn dot_output_renders_with_graphviz() {
    let p = Project::new("dot");
    p.copy_from("tests/dags/run/trigger_rules");
    let out = p.sluice(&["dags", "show", "rules", "--format", "dot"]).ok();
    let mut dot = Command::new("dot")
        .arg("-Tsvg")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("graphviz is installed (scripts/test.sh installs it)");
    use std::io::Write;
    dot.stdin.take().unwrap().write_all(out.stdout.as_bytes()).unwrap();
    let svg = dot.wait_with_output().unwrap();
    assert!(svg.status.success());
    let svg = String::from_utf8_lossy(&svg.stdout);
    assert!(svg.contains("<svg") && svg.contains("none_failed_min_one_success_runs"));
    let mermaid = p.sluice(&["dags", "show", "rules", "--format", "mermaid"]).ok();
    assert!(mermaid.stdout.starts_with("flowchart LR"));
    assert_eq!(mermaid.stdout.matches("-->").count(), out.stdout.matches(" -> ").count());
    let text = p.sluice(&["dags", "show", "rules"]).ok();
    assert!(text.stdout.contains("[3] after_upfail_upfail"), "{}", text.stdout);
}

#[test]
fn the_committed_schema_is_current() {
    let p = Project::new("schema");
    let out = p.sluice(&["dags", "schema"]).ok();
    let committed = std::fs::read_to_string(repo().join("docs/dag.schema.json")).unwrap();
    assert!(out.stdout == committed, "docs/dag.schema.json is stale: run `sluice dags schema > docs/dag.schema.json`");
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let variants = v["properties"]["tasks"]["items"]["oneOf"].as_array().unwrap();
    let shell = variants.iter().find(|x| x["properties"]["type"]["const"] == "shell").unwrap();
    assert_eq!(shell["additionalProperties"], false);
    assert!(shell["properties"]["retries"].is_object() && shell["properties"]["command"].is_object());
}

/// The README's task reference is written by hand; this keeps it honest:
/// every task type has a section, and every key of the type (beyond the
/// keys every task has, documented once) appears in it as `key`.
#[test]
fn the_readme_documents_every_task_key() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let schema: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(repo().join("docs/dag.schema.json")).unwrap()).unwrap();
    let common = readme.split("### Keys every task has").nth(1).expect("a section on common keys").split("\n## ").next().unwrap();
    let mut missing = Vec::new();
    for variant in schema["properties"]["tasks"]["items"]["oneOf"].as_array().unwrap() {
        let ty = variant["properties"]["type"]["const"].as_str().unwrap();
        let Some(section) = readme.split(&format!("#### `{ty}`")).nth(1) else {
            missing.push(format!("a `#### `{ty}`` section"));
            continue;
        };
        let section = section.split("\n#### ").next().unwrap().split("\n## ").next().unwrap();
        for key in variant["properties"].as_object().unwrap().keys() {
            let tick = format!("`{key}`");
            if !section.contains(&tick) && !common.contains(&tick) {
                missing.push(format!("{ty}.{key}"));
            }
        }
    }
    assert!(missing.is_empty(), "README.md does not document: {}", missing.join(", "));
}

#[test]
fn list_works_without_a_database() {
    let p = Project::new("list");
    p.copy_from("tests/dags/validate/one_bad_file_of_two");
    let out = p.sluice(&["dags", "list"]).ok();
    assert!(out.stdout.contains("| good ") && out.stdout.contains("@daily"), "{}", out.stdout);
    assert!(out.stderr.contains("dags/bad.yaml"), "{}", out.stderr);
}

sluice_test!(new_dags_start_paused_only_when_asked, |p| {
    p.write("dags/a.yaml", "tasks:\n  - { id: x, type: shell, command: 'true' }\n");
    p.write("dags/b.yaml", "tasks:\n  - { id: x, type: shell, command: 'true' }\n");
    // Default: active, as sluice documents.
    p.sluice(&["dags", "trigger", "a"]).ok();
    // Airflow's behaviour on request: a DAG the store has not seen starts paused...
    p.set_env("SLUICE_DAGS_PAUSED_AT_CREATION", "true");
    p.sluice(&["dags", "trigger", "b"]).ok();
    // ...and a DAG it knows keeps its flag.
    p.sluice(&["dags", "trigger", "a", "--date", "2024-01-01"]).ok();
    assert_eq!(p.state_sql("SELECT dag_id || ' ' || is_paused FROM dags ORDER BY dag_id"), vec!["a false", "b true"]);
    let bad = p.sluice(&["dags", "list", "--dags-paused-at-creation", "maybe"]);
    assert_eq!(bad.code, 2, "{}", bad.all());
});

sluice_test!(a_run_keeps_the_version_of_the_dag_it_ran, |p| {
    p.write("dags/v.yaml", "tasks:\n  - { id: first, type: shell, command: 'true' }\n");
    p.sluice(&["run", "v"]).ok();
    let run = p.last_run("v").to_string();
    let show = p.sluice(&["runs", "show", &run]).ok();
    assert!(!show.stdout.contains("has changed since"), "{}", show.stdout);
    // The file changes: a task is added.
    p.write(
        "dags/v.yaml",
        "tasks:\n  - { id: first, type: shell, command: 'true' }\n  - { id: second, type: shell, command: 'true', depends_on: [first] }\n",
    );
    let show = p.sluice(&["runs", "show", &run]).ok();
    assert!(show.stdout.contains(&format!("`sluice dags show v --run {run}` draws the version that ran")), "{}", show.stdout);
    let json: serde_json::Value = serde_json::from_str(&p.sluice(&["runs", "show", &run, "--json"]).ok().stdout).unwrap();
    assert_eq!(json["dag_changed_since"], true);
    let then = p.sluice(&["dags", "show", "v", "--run", &run]).ok();
    assert!(then.stdout.contains("first") && !then.stdout.contains("second"), "{}", then.stdout);
    assert!(then.stderr.contains("the file has changed since"), "{}", then.stderr);
    let now = p.sluice(&["dags", "show", "v"]).ok();
    assert!(now.stdout.contains("second"), "{}", now.stdout);
    let wrong = p.sluice(&["dags", "show", "v", "--run", "999999"]);
    assert_eq!(wrong.code, 78, "{}", wrong.all());
});
