//! The route table, the OpenAPI document built from it, and the layers every
//! response passes through.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use futures::FutureExt;
use tower_http::trace::TraceLayer;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::ApiState;
use crate::error::{Error, plain_status_error};
use crate::routes::{
    apps, certificates, egress_ips, exec, images, ips, leases, lifecycle, logs, machines, metadata,
    orgs, platform, registry_credentials, volumes,
};

pub use midge_types::headers::REQUEST_ID_HEADER;

/// Machine configs carry `files` inline (base64), and exec carries stdin.
const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;
/// No route needs more; longer ones are refused before any work (414).
const MAX_URI_BYTES: usize = 8 * 1024;
/// All header names and values together (431).
const MAX_HEADER_BYTES: usize = 64 * 1024;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "midge Machines API",
        description = "The Fly Machines API v1 as midge serves it. Errors are `{\"error\": \"<code>: <message>\", \"status\"?: …}`.",
    ),
    modifiers(&TokenAuth),
    security(("token" = [])),
)]
struct ApiDoc;

struct TokenAuth;

impl Modify for TokenAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "`Authorization: Bearer <token>` or `Authorization: FlyV1 <token>`",
                    ))
                    .build(),
            ),
        );
    }
}

/// Every documented route: registering a handler here both routes it and
/// adds its `#[utoipa::path]` description to the OpenAPI document.
fn documented_routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(apps::create_app, apps::list_apps))
        .routes(routes!(apps::get_app, apps::delete_app))
        .routes(routes!(machines::list_machines, machines::create_machine))
        .routes(routes!(
            machines::get_machine,
            machines::update_machine,
            machines::update_machine_put,
            machines::destroy_machine
        ))
        .routes(routes!(machines::machine_events))
        .routes(routes!(machines::machine_versions))
        .routes(routes!(lifecycle::start_machine))
        .routes(routes!(lifecycle::stop_machine))
        .routes(routes!(lifecycle::restart_machine))
        .routes(routes!(lifecycle::signal_machine))
        .routes(routes!(lifecycle::kill_machine))
        .routes(routes!(lifecycle::suspend_machine))
        .routes(routes!(lifecycle::cordon_machine))
        .routes(routes!(lifecycle::uncordon_machine))
        .routes(routes!(lifecycle::wait_machine))
        .routes(routes!(
            leases::acquire_lease,
            leases::get_lease,
            leases::release_lease
        ))
        .routes(routes!(
            metadata::get_metadata,
            metadata::patch_metadata,
            metadata::put_metadata
        ))
        .routes(routes!(
            metadata::get_metadata_key,
            metadata::set_metadata_key,
            metadata::delete_metadata_key
        ))
        .routes(routes!(
            egress_ips::allocate_machine_egress,
            egress_ips::list_machine_egress
        ))
        .routes(routes!(egress_ips::release_machine_egress))
        .routes(routes!(exec::exec_machine))
        .routes(routes!(exec::exec_ws))
        .routes(routes!(logs::machine_logs))
        .routes(routes!(orgs::create_org, orgs::list_orgs))
        .routes(routes!(orgs::create_token))
        .routes(routes!(platform::regions))
        .routes(routes!(platform::hosts))
        .routes(routes!(platform::drain_host))
        .routes(routes!(platform::uncordon_host))
        .routes(routes!(lifecycle::migrate_machine))
        .routes(routes!(images::pull_image))
        .routes(routes!(images::prune_images))
        .routes(routes!(registry_credentials::list_registry_credentials))
        .routes(routes!(
            registry_credentials::put_registry_credential,
            registry_credentials::delete_registry_credential
        ))
        .routes(routes!(ips::list_ips, ips::assign_ip))
        .routes(routes!(ips::release_ip))
        .routes(routes!(certificates::list_certificates))
        .routes(routes!(certificates::upload_certificate))
        .routes(routes!(
            certificates::get_certificate,
            certificates::delete_certificate
        ))
        .routes(routes!(certificates::delete_custom_certificate))
        .routes(routes!(volumes::list_volumes, volumes::create_volume))
        .routes(routes!(
            volumes::get_volume,
            volumes::update_volume,
            volumes::destroy_volume
        ))
        .routes(routes!(volumes::extend_volume))
        .routes(routes!(volumes::list_snapshots, volumes::create_snapshot))
        .routes(routes!(volumes::list_org_volumes))
}

/// The OpenAPI document of every route the server has.
pub fn openapi() -> utoipa::openapi::OpenApi {
    documented_routes().into_openapi()
}

