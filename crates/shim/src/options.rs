//! The runtime options containerd passes to `Create`: CRI's
//! `runtimeoptions.v1.Options` (`TypeUrl`, `ConfigPath`, `ConfigBody`,
//! fields 1-3), set in containerd's config under the runtime's `options`.
//! Only `ConfigPath` is read: the shim's configuration file.

use std::path::PathBuf;

use containerd_shim_protos::protobuf::well_known_types::any::Any;

const RUNTIME_OPTIONS: &str = "runtimeoptions.v1.Options";
const CONFIG_PATH_FIELD: u64 = 2;

/// `ConfigPath` of the options, if they are runtime options that set it.
pub fn config_path(options: Option<&Any>) -> anyhow::Result<Option<PathBuf>> {
    let Some(any) = options else { return Ok(None) };
    if !any.type_url.ends_with(RUNTIME_OPTIONS) {
        if !any.type_url.is_empty() {
            tracing::warn!("ignoring runtime options of type {}", any.type_url);
        }
        return Ok(None);
    }
    let path = string_field(&any.value, CONFIG_PATH_FIELD).ok_or_else(|| {
        anyhow::anyhow!(
            "the runtime options ({}) are not valid protobuf",
            any.type_url
        )
    })?;
    Ok(path.filter(|p| !p.is_empty()).map(PathBuf::from))
}

/// The last value of string field `wanted` in a protobuf message; `None`
/// when the bytes do not parse.
fn string_field(mut bytes: &[u8], wanted: u64) -> Option<Option<String>> {
    let mut found = None;
    while !bytes.is_empty() {
        let key = varint(&mut bytes)?;
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => {
                varint(&mut bytes)?;
            }
            1 => bytes = bytes.get(8..)?,
            5 => bytes = bytes.get(4..)?,
            2 => {
                let len = usize::try_from(varint(&mut bytes)?).ok()?;
                let value = bytes.get(..len)?;
                bytes = &bytes[len..];
                if field == wanted {
                    found = Some(String::from_utf8(value.to_vec()).ok()?);
                }
            }
            _ => return None,
        }
    }
    Some(found)
}

fn varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(fields: &[(u8, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (field, value) in fields {
            out.push(field << 3 | 2);
            out.push(value.len() as u8);
            out.extend_from_slice(value.as_bytes());
        }
        out
    }

    #[test]
    fn reads_config_path_of_runtime_options() {
        let any = Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value: message(&[(1, "x"), (2, "/etc/firebuild/ci.toml"), (3, "")]),
            ..Default::default()
        };
        assert_eq!(
            config_path(Some(&any)).unwrap(),
            Some(PathBuf::from("/etc/firebuild/ci.toml"))
        );
        let other = Any {
            type_url: "containerd.runc.v1.Options".into(),
            value: message(&[(2, "/nope")]),
            ..Default::default()
        };
        assert_eq!(config_path(Some(&other)).unwrap(), None);
        let broken = Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value: vec![0x12, 0x40, b'a'],
            ..Default::default()
        };
        assert!(config_path(Some(&broken)).is_err());
        assert_eq!(config_path(None).unwrap(), None);
    }
}
