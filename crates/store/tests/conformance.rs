//! One suite, both engines: every test runs against a SQLite file and a
//! PostgreSQL database (a throwaway server started by the test process),
//! and through the cache API servers put in front of PostgreSQL.

use std::sync::Arc;

use midge_store::{
    Catalog, Certificate, HostLoad, HostRegistration, Identity, IntentKind, IpAssignment,
    MachineReport, NewApp, PERSONAL_ORG, Principal, RegistryCredentialRecord, StoreError,
    TokenScope,
};
use midge_types::{Machine, MachineState};

fn new_app(name: &str, org: &str) -> NewApp {
    NewApp {
        name: name.into(),
        org_slug: org.into(),
        ..NewApp::default()
    }
}

fn host(id: &str, region: &str) -> HostRegistration {
    HostRegistration {
        id: id.into(),
        region: region.into(),
        agent_url: format!("http://{id}:4290"),
        underlay: Some(format!("fd00::{}", id.len())),
        cpus: 4,
        memory_mb: 2048,
        driver: midge_types::cluster::DEFAULT_DRIVER.into(),
        accelerator: None,
    }
}

fn machine(id: &str, state: MachineState) -> Machine {
    serde_json::from_value(serde_json::json!({
        "id": id, "name": "web", "state": state, "region": "ord", "instance_id": "v1",
        "version": "v1", "private_ip": "fdaa::2", "image_ref": {"registry": "", "repository": "",
        "tag": "", "digest": ""}, "created_at": "now", "updated_at": "now", "host_status": "ok",
    }))
    .unwrap()
}

fn report(id: &str, epoch: u64, generation: u64, state: MachineState) -> MachineReport {
    MachineReport {
        id: id.into(),
        app: "web".into(),
        name: "web".into(),
        epoch,
        generation,
        machine: machine(id, state),
        versions: Vec::new(),
        destroyed: false,
    }
}

async fn personal_org_exists_once(catalog: Arc<dyn Catalog>) {
    let personal = catalog
        .get_org(PERSONAL_ORG)
        .await
        .unwrap()
        .expect("personal");
    assert_ne!(personal.network, 0);
    assert_eq!(catalog.list_orgs().await.unwrap(), vec![personal]);
}

async fn orgs_get_unique_networks_and_refuse_duplicates(catalog: Arc<dyn Catalog>) {
    let acme = catalog.create_org("acme", "Acme Inc").await.unwrap();
    let globex = catalog.create_org("globex", "Globex").await.unwrap();
    assert_ne!(acme.network, globex.network);
    assert!(matches!(
        catalog.create_org("acme", "again").await,
        Err(StoreError::OrgExists(_))
    ));
    assert!(matches!(
        catalog.create_org("Bad Slug", "x").await,
        Err(StoreError::Invalid(_))
    ));
    let slugs: Vec<_> = catalog
        .list_orgs()
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.slug)
        .collect();
    assert_eq!(slugs, ["personal", "acme", "globex"]);
}

async fn tokens_authenticate_to_their_scope(catalog: Arc<dyn Catalog>) {
    catalog.create_org("acme", "Acme").await.unwrap();
    let org_token = catalog
        .create_token(&TokenScope::Org("acme".into()), "ci")
        .await
        .unwrap();
    let admin_token = catalog
        .create_token(&TokenScope::Admin, "root")
        .await
        .unwrap();
    assert!(org_token.starts_with("midge_") && org_token.len() > 30);
    assert_eq!(
        catalog.authenticate(&org_token).await.unwrap(),
        Some(Identity {
            principal: Principal::Org("acme".into()),
            token_name: "ci".into()
        })
    );
    assert_eq!(
        catalog
            .authenticate(&admin_token)
            .await
            .unwrap()
            .unwrap()
            .principal,
        Principal::Admin
    );
    assert_eq!(catalog.authenticate("midge_notatoken").await.unwrap(), None);
    assert_eq!(catalog.authenticate("").await.unwrap(), None);
    assert!(matches!(
        catalog
            .create_token(&TokenScope::Org("nope".into()), "x")
            .await,
        Err(StoreError::OrgNotFound(_))
    ));
}

