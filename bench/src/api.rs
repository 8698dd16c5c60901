//! The few REST calls the harness makes, for fn-supervisor and the seed
//! peer alike (they share paths and bodies).

use std::io::Read;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

pub struct Api {
    agent: ureq::Agent,
    pub base: String,
}

/// One HTTP answer, whatever its status.
pub struct Answer {
    pub status: u16,
    pub body: String,
    pub version: Option<String>,
    /// fn-supervisor's `x-cold-start` header.
    pub cold: Option<bool>,
    pub ms: f64,
}

impl Answer {
    pub fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.body).with_context(|| format!("not JSON: {}", self.body))
    }
}

impl Api {
    pub fn new(base: &str) -> Api {
        Api {
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(120))
                .build(),
            base: base.to_owned(),
        }
    }

    fn send(&self, method: &str, path: &str, body: Option<&str>) -> Result<Answer> {
        let req = self
            .agent
            .request(method, &format!("{}{path}", self.base))
            .set("content-type", "application/json");
        let t = Instant::now();
        let result = match body {
            Some(b) => req.send_string(b),
            None => req.call(),
        };
        let resp = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => return Err(e).with_context(|| format!("{method} {path}")),
        };
        let status = resp.status();
        let version = resp.header("x-function-version").map(str::to_owned);
        let cold = resp.header("x-cold-start").map(|v| v == "true");
        let mut body = String::new();
        resp.into_reader()
            .take(16 << 20)
            .read_to_string(&mut body)?;
        Ok(Answer {
            status,
            body,
            version,
            cold,
            ms: t.elapsed().as_secs_f64() * 1e3,
        })
    }

    pub fn deploy(&self, spec: &Value) -> Result<Answer> {
        self.send("POST", "/deploy", Some(&spec.to_string()))
    }

    /// Deploys and insists on success.
    pub fn deploy_ok(&self, spec: &Value) -> Result<(Value, f64)> {
        let a = self.deploy(spec)?;
        if a.status != 200 {
            bail!("deploy {} -> {} {}", spec["id"], a.status, a.body);
        }
        Ok((a.json()?, a.ms))
    }

    pub fn invoke(&self, id: &str, body: &str) -> Result<Answer> {
        self.send("POST", &format!("/invoke/{id}"), Some(body))
    }

    pub fn get(&self, path: &str) -> Result<Answer> {
        self.send("GET", path, None)
    }

    pub fn delete(&self, id: &str) -> Result<Answer> {
        self.send("DELETE", &format!("/delete/{id}"), None)
    }

    /// The worker pid fn-supervisor reports for a function.
    pub fn pid(&self, id: &str) -> Result<u32> {
        let a = self.send("GET", &format!("/functions/{id}"), None)?;
        let v = a.json()?;
        v["pid"]
            .as_u64()
            .map(|p| p as u32)
            .with_context(|| format!("no pid for {id}: {}", a.body))
    }
}
