//! Name rules shared by apps and orgs: what Fly accepts, which is also a DNS
//! label (apps are reachable as `<app>.internal`).

const MAX_NAME_LEN: usize = 63;

/// Lowercase letters, digits and dashes; starts with a letter or digit, does
/// not end with a dash; at most 63 characters.
pub fn validate_app_name(name: &str) -> Result<(), String> {
    validate_label("app name", name)
}

pub fn validate_org_slug(slug: &str) -> Result<(), String> {
    validate_label("org slug", slug)
}

fn validate_label(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "{what} {name:?} is longer than {MAX_NAME_LEN} characters"
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(format!(
            "{what} {name:?} may only contain lowercase letters, numbers and dashes"
        ));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(format!("{what} {name:?} must not start or end with a dash"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_fly_style_names_only() {
        assert!(validate_app_name("my-app-2").is_ok());
        assert!(validate_app_name("9lives").is_ok());
        for bad in [
            "",
            "My-App",
            "my_app",
            "-app",
            "app-",
            "app.x",
            "ünï",
            &"a".repeat(64),
        ] {
            assert!(validate_app_name(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