async fn the_admin_token_is_created_once(catalog: Arc<dyn Catalog>) {
    let token = catalog.ensure_admin_token().await.unwrap().expect("first");
    assert_eq!(catalog.ensure_admin_token().await.unwrap(), None);
    assert_eq!(
        catalog
            .authenticate(&token)
            .await
            .unwrap()
            .unwrap()
            .principal,
        Principal::Admin
    );
}

async fn apps_have_global_names(catalog: Arc<dyn Catalog>) {
    catalog.create_org("acme", "Acme").await.unwrap();
    let personal = catalog.get_org(PERSONAL_ORG).await.unwrap().unwrap();
    let app = catalog
        .create_app(&new_app("web", PERSONAL_ORG))
        .await
        .unwrap();
    assert_eq!(app.id.len(), 16);
    assert_eq!(app.network_number, personal.network);
    assert_eq!(app.network, "default");
    assert!(matches!(
        catalog.create_app(&new_app("web", "acme")).await,
        Err(StoreError::NameTaken(_))
    ));
    assert!(matches!(
        catalog.create_app(&new_app("Web_1", "acme")).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        catalog.create_app(&new_app("api", "nope")).await,
        Err(StoreError::OrgNotFound(_))
    ));
    let api = catalog.create_app(&new_app("api", "acme")).await.unwrap();
    assert_ne!(api.network_number, personal.network);
    assert_eq!(catalog.get_app("web").await.unwrap(), Some(app));
    assert_eq!(catalog.list_apps(Some("acme")).await.unwrap(), vec![api]);
    assert_eq!(catalog.list_apps(None).await.unwrap().len(), 2);
    assert!(catalog.delete_app("web").await.unwrap());
    assert!(!catalog.delete_app("web").await.unwrap());
    assert_eq!(catalog.get_app("web").await.unwrap(), None);
    catalog.create_app(&new_app("web", "acme")).await.unwrap();
}

async fn two_creates_of_one_name_make_one_app(catalog: Arc<dyn Catalog>) {
    let attempts = (0..4).map(|_| {
        let catalog = catalog.clone();
        tokio::spawn(async move { catalog.create_app(&new_app("race", PERSONAL_ORG)).await })
    });
    let results = futures::future::join_all(attempts).await;
    let made = results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
    let refused = results
        .iter()
        .filter(|r| matches!(r, Ok(Err(StoreError::NameTaken(_)))))
        .count();
    assert_eq!((made, refused), (1, 3), "{results:?}");
}

async fn named_networks_are_shared_within_the_org(catalog: Arc<dyn Catalog>) {
    let with_net = |name: &str| NewApp {
        network: Some("blue".into()),
        ..new_app(name, PERSONAL_ORG)
    };
    let a = catalog.create_app(&with_net("a")).await.unwrap();
    let b = catalog.create_app(&with_net("b")).await.unwrap();
    let c = catalog
        .create_app(&new_app("c", PERSONAL_ORG))
        .await
        .unwrap();
    assert_eq!(a.network, "blue");
    assert_eq!(a.network_number, b.network_number);
    assert_ne!(a.network_number, c.network_number);
}

async fn an_idempotency_key_returns_the_first_app(catalog: Arc<dyn Catalog>) {
    let keyed = |name: &str| NewApp {
        idempotency_key: Some("k1".into()),
        ..new_app(name, PERSONAL_ORG)
    };
    let first = catalog.create_app(&keyed("once")).await.unwrap();
    assert_eq!(catalog.create_app(&keyed("once")).await.unwrap(), first);
    assert_eq!(catalog.create_app(&keyed("")).await.unwrap(), first);
    assert!(matches!(
        catalog.create_app(&keyed("other")).await,
        Err(StoreError::Invalid(_))
    ));
}

