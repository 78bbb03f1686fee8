//! Starting machines for traffic: one start per machine however many
//! requests wait for it, each start followed by a readiness probe (a
//! connect to the service's port, retried at millisecond intervals) whose
//! connection is handed to the machine's pool for the first request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use midge_agent_api::HostAgent;
use midge_types::agent::{MachineKey, StartMachine};

use tokio::sync::watch;

use crate::Agents;
use crate::routes::{Backend, RoutingTable, ServiceKey};
use crate::upstream::{Upstreams, dial};

/// First and longest pause between connect attempts while a machine comes up.
const FIRST_PROBE_PAUSE: Duration = Duration::from_micros(500);
const LONGEST_PROBE_PAUSE: Duration = Duration::from_millis(8);
/// One probe connect may take this long before the next is tried.
const PROBE_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Longest a finished start waits for the routing table to show it.
const ROTATION_GRACE: Duration = Duration::from_secs(2);

pub type StartResult = Result<(), String>;

/// A start under way, and how many requests wait for it.
#[derive(Debug)]
pub struct Flight {
    pub backend: Backend,
    pub began: Instant,
    joined: AtomicU32,
    done: Shared<BoxFuture<'static, StartResult>>,
}

impl Flight {
    pub async fn wait(&self) -> StartResult {
        self.done.clone().await
    }
}

pub struct Starts {
    agents: Arc<dyn Agents>,
    upstreams: Arc<Upstreams>,
    timeout: Duration,
    table: watch::Receiver<Arc<RoutingTable>>,
    flights: Arc<Mutex<Flights>>,
}

/// Starts under way by machine id: (app, service, flight).
type Flights = HashMap<String, (String, ServiceKey, Arc<Flight>)>;

impl std::fmt::Debug for Starts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Starts")
            .field("in_flight", &self.lock().len())
            .finish_non_exhaustive()
    }
}

impl Starts {
    pub fn new(
        agents: Arc<dyn Agents>,
        upstreams: Arc<Upstreams>,
        table: watch::Receiver<Arc<RoutingTable>>,
        timeout: Duration,
    ) -> Starts {
        Starts {
            agents,
            upstreams,
            timeout,
            table,
            flights: Arc::default(),
        }
    }

    /// Whether the machine is being started.
    pub fn in_flight(&self, machine: &str) -> bool {
        self.lock().contains_key(machine)
    }

    /// Joins a start of this service that still has room below its soft
    /// limit for one more request.
    pub fn join(&self, app: &str, key: &ServiceKey) -> Option<Arc<Flight>> {
        let flights = self.lock();
        flights
            .values()
            .filter(|(a, k, _)| a == app && k == key)
            .map(|(_, _, flight)| flight)
            .find(|flight| {
                flight
                    .joined
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                        (n < flight.backend.policy.soft_limit).then_some(n + 1)
                    })
                    .is_ok()
            })
            .cloned()
    }

    /// Starts the machine for `app` (or joins its start under way). The
    /// start runs to its end even if every waiter goes away.
    pub fn start(&self, app: &str, key: &ServiceKey, backend: &Backend) -> Arc<Flight> {
        let mut flights = self.lock();
        if let Some((_, _, flight)) = flights.get(&backend.id) {
            flight.joined.fetch_add(1, Ordering::AcqRel);
            return flight.clone();
        }
        let pool = self.upstreams.pool(&backend.id, backend.addr);
        let ready = if backend.checked {
            Readiness::ChecksPass(self.table.clone(), app.to_string())
        } else {
            Readiness::Accepts(pool)
        };
        let done = start_and_probe(
            self.agents.agent(backend.agent_url.as_deref()),
            MachineKey::new(app, &backend.id),
            ready,
            self.timeout,
        )
        .boxed()
        .shared();
        let flight = Arc::new(Flight {
            backend: backend.clone(),
            began: Instant::now(),
            joined: AtomicU32::new(1),
            done: done.clone(),
        });
        flights.insert(
            backend.id.clone(),
            (app.to_string(), key.clone(), flight.clone()),
        );
        drop(flights);
        let flights = self.flights.clone();
        let machine = backend.id.clone();
        let mut table = self.table.clone();
        let app = app.to_string();
        tokio::spawn(async move {
            match done.await {
                // Requests keep joining this start until the routing table
                // shows the machine in rotation, so none starts another.
                Ok(()) => {
                    let shown = table.wait_for(|t| is_in_rotation(t, &app, &machine));
                    let _ = tokio::time::timeout(ROTATION_GRACE, shown).await;
                }
                Err(err) => tracing::warn!(%machine, "starting for traffic failed: {err}"),
            }
            flights
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&machine);
        });
        flight
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Flights> {
        self.flights.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn is_in_rotation(table: &RoutingTable, app: &str, machine: &str) -> bool {
    table.app(app).is_some_and(|routes| {
        routes
            .services
            .iter()
            .flat_map(|s| &s.backends)
            .any(|b| b.id == machine && b.in_rotation())
    })
}

/// When a started machine is ready for traffic.
enum Readiness {
    /// Its service's checks pass (the host runs them as it starts).
    ChecksPass(watch::Receiver<Arc<RoutingTable>>, String),
    /// Its service port accepts a connection.
    Accepts(Arc<crate::upstream::MachinePool>),
}

/// Starts the machine, then waits until it is ready.
async fn start_and_probe(
    agent: Arc<dyn HostAgent>,
    machine: MachineKey,
    ready: Readiness,
    timeout: Duration,
) -> StartResult {
    let deadline = Instant::now() + timeout;
    let id = machine.id.clone();
    agent
        .start_machine(StartMachine {
            machine,
            nonce: None,
        })
        .await
        .map_err(|err| err.to_string())?;
    let pool = match ready {
        Readiness::Accepts(pool) => pool,
        Readiness::ChecksPass(mut table, app) => {
            let passing = table.wait_for(|t| is_in_rotation(t, &app, &id));
            return match tokio::time::timeout_at(deadline.into(), passing).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(_)) => Err("the proxy is shutting down".into()),
                Err(_) => Err(format!("its checks did not pass within {timeout:?}")),
            };
        }
    };
    let mut pause = FIRST_PROBE_PAUSE;
    loop {
        match dial(pool.addr(), PROBE_CONNECT_TIMEOUT).await {
            Ok(stream) => {
                pool.give(stream);
                return Ok(());
            }
            Err(err) if Instant::now() + pause >= deadline => {
                return Err(format!(
                    "{} did not accept a connection within {timeout:?}: {err}",
                    pool.addr()
                ));
            }
            Err(_) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(LONGEST_PROBE_PAUSE);
            }
        }
    }
}
