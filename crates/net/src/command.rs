//! Running iproute2 and nftables with a script on stdin.

use std::process::Stdio;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::NetError;

/// Runs `program args...`, feeding `script` on stdin, and returns its stdout.
pub(crate) async fn run(program: &str, args: &[&str], script: &str) -> Result<String, NetError> {
    let command_line = std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| NetError::Spawn {
            command: command_line.clone(),
            source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A write error here means the program exited early; its status says why.
        let _ = stdin.write_all(script.as_bytes()).await;
    }
    let output = child
        .wait_with_output()
        .await
        .map_err(|source| NetError::Spawn {
            command: command_line.clone(),
            source,
        })?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    Err(NetError::Command {
        command: command_line,
        status: output.status.to_string(),
        stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        script: if script.is_empty() {
            String::new()
        } else {
            format!("\nscript:\n{script}")
        },
    })
}

/// Runs an iproute2 batch, optionally inside a named network namespace.
pub(crate) async fn ip_batch(netns: Option<&str>, script: &str) -> Result<(), NetError> {
    match netns {
        Some(netns) => run("ip", &["-n", netns, "-batch", "-"], script).await?,
        None => run("ip", &["-batch", "-"], script).await?,
    };
    Ok(())
}

/// Applies an nftables script atomically (one transaction).
pub(crate) async fn nft_script(script: &str) -> Result<(), NetError> {
    run("nft", &["-f", "-"], script).await?;
    Ok(())
}
