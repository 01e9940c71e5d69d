//! Exponential backoff with full jitter.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{ClientError, Result};

/// How often and how patiently a request is retried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Backoff before the first retry; it doubles each time.
    pub initial_delay: Duration,
    /// Upper bound of one backoff.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 5,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// No retries at all.
    pub fn none() -> Self {
        RetryPolicy {
            max_retries: 0,
            ..Self::default()
        }
    }

    /// The backoff before retry number `attempt` (0-based): a random time up to
    /// `initial × 2^attempt`, capped (full jitter spreads out clients that failed together).
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self
            .initial_delay
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max_delay);
        ceiling.mul_f64(0.5 + fastrand::f64() * 0.5)
    }

    /// Runs `op` until it succeeds, fails with an error that is not retryable, runs out of
    /// retries, or `cancel` fires.
    pub async fn run<T, F, Fut>(&self, cancel: &CancellationToken, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut attempt = 0;
        loop {
            let outcome = tokio::select! {
                biased;
                _ = cancel.cancelled() => return Err(ClientError::Cancelled),
                outcome = op() => outcome,
            };
            match outcome {
                Err(e) if e.is_retryable() && attempt < self.max_retries => {
                    let delay = self.delay(attempt);
                    log::debug!("retrying in {delay:?} after: {e}");
                    attempt += 1;
                    tokio::select! {
                        _ = cancel.cancelled() => return Err(ClientError::Cancelled),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn fast() -> RetryPolicy {
        RetryPolicy {
            max_retries: 3,
            initial_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(4),
        }
    }

    #[tokio::test]
    async fn retries_5xx_but_not_4xx() {
        let calls = AtomicU32::new(0);
        let err = |status| ClientError::Http {
            status,
            code: crate::api::ErrorCode::Internal,
            message: "m".into(),
            path: None,
        };
        let r: Result<()> = fast()
            .run(&CancellationToken::new(), || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(err(503))
            })
            .await;
        assert!(r.is_err());
        assert_eq!(calls.swap(0, Ordering::SeqCst), 4);
        let r: Result<()> = fast()
            .run(&CancellationToken::new(), || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(err(404))
            })
            .await;
        assert_eq!(r.unwrap_err().status(), Some(404));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn succeeds_after_transient_failures() {
        let calls = AtomicU32::new(0);
        let r = fast()
            .run(&CancellationToken::new(), || async {
                if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                    Err(ClientError::Http {
                        status: 500,
                        code: crate::api::ErrorCode::Internal,
                        message: "m".into(),
                        path: None,
                    })
                } else {
                    Ok(7)
                }
            })
            .await;
        assert_eq!(r.unwrap(), 7);
    }

    #[tokio::test]
    async fn cancellation_stops_retrying() {
        let token = CancellationToken::new();
        token.cancel();
        let r: Result<()> = fast().run(&token, || async { Ok(()) }).await;
        assert!(matches!(r, Err(ClientError::Cancelled)));
    }

    #[test]
    fn delays_grow_and_are_capped() {
        let p = RetryPolicy {
            max_retries: 10,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        assert!(p.delay(0) <= Duration::from_millis(100));
        assert!(p.delay(3) >= Duration::from_millis(400));
        assert!(p.delay(30) <= Duration::from_secs(1));
    }
}
