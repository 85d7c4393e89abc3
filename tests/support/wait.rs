use std::{future::Future, time::Duration};

use tokio::time::{Instant, sleep};

/// Polls `check` until it yields `Some`, failing the test with `what` when `deadline` passes.
/// The poll period is short; the deadline, not a sleep, bounds the wait.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let until = Instant::now() + deadline;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() >= until {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        sleep(Duration::from_millis(200)).await;
    }
}
