//! `s3`: object operations and a sensor.
//!
//! ```yaml
//! - id: archive_raw
//!   type: s3
//!   conn: lake
//!   op: put
//!   src: data/raw/{{ ds }}/*.csv          # a local file, folder or glob
//!   dst: s3://shop-archive/raw/{{ ds }}/   # a key, or a prefix ending in /
//! - id: wait_for_export
//!   type: s3
//!   conn: lake
//!   op: wait
//!   uri: s3://shop-exports/{{ ds }}/_SUCCESS
//!   poke_interval: 30s
//!   timeout: 2h
//! ```

use std::path::PathBuf;
use std::time::{Duration, Instant};

use polars::prelude::*;
use schemars::JsonSchema;
use serde::Deserialize;

use super::{Outcome, Run, TaskCtx, TaskError, TaskType, ValidateCx};
use crate::dag::duration::Dur;
use crate::s3::S3Uri;

/// S3 operations: put, get, copy, delete, list, and wait (a sensor).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// An S3 connection.
    pub conn: String,
    /// put, get, copy, delete, list or wait.
    pub op: Op,
    /// put: a local file, folder or glob (relative to the project root);
    /// get and copy: an `s3://` key.
    pub src: Option<String>,
    /// put and copy: an `s3://` key, or a prefix ending in `/`; get: a local path.
    pub dst: Option<String>,
    /// delete, list and wait: `s3://bucket/key`, or a prefix ending in `/`.
    pub uri: Option<String>,
    /// wait: how often to look. Default 30s.
    pub poke_interval: Option<Dur>,
    /// wait: how long to wait before failing. Default 1h.
    pub timeout: Option<Dur>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Put,
    Get,
    Copy,
    Delete,
    List,
    Wait,
}

pub struct S3Task {
    cfg: S3Config,
    client: aws_sdk_s3::Client,
    endpoint: String,
    conn_id: String,
}

impl TaskType for S3Config {
    const NAME: &'static str = "s3";
    type Built = S3Task;

    fn validate(&self, cx: &mut ValidateCx<'_, '_>) {
        cx.check_conn("conn", &self.conn, "s3");
        let need = |cx: &mut ValidateCx<'_, '_>, key: &str, v: &Option<String>, s3: Option<bool>| match v {
            None => cx.error("op", format!("op {:?} needs `{key}`", self.op).to_lowercase()),
            Some(x) if crate::template::is_template(x) => {}
            Some(x) => match s3 {
                Some(true) if S3Uri::parse(x).is_err() => cx.error(key, format!("`{key}` must be an s3://bucket/key URI")),
                Some(false) if x.starts_with("s3://") => cx.error(key, format!("`{key}` must be a local path for this op")),
                _ => {}
            },
        };
        match self.op {
            Op::Put => {
                need(cx, "src", &self.src, Some(false));
                need(cx, "dst", &self.dst, Some(true));
            }
            Op::Get => {
                need(cx, "src", &self.src, Some(true));
                need(cx, "dst", &self.dst, Some(false));
            }
            Op::Copy => {
                need(cx, "src", &self.src, Some(true));
                need(cx, "dst", &self.dst, Some(true));
            }
            Op::Delete | Op::List | Op::Wait => need(cx, "uri", &self.uri, Some(true)),
        }
        if self.op != Op::Wait && (self.poke_interval.is_some() || self.timeout.is_some()) {
            cx.warning("op", "poke_interval and timeout are only used by op wait");
        }
    }

    fn connections(&self) -> Vec<String> {
        vec![self.conn.clone()]
    }

    fn assets(&self) -> Vec<String> {
        match (self.op, &self.dst) {
            (Op::Put | Op::Copy, Some(dst)) if !crate::template::is_template(dst) => vec![dst.clone()],
            _ => Vec::new(),
        }
    }

    async fn build(self, ctx: &TaskCtx) -> Result<S3Task, TaskError> {
        let c = ctx.conn(&self.conn, "s3")?;
        let client = ctx.res.s3_client(c)?;
        Ok(S3Task { endpoint: crate::s3::endpoint_of(c), conn_id: c.id.clone(), client, cfg: self })
    }
}

fn uri(v: &Option<String>, key: &str) -> Result<S3Uri, TaskError> {
    S3Uri::parse(v.as_deref().ok_or_else(|| TaskError::Config(format!("`{key}` is missing")))?).map_err(TaskError::Config)
}

impl S3Task {
    fn fail(&self) -> impl Fn(crate::s3::S3Error) -> TaskError + '_ {
        move |e| TaskError::with_kind(e.kind(), format!("S3 connection `{}` ({}): {e}", self.conn_id, self.endpoint))
    }

    fn local_files(&self, ctx: &TaskCtx, src: &str) -> Result<Vec<PathBuf>, TaskError> {
        let p = ctx.project_path(src);
        let text = p.to_string_lossy().into_owned();
        let mut files: Vec<PathBuf> = if text.contains(['*', '?', '[']) {
            glob::glob(&text).map_err(|e| TaskError::Config(format!("src `{src}`: {e}")))?.filter_map(Result::ok).filter(|f| f.is_file()).collect()
        } else if p.is_dir() {
            std::fs::read_dir(&p)
                .map_err(|e| TaskError::Failed(format!("{}: {e}", p.display())))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.is_file())
                .collect()
        } else if p.is_file() {
            vec![p]
        } else {
            Vec::new()
        };
        files.sort();
        Ok(files)
    }
}

