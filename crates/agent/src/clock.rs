//! The time the agent's restart policy reads: the system's, moved forward
//! by what a caller asked for (nothing, outside tests), so the 5-minute
//! window of on-failure can be tested without waiting 5 minutes.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

#[derive(Debug, Clone, Default)]
pub struct Clock {
    ahead_ms: Arc<AtomicI64>,
}

impl Clock {
    /// Unix milliseconds.
    pub fn now_millis(&self) -> i64 {
        midge_types::now_millis().saturating_add(self.ahead_ms.load(Ordering::Relaxed))
    }

    /// Moves this clock (and every copy of it) forward.
    pub fn advance(&self, by: Duration) {
        let by = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.ahead_ms.fetch_add(by, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_move_together() {
        let clock = Clock::default();
        let copy = clock.clone();
        let before = copy.now_millis();
        clock.advance(Duration::from_secs(300));
        assert!(copy.now_millis() - before >= 300_000);
    }
}
