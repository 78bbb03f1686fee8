//! The SQLite catalog's writes survive a kill -9 of the process that made
//! them. The binary is its own harness: run with `MIDGE_STORE_KILL_TEST_DB`
//! set it is the writer that gets killed, otherwise it runs the test, so the
//! writer is never listed or counted as a test.

use std::io::{BufRead, Write};
use std::process::{Command, ExitCode, Stdio};

use libtest_mimic::{Arguments, Failed, Trial};
use midge_store::{Catalog, NewApp, SqliteCatalog};

const CHILD_DB_ENV: &str = "MIDGE_STORE_KILL_TEST_DB";

fn main() -> ExitCode {
    if let Some(path) = std::env::var_os(CHILD_DB_ENV) {
        write_and_wait_to_be_killed(std::path::Path::new(&path));
    }
    let trials = vec![Trial::test("writes_survive_kill_9", writes_survive_kill_9)];
    libtest_mimic::run(&Arguments::from_args(), trials).exit_code()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

fn write_and_wait_to_be_killed(path: &std::path::Path) -> ! {
    runtime().block_on(async {
        let catalog = SqliteCatalog::open(path).unwrap();
        catalog.create_org("killed", "Killed").await.unwrap();
        catalog
            .create_app(&NewApp {
                name: "survivor".into(),
                org_slug: "killed".into(),
                ..NewApp::default()
            })
            .await
            .unwrap();
        println!("WRITTEN");
        std::io::stdout().flush().unwrap();
        std::thread::sleep(std::time::Duration::from_secs(60));
    });
    std::process::exit(1)
}

fn writes_survive_kill_9() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("catalog.db");
    let mut child = Command::new(std::env::current_exe()?)
        .env(CHILD_DB_ENV, &path)
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let written = std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|line| line.contains("WRITTEN"));
    // SIGKILL: no destructors, no checkpoint.
    child.kill()?;
    child.wait()?;
    if !written {
        return Err("the writer never reported its write".into());
    }
    let reopened = SqliteCatalog::open(&path)?;
    let app = runtime()
        .block_on(reopened.get_app("survivor"))?
        .ok_or("the app written before kill -9 is gone")?;
    if app.org_slug != "killed" {
        return Err(format!("the app's org is {:?}", app.org_slug).into());
    }
    Ok(())
}
