//! What functions can and cannot do: the web platform works, everything but
//! the network is denied with Deno's permission error (never a prompt or a
//! hang), and imports are refused.

mod common;

use common::{FakeUpstream, Supervisor};
use serde_json::json;

/// Runs `body` (an async function body) as a handler and returns
/// `{ok, name, message}` of what happened.
fn attempt(sup: &Supervisor, id: &str, body: &str) -> serde_json::Value {
    let code = format!(
        "export default async function handler() {{\n\
           try {{ {body}; return {{ ok: true }}; }}\n\
           catch (e) {{ return {{ ok: false, name: e.name, message: String(e.message) }}; }}\n\
         }}"
    );
    sup.deploy_ok(id, &code);
    let r = sup.invoke(id, "");
    r.expect(200, sup);
    r.json
}

#[test]
fn everything_but_the_network_is_denied() {
    let sup = Supervisor::start();
    let cases = [
        ("read", "await Deno.readTextFile('/etc/hostname')", "read"),
        ("read-sync", "Deno.readFileSync('/etc/passwd')", "read"),
        (
            "write",
            "await Deno.writeTextFile('/tmp/fn-escape', 'x')",
            "write",
        ),
        ("env", "Deno.env.get('HOME')", "env"),
        ("run", "await new Deno.Command('/bin/true').output()", "run"),
        ("ffi", "Deno.dlopen('libc.so.6', {})", "ffi"),
        ("sys", "Deno.hostname()", "sys"),
        ("sys-mem", "Deno.systemMemoryInfo()", "sys"),
    ];
    for (id, body, perm) in cases {
        let out = attempt(&sup, id, body);
        assert_eq!(out["ok"], false, "{id} was allowed: {out}");
        assert_eq!(out["name"], "NotCapable", "{id}: {out}");
        assert!(
            out["message"]
                .as_str()
                .unwrap()
                .contains(&format!("--allow-{perm}")),
            "{id}: {out}"
        );
    }
    assert!(!std::path::Path::new("/tmp/fn-escape").exists());
}

#[test]
fn imports_are_refused() {
    let sup = Supervisor::start();
    for (id, code, named) in [
        (
            "static-file",
            "import x from 'file:///etc/passwd'; export function handler() {}",
            "file:///etc/passwd",
        ),
        (
            "static-node",
            "import fs from 'node:fs'; export function handler() { return fs; }",
            "node:fs",
        ),
        (
            "static-rel",
            "import './other.js'; export function handler() {}",
            "other.js",
        ),
        (
            "static-http",
            "import 'https://example.invalid/x.js'; export function handler() {}",
            "example.invalid",
        ),
    ] {
        let r = sup.deploy(id, code);
        r.expect(400, &sup);
        assert_eq!(r.json["kind"], "import", "{id}: {}", r.text);
        assert!(r.error().contains(named), "{id}: {}", r.text);
    }
    for (id, target) in [
        ("dyn-file", "file:///etc/passwd"),
        ("dyn-node", "node:child_process"),
        ("dyn-process", "node:process"),
    ] {
        let out = attempt(&sup, id, &format!("await import('{target}')"));
        assert_eq!(out["ok"], false, "{id}: {out}");
        assert!(
            out["message"].as_str().unwrap().contains("not allowed"),
            "{id}: {out}"
        );
    }
}

