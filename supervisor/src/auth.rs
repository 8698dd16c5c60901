//! Bearer tokens with two scopes. The tokens file holds only hashes
//! (`scope name sha256:<hex>` or `scope name $argon2id$...`); tokens from
//! the environment are hashed when loaded. Tokens are never logged.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    Invoke,
    Admin,
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Scope::Invoke => "invoke",
            Scope::Admin => "admin",
        }
    }

    fn parse(s: &str) -> Option<Scope> {
        match s {
            "admin" => Some(Scope::Admin),
            "invoke" => Some(Scope::Invoke),
            _ => None,
        }
    }

    /// An admin token may do everything an invoke token may.
    pub fn allows(self, needed: Scope) -> bool {
        self >= needed
    }
}

enum Hash {
    Sha256([u8; 32]),
    Argon2(Argon2Hash),
}

struct Argon2Hash {
    algorithm: argon2::Algorithm,
    version: argon2::Version,
    params: argon2::Params,
    salt: Vec<u8>,
    hash: Vec<u8>,
}

struct Token {
    scope: Scope,
    name: String,
    hash: Hash,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokensError {
    #[error("{path}:{line}: {reason}")]
    Line {
        path: String,
        line: usize,
        reason: String,
    },
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
}

/// Who a request is, once its token checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub scope: Scope,
    pub name: String,
}

pub enum Verdict {
    Allowed(Caller),
    /// No token, or an unknown one: 401.
    Unauthenticated,
    /// A valid token without the scope needed: 403.
    Forbidden(Caller),
}

#[derive(Default)]
pub struct Tokens {
    tokens: Vec<Token>,
    /// Argon2 is slow on purpose; a token that verified once is remembered
    /// by its SHA-256 so requests do not pay for it again.
    verified: Mutex<HashMap<[u8; 32], usize>>,
}

fn sha256(text: &[u8]) -> [u8; 32] {
    Sha256::digest(text).into()
}

impl Tokens {
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// From `--tokens-file` (optional) and `FN_ADMIN_TOKEN`/`FN_INVOKE_TOKEN`.
    pub fn load(
        file: Option<&Path>,
        admin_env: Option<String>,
        invoke_env: Option<String>,
    ) -> Result<Tokens, TokensError> {
        let mut tokens = Vec::new();
        if let Some(path) = file {
            let shown = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|e| TokensError::File {
                path: shown.clone(),
                reason: e.to_string(),
            })?;
            tokens.extend(parse_file(&text, &shown)?);
        }
        for (scope, value, var) in [
            (Scope::Admin, admin_env, "FN_ADMIN_TOKEN"),
            (Scope::Invoke, invoke_env, "FN_INVOKE_TOKEN"),
        ] {
            if let Some(v) = value.filter(|v| !v.is_empty()) {
                tokens.push(Token {
                    scope,
                    name: var.to_ascii_lowercase(),
                    hash: Hash::Sha256(sha256(v.as_bytes())),
                });
            }
        }
        Ok(Tokens {
            tokens,
            verified: Mutex::new(HashMap::new()),
        })
    }

    /// Checks `Authorization: Bearer <token>` against `needed`.
    pub fn check(&self, header: Option<&str>, needed: Scope) -> Verdict {
        let Some(presented) = header
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
        else {
            return Verdict::Unauthenticated;
        };
        let Some(index) = self.find(presented) else {
            return Verdict::Unauthenticated;
        };
        let token = &self.tokens[index];
        let caller = Caller {
            scope: token.scope,
            name: token.name.clone(),
        };
        if token.scope.allows(needed) {
            Verdict::Allowed(caller)
        } else {
            Verdict::Forbidden(caller)
        }
    }

    fn find(&self, presented: &str) -> Option<usize> {
        let digest = sha256(presented.as_bytes());
        // Every SHA-256 entry is compared, in constant time, whatever matches.
        let mut found = None;
        for (i, t) in self.tokens.iter().enumerate() {
            if let Hash::Sha256(h) = &t.hash {
                if bool::from(h.ct_eq(&digest)) && found.is_none() {
                    found = Some(i);
                }
            }
        }
        if found.is_some() {
            return found;
        }
        if let Some(i) = self
            .verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&digest)
        {
            return Some(*i);
        }
        for (i, t) in self.tokens.iter().enumerate() {
            if let Hash::Argon2(a) = &t.hash {
                if a.verify(presented.as_bytes()) {
                    let mut cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
                    if cache.len() >= 1024 {
                        cache.clear();
                    }
                    cache.insert(digest, i);
                    return Some(i);
                }
            }
        }
        None
    }
}

impl Argon2Hash {
    fn verify(&self, password: &[u8]) -> bool {
        let hasher = argon2::Argon2::new(self.algorithm, self.version, self.params.clone());
        let mut out = vec![0u8; self.hash.len()];
        if hasher
            .hash_password_into(password, &self.salt, &mut out)
            .is_err()
        {
            return false;
        }
        bool::from(out.ct_eq(&self.hash))
    }

