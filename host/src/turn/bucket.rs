//! A token bucket over bytes: a relay's rate limit. Sans IO (time is a parameter).

use std::time::Instant;

#[derive(Debug, Clone)]
pub struct Bucket {
    /// Bytes per second; 0: no limit.
    rate: u64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// Starts full: one second's worth of bytes.
    pub fn new(rate: u64, now: Instant) -> Bucket {
        Bucket {
            rate,
            tokens: rate as f64,
            last: now,
        }
    }

    /// Takes `n` bytes if the bucket holds them.
    pub fn take(&mut self, n: usize, now: Instant) -> bool {
        if self.rate == 0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        let burst = self.rate as f64;
        self.tokens = (self.tokens + elapsed * self.rate as f64).min(burst);
        if self.tokens >= n as f64 {
            self.tokens -= n as f64;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn it_passes_its_rate_and_no_more() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10_000, t0);
        // The first second's burst, then nothing until time passes.
        let sent = (0..100).filter(|_| b.take(1_000, t0)).count();
        assert_eq!(sent, 10);
        // Over the next 5 s, in 10 ms steps, 10 kB/s gets through.
        let mut passed = 0;
        for i in 1..=500 {
            if b.take(1_000, t0 + Duration::from_millis(10 * i)) {
                passed += 1000;
            }
        }
        assert!((49_000..=51_000).contains(&passed), "{passed}");
    }

    #[test]
    fn zero_is_no_limit() {
        let t0 = Instant::now();
        let mut b = Bucket::new(0, t0);
        assert!((0..1000).all(|_| b.take(1 << 20, t0)));
    }
}
