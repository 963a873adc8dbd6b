//! A token bucket shared by every repair job on a node, so that repair as a
//! whole reads at most `repair.rate_mb_per_s` however many jobs run, and
//! client reads and writes keep the rest of the disks and the network.
//!
//! A caller takes its bytes before it reads them and, when the bucket runs
//! dry, sleeps for exactly the deficit: the bucket goes into debt rather than
//! making callers poll, so a read larger than the burst still goes through
//! (just later), callers are served in the order they asked, and the long-run
//! rate is the configured one.

use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Seconds of the rate an idle bucket may save up: a short burst after a
/// pause, never a long one.
const BURST_SECONDS: f64 = 0.1;

struct Bucket {
    /// Bytes that may be read now; negative when callers are waiting.
    tokens: f64,
    refilled: Instant,
}

pub struct Throttle {
    /// Bytes per second; 0 means unlimited.
    rate: f64,
    burst: f64,
    bucket: Mutex<Bucket>,
}

impl Throttle {
    /// A bucket of `rate_bytes_per_s` (0 or less, or not finite: unlimited).
    pub fn new(rate_bytes_per_s: f64) -> Throttle {
        let rate = if rate_bytes_per_s.is_finite() && rate_bytes_per_s > 0.0 {
            rate_bytes_per_s
        } else {
            0.0
        };
        let burst = rate * BURST_SECONDS;
        Throttle {
            rate,
            burst,
            bucket: Mutex::new(Bucket {
                tokens: burst,
                refilled: Instant::now(),
            }),
        }
    }

    pub fn is_unlimited(&self) -> bool {
        self.rate == 0.0
    }

    /// Waits until `bytes` may be read.
    pub async fn take(&self, bytes: u64) {
        if self.is_unlimited() || bytes == 0 {
            return;
        }
        let wait = {
            let mut bucket = self
                .bucket
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let now = Instant::now();
            let elapsed = now.duration_since(bucket.refilled).as_secs_f64();
            bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
            bucket.refilled = now;
            bucket.tokens -= bytes as f64;
            if bucket.tokens >= 0.0 {
                Duration::ZERO
            } else {
                Duration::from_secs_f64(-bucket.tokens / self.rate)
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn concurrent_takers_share_the_rate() {
        let throttle = Arc::new(Throttle::new(10e6));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let throttle = throttle.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..10 {
                    throttle.take(1_000_000).await;
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        // 40 MB at 10 MB/s, less the 1 MB burst the bucket starts with.
        let seconds = started.elapsed().as_secs_f64();
        assert!((3.8..=4.0).contains(&seconds), "{seconds} s");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_bucket_saves_only_a_short_burst() {
        let throttle = Throttle::new(10e6);
        tokio::time::sleep(Duration::from_secs(60)).await;
        let started = Instant::now();
        throttle.take(1_000_000).await;
        assert_eq!(started.elapsed(), Duration::ZERO);
        throttle.take(5_000_000).await;
        let seconds = started.elapsed().as_secs_f64();
        assert!((0.49..=0.51).contains(&seconds), "{seconds} s");
    }

    #[tokio::test(start_paused = true)]
    async fn zero_is_unlimited() {
        let throttle = Throttle::new(0.0);
        let started = Instant::now();
        throttle.take(u64::MAX).await;
        assert!(throttle.is_unlimited());
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
