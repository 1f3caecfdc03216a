//! Group commits: many concurrent jobs hand their database work to one task that runs it for
//! all of them in one round trip. PostgreSQL commits a hundred rows about as fast as one, so
//! this is what lets one worker process run thousands of jobs a second.

use std::{future::Future, sync::Arc};

use tokio::sync::{mpsc, oneshot};

type Reply<O> = oneshot::Sender<Result<O, Arc<String>>>;

/// Why a batched call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BatchError {
    /// The batch ran and failed (the same error for every item in it).
    #[error("{0}")]
    Failed(Arc<String>),
    /// The batching task is gone (the process is stopping).
    #[error("the batching task has stopped")]
    Closed,
}

/// Sends each item its output, or the batch's error.
fn answer<O, E: std::fmt::Display>(n: usize, result: Result<Vec<O>, E>, replies: Vec<Reply<O>>) {
    match result {
        Ok(outputs) if outputs.len() == n => {
            for (reply, out) in replies.into_iter().zip(outputs) {
                let _ = reply.send(Ok(out));
            }
        }
        Ok(outputs) => {
            let err = Arc::new(format!("a batch of {n} gave {} results", outputs.len()));
            for reply in replies {
                let _ = reply.send(Err(err.clone()));
            }
        }
        Err(e) => {
            let err = Arc::new(e.to_string());
            for reply in replies {
                let _ = reply.send(Err(err.clone()));
            }
        }
    }
}

/// Submits items one by one; a background task runs them in batches of at most `max`.
pub struct Batcher<I, O> {
    tx: mpsc::Sender<(I, Reply<O>)>,
}

impl<I, O> Clone for Batcher<I, O> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

impl<I: Send + 'static, O: Send + 'static> Batcher<I, O> {
    /// Starts the batching task. `run` gets a batch and returns one output per item, in order.
    /// A batch is whatever is waiting when the previous one finishes (at most `max`), so a lone
    /// item is never held back waiting for company.
    pub fn spawn<F, Fut, E>(max: usize, run: F) -> Self
    where
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<O>, E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        Self::spawn_parallel(max, 1, run)
    }

    /// As [`Batcher::spawn`], with up to `parallel` batches running at once (each on its own
    /// task): a batch is whatever is waiting when a slot frees up, at most `max` items.
    pub fn spawn_parallel<F, Fut, E>(max: usize, parallel: usize, run: F) -> Self
    where
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<O>, E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let (tx, mut rx) = mpsc::channel::<(I, Reply<O>)>(max.max(1) * 4);
        let run = Arc::new(run);
        let slots = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
        tokio::spawn(async move {
            loop {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let Some((item, reply)) = rx.recv().await else {
                    return;
                };
                let mut items = Vec::with_capacity(max);
                let mut replies = Vec::with_capacity(max);
                items.push(item);
                replies.push(reply);
                while items.len() < max {
                    match rx.try_recv() {
                        Ok((item, reply)) => {
                            items.push(item);
                            replies.push(reply);
                        }
                        Err(_) => break,
                    }
                }
                let run = run.clone();
                tokio::spawn(async move {
                    let n = items.len();
                    let result = run(items).await;
                    drop(slot);
                    answer(n, result, replies);
                });
            }
        });
        Self { tx }
    }

    /// Runs one item with whatever else is waiting.
    pub async fn call(&self, item: I) -> Result<O, BatchError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send((item, reply))
            .await
            .map_err(|_| BatchError::Closed)?;
        match rx.await {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(e)) => Err(BatchError::Failed(e)),
            Err(_) => Err(BatchError::Closed),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn concurrent_calls_share_batches_and_get_their_own_results() {
        let batches = Arc::new(AtomicUsize::new(0));
        let seen = batches.clone();
        let b = Batcher::spawn(64, move |items: Vec<u32>| {
            let seen = seen.clone();
            async move {
                seen.fetch_add(1, Ordering::SeqCst);
                tokio::task::yield_now().await;
                Ok::<_, std::convert::Infallible>(items.into_iter().map(|i| i * 2).collect())
            }
        });
        let calls: Vec<_> = (0..200u32)
            .map(|i| {
                let b = b.clone();
                tokio::spawn(async move { (i, b.call(i).await) })
            })
            .collect();
        for c in calls {
            let (i, out) = c.await.unwrap();
            assert_eq!(out.unwrap(), i * 2);
        }
        let n = batches.load(Ordering::SeqCst);
        assert!(n < 200, "200 calls ran in {n} batches");
    }

    #[tokio::test]
    async fn parallel_batches_run_at_the_same_time() {
        // Each batch waits for another one to be running: only parallel batches finish.
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let b = Batcher::spawn_parallel(1, 2, move |items: Vec<u32>| {
            let barrier = barrier.clone();
            async move {
                barrier.wait().await;
                Ok::<_, std::convert::Infallible>(items)
            }
        });
        let both = async { tokio::join!(b.call(1), b.call(2)) };
        // One batch at a time would wait at the barrier for good.
        let (one, two) = tokio::time::timeout(std::time::Duration::from_secs(30), both)
            .await
            .expect("the batches ran one after the other");
        assert_eq!((one.unwrap(), two.unwrap()), (1, 2));
    }

    #[tokio::test]
    async fn a_failed_batch_fails_each_of_its_items() {
        let b = Batcher::spawn(8, |_: Vec<u32>| async {
            Err::<Vec<u32>, _>("boom".to_owned())
        });
        match b.call(1).await {
            Err(BatchError::Failed(e)) => assert_eq!(*e, "boom"),
            other => panic!("{other:?}"),
        }
    }
}
