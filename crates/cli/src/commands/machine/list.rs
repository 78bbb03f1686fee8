//! `machine list` and `machine status`.

use anyhow::Result;
use clap::Args;
use midge_types::{Machine, MachineEvent};
use serde_json::Value;

use crate::commands::AppArg;
use crate::output::{millis_time, print_json, render_table, short_time};
use midge_client::ApiClient;

#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub app: AppArg,
    /// Only machine IDs
    #[arg(short, long)]
    pub quiet: bool,
    #[arg(short, long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Machine ID or name
    pub id: String,
    #[command(flatten)]
    pub app: AppArg,
    /// Show the machine's config as JSON
    #[arg(short, long)]
    pub display_config: bool,
    #[arg(short, long)]
    pub json: bool,
}

pub async fn list(client: &ApiClient, args: ListArgs) -> Result<()> {
    let app = args.app.require()?;
    let machines = client.list_machines(&app).await?;
    if args.json {
        return print_json(&machines);
    }
    if args.quiet {
        machines
            .iter()
            .for_each(|machine| println!("{}", machine.id));
        return Ok(());
    }
    if machines.is_empty() {
        println!("No machines in app {app}");
        return Ok(());
    }
    println!("{} machine(s) in app {app}\n", machines.len());
    print!("{}", machine_table(&machines));
    Ok(())
}

pub fn machine_table(machines: &[Machine]) -> String {
    let rows: Vec<Vec<String>> = machines
        .iter()
        .map(|machine| {
            let host_status = if machine.host_status.is_empty() {
                "ok".to_string()
            } else {
                machine.host_status.clone()
            };
            vec![
                machine.id.clone(),
                machine.name.clone(),
                machine.state.to_string(),
                machine.region.clone(),
                host_status,
                image_of(machine),
                machine.private_ip.clone(),
                short_time(&machine.created_at),
                short_time(&machine.updated_at),
            ]
        })
        .collect();
    render_table(
        &[
            "ID",
            "NAME",
            "STATE",
            "REGION",
            "HOST",
            "IMAGE",
            "IP ADDRESS",
            "CREATED",
            "UPDATED",
        ],
        &rows,
    )
}

fn image_of(machine: &Machine) -> String {
    let image_ref = &machine.image_ref;
    if !image_ref.repository.is_empty() {
        let tag = if image_ref.tag.is_empty() {
            String::new()
        } else {
            format!(":{}", image_ref.tag)
        };
        return format!("{}{tag}", image_ref.repository);
    }
    machine
        .config
        .as_ref()
        .or(machine.incomplete_config.as_ref())
        .map(|c| c.image.clone())
        .unwrap_or_default()
}

pub async fn status(client: &ApiClient, args: StatusArgs) -> Result<()> {
    let app = args.app.resolve_for_machine(client, &args.id).await?;
    let machine = client.get_machine(&app, &args.id).await?;
    if args.json {
        return print_json(&machine);
    }
    print!("{}", describe(&machine));
    if args.display_config {
        let config = machine
            .config
            .as_ref()
            .or(machine.incomplete_config.as_ref());
        println!("\nConfig:");
        print_json(&config)?;
    }
    Ok(())
}

/// The status page: identity, VM and the event log.
pub fn describe(machine: &Machine) -> String {
    let config = machine
        .config
        .as_ref()
        .or(machine.incomplete_config.as_ref());
    let guest = config.map(|c| c.guest_or_default()).unwrap_or_default();
    let join = |words: Option<&Vec<String>>| words.map(shell_words::join).unwrap_or_default();
    let fields = [
        ("ID", machine.id.clone()),
        ("Instance ID", machine.instance_id.clone()),
        ("State", machine.state.to_string()),
        ("Image", image_of(machine)),
        ("Name", machine.name.clone()),
        ("Private IP", machine.private_ip.clone()),
        ("Region", machine.region.clone()),
        ("Host Status", machine.host_status.clone()),
        ("Cordoned", machine.cordoned.to_string()),
        ("CPU Kind", guest.cpu_kind.clone()),
        ("vCPUs", guest.cpus.to_string()),
        ("Memory", format!("{} MB", guest.memory_mb)),
        ("Created", short_time(&machine.created_at)),
        ("Updated", short_time(&machine.updated_at)),
        (
            "Entrypoint",
            join(config.and_then(|c| c.init.entrypoint.as_ref())),
        ),
        ("Command", join(config.and_then(|c| c.init.cmd.as_ref()))),
    ];
    let mut out = format!(
        "Machine ID: {}\nInstance ID: {}\nState: {}\n\nVM\n",
        machine.id, machine.instance_id, machine.state
    );
    for (label, value) in fields {
        out.push_str(&format!("  {label:<13} = {value}\n"));
    }
    if !machine.events.is_empty() {
        out.push_str("\nEvent Logs\n");
        out.push_str(&event_table(&machine.events));
    }
    out
}

