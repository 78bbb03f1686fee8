//! The agent's interface, as the API server and the CLI's `up` use it.

use midge_types::MachineState;

/// The app and organization a machine belongs to, as the catalog knows them.
#[derive(Debug, Clone)]
pub struct Owner {
    pub app: String,
    pub org_slug: String,
    /// The org's private network number (the 32 network bits of its 6PN prefix).
    pub org_network: u32,
}

#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub include_deleted: bool,
    pub region: Option<String>,
    pub states: Vec<MachineState>,
    /// `metadata.KEY=VALUE` filters, all of which must match.
    pub metadata: Vec<(String, String)>,
    /// Omit config, events, checks.
    pub summary: bool,
}

/// What `wait` waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitTarget {
    State(MachineState),
    /// Any state that is not transient.
    Settled,
}

/// Lease nonce sent by the caller (`fly-machine-lease-nonce`), checked on
/// every mutation of a leased machine.
pub type Nonce<'a> = Option<&'a str>;

/// One line of a machine's log.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LogLine {
    pub ts: String,
    pub stream: String,
    pub message: String,
}

/// An interactive exec session with a PTY: bytes both ways, resize, exit.
pub struct PtySession {
    pub input: tokio::sync::mpsc::Sender<PtyInput>,
    pub output: tokio::sync::mpsc::Receiver<PtyOutput>,
}

pub enum PtyInput {
    Data(Vec<u8>),
    Resize { cols: u16, rows: u16 },
    Eof,
}

pub enum PtyOutput {
    Data(Vec<u8>),
    Exit { exit_code: i32, signal: i32 },
}
