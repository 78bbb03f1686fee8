//! The agent interface over HTTP: a real agent (over the fake driver and
//! network, so no root is needed) behind the agent API on loopback, called
//! through `RemoteAgent` as an API server would.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use midge_agent::{Agent, AgentConfig, HostParts};
use midge_agent_api::{AgentError, ErrorKind, HostAgent};
use midge_agent_rpc::RemoteAgent;
use midge_driver::fake::FakeDriver;
use midge_image::{ImageConfig, ImageStore};
use midge_net::fake::FakeNetwork;
use midge_types::agent::{
    CreateMachine, DestroyMachine, ExecMachine, FindMachine, GetMachine, ListMachines, MachineKey,
    OpenPty, Owner, PtyOutput, ReadLogs, StartMachine, StopMachine, WaitMachine, WaitTarget,
};
use midge_types::{CreateMachineRequest, GoDuration, MachineConfig, MachineState, StopRequest};

const TOKEN: &str = "host-secret";
const APP: &str = "app";

struct Served {
    remote: RemoteAgent,
    url: String,
    driver: FakeDriver,
    dir: tempfile::TempDir,
}

async fn serve() -> Served {
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::write(rootfs.join("bin/program"), b"#!/bin/true\n").unwrap();
    let images = ImageStore::open(&dir.path().join("images")).unwrap();
    images
        .import_rootfs_dir(&rootfs, "test/image:latest", ImageConfig::default())
        .unwrap();
    let driver = FakeDriver::new();
    let mut config = AgentConfig::new(dir.path().join("agent"));
    config.region = "ams".into();
    let agent = Agent::open(
        config,
        HostParts {
            images: images.clone(),
            network: Arc::new(FakeNetwork::default()),
            driver: Arc::new(driver.clone()),
            image_peers: None,
            volumes: midge_volume::VolumePool::open(&dir.path().join("volumes")).unwrap(),
        },
    )
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let router = midge_agent_rpc::server::router(Arc::new(agent), TOKEN)
        .merge(midge_agent_rpc::blobs::router(images, TOKEN));
    tokio::spawn(async move { axum::serve(listener, router).await });
    let region = RemoteAgent::fetch_region(&url, TOKEN).await.unwrap();
    assert_eq!(region, "ams");
    let remote = RemoteAgent::new(&url, TOKEN, "h1", &region).unwrap();
    Served {
        remote,
        url,
        driver,
        dir,
    }
}

fn key(id: &str) -> MachineKey {
    MachineKey::new(APP, id)
}

