//! Copying images: a reflink (FICLONE, instant and sharing blocks) where the
//! pool's filesystem has them (xfs, btrfs), else a sparse copy that keeps
//! holes as holes, so a mostly empty 10 GiB volume copies as the few MiB it
//! holds. Also the allocated size and content digest of an image.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use nix::errno::Errno;
use nix::unistd::{Whence, lseek};
use sha2::{Digest, Sha256};

use crate::error::{IoContext, VolumeError};

nix::ioctl_write_int!(ficlone, 0x94, 9);

/// The unit of the sparse copy: data ranges are read in chunks this big.
pub(crate) const CHUNK: usize = 1 << 20;
/// Zero runs are skipped (left as holes) at this granularity, the block size
/// of ext4 images and of the pool's filesystem.
const BLOCK: usize = 4096;

/// How a copy was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CopyKind {
    Reflink,
    Sparse,
}

/// Whether `dir`'s filesystem supports FICLONE, tried on two tiny files
/// (`probe_a`, `probe_b` are paths in `dir` that do not exist yet; both are
/// removed again).
pub(crate) fn probe_reflink(probe_a: &Path, probe_b: &Path) -> bool {
    let result = (|| -> io::Result<bool> {
        let a = create_new(probe_a)?;
        a.write_all_at(&[1u8; BLOCK], 0)?;
        a.sync_all()?;
        let b = create_new(probe_b)?;
        Ok(clone(&a, &b).is_ok())
    })();
    let _ = std::fs::remove_file(probe_a);
    let _ = std::fs::remove_file(probe_b);
    result.unwrap_or(false)
}

