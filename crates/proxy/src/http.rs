//! The shared HTTP listener: HTTP/1.1 and h2 from clients, the app named by
//! the host (`<app>.<domain>`), HTTP/1.1 over a pooled connection to the
//! machine, Fly's headers both ways, protocol upgrades (WebSockets) passed
//! through, and a request that was never sent retried on another machine.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::Shared;
use crate::dispatch::{AttemptError, Attempts, DispatchError, Lease};
use crate::headers::{self, Forwarded};
use crate::listeners::FixedRoute;
use crate::load::LoadGuard;
use crate::load::MachineLoad;
use crate::routes::ServiceKey;
use crate::upstream::{Reuse, SendError};

pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// Accepts connections until the listener fails or the task is dropped.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!("proxy accept: {err}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let local_port = stream.local_addr().map(|a| a.port()).unwrap_or(0);
        tokio::spawn(serve_connection(
            shared.clone(),
            stream,
            peer,
            local_port,
            None,
            "http",
        ));
    }
}

/// Serves one client connection: apps by host name, or the one app of a
/// dedicated address.
pub async fn serve_connection<S>(
    shared: Arc<Shared>,
    stream: S,
    peer: SocketAddr,
    local_port: u16,
    route: Option<Arc<FixedRoute>>,
    proto: &'static str,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        let route = route.clone();
        let from = Client {
            peer,
            local_port,
            proto,
        };
        async move { Ok::<_, Infallible>(handle(&shared, from, route.as_deref(), req).await) }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().preserve_header_case(true);
    if let Err(err) = builder
        .serve_connection_with_upgrades(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(%peer, "proxy connection: {err}");
    }
}

fn text(status: StatusCode, request_id: &str, message: &str) -> Response<ProxyBody> {
    let mut response = Response::new(
        Full::new(Bytes::from(format!("midge proxy: {message}\n")))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Ok(id) = HeaderValue::from_str(request_id) {
        headers.insert("fly-request-id", id);
    }
    response
}

/// The host a request names, without its port, lower-cased.
fn host_of(req: &Request<Incoming>) -> Option<String> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_string()))?;
    let authority: http::uri::Authority = host.parse().ok()?;
    Some(authority.host().trim_end_matches('.').to_ascii_lowercase())
}

/// The app a host name names: `<app>.<domain>`.
pub fn app_of_host<'a>(host: &'a str, domain: &str) -> Option<&'a str> {
    let app = host.strip_suffix(domain)?.strip_suffix('.')?;
    (!app.is_empty() && !app.contains('.')).then_some(app)
}

/// Where a request came from.
#[derive(Debug, Clone, Copy)]
struct Client {
    peer: SocketAddr,
    local_port: u16,
    /// `http` or `https`.
    proto: &'static str,
}

async fn handle(
    shared: &Shared,
    from: Client,
    route: Option<&FixedRoute>,
    mut req: Request<Incoming>,
) -> Response<ProxyBody> {
    let region = &shared.config.region;
    let request_id = headers::request_id(region);
    let (app, key, target_port) = match route {
        Some(route) => {
            if route.force_https {
                return redirect_to_https(&req, &request_id);
            }
            (
                route.app.clone(),
                route.key.clone(),
                Some(route.target_port),
            )
        }
        None => match route_by_host(shared, &req) {
            Ok((app, key)) => (app, key, None),
            Err((status, why)) => return text(status, &request_id, &why),
        },
    };

    let h2_backend = shared
        .dispatcher
        .table
        .borrow()
        .app(&app)
        .and_then(|routes| routes.service(&key))
        .is_some_and(|service| service.h2_backend);
    let upgrade = headers::wants_upgrade(req.headers());
    let websocket = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|u| u.to_str().ok())
        .is_some_and(|u| u.eq_ignore_ascii_case("websocket"));
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    prepare_upstream_request(&mut req, from, region, upgrade);

    let mut attempts = Attempts::new(shared.config.hold_timeout);
    let mut last_error = String::new();
    loop {
        let lease = match attempts.lease(&shared.dispatcher, &app, &key).await {
            Ok(lease) => lease,
            Err(AttemptError::Refused) => {
                return text(StatusCode::BAD_GATEWAY, &request_id, &last_error);
            }
            Err(AttemptError::Dispatch(err)) => return dispatch_error(&request_id, &err),
        };
        let addr = match target_port {
            Some(port) => SocketAddr::new(lease.addr.ip(), port),
            None => lease.addr,
        };
        let pool = shared.upstreams.pool(&lease.machine, addr);
        let sent = if h2_backend && !upgrade {
            pool.send_h2(req).await.map(|response| (response, None))
        } else {
            pool.send(req)
                .await
                .map(|(response, reuse)| (response, Some(reuse)))
        };
        match sent {
            Ok((response, reuse)) => {
                let load = shared.dispatcher.loads.of(&lease.machine);
                let upgrade = client_upgrade.map(|on| (on, websocket, load));
                return respond(response, reuse, lease, upgrade, &request_id);
            }
            Err(SendError::NotSent(unsent, why)) => {
                tracing::debug!(machine = %lease.machine, "not sent: {why}");
                req = *unsent;
                attempts.refused(&lease.machine);
                last_error = format!("machine {} did not take the request: {why}", lease.machine);
            }
            Err(SendError::Failed(why)) => {
                return text(
                    StatusCode::BAD_GATEWAY,
                    &request_id,
                    &format!("machine {} failed the request: {why}", lease.machine),
                );
            }
        }
    }
}

