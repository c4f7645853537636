//! Kernel config fragments: the project's microVM fragment, user fragments
//! merged on top, the digest that keys built kernels, and the check that every
//! requested option survived Kconfig's dependency resolution.

use std::fmt;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The project's microVM kernel configuration fragment (x86_64), documented
/// option by option in `crates/kernel/config/microvm-x86_64.config`.
pub const PROJECT_FRAGMENT: &str = include_str!("../config/microvm-x86_64.config");

/// Bumped whenever the way a fragment becomes a `.config` changes (base
/// config, make targets), so kernels built the old way get a new digest.
const RECIPE: &str = "firebuild-kernel-config v1: allnoconfig + KCONFIG_ALLCONFIG, olddefconfig, ARCH=x86_64, vmlinux\n";

/// The value a fragment asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OptionValue {
    /// `# CONFIG_X is not set` (or `CONFIG_X=n`).
    NotSet,
    /// `CONFIG_X=<value>`, value as written (`y`, `64`, `"text"`, ...).
    Value(String),
}

impl fmt::Display for OptionValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OptionValue::NotSet => f.write_str("is not set"),
            OptionValue::Value(v) => f.write_str(v),
        }
    }
}

/// An ordered set of Kconfig assignments; each option appears once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fragment {
    options: Vec<(String, OptionValue)>,
}

/// An option whose final value differs from the fragment's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigMismatch {
    /// Option name including the `CONFIG_` prefix.
    pub name: String,
    /// What the fragment asked for.
    pub wanted: OptionValue,
    /// What the final `.config` has; `None` when the option is absent
    /// (unknown to this kernel, or hidden because a dependency is off).
    pub got: Option<OptionValue>,
}

impl fmt::Display for ConfigMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.got {
            Some(got) => write!(f, "{}: wanted {}, got {}", self.name, self.wanted, got),
            None => write!(
                f,
                "{}: wanted {}, but it is absent from the final config (unknown to this kernel version, or a dependency is off)",
                self.name, self.wanted
            ),
        }
    }
}

impl Fragment {
    /// The project's fragment.
    pub fn project() -> Result<Fragment> {
        Fragment::parse(
            PROJECT_FRAGMENT,
            Path::new("<project microvm-x86_64.config>"),
        )
    }

    /// Reads and parses a fragment file.
    pub fn from_file(path: &Path) -> Result<Fragment> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io("read kernel config fragment", path, e))?;
        Fragment::parse(&text, path)
    }

    /// Parses fragment text; `origin` names the file in error messages.
    /// Comments and blank lines are skipped; a later assignment of the same
    /// option wins.
    pub fn parse(text: &str, origin: &Path) -> Result<Fragment> {
        let mut fragment = Fragment::default();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() {
                continue;
            }
            let syntax = || Error::ConfigSyntax {
                file: origin.to_path_buf(),
                line: index + 1,
                text: raw.to_string(),
            };
            if let Some(comment) = line.strip_prefix('#') {
                // Only "# CONFIG_X is not set" carries meaning.
                let comment = comment.trim();
                if let Some(name) = comment.strip_suffix(" is not set") {
                    if name.starts_with("CONFIG_") {
                        if !valid_name(name) {
                            return Err(syntax());
                        }
                        fragment.set(name, OptionValue::NotSet);
                    }
                }
                continue;
            }
            let (name, value) = line.split_once('=').ok_or_else(syntax)?;
            if !valid_name(name) || value.is_empty() {
                return Err(syntax());
            }
            let value = if value == "n" {
                OptionValue::NotSet
            } else {
                OptionValue::Value(value.to_string())
            };
            fragment.set(name, value);
        }
        Ok(fragment)
    }

    /// Sets one option, keeping its first position.
    pub fn set(&mut self, name: &str, value: OptionValue) {
        match self.options.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value,
            None => self.options.push((name.to_string(), value)),
        }
    }

    /// Applies `other` on top of `self` (its values win).
    pub fn merge(&mut self, other: &Fragment) {
        for (name, value) in &other.options {
            self.set(name, value.clone());
        }
    }

    /// The value asked for an option (`CONFIG_` prefix included).
    pub fn get(&self, name: &str) -> Option<&OptionValue> {
        self.options.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// The options in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &OptionValue)> {
        self.options.iter().map(|(n, v)| (n.as_str(), v))
    }

    /// Number of options.
    pub fn len(&self) -> usize {
        self.options.len()
    }

    /// Whether the fragment names no option.
    pub fn is_empty(&self) -> bool {
        self.options.is_empty()
    }

    /// The fragment as Kconfig text (no comments), for `KCONFIG_ALLCONFIG`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, value) in &self.options {
            match value {
                OptionValue::NotSet => out.push_str(&format!("# {name} is not set\n")),
                OptionValue::Value(v) => out.push_str(&format!("{name}={v}\n")),
            }
        }
        out
    }

    /// SHA-256 (hex) of the options and the build recipe. Comments do not
    /// count, so documenting the fragment keeps cached kernels valid.
    pub fn digest(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(RECIPE.as_bytes());
        hasher.update(self.render().as_bytes());
        hex::encode(hasher.finalize())
    }

    /// Compares the fragment with a final `.config`: every option must have
    /// the requested value (an absent option counts as "not set").
    pub fn verify(&self, final_config: &str) -> Vec<ConfigMismatch> {
        let actual = Fragment::parse_lenient(final_config);
        self.options
            .iter()
            .filter_map(|(name, wanted)| {
                let got = actual.get(name);
                let ok = match (wanted, got) {
                    (OptionValue::NotSet, None | Some(OptionValue::NotSet)) => true,
                    (w, Some(g)) => w == g,
                    _ => false,
                };
                (!ok).then(|| ConfigMismatch {
                    name: name.clone(),
                    wanted: wanted.clone(),
                    got: got.cloned(),
                })
            })
            .collect()
    }

    /// Parses a generated `.config`, skipping anything unexpected.
    fn parse_lenient(text: &str) -> Fragment {
        let mut fragment = Fragment::default();
        for line in text.lines() {
            if let Some(name) = line
                .strip_prefix("# ")
                .and_then(|l| l.strip_suffix(" is not set"))
            {
                fragment.set(name, OptionValue::NotSet);
            } else if let Some((name, value)) = line.split_once('=') {
                if valid_name(name) {
                    fragment.set(name, OptionValue::Value(value.to_string()));
                }
            }
        }
        fragment
    }
}

