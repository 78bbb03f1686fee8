//! Users and groups from the guest's `/etc/passwd` and `/etc/group`, parsed
//! here rather than through libc so that the static binary never loads NSS.

use std::path::Path;

/// One line of `/etc/passwd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

/// One line of `/etc/group`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// The identity a process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    pub supplementary_gids: Vec<u32>,
    /// Home from passwd, `/` when the user has no entry.
    pub home: String,
}

/// Parses passwd text, skipping comments and malformed lines.
pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() < 4 {
                return None;
            }
            Some(PasswdEntry {
                name: fields[0].to_string(),
                uid: fields[2].parse().ok()?,
                gid: fields[3].parse().ok()?,
                home: fields.get(5).copied().unwrap_or("").to_string(),
            })
        })
        .collect()
}

/// Parses group text, skipping comments and malformed lines.
pub fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() < 3 {
                return None;
            }
            let members = fields
                .get(3)
                .map(|list| {
                    list.split(',')
                        .map(str::trim)
                        .filter(|m| !m.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default();
            Some(GroupEntry {
                name: fields[0].to_string(),
                gid: fields[2].parse().ok()?,
                members,
            })
        })
        .collect()
}

/// Resolves a Docker-style user spec (`""`, `name`, `uid`, `name:group`,
/// `uid:gid`, any mix) against passwd and group text, with runc's rules: a
/// name must exist, a number need not (gid 0, home `/`); supplementary groups
/// come from group membership when no group was given.
pub fn resolve_user(
    spec: &str,
    passwd_text: &str,
    group_text: &str,
) -> Result<ResolvedUser, String> {
    let passwd = parse_passwd(passwd_text);
    let groups = parse_group(group_text);
    let (user_part, group_part) = match spec.split_once(':') {
        Some((user, group)) => (user.trim(), Some(group.trim())),
        None => (spec.trim(), None),
    };
    let user_part = if user_part.is_empty() { "0" } else { user_part };

    let entry = match user_part.parse::<u32>() {
        Ok(uid) => passwd.iter().find(|entry| entry.uid == uid),
        Err(_) => Some(
            passwd
                .iter()
                .find(|entry| entry.name == user_part)
                .ok_or_else(|| {
                    format!("unable to find user {user_part}: no matching entries in passwd file")
                })?,
        ),
    };
    let uid = match entry {
        Some(entry) => entry.uid,
        None => user_part
            .parse::<u32>()
            .map_err(|_| format!("invalid user {user_part:?}"))?,
    };
    let home = entry
        .map(|entry| entry.home.clone())
        .filter(|home| !home.is_empty())
        .unwrap_or_else(|| "/".to_string());

    let (gid, supplementary_gids) = match group_part.filter(|group| !group.is_empty()) {
        Some(group) => {
            let gid = match group.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => groups
                    .iter()
                    .find(|entry| entry.name == group)
                    .map(|entry| entry.gid)
                    .ok_or_else(|| {
                        format!("unable to find group {group}: no matching entries in group file")
                    })?,
            };
            (gid, Vec::new())
        }
        None => {
            let gid = entry.map(|entry| entry.gid).unwrap_or(0);
            let mut supplementary = Vec::new();
            if let Some(entry) = entry {
                for group in groups
                    .iter()
                    .filter(|group| group.members.contains(&entry.name))
                {
                    if !supplementary.contains(&group.gid) {
                        supplementary.push(group.gid);
                    }
                }
            }
            (gid, supplementary)
        }
    };
    Ok(ResolvedUser {
        uid,
        gid,
        supplementary_gids,
        home,
    })
}

/// [`resolve_user`] against `<root>/etc/passwd` and `<root>/etc/group`;
/// a missing file counts as empty.
pub fn resolve_user_in_root(spec: &str, root: &Path) -> Result<ResolvedUser, String> {
    let read = |name: &str| -> Result<String, String> {
        let path = root.join("etc").join(name);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(error) => Err(format!("reading {}: {error}", path.display())),
        }
    };
    resolve_user(spec, &read("passwd")?, &read("group")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/bash
# a comment
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
app:x:1000:1000:App,,,:/home/app:/bin/sh
nohome:x:1001:1001::
broken line
";
    const GROUP: &str = "\
root:x:0:
daemon:x:1:
app:x:1000:
nohome:x:1001:
docker:x:999:app,daemon
audio:x:29: app
video:x:44:daemon
";

    fn resolve(spec: &str) -> Result<ResolvedUser, String> {
        resolve_user(spec, PASSWD, GROUP)
    }

    #[test]
    fn parses_entries() {
        let passwd = parse_passwd(PASSWD);
        assert_eq!(passwd.len(), 4);
        assert_eq!(
            passwd[2],
            PasswdEntry {
                name: "app".into(),
                uid: 1000,
                gid: 1000,
                home: "/home/app".into()
            }
        );
        let groups = parse_group(GROUP);
        assert_eq!(groups[4].members, vec!["app", "daemon"]);
        assert_eq!(groups[5].members, vec!["app"]);
    }

    #[test]
    fn empty_spec_is_root() {
        let user = resolve("").unwrap();
        assert_eq!((user.uid, user.gid, user.home.as_str()), (0, 0, "/root"));
        assert!(user.supplementary_gids.is_empty());
    }

    #[test]
    fn name_resolves_uid_gid_home_and_groups() {
        let user = resolve("app").unwrap();
        assert_eq!(
            user,
            ResolvedUser {
                uid: 1000,
                gid: 1000,
                supplementary_gids: vec![999, 29],
                home: "/home/app".into()
            }
        );
    }

    #[test]
    fn uid_in_passwd_behaves_like_its_name() {
        assert_eq!(resolve("1000").unwrap(), resolve("app").unwrap());
        assert_eq!(resolve("1").unwrap().supplementary_gids, vec![999, 44]);
    }

    #[test]
    fn unknown_uid_is_allowed_with_gid_zero() {
        let user = resolve("4242").unwrap();
        assert_eq!(
            user,
            ResolvedUser {
                uid: 4242,
                gid: 0,
                supplementary_gids: vec![],
                home: "/".into()
            }
        );
    }

    #[test]
    fn unknown_name_is_an_error() {
        let error = resolve("ghost").unwrap_err();
        assert!(error.contains("unable to find user ghost"), "{error}");
    }

    #[test]
    fn explicit_group_by_name_or_number_drops_supplementary_groups() {
        let user = resolve("app:docker").unwrap();
        assert_eq!((user.uid, user.gid), (1000, 999));
        assert!(user.supplementary_gids.is_empty());
        let user = resolve("1000:44").unwrap();
        assert_eq!((user.uid, user.gid), (1000, 44));
        let user = resolve("4242:4343").unwrap();
        assert_eq!((user.uid, user.gid, user.home.as_str()), (4242, 4343, "/"));
        let error = resolve("app:nogroup").unwrap_err();
        assert!(error.contains("unable to find group nogroup"), "{error}");
    }

    #[test]
    fn empty_home_falls_back_to_slash() {
        assert_eq!(resolve("nohome").unwrap().home, "/");
    }

    #[test]
    fn missing_files_count_as_empty() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(resolve_user_in_root("", root.path()).unwrap().home, "/");
        assert!(resolve_user_in_root("app", root.path()).is_err());
        std::fs::create_dir(root.path().join("etc")).unwrap();
        std::fs::write(root.path().join("etc/passwd"), PASSWD).unwrap();
        std::fs::write(root.path().join("etc/group"), GROUP).unwrap();
        assert_eq!(resolve_user_in_root("app", root.path()).unwrap().gid, 1000);
    }
}
