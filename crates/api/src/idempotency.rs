//! Idempotent machine creates: a client that retries a create it never saw
//! the answer to gets the machine the first attempt made, not a second one.
//! The key comes in an `Idempotency-Key` header or an `idempotency_key`
//! body field (midge's extension; flyctl gets the same effect by stamping a
//! launch id in metadata and searching before it retries). The machine
//! carries its key in `config.metadata`, so a retry finds it through any
//! API server of the cluster.

use axum::http::HeaderMap;
use midge_types::CreateMachineRequest;

use crate::error::Error;

pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
const BODY_FIELD: &str = "idempotency_key";
/// The metadata key a machine made with an idempotency key keeps it under.
pub const METADATA_KEY: &str = "midge_idempotency_key";
const MAX_KEY_LEN: usize = 255;

/// The create's idempotency key, taken out of the body when it came there.
pub fn take_key(
    headers: &HeaderMap,
    request: &mut CreateMachineRequest,
) -> Result<Option<String>, Error> {
    let from_body = match request.extra.remove(BODY_FIELD) {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(key)) => Some(key),
        Some(other) => {
            return Err(Error::invalid(format!(
                "{BODY_FIELD} must be a string, not {other}"
            )));
        }
    };
    let from_header = headers
        .get(IDEMPOTENCY_HEADER)
        .map(|value| {
            value
                .to_str()
                .map(str::to_owned)
                .map_err(|_| Error::invalid("the Idempotency-Key header is not valid text"))
        })
        .transpose()?;
    let key = match (from_header, from_body) {
        (Some(header), Some(body)) if header.trim() != body.trim() => {
            return Err(Error::invalid(
                "the Idempotency-Key header and the idempotency_key field differ",
            ));
        }
        (header, body) => header.or(body),
    };
    let Some(key) = key.map(|key| key.trim().to_owned()) else {
        return Ok(None);
    };
    if key.is_empty() || key.len() > MAX_KEY_LEN || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::invalid(format!(
            "an idempotency key has 1 to {MAX_KEY_LEN} printable ASCII characters"
        )));
    }
    Ok(Some(key))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn request(body: serde_json::Value) -> CreateMachineRequest {
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn the_key_comes_from_the_header_or_the_body() {
        let mut headers = HeaderMap::new();
        let mut body = request(serde_json::json!({"idempotency_key": "launch-1"}));
        assert_eq!(
            take_key(&headers, &mut body).unwrap().as_deref(),
            Some("launch-1")
        );
        assert!(
            !body.extra.contains_key(BODY_FIELD),
            "taken out of the body"
        );
        headers.insert(IDEMPOTENCY_HEADER, HeaderValue::from_static("launch-2"));
        assert_eq!(
            take_key(&headers, &mut request(serde_json::json!({})))
                .unwrap()
                .as_deref(),
            Some("launch-2")
        );
        let mut both = request(serde_json::json!({"idempotency_key": "other"}));
        assert!(take_key(&headers, &mut both).is_err());
        assert_eq!(
            take_key(&HeaderMap::new(), &mut request(serde_json::json!({}))).unwrap(),
            None
        );
    }

    #[test]
    fn odd_keys_are_refused() {
        for bad in [
            serde_json::json!({"idempotency_key": 7}),
            serde_json::json!({"idempotency_key": ""}),
            serde_json::json!({"idempotency_key": "has space"}),
            serde_json::json!({"idempotency_key": "x".repeat(256)}),
        ] {
            assert!(
                take_key(&HeaderMap::new(), &mut request(bad.clone())).is_err(),
                "{bad}"
            );
        }
    }
}
