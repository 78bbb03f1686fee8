//! Answers for names under `internal.`: query name, type and the caller's
//! organization against one snapshot, giving the response code and records.
//!
//! No sockets and no clock here; randomness (the order of addresses) comes from
//! the caller's generator so tests can fix it.

use std::net::Ipv6Addr;
use std::sync::LazyLock;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{AAAA, SOA, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use rand::Rng;
use rand::seq::SliceRandom;

use crate::directory::{AppIndex, Index, OrgIndex};
use crate::names::{self, AppQuery, InternalName};
use crate::txt::character_strings;

/// TTL of every positive answer: short, because machines start and stop often
/// and nothing tells caches when they do.
pub(crate) const ANSWER_TTL: u32 = 5;
/// TTL (and SOA minimum) that bounds how long a "no such name / no records"
/// answer is cached, so a machine that just started is found within seconds.
pub(crate) const NEGATIVE_TTL: u32 = 5;

static ZONE_APEX: LazyLock<Name> = LazyLock::new(|| fixed_name(&[names::ZONE]));
static SOA_MNAME: LazyLock<Name> = LazyLock::new(|| fixed_name(&["ns", names::ZONE]));
static SOA_RNAME: LazyLock<Name> = LazyLock::new(|| fixed_name(&["hostmaster", names::ZONE]));

fn fixed_name(labels: &[&str]) -> Name {
    Name::from_labels(labels.iter().copied()).expect("fixed labels are valid")
}

/// What to send back for one `.internal` question.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Answer {
    pub(crate) code: ResponseCode,
    pub(crate) answers: Vec<Record>,
    /// The zone's SOA for the authority section of negative answers (NXDOMAIN
    /// and NODATA), whose minimum bounds negative caching.
    pub(crate) soa: Option<Record>,
}

/// Answers `name` (under `internal.`, owner of the records as the client wrote
/// it) for a caller in `org`. A caller outside any organization is refused; a
/// name of another organization's app is NXDOMAIN, exactly like a name that
/// exists nowhere.
pub(crate) fn answer(
    index: &Index,
    org: Option<u32>,
    name: &Name,
    qtype: RecordType,
    own_region: &str,
    rng: &mut impl Rng,
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
    let node = labels.as_deref().and_then(|labels| {
        let (_zone, labels) = labels.split_last()?;
        let parsed = names::parse(labels)?;
        find(index.org(org), parsed)
    });
    let Some(node) = node else {
        return Answer {
            code: ResponseCode::NXDomain,
            answers: Vec::new(),
            soa: Some(soa(index.serial)),
        };
    };

    let wants = |record_type: RecordType| qtype == record_type || qtype == RecordType::ANY;
    let answers: Vec<Record> = match node {
        Node::Apex if wants(RecordType::SOA) => vec![soa(index.serial)],
        Node::Text(value) if wants(RecordType::TXT) && !value.is_empty() => {
            vec![Record::from_rdata(
                name.clone(),
                ANSWER_TTL,
                RData::TXT(TXT::from_bytes(character_strings(value))),
            )]
        }
        Node::Addresses(set) if wants(RecordType::AAAA) => addresses(set, own_region, rng)
            .into_iter()
            .map(|ip| Record::from_rdata(name.clone(), ANSWER_TTL, RData::AAAA(AAAA(ip))))
            .collect(),
        _ => Vec::new(),
    };
    let soa = answers.is_empty().then(|| soa(index.serial));
    Answer {
        code: ResponseCode::NoError,
        answers,
        soa,
    }
}

