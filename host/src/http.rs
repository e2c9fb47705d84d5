//! What every HTTP endpoint of wasq checks before it answers: the `Host`
//! header and, when one is set, a token.
//!
//! The `Host` check stops DNS rebinding: a web page on another origin that
//! makes its own name resolve to 127.0.0.1 could otherwise read a loopback
//! dashboard (call results, args) from the victim's browser. Requests must
//! name a loopback host (`localhost`, `127.0.0.1`, `[::1]`), the address the
//! server listens on, or a name the operator allows (`--allow-host`).
//!
//! With a token, a request must carry `Authorization: Bearer TOKEN` or the
//! cookie a browser gets by opening any page once with `?token=TOKEN`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// The cookie that carries the token for a browser.
const TOKEN_COOKIE: &str = "wasq_token";

/// Who may call an HTTP endpoint: allowed `Host` names and an optional token.
#[derive(Debug, Clone)]
pub struct HttpGuard {
    hosts: Vec<String>,
    token: Option<String>,
}

impl HttpGuard {
    /// Allows the loopback names, the address `listen` names (unless it is a
    /// wildcard) and `extra` (host names or IP addresses, without port); a
    /// token if `token` is set (empty counts as unset).
    pub fn new(listen: SocketAddr, extra: &[String], token: Option<String>) -> Self {
        let mut hosts: Vec<String> = ["localhost", "127.0.0.1", "[::1]"]
            .into_iter()
            .map(String::from)
            .collect();
        if !listen.ip().is_unspecified() {
            hosts.push(match listen {
                SocketAddr::V4(a) => a.ip().to_string(),
                SocketAddr::V6(a) => format!("[{}]", a.ip()),
            });
        }
        hosts.extend(extra.iter().map(|h| h.to_ascii_lowercase()));
        Self {
            hosts,
            token: token.filter(|t| !t.is_empty()),
        }
    }

    /// `router` behind this guard.
    pub fn protect(self, router: Router) -> Router {
        router.layer(axum::middleware::from_fn_with_state(Arc::new(self), check))
    }

    fn host_allowed(&self, headers: &HeaderMap) -> bool {
        let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
            return false;
        };
        let host = host.to_ascii_lowercase();
        // Strip the port: `name:port`, `[v6]:port`.
        let name = match host.rfind(':') {
            Some(i) if !host[i..].contains(']') => &host[..i],
            _ => host.as_str(),
        };
        self.hosts.iter().any(|h| h == name)
    }
}

/// Equal in time independent of where the strings differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn deny(status: StatusCode, message: &'static str) -> Response {
    let mut res = (status, message).into_response();
    if status == StatusCode::UNAUTHORIZED {
        res.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    res
}

async fn check(State(guard): State<Arc<HttpGuard>>, req: Request, next: Next) -> Response {
    if !guard.host_allowed(req.headers()) {
        return deny(
            StatusCode::FORBIDDEN,
            "forbidden: this Host is not allowed (add it with --allow-host)\n",
        );
    }
    let Some(token) = &guard.token else {
        return next.run(req).await;
    };
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let cookie = req
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix(TOKEN_COOKIE)?.strip_prefix('='))
        .next();
    if bearer.or(cookie).is_some_and(|t| same(t, token)) {
        return next.run(req).await;
    }
    // A browser opening a page with `?token=`: keep the token in a cookie
    // for this origin and send it on to the page without it.
    let from_query = req
        .uri()
        .query()
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter_map(|kv| kv.strip_prefix("token="))
        .next();
    if from_query.is_some_and(|t| same(t, token)) {
        let path = req.uri().path().to_string();
        let cookie = format!("{TOKEN_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/");
        let mut res = StatusCode::SEE_OTHER.into_response();
        if let (Ok(location), Ok(cookie)) =
            (HeaderValue::from_str(&path), HeaderValue::from_str(&cookie))
        {
            res.headers_mut().insert(header::LOCATION, location);
            res.headers_mut().insert(header::SET_COOKIE, cookie);
            return res;
        }
    }
    deny(
        StatusCode::UNAUTHORIZED,
        "unauthorized: send Authorization: Bearer TOKEN\n",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        h
    }

    #[test]
    fn hosts_are_checked_without_their_port() {
        let g = HttpGuard::new(
            "127.0.0.1:7878".parse().unwrap(),
            &["dash.internal".into()],
            None,
        );
        for ok in [
            "localhost:7878",
            "127.0.0.1:7878",
            "[::1]:7878",
            "LOCALHOST",
            "dash.internal:80",
        ] {
            assert!(g.host_allowed(&headers(ok)), "{ok}");
        }
        for bad in [
            "evil.example:7878",
            "127.0.0.1.evil.example",
            "localhost.evil:7878",
            "",
        ] {
            assert!(!g.host_allowed(&headers(bad)), "{bad}");
        }
        assert!(!g.host_allowed(&HeaderMap::new()));
        let wide = HttpGuard::new("10.1.2.3:9187".parse().unwrap(), &[], None);
        assert!(wide.host_allowed(&headers("10.1.2.3:9187")));
        let any = HttpGuard::new("0.0.0.0:9187".parse().unwrap(), &[], None);
        assert!(!any.host_allowed(&headers("0.0.0.0:9187")));
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "ab"));
    }
}