async fn create(remote: &RemoteAgent, name: &str) -> String {
    remote
        .create_machine(CreateMachine {
            owner: Owner {
                app: APP.into(),
                org_slug: "personal".into(),
                org_network: 1,
            },
            request: CreateMachineRequest {
                name: Some(name.into()),
                config: Some(MachineConfig {
                    image: "test/image:latest".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            lease_owner: "tester".into(),
            placement: None,
            image_sources: Vec::new(),
            registry_logins: Vec::new(),
        })
        .await
        .unwrap()
        .id
}

async fn wait(remote: &RemoteAgent, id: &str, state: MachineState) {
    remote
        .wait_machine(WaitMachine {
            machine: key(id),
            targets: vec![WaitTarget::State(state)],
            version: None,
            from_event_id: None,
            timeout: GoDuration::from_secs(5),
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn every_kind_of_call_works_across_hosts() {
    let served = serve().await;
    let remote = &served.remote;
    let id = create(remote, "web").await;
    wait(remote, &id, MachineState::Started).await;
    let found = remote
        .find_machine(FindMachine {
            app: APP.into(),
            id_or_name: "web".into(),
        })
        .await
        .unwrap();
    assert_eq!(found, id);
    let machine = remote
        .get_machine(GetMachine {
            machine: key(&id),
            version: None,
        })
        .await
        .unwrap();
    assert_eq!(machine.state, MachineState::Started);
    assert_eq!(machine.region, "ams");
    let listed = remote
        .list_machines(ListMachines {
            app: APP.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);

    let output = remote
        .exec(ExecMachine {
            machine: key(&id),
            argv: vec!["echo".into(), "over".into(), "http".into()],
            stdin: None,
            timeout: GoDuration::from_secs(5),
            nonce: None,
        })
        .await
        .unwrap();
    assert_eq!(output.stdout, "echo over http\n");

    served.driver.push_log(&id, "first line");
    served.driver.push_log(&id, "second line");
    let lines: Vec<String> = remote
        .read_logs(ReadLogs {
            machine: key(&id),
            tail: 10,
            follow: false,
        })
        .await
        .unwrap()
        .map(|line| line.message)
        .collect()
        .await;
    assert_eq!(lines, ["first line", "second line"]);

    let mut pty = remote
        .open_pty(OpenPty {
            machine: key(&id),
            argv: vec!["sh".into()],
            cols: 80,
            rows: 24,
        })
        .await
        .unwrap();
    let mut seen = Vec::new();
    while let Ok(Some(output)) =
        tokio::time::timeout(Duration::from_secs(5), pty.output.recv()).await
    {
        let exit = matches!(output, PtyOutput::Exit { .. });
        seen.push(output);
        if exit {
            break;
        }
    }
    assert_eq!(
        seen,
        [
            PtyOutput::Data {
                bytes: b"sh\n".to_vec()
            },
            PtyOutput::Exit {
                exit_code: 0,
                signal: 0
            }
        ]
    );

    remote
        .stop_machine(StopMachine {
            machine: key(&id),
            request: StopRequest::default(),
            nonce: None,
        })
        .await
        .unwrap();
    remote
        .destroy_machine(DestroyMachine {
            machine: key(&id),
            force: false,
            nonce: None,
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn errors_keep_their_kind_and_message_across_hosts() {
    let served = serve().await;
    let remote = &served.remote;
    let id = create(remote, "web").await;
    wait(remote, &id, MachineState::Started).await;
    let error = remote
        .start_machine(StartMachine {
            machine: key(&id),
            nonce: None,
        })
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Precondition);
    assert_eq!(
        error.to_string(),
        "unable to start machine from current state: 'started'"
    );
    let missing = remote
        .get_machine(GetMachine {
            machine: key("0123456789abcd"),
            version: None,
        })
        .await
        .unwrap_err();
    assert_eq!(missing.kind(), ErrorKind::NotFound);
    let timed_out = remote
        .wait_machine(WaitMachine {
            machine: key(&id),
            targets: vec![WaitTarget::State(MachineState::Destroyed)],
            version: None,
            from_event_id: None,
            timeout: GoDuration(Duration::from_millis(200)),
        })
        .await
        .unwrap_err();
    assert_eq!(timed_out.kind(), ErrorKind::DeadlineExceeded);
}

#[tokio::test]
async fn a_wrong_token_or_a_dead_agent_reads_as_an_unavailable_host() {
    let served = serve().await;
    let stranger = RemoteAgent::new(&served.url, "not-the-token", "h1", "ams").unwrap();
    let error = stranger.machine_counts(APP.into()).await.unwrap_err();
    assert!(
        matches!(error, AgentError::HostUnavailable { .. }),
        "{error}"
    );

    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gone = RemoteAgent::new(&format!("http://{closed}"), TOKEN, "h9", "ams").unwrap();
    let error = gone.machine_counts(APP.into()).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unavailable);
    assert!(
        error.to_string().starts_with("host h9 is unreachable"),
        "{error}"
    );
}

#[tokio::test]
async fn another_host_copies_an_image_by_digest_and_needs_the_token() {
    let served = serve().await;
    let source_images = served.dir.path().join("images");
    let digest = ImageStore::open(&source_images)
        .unwrap()
        .get("test/image:latest")
        .unwrap()
        .expect("the served image")
        .image_ref
        .digest;
    let pinned = format!("test/image:latest@{digest}");
    let target_dir = tempfile::tempdir().unwrap();
    let target = ImageStore::open(target_dir.path()).unwrap();

    let wrong = midge_agent_rpc::blobs::PeerBlobs::new(&served.url, "not-the-token").unwrap();
    let refused = target.fetch_from(&pinned, &wrong, &|_| {}).await;
    assert!(
        matches!(refused, Err(midge_image::ImageError::Unreachable { .. })),
        "{refused:?}"
    );

    let peer = midge_agent_rpc::blobs::PeerBlobs::new(&served.url, TOKEN).unwrap();
    let copied = target.fetch_from(&pinned, &peer, &|_| {}).await.unwrap();
    assert_eq!(copied.image_ref.digest, digest);
    assert!(copied.layers[0].join("bin/program").is_file());
    // The source imported it: the copy needs no registry's word.
    assert!(!copied.pulled_with_credentials);
    // A manifest the source has no image for counts as private.
    use midge_image::BlobSource;
    let unknown_digest = format!("sha256:{}", "2".repeat(64));
    assert!(peer.pulled_with_credentials(&unknown_digest).await.unwrap());

    let unknown = format!("test/image:latest@sha256:{}", "1".repeat(64));
    let missing = target.fetch_from(&unknown, &peer, &|_| {}).await;
    assert!(
        matches!(missing, Err(midge_image::ImageError::NotFound { .. })),
        "{missing:?}"
    );
}
