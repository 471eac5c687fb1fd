//! Fetching an extract's source to local files: a glob of project files,
//! S3 objects, an HTTP download, or a Postgres query streamed out as CSV.

use std::path::PathBuf;

use super::{Extract, Source};
use crate::formats::SourceFile;
use crate::s3::S3Uri;
use crate::tasks::error::error_chain;
use crate::tasks::{TaskCtx, TaskError};

impl Extract {
    pub(super) async fn fetch(&self, ctx: &TaskCtx) -> Result<Vec<SourceFile>, TaskError> {
        match &self.source {
            Source::Query { sql, conn } => self.fetch_query(ctx, sql, conn).await,
            Source::S3 { uri, conn, client } => self.fetch_s3(ctx, uri, conn, client).await,
            Source::Http { url, conn } => self.fetch_http(ctx, url, conn.as_ref()).await,
            Source::Files(src) => {
                let pattern = ctx.project_path(src);
                let text = pattern.to_string_lossy().into_owned();
                let mut files: Vec<PathBuf> = if text.contains(['*', '?', '[']) {
                    glob::glob(&text)
                        .map_err(|e| TaskError::Config(format!("source: `{src}` is not a valid glob: {e}")))?
                        .filter_map(Result::ok)
                        .filter(|p| p.is_file())
                        .collect()
                } else if pattern.is_file() {
                    vec![pattern.clone()]
                } else {
                    Vec::new()
                };
                files.sort();
                Ok(files
                    .into_iter()
                    .map(|p| {
                        let name = p.strip_prefix(&ctx.res.project_root).unwrap_or(&p).display().to_string();
                        SourceFile { path: p, name }
                    })
                    .collect())
            }
        }
    }

    /// Streams a query's rows out of Postgres as CSV into a scratch file.
    async fn fetch_query(&self, ctx: &TaskCtx, query: &str, conn: &crate::connections::Connection) -> Result<Vec<SourceFile>, TaskError> {
        use futures::StreamExt;
        use tokio::io::AsyncWriteExt;
        let pool = ctx.res.pg_pool(conn).await?;
        let mut db = pool.acquire().await.map_err(|e| TaskError::sql(format!("connection `{}`", conn.id), &e))?;
        let q = query.trim().trim_end_matches(';');
        let local = ctx.scratch.path()?.join("query.csv");
        let copy = async {
            let mut stream = db.copy_out_raw(&format!("COPY ({q}) TO STDOUT WITH (FORMAT csv, HEADER true)")).await?;
            let mut file =
                tokio::fs::File::create(&local).await.map_err(|e| sqlx::Error::Io(std::io::Error::new(e.kind(), format!("{}: {e}", local.display()))))?;
            let mut n = 0usize;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                n += chunk.len();
                file.write_all(&chunk).await?;
            }
            file.flush().await?;
            Ok::<usize, sqlx::Error>(n)
        };
        let n = match copy.await {
            Ok(n) => n,
            Err(e) => {
                // A connection that saw an error mid-COPY is not returned to
                // the pool: its protocol state is unknown.
                db.close_on_drop();
                return Err(TaskError::sql("the query failed", &e));
            }
        };
        tracing::info!(bytes = n, "query read from `{}`", conn.id);
        Ok(vec![SourceFile { path: local, name: format!("query on {}", conn.id) }])
    }

    async fn fetch_s3(
        &self,
        ctx: &TaskCtx,
        uri: &S3Uri,
        conn: &crate::connections::Connection,
        client: &aws_sdk_s3::Client,
    ) -> Result<Vec<SourceFile>, TaskError> {
        let fail = |e: crate::s3::S3Error| {
            TaskError::with_kind(e.kind(), format!("S3 connection `{}` ({}): {e}", conn.id, crate::s3::endpoint_of(conn)))
        };
        let keys: Vec<String> = if let Some((prefix, pat)) = crate::s3::glob_parts(&uri.key) {
            let listed = crate::s3::list(client, &S3Uri { bucket: uri.bucket.clone(), key: prefix }).await.map_err(fail)?;
            listed.into_iter().map(|o| o.key).filter(|k| pat.matches(k)).collect()
        } else if uri.key.is_empty() || uri.key.ends_with('/') {
            crate::s3::list(client, uri).await.map_err(fail)?.into_iter().map(|o| o.key).filter(|k| !k.ends_with('/')).collect()
        } else if crate::s3::exists(client, uri).await.map_err(fail)? {
            vec![uri.key.clone()]
        } else {
            Vec::new()
        };
        let mut out = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let obj = S3Uri { bucket: uri.bucket.clone(), key: key.clone() };
            let local = ctx.scratch.path()?.join(format!("src-{i}-{}", key.rsplit('/').next().unwrap_or("object")));
            let n = tokio::time::timeout(self.timeout(), crate::s3::download(client, &obj, &local))
                .await
                .map_err(|_| TaskError::transient(format!("downloading {obj} timed out after {}", crate::dag::duration::format(self.timeout()))))?
                .map_err(fail)?;
            tracing::info!(bytes = n, "downloaded {obj}");
            out.push(SourceFile { path: local, name: obj.to_string() });
        }
        Ok(out)
    }

    fn timeout(&self) -> std::time::Duration {
        self.cfg.timeout.map_or(std::time::Duration::from_secs(300), |d| d.0)
    }

    async fn fetch_http(&self, ctx: &TaskCtx, url: &str, conn: Option<&crate::connections::Connection>) -> Result<Vec<SourceFile>, TaskError> {
        use tokio::io::AsyncWriteExt;
        let shown = crate::secrets::mask(url);
        let mut req = ctx.res.http().get(url).timeout(self.timeout());
        if let Some(c) = conn {
            for (k, v) in &c.headers {
                req = req.header(k, v);
            }
            if let (Some(user), Some(pw)) = (&c.login, c.password()) {
                req = req.basic_auth(user, Some(pw));
            }
        }
        for (k, v) in &self.cfg.headers {
            crate::secrets::register(v);
            req = req.header(k, v);
        }
        let resp = req.send().await.map_err(|e| TaskError::transient(format!("GET {shown}: {}", crate::secrets::mask(&error_chain(&e)))))?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(Vec::new());
        }
        if !status.is_success() {
            let body: String = resp.text().await.unwrap_or_default().chars().take(300).collect();
            let msg = format!("GET {shown}: HTTP {status}: {}", crate::secrets::mask(&body));
            return Err(TaskError::with_kind(crate::tasks::error::http_status_kind(status.as_u16()), msg));
        }
        let local = ctx.scratch.path()?.join("download");
        let mut file = tokio::fs::File::create(&local).await.map_err(|e| TaskError::Failed(format!("{}: {e}", local.display())))?;
        let mut resp = resp;
        let mut n = 0usize;
        while let Some(chunk) = resp.chunk().await.map_err(|e| TaskError::transient(format!("GET {shown}: {}", crate::secrets::mask(&error_chain(&e)))))? {
            n += chunk.len();
            file.write_all(&chunk).await.map_err(|e| TaskError::Failed(e.to_string()))?;
        }
        file.flush().await.map_err(|e| TaskError::Failed(e.to_string()))?;
        tracing::info!(bytes = n, "downloaded {shown}");
        Ok(vec![SourceFile { path: local, name: shown }])
    }
}