async fn hosts_keep_their_number_and_need_their_token(catalog: Arc<dyn Catalog>) {
    let first = catalog
        .register_host(&host("h-a", "ord"), None)
        .await
        .unwrap();
    let second = catalog
        .register_host(&host("h-b", "ams"), None)
        .await
        .unwrap();
    assert_eq!((first.host.number, second.host.number), (1, 2));
    assert_ne!(first.token, second.token);

    assert_eq!(first.host.driver, "sandbox");
    let mut moved = host("h-a", "ord");
    moved.agent_url = "http://elsewhere:4290".into();
    moved.driver = "microvm".into();
    moved.accelerator = Some("tcg".into());
    let again = catalog
        .register_host(&moved, Some(&first.token))
        .await
        .unwrap();
    assert_eq!(again.host.number, 1, "a host keeps its number");
    assert_eq!(again.host.agent_url, "http://elsewhere:4290");
    let listed = catalog.get_host("h-a").await.unwrap().unwrap();
    assert_eq!(
        (listed.driver.as_str(), listed.accelerator.as_deref()),
        ("microvm", Some("tcg")),
        "a host's driver is what it said at its last join"
    );
    assert!(!listed.cordoned);
    catalog.cordon_host("h-a", true).await.unwrap();
    catalog
        .register_host(&moved, Some(&first.token))
        .await
        .unwrap();
    assert!(
        catalog.get_host("h-a").await.unwrap().unwrap().cordoned,
        "a cordon outlasts the host's next join"
    );
    catalog.cordon_host("h-a", false).await.unwrap();
    assert!(!catalog.get_host("h-a").await.unwrap().unwrap().cordoned);
    assert!(matches!(
        catalog.cordon_host("h-none", true).await,
        Err(StoreError::HostNotFound(_))
    ));
    assert!(matches!(
        catalog.register_host(&moved, Some(&second.token)).await,
        Err(StoreError::Unauthorized(_))
    ));
    assert!(matches!(
        catalog.register_host(&moved, None).await,
        Err(StoreError::Unauthorized(_))
    ));
    assert_eq!(
        catalog
            .authenticate_host("h-a", &first.token)
            .await
            .unwrap()
            .map(|h| h.number),
        Some(1)
    );
    assert_eq!(
        catalog
            .authenticate_host("h-a", &second.token)
            .await
            .unwrap(),
        None
    );

    let load = HostLoad {
        used_millicpus: 2,
        used_memory_mb: 512,
        machines: 3,
    };
    catalog.heartbeat("h-b", &load).await.unwrap();
    assert_eq!(catalog.get_host("h-b").await.unwrap().unwrap().load, load);
    assert!(matches!(
        catalog.heartbeat("h-zz", &load).await,
        Err(StoreError::HostNotFound(_))
    ));
    let ids: Vec<String> = catalog
        .list_hosts()
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.id)
        .collect();
    assert_eq!(ids, ["h-a", "h-b"]);
}

