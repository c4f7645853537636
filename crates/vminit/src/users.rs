//! The image's /etc/passwd and /etc/group, and Docker's USER resolution.
//!
//! Parsed by hand: a static init cannot rely on the libc's NSS, and the
//! files belong to the image, not to whatever libc it ships (or doesn't).

use std::io;
use std::path::{Path, PathBuf};

/// The highest uid/gid Docker accepts.
const MAX_ID: u32 = i32::MAX as u32;

/// One line of /etc/passwd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
}

/// One line of /etc/group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// The identity a process runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (set with setgroups; may be empty).
    pub supplementary: Vec<u32>,
    /// Home directory from passwd, `/` when the user has no entry.
    pub home: String,
    /// The passwd name, when the user has an entry.
    pub name: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("USER {spec:?}: no user named {user:?} in the image's /etc/passwd; add it to the image or use a numeric uid")]
    UnknownUser { spec: String, user: String },
    #[error("USER {spec:?}: no group named {group:?} in the image's /etc/group; add it to the image or use a numeric gid")]
    UnknownGroup { spec: String, group: String },
    #[error("USER {spec:?}: id {id} is out of range (0 to {MAX_ID})")]
    IdOutOfRange { spec: String, id: String },
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Parses /etc/passwd text; comments, blank and malformed lines are skipped
/// (as libc does), so one bad line does not hide the others.
pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 7 || f[0].is_empty() {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].trim().parse().ok()?,
                gid: f[3].trim().parse().ok()?,
                home: f[5].to_string(),
                shell: f[6].to_string(),
            })
        })
        .collect()
}

/// Parses /etc/group text; malformed lines are skipped.
pub fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 4 || f[0].is_empty() {
                return None;
            }
            Some(GroupEntry {
                name: f[0].to_string(),
                gid: f[2].trim().parse().ok()?,
                members: f[3]
                    .split(',')
                    .map(str::trim)
                    .filter(|m| !m.is_empty())
                    .map(str::to_string)
                    .collect(),
            })
        })
        .collect()
}

/// Reads and parses `<root>/etc/passwd`; a missing file is an empty list
/// (FROM scratch images often have none).
pub fn read_passwd(root: &Path) -> Result<Vec<PasswdEntry>, UserError> {
    Ok(parse_passwd(&read_optional(&root.join("etc/passwd"))?))
}

/// Reads and parses `<root>/etc/group`; a missing file is an empty list.
pub fn read_group(root: &Path) -> Result<Vec<GroupEntry>, UserError> {
    Ok(parse_group(&read_optional(&root.join("etc/group"))?))
}

fn read_optional(path: &Path) -> Result<String, UserError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
        Err(source) => Err(UserError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn parse_id(spec: &str, text: &str) -> Result<Option<u32>, UserError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    match text.parse::<u64>() {
        Ok(n) if n <= u64::from(MAX_ID) => Ok(Some(n as u32)),
        _ => Err(UserError::IdOutOfRange {
            spec: spec.to_string(),
            id: text.to_string(),
        }),
    }
}

/// Resolves a Docker USER value (`""`, `name`, `uid`, `name:group`,
/// `uid:gid`, any mix) the way Docker's runtime does:
/// - the user is looked up by name or uid; a numeric uid with no entry runs
///   with gid 0 and home `/`; an unknown name is an error;
/// - an explicit group is looked up by name or gid (numeric may be absent
///   from /etc/group); an unknown group name is an error;
/// - without an explicit group, the supplementary groups are those listing
///   the user's name as a member.
pub fn resolve_user(
    spec: &str,
    passwd: &[PasswdEntry],
    groups: &[GroupEntry],
) -> Result<ExecUser, UserError> {
    let (user_arg, group_arg) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user_arg = if user_arg.is_empty() { "0" } else { user_arg };
    let uid_num = parse_id(spec, user_arg)?;

    let mut out = ExecUser {
        uid: 0,
        gid: 0,
        supplementary: Vec::new(),
        home: "/".to_string(),
        name: None,
    };
    match passwd
        .iter()
        .find(|p| p.name == user_arg || Some(p.uid) == uid_num)
    {
        Some(p) => {
            out.uid = p.uid;
            out.gid = p.gid;
            out.home = if p.home.is_empty() {
                "/".into()
            } else {
                p.home.clone()
            };
            out.name = Some(p.name.clone());
        }
        None => match uid_num {
            Some(uid) => out.uid = uid,
            None => {
                return Err(UserError::UnknownUser {
                    spec: spec.to_string(),
                    user: user_arg.to_string(),
                })
            }
        },
    }

    match group_arg.filter(|g| !g.is_empty()) {
        Some(group_arg) => {
            let gid_num = parse_id(spec, group_arg)?;
            match groups
                .iter()
                .find(|g| g.name == group_arg || Some(g.gid) == gid_num)
            {
                Some(g) => out.gid = g.gid,
                None => match gid_num {
                    Some(gid) => out.gid = gid,
                    None => {
                        return Err(UserError::UnknownGroup {
                            spec: spec.to_string(),
                            group: group_arg.to_string(),
                        })
                    }
                },
            }
        }
        None => {
            if let Some(name) = &out.name {
                out.supplementary = groups
                    .iter()
                    .filter(|g| g.members.iter().any(|m| m == name))
                    .map(|g| g.gid)
                    .collect();
            }
        }
    }
    Ok(out)
}

