//! Reading a machine's log: the lines init wrote (rotated file first), then,
//! when following, new lines as they are appended.

use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use midge_types::ApiError;
use tokio::sync::mpsc;

use crate::agent::Agent;
use crate::api::LogLine;

const FOLLOW_POLL: Duration = Duration::from_millis(200);

fn parse(line: &str) -> Option<LogLine> {
    serde_json::from_str(line).ok()
}

fn read_lines(path: &Path) -> Vec<LogLine> {
    let Ok(file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| parse(&l))
        .collect()
}

impl Agent {
    /// The last `tail` lines, then (when `follow`) lines as they come.
    pub async fn logs(
        &self,
        app: &str,
        id: &str,
        tail: usize,
        follow: bool,
    ) -> Result<mpsc::Receiver<LogLine>, ApiError> {
        let record = Agent::snapshot(&*self.slot(app, id)?);
        let log_dir = self.dirs(&record.id).log_dir();
        let current = log_dir.join(midge_init::spec::LOG_FILE);
        let rotated = log_dir.join(midge_init::spec::LOG_FILE_ROTATED);
        let (sender, receiver) = mpsc::channel(256);
        tokio::task::spawn_blocking(move || {
            let mut lines = read_lines(&rotated);
            lines.extend(read_lines(&current));
            let skip = lines.len().saturating_sub(tail);
            for line in lines.into_iter().skip(skip) {
                if sender.blocking_send(line).is_err() {
                    return;
                }
            }
            if follow {
                follow_file(&current, &sender);
            }
        });
        Ok(receiver)
    }
}

fn follow_file(path: &PathBuf, sender: &mpsc::Sender<LogLine>) {
    let mut offset = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let mut partial = String::new();
    while !sender.is_closed() {
        std::thread::sleep(FOLLOW_POLL);
        let Ok(mut file) = std::fs::File::open(path) else {
            continue;
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len < offset {
            offset = 0; // rotated
            partial.clear();
        }
        if len == offset || file.seek(SeekFrom::Start(offset)).is_err() {
            continue;
        }
        let mut reader = BufReader::new(file);
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    offset += n as u64;
                    if !line.ends_with('\n') {
                        partial.push_str(&line);
                        break;
                    }
                    partial.push_str(&line);
                    if let Some(parsed) = parse(partial.trim_end())
                        && sender.blocking_send(parsed).is_err()
                    {
                        return;
                    }
                    partial.clear();
                }
            }
        }
    }
}
