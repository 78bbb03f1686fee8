//! Which host ids each machine's user namespace maps: a block of
//! [`RANGE_SIZE`] ids per machine, picked once and kept in the machine's
//! dir, never the block of another machine of the host.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::idmap::{IdRange, RANGE_SIZE, UserNamespace};
use crate::layout::MachineDir;

/// Blocks start above the ids hosts hand out to users and to
/// `/etc/subuid` (16 Mi), and end before uid `u32::MAX`, which means "none".
const FIRST_BLOCK: u32 = 256;
const BLOCKS: u32 = u32::MAX / RANGE_SIZE - FIRST_BLOCK;

/// How many namespaces are kept open (one fd each) for the next runs.
const KEPT_NAMESPACES: usize = 256;

/// Hands out blocks; one at a time, so two new machines never pick the same.
#[derive(Debug, Default)]
pub(crate) struct IdRanges {
    assigning: Mutex<()>,
    /// Making a namespace clones this process; a machine's next run reuses
    /// the one its last run was made with.
    namespaces: Mutex<HashMap<u32, Arc<UserNamespace>>>,
}

impl IdRanges {
    /// A user namespace of `range`: the kept one, or a new one, kept.
    pub fn namespace(&self, range: IdRange) -> std::io::Result<Arc<UserNamespace>> {
        let mut namespaces = self.namespaces.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(namespace) = namespaces.get(&range.base) {
            return Ok(namespace.clone());
        }
        let namespace = Arc::new(UserNamespace::create(range)?);
        if namespaces.len() < KEPT_NAMESPACES {
            namespaces.insert(range.base, namespace.clone());
        }
        Ok(namespace)
    }

    /// Closes the namespace kept for a machine that is gone.
    pub fn forget(&self, machine: &MachineDir) {
        if let Some(range) = read(&machine.id_range()) {
            self.namespaces
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&range.base);
        }
    }

    /// The machine's block: the one it has, or a free one, recorded.
    pub fn for_machine(
        &self,
        machines_dir: &Path,
        machine: &MachineDir,
    ) -> std::io::Result<IdRange> {
        if let Some(range) = read(&machine.id_range()) {
            return Ok(range);
        }
        let _assigning = self.assigning.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(range) = read(&machine.id_range()) {
            return Ok(range);
        }
        let taken = taken(machines_dir);
        let start = rand::random_range(0..BLOCKS);
        let block = (0..BLOCKS)
            .map(|step| FIRST_BLOCK + (start + step) % BLOCKS)
            .find(|block| !taken.contains(&(block * RANGE_SIZE)))
            .ok_or_else(|| std::io::Error::other("every id range of the host is taken"))?;
        let range = IdRange {
            base: block * RANGE_SIZE,
        };
        std::fs::create_dir_all(&machine.root)?;
        let file = machine.id_range();
        let partial = file.with_extension("new");
        std::fs::write(&partial, range.base.to_string())?;
        std::fs::rename(&partial, &file)?;
        Ok(range)
    }
}

fn read(file: &Path) -> Option<IdRange> {
    let base: u32 = std::fs::read_to_string(file).ok()?.trim().parse().ok()?;
    (base.is_multiple_of(RANGE_SIZE) && base >= FIRST_BLOCK * RANGE_SIZE)
        .then_some(IdRange { base })
}

/// The bases of every machine's block on the host.
fn taken(machines_dir: &Path) -> std::collections::HashSet<u32> {
    std::fs::read_dir(machines_dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|entry| read(&MachineDir { root: entry.path() }.id_range()))
                .map(|range| range.base)
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_machine_keeps_its_block_and_no_two_machines_share_one() {
        let dir = tempfile::tempdir().unwrap();
        let ranges = IdRanges::default();
        let machines: Vec<MachineDir> = (0..50)
            .map(|n| MachineDir::new(dir.path(), &format!("m{n}")))
            .collect();
        let first: Vec<IdRange> = machines
            .iter()
            .map(|machine| ranges.for_machine(dir.path(), machine).unwrap())
            .collect();
        let distinct: std::collections::HashSet<u32> = first.iter().map(|r| r.base).collect();
        assert_eq!(distinct.len(), machines.len());
        for range in &first {
            assert!(range.base >= FIRST_BLOCK * RANGE_SIZE);
            assert!(
                range
                    .base
                    .checked_add(RANGE_SIZE - 1)
                    .is_some_and(|last| last < u32::MAX)
            );
        }
        let again = ranges.for_machine(dir.path(), &machines[7]).unwrap();
        assert_eq!(again, first[7], "a machine keeps its block");
    }

    #[test]
    fn a_damaged_record_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let machine = MachineDir::new(dir.path(), "m");
        std::fs::create_dir_all(&machine.root).unwrap();
        std::fs::write(machine.id_range(), "12").unwrap();
        let range = IdRanges::default()
            .for_machine(dir.path(), &machine)
            .unwrap();
        assert_ne!(range.base, 12);
        assert_eq!(read(&machine.id_range()), Some(range));
    }
}