    /// `$argon2id$v=19$m=19456,t=2,p=1$<salt b64>$<hash b64>` (PHC format).
    fn parse(text: &str) -> Result<Self, String> {
        let parts: Vec<&str> = text.split('$').collect();
        let [_, alg, version, params, salt, hash] = parts.as_slice() else {
            return Err(
                "argon2 hash must look like $argon2id$v=19$m=..,t=..,p=..$salt$hash".into(),
            );
        };
        let algorithm = match *alg {
            "argon2id" => argon2::Algorithm::Argon2id,
            "argon2i" => argon2::Algorithm::Argon2i,
            "argon2d" => argon2::Algorithm::Argon2d,
            other => return Err(format!("unknown argon2 variant {other:?}")),
        };
        let version = match *version {
            "v=19" => argon2::Version::V0x13,
            "v=16" => argon2::Version::V0x10,
            other => return Err(format!("unknown argon2 version {other:?}")),
        };
        let (mut m, mut t, mut p) = (None, None, None);
        for kv in params.split(',') {
            let (k, v) = kv.split_once('=').ok_or("bad argon2 parameters")?;
            let v: u32 = v
                .parse()
                .map_err(|_| format!("bad argon2 parameter {kv:?}"))?;
            match k {
                "m" => m = Some(v),
                "t" => t = Some(v),
                "p" => p = Some(v),
                _ => return Err(format!("unknown argon2 parameter {k:?}")),
            }
        }
        let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
        let salt = b64.decode(salt).map_err(|e| format!("argon2 salt: {e}"))?;
        let hash = b64.decode(hash).map_err(|e| format!("argon2 hash: {e}"))?;
        let params = argon2::Params::new(
            m.ok_or("argon2: m missing")?,
            t.ok_or("argon2: t missing")?,
            p.ok_or("argon2: p missing")?,
            Some(hash.len()),
        )
        .map_err(|e| format!("argon2 parameters: {e}"))?;
        Ok(Self {
            algorithm,
            version,
            params,
            salt,
            hash,
        })
    }
}

fn parse_file(text: &str, path: &str) -> Result<Vec<Token>, TokensError> {
    let mut out = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |reason: String| TokensError::Line {
            path: path.to_owned(),
            line: n + 1,
            reason,
        };
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [scope, name, hash] = fields.as_slice() else {
            return Err(err("expected `scope name hash`".into()));
        };
        let scope = Scope::parse(scope)
            .ok_or_else(|| err(format!("unknown scope {scope:?} (admin or invoke)")))?;
        let hash = if let Some(hex_digest) = hash.strip_prefix("sha256:") {
            let bytes = hex::decode(hex_digest).map_err(|e| err(format!("sha256 hash: {e}")))?;
            let digest: [u8; 32] = bytes
                .try_into()
                .map_err(|_| err("sha256 hash must be 64 hex digits".into()))?;
            Hash::Sha256(digest)
        } else if hash.starts_with("$argon2") {
            Hash::Argon2(Argon2Hash::parse(hash).map_err(err)?)
        } else {
            return Err(err(
                "hash must be `sha256:<hex>` or an argon2 PHC string".into()
            ));
        };
        out.push(Token {
            scope,
            name: (*name).to_owned(),
            hash,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(file: &str) -> Tokens {
        Tokens {
            tokens: parse_file(file, "t").unwrap(),
            verified: Default::default(),
        }
    }

    fn verdict(t: &Tokens, token: &str, needed: Scope) -> &'static str {
        match t.check(Some(&format!("Bearer {token}")), needed) {
            Verdict::Allowed(_) => "allowed",
            Verdict::Unauthenticated => "401",
            Verdict::Forbidden(_) => "403",
        }
    }

    #[test]
    fn sha256_tokens_and_scopes() {
        let admin = hex::encode(sha256(b"adm1n"));
        let invoke = hex::encode(sha256(b"inv0ke"));
        let t = tokens(&format!(
            "# comment\nadmin ops sha256:{admin}\ninvoke pipeline sha256:{invoke}\n"
        ));
        assert_eq!(verdict(&t, "adm1n", Scope::Admin), "allowed");
        assert_eq!(verdict(&t, "adm1n", Scope::Invoke), "allowed");
        assert_eq!(verdict(&t, "inv0ke", Scope::Invoke), "allowed");
        assert_eq!(verdict(&t, "inv0ke", Scope::Admin), "403");
        assert_eq!(verdict(&t, "nope", Scope::Invoke), "401");
        assert!(matches!(
            t.check(None, Scope::Invoke),
            Verdict::Unauthenticated
        ));
        assert!(matches!(
            t.check(Some("Basic abc"), Scope::Invoke),
            Verdict::Unauthenticated
        ));
    }

    #[test]
    fn argon2_tokens_verify() {
        // Made with: argon2 (m=64 KiB, t=1, p=1), salt "somesaltsomesalt".
        let salt = b"somesaltsomesalt";
        let params = argon2::Params::new(64, 1, 1, Some(32)).unwrap();
        let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut out = [0u8; 32];
        a.hash_password_into(b"s3cret-token", salt, &mut out)
            .unwrap();
        let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
        let phc = format!(
            "$argon2id$v=19$m=64,t=1,p=1${}${}",
            b64.encode(salt),
            b64.encode(out)
        );
        let t = tokens(&format!("admin ops {phc}\n"));
        assert_eq!(verdict(&t, "s3cret-token", Scope::Admin), "allowed");
        assert_eq!(verdict(&t, "s3cret-token", Scope::Admin), "allowed");
        assert_eq!(verdict(&t, "wrong", Scope::Admin), "401");
    }

    #[test]
    fn bad_lines_name_the_line() {
        let err = parse_file("admin x sha256:zz\n", "tokens").err().unwrap();
        assert!(err.to_string().starts_with("tokens:1:"), "{err}");
        let err = parse_file("\nroot x sha256:00\n", "tokens").err().unwrap();
        assert!(err.to_string().contains("tokens:2"), "{err}");
    }
}
