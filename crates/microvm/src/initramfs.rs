//! The guest's initramfs: a newc cpio archive (uncompressed; the kernel
//! reads it as is) holding the static midge-init as `/init` and the kernel
//! modules the guest needs, in load order. Each run appends a small
//! archive of its own (the kernel reads concatenated archives) with the
//! run spec and the VM boot description.

use std::path::Path;

use midge_init::vm::{MODULE_DIR, MODULE_ORDER_FILE};

use crate::error::MicrovmError;

/// The modules a guest needs that the Debian cloud kernel builds as `.ko`:
/// virtio-mmio (microvm's transport), disks, the NIC and the serial ports.
/// Their dependencies are added from each module's `depends=`.
pub const GUEST_MODULES: &[&str] = &["virtio_mmio", "virtio_blk", "virtio_net", "virtio_console"];

const MODE_DIR: u32 = 0o040_755;
const MODE_FILE: u32 = 0o100_644;
const MODE_EXEC: u32 = 0o100_755;

/// Writes a newc archive entry by entry.
#[derive(Debug, Default)]
pub struct NewcWriter {
    bytes: Vec<u8>,
    inode: u32,
}

impl NewcWriter {
    pub fn dir(&mut self, path: &str) {
        self.entry(path, MODE_DIR, &[]);
    }

    pub fn file(&mut self, path: &str, content: &[u8], executable: bool) {
        self.entry(
            path,
            if executable { MODE_EXEC } else { MODE_FILE },
            content,
        );
    }

    fn entry(&mut self, path: &str, mode: u32, content: &[u8]) {
        self.inode += 1;
        let nlink = if mode & 0o040_000 != 0 { 2 } else { 1 };
        self.header(self.inode, mode, nlink, content.len(), path);
        self.bytes.extend_from_slice(content);
        self.pad();
    }

    /// newc's header: magic, then 13 fields of 8 hex digits (ino, mode,
    /// uid, gid, nlink, mtime, filesize, dev major/minor, rdev
    /// major/minor, namesize, check), the NUL-terminated name, padding.
    fn header(&mut self, inode: u32, mode: u32, nlink: u32, size: usize, name: &str) {
        let fields = [
            inode as usize,
            mode as usize,
            0,
            0,
            nlink as usize,
            0,
            size,
            0,
            0,
            0,
            0,
            name.len() + 1,
            0,
        ];
        self.bytes.extend_from_slice(b"070701");
        for field in fields {
            self.bytes
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }

    /// Closes the archive with its trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.header(0, 0, 1, 0, "TRAILER!!!");
        self.bytes
    }
}

/// The modules to load, dependencies first, from the kernel's module tree.
pub fn module_load_order(
    modules_dir: &Path,
) -> Result<Vec<(String, std::path::PathBuf)>, MicrovmError> {
    let mut by_name = std::collections::HashMap::new();
    index_modules(&modules_dir.join("kernel"), &mut by_name)?;
    let mut order = Vec::new();
    for name in GUEST_MODULES {
        add_with_dependencies(name, &by_name, &mut order)?;
    }
    Ok(order)
}

fn index_modules(
    dir: &Path,
    by_name: &mut std::collections::HashMap<String, std::path::PathBuf>,
) -> Result<(), MicrovmError> {
    let entries = std::fs::read_dir(dir).map_err(MicrovmError::io(dir))?;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            index_modules(&path, by_name)?;
        } else if let Some(name) = path.file_name().and_then(|n| n.to_str())
            && let Some(stem) = name.strip_suffix(".ko")
        {
            by_name.insert(stem.replace('-', "_"), path);
        }
    }
    Ok(())
}

fn add_with_dependencies(
    name: &str,
    by_name: &std::collections::HashMap<String, std::path::PathBuf>,
    order: &mut Vec<(String, std::path::PathBuf)>,
) -> Result<(), MicrovmError> {
    if order.iter().any(|(known, _)| known == name) {
        return Ok(());
    }
    // Not a file: the kernel has it built in.
    let Some(path) = by_name.get(name) else {
        return Ok(());
    };
    let bytes = std::fs::read(path).map_err(MicrovmError::io(path))?;
    for dependency in module_dependencies(&bytes) {
        add_with_dependencies(&dependency, by_name, order)?;
    }
    order.push((name.to_string(), path.clone()));
    Ok(())
}

/// The `depends=` entry of a module's `.modinfo`: NUL-separated strings.
pub fn module_dependencies(module: &[u8]) -> Vec<String> {
    module
        .split(|&byte| byte == 0)
        .find_map(|field| field.strip_prefix(b"depends="))
        .map(|list| {
            String::from_utf8_lossy(list)
                .split(',')
                .filter(|name| !name.is_empty())
                .map(|name| name.replace('-', "_"))
                .collect()
        })
        .unwrap_or_default()
}

