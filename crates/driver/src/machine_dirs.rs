//! The directory of machine dirs both drivers keep: one per machine, named
//! by its id.

use std::path::Path;

use crate::DriverError;

/// The ids of the machines that have a dir under `machines_dir`.
pub fn list(machines_dir: &Path) -> Result<Vec<String>, DriverError> {
    let entries = std::fs::read_dir(machines_dir).map_err(DriverError::while_doing(&format!(
        "listing {}",
        machines_dir.display()
    )))?;
    Ok(entries
        .flatten()
        .filter(|entry| entry.path().is_dir())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect())
}

/// Removes a machine's dir; one already gone is fine.
pub fn remove(dir: &Path) -> Result<(), DriverError> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(DriverError::host(format!("removing {}", dir.display()), e))
        }
        _ => Ok(()),
    }
}
