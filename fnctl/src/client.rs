//! Thin blocking HTTP client; turns the server's `{"error": ...}` bodies
//! into errors.

use anyhow::{anyhow, Context, Result};
use serde_json::Value;

pub struct Client {
    base: String,
    agent: ureq::Agent,
}

impl Client {
    pub fn new(base: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            agent: ureq::AgentBuilder::new().build(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn get(&self, path: &str) -> Result<Value> {
        json(self.agent.get(&self.url(path)).call())
    }

    pub fn delete(&self, path: &str) -> Result<Value> {
        json(self.agent.delete(&self.url(path)).call())
    }

    pub fn post_json(&self, path: &str, body: &Value) -> Result<Value> {
        json(self.agent.post(&self.url(path)).send_json(body))
    }

    pub fn post_raw(&self, path: &str, body: &str) -> Result<String> {
        let response = self
            .agent
            .post(&self.url(path))
            .set("content-type", "application/json")
            .send_string(body);
        text(response)
    }
}

fn text(response: Result<ureq::Response, ureq::Error>) -> Result<String> {
    match response {
        Ok(r) => r.into_string().context("reading the response"),
        Err(ureq::Error::Status(code, r)) => {
            let body = r.into_string().unwrap_or_default();
            let message = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or(body);
            Err(anyhow!("{message} (HTTP {code})"))
        }
        Err(e) => Err(anyhow!("cannot reach the supervisor: {e}")),
    }
}

fn json(response: Result<ureq::Response, ureq::Error>) -> Result<Value> {
    let body = text(response)?;
    serde_json::from_str(&body).context("the server answered with invalid JSON")
}
