//! Join admission (pure): a token bucket per source address, and what becomes of a
//! node that joined but was never reached.

use std::collections::HashMap;
use std::net::IpAddr;

/// Token buckets per source address: `per_minute` joins, as a burst, refilled evenly.
/// Time is passed in (milliseconds), so the behaviour is a plain function of the calls.
#[derive(Debug)]
pub struct JoinRate {
    per_minute: u32,
    buckets: HashMap<IpAddr, (f64, u64)>,
    /// Addresses tracked at most; the fullest (least used) buckets go first.
    capacity: usize,
}

impl JoinRate {
    pub fn new(per_minute: u32, capacity: usize) -> JoinRate {
        JoinRate {
            per_minute,
            buckets: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// Takes a token for `ip` at `now_ms`; `Err(ms)` says how long until one is free.
    pub fn take(&mut self, ip: IpAddr, now_ms: u64) -> Result<(), u64> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let full = f64::from(self.per_minute);
        let per_ms = full / 60_000.0;
        if self.buckets.len() >= self.capacity && !self.buckets.contains_key(&ip) {
            // Forget the buckets that have refilled: they hold no history worth keeping.
            self.buckets
                .retain(|_, (t, at)| *t + (now_ms.saturating_sub(*at)) as f64 * per_ms < full);
            if self.buckets.len() >= self.capacity {
                return Err(60_000);
            }
        }
        let (tokens, at) = self.buckets.entry(ip).or_insert((full, now_ms));
        *tokens = (*tokens + now_ms.saturating_sub(*at) as f64 * per_ms).min(full);
        *at = now_ms;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / per_ms).ceil() as u64)
        }
    }
}

/// What to do with a node that has a pending-join marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pending {
    /// Not reached yet, still within its time.
    Wait,
    /// The leader has replicated to it: it came up; drop the marker.
    CameUp,
    /// Never reached in time: remove the node and release its addresses.
    Expired,
    /// The record is gone (it left): drop the marker.
    Gone,
}

pub fn pending(now_ms: u64, deadline_ms: u64, has_record: bool, reached: bool) -> Pending {
    match (has_record, reached) {
        (false, _) => Pending::Gone,
        (true, true) => Pending::CameUp,
        (true, false) if now_ms > deadline_ms => Pending::Expired,
        (true, false) => Pending::Wait,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_gets_its_burst_then_waits_for_refill() {
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let mut r = JoinRate::new(6, 100);
        for _ in 0..6 {
            r.take(ip, 0).unwrap();
        }
        let wait = r.take(ip, 0).unwrap_err();
        assert_eq!(wait, 10_000, "one token per 10 s at 6/min");
        // Another source is not held back.
        r.take(other, 0).unwrap();
        // After 10 s one more.
        r.take(ip, 10_000).unwrap();
        assert!(r.take(ip, 10_000).is_err());
        // Zero means no limit.
        let mut r = JoinRate::new(0, 1);
        for _ in 0..100 {
            r.take(ip, 0).unwrap();
        }
    }

    #[test]
    fn the_table_of_sources_is_bounded() {
        let mut r = JoinRate::new(1, 2);
        let ip = |i: u8| IpAddr::from([10, 0, 0, i]);
        r.take(ip(1), 0).unwrap();
        r.take(ip(2), 0).unwrap();
        // Full of fresh, empty buckets: a third source waits.
        assert!(r.take(ip(3), 0).is_err());
        // Once the others have refilled they are forgotten.
        r.take(ip(3), 120_000).unwrap();
    }

    #[test]
    fn a_pending_join_waits_comes_up_or_expires() {
        assert_eq!(pending(5, 10, true, false), Pending::Wait);
        assert_eq!(pending(11, 10, true, false), Pending::Expired);
        assert_eq!(pending(11, 10, true, true), Pending::CameUp);
        assert_eq!(pending(11, 10, false, false), Pending::Gone);
    }
}
