//! Line diff of two texts, used to show what `machine update` changes.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change<'a> {
    Same(&'a str),
    Removed(&'a str),
    Added(&'a str),
}

/// Longest-common-subsequence diff; configs are small, so O(n·m) is fine.
pub fn line_diff<'a>(old: &'a str, new: &'a str) -> Vec<Change<'a>> {
    let old: Vec<&str> = old.lines().collect();
    let new: Vec<&str> = new.lines().collect();
    let (n, m) = (old.len(), new.len());
    let mut common = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            common[i][j] = if old[i] == new[j] {
                common[i + 1][j + 1] + 1
            } else {
                common[i + 1][j].max(common[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut changes = Vec::with_capacity(n.max(m));
    while i < n && j < m {
        if old[i] == new[j] {
            changes.push(Change::Same(old[i]));
            i += 1;
            j += 1;
        } else if common[i + 1][j] >= common[i][j + 1] {
            changes.push(Change::Removed(old[i]));
            i += 1;
        } else {
            changes.push(Change::Added(new[j]));
            j += 1;
        }
    }
    changes.extend(old[i..].iter().map(|line| Change::Removed(line)));
    changes.extend(new[j..].iter().map(|line| Change::Added(line)));
    changes
}

/// A unified-style rendering with `context` unchanged lines around each
/// change; `None` when the texts are equal.
pub fn render(old: &str, new: &str, context: usize) -> Option<String> {
    let changes = line_diff(old, new);
    let changed: Vec<usize> = changes
        .iter()
        .enumerate()
        .filter(|(_, change)| !matches!(change, Change::Same(_)))
        .map(|(index, _)| index)
        .collect();
    if changed.is_empty() {
        return None;
    }
    let near_change = |index: usize| {
        changed
            .iter()
            .any(|&c| index + context >= c && index <= c + context)
    };
    let mut out = String::new();
    let mut skipped = false;
    for (index, change) in changes.iter().enumerate() {
        if !near_change(index) {
            skipped = true;
            continue;
        }
        if skipped {
            out.push_str("   ...\n");
            skipped = false;
        }
        let (marker, line) = match change {
            Change::Same(line) => (' ', line),
            Change::Removed(line) => ('-', line),
            Change::Added(line) => ('+', line),
        };
        out.push(marker);
        out.push(' ');
        out.push_str(line);
        out.push('\n');
    }
    if skipped {
        out.push_str("   ...\n");
    }
    Some(out)
}

/// Diff of two values rendered as pretty JSON.
pub fn json_diff<T: serde::Serialize>(old: &T, new: &T) -> Option<String> {
    let old = serde_json::to_string_pretty(old).unwrap_or_default();
    let new = serde_json::to_string_pretty(new).unwrap_or_default();
    render(&old, &new, 3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_marks_changed_lines() {
        let changes = line_diff("a\nb\nc\n", "a\nx\nc\nd\n");
        assert_eq!(
            changes,
            [
                Change::Same("a"),
                Change::Removed("b"),
                Change::Added("x"),
                Change::Same("c"),
                Change::Added("d")
            ]
        );
        assert_eq!(render("same\n", "same\n", 3), None);
    }

    #[test]
    fn render_keeps_context_and_elides_the_rest() {
        let old: String = (0..20).map(|i| format!("line{i}\n")).collect();
        let new = old.replace("line10\n", "changed\n");
        let text = render(&old, &new, 2).unwrap();
        assert_eq!(
            text,
            "   ...\n  line8\n  line9\n- line10\n+ changed\n  line11\n  line12\n   ...\n"
        );
    }

    #[test]
    fn json_diff_of_configs() {
        let old = serde_json::json!({"image": "a", "env": {"X": "1"}});
        let new = serde_json::json!({"image": "b", "env": {"X": "1"}});
        let text = json_diff(&old, &new).unwrap();
        assert!(
            text.contains("-   \"image\": \"a\"") && text.contains("+   \"image\": \"b\""),
            "{text}"
        );
        assert!(json_diff(&old, &old.clone()).is_none());
    }
}
