//! Opening the agent: load the store, set up the host, and converge every
//! machine to what its record says, finishing or rolling back operations a
//! crash interrupted, and removing host resources nothing owns.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use midge_image::ImageStore;
use midge_net::{NetConfig, Network};
use midge_types::{ApiError, MachineState, StopRequest};

use crate::agent::{Agent, MachineSlot, Running, state_is_alive};
use crate::config::AgentConfig;
use crate::driver::Driver;
use crate::record::PendingOp;
use crate::sandbox::SandboxDriver;
use crate::store::AgentStore;

fn setup_error(what: &str, err: impl std::fmt::Display) -> ApiError {
    ApiError::internal(format!("{what}: {err}"))
}

/// Whether an ELF executable runs without a dynamic loader: init has to,
/// since machine images need not carry a libc.
fn is_static_executable(path: &std::path::Path) -> bool {
    const PT_INTERP: u32 = 3;
    let Ok(bytes) = std::fs::read(path) else {
        return false;
    };
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 {
        return false;
    }
    let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]) as usize;
    let phoff = u64::from_le_bytes(bytes[32..40].try_into().expect("8 bytes")) as usize;
    let (entry_size, count) = (u16_at(54), u16_at(56));
    (0..count).all(|index| {
        let at = phoff + index * entry_size;
        bytes
            .get(at..at + 4)
            .is_some_and(|kind| u32::from_le_bytes(kind.try_into().expect("4 bytes")) != PT_INTERP)
    })
}

/// The static init binary: configured, or found near this executable.
fn find_init_binary(config: &AgentConfig) -> Result<PathBuf, ApiError> {
    let configured = config.init_binary.clone().or_else(|| {
        std::env::var_os("MIDGE_INIT_BINARY")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
    });
    if let Some(path) = configured {
        return if is_static_executable(&path) {
            Ok(path)
        } else {
            Err(ApiError::internal(format!(
                "{} is not a statically linked midge-init; build it with scripts/build",
                path.display()
            )))
        };
    }
    let exe =
        std::env::current_exe().map_err(|e| setup_error("locating the midge executable", e))?;
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    let candidates = [
        dir.join("midge-init"),
        dir.join("../x86_64-unknown-linux-gnu/release/midge-init"),
        dir.join("../../x86_64-unknown-linux-gnu/release/midge-init"),
        dir.join("../x86_64-unknown-linux-gnu/debug/midge-init"),
        dir.join("../../x86_64-unknown-linux-gnu/debug/midge-init"),
    ];
    // A workspace build also leaves a dynamically linked midge-init beside midge.
    candidates.into_iter().find(|p| is_static_executable(p)).ok_or_else(|| {
        ApiError::internal(
            "no statically linked midge-init found next to midge; build it with scripts/build or set MIDGE_INIT_BINARY",
        )
    })
}

impl Agent {
    pub(crate) async fn open_inner(config: AgentConfig) -> Result<Arc<Agent>, ApiError> {
        let data_dir = config.data_dir.clone();
        let machines_dir = data_dir.join("machines");
        for dir in [&data_dir, &machines_dir] {
            std::fs::create_dir_all(dir)
                .map_err(|e| setup_error(&format!("creating {}", dir.display()), e))?;
        }
        let store = AgentStore::open(&data_dir.join("agent.db"))
            .map_err(|e| setup_error("opening agent store", e))?;
        let images = ImageStore::open(&data_dir.join("images"))
            .map_err(|e| setup_error("opening image store", e))?;
        let pool = config
            .ipv4_pool
            .parse()
            .map_err(|e| ApiError::invalid(format!("ipv4 pool {:?}: {e}", config.ipv4_pool)))?;
        let network = Network::init(NetConfig {
            prefix: config.resource_prefix.clone(),
            ipv4_pool: pool,
            host_id: config.host_id,
        })
        .await
        .map_err(|e| setup_error("setting up host networking", e))?;
        let init_binary = find_init_binary(&config)?;
        let runc_root = PathBuf::from("/run/midge")
            .join(&config.resource_prefix)
            .join("runc");
        std::fs::create_dir_all(&runc_root)
            .map_err(|e| setup_error("creating runc state dir", e))?;
        let driver: Arc<dyn Driver> = Arc::new(SandboxDriver::new(
            runc_root,
            init_binary,
            config.resource_prefix.clone(),
        ));
        let records = store
            .load_all()
            .map_err(|e| setup_error("loading machines", e))?;
        let agent = Arc::new(Agent {
            config,
            store,
            machines: Default::default(),
            images,
            network,
            driver,
            machines_dir,
            create_lock: Default::default(),
            generation: Default::default(),
            shutting_down: Default::default(),
        });
        for record in records {
            agent.insert_slot(record);
        }
        agent.converge_all().await;
        agent.collect_orphans().await;
        Ok(agent)
    }

