//! Client-side token bucket for EC2 calls (EC2_API_QPS / EC2_API_BURST): a node must not let a reconcile
//! storm eat the account's shared EC2 request quota.

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    pub fn new(rate_per_sec: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self { rate: rate_per_sec, burst, state: Mutex::new((burst, Instant::now())) }
    }

    /// Waits until a token is available and takes it. Returns how long it waited.
    pub async fn acquire(&self) -> Duration {
        let mut st = self.state.lock().await;
        let now = Instant::now();
        let (tokens, last) = *st;
        let tokens = (tokens + now.duration_since(last).as_secs_f64() * self.rate).min(self.burst);
        if tokens >= 1.0 {
            *st = (tokens - 1.0, now);
            return Duration::ZERO;
        }
        // Config bounds the rate; an unrepresentable wait would still only mean "wait very long", never a panic.
        let wait = Duration::try_from_secs_f64((1.0 - tokens) / self.rate).unwrap_or(Duration::MAX);
        // Holding the lock while sleeping keeps callers in order (FIFO through the mutex).
        tokio::time::sleep(wait).await;
        *st = (0.0, Instant::now());
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn burst_then_rate() {
        let b = TokenBucket::new(5.0, 3);
        for _ in 0..3 {
            assert_eq!(b.acquire().await, Duration::ZERO);
        }
        let waited = b.acquire().await;
        assert!((waited.as_secs_f64() - 0.2).abs() < 0.01, "{waited:?}");
    }
}
