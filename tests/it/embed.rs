//! The embedding API inside a host tokio runtime: `examples/embed.rs` end to end, and the
//! handle's lifecycle.

#[path = "../../examples/embed.rs"]
#[allow(dead_code)]
mod example;

use crate::common::open_store;
use msgtrace::embed::{EmbedError, EngineBuilder};
use msgtrace::engine::EngineError;
use msgtrace::storage::JobState;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_runs_in_a_host_tokio_runtime_and_shuts_down_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let outcome = example::embed_demo(dir.path()).await.unwrap();
    assert!(outcome.succeeded, "{outcome:?}");
    assert!(outcome.rows > 100, "{outcome:?}");
    let delivered: u64 = outcome.counts.values().sum();
    assert!(
        delivered > 0 && delivered < outcome.rows,
        "the hook dropped spam: {outcome:?}"
    );
    assert!(!outcome.counts.contains_key("filteredAsSpam"));
    assert_eq!(outcome.jobs, 1);
    // The engine released the state directory: it opens again, with the job recorded.
    let store = open_store(dir.path().join("state"));
    let jobs = store.jobs(Some("contoso")).unwrap();
    assert_eq!(jobs[0].state, JobState::Succeeded);
    assert_eq!(jobs[0].rows, outcome.rows);
}

#[tokio::test(flavor = "current_thread")]
async fn a_shut_down_handle_answers_stopped_and_bad_configs_do_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "state_dir = {:?}\n[sources.a]\nurl = \"http://127.0.0.1:9/x\"\n[sources.a.auth]\nmethod = \"basic\"\nusername = \"u\"\npassword = \"p\"\n",
        dir.path().join("state").to_string_lossy()
    );
    let handle = std::sync::Arc::new(EngineBuilder::from_toml(&toml).unwrap().start().unwrap());
    // The handle is shared across tasks of the host runtime.
    let h = handle.clone();
    let status = tokio::spawn(async move { h.status().await })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.len(), 1);
    assert!(!status[0].running);
    assert!(handle.jobs(None).await.unwrap().is_empty());
    // A second engine on the same state directory is refused while the first holds it.
    let second = EngineBuilder::from_toml(&toml).unwrap().start();
    assert!(
        matches!(
            second,
            Err(EmbedError::Engine(EngineError::State(
                msgtrace::storage::StorageError::Locked { .. }
            )))
        ),
        "{second:?}"
    );

    let report = handle.shutdown().await.unwrap();
    assert!(report.jobs.is_empty());
    assert!(matches!(handle.run_once().await, Err(EmbedError::Stopped)));
    assert!(matches!(handle.shutdown().await, Err(EmbedError::Stopped)));
    // Released: the same directory starts again.
    let again = EngineBuilder::from_toml(&toml).unwrap().start().unwrap();
    again.shutdown().await.unwrap();

    let bad = EngineBuilder::from_toml("[sources.x]\npoll_interval_mins = 45\n");
    assert!(matches!(bad, Err(EmbedError::Config(_))));
}