/// [`resolve_user`] against the files under `root`.
pub fn resolve_user_in_root(root: &Path, spec: &str) -> Result<ExecUser, UserError> {
    resolve_user(spec, &read_passwd(root)?, &read_group(root)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/sh
# a comment

daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
broken line without fields
bad:x:notanumber:1::/:/bin/sh
app:x:1000:1000:App user,,,:/home/app:/bin/bash
nohome:x:1001:1001::::
";
    const GROUP: &str = "\
root:x:0:
daemon:x:1:
wheel:x:10:app,other
audio:x:29: app
app:x:1000:
staff:x:50:
junk
";

    fn resolve(spec: &str) -> Result<ExecUser, UserError> {
        resolve_user(spec, &parse_passwd(PASSWD), &parse_group(GROUP))
    }

    #[test]
    fn parses_passwd_and_skips_bad_lines() {
        let p = parse_passwd(PASSWD);
        let names: Vec<_> = p.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["root", "daemon", "app", "nohome"]);
        assert_eq!(p[2].uid, 1000);
        assert_eq!(p[2].home, "/home/app");
        assert_eq!(p[2].shell, "/bin/bash");
    }

    #[test]
    fn parses_group_members() {
        let g = parse_group(GROUP);
        assert_eq!(g.len(), 6);
        assert_eq!(g[2].name, "wheel");
        assert_eq!(g[2].members, ["app", "other"]);
        assert_eq!(g[3].members, ["app"], "spaces around members are trimmed");
        assert!(g[0].members.is_empty());
    }

    #[test]
    fn empty_user_is_root() {
        let u = resolve("").unwrap();
        assert_eq!((u.uid, u.gid), (0, 0));
        assert_eq!(u.home, "/root");
        assert_eq!(u.name.as_deref(), Some("root"));
    }

    #[test]
    fn by_name_gets_primary_and_supplementary_groups() {
        let u = resolve("app").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1000));
        assert_eq!(u.home, "/home/app");
        assert_eq!(u.supplementary, [10, 29]);
    }

    #[test]
    fn by_uid_with_entry_and_without() {
        let u = resolve("1000").unwrap();
        assert_eq!(u.name.as_deref(), Some("app"));
        assert_eq!(u.gid, 1000);
        let u = resolve("4242").unwrap();
        assert_eq!(
            (u.uid, u.gid),
            (4242, 0),
            "unknown numeric uid runs with gid 0"
        );
        assert_eq!(u.home, "/");
        assert!(u.supplementary.is_empty());
    }

    #[test]
    fn explicit_group_by_name_or_id_and_no_supplementary() {
        let u = resolve("app:staff").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 50));
        assert!(u.supplementary.is_empty());
        let u = resolve("1000:4242").unwrap();
        assert_eq!(u.gid, 4242);
        let u = resolve("4242:wheel").unwrap();
        assert_eq!((u.uid, u.gid), (4242, 10));
        let u = resolve("app:").unwrap();
        assert_eq!(u.gid, 1000, "an empty group part means no explicit group");
    }

    #[test]
    fn empty_home_falls_back_to_root_dir() {
        assert_eq!(resolve("nohome").unwrap().home, "/");
    }

    #[test]
    fn errors_name_the_missing_piece() {
        let e = resolve("nobody").unwrap_err();
        assert!(matches!(e, UserError::UnknownUser { ref user, .. } if user == "nobody"));
        assert!(e.to_string().contains("/etc/passwd"));
        let e = resolve("app:nogroup").unwrap_err();
        assert!(matches!(e, UserError::UnknownGroup { ref group, .. } if group == "nogroup"));
        assert!(matches!(
            resolve("99999999999").unwrap_err(),
            UserError::IdOutOfRange { .. }
        ));
        assert!(matches!(
            resolve("0:4294967295").unwrap_err(),
            UserError::IdOutOfRange { .. }
        ));
    }

    #[test]
    fn reads_files_under_a_root_and_tolerates_missing_ones() {
        let dir = tempfile::tempdir().unwrap();
        // No /etc at all: root still resolves, names do not.
        let u = resolve_user_in_root(dir.path(), "").unwrap();
        assert_eq!((u.uid, u.home.as_str()), (0, "/"));
        assert!(resolve_user_in_root(dir.path(), "app").is_err());
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/passwd"), PASSWD).unwrap();
        std::fs::write(dir.path().join("etc/group"), GROUP).unwrap();
        let u = resolve_user_in_root(dir.path(), "app").unwrap();
        assert_eq!(u.supplementary, [10, 29]);
    }
}