    async fn converge_all(self: &Arc<Self>) {
        for slot in self.all_slots() {
            let guard = slot.op_lock.clone().lock_owned().await;
            if let Err(err) = self.converge(&slot).await {
                let id = Agent::snapshot(&slot).id;
                tracing::warn!(machine = %id, "recovering machine: {err}");
            }
            drop(guard);
            self.warm_up(&slot);
        }
    }

    /// Brings one machine in line with its record. Caller holds the op lock.
    async fn converge(self: &Arc<Self>, slot: &Arc<MachineSlot>) -> Result<(), ApiError> {
        let record = Agent::snapshot(slot);
        if record.state == MachineState::Destroyed {
            return Ok(());
        }
        let container_id = self.container_id(&record.id);
        let running_pid = self.driver.running_pid(&container_id).await;
        if let Some(pid) = running_pid {
            *slot.running.lock().expect("running lock") = Some(Running {
                pid,
                generation: self.next_generation(),
            });
        }
        match record.pending.clone() {
            Some(PendingOp::Create) => {
                self.roll_back_create(slot).await;
                Ok(())
            }
            Some(PendingOp::Destroy) => self.destroy_locked(slot, true).await,
            Some(PendingOp::Stop { request_signal }) => {
                let request = StopRequest {
                    signal: request_signal.map(midge_types::Signal),
                    timeout: record.stop_request.as_ref().and_then(|r| r.timeout),
                };
                self.stop_to_stopped(slot, &request).await
            }
            Some(PendingOp::Start)
            | Some(PendingOp::Restart)
            | Some(PendingOp::Update { launch: true }) => {
                self.readopt_or_start(slot, running_pid).await
            }
            Some(PendingOp::Update { launch: false }) => {
                self.stop_to_stopped(slot, &StopRequest::default()).await
            }
            None if record.state == MachineState::Started => {
                self.readopt_or_start(slot, running_pid).await
            }
            None => {
                // Not meant to be running: make sure nothing is.
                self.stop_locked(
                    slot,
                    &kill_now(),
                    record.state,
                    PendingOp::Stop {
                        request_signal: Some(9),
                    },
                )
                .await?;
                self.update_record(slot, |r| {
                    r.set_state(record.state);
                    r.pending = None;
                })?;
                Ok(())
            }
        }
    }

    async fn readopt_or_start(
        self: &Arc<Self>,
        slot: &Arc<MachineSlot>,
        running_pid: Option<i32>,
    ) -> Result<(), ApiError> {
        let record = Agent::snapshot(slot);
        let exited = self.dirs(&record.id).exit_file().exists();
        match (running_pid, exited) {
            (Some(_), false) if record.pending.is_none() => {
                let running = slot
                    .running
                    .lock()
                    .expect("running lock")
                    .expect("set above");
                self.spawn_monitor(slot.clone(), running);
                Ok(())
            }
            (_, true) if record.state == MachineState::Started && record.pending.is_none() => {
                // It exited while the agent was away: the restart policy decides.
                self.handle_exit(slot).await;
                Ok(())
            }
            _ => {
                self.stop_locked(slot, &kill_now(), MachineState::Starting, PendingOp::Start)
                    .await?;
                self.start_locked(slot, false).await
            }
        }
    }

    /// Removes namespaces, containers and machine dirs whose machine the
    /// store does not know (a crash between creating and recording them).
    async fn collect_orphans(&self) {
        let known: HashMap<String, MachineState> = self
            .all_slots()
            .iter()
            .map(|slot| {
                let record = Agent::snapshot(slot);
                (record.id, record.state)
            })
            .collect();
        let alive: HashSet<&String> = known
            .iter()
            .filter(|(_, s)| state_is_alive(**s))
            .map(|(id, _)| id)
            .collect();
        if let Ok(namespaces) = self.network.list_namespaces().await {
            for netns in namespaces {
                if let Some(id) = self.network.machine_id_of_namespace(&netns)
                    && !alive.contains(&id.to_string())
                {
                    let id = id.to_string();
                    if let Err(err) = self.network.detach(&id).await {
                        tracing::warn!(machine = %id, "removing orphan network: {err}");
                    }
                }
            }
        }
        if let Ok(entries) = std::fs::read_dir(&self.machines_dir) {
            for entry in entries.flatten() {
                let id = entry.file_name().to_string_lossy().to_string();
                if !alive.contains(&id) {
                    let _ = self
                        .driver
                        .cleanup(&self.container_id(&id), &self.dirs(&id))
                        .await;
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
    }
}

fn kill_now() -> StopRequest {
    StopRequest {
        signal: Some(midge_types::Signal::KILL),
        timeout: Some(midge_types::GoDuration::from_secs(5)),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tells_static_from_dynamic_executables() {
        assert!(
            !super::is_static_executable(std::path::Path::new("/bin/sh")),
            "dash needs ld.so"
        );
        assert!(!super::is_static_executable(std::path::Path::new(
            "/etc/hostname"
        )));
        assert!(
            super::is_static_executable(std::path::Path::new("/bin/busybox")),
            "busybox-static"
        );
    }
}
