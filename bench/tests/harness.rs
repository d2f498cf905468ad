//! The short versions of the fault harness and the fuzzer, run by the test suite against the
//! debug builds of the three services.

use std::time::Duration;

use bench::chaos::{ChaosConfig, Fault};
use bench::fuzz::FuzzOptions;
use bench::stack::{default_bin_dir, StackConfig};

fn work_dir() -> std::path::PathBuf {
    bench::default_work_dir(&default_bin_dir())
}

/// One fault of every kind under load: every acknowledged command is stored once at the
/// version its client was told, published once and projected once, and no client saw an
/// error outside the outages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_fault_of_each_kind_loses_nothing_and_duplicates_nothing() {
    let report = bench::chaos::run(ChaosConfig {
        bin_dir: default_bin_dir(),
        work_dir: work_dir(),
        faults: Fault::CYCLE.len(),
        clients: 4,
        think: Duration::from_millis(10),
        between: Duration::from_millis(1500),
        settle_within: Duration::from_secs(120),
    })
    .await
    .expect("the harness runs");
    println!("{}", report.table());
    assert_eq!(report.faults.values().sum::<usize>(), Fault::CYCLE.len());
    assert!(report.acknowledged > 0, "the load ran");
    assert!(
        report.unpublished_at_kill > 0,
        "command-api died holding committed, unpublished events"
    );
    assert_eq!(report.losses, 0, "{}", report.table());
    assert_eq!(report.duplicates, 0, "{}", report.table());
    assert_eq!(report.errors_outside_outages, 0, "{}", report.table());
    assert_eq!(report.services_exited, 0, "{}", report.table());
    assert_eq!(
        report.events_quarantined,
        2,
        "the unreadable and the oversized event, and only they, were set aside: {}",
        report.table()
    );
    assert!(report.passed());
}

/// Schemathesis, bounded, against both APIs: no 5xx and every answer as documented.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_on_either_api() {
    let results = bench::fuzz::run(&FuzzOptions {
        stack: StackConfig {
            bin_dir: default_bin_dir(),
            admin_url: std::env::var("TEST_DATABASE_URL")
                .or_else(|_| std::env::var("BENCH_DATABASE_URL"))
                .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/postgres".into()),
            nats_url: std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into()),
            work_dir: work_dir(),
            // Realtime configured, so the authorizers are fuzzed past "not configured".
            env: vec![
                ("SOKETI_APP_KEY".into(), "fuzz-app-key".into()),
                ("SOKETI_APP_SECRET".into(), "fuzz-app-secret".into()),
            ],
        },
        max_examples: 10,
        seed: 7,
        exclude_paths: vec!["/v1/stream".to_owned()],
    })
    .await
    .expect("the fuzzer runs");
    assert_eq!(results.len(), 2);
    for r in &results {
        assert!(r.passed, "{}: {}", r.api, r.summary);
        assert!(!r.operations.is_empty(), "{} tested no operation", r.api);
    }
}
