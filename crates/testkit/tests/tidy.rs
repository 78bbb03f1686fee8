//! The architecture invariants ARCHITECTURE.md lists, checked over the
//! source tree: module docs everywhere, and the dependencies that must not
//! exist between parts.

use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return files;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

fn crate_sources(name: &str) -> Vec<PathBuf> {
    rust_files(&workspace().join("crates").join(name).join("src"))
}

fn crates() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(workspace().join("crates"))
        .expect("crates dir")
        .flatten()
        .filter(|e| e.path().join("Cargo.toml").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Lines of code, without comment lines (`//`, `///`, `//!`) and with the
/// text of string literals blanked (messages may name anything).
fn code_lines(path: &Path) -> Vec<(usize, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim_start().starts_with("//"))
        .map(|(n, line)| (n + 1, without_strings(line)))
        .collect()
}

fn without_strings(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in line.chars() {
        match (in_string, escaped, c) {
            (true, true, _) => escaped = false,
            (true, false, '\\') => escaped = true,
            (true, false, '"') => {
                in_string = false;
                out.push('"');
            }
            (true, false, _) => {}
            (false, _, '"') => {
                in_string = true;
                out.push('"');
            }
            (false, _, c) => out.push(c),
        }
    }
    out
}

fn offenders(crates: &[&str], forbidden: impl Fn(&str) -> bool) -> Vec<String> {
    let mut found = Vec::new();
    for name in crates {
        for file in crate_sources(name) {
            for (n, line) in code_lines(&file) {
                if forbidden(&line) {
                    found.push(format!("{}:{n}: {}", file.display(), line.trim()));
                }
            }
        }
    }
    found
}

fn contains_word(line: &str, word: &str) -> bool {
    line.match_indices(word).any(|(at, _)| {
        let before = line[..at].chars().next_back();
        let after = line[at + word.len()..].chars().next();
        let boundary = |c: Option<char>| c.is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
        boundary(before) && boundary(after)
    })
}

#[test]
fn string_literals_are_blanked() {
    assert_eq!(
        without_strings(r#"run("runc", "a\"b") + runc"#),
        r#"run("", "") + runc"#
    );
    assert!(contains_word("let x = runc::start()", "runc"));
    assert!(!contains_word("page.truncate(3)", "runc"));
}

#[test]
fn every_source_file_opens_with_a_module_doc() {
    let missing: Vec<String> = crates()
        .iter()
        .flat_map(|name| crate_sources(name))
        .filter(|file| {
            !std::fs::read_to_string(file)
                .unwrap_or_default()
                .starts_with("//!")
        })
        .map(|file| file.display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "files without a `//!` first line: {missing:#?}"
    );
}

#[test]
fn nothing_above_the_sandbox_driver_names_runc() {
    let others: Vec<String> = crates()
        .into_iter()
        .filter(|name| name != "sandbox")
        .collect();
    let others: Vec<&str> = others.iter().map(String::as_str).collect();
    let found = offenders(&others, |line| contains_word(line, "runc"));
    assert!(
        found.is_empty(),
        "runc named outside the sandbox driver: {found:#?}"
    );
}

#[test]
fn the_agent_and_the_api_never_name_a_driver_implementation() {
    let found = offenders(&["agent", "agent-api", "api", "driver"], |line| {
        [
            "midge_sandbox",
            "SandboxDriver",
            "midge_microvm",
            "MicrovmDriver",
        ]
        .iter()
        .any(|name| line.contains(name))
    });
    assert!(found.is_empty(), "{found:#?}");
    let found = offenders(&["api"], |line| line.contains("midge_driver"));
    assert!(
        found.is_empty(),
        "the API reaches past the agent interface: {found:#?}"
    );
    let found = offenders(&["api"], |line| contains_word(line, "midge_agent"));
    assert!(
        found.is_empty(),
        "the API names the agent implementation: {found:#?}"
    );
}

#[test]
fn types_does_no_io() {
    let found = offenders(&["types"], |line| {
        [
            "std::fs",
            "std::net::Tcp",
            "std::process",
            "tokio",
            "std::io::Write",
        ]
        .iter()
        .any(|io| line.contains(io))
    });
    assert!(found.is_empty(), "I/O in midge-types: {found:#?}");
}

#[test]
fn init_never_links_tokio() {
    let manifest = std::fs::read_to_string(workspace().join("crates/init/Cargo.toml")).unwrap();
    let tokio_line = manifest
        .lines()
        .find(|line| line.starts_with("tokio = {"))
        .expect("init names tokio only as an optional dependency");
    assert!(tokio_line.contains("optional = true"), "{tokio_line}");
    let pid1: Vec<PathBuf> = crate_sources("init")
        .into_iter()
        .filter(|f| f.ends_with("main.rs") || f.components().any(|c| c.as_os_str() == "pid1"))
        .collect();
    for file in pid1 {
        let found: Vec<_> = code_lines(&file)
            .into_iter()
            .filter(|(_, line)| line.contains("tokio"))
            .collect();
        assert!(found.is_empty(), "{} uses tokio: {found:?}", file.display());
    }
}

#[test]
fn the_catalog_holds_no_machine_state() {
    let found = offenders(&["store"], |line| {
        line.contains("MachineState") || line.contains("MachineRecord")
    });
    assert!(found.is_empty(), "{found:#?}");
}

/// The suite runs under nextest with a slow-test timeout, so a hung test
/// fails the run instead of stalling it.
#[test]
fn the_suite_kills_a_hung_test() {
    let profile = std::fs::read_to_string(workspace().join(".config/nextest.toml"))
        .expect("the nextest config");
    let default_profile = profile
        .split("\n[")
        .find(|section| {
            section
                .trim_start_matches('[')
                .starts_with("profile.default]")
        })
        .expect("a [profile.default] section");
    let timeout = default_profile
        .lines()
        .find(|line| line.trim_start().starts_with("slow-timeout"))
        .expect("a slow-timeout in the default profile");
    assert!(timeout.contains("terminate-after"), "{timeout}");
    let script = std::fs::read_to_string(workspace().join("scripts/test")).expect("scripts/test");
    let runs: Vec<&str> = script
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter(|line| line.contains("cargo nextest run") || line.contains("cargo test"))
        .collect();
    assert!(
        !runs.is_empty() && runs.iter().all(|line| line.contains("cargo nextest run")),
        "scripts/test must run the tests under nextest only: {runs:?}"
    );
    assert!(
        runs.iter().all(|line| !line.contains("--profile")),
        "the timeout is in the default profile: {runs:?}"
    );
}
