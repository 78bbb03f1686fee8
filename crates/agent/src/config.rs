//! How one host agent is set up.

use std::path::PathBuf;

/// A host agent's own settings (its driver, network and images come in
/// [`crate::HostParts`]).
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Where the agent keeps its machine records (`agent.db`).
    pub data_dir: PathBuf,
    /// The region this host belongs to (`local` on a laptop).
    pub region: String,
    /// Host id used in 6PN addresses.
    pub host_id: u32,
    /// Registries reachable over plain HTTP (host:port); loopback ones always are.
    pub insecure_registries: Vec<String>,
    /// The host's registry credentials, a Docker `config.json`, read at each
    /// pull (so a `midge registry login` takes effect at once); none when unset
    /// or missing. An org's own credentials for a registry come first.
    pub registry_credentials: Option<PathBuf>,
    /// How many machines may keep a prepared next run (each holds a created
    /// sandbox and a mounted rootfs); 0 turns prepared runs off.
    pub prepared_runs: usize,
    /// What machines may reserve; unlimited when `None` (a laptop).
    pub capacity: Option<crate::capacity::Capacity>,
    /// How long a destroyed volume's data is kept (Fly keeps a day).
    pub volume_grace: std::time::Duration,
    /// How often volumes are looked after: purges, scheduled snapshots,
    /// retention, auto-extend.
    pub volume_check_every: std::time::Duration,
    /// How often a volume with `auto_backup_enabled` is snapshotted.
    pub snapshot_every: std::time::Duration,
    /// The host's internal DNS server, machines' resolver; the host's own
    /// resolvers when `None`.
    pub nameserver: Option<std::net::IpAddr>,
    /// Unused images are pruned when the image store's filesystem has
    /// less than this share free (percent); 0 never prunes on its own.
    pub image_gc_free_percent: u8,
    /// What a prune asked for leaves alone, younger than this (a pull or
    /// create in flight may be about to use it).
    pub image_prune_grace: std::time::Duration,
    /// The time the restart policy's window is read from.
    pub clock: crate::clock::Clock,
}

impl AgentConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        AgentConfig {
            data_dir: data_dir.into(),
            region: "local".into(),
            host_id: 1,
            insecure_registries: Vec::new(),
            registry_credentials: None,
            prepared_runs: 64,
            capacity: None,
            volume_grace: std::time::Duration::from_secs(24 * 60 * 60),
            volume_check_every: std::time::Duration::from_secs(60),
            snapshot_every: std::time::Duration::from_secs(24 * 60 * 60),
            nameserver: None,
            image_gc_free_percent: 10,
            image_prune_grace: std::time::Duration::from_secs(60),
            clock: crate::clock::Clock::default(),
        }
    }
}
