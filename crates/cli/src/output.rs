//! Terminal output: tables, JSON, times, confirmations.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{Context, Result};

/// Columns padded to their widest cell, headers in capitals like flyctl's.
pub fn render_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (index, cell) in row.iter().enumerate() {
            if let Some(width) = widths.get_mut(index) {
                *width = (*width).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut push_row = |cells: &mut dyn Iterator<Item = &str>| {
        let mut line = String::new();
        for (index, cell) in cells.enumerate() {
            if index > 0 {
                line.push_str("   ");
            }
            line.push_str(cell);
            let pad = widths
                .get(index)
                .copied()
                .unwrap_or(0)
                .saturating_sub(cell.chars().count());
            line.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    };
    push_row(&mut headers.iter().copied());
    for row in rows {
        push_row(&mut row.iter().map(String::as_str));
    }
    out
}

pub fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).context("encoding JSON output")?;
    println!("{text}");
    Ok(())
}

/// An RFC 3339 time shortened to seconds in UTC; other text is shown as is.
pub fn short_time(rfc3339: &str) -> String {
    match chrono::DateTime::parse_from_rfc3339(rfc3339) {
        Ok(time) => time
            .with_timezone(&chrono::Utc)
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string(),
        Err(_) => rfc3339.to_string(),
    }
}

pub fn millis_time(millis: i64) -> String {
    chrono::DateTime::from_timestamp_millis(millis)
        .map(|time| time.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_else(|| millis.to_string())
}

pub fn seconds_time(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|time| time.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| secs.to_string())
}

pub fn stdout_is_terminal() -> bool {
    std::io::stdout().is_terminal()
}

/// Asks a yes/no question on the terminal; without one, refuses rather than
/// guessing, and points at `--yes`.
pub fn confirm(question: &str) -> Result<bool> {
    if !std::io::stdin().is_terminal() {
        anyhow::bail!("cannot ask \"{question}\" without a terminal\nhint: pass --yes to go ahead");
    }
    print!("? {question} (y/N) ");
    std::io::stdout().flush().ok();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .context("reading the answer")?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_columns_align() {
        let rows = vec![
            vec!["abc".to_string(), "x".to_string()],
            vec!["a".to_string(), "longer".to_string()],
        ];
        assert_eq!(
            render_table(&["ID", "NAME"], &rows),
            "ID    NAME\nabc   x\na     longer\n"
        );
    }

    #[test]
    fn times() {
        assert_eq!(
            short_time("2024-05-01T10:11:12.345+00:00"),
            "2024-05-01T10:11:12Z"
        );
        assert_eq!(short_time("soon"), "soon");
        assert_eq!(millis_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(seconds_time(60), "1970-01-01T00:01:00Z");
    }
}
