//! `RUN --mount=` values. They are parsed into raw key/value fields at
//! parse time (syntax checked) and resolved into a typed [`Mount`] after
//! variable expansion, with BuildKit's validation rules.

use serde::Serialize;

/// One `--mount=` flag as written: CSV `key=value` fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MountSpec {
    pub raw: String,
    /// `(key, value)`; a key without `=` has no value (`ro`, `rw`,
    /// `readonly`, `readwrite`, `required`).
    pub fields: Vec<(String, Option<String>)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MountType {
    Bind,
    Cache,
    Tmpfs,
    Secret,
    Ssh,
}

impl MountType {
    fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "bind" => MountType::Bind,
            "cache" => MountType::Cache,
            "tmpfs" => MountType::Tmpfs,
            "secret" => MountType::Secret,
            "ssh" => MountType::Ssh,
            _ => return None,
        })
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            MountType::Bind => "bind",
            MountType::Cache => "cache",
            MountType::Tmpfs => "tmpfs",
            MountType::Secret => "secret",
            MountType::Ssh => "ssh",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheSharing {
    Shared,
    Private,
    Locked,
}

/// A resolved mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mount {
    pub kind: MountType,
    /// Stage name, stage index or image to mount from (bind/cache).
    pub from: Option<String>,
    pub source: Option<String>,
    pub target: Option<String>,
    pub read_only: bool,
    /// `id=` (cache id, secret id, ssh id).
    pub id: Option<String>,
    pub sharing: Option<CacheSharing>,
    pub required: bool,
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// tmpfs `size=` in bytes.
    pub size_limit: Option<u64>,
    /// secret `env=`: expose the secret as this variable.
    pub env: Option<String>,
}

const KEYS: &[&str] = &[
    "type",
    "from",
    "source",
    "src",
    "target",
    "dst",
    "destination",
    "readonly",
    "ro",
    "readwrite",
    "rw",
    "required",
    "size",
    "id",
    "sharing",
    "mode",
    "uid",
    "gid",
    "env",
];

/// Split one CSV record (Go `encoding/csv` rules: quoted fields, `""` for
/// a quote inside them).
fn csv_fields(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err("extraneous or missing \" in quoted-field".into()),
                    Some('"') => match chars.peek() {
                        Some('"') => {
                            chars.next();
                            field.push('"');
                        }
                        Some(',') | None => break,
                        Some(_) => return Err("extraneous or missing \" in quoted-field".into()),
                    },
                    Some(c) => field.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                if c == '"' {
                    return Err("bare \" in non-quoted-field".into());
                }
                field.push(c);
                chars.next();
            }
        }
        out.push(field);
        match chars.next() {
            Some(',') => continue,
            _ => break,
        }
    }
    Ok(out)
}

impl MountSpec {
    /// Parse and check one `--mount` value without expanding variables.
    pub fn parse(raw: &str) -> Result<MountSpec, String> {
        let fields = csv_fields(raw).map_err(|e| format!("failed to parse mount {raw:?}: {e}"))?;
        let mut out = Vec::new();
        for field in fields {
            let (key, value) = match field.split_once('=') {
                Some((k, v)) => (k.to_ascii_lowercase(), Some(v.to_string())),
                None => (field.to_ascii_lowercase(), None),
            };
            if !KEYS.contains(&key.as_str()) {
                return Err(format!(
                    "unexpected key '{key}' in '{field}' (known keys: {})",
                    KEYS.join(", ")
                ));
            }
            match &value {
                None => {
                    if !matches!(
                        key.as_str(),
                        "readonly" | "ro" | "readwrite" | "rw" | "required"
                    ) {
                        return Err(format!("invalid field '{field}' must be a key=value pair"));
                    }
                }
                Some(v) => {
                    if key == "from" {
                        if let Some(i) = v.find('$') {
                            if i != v.len() - 1 {
                                return Err(format!(
                                    "'{field}' doesn't support variable expansion, define alias stage instead"
                                ));
                            }
                        }
                    }
                    if key == "type" && !v.contains('$') && MountType::parse(v).is_none() {
                        return Err(format!(
                            "unsupported mount type {v:?} (use bind, cache, tmpfs, secret or ssh)"
                        ));
                    }
                }
            }
            out.push((key, value));
        }
        let spec = MountSpec {
            raw: raw.to_string(),
            fields: out,
        };
        // Without variables the mount can be validated completely now.
        if !raw.contains('$') {
            spec.resolve(|s| Ok(s.to_string()))?;
        }
        Ok(spec)
    }

