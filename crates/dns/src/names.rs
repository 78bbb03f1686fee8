//! The `.internal` name forms Fly defines, read from a query name's labels.
//!
//! This knows only the shapes of names, not which apps exist: `web.internal`
//! parses as the app `web` whether or not the caller's organization has one.

/// The zone the server answers itself; everything else is forwarded.
pub(crate) const ZONE: &str = "internal";

/// A name under `internal.` in one of the forms the server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InternalName<'a> {
    /// `internal.` itself, which only has the SOA.
    Apex,
    /// `_apps.internal`: the organization's app names.
    Apps,
    /// `_instances.internal` (started machines) or `all._instances.internal`.
    Instances { include_stopped: bool },
    /// A name about one app.
    App { app: &'a str, query: AppQuery<'a> },
}

/// What a name under `<app>.internal` asks about the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AppQuery<'a> {
    /// `<app>.internal` and `global.<app>.internal`: started machines.
    Started,
    /// `<region>.<app>.internal`: started machines in the region. Any label that
    /// is not a keyword counts as a region, since the server has no list of them.
    Region(&'a str),
    /// `<id>.vm.<app>.internal`: one machine, in any state.
    Machine(&'a str),
    /// `top<N>.nearest.of.<app>.internal`: up to N started machines.
    Nearest(usize),
    /// `vms.<app>.internal` / `all.vms.<app>.internal` (TXT).
    Vms { include_stopped: bool },
    /// `regions.<app>.internal` / `all.regions.<app>.internal` (TXT).
    Regions { include_stopped: bool },
}

/// Whether a name's last label is the `internal` zone (labels in any case).
pub(crate) fn is_internal<'l>(mut labels: impl DoubleEndedIterator<Item = &'l [u8]>) -> bool {
    labels
        .next_back()
        .is_some_and(|label| label.eq_ignore_ascii_case(ZONE.as_bytes()))
}

/// Reads the lowercased labels of a name under `internal.`, leftmost first and
/// without the `internal` label itself. `None` is a name no form matches.
pub(crate) fn parse<'a>(labels: &[&'a str]) -> Option<InternalName<'a>> {
    let (&last, rest) = match labels.split_last() {
        None => return Some(InternalName::Apex),
        Some(split) => split,
    };
    // App names cannot start with '_', so these never collide with an app.
    if last.starts_with('_') {
        return match (rest, last) {
            ([], "_apps") => Some(InternalName::Apps),
            ([], "_instances") => Some(InternalName::Instances {
                include_stopped: false,
            }),
            (["all"], "_instances") => Some(InternalName::Instances {
                include_stopped: true,
            }),
            _ => None,
        };
    }
    let query = match rest {
        [] | ["global"] => AppQuery::Started,
        ["vms"] => AppQuery::Vms {
            include_stopped: false,
        },
        ["all", "vms"] => AppQuery::Vms {
            include_stopped: true,
        },
        ["regions"] => AppQuery::Regions {
            include_stopped: false,
        },
        ["all", "regions"] => AppQuery::Regions {
            include_stopped: true,
        },
        [id, "vm"] => AppQuery::Machine(id),
        [top, "nearest", "of"] => AppQuery::Nearest(nearest_count(top)?),
        // `all` alone would otherwise read as a region called "all".
        ["all" | "vm"] => return None,
        [region] => AppQuery::Region(region),
        _ => return None,
    };
    Some(InternalName::App { app: last, query })
}

/// N of `top<N>`: a positive decimal number.
fn nearest_count(label: &str) -> Option<usize> {
    let digits = label.strip_prefix("top")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|&count| count > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_name(name: &str) -> Option<InternalName<'_>> {
        let name = name.trim_end_matches('.');
        let labels: Vec<&str> = name.split('.').collect();
        let (zone, labels) = labels.split_last().unwrap();
        assert_eq!(*zone, ZONE);
        parse(labels)
    }

    fn app<'a>(app: &'a str, query: AppQuery<'a>) -> Option<InternalName<'a>> {
        Some(InternalName::App { app, query })
    }

    #[test]
    fn app_names_in_every_form() {
        assert_eq!(parse_name("web.internal"), app("web", AppQuery::Started));
        assert_eq!(
            parse_name("global.web.internal."),
            app("web", AppQuery::Started)
        );
        assert_eq!(
            parse_name("ams.web.internal"),
            app("web", AppQuery::Region("ams"))
        );
        assert_eq!(
            parse_name("0e286039f42e86.vm.web.internal"),
            app("web", AppQuery::Machine("0e286039f42e86"))
        );
        assert_eq!(
            parse_name("top3.nearest.of.web.internal"),
            app("web", AppQuery::Nearest(3))
        );
        assert_eq!(
            parse_name("vms.web.internal"),
            app(
                "web",
                AppQuery::Vms {
                    include_stopped: false
                }
            )
        );
        assert_eq!(
            parse_name("all.vms.web.internal"),
            app(
                "web",
                AppQuery::Vms {
                    include_stopped: true
                }
            )
        );
        assert_eq!(
            parse_name("regions.web.internal"),
            app(
                "web",
                AppQuery::Regions {
                    include_stopped: false
                }
            )
        );
        assert_eq!(
            parse_name("all.regions.web.internal"),
            app(
                "web",
                AppQuery::Regions {
                    include_stopped: true
                }
            )
        );
    }

    #[test]
    fn organization_names() {
        assert_eq!(parse_name("internal"), Some(InternalName::Apex));
        assert_eq!(parse_name("_apps.internal"), Some(InternalName::Apps));
        assert_eq!(
            parse_name("_instances.internal"),
            Some(InternalName::Instances {
                include_stopped: false
            })
        );
        assert_eq!(
            parse_name("all._instances.internal"),
            Some(InternalName::Instances {
                include_stopped: true
            })
        );
    }

    #[test]
    fn names_matching_no_form() {
        for name in [
            "_peer.internal",
            "x._apps.internal",
            "_other.internal",
            "all.web.internal",
            "vm.web.internal",
            "a.b.web.internal",
            "a.b.c.d.web.internal",
            "top0.nearest.of.web.internal",
            "top.nearest.of.web.internal",
            "topx.nearest.of.web.internal",
            "top+3.nearest.of.web.internal",
            "top3.closest.of.web.internal",
            "x.all.vms.web.internal",
        ] {
            assert_eq!(parse_name(name), None, "{name}");
        }
    }

    #[test]
    fn the_zone_is_recognised_in_any_case() {
        let labels = |name: &'static str| name.split('.').map(str::as_bytes);
        assert!(is_internal(labels("web.internal")));
        assert!(is_internal(labels("web.INTERNAL")));
        assert!(is_internal(labels("internal")));
        assert!(!is_internal(labels("internal.example.com")));
        assert!(!is_internal(labels("example.com")));
        assert!(!is_internal(std::iter::empty()));
    }
}
