use std::path::PathBuf;

/// How one host agent is set up.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Everything the agent keeps: its store, images, machine dirs.
    pub data_dir: PathBuf,
    /// The region this host belongs to (`local` on a laptop).
    pub region: String,
    /// Put in front of every host resource the agent creates (namespaces,
    /// veths, nftables table, cgroups, runc state): at most 6 characters.
    pub resource_prefix: String,
    /// IPv4 range machines get their /30 link networks from.
    pub ipv4_pool: String,
    /// Registries reachable over plain HTTP (host:port).
    pub insecure_registries: Vec<String>,
    /// The static midge-init binary; found next to the running executable when unset.
    pub init_binary: Option<PathBuf>,
    /// Host id used in 6PN addresses.
    pub host_id: u32,
}

impl AgentConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        AgentConfig {
            data_dir: data_dir.into(),
            region: "local".into(),
            resource_prefix: "midge".into(),
            ipv4_pool: "172.19.0.0/16".into(),
            insecure_registries: Vec::new(),
            init_binary: None,
            host_id: 1,
        }
    }
}
