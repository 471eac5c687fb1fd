//! Dynamic task mapping (`expand`): a mapped task's own instance works out
//! the list it maps over and creates one instance per element, `TASK[N]`,
//! each with its own tries, retries and log. The list is kept in the
//! expansion's output (`metrics.items`), where each instance reads its
//! element (`{{ item }}`, `{{ map_index }}`). An empty list skips the task.

use std::collections::HashMap;

use super::Runner;
use crate::dag::Task;
use crate::dag::spec::{ExpandSource, ExpandSpec};
use crate::tasks::{Outcome, TaskCtx, TaskError};

/// Expands `task` for the try in `ctx`: computes the list and creates the
/// instances.
pub async fn expand(runner: &Runner, task: &Task, spec: &ExpandSpec, ctx: &TaskCtx) -> Result<Outcome, TaskError> {
    let items = items(spec, ctx).await?;
    let n = items.len();
    if ctx.test_mode {
        return Ok(Outcome::note(format!("would expand into {n} instance(s)")).metric("map_count", n as u64));
    }
    runner
        .store
        .expand_task(ctx.run_id, &task.id, n, task.retries as i32 + 1)
        .await
        .map_err(|e| TaskError::transient(format!("cannot create the mapped instances: {e}")))?;
    tracing::info!(instances = n, "expanded {} into {n} instance(s)", task.id);
    let mut out = Outcome::note(format!("expanded into {n} instance(s)")).metric("map_count", n as u64).metric("items", items);
    if n == 0 {
        out.skipped = true;
        out.note = Some("skipped: expand gave an empty list".into());
    }
    Ok(out)
}

/// The element of instance `n`, from the expansion's recorded output.
pub fn item_of(outputs: &HashMap<String, serde_json::Value>, task: &str, n: i32) -> Result<serde_json::Value, TaskError> {
    outputs.get(task).and_then(|o| o.pointer("/metrics/items")).and_then(|items| items.get(n as usize)).cloned().ok_or_else(|| {
        TaskError::Failed(format!(
            "{task}[{n}] has no element: the expansion of `{task}` was cleared or changed; clear `{task}` to expand it again"
        ))
    })
}

async fn items(spec: &ExpandSpec, ctx: &TaskCtx) -> Result<Vec<serde_json::Value>, TaskError> {
    let not_a_list = |what: &str, got: &serde_json::Value| {
        let kind = match got {
            serde_json::Value::Null => "null",
            serde_json::Value::Bool(_) => "a boolean",
            serde_json::Value::Number(_) => "a number",
            serde_json::Value::String(_) => "a string",
            serde_json::Value::Object(_) => "a mapping",
            serde_json::Value::Array(_) => "a list",
        };
        TaskError::Config(format!("expand: {what} is {kind}, not a list (got `{}`)", crate::secrets::mask(&truncate(&got.to_string()))))
    };
    match spec {
        ExpandSpec::List(values) => {
            let mut out = Vec::with_capacity(values.len());
            for v in values {
                out.push(match v {
                    serde_json::Value::String(s) => ctx.render_native(&serde_yaml::Value::String(s.clone()))?,
                    other => other.clone(),
                });
            }
            Ok(out)
        }
        ExpandSpec::Template(t) => match ctx.render_native(&serde_yaml::Value::String(t.clone()))? {
            serde_json::Value::Array(a) => Ok(a),
            other => Err(not_a_list(&format!("`{t}`"), &other)),
        },
        ExpandSpec::Source(ExpandSource { glob: Some(g), .. }) => {
            let rendered = ctx.render(g)?;
            let full = ctx.project_path(&rendered).to_string_lossy().into_owned();
            let mut files: Vec<String> = glob::glob(&full)
                .map_err(|e| TaskError::Config(format!("expand.glob `{rendered}`: {e}")))?
                .filter_map(Result::ok)
                .filter(|p| p.is_file())
                .map(|p| p.strip_prefix(&ctx.res.project_root).map(|r| r.to_path_buf()).unwrap_or(p).display().to_string())
                .collect();
            files.sort();
            Ok(files.into_iter().map(serde_json::Value::from).collect())
        }
        ExpandSpec::Source(ExpandSource { s3: Some(s), conn, .. }) => {
            let rendered = ctx.render(s)?;
            let id = ctx.render(conn.as_deref().unwrap_or_default())?;
            let c = ctx.conn(&id, "s3")?;
            let client = ctx.res.s3_client(c)?;
            let at = crate::s3::S3Uri::parse(&rendered).map_err(TaskError::Config)?;
            let objects = crate::s3::list(&client, &at)
                .await
                .map_err(|e| TaskError::with_kind(e.kind(), format!("expand.s3 on connection `{id}`: {e}")))?;
            let mut keys: Vec<String> = objects.into_iter().map(|o| format!("s3://{}/{}", at.bucket, o.key)).collect();
            keys.sort();
            Ok(keys.into_iter().map(serde_json::Value::from).collect())
        }
        ExpandSpec::Source(ExpandSource { upstream: Some(u), field, .. }) => {
            let output = ctx
                .upstream
                .get(u)
                .ok_or_else(|| TaskError::Failed(format!("expand.upstream: `{u}` left no output in this run (did it succeed?)")))?;
            let pointer = field.as_deref().unwrap_or("");
            match output.pointer(pointer) {
                Some(serde_json::Value::Array(a)) => Ok(a.clone()),
                Some(other) => Err(not_a_list(&format!("the output of `{u}` at `{pointer}`"), other)),
                None => Err(TaskError::Config(format!("expand: the output of `{u}` has no `{pointer}`"))),
            }
        }
        ExpandSpec::Source(_) => Err(TaskError::Config("expand takes one of `glob`, `s3` and `upstream`".into())),
    }
}

fn truncate(s: &str) -> String {
    if s.chars().count() > 80 { format!("{}…", s.chars().take(80).collect::<String>()) } else { s.to_string() }
}