async fn machine_reports_apply_by_generation_and_fence_other_placements(catalog: Arc<dyn Catalog>) {
    catalog
        .register_host(&host("h-a", "ord"), None)
        .await
        .unwrap();
    catalog
        .register_host(&host("h-b", "ord"), None)
        .await
        .unwrap();
    assert!(matches!(
        catalog.place_machine("m1", "web", "web", "h-zz").await,
        Err(StoreError::HostNotFound(_))
    ));
    assert_eq!(
        catalog
            .place_machine("m1", "web", "web", "h-a")
            .await
            .unwrap(),
        1
    );
    let placed = catalog.machine_entry("m1").await.unwrap().unwrap();
    assert_eq!((placed.host_id.as_str(), placed.epoch), ("h-a", 1));
    assert!(placed.machine.is_none());

    let fenced = catalog
        .record_machines("h-a", &[report("m1", 1, 5, MachineState::Started)])
        .await
        .unwrap();
    assert!(fenced.is_empty());
    // An older report arriving late changes nothing.
    catalog
        .record_machines("h-a", &[report("m1", 1, 3, MachineState::Stopped)])
        .await
        .unwrap();
    let entry = catalog.machine_entry("m1").await.unwrap().unwrap();
    assert_eq!(entry.generation, 5);
    assert_eq!(entry.machine.unwrap().state, MachineState::Started);

    // Another host cannot write it, and a new placement fences the old one.
    assert_eq!(
        catalog
            .record_machines("h-b", &[report("m1", 1, 9, MachineState::Stopped)])
            .await
            .unwrap(),
        ["m1"]
    );
    assert_eq!(
        catalog
            .place_machine("m1", "web", "web", "h-b")
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        catalog
            .record_machines("h-a", &[report("m1", 1, 9, MachineState::Started)])
            .await
            .unwrap(),
        ["m1"]
    );
    catalog
        .record_machines("h-b", &[report("m1", 2, 9, MachineState::Started)])
        .await
        .unwrap();
    assert_eq!(
        catalog.machine_entry("m1").await.unwrap().unwrap().host_id,
        "h-b"
    );

    // A report of a machine the catalog never placed is taken as it is.
    catalog
        .record_machines("h-a", &[report("m2", 1, 1, MachineState::Created)])
        .await
        .unwrap();
    assert_eq!(
        catalog.app_machines_per_host("web").await.unwrap(),
        [("h-a".to_string(), 1), ("h-b".to_string(), 1)],
        "placement spreads by these"
    );
    assert!(
        catalog
            .app_machines_per_host("other")
            .await
            .unwrap()
            .is_empty()
    );
    let found = catalog
        .find_machine_entry("web", "m2")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.host_id, "h-a");
    let by_name = catalog
        .find_machine_entry("web", "web")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(by_name.id, "m1", "the first machine of that name");
    let listed: Vec<String> = catalog
        .list_machine_entries("web")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(listed, ["m1", "m2"]);
    let on_a: Vec<String> = catalog
        .host_machine_entries("h-a")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(on_a, ["m2"]);
}

async fn the_routing_revision_counts_applied_reports_and_lists_live_machines(
    catalog: Arc<dyn Catalog>,
) {
    catalog
        .register_host(&host("h-a", "ord"), None)
        .await
        .unwrap();
    assert_eq!(catalog.routing_revision().await.unwrap(), 0);
    catalog
        .place_machine("m1", "web", "web", "h-a")
        .await
        .unwrap();
    assert!(
        catalog.live_machine_entries().await.unwrap().is_empty(),
        "a placement nobody reported yet is not routed"
    );
    catalog
        .record_machines(
            "h-a",
            &[
                report("m1", 1, 1, MachineState::Started),
                report("m2", 1, 1, MachineState::Stopped),
            ],
        )
        .await
        .unwrap();
    let first = catalog.routing_revision().await.unwrap();
    assert!(first > 0);
    // A report that changes nothing (an old generation) is no change.
    catalog
        .record_machines("h-a", &[report("m1", 1, 1, MachineState::Stopped)])
        .await
        .unwrap();
    assert_eq!(catalog.routing_revision().await.unwrap(), first);
    let mut gone = report("m2", 1, 2, MachineState::Destroyed);
    gone.destroyed = true;
    catalog.record_machines("h-a", &[gone]).await.unwrap();
    assert!(catalog.routing_revision().await.unwrap() > first);
    let live: Vec<String> = catalog
        .live_machine_entries()
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(live, ["m1"], "destroyed machines are not routed");

    // App addresses are served by the hosts' proxies too.
    let before = catalog.routing_revision().await.unwrap();
    let address = IpAssignment {
        ip: "fdaa:0:7:0:0:1:0:1".into(),
        app: "web".into(),
        kind: "private_v6".into(),
        region: "ord".into(),
        service_name: String::new(),
        shared: false,
        created_at: 1,
        machine_id: None,
    };
    catalog.assign_ip(&address).await.unwrap();
    let assigned = catalog.routing_revision().await.unwrap();
    assert!(assigned > before, "an assignment is a change of routing");
    assert!(matches!(
        catalog.assign_ip(&address).await,
        Err(StoreError::IpTaken(_))
    ));
    assert_eq!(
        catalog.routing_revision().await.unwrap(),
        assigned,
        "a refused assignment changes nothing"
    );
    assert!(catalog.release_ip("web", &address.ip).await.unwrap());
    let released = catalog.routing_revision().await.unwrap();
    assert!(released > assigned, "a release is a change of routing");
    assert!(!catalog.release_ip("web", &address.ip).await.unwrap());
    assert_eq!(catalog.routing_revision().await.unwrap(), released);
}

