//! Finding a machine for one unit of load: balance over the machines in
//! rotation; when none is below its soft limit, join or begin a start of a
//! stopped machine; otherwise take one between its limits; when every
//! machine is at its hard limit, queue (bounded) until room appears.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use midge_types::MachineState;
use tokio::sync::watch;

use crate::ProxyConfig;
use crate::balance::{self, Candidate, Tier};
use crate::load::{LoadGuard, Loads};
use crate::routes::{Backend, RoutingTable, ServiceKey, ServiceRoutes};
use crate::starts::Starts;

/// A machine chosen for one unit of load, held until the guard drops.
#[derive(Debug)]
pub struct Lease {
    pub machine: String,
    pub addr: SocketAddr,
    /// How long the request waited for the machine to start, if it did.
    pub cold_start: Option<Duration>,
    pub guard: LoadGuard,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DispatchError {
    #[error("no app {0} is served here")]
    UnknownApp(String),
    #[error("app {0} has no service for this port")]
    NoService(String),
    #[error("app {0} has no started machine and none it may start")]
    NoMachines(String),
    #[error("every machine of app {0} is at its hard limit and {1} requests already wait")]
    QueueFull(String, usize),
    #[error("no machine of app {0} had room within {1:?}")]
    Timeout(String, Duration),
    #[error("starting a machine of app {0} failed: {1}")]
    StartFailed(String, String),
}

#[derive(Debug)]
pub struct Dispatcher {
    pub table: watch::Receiver<Arc<RoutingTable>>,
    pub loads: Arc<Loads>,
    pub starts: Arc<Starts>,
    pub config: Arc<ProxyConfig>,
    queued: Mutex<HashMap<String, usize>>,
}

/// A place in an app's queue, given back on drop.
struct QueueSlot<'a> {
    dispatcher: &'a Dispatcher,
    app: String,
}

impl Drop for QueueSlot<'_> {
    fn drop(&mut self) {
        let mut queued = self.dispatcher.lock_queued();
        if let Some(n) = queued.get_mut(&self.app) {
            *n -= 1;
            if *n == 0 {
                queued.remove(&self.app);
            }
        }
    }
}

impl Dispatcher {
    pub fn new(
        table: watch::Receiver<Arc<RoutingTable>>,
        loads: Arc<Loads>,
        starts: Arc<Starts>,
        config: Arc<ProxyConfig>,
    ) -> Dispatcher {
        Dispatcher {
            table,
            loads,
            starts,
            config,
            queued: Mutex::new(HashMap::new()),
        }
    }

    fn lock_queued(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.queued.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn enter_queue(&self, app: &str) -> Result<QueueSlot<'_>, DispatchError> {
        let mut queued = self.lock_queued();
        let n = queued.entry(app.to_string()).or_default();
        if *n >= self.config.queue_limit {
            return Err(DispatchError::QueueFull(app.to_string(), *n));
        }
        *n += 1;
        Ok(QueueSlot {
            dispatcher: self,
            app: app.to_string(),
        })
    }

    fn lease(&self, backend: &Backend, cold_start: Option<Duration>) -> Lease {
        Lease {
            machine: backend.id.clone(),
            addr: backend.addr,
            cold_start,
            guard: self.loads.hold(&backend.id),
        }
    }