impl Run for S3Task {
    async fn run(self, ctx: &TaskCtx) -> Result<Outcome, TaskError> {
        match self.cfg.op {
            Op::Put => {
                let src = self.cfg.src.clone().unwrap_or_default();
                let dst = uri(&self.cfg.dst, "dst")?;
                let files = self.local_files(ctx, &src)?;
                if files.is_empty() {
                    return Err(TaskError::Failed(format!("put: `{src}` matches no file (paths are relative to the project root)")));
                }
                if files.len() > 1 && !dst.key.ends_with('/') && !dst.key.is_empty() {
                    return Err(TaskError::Failed(format!("put: `{src}` matches {} files; make dst a prefix ending in /", files.len())));
                }
                let mut bytes = 0;
                for f in &files {
                    let to = if dst.key.ends_with('/') || dst.key.is_empty() {
                        dst.join(&f.file_name().unwrap_or_default().to_string_lossy())
                    } else {
                        dst.clone()
                    };
                    bytes += crate::s3::upload(&self.client, f, &to).await.map_err(self.fail())?;
                    tracing::info!("uploaded {} to {to}", f.display());
                }
                Ok(Outcome::note(format!("{} file(s), {bytes} bytes to {dst}", files.len())).metric("objects", files.len() as u64).metric("bytes", bytes))
            }
            Op::Get => {
                let from = uri(&self.cfg.src, "src")?;
                let to = ctx.project_path(self.cfg.dst.as_deref().unwrap_or_default());
                let n = crate::s3::download(&self.client, &from, &to).await.map_err(self.fail())?;
                Ok(Outcome::note(format!("{n} bytes from {from}")).metric("bytes", n))
            }
            Op::Copy => {
                let from = uri(&self.cfg.src, "src")?;
                let mut to = uri(&self.cfg.dst, "dst")?;
                if to.key.ends_with('/') {
                    to = to.join(from.key.rsplit('/').next().unwrap_or_default());
                }
                let source = format!("{}/{}", from.bucket, urlencode_key(&from.key));
                self.client
                    .copy_object()
                    .copy_source(source)
                    .bucket(&to.bucket)
                    .key(&to.key)
                    .send()
                    .await
                    .map_err(|e| self.fail()(crate::s3::req("COPY", &to, e)))?;
                Ok(Outcome::note(format!("copied {from} to {to}")))
            }
            Op::Delete => {
                let at = uri(&self.cfg.uri, "uri")?;
                let keys: Vec<String> = if at.key.ends_with('/') || at.key.is_empty() {
                    crate::s3::list(&self.client, &at).await.map_err(self.fail())?.into_iter().map(|o| o.key).collect()
                } else {
                    vec![at.key.clone()]
                };
                for k in &keys {
                    self.client
                        .delete_object()
                        .bucket(&at.bucket)
                        .key(k)
                        .send()
                        .await
                        .map_err(|e| self.fail()(crate::s3::req("DELETE", &S3Uri { bucket: at.bucket.clone(), key: k.clone() }, e)))?;
                }
                Ok(Outcome::note(format!("deleted {} object(s)", keys.len())).metric("objects", keys.len() as u64))
            }
            Op::List => {
                let at = uri(&self.cfg.uri, "uri")?;
                let objects = crate::s3::list(&self.client, &at).await.map_err(self.fail())?;
                let n = objects.len();
                let mut df = df!(
                    "key" => objects.iter().map(|o| o.key.clone()).collect::<Vec<_>>(),
                    "size" => objects.iter().map(|o| o.size).collect::<Vec<_>>(),
                    "last_modified" => objects.iter().map(|o| o.last_modified.clone()).collect::<Vec<_>>(),
                )
                .map_err(|e| TaskError::Failed(e.to_string()))?;
                let ds = ctx.write_dataset(&ctx.task_id, &mut df).await?;
                let mut out = Outcome::note(format!("{n} object(s) under {at}")).metric("objects", n as u64);
                out.dataset = Some(ds);
                Ok(out)
            }
            Op::Wait => {
                let at = uri(&self.cfg.uri, "uri")?;
                let poke = self.cfg.poke_interval.map_or(Duration::from_secs(30), |d| d.0);
                let timeout = self.cfg.timeout.map_or(Duration::from_secs(3600), |d| d.0);
                let started = Instant::now();
                let mut pokes = 0u64;
                loop {
                    pokes += 1;
                    let found = if at.key.ends_with('/') || at.key.is_empty() {
                        !crate::s3::list(&self.client, &at).await.map_err(self.fail())?.is_empty()
                    } else {
                        crate::s3::exists(&self.client, &at).await.map_err(self.fail())?
                    };
                    if found {
                        return Ok(Outcome::note(format!("{at} found after {pokes} poke(s)")).metric("pokes", pokes));
                    }
                    if started.elapsed() + poke > timeout {
                        return Err(TaskError::Failed(format!(
                            "{at} did not appear within {} ({pokes} pokes)",
                            crate::dag::duration::format(timeout)
                        )));
                    }
                    tracing::info!("{at} not there yet; next poke in {}", crate::dag::duration::format(poke));
                    tokio::time::sleep(poke).await;
                }
            }
        }
    }
}

fn urlencode_key(key: &str) -> String {
    key.split('/').map(|p| url::form_urlencoded::byte_serialize(p.as_bytes()).collect::<String>()).collect::<Vec<_>>().join("/")
}
