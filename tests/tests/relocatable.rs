//! The release binaries are self-contained: copied elsewhere and run where
//! the cargo registry and the target directory do not exist, they still boot
//! workers with fetch, crypto and full ICU data.

mod common;

use std::process::Command;

use common::{bin, bin_dir, run, FakeUpstream, Supervisor};
use serde_json::json;

#[test]
fn copied_binaries_work_without_cargo_home_or_target_dir() {
    let copy = tempfile::tempdir().unwrap();
    for name in ["fn-supervisor", "fn-worker"] {
        std::fs::copy(bin(name), copy.path().join(name)).unwrap();
    }
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cargo")
        });
    let target = bin_dir().parent().unwrap().to_path_buf();

    // A private mount namespace with empty tmpfs over both directories.
    let probe = run(Command::new("unshare").args(["--mount", "--propagation", "private", "true"]));
    assert!(
        probe.status.success(),
        "this test needs `unshare --mount` (root or user namespaces): {}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let script = format!(
        "mount -t tmpfs none '{}' && mount -t tmpfs none '{}' && exec '{}' \"$@\"",
        cargo_home.display(),
        target.display(),
        copy.path().join("fn-supervisor").display()
    );
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
        "fn-supervisor",
    ]);
    let sup = Supervisor::start_cmd(cmd, &[]);

    let upstream = FakeUpstream::start(|_, _, _| (200, r#"{"from":"upstream"}"#.into()));
    sup.deploy_ok(
        "portable",
        r#"export default async function handler(url) {
             const d = await crypto.subtle.digest("SHA-1", new TextEncoder().encode("x"));
             return {
               fetched: await (await fetch(url)).json(),
               sha1: [...new Uint8Array(d)].map((b) => b.toString(16).padStart(2, "0")).join(""),
               de: new Intl.NumberFormat("de-DE").format(1234.5),
               month: new Intl.DateTimeFormat("fr-FR", { month: "long", timeZone: "UTC" }).format(new Date(0)),
             };
           }"#,
    );
    let r = sup.invoke("portable", &json!(upstream.url("/")).to_string());
    r.expect(200, &sup);
    assert_eq!(
        r.json,
        json!({
            "fetched": {"from": "upstream"},
            "sha1": "11f6ad8ec52a2984abaafd7c3b516503785c2072",
            "de": "1.234,5",
            "month": "janvier",
        })
    );
}
