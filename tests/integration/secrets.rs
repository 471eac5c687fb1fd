//! Secrets never leak: passwords holding every printable special character,
//! through every output (the terminal, JSON logs, stored try logs,
//! `tasks test`, error messages, the state store and mail), in their raw
//! form and in the forms quoting and escaping give them.

use crate::harness::{messages_to, service};

/// Between them, every printable ASCII character that is not a letter or a
/// digit, and a space.
const PASSWORDS: [&str; 3] = [r#"it's"a\sec-ret"#, "p@ss:w/rd?#&=+%x y", "t!$`{}()[]<>;|*~^_,.x"];

/// The forms a password can take on its way out.
fn forms(pw: &str) -> Vec<String> {
    let json = serde_json::to_string(pw).unwrap();
    vec![
        pw.to_string(),
        json[1..json.len() - 1].to_string(),
        pw.replace('\'', r"'\''"),
        pw.replace('\'', "''"),
        url::form_urlencoded::byte_serialize(pw.as_bytes()).collect(),
        format!("{pw:?}").trim_matches('"').to_string(),
    ]
}

#[track_caller]
fn assert_no_secret(what: &str, text: &str) {
    for pw in PASSWORDS {
        for f in forms(pw) {
            assert!(!text.contains(&f), "{what} shows a password (as `{f}`):\n{text}");
        }
    }
}

sluice_test!(passwords_with_every_special_character_are_masked_everywhere, |p| {
    let smtp = service("SLUICE_TEST_SMTP_PORT");
    let to = format!("secrets-{}@shop.test", p.schema.replace('_', "-"));
    p.set_env("SLUICE_CONN_SMTP_DEFAULT", &format!("smtp://127.0.0.1:{smtp}?tls=none&from=sluice@shop.test"));
    for (i, pw) in PASSWORDS.iter().enumerate() {
        let enc: String = url::form_urlencoded::byte_serialize(pw.as_bytes()).collect();
        p.set_env(&format!("SLUICE_CONN_S{i}"), &format!("postgres://someone:{enc}@127.0.0.1:5432/db"));
    }
    // Each password goes through a shell command (quoted), the command's
    // output, a SQL error message and a failure notice.
    let mut dag = format!("default_args: {{ email_on_failure: [\"{to}\"] }}\ntasks:\n");
    for i in 0..PASSWORDS.len() {
        dag.push_str(&format!(
            "  - id: sh{i}\n    type: shell\n    command: PGPASSWORD=\"{{{{ conn.s{i}.password }}}}\" sh -c 'echo \"pw is $PGPASSWORD\"'\n"
        ));
        dag.push_str(&format!(
            "  - id: argv{i}\n    type: shell\n    command: [echo, \"{{{{ conn.s{i}.password }}}}\", \"{{{{ conn.s{i}.uri }}}}\"]\n"
        ));
        dag.push_str(&format!(
            "  - id: sql{i}\n    type: sql\n    conn: warehouse\n    sql: \"SELECT {{{{ conn.s{i}.password | sqlquote }}}}::int\"\n"
        ));
    }
    p.write("dags/s.yaml", &dag);
    let human = p.sluice(&["run", "s", "--date", "2024-01-05", "-v"]).code(1);
    let json = p.sluice(&["run", "s", "--date", "2024-01-06", "-v", "--log-format", "json"]).code(1);
    let follow = p.sluice(&["run", "s", "--date", "2024-01-07", "--follow"]).code(1);
    // (A password with a `"` breaks the command's own quoting: sh0 fails,
    // and its error must not show the password either.)
    let test = p.sluice(&["tasks", "test", "s", "sh1", "--date", "2024-01-05"]).ok();
    let test_broken = p.sluice(&["tasks", "test", "s", "sh0", "--date", "2024-01-05"]).code(1);
    let test_sql = p.sluice(&["tasks", "test", "s", "sql0", "--date", "2024-01-05"]).code(1);
    for (what, out) in [
        ("run -v", &human),
        ("--log-format json", &json),
        ("--follow", &follow),
        ("tasks test", &test),
        ("tasks test sh0", &test_broken),
        ("tasks test sql", &test_sql),
    ] {
        assert_no_secret(what, &out.all());
    }
    // Masking happened (the test is not vacuous): the echoed passwords show as ***.
    assert!(follow.stderr.contains("pw is ***") && test.stderr.contains("pw is ***"), "{}", follow.stderr);
    assert!(human.stderr.contains("PGPASSWORD=\"***\""), "{}", human.stderr);
    assert!(json.stderr.contains("***"), "{}", json.stderr);

    let run = p.last_run("s").to_string();
    for i in 0..PASSWORDS.len() {
        for task in [format!("sh{i}"), format!("argv{i}"), format!("sql{i}")] {
            let log = p.sluice(&["logs", &run, &task]).ok().stdout;
            assert_no_secret(&format!("sluice logs {task}"), &log);
        }
    }
    let show = p.sluice(&["runs", "show", &run]).ok();
    assert_no_secret("runs show", &show.all());
    let sql_err = p.task_json(run.parse().unwrap(), "sql1")["error"].as_str().unwrap().to_string();
    assert!(sql_err.contains("invalid input syntax") && sql_err.contains("***"), "{sql_err}");

    // The state store: every table of sluice's schema, dumped.
    let dump = std::process::Command::new("pg_dump")
        .args([&crate::harness::db_url(), "--schema", &p.schema, "--data-only"])
        .output()
        .expect("pg_dump is installed");
    assert!(dump.status.success(), "{}", String::from_utf8_lossy(&dump.stderr));
    let dump = String::from_utf8_lossy(&dump.stdout);
    assert!(dump.contains("***"), "the dump holds the masked logs");
    assert_no_secret("the state store", &dump);

    // Failure notices (one per failed sql task and run).
    let msgs = messages_to(&to);
    assert!(msgs.len() >= 3, "{msgs:?}");
    for m in &msgs {
        assert_no_secret("a failure notice", &m.to_string());
    }
});
