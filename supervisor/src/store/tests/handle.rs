//! The async [`StoreHandle`] in front of a real store.

use std::time::{Duration, Instant};

use super::*;

fn spawn_store() -> (TempDir, StoreHandle) {
    let (dir, store) = open();
    (dir, StoreHandle::spawn(Box::new(store)).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handle_serves_every_operation() {
    let (_dir, handle) = spawn_store();
    assert_eq!(handle.next_version("f").await.unwrap(), 1);
    handle.deploy(def("f", 1, "one"), 5).await.unwrap();
    handle.deploy(def("f", 2, "two"), 5).await.unwrap();
    handle
        .set_secrets("f", secrets(&[("K", "v")]))
        .await
        .unwrap();
    assert_eq!(
        handle.set_current("f", 1).await.unwrap(),
        def("f", 1, "one")
    );
    assert_eq!(
        handle.version("f", 2).await.unwrap(),
        Some(def("f", 2, "two"))
    );
    assert_eq!(handle.versions("f").await.unwrap().len(), 2);
    let loaded = handle.load().await.unwrap();
    assert_eq!(loaded[0].def.version, 1);
    assert_eq!(loaded[0].secrets, secrets(&[("K", "v")]));
    handle
        .put_activation(record("a", 1, "ok", &["f"]))
        .await
        .unwrap();
    assert!(handle.activation("a").await.unwrap().is_some());
    assert_eq!(handle.activations_for("f", 5).await.unwrap().len(), 1);
    assert_eq!(handle.prune_activations(0, 0, 0, 10).await.unwrap(), 1);
    assert!(handle.delete("f").await.unwrap());
    let err = handle.set_secrets("f", BTreeMap::new()).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
    let on_thread = handle
        .call(|_| Ok(std::thread::current().name().map(str::to_owned)))
        .await
        .unwrap();
    assert_eq!(on_thread.as_deref(), Some("fn-store"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_are_serialized() {
    let (_dir, handle) = spawn_store();
    let mut tasks = Vec::new();
    for i in 0..32 {
        let handle = handle.clone();
        tasks.push(tokio::spawn(async move {
            // Each closure runs alone on the store thread, so next_version + deploy cannot
            // interleave with another task's.
            let shared = handle
                .call(|store| {
                    let version = store.next_version("shared")?;
                    store.deploy(&def("shared", version, "s"), 100)?;
                    Ok(version)
                })
                .await
                .unwrap();
            handle
                .deploy(def(&format!("own-{i:02}"), 1, "o"), 5)
                .await
                .unwrap();
            shared
        }));
    }
    let mut versions = Vec::new();
    for task in tasks {
        versions.push(task.await.unwrap());
    }
    versions.sort_unstable();
    assert_eq!(versions, (1..=32).collect::<Vec<u64>>());
    assert_eq!(handle.versions("shared").await.unwrap().len(), 32);
    assert_eq!(handle.load().await.unwrap().len(), 33);
}

#[tokio::test]
async fn a_panicking_call_is_reported_and_the_store_keeps_working() {
    let (_dir, handle) = spawn_store();
    handle.deploy(def("f", 1, "one"), 5).await.unwrap();
    let err = handle
        .call(|store| -> Result<(), StoreError> {
            store.deploy(&def("f", 2, "two"), 5)?;
            panic!("bug in a caller");
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Panicked(ref m) if m == "bug in a caller"),
        "{err:?}"
    );
    // Calls are not transactions: what committed before the panic stays.
    assert_eq!(handle.load().await.unwrap()[0].def.version, 2);
}

#[tokio::test]
async fn calls_fail_with_closed_when_the_thread_is_gone() {
    let (jobs, queue) = mpsc::channel::<Job>(1);
    drop(queue);
    let handle = StoreHandle { jobs };
    assert!(matches!(handle.load().await, Err(StoreError::Closed)));

    // A thread that takes the job and ends without running it.
    let (jobs, mut queue) = mpsc::channel::<Job>(1);
    let thread = std::thread::spawn(move || drop(queue.blocking_recv()));
    let handle = StoreHandle { jobs };
    assert!(matches!(
        handle.next_version("f").await,
        Err(StoreError::Closed)
    ));
    thread.join().unwrap();
    assert!(format!("{handle:?}").contains("closed: true"));
}

#[tokio::test]
async fn dropping_the_last_handle_closes_the_store() {
    let (dir, handle) = spawn_store();
    handle.deploy(def("f", 1, "one"), 5).await.unwrap();
    let wal = dir.path().join(format!("{DB_FILE}-wal"));
    assert!(wal.exists());
    let clone = handle.clone();
    drop(handle);
    clone.load().await.unwrap();
    drop(clone);
    // SQLite checkpoints and removes the WAL when its last connection closes.
    let deadline = Instant::now() + Duration::from_secs(10);
    while wal.exists() {
        assert!(
            Instant::now() < deadline,
            "store thread did not close the database"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut store = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(store.load().unwrap()[0].def, def("f", 1, "one"));
}
