//! What can go wrong in the microvm driver.

use std::path::{Path, PathBuf};

use midge_driver::DriverError;

#[derive(Debug, thiserror::Error)]
pub enum MicrovmError {
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("running {command}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{command} failed: {output}")]
    Command { command: String, output: String },
    #[error(
        "the guest kernel is missing: {0} (scripts/install-deps unpacks Debian's linux-image-cloud-amd64 there)"
    )]
    NoKernel(PathBuf),
    #[error("qemu-system-x86_64 is not installed or does not run")]
    NoQemu,
    #[error(transparent)]
    Qmp(#[from] crate::qmp::QmpError),
}

impl MicrovmError {
    /// For `map_err`: an I/O error on `path`.
    pub fn io(path: &Path) -> impl FnOnce(std::io::Error) -> MicrovmError + '_ {
        move |source| MicrovmError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// As the agent sees it: the host failed at `action`.
    pub fn while_doing(action: &str) -> impl FnOnce(MicrovmError) -> DriverError + '_ {
        move |error| DriverError::host(action, error)
    }
}
