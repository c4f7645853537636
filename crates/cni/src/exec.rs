//! Running one CNI plugin: find its binary, set the CNI environment, feed the
//! config on stdin, and turn its output into a result or a CNI error.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::error::{CniError, Result};

/// The CNI operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CniCommand {
    Add,
    Check,
    Del,
}

impl CniCommand {
    pub fn as_str(self) -> &'static str {
        match self {
            CniCommand::Add => "ADD",
            CniCommand::Check => "CHECK",
            CniCommand::Del => "DEL",
        }
    }
}

/// Everything a plugin invocation needs besides the config itself.
pub(crate) struct Invocation<'a> {
    pub command: CniCommand,
    pub container_id: &'a str,
    pub netns: &'a Path,
    pub ifname: &'a str,
    /// Already joined `K=V;K=V`, empty for none.
    pub args: &'a str,
    pub bin_dirs: &'a [PathBuf],
    /// Run the plugin with this network namespace as its own ("the host").
    pub plugin_netns: Option<&'a Path>,
}

/// Finds the plugin binary `ty` in the first bin dir that has it.
pub(crate) fn find_plugin(ty: &str, bin_dirs: &[PathBuf]) -> Result<PathBuf> {
    for dir in bin_dirs {
        let candidate = dir.join(ty);
        if let Ok(meta) = candidate.metadata() {
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                return Ok(candidate);
            }
        }
    }
    Err(CniError::PluginNotFound {
        plugin: ty.to_string(),
        dirs: join_paths(bin_dirs),
    })
}

fn join_paths(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

/// Runs plugin `ty` with `stdin` as its config; returns its stdout on success.
pub(crate) fn run_plugin(ty: &str, stdin: &[u8], inv: &Invocation<'_>) -> Result<Vec<u8>> {
    let path = find_plugin(ty, inv.bin_dirs)?;
    let command = inv.command.as_str();
    let spawn_err = |source| CniError::PluginSpawn {
        path: path.clone(),
        command: command.to_string(),
        source,
    };

    let mut cmd = Command::new(&path);
    cmd.env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", inv.container_id)
        .env("CNI_NETNS", inv.netns)
        .env("CNI_IFNAME", inv.ifname)
        .env("CNI_PATH", join_paths(inv.bin_dirs))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if inv.args.is_empty() {
        cmd.env_remove("CNI_ARGS");
    } else {
        cmd.env("CNI_ARGS", inv.args);
    }
    if let Some(ns) = inv.plugin_netns {
        crate::netns::command_in_netns(&mut cmd, ns)?;
    }

    tracing::debug!(plugin = %path.display(), command, container_id = inv.container_id, "running CNI plugin");
    let mut child = cmd.spawn().map_err(spawn_err)?;
    // Write stdin from a thread so a plugin that prints before reading cannot
    // deadlock us; a plugin that never reads just gets EPIPE.
    let writer = child.stdin.take().map(|mut pipe| {
        let data = stdin.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&data);
        })
    });
    let output = child.wait_with_output().map_err(spawn_err)?;
    if let Some(w) = writer {
        let _ = w.join();
    }
    if output.status.success() {
        return Ok(output.stdout);
    }
    Err(plugin_error(ty, command, &output))
}

/// Turns a failed plugin's output into the plugin's own CNI error if it printed one.
fn plugin_error(ty: &str, command: &str, output: &std::process::Output) -> CniError {
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    if let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(&stdout) {
        if let Some(msg) = obj.get("msg").and_then(Value::as_str) {
            return CniError::Plugin {
                plugin: ty.to_string(),
                command: command.to_string(),
                code: obj.get("code").and_then(Value::as_u64).unwrap_or(0),
                msg: msg.to_string(),
                details: obj
                    .get("details")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            };
        }
    }
    CniError::PluginFailed {
        plugin: ty.to_string(),
        command: command.to_string(),
        status: output.status.to_string(),
        stderr,
        stdout,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn missing_plugin_names_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let err = find_plugin("bridge", &[dir.path().to_path_buf()]).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("\"bridge\"") && msg.contains(&dir.path().display().to_string()),
            "{msg}"
        );
    }

    #[test]
    fn non_executable_is_skipped() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        std::fs::write(a.path().join("p"), "x").unwrap();
        std::fs::write(b.path().join("p"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(b.path().join("p"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        let found = find_plugin("p", &[a.path().into(), b.path().into()]).unwrap();
        assert_eq!(found, b.path().join("p"));
    }

    #[test]
    fn error_output_is_decoded() {
        let out = std::process::Output {
            status: std::process::ExitStatus::from_raw(1 << 8),
            stdout:
                br#"{"cniVersion":"1.0.0","code":7,"msg":"bad subnet","details":"10.0.0.0/33"}"#
                    .to_vec(),
            stderr: Vec::new(),
        };
        match plugin_error("host-local", "ADD", &out) {
            CniError::Plugin {
                code, msg, details, ..
            } => {
                assert_eq!(
                    (code, msg.as_str(), details.as_str()),
                    (7, "bad subnet", "10.0.0.0/33")
                );
            }
            other => panic!("{other}"),
        }
        let out = std::process::Output {
            status: std::process::ExitStatus::from_raw(2 << 8),
            stdout: b"garbage".to_vec(),
            stderr: b"panic: boom".to_vec(),
        };
        let e = plugin_error("x", "DEL", &out).to_string();
        assert!(e.contains("panic: boom") && e.contains("garbage"), "{e}");
    }
}
