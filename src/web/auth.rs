//! Logins, sessions and CSRF tokens. A session is a cookie holding the
//! user's name and expiry, signed with HMAC-SHA256 under the key kept in
//! the state store; the user's role is read from the store on every
//! request, so removing a user or changing its role takes effect at once.
//! Every form carries a CSRF token derived from the session cookie, and
//! failed logins are limited per client address.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::http::HeaderMap;
use hmac::{Hmac, Mac};

use super::Web;
use crate::state::Role;

type HmacSha256 = Hmac<sha2::Sha256>;

pub const COOKIE: &str = "sluice_session";
/// The login form's own cookie: a nonce its CSRF token is bound to (there
/// is no session yet to bind it to).
pub const LOGIN_COOKIE: &str = "sluice_login";
/// How long a login lasts.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Failed logins allowed per address within `WINDOW`.
const MAX_FAILURES: usize = 5;
const WINDOW: Duration = Duration::from_secs(300);

/// A logged-in user.
#[derive(Debug, Clone)]
pub struct Session {
    pub user: String,
    pub role: Role,
    /// The token every form of this session carries.
    pub csrf: String,
}

/// An argon2 hash (PHC string) of a password, with a random salt.
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt_bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| e.to_string())?;
    argon2::Argon2::default().hash_password(password.as_bytes(), &salt).map(|h| h.to_string()).map_err(|e| e.to_string())
}

pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| argon2::Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

fn mac(key: &[u8], parts: &[&[u8]]) -> Option<HmacSha256> {
    let mut m = HmacSha256::new_from_slice(key).ok()?;
    for p in parts {
        m.update(p);
        m.update(b"\x1f");
    }
    Some(m)
}

fn sign(key: &[u8], parts: &[&[u8]]) -> String {
    mac(key, parts).map(|m| hex::encode(m.finalize().into_bytes())).unwrap_or_default()
}

fn verify(key: &[u8], parts: &[&[u8]], sig_hex: &str) -> bool {
    let Ok(sig) = hex::decode(sig_hex) else { return false };
    mac(key, parts).is_some_and(|m| m.verify_slice(&sig).is_ok())
}

/// A new session cookie's value for `user`.
pub fn cookie_value(key: &[u8], user: &str) -> String {
    let expires = (chrono::Utc::now() + SESSION_TTL).timestamp().to_string();
    let name = hex::encode(user);
    let sig = sign(key, &[b"session", name.as_bytes(), expires.as_bytes()]);
    format!("{name}.{expires}.{sig}")
}

/// The `Set-Cookie` header for a session (`value` empty to log out).
/// `Secure` when the request came over TLS through a proxy.
pub fn set_cookie(value: &str, headers: &HeaderMap) -> String {
    let secure = headers.get("x-forwarded-proto").and_then(|v| v.to_str().ok()) == Some("https");
    let max_age = if value.is_empty() { 0 } else { SESSION_TTL.as_secs() };
    format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{}", if secure { "; Secure" } else { "" })
}

fn cookie_named(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get_all(axum::http::header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|c| {
        let (k, v) = c.trim().split_once('=')?;
        (k == name).then(|| v.to_string())
    })
}

fn cookie_from(headers: &HeaderMap) -> Option<String> {
    cookie_named(headers, COOKIE)
}

/// A fresh login form: its cookie's `Set-Cookie` value and its CSRF token.
pub fn login_form(key: &[u8], headers: &HeaderMap) -> (String, String) {
    let nonce = hex::encode(rand::random::<[u8; 16]>());
    let secure = headers.get("x-forwarded-proto").and_then(|v| v.to_str().ok()) == Some("https");
    let cookie =
        format!("{LOGIN_COOKIE}={nonce}; Path=/login; HttpOnly; SameSite=Strict; Max-Age=3600{}", if secure { "; Secure" } else { "" });
    (cookie, sign(key, &[b"login", nonce.as_bytes()]))
}