    /// The `from=` value (never expanded), for the stage graph.
    pub fn from(&self) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == "from")
            .and_then(|(_, v)| v.as_deref())
    }

    /// Expand every value with `expand` and validate the mount.
    pub fn resolve<F>(&self, mut expand: F) -> Result<Mount, String>
    where
        F: FnMut(&str) -> Result<String, String>,
    {
        let mut m = Mount {
            kind: MountType::Bind,
            from: None,
            source: None,
            target: None,
            read_only: false,
            id: None,
            sharing: None,
            required: false,
            mode: None,
            uid: None,
            gid: None,
            size_limit: None,
            env: None,
        };
        let mut ro_auto = true;
        for (key, value) in &self.fields {
            let value = match value {
                // A bare boolean key means `key=true`.
                None if matches!(
                    key.as_str(),
                    "readonly" | "ro" | "readwrite" | "rw" | "required"
                ) =>
                {
                    "true".to_owned()
                }
                None => return Err(format!("invalid field '{key}' must be a key=value pair")),
                Some(v) if key == "from" => v.clone(),
                Some(v) => expand(v)?,
            };
            match key.as_str() {
                "type" => {
                    m.kind = MountType::parse(&value).ok_or_else(|| {
                        format!(
                            "unsupported mount type {value:?} (use bind, cache, tmpfs, secret or ssh)"
                        )
                    })?;
                }
                "from" => m.from = Some(value),
                "source" | "src" => m.source = Some(value),
                "target" | "dst" | "destination" => m.target = Some(value),
                "readonly" | "ro" => {
                    m.read_only = parse_bool(&value)
                        .ok_or_else(|| format!("invalid value for {key}: {value}"))?;
                    ro_auto = false;
                }
                "readwrite" | "rw" => {
                    m.read_only = !parse_bool(&value)
                        .ok_or_else(|| format!("invalid value for {key}: {value}"))?;
                    ro_auto = false;
                }
                "required" => {
                    if !matches!(m.kind, MountType::Secret | MountType::Ssh) {
                        return Err(format!(
                            "unexpected key '{key}' for mount type '{}'",
                            m.kind.as_str()
                        ));
                    }
                    m.required = parse_bool(&value)
                        .ok_or_else(|| format!("invalid value for {key}: {value}"))?;
                }
                "size" => {
                    if m.kind != MountType::Tmpfs {
                        return Err(format!(
                            "unexpected key '{key}' for mount type '{}'",
                            m.kind.as_str()
                        ));
                    }
                    m.size_limit = Some(
                        parse_ram_size(&value)
                            .ok_or_else(|| format!("invalid value for {key}: {value}"))?,
                    );
                }
                "id" => m.id = Some(value),
                "sharing" => {
                    m.sharing = match value.to_ascii_lowercase().as_str() {
                        "" => None,
                        "shared" => Some(CacheSharing::Shared),
                        "private" => Some(CacheSharing::Private),
                        "locked" => Some(CacheSharing::Locked),
                        _ => {
                            return Err(format!(
                            "unsupported sharing value {value:?} (use shared, private or locked)"
                        ))
                        }
                    }
                }
                "mode" => {
                    m.mode = Some(
                        u32::from_str_radix(&value, 8)
                            .map_err(|_| format!("invalid value {value} for mode"))?,
                    )
                }
                "uid" => {
                    m.uid = Some(
                        value
                            .parse()
                            .map_err(|_| format!("invalid value {value} for uid"))?,
                    )
                }
                "gid" => {
                    m.gid = Some(
                        value
                            .parse()
                            .map_err(|_| format!("invalid value {value} for gid"))?,
                    )
                }
                "env" => m.env = Some(value),
                _ => return Err(format!("unexpected key '{key}' in mount")),
            }
        }

        let file_info_allowed = matches!(
            m.kind,
            MountType::Secret | MountType::Ssh | MountType::Cache
        );
        if !file_info_allowed {
            for (set, what) in [
                (m.mode.is_some(), "mode"),
                (m.uid.is_some(), "uid"),
                (m.gid.is_some(), "gid"),
            ] {
                if set {
                    return Err(format!(
                        "{what} not allowed for {:?} type mounts",
                        m.kind.as_str()
                    ));
                }
            }
        }
        if ro_auto {
            m.read_only = !matches!(m.kind, MountType::Cache | MountType::Tmpfs);
        }
        if m.sharing.is_some() && m.kind != MountType::Cache {
            return Err(format!(
                "invalid cache sharing set for {} mount",
                m.kind.as_str()
            ));
        }
        if m.kind == MountType::Secret {
            if m.from.is_some() {
                return Err("secret mount should not have a from".into());
            }
            if m.source.is_none() && m.target.is_none() && m.id.is_none() {
                return Err("secret mount needs one of source, target or id".into());
            }
            if m.source.is_some() && m.id.is_some() {
                return Err("secret mount: both source and id can't be set".into());
            }
        }
        if matches!(
            m.kind,
            MountType::Bind | MountType::Cache | MountType::Tmpfs
        ) && m.target.as_deref().is_none_or(str::is_empty)
        {
            return Err(format!("{} mount needs a target", m.kind.as_str()));
        }
        Ok(m)
    }
}