/// A name that exists for the caller, and the only kind of data it holds.
enum Node<'a> {
    Apex,
    /// A TXT value; empty means the name exists but has nothing to list now.
    Text(&'a str),
    Addresses(AddressSet<'a>),
}

/// Which of an app's machines an address name stands for.
enum AddressSet<'a> {
    Started(&'a AppIndex),
    Region(&'a AppIndex, &'a str),
    Machine(Ipv6Addr),
    Nearest(&'a AppIndex, usize),
}

/// The node a parsed name stands for in the caller's organization, if it exists there.
fn find<'a>(org: Option<&'a OrgIndex>, name: InternalName<'a>) -> Option<Node<'a>> {
    let text = |value: fn(&OrgIndex) -> &str| Node::Text(org.map_or("", value));
    Some(match name {
        InternalName::Apex => Node::Apex,
        InternalName::Apps => text(|org| &org.apps_txt),
        InternalName::Instances {
            include_stopped: false,
        } => text(|org| &org.instances_txt),
        InternalName::Instances {
            include_stopped: true,
        } => text(|org| &org.all_instances_txt),
        InternalName::App { app, query } => {
            let app = org?.app(app)?;
            match query {
                AppQuery::Started => Node::Addresses(AddressSet::Started(app)),
                AppQuery::Region(region) => Node::Addresses(AddressSet::Region(app, region)),
                AppQuery::Machine(id) => Node::Addresses(AddressSet::Machine(app.machine(id)?.ip)),
                AppQuery::Nearest(count) => Node::Addresses(AddressSet::Nearest(app, count)),
                AppQuery::Vms { include_stopped } => Node::Text(if include_stopped {
                    &app.all_vms_txt
                } else {
                    &app.vms_txt
                }),
                AppQuery::Regions { include_stopped } => Node::Text(if include_stopped {
                    &app.all_regions_txt
                } else {
                    &app.regions_txt
                }),
            }
        }
    })
}

/// The addresses of a set, shuffled so clients that take the first address
/// spread over the machines.
fn addresses(set: AddressSet<'_>, own_region: &str, rng: &mut impl Rng) -> Vec<Ipv6Addr> {
    match set {
        AddressSet::Machine(ip) => vec![ip],
        AddressSet::Started(app) => {
            let mut ips = app.started_ips();
            ips.shuffle(rng);
            ips
        }
        AddressSet::Region(app, region) => {
            let mut ips: Vec<Ipv6Addr> = app
                .started()
                .filter(|machine| machine.region.eq_ignore_ascii_case(region))
                .map(|machine| machine.ip)
                .collect();
            ips.shuffle(rng);
            ips
        }
        AddressSet::Nearest(app, count) => {
            // One host knows no latencies: its own region is nearest, every
            // other region equally far.
            let (mut near, mut far): (Vec<_>, Vec<_>) = app
                .started()
                .partition(|machine| machine.region.eq_ignore_ascii_case(own_region));
            near.shuffle(rng);
            far.shuffle(rng);
            near.into_iter()
                .chain(far)
                .take(count)
                .map(|machine| machine.ip)
                .collect()
        }
    }
}

/// The zone's SOA; only its serial (the snapshot's) and minimum matter to clients.
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
    use std::collections::HashMap;
    use std::str::FromStr;

    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;
    use crate::snapshot::{AppRecords, DnsSnapshot, MachineRecords, OrgDirectory};

    const ORG: u32 = 7;
    const OTHER_ORG: u32 = 9;
    /// An organization the caller may belong to that has no apps at all.
    const EMPTY_ORG: u32 = 3;
    const OWN_REGION: &str = "ams";

    fn machine(id: &str, region: &str, host: u16, started: bool) -> MachineRecords {
        MachineRecords {
            id: id.to_owned(),
            region: region.to_owned(),
            ip: Ipv6Addr::new(0xfdaa, 0, 7, host, 0, 0, 1, 2),
            started,
        }
    }

    fn ip(host: u16) -> Ipv6Addr {
        Ipv6Addr::new(0xfdaa, 0, 7, host, 0, 0, 1, 2)
    }

    /// `web`: started in ams (1, 5), ord (3), syd (4), stopped in ams (2).
    /// `db`: one stopped machine. Org 9 has `secret`.
    fn snapshot() -> DnsSnapshot {
        let web = AppRecords {
            name: "web".to_owned(),
            machines: vec![
                machine("e5", "ams", 5, true),
                machine("e1", "ams", 1, true),
                machine("e2", "ams", 2, false),
                machine("e3", "ord", 3, true),
                machine("e4", "syd", 4, true),
            ],
        };
        let db = AppRecords {
            name: "db".to_owned(),
            machines: vec![machine("d1", "ams", 9, false)],
        };
        let secret = AppRecords {
            name: "secret".to_owned(),
            machines: vec![machine("s1", "ams", 20, true)],
        };
        DnsSnapshot {
            orgs: HashMap::from([
                (
                    ORG,
                    OrgDirectory {
                        apps: vec![web, db],
                    },
                ),
                (OTHER_ORG, OrgDirectory { apps: vec![secret] }),
            ]),
        }
    }

    fn index() -> Index {
        Index::build(snapshot(), 42)
    }

    fn ask_seeded(
        index: &Index,
        org: Option<u32>,
        name: &str,
        qtype: RecordType,
        seed: u64,
    ) -> Answer {
        // from_ascii keeps the case (from_str would lowercase it).
        let name = Name::from_ascii(name).unwrap();
        answer(
            index,
            org,
            &name,
            qtype,
            OWN_REGION,
            &mut StdRng::seed_from_u64(seed),
        )
    }

    fn ask(org: u32, name: &str, qtype: RecordType) -> Answer {
        ask_seeded(&index(), Some(org), name, qtype, 0)
    }

    fn addresses_of(answer: &Answer) -> Vec<Ipv6Addr> {
        assert_eq!(answer.code, ResponseCode::NoError);
        assert!(answer.soa.is_none(), "a positive answer has no SOA");
        answer
            .answers
            .iter()
            .map(|record| {
                assert_eq!(record.ttl, ANSWER_TTL);
                match &record.data {
                    RData::AAAA(AAAA(ip)) => *ip,
                    other => panic!("not an AAAA: {other:?}"),
                }
            })
            .collect()
    }

    fn sorted(mut ips: Vec<Ipv6Addr>) -> Vec<Ipv6Addr> {
        ips.sort();
        ips
    }

    fn aaaa(name: &str) -> Vec<Ipv6Addr> {
        sorted(addresses_of(&ask(ORG, name, RecordType::AAAA)))
    }

    /// The character-strings of the single TXT record answering `name`.
    fn txt_strings(org: u32, name: &str) -> Vec<String> {
        let answer = ask(org, name, RecordType::TXT);
        assert_eq!(answer.code, ResponseCode::NoError);
        assert!(answer.soa.is_none());
        assert_eq!(answer.answers.len(), 1, "one TXT record");
        let record = &answer.answers[0];
        assert_eq!(record.ttl, ANSWER_TTL);
        let RData::TXT(txt) = &record.data else {
            panic!("not a TXT: {:?}", record.data);
        };
        txt.txt_data
            .iter()
            .map(|s| String::from_utf8(s.to_vec()).unwrap())
            .collect()
    }

    /// The value of the TXT record answering `name`, its strings concatenated.
    fn txt(org: u32, name: &str) -> String {
        let strings = txt_strings(org, name);
        assert!(strings.iter().all(|s| s.len() <= 255));
        strings.concat()
    }

    fn assert_nodata(answer: &Answer) {
        assert_eq!(answer.code, ResponseCode::NoError);
        assert!(answer.answers.is_empty(), "{:?}", answer.answers);
        assert_negative_soa(answer);
    }

    fn assert_nxdomain(answer: &Answer) {
        assert_eq!(answer.code, ResponseCode::NXDomain);
        assert!(answer.answers.is_empty());
        assert_negative_soa(answer);
    }

    fn assert_negative_soa(answer: &Answer) {
        let soa = answer.soa.as_ref().expect("negative answers carry the SOA");
        assert_eq!(soa.name, Name::from_str("internal.").unwrap());
        assert!(soa.ttl <= 5);
        let RData::SOA(data) = &soa.data else {
            panic!("not an SOA: {:?}", soa.data);
        };
        assert!(data.minimum <= 5, "negative TTL is at most 5 s");
        assert_eq!(data.serial, 42);
    }

    #[test]
    fn the_app_name_lists_started_machines_only() {
        assert_eq!(aaaa("web.internal."), vec![ip(1), ip(3), ip(4), ip(5)]);
        assert_eq!(
            aaaa("global.web.internal."),
            vec![ip(1), ip(3), ip(4), ip(5)]
        );
    }

    #[test]
    fn answers_are_owned_by_the_name_as_asked() {
        let answer = ask(ORG, "web.internal.", RecordType::AAAA);
        assert!(
            answer
                .answers
                .iter()
                .all(|record| record.name == Name::from_str("web.internal.").unwrap())
        );
    }

    #[test]
    fn the_region_name_lists_started_machines_in_that_region() {
        assert_eq!(aaaa("ams.web.internal."), vec![ip(1), ip(5)]);
        assert_eq!(aaaa("ord.web.internal."), vec![ip(3)]);
        assert_eq!(aaaa("syd.web.internal."), vec![ip(4)]);
    }

    #[test]
    fn a_region_without_started_machines_is_nodata() {
        assert_nodata(&ask(ORG, "fra.web.internal.", RecordType::AAAA));
        assert_nodata(&ask(ORG, "ams.db.internal.", RecordType::AAAA));
    }

    #[test]
    fn a_machine_name_resolves_in_any_state() {
        assert_eq!(aaaa("e1.vm.web.internal."), vec![ip(1)]);
        assert_eq!(aaaa("e2.vm.web.internal."), vec![ip(2)], "stopped machine");
        assert_eq!(aaaa("d1.vm.db.internal."), vec![ip(9)]);
    }

    #[test]
    fn an_unknown_machine_or_one_of_another_app_is_nxdomain() {
        assert_nxdomain(&ask(ORG, "e9.vm.web.internal.", RecordType::AAAA));
        assert_nxdomain(&ask(ORG, "d1.vm.web.internal.", RecordType::AAAA));
    }

    #[test]
    fn nearest_puts_the_own_region_first_then_the_rest() {
        let index = index();
        for seed in 0..50 {
            let top = |count: usize| {
                addresses_of(&ask_seeded(
                    &index,
                    Some(ORG),
                    &format!("top{count}.nearest.of.web.internal."),
                    RecordType::AAAA,
                    seed,
                ))
            };
            let one = top(1);
            assert_eq!(one.len(), 1);
            assert!(one[0] == ip(1) || one[0] == ip(5), "{one:?}");
            assert_eq!(sorted(top(2)), vec![ip(1), ip(5)]);
            let three = top(3);
            assert_eq!(sorted(three[..2].to_vec()), vec![ip(1), ip(5)]);
            assert!(three[2] == ip(3) || three[2] == ip(4), "{three:?}");
            let all = top(10);
            assert_eq!(all.len(), 4, "at most the started machines");
            assert_eq!(sorted(all[..2].to_vec()), vec![ip(1), ip(5)]);
            assert_eq!(sorted(all[2..].to_vec()), vec![ip(3), ip(4)]);
        }
    }

    #[test]
    fn nearest_order_beyond_the_own_region_is_random() {
        let index = index();
        let third: std::collections::HashSet<Ipv6Addr> = (0..64)
            .map(|seed| {
                let answer = ask_seeded(
                    &index,
                    Some(ORG),
                    "top3.nearest.of.web.internal.",
                    RecordType::AAAA,
                    seed,
                );
                addresses_of(&answer)[2]
            })
            .collect();
        assert_eq!(third.len(), 2, "both other regions come third sometimes");
    }

    #[test]
    fn nearest_of_an_app_without_started_machines_is_nodata() {
        assert_nodata(&ask(ORG, "top3.nearest.of.db.internal.", RecordType::AAAA));
    }

    #[test]
    fn vms_lists_started_machines_with_their_regions() {
        assert_eq!(
            txt_strings(ORG, "vms.web.internal."),
            vec!["e1 ams,e3 ord,e4 syd,e5 ams"],
            "a short value is one string"
        );
        assert_eq!(
            txt(ORG, "all.vms.web.internal."),
            "e1 ams,e2 ams,e3 ord,e4 syd,e5 ams"
        );
        assert_eq!(txt(ORG, "all.vms.db.internal."), "d1 ams");
        assert_nodata(&ask(ORG, "vms.db.internal.", RecordType::TXT));
    }

    #[test]
    fn regions_lists_each_region_with_a_started_machine_once_sorted() {
        assert_eq!(txt(ORG, "regions.web.internal."), "ams,ord,syd");
        assert_eq!(txt(ORG, "all.regions.db.internal."), "ams");
        assert_nodata(&ask(ORG, "regions.db.internal.", RecordType::TXT));
    }

    #[test]
    fn apps_lists_the_callers_org_only_sorted() {
        assert_eq!(txt(ORG, "_apps.internal."), "db,web");
        assert_eq!(txt(OTHER_ORG, "_apps.internal."), "secret");
        assert_nodata(&ask(EMPTY_ORG, "_apps.internal.", RecordType::TXT));
    }

    #[test]
    fn instances_list_id_app_address_and_region() {
        assert_eq!(
            txt(ORG, "_instances.internal."),
            "instance=e1,app=web,ip=fdaa:0:7:1::1:2,region=ams;\
             instance=e3,app=web,ip=fdaa:0:7:3::1:2,region=ord;\
             instance=e4,app=web,ip=fdaa:0:7:4::1:2,region=syd;\
             instance=e5,app=web,ip=fdaa:0:7:5::1:2,region=ams"
        );
        assert_eq!(
            txt(ORG, "all._instances.internal."),
            "instance=d1,app=db,ip=fdaa:0:7:9::1:2,region=ams;\
             instance=e1,app=web,ip=fdaa:0:7:1::1:2,region=ams;\
             instance=e2,app=web,ip=fdaa:0:7:2::1:2,region=ams;\
             instance=e3,app=web,ip=fdaa:0:7:3::1:2,region=ord;\
             instance=e4,app=web,ip=fdaa:0:7:4::1:2,region=syd;\
             instance=e5,app=web,ip=fdaa:0:7:5::1:2,region=ams"
        );
        assert_eq!(
            txt(OTHER_ORG, "_instances.internal."),
            "instance=s1,app=secret,ip=fdaa:0:7:14::1:2,region=ams"
        );
    }

    #[test]
    fn long_txt_values_are_split_into_strings_of_one_record() {
        let machines: Vec<MachineRecords> = (0..40u16)
            .map(|n| machine(&format!("machine{n:02}"), "ams", n, true))
            .collect();
        let expected: Vec<String> = machines
            .iter()
            .map(|machine| format!("{} ams", machine.id))
            .collect();
        let expected = expected.join(",");
        assert!(expected.len() > 255);
        let snapshot = DnsSnapshot {
            orgs: HashMap::from([(
                ORG,
                OrgDirectory {
                    apps: vec![AppRecords {
                        name: "big".to_owned(),
                        machines,
                    }],
                },
            )]),
        };
        let answer = ask_seeded(
            &Index::build(snapshot, 1),
            Some(ORG),
            "vms.big.internal.",
            RecordType::TXT,
            0,
        );
        assert_eq!(answer.answers.len(), 1);
        let RData::TXT(txt) = &answer.answers[0].data else {
            panic!("not a TXT");
        };
        assert!(txt.txt_data.len() > 1);
        assert!(txt.txt_data.iter().all(|s| s.len() <= 255));
        assert!(
            txt.txt_data[..txt.txt_data.len() - 1]
                .iter()
                .all(|s| s.len() == 255)
        );
        assert_eq!(txt.txt_data.concat(), expected.as_bytes());
    }

    #[test]
    fn a_known_app_without_started_machines_is_nodata() {
        assert_nodata(&ask(ORG, "db.internal.", RecordType::AAAA));
        assert_nodata(&ask(ORG, "global.db.internal.", RecordType::AAAA));
    }

    #[test]
    fn unknown_names_are_nxdomain() {
        for name in [
            "nope.internal.",
            "ams.nope.internal.",
            "vms.nope.internal.",
            "_peer.internal.",
            "a.b.c.web.internal.",
            "top0.nearest.of.web.internal.",
        ] {
            assert_nxdomain(&ask(ORG, name, RecordType::AAAA));
        }
    }

    #[test]
    fn another_orgs_apps_do_not_exist_for_the_caller() {
        let foreign = ask(ORG, "secret.internal.", RecordType::AAAA);
        let missing = ask(ORG, "nope.internal.", RecordType::AAAA);
        assert_nxdomain(&foreign);
        assert_eq!(foreign, missing, "indistinguishable from a missing app");
        assert_nxdomain(&ask(ORG, "vms.secret.internal.", RecordType::TXT));
        assert_nxdomain(&ask(ORG, "s1.vm.secret.internal.", RecordType::AAAA));
        assert_nxdomain(&ask(EMPTY_ORG, "web.internal.", RecordType::AAAA));
        // Its own organization does see it.
        assert_eq!(
            addresses_of(&ask(OTHER_ORG, "secret.internal.", RecordType::AAAA)),
            vec![Ipv6Addr::new(0xfdaa, 0, 7, 20, 0, 0, 1, 2)]
        );
    }

    #[test]
    fn a_caller_outside_any_org_is_refused() {
        let answer = ask_seeded(&index(), None, "web.internal.", RecordType::AAAA, 0);
        assert_eq!(answer.code, ResponseCode::Refused);
        assert!(answer.answers.is_empty());
        assert!(answer.soa.is_none());
    }

    #[test]
    fn names_match_in_any_case_and_answers_keep_the_case_asked() {
        let answer = ask(ORG, "WEB.Internal.", RecordType::AAAA);
        assert_eq!(
            sorted(addresses_of(&answer)),
            vec![ip(1), ip(3), ip(4), ip(5)]
        );
        for record in &answer.answers {
            assert_eq!(record.name.to_string(), "WEB.Internal.");
        }
        assert_eq!(aaaa("AMS.Web.INTERNAL."), vec![ip(1), ip(5)]);
        assert_eq!(aaaa("E2.VM.web.internal."), vec![ip(2)]);
        assert_eq!(aaaa("TOP2.Nearest.Of.web.internal."), vec![ip(1), ip(5)]);
        assert_eq!(txt(ORG, "VMS.WEB.INTERNAL."), "e1 ams,e3 ord,e4 syd,e5 ams");
        assert_eq!(txt(ORG, "_APPS.internal."), "db,web");
    }

    #[test]
    fn app_names_in_the_snapshot_match_in_any_case_and_duplicates_merge() {
        let snapshot = DnsSnapshot {
            orgs: HashMap::from([(
                ORG,
                OrgDirectory {
                    apps: vec![
                        AppRecords {
                            name: "Api".to_owned(),
                            machines: vec![machine("a1", "ams", 1, true)],
                        },
                        AppRecords {
                            name: "Api".to_owned(),
                            machines: vec![machine("a2", "ord", 2, true)],
                        },
                    ],
                },
            )]),
        };
        let index = Index::build(snapshot, 1);
        let answer = ask_seeded(&index, Some(ORG), "api.internal.", RecordType::AAAA, 0);
        assert_eq!(sorted(addresses_of(&answer)), vec![ip(1), ip(2)]);
        let apps = ask_seeded(&index, Some(ORG), "_apps.internal.", RecordType::TXT, 0);
        let RData::TXT(txt) = &apps.answers[0].data else {
            panic!("not a TXT");
        };
        assert_eq!(txt.txt_data.concat(), b"Api");
    }

    #[test]
    fn other_record_types_of_existing_names_are_nodata() {
        assert_nodata(&ask(ORG, "web.internal.", RecordType::A));
        assert_nodata(&ask(ORG, "web.internal.", RecordType::TXT));
        assert_nodata(&ask(ORG, "web.internal.", RecordType::MX));
        assert_nodata(&ask(ORG, "e1.vm.web.internal.", RecordType::A));
        assert_nodata(&ask(ORG, "vms.web.internal.", RecordType::AAAA));
        assert_nodata(&ask(ORG, "_apps.internal.", RecordType::AAAA));
        assert_nodata(&ask(ORG, "_instances.internal.", RecordType::A));
    }

    #[test]
    fn any_returns_what_the_name_holds() {
        assert_eq!(
            sorted(addresses_of(&ask(ORG, "web.internal.", RecordType::ANY))),
            vec![ip(1), ip(3), ip(4), ip(5)]
        );
        assert_eq!(
            ask(ORG, "vms.web.internal.", RecordType::ANY).answers.len(),
            1
        );
    }

    #[test]
    fn the_zone_apex_has_the_soa() {
        let answer = ask(ORG, "internal.", RecordType::SOA);
        assert_eq!(answer.code, ResponseCode::NoError);
        assert_eq!(answer.answers.len(), 1);
        assert_eq!(answer.answers[0].record_type(), RecordType::SOA);
        assert_nodata(&ask(ORG, "internal.", RecordType::AAAA));
    }
}