/// Whether a login POST carries the token of the form its browser got.
pub fn login_token_ok(key: &[u8], headers: &HeaderMap, token: Option<&str>) -> bool {
    match (cookie_named(headers, LOGIN_COOKIE), token) {
        (Some(nonce), Some(t)) => verify(key, &[b"login", nonce.as_bytes()], t),
        _ => false,
    }
}

/// The user name in a valid, unexpired session cookie.
fn user_of(key: &[u8], value: &str) -> Option<String> {
    let mut it = value.splitn(3, '.');
    let (name, expires, sig) = (it.next()?, it.next()?, it.next()?);
    if !verify(key, &[b"session", name.as_bytes(), expires.as_bytes()], sig) {
        return None;
    }
    if expires.parse::<i64>().ok()? < chrono::Utc::now().timestamp() {
        return None;
    }
    String::from_utf8(hex::decode(name).ok()?).ok()
}

/// The session of a request, if it carries a valid one of a user that
/// still exists.
pub async fn session(web: &Web, headers: &HeaderMap) -> Result<Option<Session>, crate::state::StateError> {
    let Some(value) = cookie_from(headers) else { return Ok(None) };
    let Some(name) = user_of(&web.key, &value) else { return Ok(None) };
    let Some(user) = web.site.store.user(&name).await? else { return Ok(None) };
    let csrf = sign(&web.key, &[b"csrf", value.as_bytes()]);
    Ok(Some(Session { user: user.name, role: user.role, csrf }))
}

/// Failed logins per client address.
#[derive(Default)]
pub struct Limiter {
    failures: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

impl Limiter {
    /// Seconds to wait before this address may try again, if it must.
    pub fn blocked(&self, ip: IpAddr) -> Option<u64> {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let q = map.entry(ip).or_default();
        while q.front().is_some_and(|t| t.elapsed() > WINDOW) {
            q.pop_front();
        }
        (q.len() >= MAX_FAILURES).then(|| q.front().map(|t| WINDOW.saturating_sub(t.elapsed()).as_secs() + 1).unwrap_or(1))
    }

    pub fn failed(&self, ip: IpAddr) {
        self.failures.lock().unwrap_or_else(|e| e.into_inner()).entry(ip).or_default().push_back(Instant::now());
    }

    pub fn succeeded(&self, ip: IpAddr) {
        self.failures.lock().unwrap_or_else(|e| e.into_inner()).remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_signed_and_expire() {
        let key = b"0123456789abcdef0123456789abcdef";
        let v = cookie_value(key, "ann");
        assert_eq!(user_of(key, &v).as_deref(), Some("ann"));
        assert_eq!(user_of(b"another key", &v), None, "a cookie signed with another key");
        let forged = v.replacen(&hex::encode("ann"), &hex::encode("bob"), 1);
        assert_eq!(user_of(key, &forged), None, "a renamed cookie");
        let name = hex::encode("ann");
        let old = "1000".to_string();
        let sig = sign(key, &[b"session", name.as_bytes(), old.as_bytes()]);
        assert_eq!(user_of(key, &format!("{name}.{old}.{sig}")), None, "an expired cookie");
    }

    #[test]
    fn passwords_hash_and_verify() {
        let h = hash_password("s3cret: p@ss'\"").unwrap();
        assert!(h.starts_with("$argon2"), "{h}");
        assert!(verify_password("s3cret: p@ss'\"", &h));
        assert!(!verify_password("s3cret", &h));
        assert!(!verify_password("x", "not a hash"));
    }

    #[test]
    fn the_limiter_blocks_after_five_failures() {
        let l = Limiter::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..MAX_FAILURES {
            assert_eq!(l.blocked(ip), None);
            l.failed(ip);
        }
        assert!(l.blocked(ip).is_some_and(|s| s > 0 && s <= 301));
        assert_eq!(l.blocked("10.0.0.2".parse().unwrap()), None, "other addresses are not blocked");
        l.succeeded(ip);
        assert_eq!(l.blocked(ip), None);
    }
}
