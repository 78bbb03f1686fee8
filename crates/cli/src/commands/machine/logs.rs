//! `machine logs`: the machine's console output, optionally followed.

use anyhow::{Context, Result};
use clap::Args;
use futures::StreamExt;
use serde_json::Value;

use crate::commands::AppArg;
use crate::output::{millis_time, short_time};
use midge_client::ApiClient;

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// Machine ID or name
    pub id: String,
    #[command(flatten)]
    pub app: AppArg,
    /// Keep printing new lines as they come
    #[arg(short, long)]
    pub follow: bool,
    /// How many recent lines to show first
    #[arg(short = 'n', long, default_value_t = 100)]
    pub tail: u32,
}

pub async fn logs(client: &ApiClient, args: LogsArgs) -> Result<()> {
    let app = args.app.resolve_for_machine(client, &args.id).await?;
    let response = client.logs(&app, &args.id, args.tail, args.follow).await?;
    let mut body = response.bytes_stream();
    let mut pending = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.with_context(|| format!("reading logs of machine {}", args.id))?;
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            print_line(&line);
        }
    }
    if !pending.is_empty() {
        print_line(&pending);
    }
    Ok(())
}

fn print_line(raw: &[u8]) {
    let text = String::from_utf8_lossy(raw);
    let text = text.trim_end_matches(['\n', '\r']);
    if text.is_empty() {
        return;
    }
    println!("{}", format_line(text));
}

/// `ts [stream] message` for `{ts, stream, message}`; anything else as is.
pub fn format_line(line: &str) -> String {
    let Ok(entry) = serde_json::from_str::<Value>(line) else {
        return line.to_string();
    };
    let ts = match entry.get("ts") {
        Some(Value::String(ts)) => short_time(ts),
        Some(Value::Number(ms)) => ms.as_i64().map(millis_time).unwrap_or_default(),
        _ => String::new(),
    };
    let stream = entry
        .get("stream")
        .and_then(Value::as_str)
        .unwrap_or("stdout");
    let message = entry
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or_default();
    format!("{ts} [{stream}] {message}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_format() {
        let line = r#"{"ts":"2024-05-01T10:00:00.123Z","stream":"stderr","message":"boom"}"#;
        assert_eq!(format_line(line), "2024-05-01T10:00:00Z [stderr] boom");
        assert_eq!(
            format_line(r#"{"ts":0,"message":"x"}"#),
            "1970-01-01T00:00:00.000Z [stdout] x"
        );
        assert_eq!(format_line("plain text"), "plain text");
    }
}
