//! The command the guest starts, with Docker's semantics: ENTRYPOINT + CMD,
//! where a command given after `--` replaces CMD (not ENTRYPOINT). Shell
//! forms were already wrapped in SHELL by the build.

use firebuild_metadata::EntrypointInfo;

use crate::error::VmError;

/// Resolves the final argv. `image` names the image in the error.
pub fn resolve_argv(
    info: &EntrypointInfo,
    override_cmd: Option<&[String]>,
    image: &str,
) -> Result<Vec<String>, VmError> {
    let cmd = override_cmd.unwrap_or(&info.cmd);
    let argv: Vec<String> = info.entrypoint.iter().chain(cmd).cloned().collect();
    if argv.is_empty() {
        return Err(VmError::NoCommand {
            image: image.to_owned(),
        });
    }
    Ok(argv)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(entrypoint: &[&str], cmd: &[&str]) -> EntrypointInfo {
        EntrypointInfo {
            entrypoint: entrypoint.iter().map(|s| s.to_string()).collect(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn entrypoint_plus_cmd() {
        let i = info(&["/bin/app", "--flag"], &["serve"]);
        assert_eq!(
            resolve_argv(&i, None, "x").unwrap(),
            ["/bin/app", "--flag", "serve"]
        );
    }

    #[test]
    fn override_replaces_cmd_only() {
        let i = info(&["/bin/app"], &["serve"]);
        let o = strings(&["migrate", "--now"]);
        assert_eq!(
            resolve_argv(&i, Some(&o), "x").unwrap(),
            ["/bin/app", "migrate", "--now"]
        );
    }

    #[test]
    fn cmd_only_and_override_without_entrypoint() {
        let i = info(&[], &["/bin/sh", "-c", "echo hi"]);
        assert_eq!(
            resolve_argv(&i, None, "x").unwrap(),
            ["/bin/sh", "-c", "echo hi"]
        );
        let o = strings(&["/bin/true"]);
        assert_eq!(resolve_argv(&i, Some(&o), "x").unwrap(), ["/bin/true"]);
    }

    #[test]
    fn entrypoint_only_and_empty_override() {
        let i = info(&["/bin/app"], &["default"]);
        assert_eq!(resolve_argv(&i, Some(&[]), "x").unwrap(), ["/bin/app"]);
    }

    #[test]
    fn nothing_to_run_is_an_error() {
        let err = resolve_argv(&info(&[], &[]), None, "org/img:1").unwrap_err();
        assert!(err.to_string().contains("org/img:1"), "{err}");
        let err = resolve_argv(&info(&[], &["x"]), Some(&[]), "i").unwrap_err();
        assert!(matches!(err, VmError::NoCommand { .. }));
    }
}
