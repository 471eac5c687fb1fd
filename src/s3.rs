//! S3 through aws-sdk-s3, configured from a connection URI:
//!
//! ```text
//! s3://ACCESS_KEY:SECRET_KEY@host:port?region=us-east-1&path_style=true&tls=false
//! s3://ACCESS_KEY:SECRET_KEY@?region=ap-northeast-2            (AWS itself)
//! s3://ACCESS_KEY:SECRET_KEY@?endpoint_url=http%3A%2F%2F127.0.0.1%3A9000
//! ```
//!
//! Without credentials in the URI, `AWS_ACCESS_KEY_ID` and
//! `AWS_SECRET_ACCESS_KEY` are used. A host in the URI means an
//! S3-compatible server: path-style addressing is then the default.

use std::path::Path;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};

use crate::connections::Connection;
use crate::tasks::ErrorKind;

/// Files above this size are uploaded in parts.
pub const MULTIPART_THRESHOLD: u64 = 16 << 20;
pub const PART_SIZE: u64 = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    #[error("{0}")]
    Config(String),
    #[error("{op} {uri}: {detail}")]
    Request { op: &'static str, uri: String, detail: String, kind: ErrorKind },
    #[error("{0}")]
    Io(String),
}

impl S3Error {
    /// Whether another try may succeed: an unreachable server, a timeout or
    /// a 5xx may pass; missing credentials or a 403 will not.
    pub fn kind(&self) -> ErrorKind {
        match self {
            S3Error::Config(_) => ErrorKind::Config,
            S3Error::Request { kind, .. } => *kind,
            S3Error::Io(_) => ErrorKind::Failed,
        }
    }
}

/// `s3://bucket/key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Uri {
    pub bucket: String,
    pub key: String,
}

impl S3Uri {
    pub fn parse(s: &str) -> Result<S3Uri, String> {
        let rest = s.strip_prefix("s3://").ok_or_else(|| format!("`{s}` is not an s3:// URI"))?;
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!("`{s}` has no bucket: write s3://bucket/key"));
        }
        Ok(S3Uri { bucket: bucket.to_string(), key: key.to_string() })
    }

    pub fn join(&self, rel: &str) -> S3Uri {
        let key = if self.key.is_empty() { rel.to_string() } else { format!("{}/{rel}", self.key.trim_end_matches('/')) };
        S3Uri { bucket: self.bucket.clone(), key }
    }
}

impl std::fmt::Display for S3Uri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

/// Where a connection's S3 endpoint is, for messages.
pub fn endpoint_of(c: &Connection) -> String {
    if let Some(e) = c.extra.get("endpoint_url") {
        return e.clone();
    }
    match &c.host {
        Some(h) => {
            let tls = !matches!(c.extra.get("tls").map(String::as_str), Some("false" | "0" | "no"));
            let scheme = if tls { "https" } else { "http" };
            match c.port {
                Some(p) => format!("{scheme}://{h}:{p}"),
                None => format!("{scheme}://{h}"),
            }
        }
        None => "AWS S3".into(),
    }
}

/// Builds a client for an S3 connection.
pub fn client(c: &Connection) -> Result<Client, S3Error> {
    let (access, secret) = match (&c.login, c.password()) {
        (Some(a), Some(s)) => (a.clone(), s.to_string()),
        _ => match (std::env::var("AWS_ACCESS_KEY_ID"), std::env::var("AWS_SECRET_ACCESS_KEY")) {
            (Ok(a), Ok(s)) => {
                crate::secrets::register(&s);
                (a, s)
            }
            _ => {
                return Err(S3Error::Config(format!(
                    "S3 connection `{}` has no credentials: put them in the URI (s3://KEY:SECRET@...) or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
                    c.id
                )));
            }
        },
    };
    let region = c.extra.get("region").or_else(|| c.extra.get("region_name")).cloned().unwrap_or_else(|| "us-east-1".into());
    let custom = c.host.is_some() || c.extra.contains_key("endpoint_url");
    let path_style = match c.extra.get("path_style").or_else(|| c.extra.get("force_path_style")).map(String::as_str) {
        Some("true" | "1" | "yes") => true,
        Some(_) => false,
        None => custom,
    };
    let mut b = aws_sdk_s3::Config::builder()
        .http_client(https_client())
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region))
        .credentials_provider(Credentials::new(access, secret, None, None, "sluice-connection"))
        .force_path_style(path_style);
    if custom {
        b = b.endpoint_url(endpoint_of(c));
    }
    Ok(Client::from_conf(b.build()))
}

/// The HTTPS client every S3 connection shares: rustls with ring, trusting
/// the system's certificates (and `SSL_CERT_FILE`/`SSL_CERT_DIR`).
fn https_client() -> aws_sdk_s3::config::SharedHttpClient {
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
    static CLIENT: std::sync::OnceLock<aws_sdk_s3::config::SharedHttpClient> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| aws_smithy_http_client::Builder::new().tls_provider(Provider::Rustls(CryptoMode::Ring)).build_https()).clone()
}

