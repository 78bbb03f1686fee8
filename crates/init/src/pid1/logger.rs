//! The machine log: JSON lines in `logs/machine.log`, rotated to
//! `machine.log.1` once it grows past the configured size.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use midge_init::spec::{LOG_FILE, LOG_FILE_ROTATED};
use midge_init::timestamp::now_rfc3339;
use midge_init::{LogLine, LogStream};

struct LogFile {
    dir: PathBuf,
    file: Option<File>,
    size: u64,
    /// 0 means no rotation.
    max_bytes: u64,
    /// A VM's log port cannot be renamed: its host end rotates nothing.
    rotates: bool,
}

pub struct Logger {
    inner: Mutex<LogFile>,
}

impl LogFile {
    fn open(&mut self) -> std::io::Result<()> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(LOG_FILE))?;
        self.size = file.metadata()?.len();
        self.file = Some(file);
        Ok(())
    }

    fn rotate(&mut self) {
        self.file = None;
        let _ = fs::rename(self.dir.join(LOG_FILE), self.dir.join(LOG_FILE_ROTATED));
        if let Err(error) = self.open() {
            eprintln!(
                "midge-init: reopening the log in {} after rotation: {error}",
                self.dir.display()
            );
        }
    }
}

impl Logger {
    /// Opens (creating) the log directory and file; on failure the logger
    /// still works but only writes init's own messages to stderr.
    pub fn open(dir: PathBuf) -> Logger {
        let mut log = LogFile {
            dir,
            file: None,
            size: 0,
            max_bytes: 0,
            rotates: true,
        };
        if let Err(error) = fs::create_dir_all(&log.dir).and_then(|()| log.open()) {
            eprintln!(
                "midge-init: opening the log in {}: {error}",
                log.dir.display()
            );
        }
        Logger {
            inner: Mutex::new(log),
        }
    }

    /// Writes to a VM's log port, whose host end appends to the machine's log.
    pub fn open_port(port: &std::path::Path) -> Logger {
        let file = OpenOptions::new().write(true).open(port);
        if let Err(error) = &file {
            eprintln!(
                "midge-init: opening the log port {}: {error}",
                port.display()
            );
        }
        Logger {
            inner: Mutex::new(LogFile {
                dir: PathBuf::new(),
                file: file.ok(),
                size: 0,
                max_bytes: 0,
                rotates: false,
            }),
        }
    }

    fn inner(&self) -> MutexGuard<'_, LogFile> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn set_max_bytes(&self, max_bytes: u64) {
        let mut log = self.inner();
        if !log.rotates {
            return;
        }
        log.max_bytes = max_bytes;
        if max_bytes > 0 && log.size > max_bytes {
            log.rotate();
        }
    }

    /// Appends one line (without its newline) and flushes it to the file.
    pub fn line(&self, stream: LogStream, bytes: &[u8]) {
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        let line = LogLine {
            ts: now_rfc3339(),
            stream,
            message: String::from_utf8_lossy(bytes).into_owned(),
        };
        let Ok(mut json) = serde_json::to_vec(&line) else {
            return;
        };
        json.push(b'\n');
        let mut log = self.inner();
        let Some(file) = log.file.as_mut() else {
            return;
        };
        if file.write_all(&json).is_ok() {
            log.size += json.len() as u64;
        }
        if log.max_bytes > 0 && log.size > log.max_bytes {
            log.rotate();
        }
    }

    /// A diagnostic of init itself: to the log as stream `init`, and stderr.
    pub fn init(&self, message: &str) {
        eprintln!("midge-init: {message}");
        for line in message.lines() {
            self.line(LogStream::Init, line.as_bytes());
        }
    }
}