/// The app a host name names and its HTTP service, or why there is none.
fn route_by_host(
    shared: &Shared,
    req: &Request<Incoming>,
) -> Result<(String, ServiceKey), (StatusCode, String)> {
    let Some(host) = host_of(req) else {
        return Err((StatusCode::BAD_REQUEST, "the request names no host".into()));
    };
    let domain = &shared.config.domain;
    let Some(app) = app_of_host(&host, domain) else {
        return Err((
            StatusCode::NOT_FOUND,
            format!("{host} names no app; use <app>.{domain}"),
        ));
    };
    let table = shared.dispatcher.table.borrow();
    match table.app(app) {
        Some(routes) => match routes.http_service() {
            Some(service) => Ok((app.to_string(), service.key.clone())),
            None => Err((
                StatusCode::NOT_FOUND,
                format!("app {app} has no service with an http handler"),
            )),
        },
        None => Err((
            StatusCode::NOT_FOUND,
            format!("no app {app} is served here"),
        )),
    }
}

/// `force_https`: the same URL over https.
fn redirect_to_https(req: &Request<Incoming>, request_id: &str) -> Response<ProxyBody> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.host().to_string()))
        .unwrap_or_default();
    let host = host.split(':').next().unwrap_or_default();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut response = text(StatusCode::MOVED_PERMANENTLY, request_id, "use https");
    if let Ok(location) = HeaderValue::from_str(&format!("https://{host}{path}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

fn dispatch_error(request_id: &str, err: &DispatchError) -> Response<ProxyBody> {
    let status = match err {
        DispatchError::UnknownApp(_) | DispatchError::NoService(_) => StatusCode::NOT_FOUND,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    text(status, request_id, &err.to_string())
}

/// HTTP/1.1 in origin form with a Host header, hop-by-hop headers removed
/// and Fly's forwarding headers added.
fn prepare_upstream_request(
    req: &mut Request<Incoming>,
    from: Client,
    region: &str,
    upgrade: bool,
) {
    if !req.headers().contains_key(header::HOST)
        && let Some(authority) = req.uri().authority()
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        req.headers_mut().insert(header::HOST, host);
    }
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    if let Ok(uri) = path.parse::<Uri>() {
        *req.uri_mut() = uri;
    }
    *req.version_mut() = Version::HTTP_11;
    let headers = req.headers_mut();
    headers::strip_hop_by_hop(headers, upgrade);
    headers::add_forwarding(
        headers,
        &Forwarded {
            client_ip: from.peer.ip(),
            proto: from.proto,
            port: from.local_port,
            region,
        },
    );
}

fn respond(
    mut response: Response<Incoming>,
    reuse: Option<Reuse>,
    lease: Lease,
    client_upgrade: Option<(hyper::upgrade::OnUpgrade, bool, Arc<MachineLoad>)>,
    request_id: &str,
) -> Response<ProxyBody> {
    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers::strip_hop_by_hop(headers, switching);
    if let Ok(id) = HeaderValue::from_str(request_id) {
        headers.insert("fly-request-id", id);
    }
    headers.append(header::VIA, HeaderValue::from_static("1.1 midge"));
    if let Some(waited) = lease.cold_start
        && let Ok(ms) = HeaderValue::from_str(&format!("{:.1}", waited.as_secs_f64() * 1000.0))
    {
        headers.insert("midge-cold-start-ms", ms);
    }
    if switching && let Some((client_upgrade, websocket, load)) = client_upgrade {
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        let guard = lease.guard;
        tokio::spawn(async move {
            let _guard = guard;
            match futures::future::try_join(client_upgrade, upstream_upgrade).await {
                Ok((client, upstream)) if websocket => {
                    crate::websocket::relay(TokioIo::new(client), TokioIo::new(upstream), load)
                        .await;
                }
                Ok((client, upstream)) => {
                    let mut client = TokioIo::new(client);
                    let mut upstream = TokioIo::new(upstream);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
                Err(err) => tracing::debug!("upgrade failed: {err}"),
            }
        });
        let (parts, _) = response.into_parts();
        return Response::from_parts(
            parts,
            Full::new(Bytes::new())
                .map_err(|never| match never {})
                .boxed(),
        );
    }
    let (parts, body) = response.into_parts();
    Response::from_parts(
        parts,
        GuardedBody {
            inner: body,
            reuse,
            _guard: lease.guard,
        }
        .boxed(),
    )
}

/// A response body that holds its machine's load until it ends, and gives
/// its connection back to the pool when it was read to the end.
struct GuardedBody {
    inner: Incoming,
    reuse: Option<Reuse>,
    _guard: LoadGuard,
}

impl Body for GuardedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let ended = match &polled {
            Poll::Ready(None) => true,
            // The server may never poll again once the body says it ended.
            Poll::Ready(Some(Ok(_))) => self.inner.is_end_stream(),
            Poll::Ready(Some(Err(_))) => {
                self.reuse = None;
                false
            }
            Poll::Pending => false,
        };
        if ended && let Some(reuse) = self.reuse.take() {
            reuse.give_back();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apps_are_named_by_their_host() {
        assert_eq!(app_of_host("my-app.localhost", "localhost"), Some("my-app"));
        assert_eq!(app_of_host("localhost", "localhost"), None);
        assert_eq!(app_of_host("a.b.localhost", "localhost"), None);
        assert_eq!(app_of_host("my-app.example.com", "localhost"), None);
        assert_eq!(app_of_host("xlocalhost", "localhost"), None);
    }
}
