//! A volume's image as a byte stream between hosts: only its data ranges
//! travel (a mostly empty 10 GiB volume sends the few MiB it holds).
//!
//! The stream is a header (`MIDGEVOL1`, the image size), then frames of
//! (offset, length, bytes), then a frame at offset `u64::MAX` and the
//! sha256 of every frame before it. An import writes into a temp image that
//! becomes the volume only when the stream ended with a matching digest, so
//! a cut connection leaves nothing behind.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::copy::{self, CHUNK};
use crate::error::{IoContext, VolumeError};
use crate::files::create_new;
use crate::id;
use crate::pool::{self, VolumePool};
use crate::temp::TempFile;

const MAGIC: &[u8; 9] = b"MIDGEVOL1";
const END: u64 = u64::MAX;

/// Writes the image at `path` to `out` as a transfer stream.
pub fn export_image(path: &Path, out: &mut impl Write) -> Result<(), VolumeError> {
    let file = File::open(path).ctx("open", path)?;
    let len = file.metadata().ctx("stat", path)?.len();
    let write = |out: &mut dyn Write, bytes: &[u8]| out.write_all(bytes).ctx("send", path);
    write(out, MAGIC)?;
    write(out, &len.to_be_bytes())?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut offset = 0u64;
    while offset < len {
        let Some((start, end)) = copy::next_data(&file, offset, len).ctx("seek", path)? else {
            break;
        };
        let mut pos = start;
        while pos < end {
            let want = usize::try_from((end - pos).min(CHUNK as u64)).unwrap_or(CHUNK);
            let got = copy::read_at_most(&file, &mut buf[..want], pos).ctx("read", path)?;
            if got == 0 {
                break;
            }
            let header = [pos.to_be_bytes(), (got as u64).to_be_bytes()].concat();
            hasher.update(&header);
            hasher.update(&buf[..got]);
            write(out, &header)?;
            write(out, &buf[..got])?;
            pos += got as u64;
        }
        offset = end;
    }
    write(out, &[END.to_be_bytes(), 0u64.to_be_bytes()].concat())?;
    write(out, &hasher.finalize())?;
    out.flush().ctx("send", path)
}

fn bad(what: impl Into<String>) -> VolumeError {
    VolumeError::io(
        "receive a volume",
        Path::new("-"),
        io::Error::new(io::ErrorKind::InvalidData, what.into()),
    )
}

fn read_u64(input: &mut impl Read) -> Result<u64, VolumeError> {
    let mut bytes = [0u8; 8];
    input
        .read_exact(&mut bytes)
        .ctx("receive a volume", Path::new("-"))?;
    Ok(u64::from_be_bytes(bytes))
}

impl VolumePool {
    /// Makes volume `new_id` from a transfer stream; returns its size.
    pub fn import(&self, new_id: &str, input: &mut impl Read) -> Result<u64, VolumeError> {
        id::validate(new_id)?;
        let _lock = self.lock(new_id)?;
        let target = self.image_path(new_id);
        if target.exists() {
            return Err(VolumeError::Exists {
                id: new_id.to_owned(),
            });
        }
        let mut magic = [0u8; MAGIC.len()];
        input
            .read_exact(&mut magic)
            .ctx("receive a volume", Path::new("-"))?;
        if &magic != MAGIC {
            return Err(bad("not a volume stream"));
        }
        let len = read_u64(input)?;
        pool::check_size(len)?;
        let temp = TempFile::new(&self.images_dir(), new_id);
        let file = create_new(temp.path())?;
        file.set_len(len).ctx("size image", temp.path())?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; CHUNK];
        loop {
            let offset = read_u64(input)?;
            let size = read_u64(input)?;
            if offset == END {
                break;
            }
            let fits = usize::try_from(size).is_ok_and(|s| s <= CHUNK)
                && offset.checked_add(size).is_some_and(|end| end <= len);
            if !fits {
                return Err(bad(format!(
                    "a frame of {size} bytes at {offset} outside the image"
                )));
            }
            let data = &mut buf[..usize::try_from(size).unwrap_or(0)];
            input
                .read_exact(data)
                .ctx("receive a volume", Path::new("-"))?;
            hasher.update(offset.to_be_bytes());
            hasher.update(size.to_be_bytes());
            hasher.update(&*data);
            copy::write_nonzero(&file, data, offset).ctx("write", temp.path())?;
        }
        let mut digest = [0u8; 32];
        input
            .read_exact(&mut digest)
            .ctx("receive a volume", Path::new("-"))?;
        if hasher.finalize().as_slice() != digest {
            return Err(bad("the stream's digest does not match its data"));
        }
        file.sync_all().ctx("fsync", temp.path())?;
        drop(file);
        temp.persist(&target)?;
        Ok(len)
    }

    /// The image of a committed snapshot, for sending it elsewhere.
    pub fn snapshot_image(
        &self,
        id: &str,
        snapshot_id: &str,
    ) -> Result<std::path::PathBuf, VolumeError> {
        id::validate(id)?;
        id::validate(snapshot_id)?;
        Ok(self.committed_snapshot(id, snapshot_id)?.0)
    }
}
