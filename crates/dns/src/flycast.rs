//! Flycast names: `<app>.flycast` answers AAAA with the app's Flycast
//! (`private_v6`) addresses, which the proxy serves, to callers of the
//! app's organization only; for any other caller the app does not exist
//! (NXDOMAIN), as under `internal.`.
//!
//! The addresses come from the catalog, not from the machines, so they are
//! fed on their own ([`Directory::update_flycast`](crate::Directory::update_flycast)).

use std::collections::HashMap;
use std::net::Ipv6Addr;
use std::sync::LazyLock;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{AAAA, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::answer::{ANSWER_TTL, Answer, NEGATIVE_TTL};

/// The zone of Flycast names.
pub(crate) const ZONE: &str = "flycast";

static ZONE_APEX: LazyLock<Name> = LazyLock::new(|| fixed_name(&[ZONE]));
static SOA_MNAME: LazyLock<Name> = LazyLock::new(|| fixed_name(&["ns", ZONE]));
static SOA_RNAME: LazyLock<Name> = LazyLock::new(|| fixed_name(&["hostmaster", ZONE]));

fn fixed_name(labels: &[&str]) -> Name {
    Name::from_labels(labels.iter().copied()).expect("fixed labels are valid")
}

/// One Flycast address of an app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlycastAddress {
    /// The app's organization network (the 32 bits after `fdaa`).
    pub org_network: u32,
    pub app: String,
    pub ip: Ipv6Addr,
}

/// Every organization's apps' Flycast addresses, indexed for answering.
#[derive(Debug, Default)]
pub(crate) struct FlycastIndex {
    pub(crate) serial: u32,
    /// Org network → lowercased app name → its addresses, sorted.
    orgs: HashMap<u32, HashMap<String, Vec<Ipv6Addr>>>,
}

impl FlycastIndex {
    pub(crate) fn build(addresses: Vec<FlycastAddress>, serial: u32) -> Self {
        let mut orgs: HashMap<u32, HashMap<String, Vec<Ipv6Addr>>> = HashMap::new();
        for address in addresses {
            orgs.entry(address.org_network)
                .or_default()
                .entry(address.app.to_ascii_lowercase())
                .or_default()
                .push(address.ip);
        }
        for ips in orgs.values_mut().flat_map(HashMap::values_mut) {
            ips.sort_unstable();
            ips.dedup();
        }
        FlycastIndex { serial, orgs }
    }

    fn app(&self, org: u32, app: &str) -> Option<&[Ipv6Addr]> {
        self.orgs.get(&org)?.get(app).map(Vec::as_slice)
    }
}

/// Whether a name's last label is the `flycast` zone (labels in any case).
pub(crate) fn is_flycast<'l>(mut labels: impl DoubleEndedIterator<Item = &'l [u8]>) -> bool {
    labels
        .next_back()
        .is_some_and(|label| label.eq_ignore_ascii_case(ZONE.as_bytes()))
}

/// Answers `name` (under `flycast.`) for a caller in `org`: refused outside
/// any organization, NXDOMAIN for a name that is not an app of the caller's
/// organization with a Flycast address.
pub(crate) fn answer(
    index: &FlycastIndex,
    org: Option<u32>,
    name: &Name,
    qtype: RecordType,
) -> Answer {
    let Some(org) = org else {
        return Answer {
            code: ResponseCode::Refused,
            answers: Vec::new(),
            soa: None,
        };
    };
    let lowercase = name.to_lowercase();
    let labels: Option<Vec<&str>> = lowercase
        .iter()
        .map(|label| std::str::from_utf8(label).ok())
        .collect();
    let wants = |record_type: RecordType| qtype == record_type || qtype == RecordType::ANY;
    let negative = |code| Answer {
        code,
        answers: Vec::new(),
        soa: Some(soa(index.serial)),
    };
    match labels.as_deref() {
        // The zone apex: its SOA only.
        Some([_zone]) => {
            if wants(RecordType::SOA) {
                Answer {
                    code: ResponseCode::NoError,
                    answers: vec![soa(index.serial)],
                    soa: None,
                }
            } else {
                negative(ResponseCode::NoError)
            }
        }
        Some([app, _zone]) => match index.app(org, app) {
            Some(ips) if wants(RecordType::AAAA) && !ips.is_empty() => Answer {
                code: ResponseCode::NoError,
                answers: ips
                    .iter()
                    .map(|ip| Record::from_rdata(name.clone(), ANSWER_TTL, RData::AAAA(AAAA(*ip))))
                    .collect(),
                soa: None,
            },
            Some(_) => negative(ResponseCode::NoError),
            None => negative(ResponseCode::NXDomain),
        },
        _ => negative(ResponseCode::NXDomain),
    }
}

