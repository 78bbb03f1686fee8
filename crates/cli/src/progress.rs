//! A spinner while something is awaited: animated when stdout is a terminal,
//! one plain line otherwise (logs and pipes stay readable).

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    spinner: Option<ProgressBar>,
}

impl Progress {
    pub fn start(message: impl Into<String>) -> Progress {
        let message = message.into();
        if !crate::output::stdout_is_terminal() {
            println!("{message}...");
            return Progress { spinner: None };
        }
        let spinner = ProgressBar::with_draw_target(None, ProgressDrawTarget::stdout());
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
            spinner.set_style(style);
        }
        spinner.set_message(message);
        spinner.enable_steady_tick(Duration::from_millis(100));
        Progress {
            spinner: Some(spinner),
        }
    }

    pub fn set_message(&self, message: impl Into<String>) {
        if let Some(spinner) = &self.spinner {
            spinner.set_message(message.into());
        }
    }

    pub fn finish(self) {
        if let Some(spinner) = &self.spinner {
            spinner.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(spinner) = &self.spinner
            && !spinner.is_finished()
        {
            spinner.finish_and_clear();
        }
    }
}
