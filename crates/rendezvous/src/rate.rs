//! Per-client rate limiting: one token bucket per client address (an IPv6 client is its /64, the
//! block one subscriber usually holds), in a table of bounded size. Sans-IO: time comes in as
//! `now_ms`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};

/// Token buckets of the clients seen recently.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    rate_per_s: u32,
    burst: u32,
    clients_max: usize,
    buckets: HashMap<IpAddr, Bucket>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated_ms: u64,
}

/// Why a request may not go through now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limited {
    /// This client spent its tokens; it may try again after this many seconds.
    Client { retry_after_s: u64 },
    /// The table of clients is full of clients that are all active.
    Busy,
}

impl RateLimiter {
    /// A limiter allowing `rate_per_s` requests a second per client with bursts of `burst`;
    /// `rate_per_s == 0` turns limiting off.
    pub fn new(rate_per_s: u32, burst: u32, clients_max: usize) -> RateLimiter {
        RateLimiter { rate_per_s, burst: burst.max(1), clients_max, buckets: HashMap::new() }
    }

    /// Takes a token for `ip` at `now_ms`, or says how long to wait.
    pub fn check(&mut self, now_ms: u64, ip: IpAddr) -> Result<(), Limited> {
        if self.rate_per_s == 0 {
            return Ok(());
        }
        let key = client_key(ip);
        if !self.buckets.contains_key(&key) && self.buckets.len() >= self.clients_max {
            self.forget_idle(now_ms);
            if self.buckets.len() >= self.clients_max {
                return Err(Limited::Busy);
            }
        }
        let (rate, burst) = (f64::from(self.rate_per_s), f64::from(self.burst));
        let bucket = self.buckets.entry(key).or_insert(Bucket { tokens: burst, updated_ms: now_ms });
        // A clock that went back refills nothing rather than panicking or draining.
        let elapsed_s = now_ms.saturating_sub(bucket.updated_ms) as f64 / 1000.0;
        bucket.tokens = (bucket.tokens + elapsed_s * rate).min(burst);
        bucket.updated_ms = bucket.updated_ms.max(now_ms);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let retry_after_s = ((1.0 - bucket.tokens) / rate).ceil().max(1.0) as u64;
            Err(Limited::Client { retry_after_s })
        }
    }

    /// Forgets clients whose bucket has refilled: they are indistinguishable from new ones.
    fn forget_idle(&mut self, now_ms: u64) {
        let refill_ms = (u64::from(self.burst) * 1000).div_ceil(u64::from(self.rate_per_s));
        self.buckets.retain(|_, bucket| now_ms.saturating_sub(bucket.updated_ms) < refill_ms);
    }
}

/// The unit one bucket limits: an IPv4 address, or an IPv6 /64 (IPv4-mapped IPv6 counts as IPv4).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_burst_then_the_rate() {
        let mut limiter = RateLimiter::new(10, 3, 100);
        for _ in 0..3 {
            limiter.check(0, ip("192.0.2.1")).unwrap();
        }
        assert_eq!(limiter.check(0, ip("192.0.2.1")), Err(Limited::Client { retry_after_s: 1 }));
        // Another client has its own bucket.
        limiter.check(0, ip("192.0.2.2")).unwrap();
        // 100 ms later one token is back, and only one.
        limiter.check(100, ip("192.0.2.1")).unwrap();
        assert!(limiter.check(100, ip("192.0.2.1")).is_err());
        // A clock going back is harmless.
        assert!(limiter.check(0, ip("192.0.2.1")).is_err());
    }

    #[test]
    fn retry_after_says_when_a_token_is_back() {
        let mut limiter = RateLimiter::new(1, 1, 100);
        limiter.check(0, ip("192.0.2.1")).unwrap();
        assert_eq!(limiter.check(0, ip("192.0.2.1")), Err(Limited::Client { retry_after_s: 1 }));
        let mut slow = RateLimiter { rate_per_s: 1, burst: 1, clients_max: 100, buckets: HashMap::new() };
        slow.buckets.insert(ip("192.0.2.1"), Bucket { tokens: -2.5, updated_ms: 0 });
        assert_eq!(slow.check(0, ip("192.0.2.1")), Err(Limited::Client { retry_after_s: 4 }));
    }

    #[test]
    fn ipv6_clients_are_limited_by_their_64() {
        let mut limiter = RateLimiter::new(10, 1, 100);
        limiter.check(0, ip("2001:db8:1:2::1")).unwrap();
        assert!(limiter.check(0, ip("2001:db8:1:2::ffff")).is_err());
        limiter.check(0, ip("2001:db8:1:3::1")).unwrap();
        limiter.check(0, ip("192.0.2.7")).unwrap();
        assert!(limiter.check(0, ip("::ffff:192.0.2.7")).is_err());
    }

    #[test]
    fn the_table_is_bounded_and_forgets_idle_clients() {
        let mut limiter = RateLimiter::new(10, 2, 2);
        limiter.check(0, ip("192.0.2.1")).unwrap();
        limiter.check(0, ip("192.0.2.2")).unwrap();
        assert_eq!(limiter.check(0, ip("192.0.2.3")), Err(Limited::Busy));
        // After 200 ms both buckets are full again, so their clients can be forgotten.
        limiter.check(200, ip("192.0.2.3")).unwrap();
        assert_eq!(limiter.buckets.len(), 1);
    }

    #[test]
    fn zero_rate_turns_limiting_off() {
        let mut limiter = RateLimiter::new(0, 1, 1);
        for n in 0..100u8 {
            limiter.check(0, IpAddr::from([192, 0, 2, n])).unwrap();
        }
    }
}
