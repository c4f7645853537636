//! VM ids, readable names and their validation.

use crate::error::VmError;

const ADJECTIVES: &[&str] = &[
    "amber", "bold", "brave", "bright", "calm", "clever", "cosmic", "crisp", "daring", "eager",
    "fancy", "fast", "gentle", "glad", "golden", "happy", "hidden", "humble", "jolly", "keen",
    "kind", "lively", "lucky", "mellow", "merry", "misty", "modest", "noble", "polite", "proud",
    "quick", "quiet", "rapid", "rosy", "shiny", "silent", "silver", "sleek", "smooth", "snowy",
    "spry", "steady", "sunny", "swift", "tidy", "vivid", "warm", "wise", "witty", "zesty",
];

const ANIMALS: &[&str] = &[
    "badger", "beaver", "bison", "crane", "dingo", "dolphin", "eagle", "falcon", "ferret", "finch",
    "fox", "gecko", "heron", "ibex", "jackal", "koala", "lemur", "lynx", "marmot", "marten",
    "mole", "moose", "newt", "ocelot", "orca", "osprey", "otter", "owl", "panda", "puffin",
    "quail", "rabbit", "raven", "robin", "salmon", "seal", "shrew", "sparrow", "stoat", "swan",
    "tapir", "tern", "toucan", "trout", "turtle", "viper", "walrus", "weasel", "wombat", "yak",
];

/// Length of generated VM ids.
const ID_LEN: usize = 20;

/// Longest accepted VM name: it becomes a directory name and part of socket
/// paths, which are limited to 107 bytes.
pub const MAX_NAME_LEN: usize = 40;

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    // getrandom only fails before the kernel's pool is initialised, long
    // after boot on any host that runs VMs; fall back to time and pid so a
    // name is still produced.
    if rustix::rand::getrandom(&mut buf, rustix::rand::GetRandomFlags::empty()).is_err() {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
            ^ u128::from(std::process::id());
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (seed >> ((i % 16) * 8)) as u8 ^ (i as u8).wrapping_mul(151);
        }
    }
    buf
}

/// A random readable name such as `quiet-otter`, used as the default hostname.
pub fn random_hostname() -> String {
    let [a, b] = random_bytes::<2>();
    format!(
        "{}-{}",
        ADJECTIVES[usize::from(a) % ADJECTIVES.len()],
        ANIMALS[usize::from(b) % ANIMALS.len()]
    )
}

/// A random VM id: 20 characters of `[a-z0-9]`, like the original's ids.
pub fn random_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    random_bytes::<ID_LEN>()
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect()
}

/// Checks a user-given VM name (it becomes the VM id and its run directory
/// name): `[A-Za-z0-9][A-Za-z0-9_.-]*`, at most [`MAX_NAME_LEN`] bytes.
pub fn validate_name(name: &str) -> Result<(), VmError> {
    match name_problem(name) {
        None => Ok(()),
        Some(reason) => Err(VmError::InvalidName {
            name: name.to_owned(),
            reason,
        }),
    }
}

/// What is wrong with `name` as a VM or volume name (a directory name):
/// `[A-Za-z0-9][A-Za-z0-9_.-]*`, at most [`MAX_NAME_LEN`] bytes.
pub fn name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("it is empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Some(format!("it is longer than {MAX_NAME_LEN} characters"));
    }
    if !name.as_bytes()[0].is_ascii_alphanumeric() {
        return Some("it must start with a letter or digit".into());
    }
    name.chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
        .map(|c| format!("{c:?} is not allowed (use letters, digits, '_', '.', '-')"))
}

/// Checks a hostname against RFC 1123: dot-separated labels of letters,
/// digits and '-', 1 to 63 bytes each, not starting or ending with '-';
/// at most 253 bytes in all.
pub fn validate_hostname(hostname: &str) -> Result<(), VmError> {
    let fail = |reason: String| {
        Err(VmError::InvalidHostname {
            hostname: hostname.to_owned(),
            reason,
        })
    };
    if hostname.is_empty() || hostname.len() > 253 {
        return fail("it must be 1 to 253 characters long".into());
    }
    for label in hostname.split('.') {
        if label.is_empty() || label.len() > 63 {
            return fail(format!("label {label:?} must be 1 to 63 characters long"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return fail(format!("label {label:?} starts or ends with '-'"));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return fail(format!("{c:?} is not allowed (use letters, digits, '-')"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_names_are_valid() {
        for _ in 0..200 {
            let h = random_hostname();
            validate_hostname(&h).unwrap();
            validate_name(&h).unwrap();
            assert!(h.contains('-'));
            let id = random_id();
            assert_eq!(id.len(), ID_LEN);
            validate_name(&id).unwrap();
            validate_hostname(&id).unwrap();
        }
    }

    #[test]
    fn ids_differ() {
        let ids: std::collections::BTreeSet<_> = (0..100).map(|_| random_id()).collect();
        assert_eq!(ids.len(), 100);
    }

    #[test]
    fn name_validation() {
        validate_name("web-1").unwrap();
        validate_name("A.b_c").unwrap();
        for bad in ["", "-x", ".x", "a/b", "a b", "é", &"x".repeat(41)] {
            let err = validate_name(bad).unwrap_err();
            assert!(matches!(err, VmError::InvalidName { .. }), "{bad}");
        }
    }

    #[test]
    fn hostname_validation() {
        validate_hostname("quiet-otter").unwrap();
        validate_hostname("a.example.com").unwrap();
        for bad in ["", "-a", "a-", "a..b", "a_b", &"x".repeat(64), "a b"] {
            assert!(validate_hostname(bad).is_err(), "{bad}");
        }
    }
}
