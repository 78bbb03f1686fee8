//! Image reference parsing with Docker's normalization rules
//! ("busybox" is "docker.io/library/busybox:latest").

use oci_client::Reference;

use crate::ImageError;

/// Parses and normalizes `reference`.
pub(crate) fn parse(reference: &str) -> Result<Reference, ImageError> {
    let trimmed = reference.trim();
    trimmed
        .parse::<Reference>()
        .map_err(|err| ImageError::BadReference {
            reference: reference.to_string(),
            reason: err.to_string(),
        })
}

/// The canonical string under which an image is stored and looked up.
pub(crate) fn normalized(reference: &Reference) -> String {
    reference.whole()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_normalize_to_docker_hub() {
        let parsed = parse("busybox").unwrap();
        assert_eq!(normalized(&parsed), "docker.io/library/busybox:latest");
        let parsed = parse("127.0.0.1:5000/test/busybox").unwrap();
        assert_eq!(normalized(&parsed), "127.0.0.1:5000/test/busybox:latest");
        assert_eq!(parsed.registry(), "127.0.0.1:5000");
    }

    #[test]
    fn malformed_references_are_rejected() {
        for bad in [
            "",
            "Busybox",
            "has space",
            "busybox@sha256:abc",
            "a/b:bad:tag",
        ] {
            assert!(
                matches!(parse(bad), Err(ImageError::BadReference { .. })),
                "{bad:?} accepted"
            );
        }
    }
}
