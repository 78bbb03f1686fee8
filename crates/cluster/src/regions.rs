//! Regions as a create asks for them: one code (`ord`), an ordered list
//! (`"ams,ord"`), `any`, or an alias the cluster defines (`eu=ams,fra`).

use std::collections::BTreeMap;

/// Which regions to try, in order. `known` are the regions that have hosts
/// (for `any`); `default` is for a request that names none.
pub fn resolve(
    requested: Option<&str>,
    default: &str,
    aliases: &BTreeMap<String, Vec<String>>,
    known: &[String],
) -> Vec<String> {
    let requested = requested.map(str::trim).filter(|r| !r.is_empty());
    let Some(requested) = requested else {
        return vec![default.to_string()];
    };
    let mut regions: Vec<String> = Vec::new();
    for part in requested
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        let part = part.to_ascii_lowercase();
        let expanded: Vec<String> = if part == "any" {
            // Nearest first, then the others.
            std::iter::once(default.to_string())
                .chain(known.iter().cloned())
                .collect()
        } else if let Some(members) = aliases.get(&part) {
            members.clone()
        } else {
            vec![part]
        };
        for region in expanded {
            if !regions.contains(&region) {
                regions.push(region);
            }
        }
    }
    regions
}

/// `name=a,b` → (name, [a, b]), for `--region-alias`.
pub fn parse_alias(text: &str) -> Result<(String, Vec<String>), String> {
    let (name, members) = text
        .split_once('=')
        .ok_or_else(|| format!("region alias {text:?}: expected NAME=REGION[,REGION…]"))?;
    let members: Vec<String> = members
        .split(',')
        .map(|m| m.trim().to_ascii_lowercase())
        .filter(|m| !m.is_empty())
        .collect();
    if name.trim().is_empty() || members.is_empty() {
        return Err(format!(
            "region alias {text:?}: expected NAME=REGION[,REGION…]"
        ));
    }
    Ok((name.trim().to_ascii_lowercase(), members))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_aliases_and_any_resolve_in_order() {
        let aliases: BTreeMap<String, Vec<String>> =
            [("eu".to_string(), vec!["ams".to_string(), "fra".to_string()])].into();
        let known = vec!["ams".to_string(), "ord".to_string()];
        let r = |text: Option<&str>| resolve(text, "ord", &aliases, &known);
        assert_eq!(r(None), ["ord"]);
        assert_eq!(r(Some("")), ["ord"]);
        assert_eq!(r(Some("AMS")), ["ams"]);
        assert_eq!(r(Some("ams, ord")), ["ams", "ord"]);
        assert_eq!(r(Some("eu,ord")), ["ams", "fra", "ord"]);
        assert_eq!(r(Some("any")), ["ord", "ams"]);
        assert_eq!(r(Some("ams,any")), ["ams", "ord"]);
        assert_eq!(parse_alias("eu=ams,fra").unwrap().1, ["ams", "fra"]);
        assert!(parse_alias("eu").is_err());
        assert!(parse_alias("eu=").is_err());
    }
}