pub fn router(state: ApiState) -> Router {
    let (routes, document) = documented_routes().split_for_parts();
    let document: Arc<str> = document
        .to_pretty_json()
        .unwrap_or_else(|error| {
            format!("{{\"error\":\"internal: rendering OpenAPI document: {error}\"}}")
        })
        .into();
    routes
        .route(
            "/v1/openapi.json",
            get(move || {
                let document = document.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "application/json")],
                        document.to_string(),
                    )
                }
            }),
        )
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(request_size))
        .layer(middleware::from_fn(request_id))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// For `ListenerExt::tap_io`: replies are small and written whole, so
/// nothing is gained by Nagle's algorithm holding back their last segment.
pub fn no_delay(stream: &mut tokio::net::TcpStream) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!("setting TCP_NODELAY: {error}");
    }
}

/// Serves until the listener fails.
pub async fn serve(listener: tokio::net::TcpListener, state: ApiState) -> std::io::Result<()> {
    axum::serve(listener.tap_io(no_delay), router(state)).await
}

/// Serves until `shutdown` completes, then finishes requests in flight.
pub async fn serve_with_shutdown(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener.tap_io(no_delay), router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Stamps every response with a request id, and turns a handler's panic
/// into a 500 that names it (and a log line with it) instead of a dropped
/// connection.
async fn request_id(request: Request, next: Next) -> Response {
    let id = ulid::Ulid::new().to_string();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let mut response = match AssertUnwindSafe(next.run(request)).catch_unwind().await {
        Ok(response) => response,
        Err(panic) => {
            let reason = panic_message(panic.as_ref());
            tracing::error!(request_id = %id, %method, %path, "a handler panicked: {reason}");
            plain_status_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                &format!("the server failed on this request (request id {id})"),
            )
        }
    };
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

/// Refuses URLs and header sets larger than any client needs.
async fn request_size(request: Request, next: Next) -> Response {
    let uri_bytes = request.uri().to_string().len();
    if uri_bytes > MAX_URI_BYTES {
        return plain_status_error(
            StatusCode::URI_TOO_LONG,
            "invalid_argument",
            &format!("the URL has {uri_bytes} bytes; at most {MAX_URI_BYTES} are accepted"),
        );
    }
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if header_bytes > MAX_HEADER_BYTES {
        return plain_status_error(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "invalid_argument",
            &format!(
                "the headers have {header_bytes} bytes; at most {MAX_HEADER_BYTES} are accepted"
            ),
        );
    }
    next.run(request).await
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message")
}

async fn no_route(method: Method, uri: Uri) -> Response {
    Error::not_found(format!("no route for {method} {}", uri.path())).into_response()
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    plain_status_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_argument",
        &format!("method {method} is not allowed on {}", uri.path()),
    )
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use tower::ServiceExt;

    use super::*;

    async fn panicking() -> &'static str {
        panic!("a handler bug")
    }

    #[tokio::test]
    async fn oversized_urls_and_headers_are_refused() {
        let app: Router = Router::new()
            .route("/{*rest}", get(|| async { "ok" }))
            .layer(middleware::from_fn(request_size));
        let call = |request: Request| {
            let app = app.clone();
            async move { app.oneshot(request).await.unwrap().status() }
        };
        let long_path = format!("/{}", "a".repeat(MAX_URI_BYTES));
        assert_eq!(
            call(Request::get(long_path).body(Body::empty()).unwrap()).await,
            StatusCode::URI_TOO_LONG
        );
        let mut request = Request::get("/fine").body(Body::empty()).unwrap();
        for n in 0..9 {
            request.headers_mut().insert(
                axum::http::HeaderName::from_bytes(format!("x-filler-{n}").as_bytes()).unwrap(),
                HeaderValue::from_str(&"b".repeat(8 * 1024)).unwrap(),
            );
        }
        assert_eq!(
            call(request).await,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
        let ordinary = Request::get("/v1/apps/x/machines?limit=5")
            .header("authorization", "Bearer token")
            .body(Body::empty())
            .unwrap();
        assert_eq!(call(ordinary).await, StatusCode::OK);
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_500_with_its_request_id() {
        let app: Router = Router::new()
            .route("/boom", get(panicking))
            .layer(middleware::from_fn(request_id));
        let response = app
            .oneshot(Request::get("/boom").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let id = response.headers()[REQUEST_ID_HEADER]
            .to_str()
            .unwrap()
            .to_owned();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let error = body["error"].as_str().unwrap();
        assert!(error.starts_with("internal: "), "{error}");
        assert!(
            error.contains(&id),
            "the body names the request id: {error}"
        );
    }
}
