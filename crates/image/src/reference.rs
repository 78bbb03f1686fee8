//! Image reference parsing with Docker's normalization rules
//! ("busybox" is "docker.io/library/busybox:latest").

use oci_client::Reference;

use crate::ImageError;

/// Parses and normalizes `reference`.
pub(crate) fn parse(reference: &str) -> Result<Reference, ImageError> {
    let trimmed = reference.trim();
    let parsed = trimmed
        .parse::<Reference>()
        .map_err(|err| ImageError::BadReference {
            reference: reference.to_string(),
            reason: err.to_string(),
        })?;
    // The parser takes some names (an uppercase first part without a dot, which Docker reads
    // as a registry) into a repository it then refuses: an image stored under such a name
    // could never be looked up again.
    let whole = normalized(&parsed);
    match whole.parse::<Reference>() {
        Ok(again) if normalized(&again) == whole => Ok(parsed),
        _ => Err(ImageError::BadReference {
            reference: reference.to_string(),
            reason: format!("it normalizes to {whole:?}, which is not a valid reference"),
        }),
    }
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
            // Accepted by the parser, but not its normalized form.
            "regisploylyA/io/my-app:ment-00J",
        ] {
            assert!(
                matches!(parse(bad), Err(ImageError::BadReference { .. })),
                "{bad:?} accepted"
            );
        }
    }
}