fn soa(serial: u32) -> Record {
    Record::from_rdata(
        ZONE_APEX.clone(),
        NEGATIVE_TTL,
        RData::SOA(SOA::new(
            SOA_MNAME.clone(),
            SOA_RNAME.clone(),
            serial,
            3600,
            600,
            86400,
            NEGATIVE_TTL,
        )),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORG: u32 = 7;
    const OTHER_ORG: u32 = 9;

    fn ip(text: &str) -> Ipv6Addr {
        text.parse().unwrap()
    }

    fn index() -> FlycastIndex {
        let address = |org_network, app: &str, text: &str| FlycastAddress {
            org_network,
            app: app.into(),
            ip: ip(text),
        };
        FlycastIndex::build(
            vec![
                address(ORG, "Web", "fdaa:0:7::1:0:2"),
                address(ORG, "web", "fdaa:0:7::1:0:1"),
                address(OTHER_ORG, "secret", "fdaa:0:9::1:0:1"),
            ],
            5,
        )
    }

    fn ask(org: Option<u32>, name: &str, qtype: RecordType) -> Answer {
        answer(&index(), org, &Name::from_ascii(name).unwrap(), qtype)
    }

    fn addresses(answer: &Answer) -> Vec<Ipv6Addr> {
        assert_eq!(answer.code, ResponseCode::NoError);
        answer
            .answers
            .iter()
            .map(|record| match &record.data {
                RData::AAAA(AAAA(ip)) => *ip,
                other => panic!("not an AAAA: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn an_app_resolves_to_its_flycast_addresses_for_its_org() {
        let answer = ask(Some(ORG), "web.flycast.", RecordType::AAAA);
        assert_eq!(
            addresses(&answer),
            [ip("fdaa:0:7::1:0:1"), ip("fdaa:0:7::1:0:2")]
        );
        assert!(answer.soa.is_none());
        assert!(answer.answers.iter().all(|r| r.ttl == ANSWER_TTL));
        // In any case; the owner is the name as asked.
        let upper = ask(Some(ORG), "WEB.Flycast.", RecordType::AAAA);
        assert_eq!(upper.answers.len(), 2);
        assert_eq!(upper.answers[0].name.to_string(), "WEB.Flycast.");
    }

    #[test]
    fn another_orgs_app_and_unknown_names_are_nxdomain() {
        for name in [
            "secret.flycast.",
            "nothing.flycast.",
            "a.web.flycast.",
            "_apps.flycast.",
        ] {
            let answer = ask(Some(ORG), name, RecordType::AAAA);
            assert_eq!(answer.code, ResponseCode::NXDomain, "{name}");
            assert!(answer.answers.is_empty(), "{name}");
            assert!(answer.soa.is_some(), "{name}");
        }
        // The owner org sees its own.
        let own = ask(Some(OTHER_ORG), "secret.flycast.", RecordType::AAAA);
        assert_eq!(addresses(&own), [ip("fdaa:0:9::1:0:1")]);
        // And org 9 never sees org 7's.
        let theirs = ask(Some(OTHER_ORG), "web.flycast.", RecordType::AAAA);
        assert_eq!(theirs.code, ResponseCode::NXDomain);
    }

    #[test]
    fn other_types_are_nodata_and_callers_outside_any_org_are_refused() {
        let txt = ask(Some(ORG), "web.flycast.", RecordType::TXT);
        assert_eq!(txt.code, ResponseCode::NoError);
        assert!(txt.answers.is_empty());
        assert!(txt.soa.is_some());
        let any = ask(Some(ORG), "web.flycast.", RecordType::ANY);
        assert_eq!(any.answers.len(), 2);
        let apex = ask(Some(ORG), "flycast.", RecordType::SOA);
        assert_eq!(apex.answers.len(), 1);
        let refused = ask(None, "web.flycast.", RecordType::AAAA);
        assert_eq!(refused.code, ResponseCode::Refused);
        assert!(refused.answers.is_empty());
    }

    #[test]
    fn the_zone_is_recognised_in_any_case() {
        let labels = |name: &'static str| name.split('.').map(str::as_bytes);
        assert!(is_flycast(labels("web.flycast")));
        assert!(is_flycast(labels("web.FLYCAST")));
        assert!(!is_flycast(labels("web.internal")));
        assert!(!is_flycast(labels("flycast.example.com")));
    }
}
