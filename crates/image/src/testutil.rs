//! Hand-written tarballs for tests, including entries no well-behaved tar writer produces
//! (`..` paths, absolute paths, device nodes).

use std::io::Write;

use tar::{EntryType, Header};

#[derive(Default)]
pub(crate) struct RawTar {
    bytes: Vec<u8>,
}

pub(crate) struct RawEntry<'a> {
    pub(crate) name: &'a str,
    pub(crate) kind: EntryType,
    pub(crate) mode: u32,
    pub(crate) uid: u64,
    pub(crate) gid: u64,
    pub(crate) data: &'a [u8],
    pub(crate) link: &'a str,
    pub(crate) device: (u32, u32),
}

impl Default for RawEntry<'_> {
    fn default() -> Self {
        RawEntry {
            name: "",
            kind: EntryType::Regular,
            mode: 0o644,
            uid: 0,
            gid: 0,
            data: b"",
            link: "",
            device: (0, 0),
        }
    }
}

impl RawTar {
    pub(crate) fn entry(&mut self, entry: RawEntry<'_>) -> &mut Self {
        let mut header = Header::new_gnu();
        {
            let old = header.as_old_mut();
            old.name[..entry.name.len()].copy_from_slice(entry.name.as_bytes());
            old.linkname[..entry.link.len()].copy_from_slice(entry.link.as_bytes());
        }
        header.set_entry_type(entry.kind);
        header.set_mode(entry.mode);
        header.set_uid(entry.uid);
        header.set_gid(entry.gid);
        header.set_mtime(1_700_000_000);
        header.set_size(entry.data.len() as u64);
        if matches!(entry.kind, EntryType::Char | EntryType::Block) {
            header.set_device_major(entry.device.0).unwrap();
            header.set_device_minor(entry.device.1).unwrap();
        }
        header.set_cksum();
        self.bytes.extend_from_slice(header.as_bytes());
        self.bytes.extend_from_slice(entry.data);
        let padding = (512 - entry.data.len() % 512) % 512;
        self.bytes.extend(std::iter::repeat_n(0u8, padding));
        self
    }

    pub(crate) fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.entry(RawEntry {
            name,
            data,
            ..RawEntry::default()
        })
    }

    pub(crate) fn dir(&mut self, name: &str) -> &mut Self {
        self.entry(RawEntry {
            name,
            kind: EntryType::Directory,
            mode: 0o755,
            ..RawEntry::default()
        })
    }

    pub(crate) fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(RawEntry {
            name,
            kind: EntryType::Symlink,
            mode: 0o777,
            link: target,
            ..RawEntry::default()
        })
    }

    pub(crate) fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(RawEntry {
            name,
            kind: EntryType::Link,
            link: target,
            ..RawEntry::default()
        })
    }

    pub(crate) fn finish(&mut self) -> Vec<u8> {
        let mut bytes = std::mem::take(&mut self.bytes);
        bytes.extend(std::iter::repeat_n(0u8, 1024));
        bytes
    }
}

pub(crate) fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

pub(crate) fn zstd(bytes: &[u8]) -> Vec<u8> {
    zstd::encode_all(bytes, 3).unwrap()
}
