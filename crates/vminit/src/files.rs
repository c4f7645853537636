//! The files the init writes into the guest: /etc/hostname, /etc/hosts,
//! /etc/resolv.conf, /etc/nsswitch.conf, /etc/profile.d/run-env.sh and SSH
//! authorized_keys. Every function takes the root it writes under.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::users::PasswdEntry;

/// Address /etc/hosts gives the VM's own name when it has no network
/// address (Debian's convention for a host without a fixed address).
pub const NO_ADDRESS_HOST_IP: &str = "127.0.1.1";

/// Written when the image has no /etc/nsswitch.conf, so glibc programs
/// resolve names from /etc/hosts first, then DNS.
pub const NSSWITCH_DEFAULT: &str = "\
# Written by the firebuild guest init because the image had none.
passwd:         files
group:          files
shadow:         files
hosts:          files dns
networks:       files
protocols:      files
services:       files
ethers:         files
rpc:            files
";

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid hostname {0:?}: use 1 to 64 letters, digits, '-' and '.'")]
    BadHostname(String),
    #[error(
        "invalid name server {0:?} in the metadata: expected IP addresses separated by commas"
    )]
    BadNameserver(String),
    #[error("SSH keys for user {0:?}: no such user in the image's /etc/passwd; pick an existing user (--ssh-user)")]
    UnknownSshUser(String),
}

fn write_err(path: &Path) -> impl FnOnce(io::Error) -> FileError + '_ {
    move |source| FileError::Write {
        path: path.to_path_buf(),
        source,
    }
}

/// Joins an absolute guest path under `root`.
pub fn under(root: &Path, guest_path: &str) -> PathBuf {
    root.join(guest_path.trim_start_matches('/'))
}

/// Writes a file whole or not at all: a temporary file in the same directory
/// renamed over the target. A symlink at the target (e.g. resolv.conf
/// pointing into /run) is replaced by the file, not followed.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), FileError> {
    let parent = path.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(parent).map_err(write_err(parent))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = parent.join(format!(".{name}.vminit-tmp"));
    let result = (|| {
        let _ = fs::remove_file(&tmp);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(contents)?;
        // The umask may have narrowed the mode.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        drop(f);
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(write_err(path))
}

/// Checks a hostname as the kernel and resolvers accept it.
pub fn validate_hostname(name: &str) -> Result<(), FileError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['-', '.'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(FileError::BadHostname(name.to_string()))
    }
}

/// Writes `<root>/etc/hostname`.
pub fn write_hostname(root: &Path, hostname: &str) -> Result<(), FileError> {
    validate_hostname(hostname)?;
    write_atomic(
        &under(root, "/etc/hostname"),
        format!("{hostname}\n").as_bytes(),
        0o644,
    )
}

/// The new /etc/hosts: the image's lines with any stale mapping of
/// `hostname` removed, localhost lines added if the image had none, then
/// the VM's own name on its address (or [`NO_ADDRESS_HOST_IP`]).
pub fn hosts_content(existing: &str, hostname: &str, ip: Option<IpAddr>) -> String {
    let short = hostname.split('.').next().unwrap_or(hostname);
    let ours = |n: &str| n == hostname || n == short;
    let mut kept = Vec::new();
    let mut has_localhost = false;
    for line in existing.lines() {
        let (data, comment) = match line.find('#') {
            Some(i) => line.split_at(i),
            None => (line, ""),
        };
        let mut fields = data.split_whitespace();
        let Some(addr) = fields.next() else {
            kept.push(line.to_string());
            continue;
        };
        let names: Vec<&str> = fields.collect();
        let left: Vec<&str> = names.iter().copied().filter(|n| !ours(n)).collect();
        if left.is_empty() {
            continue;
        }
        has_localhost |= left.contains(&"localhost");
        if left.len() == names.len() {
            kept.push(line.to_string());
        } else {
            let mut l = format!("{addr}\t{}", left.join(" "));
            if !comment.is_empty() {
                l.push(' ');
                l.push_str(comment);
            }
            kept.push(l);
        }
    }
    while kept.last().is_some_and(|l| l.trim().is_empty()) {
        kept.pop();
    }
    let mut out = String::new();
    if !has_localhost {
        out.push_str("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    }
    for l in kept {
        out.push_str(&l);
        out.push('\n');
    }
    let addr = ip.map_or_else(|| NO_ADDRESS_HOST_IP.to_string(), |a| a.to_string());
    if short != hostname {
        out.push_str(&format!("{addr}\t{hostname} {short}\n"));
    } else {
        out.push_str(&format!("{addr}\t{hostname}\n"));
    }
    out
}

/// Rewrites `<root>/etc/hosts` with [`hosts_content`].
pub fn write_hosts(root: &Path, hostname: &str, ip: Option<IpAddr>) -> Result<(), FileError> {
    validate_hostname(hostname)?;
    let path = under(root, "/etc/hosts");
    let existing = match fs::read(&path) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(source) => return Err(FileError::Read { path, source }),
    };
    write_atomic(
        &path,
        hosts_content(&existing, hostname, ip).as_bytes(),
        0o644,
    )
}

/// Parses the metadata's name servers: addresses separated by commas or
/// whitespace.
pub fn parse_nameservers(text: &str) -> Result<Vec<IpAddr>, FileError> {
    text.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .map_err(|_| FileError::BadNameserver(s.to_string()))
        })
        .collect()
}

