//! Ending the process with a specific status (a remote command's exit code)
//! without printing an error.

#[derive(Debug)]
pub struct ExitStatus(pub i32);

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit status {}", self.0)
    }
}

impl std::error::Error for ExitStatus {}

/// The process exit code a command's exit code and signal map to.
pub fn exit_code_for(exit_code: i32, signal: i32) -> i32 {
    if signal > 0 && exit_code == 0 {
        128 + signal
    } else {
        exit_code
    }
}
