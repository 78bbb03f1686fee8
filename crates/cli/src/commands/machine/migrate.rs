//! `midge machine migrate` (midge's extension): moves a machine to another
//! host, keeping its id, name, versions, events, metadata, volume data and
//! 6PN address.

use anyhow::Result;
use clap::Args;
use midge_client::ApiClient;

use crate::lease::with_lease;
use crate::progress::Progress;

use super::lifecycle::MachineArg;

#[derive(Args, Debug)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub machine: MachineArg,
    /// The host to move it to (see `midge host list`); else placement picks one
    #[arg(long)]
    pub host: Option<String>,
    /// Pick the new host in this region (default: the machine's own)
    #[arg(short, long)]
    pub region: Option<String>,
}

pub async fn migrate(client: &ApiClient, args: MigrateArgs) -> Result<()> {
    let id = &args.machine.id;
    let app = args.machine.app.resolve_for_machine(client, id).await?;
    let started = std::time::Instant::now();
    let machine = with_lease(client, &app, id, async |lease| {
        let progress = Progress::start(format!(
            "Moving machine {id}: stopping it, copying its image and volumes, starting it on the new host"
        ));
        let moved = client
            .migrate_machine(
                &app,
                id,
                args.host.as_deref(),
                args.region.as_deref(),
                Some(&lease.nonce),
            )
            .await;
        progress.finish();
        Ok(moved?)
    })
    .await?;
    println!(
        "Machine {} moved in {:.1}s: {} in {}, 6PN address {}",
        machine.id,
        started.elapsed().as_secs_f64(),
        machine.state,
        machine.region,
        machine.private_ip
    );
    Ok(())
}
