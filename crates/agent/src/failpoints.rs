//! Named points in the agent's durable operations where a crash test
//! freezes the process, so that its kill -9 lands exactly there. Compiled
//! in only with the `failpoints` feature and armed by the `FAILPOINTS`
//! environment variable (`FAILPOINTS=agent-destroy-recorded=return`);
//! otherwise every point is nothing.

/// Reads `FAILPOINTS` for the life of the process.
pub fn setup() {
    #[cfg(feature = "failpoints")]
    std::mem::forget(fail::FailScenario::setup());
}

/// What an armed point does: says so on stderr and blocks this thread
/// until the process is killed.
#[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
pub(crate) fn freeze(point: &str) -> ! {
    eprintln!("failpoint {point} reached; waiting to be killed");
    loop {
        std::thread::park();
    }
}

/// `failpoint!("name")` in a function returning `Result<_, AgentError>`.
macro_rules! failpoint {
    ($name:literal) => {
        fail::fail_point!($name, |_| $crate::failpoints::freeze($name))
    };
}
pub(crate) use failpoint;
