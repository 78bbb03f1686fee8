//! Reading the log file init writes (`machine.log`, rotated once to
//! `machine.log.1`): the last lines, then new lines as they are appended.
//! For drivers whose init writes its log where the host can read it.

use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use midge_types::agent::LogLine;
use tokio::sync::mpsc;

use crate::machine::LogStream;

const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// The lines of the log in `log_dir`: the last `tail`, then (when `follow`)
/// new ones until the stream is dropped.
pub fn read(log_dir: &Path, tail: usize, follow: bool) -> LogStream {
    let current = log_dir.join(midge_init::spec::LOG_FILE);
    let rotated = log_dir.join(midge_init::spec::LOG_FILE_ROTATED);
    // Lines up to here are the tail; later ones are followed.
    let end = std::fs::metadata(&current).map(|m| m.len()).unwrap_or(0);
    let (sender, receiver) = mpsc::channel(256);
    tokio::task::spawn_blocking(move || {
        let mut lines = read_lines(&rotated, u64::MAX);
        lines.extend(read_lines(&current, end));
        let skip = lines.len().saturating_sub(tail);
        for line in lines.into_iter().skip(skip) {
            if sender.blocking_send(line).is_err() {
                return;
            }
        }
        if follow {
            follow_file(&current, end, &sender);
        }
    });
    Box::pin(futures::stream::unfold(receiver, |mut receiver| async {
        receiver.recv().await.map(|line| (line, receiver))
    }))
}

fn parse(line: &str) -> Option<LogLine> {
    let line: midge_init::LogLine = serde_json::from_str(line).ok()?;
    let stream = serde_json::to_value(line.stream)
        .ok()
        .and_then(|value| value.as_str().map(str::to_string))
        .unwrap_or_default();
    Some(LogLine {
        ts: line.ts,
        stream,
        message: line.message,
    })
}

/// The lines in the first `limit` bytes of the file at `path`.
fn read_lines(path: &Path, limit: u64) -> Vec<LogLine> {
    let Ok(file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    BufReader::new(std::io::Read::take(file, limit))
        .lines()
        .map_while(Result::ok)
        .filter_map(|line| parse(&line))
        .collect()
}

fn follow_file(path: &PathBuf, from: u64, sender: &mpsc::Sender<LogLine>) {
    let mut offset = from;
    let mut partial = String::new();
    while !sender.is_closed() {
        std::thread::sleep(FOLLOW_POLL);
        let Ok(mut file) = std::fs::File::open(path) else {
            continue;
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len < offset {
            // Rotated: the new file starts from the beginning.
            offset = 0;
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
                    partial.push_str(&line);
                    if !line.ends_with('\n') {
                        break;
                    }
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

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    fn line(message: &str) -> String {
        format!(r#"{{"ts":"2026-01-01T00:00:00.000Z","stream":"stdout","message":"{message}"}}"#)
    }

    #[tokio::test]
    async fn tails_across_the_rotated_file_then_follows() {
        let dir = tempfile::tempdir().unwrap();
        let rotated = dir.path().join(midge_init::spec::LOG_FILE_ROTATED);
        let current = dir.path().join(midge_init::spec::LOG_FILE);
        std::fs::write(&rotated, format!("{}\n{}\n", line("one"), line("two"))).unwrap();
        std::fs::write(&current, format!("{}\nnot json\n", line("three"))).unwrap();

        let tail: Vec<String> = read(dir.path(), 2, false)
            .map(|l| l.message)
            .collect()
            .await;
        assert_eq!(tail, ["two", "three"]);

        let mut follow = read(dir.path(), 0, true);
        let appended = format!("{}\n", line("four"));
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&current)
            .unwrap();
        std::io::Write::write_all(&mut file, appended.as_bytes()).unwrap();
        let next = tokio::time::timeout(Duration::from_secs(5), follow.next())
            .await
            .expect("a followed line")
            .unwrap();
        assert_eq!(next.message, "four");
        assert_eq!(next.stream, "stdout");
    }
}
