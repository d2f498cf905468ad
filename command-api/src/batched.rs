//! One statement for many requests: the small writes every command makes beside its events
//! (the `Idempotency-Key` claim before it runs, the answer after) are queued, and a writer
//! task writes every one already waiting with one multi-row statement. As with the events'
//! group commit ([`crate::group_commit`]), a writer never waits for company: at low load an
//! item is written at once, alone; under load, the items that arrive while a statement runs
//! make up the next. Each request still hears its own outcome, and a batch that fails tells
//! each of its requests to do its write alone, so a failure is the request's own.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Mutex};

/// Items waiting for a writer; past it, `submit` waits for room.
const QUEUE: usize = 4_096;

/// An item and where its outcome goes.
type Queued<I, O> = (I, oneshot::Sender<Option<O>>);

/// A queue of items of type `I`, written in batches, each answered with an `O`.
pub struct Batched<I, O> {
    /// The writers' queue.
    queue: mpsc::Sender<Queued<I, O>>,
}

impl<I: Send + 'static, O: Send + 'static> Batched<I, O> {
    /// Starts `writers` writer tasks, each writing at most `max` items at once with `write`,
    /// which answers one outcome per item, in order, or `None` when the batch failed. The
    /// writers stop when the returned queue is dropped.
    pub fn start<F, Fut>(writers: usize, max: usize, write: F) -> Self
    where
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Option<Vec<O>>> + Send + 'static,
    {
        let (queue, waiting) = mpsc::channel(QUEUE);
        let waiting = Arc::new(Mutex::new(waiting));
        let write = Arc::new(write);
        for _ in 0..writers.max(1) {
            tokio::spawn(write_batches(waiting.clone(), write.clone(), max.max(1)));
        }
        Self { queue }
    }

    /// Writes `item` with whatever else is waiting: its outcome, or `None` when its batch
    /// failed (or the writers are gone), and the caller is to write it alone.
    pub async fn submit(&self, item: I) -> Option<O> {
        let (done, outcome) = oneshot::channel();
        self.queue.send((item, done)).await.ok()?;
        outcome.await.ok().flatten()
    }
}

/// A writer: takes what is waiting, writes it, answers each item; again.
async fn write_batches<I, O, F, Fut>(
    waiting: Arc<Mutex<mpsc::Receiver<Queued<I, O>>>>,
    write: Arc<F>,
    max: usize,
) where
    F: Fn(Vec<I>) -> Fut,
    Fut: Future<Output = Option<Vec<O>>>,
{
    loop {
        let batch = {
            let mut queue = waiting.lock().await;
            let Some(first) = queue.recv().await else {
                return;
            };
            let mut batch = vec![first];
            while batch.len() < max {
                match queue.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            batch
        };
        let (items, answers): (Vec<I>, Vec<_>) = batch.into_iter().unzip();
        let count = items.len();
        match write(items).await {
            Some(outcomes) if outcomes.len() == count => {
                for (answer, outcome) in answers.into_iter().zip(outcomes) {
                    let _ = answer.send(Some(outcome));
                }
            }
            _ => {
                for answer in answers {
                    let _ = answer.send(None);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Items sent while a write runs are written together next, each answered with its own
    /// outcome; a batch that fails tells each of its items so.
    #[tokio::test]
    async fn waiting_items_share_a_write_and_each_hears_its_own_outcome() {
        let writes = Arc::new(AtomicUsize::new(0));
        let counted = writes.clone();
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let held = gate.clone();
        let batched = Arc::new(Batched::start(1, 100, move |items: Vec<i64>| {
            let (counted, held) = (counted.clone(), held.clone());
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                if let Ok(permit) = held.acquire().await {
                    permit.forget();
                }
                // A batch holding a negative item fails whole.
                (!items.iter().any(|i| *i < 0)).then(|| items.iter().map(|i| i * 10).collect())
            }
        }));
        let send = |item: i64| {
            let batched = batched.clone();
            tokio::spawn(async move { batched.submit(item).await })
        };
        // The first is written alone; the three sent meanwhile wait, then share one write.
        let first = send(1);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let rest: Vec<_> = (2..=4).map(send).collect();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        gate.add_permits(2);
        assert_eq!(first.await.expect("joined"), Some(10));
        for (n, item) in rest.into_iter().enumerate() {
            assert_eq!(item.await.expect("joined"), Some(10 * (n as i64 + 2)));
        }
        assert_eq!(writes.load(Ordering::SeqCst), 2, "four items, two writes");
        // A failed batch: each of its items is told to write alone.
        gate.add_permits(1);
        assert_eq!(send(-1).await.expect("joined"), None);
    }
}