/// The base archive: `/init` and the modules with their load order.
pub fn base_archive(init_binary: &Path, modules_dir: &Path) -> Result<Vec<u8>, MicrovmError> {
    let init = std::fs::read(init_binary).map_err(MicrovmError::io(init_binary))?;
    let modules = module_load_order(modules_dir)?;
    let mut archive = NewcWriter::default();
    for dir in ["dev", "proc", "sys", "midge", "lib", MODULE_DIR] {
        archive.dir(dir);
    }
    // The kernel opens /dev/console for init's stdio before init runs.
    archive.file("init", &init, true);
    let mut order = String::new();
    for (name, path) in &modules {
        let bytes = std::fs::read(path).map_err(MicrovmError::io(path))?;
        let file = format!("{name}.ko");
        archive.file(&format!("{MODULE_DIR}/{file}"), &bytes, false);
        order.push_str(&file);
        order.push('\n');
    }
    archive.file(MODULE_ORDER_FILE, order.as_bytes(), false);
    Ok(archive.finish())
}

/// The run's own archive, appended to the base one.
pub fn run_archive(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut archive = NewcWriter::default();
    for (path, content) in files {
        archive.file(path, content, false);
    }
    archive.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads a newc archive back: (name, mode, content) per entry.
    fn parse(mut bytes: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let mut entries = Vec::new();
        let field = |header: &[u8], n: usize| {
            u32::from_str_radix(
                std::str::from_utf8(&header[6 + n * 8..14 + n * 8]).unwrap(),
                16,
            )
            .unwrap() as usize
        };
        let align = |n: usize| n.div_ceil(4) * 4;
        while !bytes.is_empty() {
            assert_eq!(&bytes[..6], b"070701");
            let (mode, size, name_len) = (field(bytes, 1), field(bytes, 6), field(bytes, 11));
            let name = String::from_utf8(bytes[110..110 + name_len - 1].to_vec()).unwrap();
            let data_start = align(110 + name_len);
            let content = bytes[data_start..data_start + size].to_vec();
            bytes = &bytes[align(data_start + size)..];
            if name == "TRAILER!!!" {
                entries.push((name, 0, Vec::new()));
                continue;
            }
            entries.push((name, u32::try_from(mode).unwrap(), content));
        }
        entries
    }

    #[test]
    fn archives_hold_what_was_written_and_concatenate() {
        let mut archive = NewcWriter::default();
        archive.dir("midge");
        archive.file("init", b"\x7fELF...", true);
        archive.file("midge/run.json", b"{}", false);
        let mut bytes = archive.finish();
        assert_eq!(bytes.len() % 4, 0);
        bytes.extend(run_archive(&[("midge/vm.json", b"{\"hostname\":\"h\"}")]));
        let entries = parse(&bytes);
        let names: Vec<_> = entries.iter().map(|(name, _, _)| name.as_str()).collect();
        assert_eq!(
            names,
            [
                "midge",
                "init",
                "midge/run.json",
                "TRAILER!!!",
                "midge/vm.json",
                "TRAILER!!!"
            ]
        );
        assert_eq!(entries[0].1, MODE_DIR);
        assert_eq!(
            entries[1],
            ("init".into(), MODE_EXEC, b"\x7fELF...".to_vec())
        );
        assert_eq!(entries[4].2, b"{\"hostname\":\"h\"}");
    }

    #[test]
    fn module_dependencies_come_from_modinfo_and_load_first() {
        let module = b"\x7fELF\0license=GPL\0depends=virtio,virtio_ring\0vermagic=6.1\0";
        assert_eq!(module_dependencies(module), ["virtio", "virtio_ring"]);
        assert!(module_dependencies(b"depends=\0").is_empty());

        let tree = tempfile::tempdir().unwrap();
        let kernel = tree.path().join("kernel/drivers");
        std::fs::create_dir_all(&kernel).unwrap();
        std::fs::write(kernel.join("virtio_ring.ko"), b"\0depends=\0").unwrap();
        std::fs::write(kernel.join("virtio.ko"), b"\0depends=virtio_ring\0").unwrap();
        std::fs::write(
            kernel.join("virtio_mmio.ko"),
            b"\0depends=virtio,virtio_ring\0",
        )
        .unwrap();
        std::fs::write(
            kernel.join("virtio_blk.ko"),
            b"\0depends=virtio,virtio_ring\0",
        )
        .unwrap();
        // virtio_net and virtio_console are "built in" here: no files.
        let order: Vec<_> = module_load_order(tree.path())
            .unwrap()
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        assert_eq!(
            order,
            ["virtio_ring", "virtio", "virtio_mmio", "virtio_blk"]
        );
    }
}