async fn intents_wait_for_their_host(catalog: Arc<dyn Catalog>) {
    let kind = IntentKind::Destroy { force: true };
    let first = catalog.add_intent("h-a", "m1", "web", &kind).await.unwrap();
    let second = catalog.add_intent("h-a", "m2", "web", &kind).await.unwrap();
    catalog.add_intent("h-b", "m3", "web", &kind).await.unwrap();
    let pending = catalog.pending_intents("h-a").await.unwrap();
    assert_eq!(pending, vec![first.clone(), second.clone()]);
    catalog.complete_intent(first.id).await.unwrap();
    assert_eq!(catalog.pending_intents("h-a").await.unwrap(), vec![second]);
}

async fn the_cluster_secret_is_made_once_and_placements_can_be_taken_back(
    catalog: Arc<dyn Catalog>,
) {
    let secret = catalog.cluster_secret().await.unwrap();
    assert!(secret.len() > 30);
    assert_eq!(catalog.cluster_secret().await.unwrap(), secret);

    catalog
        .register_host(&host("h-a", "ord"), None)
        .await
        .unwrap();
    catalog
        .place_machine("m1", "web", "web", "h-a")
        .await
        .unwrap();
    catalog
        .place_machine("m2", "web", "web", "h-a")
        .await
        .unwrap();
    catalog
        .record_machines("h-a", &[report("m2", 1, 1, MachineState::Started)])
        .await
        .unwrap();
    catalog.remove_placement("m1").await.unwrap();
    catalog.remove_placement("m2").await.unwrap();
    assert!(catalog.machine_entry("m1").await.unwrap().is_none());
    assert!(
        catalog.machine_entry("m2").await.unwrap().is_some(),
        "a machine its host reported stays"
    );
}

fn volume(id: &str, size_gb: u64) -> midge_types::volume::Volume {
    serde_json::from_value(serde_json::json!({
        "id": id, "name": "data", "state": "created", "size_gb": size_gb,
        "region": "ord", "zone": "0001", "encrypted": false,
        "attached_machine_id": null, "attached_alloc_id": null,
        "created_at": "2026-12-01T00:00:00Z", "fstype": "", "block_size": 0,
        "blocks": 0, "blocks_free": 0, "blocks_avail": 0, "bytes_total": 0,
        "bytes_used": 0, "snapshot_retention": 5, "auto_backup_enabled": true,
        "host_status": "ok"
    }))
    .unwrap()
}

async fn volumes_are_indexed_by_host_and_only_their_host_writes_them(catalog: Arc<dyn Catalog>) {
    catalog
        .register_host(&host("h-a", "ord"), None)
        .await
        .unwrap();
    catalog
        .register_host(&host("h-b", "ord"), None)
        .await
        .unwrap();
    let refused = catalog.place_volume("vol_x", "web", "data", "h-none").await;
    assert!(
        matches!(refused, Err(StoreError::HostNotFound(_))),
        "{refused:?}"
    );
    catalog
        .place_volume("vol_1", "web", "data", "h-a")
        .await
        .unwrap();
    catalog
        .place_volume("vol_2", "web", "data", "h-b")
        .await
        .unwrap();
    catalog
        .place_volume("vol_3", "api", "data", "h-b")
        .await
        .unwrap();
    let placed = catalog
        .volume_entry("vol_1")
        .await
        .unwrap()
        .expect("placed");
    assert_eq!((placed.host_id.as_str(), placed.volume), ("h-a", None));

    catalog
        .record_volume("h-a", &volume("vol_1", 3))
        .await
        .unwrap();
    let other = catalog.record_volume("h-b", &volume("vol_1", 9)).await;
    assert!(
        matches!(other, Err(StoreError::HostNotFound(_))),
        "{other:?}"
    );
    let recorded = catalog
        .volume_entry("vol_1")
        .await
        .unwrap()
        .expect("recorded");
    assert_eq!(recorded.volume, Some(volume("vol_1", 3)));

    let listed: Vec<String> = catalog
        .list_volume_entries("web")
        .await
        .unwrap()
        .into_iter()
        .map(|entry| entry.id)
        .collect();
    assert_eq!(listed, ["vol_1", "vol_2"], "the app's, oldest first");
    catalog.remove_volume("vol_2").await.unwrap();
    assert!(catalog.volume_entry("vol_2").await.unwrap().is_none());
}

