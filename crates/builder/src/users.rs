//! USER and `--chown` resolution through the image's own `/etc/passwd` and
//! `/etc/group`, as Docker (runc's user lookup) does it.

use rustix::fs::OFlags;

use crate::fsutil::Root;
use crate::sandbox::Credentials;

/// A resolved user with its home directory (for `HOME`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub creds: Credentials,
    pub home: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("unable to find user {0}: no matching entries in the image's /etc/passwd")]
    NoUser(String),
    #[error("unable to find group {0}: no matching entries in the image's /etc/group")]
    NoGroup(String),
    #[error("invalid user specification {0:?}: expected user, uid, user:group or uid:gid")]
    Invalid(String),
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn read_file(root: &Root, rel: &str) -> String {
    let Ok(fd) = root.open_at(rel, OFlags::RDONLY) else {
        return String::new();
    };
    let mut f = std::fs::File::from(fd);
    let mut s = String::new();
    let _ = std::io::Read::read_to_string(&mut f, &mut s);
    s
}

fn passwd(root: &Root) -> Vec<PasswdEntry> {
    read_file(root, "etc/passwd")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(PasswdEntry {
                name: f.first()?.to_string(),
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
                home: f.get(5).unwrap_or(&"/").to_string(),
            })
        })
        .collect()
}

fn groups(root: &Root) -> Vec<GroupEntry> {
    read_file(root, "etc/group")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(GroupEntry {
                name: f.first()?.to_string(),
                gid: f.get(2)?.parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .filter(|s| !s.is_empty())
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// Resolves `spec` (`user`, `uid`, `user:group`, `uid:gid`; empty = root).
pub fn resolve_user(root: &Root, spec: &str) -> Result<User, UserError> {
    let spec = spec.trim();
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user_part.is_empty() && group_part.is_some() {
        return Err(UserError::Invalid(spec.to_owned()));
    }
    let user_part = if user_part.is_empty() { "0" } else { user_part };
    let pw = passwd(root);
    let (uid, mut gid, home, name) = match user_part.parse::<u32>() {
        Ok(uid) => match pw.iter().find(|e| e.uid == uid) {
            Some(e) => (uid, e.gid, e.home.clone(), Some(e.name.clone())),
            None => (uid, 0, "/".to_owned(), None),
        },
        Err(_) => match pw.iter().find(|e| e.name == user_part) {
            Some(e) => (e.uid, e.gid, e.home.clone(), Some(e.name.clone())),
            None => return Err(UserError::NoUser(user_part.to_owned())),
        },
    };
    let grp = groups(root);
    let mut supplementary = Vec::new();
    match group_part {
        Some(g) if !g.is_empty() => {
            gid = resolve_group_in(&grp, g)?;
        }
        Some(_) => return Err(UserError::Invalid(spec.to_owned())),
        None => {
            if let Some(name) = &name {
                supplementary = grp
                    .iter()
                    .filter(|e| e.members.iter().any(|m| m == name))
                    .map(|e| e.gid)
                    .collect();
            }
        }
    }
    if !supplementary.contains(&gid) {
        supplementary.insert(0, gid);
    }
    Ok(User {
        creds: Credentials {
            uid,
            gid,
            groups: supplementary,
        },
        home,
    })
}

fn resolve_group_in(grp: &[GroupEntry], g: &str) -> Result<u32, UserError> {
    match g.parse::<u32>() {
        Ok(gid) => Ok(gid),
        Err(_) => grp
            .iter()
            .find(|e| e.name == g)
            .map(|e| e.gid)
            .ok_or_else(|| UserError::NoGroup(g.to_owned())),
    }
}

/// Resolves a `--chown` value: `user[:group]` where a missing group is the
/// user's primary group for names and the same number for numeric ids.
pub fn resolve_chown(root: &Root, spec: &str) -> Result<(u32, u32), UserError> {
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if u.is_empty() {
        return Err(UserError::Invalid(spec.to_owned()));
    }
    let pw = passwd(root);
    let (uid, primary) = match u.parse::<u32>() {
        Ok(uid) => (uid, uid),
        Err(_) => match pw.iter().find(|e| e.name == u) {
            Some(e) => (e.uid, e.gid),
            None => return Err(UserError::NoUser(u.to_owned())),
        },
    };
    let gid = match g {
        Some(g) if !g.is_empty() => resolve_group_in(&groups(root), g)?,
        Some(_) => return Err(UserError::Invalid(spec.to_owned())),
        None => primary,
    };
    Ok((uid, gid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::Scope;

    fn root_with(passwd: &str, group: &str) -> (tempfile::TempDir, Root) {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        std::fs::write(d.path().join("etc/passwd"), passwd).unwrap();
        std::fs::write(d.path().join("etc/group"), group).unwrap();
        let r = Root::open(d.path(), Scope::InRoot).unwrap();
        (d, r)
    }

    #[test]
    fn resolves_names_ids_and_groups() {
        let (_d, r) = root_with(
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
            "root:x:0:\napp:x:1000:\nstaff:x:50:app,other\n",
        );
        let u = resolve_user(&r, "app").unwrap();
        assert_eq!(
            u.creds,
            Credentials {
                uid: 1000,
                gid: 1000,
                groups: vec![1000, 50]
            }
        );
        assert_eq!(u.home, "/home/app");
        let u = resolve_user(&r, "app:staff").unwrap();
        assert_eq!((u.creds.uid, u.creds.gid), (1000, 50));
        let u = resolve_user(&r, "4242").unwrap();
        assert_eq!((u.creds.uid, u.creds.gid, u.home.as_str()), (4242, 0, "/"));
        assert_eq!(resolve_user(&r, "").unwrap().creds.uid, 0);
        assert_eq!(
            resolve_user(&r, "nobody"),
            Err(UserError::NoUser("nobody".into()))
        );
        assert_eq!(
            resolve_user(&r, "app:nogroup"),
            Err(UserError::NoGroup("nogroup".into()))
        );
        assert_eq!(resolve_chown(&r, "app").unwrap(), (1000, 1000));
        assert_eq!(resolve_chown(&r, "7:staff").unwrap(), (7, 50));
        assert_eq!(resolve_chown(&r, "7").unwrap(), (7, 7));
        assert!(resolve_chown(&r, "ghost").is_err());
    }
}