/// The whole chain of an SDK error, without secrets.
pub fn describe<E: std::error::Error>(e: &E) -> String {
    let mut s = aws_sdk_s3::error::DisplayErrorContext(e).to_string();
    // The context repeats itself; keep it short.
    if s.len() > 600 {
        s.truncate(600);
        s.push('…');
    }
    crate::secrets::mask(&s)
}

/// The innermost cause of an error, as text (`Connection refused (os error
/// 111)` rather than the SDK's nested debug dump).
fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    crate::secrets::mask(&cur.to_string())
}

type SdkError<E> = aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>;

/// Classifies an SDK error and says what happened in a sentence.
fn classify<E>(e: &SdkError<E>) -> (ErrorKind, String)
where
    E: std::error::Error + aws_sdk_s3::error::ProvideErrorMetadata + 'static,
{
    use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError as S};
    match e {
        // A certificate the client does not trust fails every try alike.
        S::DispatchFailure(_) if root_cause(e).contains("certificate") => (
            ErrorKind::Permanent,
            format!(
                "the S3 server's TLS certificate is not trusted ({}): if the server's certificate authority is your own, point SSL_CERT_FILE at its certificate; for a plain-HTTP endpoint add tls=false to the connection",
                root_cause(e)
            ),
        ),
        S::DispatchFailure(_) => (ErrorKind::Transient, format!("cannot reach the S3 server ({})", root_cause(e))),
        S::TimeoutError(_) => (ErrorKind::Transient, "the S3 server did not answer in time".into()),
        S::ResponseError(_) => (ErrorKind::Transient, format!("the S3 server's answer could not be read ({})", root_cause(e))),
        S::ServiceError(s) => {
            let status = s.raw().status().as_u16();
            let code = e.code().unwrap_or("error");
            let msg = e.message().map(|m| format!(": {m}")).unwrap_or_default();
            let kind = match status {
                404 => ErrorKind::Failed,
                s => crate::tasks::error::http_status_kind(s),
            };
            (kind, crate::secrets::mask(&format!("HTTP {status} {code}{msg}")))
        }
        S::ConstructionFailure(_) => (ErrorKind::Config, format!("the request could not be built ({})", root_cause(e))),
        _ => (ErrorKind::Failed, describe(e)),
    }
}

pub fn req<E>(op: &'static str, uri: &S3Uri, e: SdkError<E>) -> S3Error
where
    E: std::error::Error + aws_sdk_s3::error::ProvideErrorMetadata + 'static,
{
    let (kind, detail) = classify(&e);
    S3Error::Request { op, uri: uri.to_string(), detail, kind }
}

/// Uploads a local file; in parts above [`MULTIPART_THRESHOLD`]. The object
/// appears only when the upload completes (S3 commits whole objects).
pub async fn upload(client: &Client, path: &Path, to: &S3Uri) -> Result<u64, S3Error> {
    let size = tokio::fs::metadata(path).await.map_err(|e| S3Error::Io(format!("{}: {e}", path.display())))?.len();
    if size <= MULTIPART_THRESHOLD {
        let body = ByteStream::from_path(path).await.map_err(|e| S3Error::Io(format!("{}: {e}", path.display())))?;
        client.put_object().bucket(&to.bucket).key(&to.key).body(body).send().await.map_err(|e| req("PUT", to, e))?;
        return Ok(size);
    }
    let up =
        client.create_multipart_upload().bucket(&to.bucket).key(&to.key).send().await.map_err(|e| req("CreateMultipartUpload", to, e))?;
    let upload_id = up.upload_id().unwrap_or_default().to_string();
    let result = async {
        let mut parts = Vec::new();
        let mut offset = 0u64;
        let mut n = 1;
        while offset < size {
            let len = PART_SIZE.min(size - offset);
            let body = ByteStream::read_from()
                .path(path)
                .offset(offset)
                .length(aws_sdk_s3::primitives::Length::Exact(len))
                .build()
                .await
                .map_err(|e| S3Error::Io(format!("{}: {e}", path.display())))?;
            let part = client
                .upload_part()
                .bucket(&to.bucket)
                .key(&to.key)
                .upload_id(&upload_id)
                .part_number(n)
                .body(body)
                .send()
                .await
                .map_err(|e| req("UploadPart", to, e))?;
            parts.push(CompletedPart::builder().part_number(n).set_e_tag(part.e_tag().map(str::to_string)).build());
            offset += len;
            n += 1;
        }
        client
            .complete_multipart_upload()
            .bucket(&to.bucket)
            .key(&to.key)
            .upload_id(&upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
            .send()
            .await
            .map_err(|e| req("CompleteMultipartUpload", to, e))?;
        Ok::<_, S3Error>(())
    }
    .await;
    if let Err(e) = result {
        let _ = client.abort_multipart_upload().bucket(&to.bucket).key(&to.key).upload_id(&upload_id).send().await;
        return Err(e);
    }
    Ok(size)
}

/// Downloads an object to a file, atomically (temporary name, then rename).
pub async fn download(client: &Client, from: &S3Uri, to: &Path) -> Result<u64, S3Error> {
    use tokio::io::AsyncWriteExt;
    let obj = client.get_object().bucket(&from.bucket).key(&from.key).send().await.map_err(|e| req("GET", from, e))?;
    if let Some(dir) = to.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(|e| S3Error::Io(format!("{}: {e}", dir.display())))?;
    }
    let tmp = to.with_extension(format!("part-{}", uuid::Uuid::new_v4().simple()));
    let mut file = tokio::fs::File::create(&tmp).await.map_err(|e| S3Error::Io(format!("{}: {e}", tmp.display())))?;
    let mut body = obj.body;
    let mut n = 0u64;
    while let Some(chunk) = body.try_next().await.map_err(|e| S3Error::Request {
        op: "GET",
        uri: from.to_string(),
        detail: format!("the download broke off ({})", root_cause(&e)),
        kind: ErrorKind::Transient,
    })? {
        n += chunk.len() as u64;
        file.write_all(&chunk).await.map_err(|e| S3Error::Io(format!("{}: {e}", tmp.display())))?;
    }
    file.flush().await.map_err(|e| S3Error::Io(e.to_string()))?;
    drop(file);
    tokio::fs::rename(&tmp, to).await.map_err(|e| S3Error::Io(format!("{}: {e}", to.display())))?;
    Ok(n)
}

/// An object in a listing.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Object {
    pub key: String,
    pub size: i64,
    pub last_modified: Option<String>,
}