    /// A machine of `app`'s service for one unit of load, never one of
    /// `exclude` (machines a request could not be sent to).
    pub async fn acquire(
        &self,
        app: &str,
        key: &ServiceKey,
        exclude: &[String],
    ) -> Result<Lease, DispatchError> {
        let deadline = Instant::now() + self.config.hold_timeout;
        let mut failed_starts: Vec<String> = Vec::new();
        let mut last_start_error = None;
        let mut _slot = None;
        // Registered only once a request has to wait, then before each look.
        let mut waiting = false;
        loop {
            let changed = self.loads.changed();
            tokio::pin!(changed);
            if waiting {
                changed.as_mut().enable();
            }
            let table = self.table.borrow().clone();
            let service = table
                .app(app)
                .ok_or_else(|| DispatchError::UnknownApp(app.to_string()))?
                .service(key)
                .ok_or_else(|| DispatchError::NoService(app.to_string()))?;
            let running: Vec<&Backend> = service
                .backends
                .iter()
                .filter(|b| b.in_rotation() && !exclude.contains(&b.id))
                .collect();
            let loads: Vec<_> = running.iter().map(|b| self.loads.of(&b.id)).collect();
            let candidates: Vec<Candidate> = running
                .iter()
                .zip(&loads)
                .map(|(b, load)| Candidate {
                    load: load.active(),
                    soft_limit: b.policy.soft_limit,
                    hard_limit: b.policy.hard_limit,
                    same_region: b.region == self.config.region,
                })
                .collect();
            // Draining machines take nothing new.
            let candidates: Vec<Candidate> = candidates
                .into_iter()
                .zip(&loads)
                .map(|(c, load)| {
                    if load.is_draining() {
                        Candidate {
                            hard_limit: Some(0),
                            ..c
                        }
                    } else {
                        c
                    }
                })
                .collect();
            let picked = balance::pick(&candidates, &mut rand::rng());
            if let Some((i, Tier::BelowSoft)) = picked {
                return Ok(self.lease(running[i], None));
            }
            let flight = self.starts.join(app, key).or_else(|| {
                self.startable(service, exclude, &failed_starts)
                    .map(|backend| self.starts.start(app, key, backend))
            });
            if let Some(flight) = flight {
                match flight.wait().await {
                    Ok(()) => {
                        let lease = self.lease(&flight.backend, Some(flight.began.elapsed()));
                        return Ok(lease);
                    }
                    Err(err) => {
                        failed_starts.push(flight.backend.id.clone());
                        last_start_error = Some(err);
                        continue;
                    }
                }
            }
            if let Some((i, Tier::BetweenSoftAndHard)) = picked {
                return Ok(self.lease(running[i], None));
            }
            // Machines that may take traffic soon: starting, or started
            // and waiting for their checks to pass.
            let coming = service.backends.iter().any(|b| {
                !exclude.contains(&b.id)
                    && (matches!(
                        b.state,
                        MachineState::Starting
                            | MachineState::Restarting
                            | MachineState::Replacing
                            | MachineState::Updating
                    ) || (b.state == MachineState::Started && !b.cordoned && !b.healthy))
            });
            if running.is_empty() && !coming {
                return Err(match last_start_error {
                    Some(err) => DispatchError::StartFailed(app.to_string(), err),
                    None => DispatchError::NoMachines(app.to_string()),
                });
            }
            if _slot.is_none() {
                _slot = Some(self.enter_queue(app)?);
            }
            if !waiting {
                // Look again with the wakeup registered, so none is missed.
                waiting = true;
                continue;
            }
            if tokio::time::timeout_at(deadline.into(), changed)
                .await
                .is_err()
            {
                return Err(DispatchError::Timeout(
                    app.to_string(),
                    self.config.hold_timeout,
                ));
            }
        }
    }

    /// The nearest stopped machine the service may start for traffic.
    fn startable<'a>(
        &self,
        service: &'a ServiceRoutes,
        exclude: &[String],
        failed: &[String],
    ) -> Option<&'a Backend> {
        let mut startable: Vec<&Backend> = service
            .backends
            .iter()
            .filter(|b| {
                b.can_autostart()
                    && !exclude.contains(&b.id)
                    && !failed.contains(&b.id)
                    && !self.loads.of(&b.id).is_draining()
                    && !self.starts.in_flight(&b.id)
            })
            .collect();
        let nearest = startable.iter().any(|b| b.region == self.config.region);
        if nearest {
            startable.retain(|b| b.region == self.config.region);
        }
        let n = startable.len();
        (n > 0).then(|| startable[rand::random_range(0..n)])
    }
}

/// Longest pause before every machine that refused a connection is tried again.
const REFUSED_PAUSE_MAX: Duration = Duration::from_millis(100);

/// The attempts of one request (or connection) to reach a machine: a
/// machine that refused it is not tried again until every machine has
/// refused; then all are tried again after a pause (they may be coming up),
/// until the hold timeout.
#[derive(Debug)]
pub struct Attempts {
    deadline: Instant,
    refused: Vec<String>,
    pause: Duration,
}

/// Why attempts ended without a machine.
#[derive(Debug)]
pub enum AttemptError {
    Dispatch(DispatchError),
    /// Every machine refused until the hold timeout.
    Refused,
}

impl Attempts {
    pub fn new(hold_timeout: Duration) -> Attempts {
        Attempts {
            deadline: Instant::now() + hold_timeout,
            refused: Vec::new(),
            pause: Duration::from_millis(1),
        }
    }

    /// A machine for the next attempt.
    pub async fn lease(
        &mut self,
        dispatcher: &Dispatcher,
        app: &str,
        key: &ServiceKey,
    ) -> Result<Lease, AttemptError> {
        loop {
            match dispatcher.acquire(app, key, &self.refused).await {
                Ok(lease) => return Ok(lease),
                Err(DispatchError::NoMachines(_)) if !self.refused.is_empty() => {
                    if Instant::now() >= self.deadline {
                        return Err(AttemptError::Refused);
                    }
                    tokio::time::sleep(self.pause).await;
                    self.pause = (self.pause * 2).min(REFUSED_PAUSE_MAX);
                    self.refused.clear();
                }
                Err(err) => return Err(AttemptError::Dispatch(err)),
            }
        }
    }

    /// The machine did not take the attempt.
    pub fn refused(&mut self, machine: &str) {
        self.refused.push(machine.to_string());
    }
}