#[test]
fn the_web_platform_is_there() {
    let upstream = FakeUpstream::start(|method, _, body| {
        (200, format!(r#"{{"method":"{method}","echo":{body}}}"#))
    });
    let sup = Supervisor::start();
    sup.deploy_ok(
        "platform",
        r#"
export default async function handler(url) {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode("abc"));
  const hex = [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
  const uuid = crypto.randomUUID();
  const u = new URL("/a/b?x=1#f", "https://example.com");
  const clone = structuredClone({ d: new Date(0), m: new Map([[1, 2]]) });
  const waited = await new Promise((r) => setTimeout(() => r("timer"), 5));
  const res = await fetch(url, { method: "POST", body: JSON.stringify({ n: 1 }) });
  return {
    hex,
    uuidOk: /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/.test(uuid),
    url: [u.pathname, u.searchParams.get("x"), u.hash],
    clone: [clone.d instanceof Date, clone.m.get(1)],
    b64: [btoa("hello"), atob("aGVsbG8=")],
    decoded: new TextDecoder().decode(new Uint8Array([104, 105])),
    waited,
    upstream: await res.json(),
    de: new Intl.NumberFormat("de-DE").format(1234567.891),
    ja: new Date(0).toLocaleDateString("ja-JP", { timeZone: "UTC" }),
    euro: new Intl.NumberFormat("de-DE", { style: "currency", currency: "EUR" }).format(12.5),
  };
}
"#,
    );
    let r = sup.invoke("platform", &json!(upstream.url("/echo")).to_string());
    r.expect(200, &sup);
    let v = r.json;
    assert_eq!(
        v["hex"],
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(v["uuidOk"], true);
    assert_eq!(v["url"], json!(["/a/b", "1", "#f"]));
    assert_eq!(v["clone"], json!([true, 2]));
    assert_eq!(v["b64"], json!(["aGVsbG8=", "hello"]));
    assert_eq!(v["decoded"], "hi");
    assert_eq!(v["waited"], "timer");
    assert_eq!(v["upstream"], json!({"method": "POST", "echo": {"n": 1}}));
    assert_eq!(v["de"], "1.234.567,891");
    assert_eq!(v["ja"], "1970/1/1");
    assert_eq!(v["euro"], "12,50\u{a0}€");
}

#[test]
fn nested_workers_fail_cleanly_and_the_supervisor_serves_on() {
    let sup = Supervisor::start();
    let out = attempt(
        &sup,
        "no-worker",
        "new Worker('data:text/javascript,1', { type: 'module' })",
    );
    assert_eq!(out["ok"], false, "{out}");
    assert_eq!(sup.get("/healthz").json["status"], "ok");
}

/// Small SHA digests are computed on the worker's JS thread instead of
/// Deno's blocking pool: same bytes for every kind of input, and every
/// case it does not handle (errors included) is still Deno's answer.
#[test]
fn inline_webcrypto_digests_match_denos_own() {
    let sup = Supervisor::start();
    // `{ name }` dictionaries always take Deno's path, so they are the
    // reference.
    let code = r#"
const hex = (b) => Array.from(new Uint8Array(b), (x) => x.toString(16).padStart(2, "0")).join("");
const outcome = async (f) => { try { return hex(await f()); } catch (e) { return `${e.name}: ${e.message}`; } };
export async function handler() {
  const base = new TextEncoder().encode("the quick brown fox jumps over the lazy dog");
  const detached = new ArrayBuffer(8);
  structuredClone(detached, { transfer: [detached] });
  const inputs = {
    bytes: base, sub: base.subarray(3, 20), view: new DataView(base.buffer, 5, 10),
    buffer: base.buffer, empty: new Uint8Array(0), words: new Uint32Array([1, 2, 3]),
    large: new Uint8Array(100000).fill(7), shared: new Uint8Array(new SharedArrayBuffer(8)),
    detached, text: "not a buffer", missing: undefined,
  };
  const differ = [];
  let compared = 0;
  for (const alg of ["SHA-1", "sha-256", "SHA-384", "Sha-512", "SHA-999"]) {
    for (const [k, v] of Object.entries(inputs)) {
      const args = k === "missing" ? [] : [v];
      const fast = await outcome(() => crypto.subtle.digest(alg, ...args));
      const slow = await outcome(() => crypto.subtle.digest({ name: alg }, ...args));
      compared += 1;
      if (fast !== slow) differ.push({ alg, k, fast, slow });
    }
  }
  const known = await outcome(() => crypto.subtle.digest("SHA-256", new TextEncoder().encode("abc")));
  const wrongThis = await outcome(() => SubtleCrypto.prototype.digest.call({}, "SHA-256", base));
  return { differ, compared, known, wrongThis, isPromise: crypto.subtle.digest("SHA-1", base) instanceof Promise };
}
"#;
    sup.deploy_ok("digest", code);
    let r = sup.invoke("digest", "");
    r.expect(200, &sup);
    assert_eq!(r.json["differ"], json!([]), "{}", r.json);
    assert_eq!(r.json["compared"], json!(55));
    assert_eq!(
        r.json["known"],
        json!("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    );
    assert!(
        r.json["wrongThis"].as_str().unwrap().contains("TypeError"),
        "{}",
        r.json
    );
    assert_eq!(r.json["isPromise"], json!(true));
}
