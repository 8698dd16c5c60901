//! Blocking HTTP client for the supervisor. Failures come back as one of two
//! typed errors so `main` can pick the exit code: [`ServerError`] (the
//! server answered with an error status) and [`Unreachable`] (no answer).

use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::time::Duration;

use anyhow::Result;
use serde_json::Value;

/// A connection that cannot be made within this is treated as unreachable;
/// once connected, requests may take as long as the server needs (deploys
/// and invocations are bounded by the server's own timeouts).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The server answered with an HTTP error status.
#[derive(Debug)]
pub struct ServerError {
    pub status: u16,
    /// The body's `error` string, or the raw body when it has none.
    pub message: String,
    /// A JavaScript stack, for a function that threw.
    pub stack: Option<String>,
    pub retry_after: Option<String>,
    /// Whether the request carried a token, to word the 401 hint.
    sent_token: bool,
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (HTTP {}", self.message, self.status)?;
        if let Some(s) = &self.retry_after {
            write!(f, "; retry after {s}s")?;
        }
        write!(f, ")")?;
        if self.status == 401 {
            if self.sent_token {
                write!(f, "; the supervisor rejected the token")?;
            } else {
                write!(f, "; pass --token or set FNCTL_TOKEN")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ServerError {}

/// No HTTP answer: connection refused, DNS failure, timeout, a dropped
/// connection, or something that does not speak HTTP.
#[derive(Debug)]
pub struct Unreachable {
    pub base: String,
    pub reason: String,
}

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot reach the supervisor at {}: {}",
            self.base, self.reason
        )
    }
}

impl std::error::Error for Unreachable {}

pub struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

/// Percent-encodes one path segment, so an id like `a/b` or `x?y` cannot
/// reach a different route.
pub fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Client {
    pub fn new(base: &str, token: Option<String>) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            token: token.filter(|t| !t.is_empty()),
            agent: ureq::AgentBuilder::new()
                .timeout_connect(CONNECT_TIMEOUT)
                .build(),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn request(&self, method: &str, path: &str) -> ureq::Request {
        let req = self
            .agent
            .request(method, &format!("{}{}", self.base, path));
        match &self.token {
            Some(t) => req.set("authorization", &format!("Bearer {t}")),
            None => req,
        }
    }

    pub fn get(&self, path: &str) -> Result<Value> {
        let r = self.check(self.request("GET", path).call())?;
        self.json_body(r)
    }

    pub fn delete(&self, path: &str) -> Result<Value> {
        let r = self.check(self.request("DELETE", path).call())?;
        self.json_body(r)
    }

    /// `POST`, `PATCH` or `PUT` with a JSON body; the answer parsed as JSON.
    pub fn send(&self, method: &str, path: &str, body: &Value) -> Result<Value> {
        let r = self.check(self.request(method, path).send_json(body))?;
        self.json_body(r)
    }

    /// `POST` with a body sent as is; the answer's text and its
    /// `x-function-version` header.
    pub fn post_raw(&self, path: &str, body: &str) -> Result<(String, Option<String>)> {
        let req = self
            .request("POST", path)
            .set("content-type", "application/json");
        let r = self.check(req.send_string(body))?;
        let version = r.header("x-function-version").map(str::to_owned);
        Ok((self.text_body(r)?, version))
    }

    /// A streamed answer, read line by line as the server sends it.
    pub fn lines(&self, path: &str) -> Result<impl Iterator<Item = Result<String>> + '_> {
        let r = self.check(self.request("GET", path).call())?;
        let reader = BufReader::new(r.into_reader());
        Ok(reader
            .lines()
            .map(move |l| l.map_err(|e| self.lost(e).into())))
    }

    /// Like [`Client::get`], but the error status answer is returned too,
    /// for endpoints (`/readyz`) whose error body is information.
    pub fn get_any(&self, path: &str) -> Result<(u16, Value)> {
        let r = match self.request("GET", path).call() {
            Ok(r) | Err(ureq::Error::Status(_, r)) => r,
            Err(e) => return Err(self.fail(e)),
        };
        let status = r.status();
        Ok((status, self.json_body(r)?))
    }

    fn check(&self, result: Result<ureq::Response, ureq::Error>) -> Result<ureq::Response> {
        result.map_err(|e| self.fail(e))
    }

    fn fail(&self, e: ureq::Error) -> anyhow::Error {
        match e {
            ureq::Error::Status(status, r) => {
                let retry_after = r.header("retry-after").map(str::to_owned);
                let body = r.into_string().unwrap_or_default();
                let parsed = serde_json::from_str::<Value>(&body).ok();
                let message = parsed
                    .as_ref()
                    .and_then(|v| v["error"].as_str())
                    .map(str::to_owned)
                    .unwrap_or_else(|| match body.trim() {
                        "" => "(empty answer)".to_owned(),
                        b => b.to_owned(),
                    });
                let stack = parsed
                    .as_ref()
                    .and_then(|v| v["stack"].as_str())
                    .map(str::to_owned);
                ServerError {
                    status,
                    message,
                    stack,
                    retry_after,
                    sent_token: self.token.is_some(),
                }
                .into()
            }
            ureq::Error::Transport(t) => {
                // ureq's own text repeats the URL; the cause is what helps.
                let reason = match (std::error::Error::source(&t), t.message()) {
                    (Some(cause), _) => cause.to_string(),
                    (None, Some(m)) => m.to_owned(),
                    (None, None) => t.kind().to_string(),
                };
                Unreachable {
                    base: self.base.clone(),
                    reason,
                }
                .into()
            }
        }
    }

    fn lost(&self, e: std::io::Error) -> Unreachable {
        Unreachable {
            base: self.base.clone(),
            reason: format!("the connection broke: {e}"),
        }
    }

    fn text_body(&self, r: ureq::Response) -> Result<String> {
        let mut text = String::new();
        r.into_reader()
            .read_to_string(&mut text)
            .map_err(|e| self.lost(e))?;
        Ok(text)
    }

    fn json_body(&self, r: ureq::Response) -> Result<Value> {
        let text = self.text_body(r)?;
        serde_json::from_str(&text).map_err(|e| {
            anyhow::anyhow!("the server answered with invalid JSON ({e}): {text:.200}")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_encoded() {
        assert_eq!(seg("hello-1_x"), "hello-1_x");
        assert_eq!(seg("a/b?c"), "a%2Fb%3Fc");
        assert_eq!(seg("é"), "%C3%A9");
    }
}
