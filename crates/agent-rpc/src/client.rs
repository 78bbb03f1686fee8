//! A host agent on another host, called over its HTTP API: the same
//! interface as the agent in this process.

use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::{SinkExt, StreamExt};
use midge_agent_api::{AgentError, HostAgent, PtySession, Result};
use midge_types::agent::{
    AcquireLease, CordonMachine, CreateMachine, DestroyMachine, ExecMachine, FindMachine,
    GetMachine, ImagesPruned, ListEvents, ListMachines, LogLine, MachineCounts, MachineKey,
    Metadata, OpenPty, PruneImages, PtyInput, PtyOutput, PullEvent, PullImage, ReadLogs,
    ReleaseLease, RestartMachine, SignalMachine, StartMachine, StopMachine, SuspendMachine,
    UpdateMachine, UpdateMetadata, WaitMachine,
};
use midge_types::agent::{CreateVolume, ExtendVolume, ListVolumes, UpdateVolume, VolumeKey};
use midge_types::agent::{ExportMachine, ImportMachine, MachineExport, SettleMigration};
use midge_types::volume::{ExtendVolumeResponse, Volume, VolumeSnapshot};
use midge_types::{
    ExecResponse, LeaseData, Machine, MachineEvent, MachineVersion, StartResponse, WaitResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::wire::{CALL_PREFIX, WireError};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A connection whose peer stops acknowledging (a host cut off mid-call)
/// is given up after this long, rather than TCP's quarter of an hour; idle
/// ones are probed as often, so a long call to a host that vanished fails
/// as fast.
const DEAD_PEER_TIMEOUT: Duration = Duration::from_secs(8);
/// Reads are answered from the agent's memory: one that takes longer is
/// from a host in trouble, and the caller has the catalog to fall back on.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Beyond a wait's own timeout, how long its answer may take.
const WAIT_GRACE: Duration = Duration::from_secs(10);

/// An agent reached at `base_url` (`http://host:port`).
#[derive(Debug, Clone)]
pub struct RemoteAgent {
    http: reqwest::Client,
    base_url: String,
    token: String,
    /// Names the host in errors.
    host: String,
    region: String,
}

impl RemoteAgent {
    /// `host` names the agent's host in errors; `region` is its region.
    pub fn new(base_url: &str, token: &str, host: &str, region: &str) -> Result<RemoteAgent> {
        // Fails only when a provider is installed already, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_keepalive(DEAD_PEER_TIMEOUT / 4)
            .tcp_keepalive_interval(DEAD_PEER_TIMEOUT / 4)
            .tcp_keepalive_retries(3)
            .tcp_user_timeout(DEAD_PEER_TIMEOUT)
            .no_proxy()
            .build()
            .map_err(|e| AgentError::host("building the agent client", e))?;
        Ok(RemoteAgent {
            http,
            base_url: base_url.trim_end_matches('/').to_string(),
            token: token.to_string(),
            host: host.to_string(),
            region: region.to_string(),
        })
    }

    /// Asks an agent for its region (before its host is known by it).
    pub async fn fetch_region(base_url: &str, token: &str) -> Result<String> {
        let probe = RemoteAgent::new(base_url, token, base_url, "")?;
        probe.unary("region", &()).await
    }

    fn unavailable(&self, detail: impl std::fmt::Display) -> AgentError {
        AgentError::HostUnavailable {
            host: self.host.clone(),
            detail: detail.to_string(),
        }
    }

    async fn send<Req: Serialize>(
        &self,
        call: &str,
        request: &Req,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response> {
        let mut builder = self
            .http
            .post(format!("{}{CALL_PREFIX}{call}", self.base_url))
            .bearer_auth(&self.token)
            .json(request);
        if let Some(timeout) = timeout {
            builder = builder.timeout(timeout);
        }
        let response = builder
            .send()
            .await
            .map_err(|e| self.unavailable(error_chain(&e)))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        if status == reqwest::StatusCode::UNAUTHORIZED {
            return Err(self.unavailable("the agent refused this server's host token"));
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| self.unavailable(error_chain(&e)))?;
        match serde_json::from_slice::<WireError>(&bytes) {
            Ok(error) => Err(error.into()),
            Err(_) => Err(self.unavailable(format!(
                "the agent answered {status}: {}",
                String::from_utf8_lossy(&bytes)
            ))),
        }
    }

    async fn unary<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        call: &str,
        request: &Req,
    ) -> Result<Resp> {
        self.unary_within(call, request, None).await
    }

    async fn read<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        call: &str,
        request: &Req,
    ) -> Result<Resp> {
        self.unary_within(call, request, Some(READ_TIMEOUT)).await
    }

    async fn unary_within<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        call: &str,
        request: &Req,
        timeout: Option<Duration>,
    ) -> Result<Resp> {
        let response = self.send(call, request, timeout).await?;
        let bytes = response
            .bytes()
            .await
            .map_err(|e| self.unavailable(error_chain(&e)))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| self.unavailable(format!("an unreadable answer to {call}: {e}")))
    }

    /// A stream call: NDJSON items until the agent ends the response.
    async fn streaming<Req: Serialize, Item: DeserializeOwned + Send + 'static>(
        &self,
        call: &str,
        request: &Req,
    ) -> Result<BoxStream<'static, Item>> {
        let response = self.send(call, request, None).await?;
        let bytes = response.bytes_stream();
        let items = futures::stream::unfold(
            (bytes, Vec::<u8>::new()),
            |(mut bytes, mut buffer)| async move {
                loop {
                    if let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = buffer.drain(..=end).collect();
                        match serde_json::from_slice::<Item>(&line) {
                            Ok(item) => return Some((item, (bytes, buffer))),
                            Err(_) => continue,
                        }
                    }
                    match bytes.next().await {
                        Some(Ok(chunk)) => buffer.extend_from_slice(&chunk),
                        _ => return None,
                    }
                }
            },
        );
        Ok(Box::pin(items))
    }
}

pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[async_trait]
impl HostAgent for RemoteAgent {
    fn region(&self) -> &str {
        &self.region
    }

    async fn create_machine(&self, call: CreateMachine) -> Result<Machine> {
        self.unary("create_machine", &call).await
    }

    async fn get_machine(&self, call: GetMachine) -> Result<Machine> {
        self.read("get_machine", &call).await
    }

    async fn find_machine(&self, call: FindMachine) -> Result<String> {
        self.unary("find_machine", &call).await
    }

    async fn list_machines(&self, call: ListMachines) -> Result<Vec<Machine>> {
        self.read("list_machines", &call).await
    }

    async fn machine_counts(&self, app: String) -> Result<MachineCounts> {
        self.unary("machine_counts", &app).await
    }

    async fn update_machine(&self, call: UpdateMachine) -> Result<Machine> {
        self.unary("update_machine", &call).await
    }

    async fn start_machine(&self, call: StartMachine) -> Result<StartResponse> {
        self.unary("start_machine", &call).await
    }

    async fn stop_machine(&self, call: StopMachine) -> Result<()> {
        self.unary("stop_machine", &call).await
    }

    async fn restart_machine(&self, call: RestartMachine) -> Result<()> {
        self.unary("restart_machine", &call).await
    }

    async fn signal_machine(&self, call: SignalMachine) -> Result<()> {
        self.unary("signal_machine", &call).await
    }

    async fn suspend_machine(&self, call: SuspendMachine) -> Result<()> {
        self.unary("suspend_machine", &call).await
    }

    async fn destroy_machine(&self, call: DestroyMachine) -> Result<()> {
        self.unary("destroy_machine", &call).await
    }

    async fn cordon_machine(&self, call: CordonMachine) -> Result<()> {
        self.unary("cordon_machine", &call).await
    }

    async fn export_machine(&self, call: ExportMachine) -> Result<MachineExport> {
        self.unary("export_machine", &call).await
    }

    async fn import_machine(&self, call: ImportMachine) -> Result<Machine> {
        self.unary("import_machine", &call).await
    }

    async fn settle_migration(&self, call: SettleMigration) -> Result<()> {
        self.unary("settle_migration", &call).await
    }

    async fn wait_machine(&self, call: WaitMachine) -> Result<WaitResponse> {
        let within = call.timeout.0 + WAIT_GRACE;
        self.unary_within("wait_machine", &call, Some(within)).await
    }

    async fn machine_events(&self, call: ListEvents) -> Result<Vec<MachineEvent>> {
        self.read("machine_events", &call).await
    }

    async fn machine_versions(&self, machine: MachineKey) -> Result<Vec<MachineVersion>> {
        self.read("machine_versions", &machine).await
    }

    async fn acquire_lease(&self, call: AcquireLease) -> Result<LeaseData> {
        self.unary("acquire_lease", &call).await
    }

    async fn get_lease(&self, machine: MachineKey) -> Result<LeaseData> {
        self.read("get_lease", &machine).await
    }

    async fn release_lease(&self, call: ReleaseLease) -> Result<()> {
        self.unary("release_lease", &call).await
    }

    async fn get_metadata(&self, machine: MachineKey) -> Result<Metadata> {
        self.read("get_metadata", &machine).await
    }

    async fn update_metadata(&self, call: UpdateMetadata) -> Result<()> {
        self.unary("update_metadata", &call).await
    }

    async fn exec(&self, call: ExecMachine) -> Result<ExecResponse> {
        let within = call.timeout.0 + WAIT_GRACE;
        self.unary_within("exec", &call, Some(within)).await
    }