/// Name servers the kernel learned from `ip=` (its /proc/net/pnp file).
pub fn nameservers_from_pnp(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| l.strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().parse().ok())
        .filter(|a: &IpAddr| !a.is_unspecified())
        .collect()
}

/// The /etc/resolv.conf text for these servers.
pub fn resolv_content(nameservers: &[IpAddr]) -> String {
    let mut out = String::from("# Written by the firebuild guest init.\n");
    for ns in nameservers {
        out.push_str(&format!("nameserver {ns}\n"));
    }
    out
}

/// Writes `<root>/etc/resolv.conf`; with no servers the image's file is
/// left alone. Returns whether it wrote.
pub fn write_resolv(root: &Path, nameservers: &[IpAddr]) -> Result<bool, FileError> {
    if nameservers.is_empty() {
        return Ok(false);
    }
    write_atomic(
        &under(root, "/etc/resolv.conf"),
        resolv_content(nameservers).as_bytes(),
        0o644,
    )?;
    Ok(true)
}

/// Writes [`NSSWITCH_DEFAULT`] when `<root>/etc/nsswitch.conf` is absent.
/// Returns whether it wrote.
pub fn ensure_nsswitch(root: &Path) -> Result<bool, FileError> {
    let path = under(root, "/etc/nsswitch.conf");
    // symlink_metadata: a (even dangling) symlink counts as present.
    if fs::symlink_metadata(&path).is_ok() {
        return Ok(false);
    }
    write_atomic(&path, NSSWITCH_DEFAULT.as_bytes(), 0o644)?;
    Ok(true)
}

fn is_shell_name(key: &str) -> bool {
    let mut bytes = key.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// The /etc/profile.d/run-env.sh text: one `export KEY='value'` per
/// variable. Keys a shell cannot name are left out (they still reach the
/// entrypoint through its environment).
pub fn env_script_content(env: &BTreeMap<String, String>) -> String {
    let mut out = String::from("# Written by the firebuild guest init: the run's environment.\n");
    for (k, v) in env.iter().filter(|(k, _)| is_shell_name(k)) {
        out.push_str(&format!("export {k}={}\n", shell_quote(v)));
    }
    out
}

/// Writes `<root>/etc/profile.d/run-env.sh`, mode 0600 and owned by
/// `owner` (the run's user, whose login shells source it): the run's
/// environment may hold secrets no other user of the guest should read.
pub fn write_env_script(
    root: &Path,
    env: &BTreeMap<String, String>,
    owner: (u32, u32),
) -> Result<(), FileError> {
    let path = under(root, "/etc/profile.d/run-env.sh");
    write_atomic(&path, env_script_content(env).as_bytes(), 0o600)?;
    chown(&path, owner.0, owner.1)
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), FileError> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(write_err(path))
}