/// Lists every object under a prefix.
pub async fn list(client: &Client, at: &S3Uri) -> Result<Vec<Object>, S3Error> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut r = client.list_objects_v2().bucket(&at.bucket).prefix(&at.key);
        if let Some(t) = &token {
            r = r.continuation_token(t);
        }
        let page = r.send().await.map_err(|e| req("LIST", at, e))?;
        for o in page.contents() {
            out.push(Object {
                key: o.key().unwrap_or_default().to_string(),
                size: o.size().unwrap_or(0),
                last_modified: o.last_modified().map(|t| t.to_string()),
            });
        }
        match page.next_continuation_token() {
            Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
            _ => break,
        }
    }
    Ok(out)
}

/// Checks that a bucket and prefix can be listed (one request).
pub async fn probe(client: &Client, at: &S3Uri) -> Result<(), S3Error> {
    client.list_objects_v2().bucket(&at.bucket).prefix(&at.key).max_keys(1).send().await.map_err(|e| req("LIST", at, e))?;
    Ok(())
}

/// Whether any object is under a prefix (one request).
pub async fn probe_any(client: &Client, at: &S3Uri) -> Result<bool, S3Error> {
    let page = client.list_objects_v2().bucket(&at.bucket).prefix(&at.key).max_keys(1).send().await.map_err(|e| req("LIST", at, e))?;
    Ok(!page.contents().is_empty())
}

/// Whether an object exists.
pub async fn exists(client: &Client, at: &S3Uri) -> Result<bool, S3Error> {
    match client.head_object().bucket(&at.bucket).key(&at.key).send().await {
        Ok(_) => Ok(true),
        Err(e) => {
            if e.as_service_error().is_some_and(|s| s.is_not_found()) {
                Ok(false)
            } else {
                Err(req("HEAD", at, e))
            }
        }
    }
}

/// Splits `s3://bucket/dir/*.csv` into the listing prefix (`dir/`) and a
/// glob for the keys, or None for a plain key or prefix.
pub fn glob_parts(key: &str) -> Option<(String, glob::Pattern)> {
    let first = key.find(['*', '?', '['])?;
    let prefix = key[..first].rsplit_once('/').map(|(p, _)| format!("{p}/")).unwrap_or_default();
    glob::Pattern::new(key).ok().map(|p| (prefix, p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_and_globs() {
        let u = S3Uri::parse("s3://raw/exports/2024-01-05/orders.csv").unwrap();
        assert_eq!((u.bucket.as_str(), u.key.as_str()), ("raw", "exports/2024-01-05/orders.csv"));
        assert!(S3Uri::parse("s3:///x").is_err());
        let (prefix, pat) = glob_parts("exports/2024-*/orders_*.csv").unwrap();
        assert_eq!(prefix, "exports/");
        assert!(pat.matches("exports/2024-01-05/orders_1.csv"));
        assert!(glob_parts("exports/a.csv").is_none());
    }
}