    async fn open_pty(&self, call: OpenPty) -> Result<PtySession> {
        let json = serde_json::to_string(&call)
            .map_err(|e| AgentError::host("encoding the pty call", e))?;
        let ws_base = self
            .base_url
            .replacen("http://", "ws://", 1)
            .replacen("https://", "wss://", 1);
        let mut url = reqwest::Url::parse(&format!("{ws_base}{CALL_PREFIX}open_pty"))
            .map_err(|e| self.unavailable(e))?;
        url.query_pairs_mut().append_pair("call", &json);
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| self.unavailable(e))?;
        let bearer = format!("Bearer {}", self.token);
        request.headers_mut().insert(
            "authorization",
            bearer.parse().map_err(|e| self.unavailable(e))?,
        );
        let (socket, _) = tokio_tungstenite::connect_async(request)
            .await
            .map_err(|e| match e {
                tokio_tungstenite::tungstenite::Error::Http(response) => {
                    let body = response.body().clone().unwrap_or_default();
                    match serde_json::from_slice::<WireError>(&body) {
                        Ok(error) => error.into(),
                        Err(_) => {
                            self.unavailable(format!("the agent answered {}", response.status()))
                        }
                    }
                }
                other => self.unavailable(error_chain(&other)),
            })?;
        let (mut sink, mut source) = socket.split();
        let (input_tx, mut input_rx) = mpsc::channel::<PtyInput>(64);
        let (output_tx, output_rx) = mpsc::channel::<PtyOutput>(64);
        tokio::spawn(async move {
            while let Some(input) = input_rx.recv().await {
                let message = match input {
                    PtyInput::Data { bytes } => Message::Binary(bytes.into()),
                    control => match serde_json::to_string(&control) {
                        Ok(text) => Message::Text(text.into()),
                        Err(_) => continue,
                    },
                };
                if sink.send(message).await.is_err() {
                    break;
                }
            }
            let _ = sink.send(Message::Close(None)).await;
        });
        tokio::spawn(async move {
            let mut ended = false;
            while let Some(Ok(message)) = source.next().await {
                let output = match message {
                    Message::Binary(bytes) => PtyOutput::Data {
                        bytes: bytes.to_vec(),
                    },
                    Message::Text(text) => match serde_json::from_str::<PtyOutput>(text.as_str()) {
                        Ok(output) => output,
                        Err(_) => continue,
                    },
                    Message::Close(_) => break,
                    _ => continue,
                };
                ended = matches!(output, PtyOutput::Exit { .. });
                if output_tx.send(output).await.is_err() || ended {
                    break;
                }
            }
            if !ended {
                let _ = output_tx
                    .send(PtyOutput::Exit {
                        exit_code: 255,
                        signal: 0,
                    })
                    .await;
            }
        });
        Ok(PtySession {
            input: input_tx,
            output: output_rx,
        })
    }

    async fn read_logs(&self, call: ReadLogs) -> Result<BoxStream<'static, LogLine>> {
        self.streaming("read_logs", &call).await
    }

    async fn pull_image(&self, call: PullImage) -> Result<BoxStream<'static, PullEvent>> {
        self.streaming("pull_image", &call).await
    }

    async fn prune_images(&self, call: PruneImages) -> Result<ImagesPruned> {
        self.unary("prune_images", &call).await
    }

    async fn allocate_egress(
        &self,
        call: midge_types::agent::AllocateEgress,
    ) -> Result<Vec<midge_types::agent::EgressAddress>> {
        self.unary("allocate_egress", &call).await
    }

    async fn release_egress(&self, call: midge_types::agent::ReleaseEgress) -> Result<()> {
        self.unary("release_egress", &call).await
    }

    async fn create_volume(&self, call: CreateVolume) -> Result<Volume> {
        self.unary("create_volume", &call).await
    }

    async fn get_volume(&self, volume: VolumeKey) -> Result<Volume> {
        self.read("get_volume", &volume).await
    }

    async fn list_volumes(&self, call: ListVolumes) -> Result<Vec<Volume>> {
        self.read("list_volumes", &call).await
    }

    async fn update_volume(&self, call: UpdateVolume) -> Result<Volume> {
        self.unary("update_volume", &call).await
    }

    async fn extend_volume(&self, call: ExtendVolume) -> Result<ExtendVolumeResponse> {
        self.unary("extend_volume", &call).await
    }

    async fn destroy_volume(&self, volume: VolumeKey) -> Result<Volume> {
        self.unary("destroy_volume", &volume).await
    }

    async fn snapshot_volume(&self, volume: VolumeKey) -> Result<VolumeSnapshot> {
        self.unary("snapshot_volume", &volume).await
    }

    async fn volume_snapshots(&self, volume: VolumeKey) -> Result<Vec<VolumeSnapshot>> {
        self.read("volume_snapshots", &volume).await
    }

    async fn export_volume(
        &self,
        call: midge_types::agent::ExportVolume,
    ) -> Result<midge_agent_api::VolumeExport> {
        let response = self.send("export_volume", &call, None).await?;
        let key = response
            .headers()
            .get(crate::wire::VOLUME_KEY_HEADER)
            .and_then(|value| value.to_str().ok())
            .map(str::to_string);
        let stream = response.bytes_stream().map(|chunk| {
            chunk
                .map(|bytes| bytes.to_vec())
                .map_err(std::io::Error::other)
        });
        Ok(midge_agent_api::VolumeExport {
            key,
            stream: Box::pin(stream),
        })
    }
}
