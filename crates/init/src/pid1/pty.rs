//! Pseudo-terminals, opened close-on-exec so no other child inherits them.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::fcntl::{OFlag, open};
use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
use nix::sys::stat::Mode;

pub struct Pty {
    pub master: File,
    pub slave: OwnedFd,
}

pub fn open_pty(cols: u16, rows: u16) -> Result<Pty, String> {
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(|errno| format!("opening /dev/ptmx: {errno}"))?;
    grantpt(&master).map_err(|errno| format!("grantpt: {errno}"))?;
    unlockpt(&master).map_err(|errno| format!("unlockpt: {errno}"))?;
    let slave_path = ptsname_r(&master).map_err(|errno| format!("ptsname: {errno}"))?;
    let slave = open(
        slave_path.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| format!("opening {slave_path}: {errno}"))?;
    let master = File::from(OwnedFd::from(master));
    set_window_size(&master, cols, rows)?;
    Ok(Pty { master, slave })
}

/// Applies a terminal size; a zero dimension defaults to 80x24.
pub fn set_window_size(master: &File, cols: u16, rows: u16) -> Result<(), String> {
    let size = libc::winsize {
        ws_row: if rows == 0 { 24 } else { rows },
        ws_col: if cols == 0 { 80 } else { cols },
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which is valid.
    let result = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
    if result < 0 {
        return Err(format!(
            "setting the terminal size: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}
