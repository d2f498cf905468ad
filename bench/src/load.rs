//! Load generators and latency summaries.
//!
//! Two shapes: a closed loop (C clients, each issuing its next request when the last one
//! answered: the system's maximum throughput) and an open loop (requests started on a fixed
//! schedule whatever the answers do). Open-loop latency is measured from the moment a request
//! was *due*, not from when it was sent, so a stalled server shows up in the figures instead of
//! quietly slowing the load down (coordinated omission).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use serde::Serialize;
use tokio::sync::Semaphore;

/// What one run measured.
#[derive(Debug, Default)]
pub struct Sample {
    /// Latency of every successful operation.
    pub latencies: Vec<Duration>,
    /// Operations that failed.
    pub failed: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
}

/// A sample reduced to the figures the report shows.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Summary {
    /// Successful operations.
    pub ok: u64,
    /// Failed operations.
    pub failed: u64,
    /// Successful operations per second of wall time.
    pub per_sec: f64,
    /// Median latency, milliseconds.
    pub p50_ms: f64,
    /// 95th percentile, milliseconds.
    pub p95_ms: f64,
    /// 99th percentile, milliseconds.
    pub p99_ms: f64,
    /// Slowest, milliseconds.
    pub max_ms: f64,
}

impl Sample {
    /// Sorts the latencies and reads the percentiles off them.
    pub fn summary(mut self) -> Summary {
        self.latencies.sort_unstable();
        let n = self.latencies.len();
        let at = |q: f64| -> f64 {
            if n == 0 {
                return 0.0;
            }
            let i = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
            ms(self.latencies[i])
        };
        Summary {
            ok: n as u64,
            failed: self.failed,
            per_sec: n as f64 / self.elapsed.as_secs_f64().max(1e-9),
            p50_ms: at(0.50),
            p95_ms: at(0.95),
            p99_ms: at(0.99),
            max_ms: self.latencies.last().copied().map_or(0.0, ms),
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs `clients` loops for `duration`; each calls `op(client, n)` for its n-th operation and
/// counts it as a success when it returns `true`.
pub async fn closed_loop<F, Fut>(clients: usize, duration: Duration, op: F) -> Sample
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    let op = Arc::new(op);
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(clients);
    for client in 0..clients {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut sample = Sample::default();
            let mut n = 0;
            while Instant::now() < deadline {
                let began = Instant::now();
                if op(client, n).await {
                    sample.latencies.push(began.elapsed());
                } else {
                    sample.failed += 1;
                }
                n += 1;
            }
            sample
        }));
    }
    let mut total = Sample::default();
    for task in tasks {
        if let Ok(s) = task.await {
            total.latencies.extend(s.latencies);
            total.failed += s.failed;
        }
    }
    total.elapsed = start.elapsed();
    total
}

/// Starts `op(n)` at `rate` per second for `duration`, at most `max_in_flight` at once (a
/// request that finds no free slot waits for one, and its wait counts in its latency).
pub async fn open_loop<F, Fut>(rate: f64, duration: Duration, max_in_flight: usize, op: F) -> Sample
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    let op = Arc::new(op);
    let slots = Arc::new(Semaphore::new(max_in_flight));
    let results = Arc::new(Mutex::new(Sample::default()));
    let start = Instant::now();
    let total = (rate * duration.as_secs_f64()) as u64;
    let mut tasks = Vec::with_capacity(total as usize);
    for n in 0..total {
        let due = start + Duration::from_secs_f64(n as f64 / rate);
        tokio::time::sleep_until(due).await;
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let (op, results) = (op.clone(), results.clone());
        tasks.push(tokio::spawn(async move {
            let ok = op(n).await;
            let latency = due.elapsed();
            drop(permit);
            if let Ok(mut r) = results.lock() {
                if ok {
                    r.latencies.push(latency);
                } else {
                    r.failed += 1;
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let elapsed = start.elapsed();
    let mut sample = results
        .lock()
        .map(|mut r| std::mem::take(&mut *r))
        .unwrap_or_default();
    sample.elapsed = elapsed;
    sample
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_read_off_the_sorted_latencies() {
        let sample = Sample {
            latencies: (1..=100).rev().map(Duration::from_millis).collect(),
            failed: 3,
            elapsed: Duration::from_secs(2),
        };
        let s = sample.summary();
        assert_eq!(s.ok, 100);
        assert_eq!(s.failed, 3);
        assert_eq!(s.per_sec, 50.0);
        assert_eq!(s.p50_ms, 50.0);
        assert_eq!(s.p95_ms, 95.0);
        assert_eq!(s.p99_ms, 99.0);
        assert_eq!(s.max_ms, 100.0);
    }

    #[test]
    fn an_empty_sample_has_zero_figures() {
        let s = Sample::default().summary();
        assert_eq!(s.ok, 0);
        assert_eq!(s.p99_ms, 0.0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_open_loop_starts_requests_on_schedule_and_counts_failures() {
        let sample = open_loop(100.0, Duration::from_secs(1), 10, |n| async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            n % 10 != 0
        })
        .await;
        assert_eq!(sample.latencies.len(), 90);
        assert_eq!(sample.failed, 10);
        // Every request was due, and started, on time: its latency is its own 5 ms.
        assert!(sample
            .latencies
            .iter()
            .all(|l| *l == Duration::from_millis(5)));
    }
}