pub fn event_table(events: &[MachineEvent]) -> String {
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|event| {
            vec![
                event.status.clone(),
                event.kind.clone(),
                event.source.clone(),
                millis_time(event.timestamp),
                event_info(event),
            ]
        })
        .collect();
    render_table(&["STATE", "EVENT", "SOURCE", "TIMESTAMP", "INFO"], &rows)
}

/// What flyctl shows for exit events: `exit_code=…,oom_killed=…,requested_stop=…`.
fn event_info(event: &MachineEvent) -> String {
    let Some(exit) = event.request.as_ref().and_then(|r| r.get("exit_event")) else {
        return String::new();
    };
    let field = |name: &str| {
        exit.get(name)
            .map(Value::to_string)
            .unwrap_or_else(|| "?".into())
    };
    let mut info = format!(
        "exit_code={},oom_killed={},requested_stop={}",
        field("exit_code"),
        field("oom_killed"),
        field("requested_stop")
    );
    if let Some(signal) = exit
        .get("signal")
        .and_then(Value::as_i64)
        .filter(|s| *s > 0)
    {
        info.push_str(&format!(",signal={signal}"));
    }
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn sample_machine() -> Machine {
        serde_json::from_value(serde_json::json!({
            "id": "148e3d2b412e89", "name": "calm-sky-1234", "state": "started", "region": "local",
            "instance_id": "01HZZZZZZZZZZZZZZZZZZZZZZZ", "version": "01HZZZZZZZZZZZZZZZZZZZZZZZ",
            "private_ip": "fdaa::2",
            "config": {"image": "busybox", "init": {"cmd": ["sleep", "1 000"]}, "guest": {"cpus": 2, "memory_mb": 512, "cpu_kind": "shared"}},
            "image_ref": {"registry": "r", "repository": "library/busybox", "tag": "latest", "digest": "sha256:x"},
            "created_at": "2024-05-01T10:00:00Z", "updated_at": "2024-05-01T10:00:01.5Z",
            "events": [{"id": "e1", "type": "exit", "status": "stopped", "source": "flyd", "timestamp": 1000,
                        "request": {"exit_event": {"exit_code": 3, "oom_killed": false, "requested_stop": false}}}],
            "host_status": "ok"
        }))
        .unwrap()
    }

    #[test]
    fn list_table_has_flyctl_columns() {
        let table = machine_table(&[sample_machine()]);
        let mut lines = table.lines();
        let header = lines.next().unwrap();
        assert!(
            header.starts_with("ID")
                && header.contains("IP ADDRESS")
                && header.ends_with("UPDATED"),
            "{header}"
        );
        let row = lines.next().unwrap();
        for expected in [
            "148e3d2b412e89",
            "calm-sky-1234",
            "started",
            "library/busybox:latest",
            "fdaa::2",
            "2024-05-01T10:00:01Z",
        ] {
            assert!(row.contains(expected), "{expected} missing in {row}");
        }
    }

    #[test]
    fn list_shows_whether_the_host_answers() {
        let mut machine = sample_machine();
        assert_eq!(
            header_and_cell(&machine_table(&[machine.clone()]), "HOST"),
            "ok"
        );
        machine.host_status = "unreachable".into();
        assert_eq!(
            header_and_cell(&machine_table(&[machine]), "HOST"),
            "unreachable"
        );
    }

    /// The first row's cell under `column`.
    fn header_and_cell(table: &str, column: &str) -> String {
        let mut lines = table.lines();
        let header = lines.next().unwrap();
        let start = header.find(column).unwrap();
        let row = lines.next().unwrap();
        row[start..].split_whitespace().next().unwrap().to_string()
    }

    #[test]
    fn status_shows_vm_and_events() {
        let text = describe(&sample_machine());
        assert!(text.contains("Machine ID: 148e3d2b412e89"), "{text}");
        assert!(text.contains("vCPUs         = 2"), "{text}");
        assert!(text.contains("Command       = sleep '1 000'"), "{text}");
        assert!(
            text.contains("exit_code=3,oom_killed=false,requested_stop=false"),
            "{text}"
        );
        assert!(text.contains("1970-01-01T00:00:01.000Z"), "{text}");
    }
}