/// The fragment a build uses: the project's, with the user's file on top.
pub fn merged(user: Option<&Path>) -> Result<Fragment> {
    let mut fragment = Fragment::project()?;
    if let Some(path) = user {
        fragment.merge(&Fragment::from_file(path)?);
    }
    Ok(fragment)
}

fn valid_name(name: &str) -> bool {
    name.strip_prefix("CONFIG_").is_some_and(|rest| {
        !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Fragment {
        Fragment::parse(text, Path::new("test.config")).unwrap()
    }

    #[test]
    fn project_fragment_parses_and_has_the_essentials() {
        let f = Fragment::project().unwrap();
        for name in [
            "CONFIG_PVH",
            "CONFIG_VIRTIO_MMIO",
            "CONFIG_VIRTIO_PCI",
            "CONFIG_VIRTIO_BLK",
            "CONFIG_SERIAL_8250_CONSOLE",
            "CONFIG_EXT4_FS",
            "CONFIG_OVERLAY_FS",
            "CONFIG_DEVTMPFS_MOUNT",
            "CONFIG_IP_PNP",
        ] {
            assert_eq!(f.get(name), Some(&OptionValue::Value("y".into())), "{name}");
        }
        assert_eq!(f.get("CONFIG_MODULES"), Some(&OptionValue::NotSet));
    }

    #[test]
    fn parses_assignments_and_not_set_comments() {
        let f = parse("# a comment\n\nCONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=\"x y\"\nCONFIG_D=n\nCONFIG_E=0x10\n");
        let items: Vec<_> = f.iter().map(|(n, v)| (n.to_string(), v.clone())).collect();
        assert_eq!(
            items,
            vec![
                ("CONFIG_A".into(), OptionValue::Value("y".into())),
                ("CONFIG_B".into(), OptionValue::NotSet),
                ("CONFIG_C".into(), OptionValue::Value("\"x y\"".into())),
                ("CONFIG_D".into(), OptionValue::NotSet),
                ("CONFIG_E".into(), OptionValue::Value("0x10".into())),
            ]
        );
    }

    #[test]
    fn syntax_errors_name_file_and_line() {
        for bad in [
            "CONFIG_A=y\nVIRTIO=y\n",
            "CONFIG_A=y\nCONFIG_B\n",
            "CONFIG_A=y\nCONFIG_=y\n",
            "CONFIG_A=y\nCONFIG_B=\n",
        ] {
            let err = Fragment::parse(bad, Path::new("user.config")).unwrap_err();
            let msg = err.to_string();
            assert!(msg.starts_with("user.config:2:"), "{msg}");
        }
    }

    #[test]
    fn merge_lets_the_user_win_and_keeps_order() {
        let mut base = parse("CONFIG_A=y\nCONFIG_B=y\n");
        base.merge(&parse("# CONFIG_A is not set\nCONFIG_C=y\n"));
        assert_eq!(
            base.render(),
            "# CONFIG_A is not set\nCONFIG_B=y\nCONFIG_C=y\n"
        );
    }

    #[test]
    fn digest_ignores_comments_but_not_values() {
        let a = parse("# doc\nCONFIG_A=y\n\n# more doc\nCONFIG_B=y\n");
        let b = parse("CONFIG_A=y\nCONFIG_B=y\n");
        let c = parse("CONFIG_A=y\n# CONFIG_B is not set\n");
        assert_eq!(a.digest(), b.digest());
        assert_ne!(a.digest(), c.digest());
        assert_eq!(a.digest().len(), 64);
    }

    #[test]
    fn verify_reports_dropped_changed_and_absent_options() {
        let wanted = parse("CONFIG_A=y\nCONFIG_B=y\nCONFIG_C=y\n# CONFIG_D is not set\n# CONFIG_E is not set\nCONFIG_F=\"s\"\n");
        let final_config =
            "CONFIG_A=y\n# CONFIG_B is not set\n# CONFIG_E is not set\nCONFIG_F=\"s\"\n";
        let mismatches = wanted.verify(final_config);
        let names: Vec<_> = mismatches.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["CONFIG_B", "CONFIG_C"]);
        assert_eq!(mismatches[0].got, Some(OptionValue::NotSet));
        assert_eq!(mismatches[1].got, None);
        assert!(mismatches[1].to_string().contains("absent"));
    }

    #[test]
    fn merged_reads_a_user_file_on_top() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("user.config");
        std::fs::write(&path, "# CONFIG_IPV6 is not set\nCONFIG_FUSE_FS=y\n").unwrap();
        let f = merged(Some(&path)).unwrap();
        assert_eq!(f.get("CONFIG_IPV6"), Some(&OptionValue::NotSet));
        assert_eq!(
            f.get("CONFIG_FUSE_FS"),
            Some(&OptionValue::Value("y".into()))
        );
        assert_ne!(f.digest(), Fragment::project().unwrap().digest());

        let missing = merged(Some(&dir.path().join("nope.config"))).unwrap_err();
        assert!(missing.to_string().contains("nope.config"), "{missing}");
    }
}
