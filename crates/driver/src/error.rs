//! What can go wrong in a driver, sorted by whose fault it is: the
//! machine's (its program cannot start) or the host's (with the cause kept).

/// A boxed cause, kept as the `source` of an error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The machine's own program could not be started: a missing command, a
    /// bad user, an unwritable guest file. Retrying on this host will not help.
    #[error("the machine's program failed to start: {0}")]
    ProgramFailed(String),
    /// The host could not do what was asked.
    #[error("{action}")]
    Host {
        /// What the driver was doing, e.g. "creating the container".
        action: String,
        #[source]
        source: BoxError,
    },
    /// The driver cannot do this at all (e.g. suspend without a snapshot mechanism).
    #[error("{operation} is not supported by the {driver} driver")]
    Unsupported {
        operation: &'static str,
        driver: &'static str,
    },
}

impl DriverError {
    /// A host failure while doing `action`.
    pub fn host(action: impl Into<String>, source: impl Into<BoxError>) -> DriverError {
        DriverError::Host {
            action: action.into(),
            source: source.into(),
        }
    }

    /// For `map_err`: a host failure while doing `action`.
    pub fn while_doing<E: Into<BoxError>>(action: &str) -> impl FnOnce(E) -> DriverError + '_ {
        move |source| DriverError::host(action, source)
    }
}
