//! Reading a child's output: splitting it into log lines, and knowing when
//! every reader has reached the end.

use std::io::{self, Read};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Partial lines longer than this are emitted without waiting for a newline.
pub const MAX_PARTIAL_LINE: usize = 16 * 1024;

/// Splits a byte stream into lines (newline removed).
#[derive(Default)]
pub struct LineSplitter {
    pending: Vec<u8>,
}

impl LineSplitter {
    pub fn push(&mut self, mut bytes: &[u8], emit: &mut impl FnMut(&[u8])) {
        while let Some(newline) = bytes.iter().position(|&byte| byte == b'\n') {
            if self.pending.is_empty() {
                emit(&bytes[..newline]);
            } else {
                self.pending.extend_from_slice(&bytes[..newline]);
                emit(&self.pending);
                self.pending.clear();
            }
            bytes = &bytes[newline + 1..];
        }
        self.pending.extend_from_slice(bytes);
        while self.pending.len() >= MAX_PARTIAL_LINE {
            let rest = self.pending.split_off(MAX_PARTIAL_LINE);
            emit(&self.pending);
            self.pending = rest;
        }
    }

    pub fn finish(&mut self, emit: &mut impl FnMut(&[u8])) {
        if !self.pending.is_empty() {
            emit(&self.pending);
            self.pending.clear();
        }
    }
}

/// Counts running readers so the supervisor can wait, with a deadline, for
/// all of them to reach end of stream.
#[derive(Clone, Default)]
pub struct Readers {
    active: Arc<(Mutex<usize>, Condvar)>,
}

impl Readers {
    /// Runs `read_all` on its own thread, counted until it returns.
    pub fn spawn(&self, name: &str, read_all: impl FnOnce() + Send + 'static) {
        let (count, _) = &*self.active;
        *count
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) += 1;
        let active = self.active.clone();
        let finished = move || {
            let (count, changed) = &*active;
            *count
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) -= 1;
            changed.notify_all();
        };
        let result = thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                read_all();
                finished();
            });
        if result.is_err() {
            let (count, changed) = &*self.active;
            *count
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) -= 1;
            changed.notify_all();
        }
    }

    /// Waits until every reader finished; false when the deadline passed first.
    pub fn wait(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (count, changed) = &*self.active;
        let mut active = count
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        while *active > 0 {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            active = changed
                .wait_timeout(active, deadline - now)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
        true
    }
}

/// Reads until end of stream, passing each chunk on. A pty master reports
/// EIO once the terminal's last user is gone: that is its end of stream.
pub fn read_chunks(mut reader: impl Read, mut chunk: impl FnMut(&[u8])) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        match reader.read(&mut buffer) {
            Ok(0) => return,
            Ok(n) => chunk(&buffer[..n]),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut lines = Vec::new();
        let mut splitter = LineSplitter::default();
        let mut emit = |line: &[u8]| lines.push(line.to_vec());
        for chunk in chunks {
            splitter.push(chunk, &mut emit);
        }
        splitter.finish(&mut emit);
        lines
    }

    #[test]
    fn splits_lines_across_chunks() {
        assert_eq!(
            split(&[b"a\nb", b"c\n\nd"]),
            vec![b"a".to_vec(), b"bc".to_vec(), b"".to_vec(), b"d".to_vec()]
        );
    }

    #[test]
    fn long_partial_lines_are_cut() {
        let long = vec![b'x'; MAX_PARTIAL_LINE + 10];
        let lines = split(&[&long]);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].len(), MAX_PARTIAL_LINE);
        assert_eq!(lines[1].len(), 10);
    }

    #[test]
    fn readers_wait_with_deadline() {
        let readers = Readers::default();
        let (release, gate) = std::sync::mpsc::channel::<()>();
        readers.spawn("slow", move || {
            let _ = gate.recv();
        });
        assert!(!readers.wait(Duration::from_millis(50)));
        release.send(()).unwrap();
        assert!(readers.wait(Duration::from_secs(5)));
    }
}