fn assignment(app: &str, ip: &str, shared: bool) -> IpAssignment {
    IpAssignment {
        ip: ip.into(),
        app: app.into(),
        kind: if shared { "shared_v4" } else { "v4" }.into(),
        region: "local".into(),
        service_name: String::new(),
        shared,
        created_at: 1,
        machine_id: None,
    }
}

async fn egress_addresses_keep_their_machine_and_are_never_shared(catalog: Arc<dyn Catalog>) {
    let run = midge_testkit::unique_prefix();
    let (web, api) = (format!("web-{run}"), format!("api-{run}"));
    let n = rand::random::<u8>();
    let egress = |app: &str, ip: &str, machine: Option<&str>| IpAssignment {
        kind: "egress_v4".into(),
        region: "ams".into(),
        machine_id: machine.map(str::to_string),
        ..assignment(app, ip, false)
    };
    let dedicated = format!("198.19.{n}.1");
    let of_app = format!("2001:db8:{n:x}::2");
    catalog
        .assign_ip(&egress(&web, &dedicated, Some("m1")))
        .await
        .unwrap();
    catalog
        .assign_ip(&egress(&web, &of_app, None))
        .await
        .unwrap();
    let taken = catalog
        .assign_ip(&egress(&api, &dedicated, Some("m2")))
        .await;
    assert!(matches!(taken, Err(StoreError::IpTaken(_))), "{taken:?}");
    let listed = catalog.list_ips(&web).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(IpAssignment::is_egress));
    let machine_of = |ip: &str| {
        listed
            .iter()
            .find(|a| a.ip == ip)
            .map(|a| a.machine_id.clone())
    };
    assert_eq!(machine_of(&dedicated), Some(Some("m1".to_string())));
    assert_eq!(machine_of(&of_app), Some(None));
    assert!(catalog.release_ip(&web, &dedicated).await.unwrap());
    catalog
        .assign_ip(&egress(&api, &dedicated, Some("m2")))
        .await
        .unwrap();
}

async fn addresses_are_assigned_once_unless_shared(catalog: Arc<dyn Catalog>) {
    // Unique per run: engines may share one database between tests.
    let run = midge_testkit::unique_prefix();
    let (web, api) = (format!("web-{run}"), format!("api-{run}"));
    let n = rand::random::<u8>();
    let ip = format!("127.91.{n}.1");
    catalog
        .assign_ip(&assignment(&web, &ip, false))
        .await
        .unwrap();
    let taken = catalog.assign_ip(&assignment(&api, &ip, false)).await;
    assert!(matches!(taken, Err(StoreError::IpTaken(_))), "{taken:?}");
    let shared = format!("127.91.{n}.2");
    catalog
        .assign_ip(&assignment(&web, &shared, true))
        .await
        .unwrap();
    catalog
        .assign_ip(&assignment(&api, &shared, true))
        .await
        .unwrap();
    let listed: Vec<String> = catalog
        .list_ips(&web)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.ip)
        .collect();
    assert_eq!(listed, [ip.clone(), shared.clone()]);
    let all = catalog.all_ips().await.unwrap();
    assert!(
        all.iter()
            .any(|a| a.app == api && a.ip == shared && a.shared)
    );
    assert!(!catalog.release_ip(&api, &ip).await.unwrap(), "not api's");
    assert!(catalog.release_ip(&web, &ip).await.unwrap());
    catalog
        .assign_ip(&assignment(&api, &ip, false))
        .await
        .unwrap();
    assert_eq!(catalog.list_ips(&api).await.unwrap().len(), 2);
}

