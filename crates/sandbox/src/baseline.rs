//! The baseline the sandbox driver is measured against: bare `runc run
//! --detach` of an image's rootfs with the same program, timed from spawning
//! runc until it returns with the container running (`midge bench start`).

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Bare `runc run --detach` of the same rootfs with the same program, from
/// spawning runc until it returns with the container running.
pub async fn bare_runc_run(
    layers: &[std::path::PathBuf],
    scratch: &Path,
    n: usize,
    prefix: &str,
) -> std::io::Result<Vec<Duration>> {
    let rootfs = layers
        .first()
        .ok_or_else(|| std::io::Error::other("the image has no layer"))?;
    let bundle = scratch.join("bare-bundle");
    let state = scratch.join("bare-runc-state");
    std::fs::create_dir_all(&bundle)?;
    let status = tokio::process::Command::new("runc")
        .arg("spec")
        .arg("--bundle")
        .arg(&bundle)
        .status()
        .await?;
    if !status.success() {
        return Err(std::io::Error::other("runc spec failed"));
    }
    let spec_path = bundle.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&spec_path)?).map_err(std::io::Error::other)?;
    spec["process"]["terminal"] = false.into();
    spec["process"]["args"] = serde_json::json!(["/bin/sleep", "3600"]);
    spec["root"] = serde_json::json!({"path": rootfs, "readonly": true});
    spec["linux"]["cgroupsPath"] = serde_json::json!(format!("/{prefix}/bare"));
    std::fs::write(
        &spec_path,
        serde_json::to_vec(&spec).map_err(std::io::Error::other)?,
    )?;
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("{prefix}-bare-{i}");
        let begun = Instant::now();
        let status = tokio::process::Command::new("runc")
            .arg("--root")
            .arg(&state)
            .args(["run", "--detach", "--bundle"])
            .arg(&bundle)
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await?;
        samples.push(begun.elapsed());
        if !status.success() {
            return Err(std::io::Error::other("bare runc run failed"));
        }
        tokio::process::Command::new("runc")
            .arg("--root")
            .arg(&state)
            .args(["delete", "--force", &id])
            .status()
            .await?;
    }
    Ok(samples)
}