fn create_new(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

fn clone(src: &File, dst: &File) -> Result<(), Errno> {
    let src_fd =
        nix::sys::ioctl::ioctl_param_type::try_from(src.as_raw_fd()).map_err(|_| Errno::EBADF)?;
    // SAFETY: FICLONE takes the source fd as its integer argument; both fds
    // are open for the duration of the call.
    unsafe { ficlone(dst.as_raw_fd(), src_fd) }.map(drop)
}

/// Copies `src` to the new file `dst` (which must not exist) and fsyncs it.
/// With `reflink` it tries FICLONE first and falls back to a sparse copy
/// when the filesystem refuses.
pub(crate) fn copy_image(src: &Path, dst: &Path, reflink: bool) -> Result<CopyKind, VolumeError> {
    let from = File::open(src).ctx("open", src)?;
    let to = create_new(dst).ctx("create", dst)?;
    let kind = if reflink && clone(&from, &to).is_ok() {
        CopyKind::Reflink
    } else {
        // A failed FICLONE leaves the destination empty: copy into it.
        sparse_copy(&from, &to).ctx("copy to", dst)?;
        CopyKind::Sparse
    };
    to.sync_all().ctx("fsync", dst)?;
    Ok(kind)
}

/// Copies the data ranges of `from` (found with SEEK_DATA/SEEK_HOLE) into the
/// empty `to`, skipping all-zero blocks inside them too, then sets the
/// length: whatever was not written stays a hole.
pub(crate) fn sparse_copy(from: &File, to: &File) -> io::Result<()> {
    let len = from.metadata()?.len();
    let mut buf = vec![0u8; CHUNK];
    let mut offset = 0u64;
    while offset < len {
        let Some((start, end)) = next_data(from, offset, len)? else {
            break;
        };
        let mut pos = start;
        while pos < end {
            let want = usize::try_from((end - pos).min(CHUNK as u64)).unwrap_or(CHUNK);
            let got = read_at_most(from, &mut buf[..want], pos)?;
            if got == 0 {
                // The file shrank under us; what is left is past its end.
                break;
            }
            write_nonzero(to, &buf[..got], pos)?;
            pos += got as u64;
        }
        offset = end;
    }
    to.set_len(len)
}

/// The next data range at or after `offset`: `None` when only a hole is left.
/// Filesystems without SEEK_DATA report the whole file as data.
pub(crate) fn next_data(file: &File, offset: u64, len: u64) -> io::Result<Option<(u64, u64)>> {
    let at = i64::try_from(offset).map_err(io::Error::other)?;
    let start = match lseek(file, at, Whence::SeekData) {
        Ok(start) => start,
        Err(Errno::ENXIO) => return Ok(None),
        Err(Errno::EINVAL) => return Ok(Some((offset, len))),
        Err(e) => return Err(e.into()),
    };
    let end = match lseek(file, start, Whence::SeekHole) {
        Ok(end) => end,
        Err(Errno::ENXIO) => i64::try_from(len).map_err(io::Error::other)?,
        Err(e) => return Err(e.into()),
    };
    let start = u64::try_from(start).map_err(io::Error::other)?;
    let end = u64::try_from(end).map_err(io::Error::other)?.min(len);
    Ok(Some((start, end.max(start))))
}

pub(crate) fn read_at_most(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Writes the runs of non-zero blocks of `data` (which sits at `offset` in
/// the file) and leaves the zero blocks unwritten.
pub(crate) fn write_nonzero(to: &File, data: &[u8], offset: u64) -> io::Result<()> {
    let mut run_start: Option<usize> = None;
    let mut i = 0;
    while i < data.len() {
        let block_end = (i + BLOCK).min(data.len());
        let zero = data[i..block_end].iter().all(|&b| b == 0);
        match (zero, run_start) {
            (false, None) => run_start = Some(i),
            (true, Some(s)) => {
                to.write_all_at(&data[s..i], offset + s as u64)?;
                run_start = None;
            }
            _ => {}
        }
        i = block_end;
    }
    if let Some(s) = run_start {
        to.write_all_at(&data[s..], offset + s as u64)?;
    }
    Ok(())
}

/// Bytes the filesystem has allocated for `path` (st_blocks is in 512-byte
/// units whatever the block size).
pub(crate) fn allocated_bytes(path: &Path) -> Result<u64, VolumeError> {
    let meta = std::fs::metadata(path).ctx("stat", path)?;
    Ok(meta.blocks() * 512)
}

/// `sha256:<hex>` of the content of `path`. Holes hash as the zeros they
/// read as, but from a buffer of ours: reading them through the kernel costs
/// as much again as the hashing.
pub(crate) fn sha256_file(path: &Path) -> Result<String, VolumeError> {
    let file = File::open(path).ctx("open", path)?;
    let len = file.metadata().ctx("stat", path)?.len();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let zeros = vec![0u8; CHUNK];
    let mut pos = 0u64;
    while pos < len {
        let (start, end) = next_data(&file, pos, len)
            .ctx("seek", path)?
            .unwrap_or((len, len));
        hash_zeros(&mut hasher, &zeros, start - pos);
        pos = start;
        while pos < end {
            let want = usize::try_from((end - pos).min(CHUNK as u64)).unwrap_or(CHUNK);
            let got = read_at_most(&file, &mut buf[..want], pos).ctx("read", path)?;
            if got == 0 {
                break;
            }
            hasher.update(&buf[..got]);
            pos += got as u64;
        }
        pos = pos.max(end);
    }
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

fn hash_zeros(hasher: &mut Sha256, zeros: &[u8], mut count: u64) {
    while count > 0 {
        let n = usize::try_from(count.min(zeros.len() as u64)).unwrap_or(zeros.len());
        hasher.update(&zeros[..n]);
        count -= n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("midge-volume-test-")
            .tempdir_in("/tmp")
            .unwrap()
    }

    #[test]
    fn sparse_copy_keeps_holes_and_content() {
        let dir = tempdir();
        let src = dir.path().join("src");
        let dst = dir.path().join("dst");
        let file = File::create(&src).unwrap();
        let len = 64u64 << 20;
        file.set_len(len).unwrap();
        file.write_all_at(b"hello", 0).unwrap();
        file.write_all_at(&[7u8; 10_000], 20 << 20).unwrap();
        // An allocated but all-zero range: the copy leaves it out.
        file.write_all_at(&vec![0u8; 4 << 20], 40 << 20).unwrap();
        file.write_all_at(b"tail", len - 4).unwrap();
        file.sync_all().unwrap();

        assert_eq!(copy_image(&src, &dst, false).unwrap(), CopyKind::Sparse);
        assert_eq!(std::fs::read(&src).unwrap(), std::fs::read(&dst).unwrap());
        assert_eq!(std::fs::metadata(&dst).unwrap().len(), len);
        let allocated = allocated_bytes(&dst).unwrap();
        assert!(allocated < (1 << 20), "copy allocated {allocated} bytes");
        let expected = format!(
            "sha256:{}",
            hex::encode(Sha256::digest(std::fs::read(&src).unwrap()))
        );
        assert_eq!(sha256_file(&src).unwrap(), expected);
        assert_eq!(sha256_file(&dst).unwrap(), expected);
    }

    #[test]
    fn copy_of_empty_and_all_hole_files() {
        let dir = tempdir();
        let empty = dir.path().join("empty");
        File::create(&empty).unwrap();
        let copy = dir.path().join("empty-copy");
        copy_image(&empty, &copy, true).unwrap();
        assert_eq!(std::fs::metadata(&copy).unwrap().len(), 0);

        let holes = dir.path().join("holes");
        File::create(&holes).unwrap().set_len(8 << 20).unwrap();
        let copy = dir.path().join("holes-copy");
        copy_image(&holes, &copy, true).unwrap();
        assert_eq!(std::fs::metadata(&copy).unwrap().len(), 8 << 20);
        assert_eq!(allocated_bytes(&copy).unwrap(), 0);
    }

    #[test]
    fn digest_format() {
        let dir = tempdir();
        let path = dir.path().join("f");
        std::fs::write(&path, b"abc").unwrap();
        assert_eq!(
            sha256_file(&path).unwrap(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
