//! Machine networking's errors: bad configuration, failed `ip`/`nft` runs
//! (with the script that failed), and leftovers after a teardown.

use std::path::PathBuf;

/// Everything that can go wrong while setting up or tearing down machine networking.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("invalid network configuration: {0}")]
    InvalidConfig(String),

    #[error("invalid machine id {machine_id:?}: {reason}")]
    InvalidMachineId { machine_id: String, reason: String },

    #[error("slot {slot} is outside the IPv4 pool {pool} ({capacity} slots)")]
    SlotOutOfPool {
        slot: u32,
        pool: String,
        capacity: u32,
    },

    #[error("could not run `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },

    #[error("`{command}` failed ({status}): {stderr}{script}")]
    Command {
        command: String,
        status: String,
        stderr: String,
        /// The script fed on stdin, shown so a failing batch line can be found.
        script: String,
    },

    #[error("{action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("unexpected output from `{command}`: {reason}")]
    UnexpectedOutput { command: String, reason: String },

    #[error("announcing egress addresses on {interface}")]
    Announce {
        interface: String,
        #[source]
        source: std::io::Error,
    },

    #[error("teardown left resources behind: {0}")]
    Leftovers(String),
}

impl NetError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        NetError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