async fn certificates_belong_to_one_app_per_host_name(catalog: Arc<dyn Catalog>) {
    let run = midge_testkit::unique_prefix();
    let (web, api) = (format!("web-{run}"), format!("api-{run}"));
    let cert = |app: &str, hostname: &str, chain: &str| Certificate {
        hostname: hostname.into(),
        app: app.into(),
        fullchain: chain.into(),
        private_key: "key".into(),
        created_at: 1,
        updated_at: 2,
    };
    let host = format!("{run}.example.com");
    catalog
        .put_certificate(&cert(&web, &host, "one"))
        .await
        .unwrap();
    catalog
        .put_certificate(&cert(&web, &host, "two"))
        .await
        .unwrap();
    let taken = catalog.put_certificate(&cert(&api, &host, "x")).await;
    assert!(matches!(taken, Err(StoreError::NameTaken(_))), "{taken:?}");
    let listed = catalog.list_certificates(Some(&web)).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].fullchain, "two", "replaced");
    assert!(
        catalog
            .list_certificates(Some(&api))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        catalog
            .list_certificates(None)
            .await
            .unwrap()
            .iter()
            .any(|c| c.hostname == host)
    );
    assert!(!catalog.delete_certificate(&api, &host).await.unwrap());
    assert!(catalog.delete_certificate(&web, &host).await.unwrap());
    catalog
        .put_certificate(&cert(&api, &host, "x"))
        .await
        .unwrap();
}

fn registry_credential(org: &str, registry: &str, sealed: &[u8]) -> RegistryCredentialRecord {
    RegistryCredentialRecord {
        org_slug: org.into(),
        registry: registry.into(),
        username: Some(format!("user-{org}")),
        sealed: sealed.to_vec(),
        updated_at: 1_700_000_000_000,
    }
}

async fn registry_credentials_are_kept_per_org_and_registry(catalog: Arc<dyn Catalog>) {
    catalog.create_org("acme", "Acme").await.unwrap();
    catalog.create_org("globex", "Globex").await.unwrap();
    let registry = "127.0.0.1:5000";
    // Every byte value survives, as a sealed secret has any.
    let sealed: Vec<u8> = (0..=255).collect();
    catalog
        .put_registry_credential(&registry_credential("acme", registry, &sealed))
        .await
        .unwrap();
    catalog
        .put_registry_credential(&registry_credential("acme", "ghcr.io", b"other"))
        .await
        .unwrap();
    let replaced = RegistryCredentialRecord {
        username: None,
        updated_at: 1_700_000_000_001,
        ..registry_credential("acme", registry, b"second")
    };
    catalog.put_registry_credential(&replaced).await.unwrap();
    let listed = catalog.list_registry_credentials("acme").await.unwrap();
    assert_eq!(
        listed,
        // By registry, bytewise.
        vec![
            replaced.clone(),
            registry_credential("acme", "ghcr.io", b"other")
        ]
    );
    assert!(
        catalog
            .list_registry_credentials("globex")
            .await
            .unwrap()
            .is_empty()
    );
    // An org that does not exist cannot hold any.
    assert!(
        catalog
            .put_registry_credential(&registry_credential("nobody", registry, &sealed))
            .await
            .is_err()
    );
    catalog
        .put_registry_credential(&registry_credential("globex", registry, &sealed))
        .await
        .unwrap();
    assert!(
        !catalog
            .delete_registry_credential("acme", "quay.io")
            .await
            .unwrap()
    );
    assert!(
        catalog
            .delete_registry_credential("acme", registry)
            .await
            .unwrap()
    );
    assert_eq!(
        catalog.list_registry_credentials("acme").await.unwrap(),
        vec![registry_credential("acme", "ghcr.io", b"other")]
    );
    assert_eq!(
        catalog.list_registry_credentials("globex").await.unwrap(),
        vec![registry_credential("globex", registry, &sealed)]
    );
}

async fn sqlite() -> (tempfile::TempDir, Arc<dyn Catalog>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.db");
    let catalog = midge_store::open(path.to_str().unwrap()).await.unwrap();
    (dir, catalog)
}

async fn postgres() -> Arc<dyn Catalog> {
    let url = midge_testkit::test_database()
        .await
        .expect("a test database");
    midge_store::open(&url)
        .await
        .expect("opening the PostgreSQL catalog")
}

