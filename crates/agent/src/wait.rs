//! Waiting for a machine to reach a state: woken by every change to its
//! record, so the answer comes the moment the state is written.

use midge_agent_api::AgentError;
use midge_types::agent::{WaitMachine, WaitTarget};
use midge_types::{MachineState, WaitResponse};

use crate::agent::AgentCore;
use crate::record::MachineRecord;

impl AgentCore {
    pub(crate) async fn wait(&self, call: &WaitMachine) -> Result<WaitResponse, AgentError> {
        let entry = self.entry(&call.machine.app, &call.machine.id)?;
        let mut changes = entry.changed.subscribe();
        let deadline = tokio::time::Instant::now() + call.timeout.0;
        loop {
            let record = entry.snapshot();
            if let Some(response) = satisfied(&record, call) {
                return Ok(response);
            }
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        return Err(AgentError::MachineNotFound);
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    let wanted: Vec<String> = call.targets.iter().map(|t| match t {
                        WaitTarget::State(s) => s.to_string(),
                        WaitTarget::Settled => "settled".into(),
                    }).collect();
                    return Err(AgentError::DeadlineExceeded(format!(
                        "machine failed to reach desired state, {}, currently {}",
                        wanted.join(","),
                        record.state
                    )));
                }
            }
        }
    }
}

fn satisfied(record: &MachineRecord, call: &WaitMachine) -> Option<WaitResponse> {
    let last_event = record.events.last().map(|e| e.id.clone());
    if let Some(from) = call.from_event_id.as_deref()
        && last_event.as_deref().is_none_or(|last| last <= from)
    {
        return None;
    }
    let state = match call.version.as_deref() {
        Some(version) if version != record.version() => record
            .versions
            .iter()
            .any(|v| v.version == version)
            .then_some(MachineState::Replaced)?,
        _ => record.state,
    };
    let matched = call.targets.iter().any(|target| match target {
        WaitTarget::State(wanted) => {
            *wanted == state
                || (state == MachineState::Replaced
                    && matches!(wanted, MachineState::Stopped | MachineState::Destroyed))
        }
        WaitTarget::Settled => state.is_settled(),
    });
    matched.then(|| WaitResponse {
        ok: true,
        state,
        version: call
            .version
            .clone()
            .unwrap_or_else(|| record.version().to_string()),
        event_id: last_event,
    })
}