/// Installs SSH keys for `user` (looked up in the image's passwd): creates
/// the home and `~/.ssh` (0700) as needed, and adds each key not already in
/// `~/.ssh/authorized_keys` (0600); both owned by the user. Returns the
/// authorized_keys path.
pub fn install_ssh_keys(
    root: &Path,
    user: &str,
    keys: &str,
    passwd: &[PasswdEntry],
) -> Result<PathBuf, FileError> {
    let entry = passwd
        .iter()
        .find(|p| p.name == user)
        .ok_or_else(|| FileError::UnknownSshUser(user.to_string()))?;
    let (uid, gid) = (entry.uid, entry.gid);
    let home = under(
        root,
        if entry.home.is_empty() {
            "/"
        } else {
            &entry.home
        },
    );
    if !home.exists() {
        fs::create_dir_all(&home).map_err(write_err(&home))?;
        fs::set_permissions(&home, fs::Permissions::from_mode(0o755)).map_err(write_err(&home))?;
        chown(&home, uid, gid)?;
    }
    let ssh = home.join(".ssh");
    if !ssh.is_dir() {
        fs::create_dir(&ssh).map_err(write_err(&ssh))?;
    }
    fs::set_permissions(&ssh, fs::Permissions::from_mode(0o700)).map_err(write_err(&ssh))?;
    chown(&ssh, uid, gid)?;

    let path = ssh.join("authorized_keys");
    let existing = match fs::read(&path) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(source) => return Err(FileError::Read { path, source }),
    };
    let mut lines: Vec<String> = existing.lines().map(str::to_string).collect();
    for key in keys.lines().map(str::trim).filter(|k| !k.is_empty()) {
        if !lines.iter().any(|l| l.trim() == key) {
            lines.push(key.to_string());
        }
    }
    let mut text = lines.join("\n");
    text.push('\n');
    write_atomic(&path, text.as_bytes(), 0o600)?;
    chown(&path, uid, gid)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::users::parse_passwd;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn hostname_file_and_validation() {
        let dir = tempfile::tempdir().unwrap();
        write_hostname(dir.path(), "quiet-otter").unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join("etc/hostname")).unwrap(),
            "quiet-otter\n"
        );
        for bad in ["", "-x", "a b", "a_b", "x\ny", &"a".repeat(65)] {
            assert!(
                matches!(
                    write_hostname(dir.path(), bad),
                    Err(FileError::BadHostname(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn hosts_keeps_localhost_and_adds_own_name() {
        let existing = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n# comment\n127.0.1.1\toldname vm1\n10.0.0.9 vm1\n";
        let out = hosts_content(existing, "vm1", Some("192.168.127.2".parse().unwrap()));
        assert_eq!(
            out,
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n# comment\n127.0.1.1\toldname\n192.168.127.2\tvm1\n"
        );
    }

    #[test]
    fn hosts_from_nothing_and_fqdn() {
        let out = hosts_content("", "vm1.example.test", None);
        assert_eq!(
            out,
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\tvm1.example.test vm1\n"
        );
        // A localhost line that also carried our name keeps localhost.
        let out = hosts_content("127.0.0.1 localhost vm1\n", "vm1", None);
        assert_eq!(out, "127.0.0.1\tlocalhost\n127.0.1.1\tvm1\n");
    }

    #[test]
    fn hosts_is_rewritten_in_place_idempotently() {
        let dir = tempfile::tempdir().unwrap();
        let ip = Some("10.1.2.3".parse().unwrap());
        write_hosts(dir.path(), "vm1", ip).unwrap();
        let once = fs::read_to_string(dir.path().join("etc/hosts")).unwrap();
        write_hosts(dir.path(), "vm1", ip).unwrap();
        let twice = fs::read_to_string(dir.path().join("etc/hosts")).unwrap();
        assert_eq!(once, twice);
        assert!(once.ends_with("10.1.2.3\tvm1\n"));
        assert!(once.starts_with("127.0.0.1\tlocalhost\n"));
    }

    #[test]
    fn resolv_conf_from_metadata_and_pnp() {
        let ns = parse_nameservers("1.1.1.1, 8.8.8.8 2001:db8::1").unwrap();
        assert_eq!(
            resolv_content(&ns),
            "# Written by the firebuild guest init.\nnameserver 1.1.1.1\nnameserver 8.8.8.8\nnameserver 2001:db8::1\n"
        );
        assert!(matches!(
            parse_nameservers("1.1.1.1,dns.example"),
            Err(FileError::BadNameserver(s)) if s == "dns.example"
        ));
        assert!(parse_nameservers("").unwrap().is_empty());
        let pnp = "#MANUAL\nnameserver 10.0.0.1\nnameserver 0.0.0.0\nbootserver 10.0.0.2\n";
        assert_eq!(
            nameservers_from_pnp(pnp),
            vec!["10.0.0.1".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn resolv_conf_replaces_a_symlink_and_is_left_alone_without_servers() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("etc")).unwrap();
        let link = dir.path().join("etc/resolv.conf");
        std::os::unix::fs::symlink("/run/systemd/resolve/stub-resolv.conf", &link).unwrap();
        assert!(!write_resolv(dir.path(), &[]).unwrap());
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(write_resolv(dir.path(), &["9.9.9.9".parse().unwrap()]).unwrap());
        let meta = fs::symlink_metadata(&link).unwrap();
        assert!(meta.file_type().is_file());
        assert_eq!(meta.mode() & 0o777, 0o644);
        assert!(fs::read_to_string(&link)
            .unwrap()
            .contains("nameserver 9.9.9.9\n"));
    }

    #[test]
    fn nsswitch_only_when_absent() {
        let dir = tempfile::tempdir().unwrap();
        assert!(ensure_nsswitch(dir.path()).unwrap());
        let path = dir.path().join("etc/nsswitch.conf");
        assert!(fs::read_to_string(&path)
            .unwrap()
            .contains("hosts:          files dns\n"));
        fs::write(&path, "hosts: files\n").unwrap();
        assert!(!ensure_nsswitch(dir.path()).unwrap());
        assert_eq!(fs::read_to_string(&path).unwrap(), "hosts: files\n");
    }

    #[test]
    fn env_script_quotes_values_and_skips_bad_names() {
        let env: BTreeMap<String, String> = [
            ("GREETING", "it's \"fine\" $HOME `x`"),
            ("EMPTY", ""),
            ("bad-name", "x"),
            ("1ABC", "x"),
            ("_OK1", "a\nb"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(
            env_script_content(&env),
            "# Written by the firebuild guest init: the run's environment.\n\
             export EMPTY=''\n\
             export GREETING='it'\\''s \"fine\" $HOME `x`'\n\
             export _OK1='a\nb'\n"
        );
        let dir = tempfile::tempdir().unwrap();
        write_env_script(dir.path(), &env, (1000, 1001)).unwrap();
        let path = dir.path().join("etc/profile.d/run-env.sh");
        let md = fs::metadata(&path).unwrap();
        assert_eq!(md.mode() & 0o777, 0o600);
        assert_eq!((md.uid(), md.gid()), (1000, 1001));
    }

    #[test]
    fn env_script_round_trips_through_a_shell() {
        let env: BTreeMap<String, String> =
            [("V".to_string(), "it's $x `y` \\ \"z\"".to_string())].into();
        let dir = tempfile::tempdir().unwrap();
        write_env_script(dir.path(), &env, (0, 0)).unwrap();
        let script = dir.path().join("etc/profile.d/run-env.sh");
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(". '{}' && printf %s \"$V\"", script.display()))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), env["V"]);
    }

    #[test]
    fn ssh_keys_modes_ownership_and_merge() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let passwd =
            parse_passwd("root:x:0:0::/root:/bin/sh\napp:x:1234:2345::/home/app:/bin/sh\n");
        let path = install_ssh_keys(
            root,
            "app",
            "ssh-ed25519 AAAA1 a@b\n\nssh-rsa BBBB2 c@d\n",
            &passwd,
        )
        .unwrap();
        assert_eq!(path, root.join("home/app/.ssh/authorized_keys"));
        let home = fs::metadata(root.join("home/app")).unwrap();
        assert_eq!(
            (home.uid(), home.gid()),
            (1234, 2345),
            "a created home belongs to the user"
        );
        let ssh = fs::metadata(root.join("home/app/.ssh")).unwrap();
        assert_eq!(ssh.mode() & 0o777, 0o700);
        assert_eq!((ssh.uid(), ssh.gid()), (1234, 2345));
        let keys = fs::metadata(&path).unwrap();
        assert_eq!(keys.mode() & 0o777, 0o600);
        assert_eq!((keys.uid(), keys.gid()), (1234, 2345));
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "ssh-ed25519 AAAA1 a@b\nssh-rsa BBBB2 c@d\n"
        );
        // Again with one old and one new key: no duplicates, order kept.
        install_ssh_keys(
            root,
            "app",
            "ssh-rsa BBBB2 c@d\nssh-ed25519 CCCC3 e@f",
            &passwd,
        )
        .unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "ssh-ed25519 AAAA1 a@b\nssh-rsa BBBB2 c@d\nssh-ed25519 CCCC3 e@f\n"
        );
    }

    #[test]
    fn ssh_keys_fix_loose_modes_of_an_existing_dir() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("root/.ssh")).unwrap();
        fs::set_permissions(root.join("root/.ssh"), fs::Permissions::from_mode(0o777)).unwrap();
        let passwd = parse_passwd("root:x:0:0::/root:/bin/sh\n");
        install_ssh_keys(root, "root", "ssh-ed25519 K", &passwd).unwrap();
        let m = fs::metadata(root.join("root/.ssh")).unwrap();
        assert_eq!(m.mode() & 0o777, 0o700);
    }

    #[test]
    fn ssh_keys_for_unknown_user_fail() {
        let dir = tempfile::tempdir().unwrap();
        let e = install_ssh_keys(dir.path(), "ghost", "k", &[]).unwrap_err();
        assert!(matches!(e, FileError::UnknownSshUser(ref u) if u == "ghost"));
        assert!(!dir.path().join("home").exists());
    }
}