macro_rules! on_both_engines {
    ($($test:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let (_dir, catalog) = super::sqlite().await;
                    super::$test(catalog).await;
                }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::postgres().await).await;
                }
            )*
        }
        // What an API server reads through: the cache must not change a
        // single answer to what was written through it.
        mod on_postgres_cached {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let cached = midge_store::CachedCatalog::new(
                        super::postgres().await,
                        std::time::Duration::from_secs(600),
                    );
                    super::$test(std::sync::Arc::new(cached)).await;
                }
            )*
        }
    };
}

async fn a_move_switches_machine_and_volumes_only_from_the_placement_seen(
    catalog: Arc<dyn Catalog>,
) {
    catalog
        .register_host(&host("h-a", "ord"), None)
        .await
        .unwrap();
    catalog
        .register_host(&host("h-b", "ord"), None)
        .await
        .unwrap();
    let epoch = catalog
        .place_machine("m-move", "web", "web", "h-a")
        .await
        .unwrap();
    catalog
        .record_machines("h-a", &[report("m-move", epoch, 3, MachineState::Started)])
        .await
        .unwrap();
    catalog
        .place_volume("vol_m", "web", "data", "h-a")
        .await
        .unwrap();
    let revision = catalog.routing_revision().await.unwrap();
    let volumes = ["vol_m".to_string()];

    let stale = catalog
        .move_machine("m-move", "h-a", epoch + 5, "h-b", &volumes)
        .await
        .unwrap();
    assert_eq!(stale, None, "not as the mover saw it: nothing moves");
    let elsewhere = catalog
        .move_machine("m-move", "h-b", epoch, "h-a", &volumes)
        .await
        .unwrap();
    assert_eq!(elsewhere, None);
    assert_eq!(
        catalog
            .machine_entry("m-move")
            .await
            .unwrap()
            .unwrap()
            .host_id,
        "h-a"
    );

    let moved = catalog
        .move_machine("m-move", "h-a", epoch, "h-b", &volumes)
        .await
        .unwrap();
    assert_eq!(moved, Some(epoch + 1));
    let entry = catalog.machine_entry("m-move").await.unwrap().unwrap();
    assert_eq!((entry.host_id.as_str(), entry.epoch), ("h-b", epoch + 1));
    assert_eq!(
        catalog
            .volume_entry("vol_m")
            .await
            .unwrap()
            .unwrap()
            .host_id,
        "h-b",
        "its volume moved with it"
    );
    assert!(catalog.routing_revision().await.unwrap() > revision);
    // The old host's reports of it are refused (it must not run it).
    let fenced = catalog
        .record_machines("h-a", &[report("m-move", epoch, 9, MachineState::Started)])
        .await
        .unwrap();
    assert_eq!(fenced, ["m-move"]);
    // Twice from the same view: the second finds it moved on.
    assert_eq!(
        catalog
            .move_machine("m-move", "h-a", epoch, "h-b", &volumes)
            .await
            .unwrap(),
        None
    );
}

on_both_engines!(
    personal_org_exists_once,
    orgs_get_unique_networks_and_refuse_duplicates,
    tokens_authenticate_to_their_scope,
    the_admin_token_is_created_once,
    apps_have_global_names,
    two_creates_of_one_name_make_one_app,
    named_networks_are_shared_within_the_org,
    an_idempotency_key_returns_the_first_app,
    hosts_keep_their_number_and_need_their_token,
    machine_reports_apply_by_generation_and_fence_other_placements,
    intents_wait_for_their_host,
    the_routing_revision_counts_applied_reports_and_lists_live_machines,
    the_cluster_secret_is_made_once_and_placements_can_be_taken_back,
    volumes_are_indexed_by_host_and_only_their_host_writes_them,
    registry_credentials_are_kept_per_org_and_registry,
    addresses_are_assigned_once_unless_shared,
    egress_addresses_keep_their_machine_and_are_never_shared,
    certificates_belong_to_one_app_per_host_name,
    a_move_switches_machine_and_volumes_only_from_the_placement_seen,
);
