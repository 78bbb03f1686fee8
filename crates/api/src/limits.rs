//! Fly's rate limits on machine calls: per machine and per action, one
//! request a second with a burst of 3; reading a machine five a second with
//! a burst of 10. A caller over the limit gets a 429 with `Retry-After`.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::Method;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::error::Error;

/// Forgotten keys are dropped every this many checks, so that limits on
/// destroyed machines do not pile up.
const SWEEP_EVERY: u64 = 4096;

/// One limit: so many requests a second, with a burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
}

impl Rate {
    pub const fn new(per_second: NonZeroU32, burst: NonZeroU32) -> Rate {
        Rate { per_second, burst }
    }

    fn quota(self) -> Quota {
        Quota::per_second(self.per_second).allow_burst(self.burst)
    }
}

/// Fly's figures.
pub const FLY_ACTION_RATE: Rate = Rate::new(NonZeroU32::MIN, NonZeroU32::new(3).unwrap());
pub const FLY_READ_RATE: Rate =
    Rate::new(NonZeroU32::new(5).unwrap(), NonZeroU32::new(10).unwrap());

/// The limiters of one API server.
pub struct RateLimits {
    actions: DefaultKeyedRateLimiter<(String, String)>,
    reads: DefaultKeyedRateLimiter<(String, String)>,
    clock: DefaultClock,
    checks: AtomicU64,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits").finish_non_exhaustive()
    }
}

impl RateLimits {
    pub fn new(actions: Rate, reads: Rate) -> RateLimits {
        RateLimits {
            actions: RateLimiter::keyed(actions.quota()),
            reads: RateLimiter::keyed(reads.quota()),
            clock: DefaultClock::default(),
            checks: AtomicU64::new(0),
        }
    }

    /// Fly's limits.
    pub fn fly() -> RateLimits {
        RateLimits::new(FLY_ACTION_RATE, FLY_READ_RATE)
    }

    /// Counts one `method` call of `action` (the route) on `machine_id`; a
    /// 429 when that goes over the limit.
    pub fn check(&self, method: &Method, action: &str, machine_id: &str) -> Result<(), Error> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.actions.retain_recent();
            self.reads.retain_recent();
        }
        let limiter = if method == Method::GET {
            &self.reads
        } else {
            &self.actions
        };
        let key = (format!("{method} {action}"), machine_id.to_owned());
        limiter.check_key(&key).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            Error::rate_limited(
                format!(
                    "rate limit exceeded for {method} {action} on machine {machine_id}: try again in {} ms",
                    wait.as_millis().max(1)
                ),
                wait,
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_get_a_burst_of_three_per_machine_and_action() {
        let limits = RateLimits::fly();
        let start = "/v1/apps/{app_name}/machines/{machine_id}/start";
        for _ in 0..3 {
            limits.check(&Method::POST, start, "m1").unwrap();
        }
        let refused = limits.check(&Method::POST, start, "m1").unwrap_err();
        assert_eq!(refused.api.code.http_status(), 429);
        let retry_after = refused.retry_after_secs.unwrap();
        assert!((1..=1).contains(&retry_after), "{retry_after}");
        // Another machine, or another action on the same one, has its own budget.
        limits.check(&Method::POST, start, "m2").unwrap();
        limits
            .check(
                &Method::POST,
                "/v1/apps/{app_name}/machines/{machine_id}/stop",
                "m1",
            )
            .unwrap();
    }

    #[test]
    fn reads_get_a_burst_of_ten() {
        let limits = RateLimits::fly();
        let get = "/v1/apps/{app_name}/machines/{machine_id}";
        for _ in 0..10 {
            limits.check(&Method::GET, get, "m1").unwrap();
        }
        assert!(limits.check(&Method::GET, get, "m1").is_err());
        limits.check(&Method::POST, get, "m1").unwrap();
    }
}