/// Go `strconv.ParseBool`.
fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// docker `units.RAMInBytes`: `64m`, `1g`, `1.5GiB`, `100` (binary units).
fn parse_ram_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let num_end = s
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_digit() || *c == '.'))
        .map_or(s.len(), |(i, _)| i);
    let (num, unit) = s.split_at(num_end);
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') {
        return None;
    }
    let n: f64 = num.parse().ok()?;
    let mut unit = unit.trim_start_matches(' ').to_ascii_lowercase();
    if unit.ends_with('b') {
        unit.pop();
    }
    if unit.ends_with('i') {
        unit.pop();
    }
    let mult: u64 = match unit.as_str() {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        "p" => 1 << 50,
        _ => return None,
    };
    let v = n * mult as f64;
    if !v.is_finite() || v < 0.0 || v > u64::MAX as f64 {
        return None;
    }
    Some(v as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_mount() {
        let s = MountSpec::parse("type=cache,target=/root/.cache,id=go,sharing=locked").unwrap();
        let m = s.resolve(|v| Ok(v.to_string())).unwrap();
        assert_eq!(m.kind, MountType::Cache);
        assert_eq!(m.target.as_deref(), Some("/root/.cache"));
        assert_eq!(m.sharing, Some(CacheSharing::Locked));
        assert!(!m.read_only);
    }

    #[test]
    fn bind_defaults_read_only() {
        let m = MountSpec::parse("target=/src,from=builder,source=/out")
            .unwrap()
            .resolve(|v| Ok(v.to_string()))
            .unwrap();
        assert_eq!(m.kind, MountType::Bind);
        assert!(m.read_only);
        let m = MountSpec::parse("type=bind,target=/src,rw")
            .unwrap()
            .resolve(|v| Ok(v.to_string()))
            .unwrap();
        assert!(!m.read_only);
    }

    #[test]
    fn errors() {
        assert!(MountSpec::parse("type=foo,target=/a").is_err());
        assert!(MountSpec::parse("type=bind,bogus=1,target=/a").is_err());
        assert!(MountSpec::parse("type=bind,target").is_err());
        assert!(MountSpec::parse("type=bind,target=/a,mode=0700").is_err());
        assert!(MountSpec::parse("type=cache").is_err());
        assert!(MountSpec::parse("type=secret,id=a,from=x").is_err());
        assert!(MountSpec::parse("from=$X,target=/a").is_err());
        assert!(MountSpec::parse("type=bind,target=/a,required").is_err());
        assert!(MountSpec::parse("type=tmpfs,target=/a,size=12q").is_err());
        assert!(MountSpec::parse("type=bind,target=\"/a").is_err());
    }

    #[test]
    fn bare_booleans_mean_true() {
        let resolve =
            |spec: &str| MountSpec::parse(spec).and_then(|s| s.resolve(|v| Ok(v.to_string())));
        for (bare, explicit) in [
            ("type=cache,target=/c,ro", "type=cache,target=/c,ro=true"),
            (
                "type=cache,target=/c,readonly",
                "type=cache,target=/c,readonly=1",
            ),
            ("type=bind,target=/c,rw", "type=bind,target=/c,rw=true"),
            (
                "type=secret,id=s,required",
                "type=secret,id=s,required=true",
            ),
        ] {
            assert_eq!(resolve(bare).unwrap(), resolve(explicit).unwrap(), "{bare}");
        }
        assert!(resolve("type=cache,target=/c,ro").unwrap().read_only);
        assert!(resolve("type=secret,id=s,required").unwrap().required);
        assert!(!resolve("type=secret,id=s,required=false").unwrap().required);
        let err = resolve("type=bind,target=/a,required").unwrap_err();
        assert!(err.contains("unexpected key 'required'"), "{err}");
        let err = resolve("type=bind,target=/a,id").unwrap_err();
        assert!(err.contains("must be a key=value pair"), "{err}");
    }

    #[test]
    fn sizes_and_quotes() {
        let m = MountSpec::parse("type=tmpfs,target=/t,size=64m")
            .unwrap()
            .resolve(|v| Ok(v.to_string()))
            .unwrap();
        assert_eq!(m.size_limit, Some(64 << 20));
        let m = MountSpec::parse("type=bind,\"target=/a,b\"")
            .unwrap()
            .resolve(|v| Ok(v.to_string()))
            .unwrap();
        assert_eq!(m.target.as_deref(), Some("/a,b"));
        let s = MountSpec::parse("type=cache,target=$DIR").unwrap();
        let m = s.resolve(|v| Ok(v.replace("$DIR", "/x"))).unwrap();
        assert_eq!(m.target.as_deref(), Some("/x"));
    }
}
