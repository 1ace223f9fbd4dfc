//! Waiting on a condition with a deadline, so tests never sleep-then-assert.

use std::future::Future;
use std::time::Duration;

const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_millis(100);

/// Polls `check` (short backoff, 10..100 ms) until it returns Some, or panics with
/// "timed out after {timeout:?} waiting for {what}". `check` runs at least once.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut backoff = FIRST_BACKOFF;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(backoff.min(deadline - now)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn returns_the_value_once_check_succeeds() {
        let calls = AtomicUsize::new(0);
        let value = wait_for("the third call", Duration::from_secs(10), || async {
            let call = calls.fetch_add(1, Ordering::SeqCst) + 1;
            (call == 3).then_some(call * 10)
        })
        .await;
        assert_eq!(value, 30);
    }

    #[tokio::test]
    async fn checks_once_even_with_zero_timeout() {
        let value = wait_for("anything", Duration::ZERO, || async { Some("ready") }).await;
        assert_eq!(value, "ready");
    }

    #[tokio::test]
    #[should_panic(expected = "timed out after 50ms waiting for the impossible")]
    async fn panics_with_what_after_timeout() {
        wait_for::<(), _, _>("the impossible", Duration::from_millis(50), || async {
            None
        })
        .await;
    }
}
