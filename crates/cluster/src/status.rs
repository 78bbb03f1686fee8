//! Whether a host answers, from the age of its last heartbeat.

use std::time::Duration;

use midge_store::HostRecord;

/// How long a host may be silent before it counts as `unknown`, then as
/// `unreachable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    pub unknown_after: Duration,
    pub unreachable_after: Duration,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness {
            unknown_after: Duration::from_secs(10),
            unreachable_after: Duration::from_secs(30),
        }
    }
}

/// A host's status, as Fly writes it in `host_status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostStatus {
    Ok,
    Unknown,
    Unreachable,
}

impl HostStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HostStatus::Ok => "ok",
            HostStatus::Unknown => "unknown",
            HostStatus::Unreachable => "unreachable",
        }
    }
}

impl Liveness {
    pub fn status(&self, host: &HostRecord, now_millis: i64) -> HostStatus {
        let silent = u64::try_from(now_millis.saturating_sub(host.heartbeat_at)).unwrap_or(0);
        let silent = Duration::from_millis(silent);
        if silent > self.unreachable_after {
            HostStatus::Unreachable
        } else if silent > self.unknown_after {
            HostStatus::Unknown
        } else {
            HostStatus::Ok
        }
    }
}

pub(crate) fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use midge_store::HostLoad;

    fn host(heartbeat_at: i64) -> HostRecord {
        HostRecord {
            id: "h".into(),
            number: 1,
            region: "ord".into(),
            agent_url: String::new(),
            underlay: None,
            cpus: 1,
            memory_mb: 1,
            driver: "sandbox".into(),
            accelerator: None,
            cordoned: false,
            load: HostLoad::default(),
            heartbeat_at,
            registered_at: 0,
        }
    }

    #[test]
    fn silence_makes_a_host_unknown_then_unreachable() {
        let liveness = Liveness::default();
        let now = 100_000;
        assert_eq!(liveness.status(&host(now - 2_000), now), HostStatus::Ok);
        assert_eq!(
            liveness.status(&host(now - 15_000), now),
            HostStatus::Unknown
        );
        assert_eq!(
            liveness.status(&host(now - 31_000), now),
            HostStatus::Unreachable
        );
        assert_eq!(
            liveness.status(&host(now + 500), now),
            HostStatus::Ok,
            "clock skew"
        );
    }
}
