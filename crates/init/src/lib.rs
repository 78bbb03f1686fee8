//! The agent↔init protocol, the run spec, and the pure logic midge-init
//! applies to it (process resolution, users, guest files).
//!
//! Everything here is transport-independent: frames travel over any
//! `Read + Write` (a unix socket in a sandbox, vsock in a VM).

pub mod activity;
#[cfg(feature = "tokio")]
pub mod async_io;
pub mod client;
pub mod files;
pub mod mux;
pub mod process;
pub mod protocol;
pub mod spec;
pub mod timestamp;
pub mod users;
pub mod vm;

pub use client::{ExecOutput, exec_collect, exec_collect_request, exec_request};
pub use protocol::{ExecRequest, Frame, MAX_FRAME_LEN, Request, Response, read_frame, write_frame};
pub use spec::{
    ExitReport, FileSpec, ImageProcess, InitOverrides, LogLine, LogStream, PROTOCOL_VERSION,
    RunSpec, StartEvent,
};
