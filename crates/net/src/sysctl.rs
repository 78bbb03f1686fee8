//! Host forwarding switches.

use std::path::Path;

use crate::NetError;

const IPV4_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
const IPV6_FORWARD: &str = "/proc/sys/net/ipv6/conf/all/forwarding";
const IPV6_CONF_DIR: &str = "/proc/sys/net/ipv6/conf";
/// accept_ra=1 means "only while not forwarding"; 2 keeps accepting router
/// advertisements once forwarding is on, so the host keeps its IPv6 default route.
const ACCEPT_RA_WHILE_NOT_FORWARDING: &str = "1";
const ACCEPT_RA_ALWAYS: &str = "2";

async fn read(path: &Path) -> Result<String, NetError> {
    tokio::fs::read_to_string(path)
        .await
        .map(|value| value.trim().to_string())
        .map_err(|source| NetError::io("reading", path, source))
}

async fn write(path: &Path, value: &str) -> Result<(), NetError> {
    tokio::fs::write(path, value)
        .await
        .map_err(|source| NetError::io("writing", path, source))
}

async fn ensure(path: &Path, value: &str) -> Result<(), NetError> {
    if read(path).await? != value {
        write(path, value).await?;
    }
    Ok(())
}

/// Turns on IPv4 forwarding (egress NAT) and IPv6 forwarding (6PN between machines).
pub(crate) async fn enable_forwarding() -> Result<(), NetError> {
    ensure(Path::new(IPV4_FORWARD), "1").await?;
    let ipv6_forward = Path::new(IPV6_FORWARD);
    if !ipv6_forward.exists() {
        tracing::warn!("IPv6 is disabled on this host; machines cannot reach each other over 6PN");
        return Ok(());
    }
    if read(ipv6_forward).await? != "1" {
        keep_accepting_router_advertisements().await?;
        write(ipv6_forward, "1").await?;
    }
    Ok(())
}

async fn keep_accepting_router_advertisements() -> Result<(), NetError> {
    let conf_dir = Path::new(IPV6_CONF_DIR);
    let mut entries = tokio::fs::read_dir(conf_dir)
        .await
        .map_err(|source| NetError::io("listing", conf_dir, source))?;
    while let Some(entry) = entries
        .next_entry()
        .await
        .map_err(|source| NetError::io("listing", conf_dir, source))?
    {
        let accept_ra = entry.path().join("accept_ra");
        // An interface may vanish while we walk the directory; skip it.
        if let Ok(value) = read(&accept_ra).await
            && value == ACCEPT_RA_WHILE_NOT_FORWARDING
        {
            tracing::info!(path = %accept_ra.display(), "setting accept_ra=2 before enabling IPv6 forwarding");
            write(&accept_ra, ACCEPT_RA_ALWAYS).await?;
        }
    }
    Ok(())
}

/// What every machine's namespace allows, as Docker sets for containers: a
/// machine root in its own user namespace holds no capability over a
/// network namespace the host made, so binding ports below 1024 and ICMP
/// echo sockets (`ping`) are opened to every uid of the namespace instead.
const MACHINE_NAMESPACE_SETTINGS: &[(&str, &str)] = &[
    ("net/ipv4/ip_unprivileged_port_start", "0"),
    ("net/ipv4/ping_group_range", "0 2147483647"),
];

/// Applies [`MACHINE_NAMESPACE_SETTINGS`] inside the namespace at `netns`:
/// `/proc/sys/net` shows the namespace of the thread that opens it, so a
/// thread of its own (never a pooled one) enters the namespace, writes, and ends.
pub(crate) async fn apply_machine_settings(netns: &Path) -> Result<(), NetError> {
    let netns = netns.to_path_buf();
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = done.send(write_machine_settings(&netns));
    });
    result.await.unwrap_or_else(|_| {
        Err(NetError::io(
            "writing",
            "/proc/sys/net",
            std::io::Error::other("the settings thread panicked"),
        ))
    })
}

fn write_machine_settings(netns: &Path) -> Result<(), NetError> {
    let namespace =
        std::fs::File::open(netns).map_err(|source| NetError::io("opening", netns, source))?;
    nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|errno| NetError::io("entering", netns, errno.into()))?;
    for (key, value) in MACHINE_NAMESPACE_SETTINGS {
        let path = Path::new("/proc/sys").join(key);
        std::fs::write(&path, value).map_err(|source| NetError::io("writing", &path, source))?;
    }
    Ok(())
}
