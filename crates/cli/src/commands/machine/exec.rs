//! `machine exec`: run a command on a machine, with or without a terminal.

use anyhow::Result;
use clap::Args;
use midge_types::ExecRequest;

use crate::commands::AppArg;
use crate::exit::{ExitStatus, exit_code_for};
use crate::interactive;
use crate::output::print_json;
use midge_client::ApiClient;

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// Machine ID or name
    pub id: String,
    /// Command to run: one quoted string (split like a shell) or several words
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    pub command: Vec<String>,
    #[command(flatten)]
    pub app: AppArg,
    /// Seconds the command may run
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u64>,
    /// Interactive: attach a terminal (default command /bin/sh)
    #[arg(short = 't', long = "tty")]
    pub tty: bool,
    #[arg(short, long, conflicts_with = "tty")]
    pub json: bool,
}

pub async fn exec(client: &ApiClient, args: ExecArgs) -> Result<()> {
    let app = args.app.resolve_for_machine(client, &args.id).await?;
    let mut command = command_argv(&args.command)?;
    if args.tty {
        if command.is_empty() {
            command = vec!["/bin/sh".to_string()];
        }
        return match interactive::run(client, &app, &args.id, &command, None).await? {
            0 => Ok(()),
            code => Err(ExitStatus(code).into()),
        };
    }
    if command.is_empty() {
        anyhow::bail!("no command given: midge machine exec <machine> <command>");
    }
    let request = ExecRequest {
        command,
        timeout: args.timeout,
        ..Default::default()
    };
    let response = client.exec(&app, &args.id, &request).await?;
    if args.json {
        return print_json(&response);
    }
    print!("{}", response.stdout);
    eprint!("{}", response.stderr);
    let code = exit_code_for(response.exit_code, response.exit_signal);
    if code != 0 {
        eprintln!("Exit code: {code}");
        return Err(ExitStatus(code).into());
    }
    Ok(())
}

/// One argument is a command line (as flyctl takes it); several are argv.
pub fn command_argv(words: &[String]) -> Result<Vec<String>> {
    match words {
        [line] => shell_words::split(line)
            .map_err(|err| anyhow::anyhow!("parsing command {line:?}: {err}")),
        words => Ok(words.to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_split_like_flyctl() {
        let one = command_argv(&["sh -c 'echo a b'".to_string()]).unwrap();
        assert_eq!(one, ["sh", "-c", "echo a b"]);
        let many =
            command_argv(&["ls".to_string(), "-la".to_string(), "/a b".to_string()]).unwrap();
        assert_eq!(many, ["ls", "-la", "/a b"]);
        assert!(command_argv(&["echo 'unclosed".to_string()]).is_err());
    }
}
