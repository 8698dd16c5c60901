//! A writer process killed mid-transaction must leave every function whole.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::*;

const CRASH_DIR_ENV: &str = "FN_STORE_CRASH_TEST_DIR";
const CRASH_PROGRESS: &str = "store-crash-round ";
const CRASH_IDS: [&str; 3] = ["alpha", "beta", "gamma"];

/// Code big enough to span many pages, and tied to its version so a torn write shows.
fn crash_code(id: &str, version: u64) -> String {
    format!("// {id} v{version}\n{}", "x".repeat(64 * 1024))
}

/// The writer half of `killed_writer_leaves_every_function_whole`, run in a child process.
#[test]
#[ignore = "run in a child process by killed_writer_leaves_every_function_whole"]
fn crash_child_writer() {
    let Some(dir) = std::env::var_os(CRASH_DIR_ENV) else {
        return;
    };
    let mut store = SqliteStore::open(Path::new(&dir)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    for round in 1u64.. {
        if Instant::now() > deadline {
            break;
        }
        for id in CRASH_IDS {
            let mut def = def(id, round, &crash_code(id, round));
            def.config = json!({ "round": round });
            store.deploy(&def, 2).unwrap();
            let round_text = round.to_string();
            store
                .set_secrets(id, &secrets(&[("ROUND", &round_text)]))
                .unwrap();
        }
        println!("{CRASH_PROGRESS}{round}");
    }
}

#[test]
fn killed_writer_leaves_every_function_whole() {
    let dir = tempfile::tempdir().unwrap();
    let module = module_path!();
    let module = module.split_once("::").map_or(module, |(_, rest)| rest);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "--nocapture", "--test-threads=1"])
        .arg(format!("{module}::crash_child_writer"))
        .env(CRASH_DIR_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acknowledged = 0;
    while acknowledged < 3 {
        let Some(line) = lines.next() else { break };
        if let Some(round) = line.unwrap().strip_prefix(CRASH_PROGRESS) {
            acknowledged = round.trim().parse().unwrap();
        }
    }
    assert!(acknowledged >= 3, "the child writer stopped before round 3");
    // Vary where in a transaction the kill lands.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    std::thread::sleep(Duration::from_micros(u64::from(nanos % 20_000)));
    child.kill().unwrap();
    child.wait().unwrap();
    for line in lines {
        if let Some(round) = line.unwrap().strip_prefix(CRASH_PROGRESS) {
            acknowledged = round.trim().parse().unwrap();
        }
    }

    let mut store = SqliteStore::open(dir.path()).unwrap();
    let loaded = store.load().unwrap();
    assert_eq!(loaded.len(), CRASH_IDS.len());
    for function in &loaded {
        let (id, version) = (function.def.id.as_str(), function.def.version);
        assert!(
            version == acknowledged || version == acknowledged + 1,
            "{id}: version {version} after acknowledged round {acknowledged}"
        );
        assert_eq!(
            function.def.code,
            crash_code(id, version),
            "{id} v{version}"
        );
        assert_eq!(function.def.config, json!({ "round": version }));
        let versions = version_numbers(&mut store, id);
        assert!(
            versions.len() <= 2 && versions[0] == version,
            "{id}: {versions:?}"
        );
        // Secrets are written by the next transaction, so they may lag by one round.
        let round: u64 = function.secrets["ROUND"].parse().unwrap();
        assert!(
            round == version || round + 1 == version,
            "{id}: secrets of {round}"
        );
    }
    let check: String = raw(dir.path())
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}
