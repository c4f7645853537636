//! A `docker-registry` process on a free 127.0.0.1 port with a temporary
//! storage directory, stopped (killed and reaped) on drop.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use base64::Engine;

use crate::digest::Digest;
use crate::reference::ImageRef;

const BINARY: &str = "/usr/bin/docker-registry";

/// A running local registry. Drop stops it and deletes its storage.
pub struct TestRegistry {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
    credentials: Option<(String, String)>,
}

impl TestRegistry {
    /// Starts a registry without authentication.
    pub fn start() -> anyhow::Result<TestRegistry> {
        Self::start_inner(None)
    }

    /// Starts a registry with htpasswd basic auth for one user.
    pub fn start_with_auth(user: &str, password: &str) -> anyhow::Result<TestRegistry> {
        Self::start_inner(Some((user.to_string(), password.to_string())))
    }

    fn start_inner(credentials: Option<(String, String)>) -> anyhow::Result<TestRegistry> {
        if !Path::new(BINARY).exists() {
            bail!("{BINARY} not found: install the Debian package `docker-registry`");
        }
        let mut last_err = None;
        // The free port can be taken between probing and binding: retry.
        for _ in 0..3 {
            match Self::try_start(credentials.clone()) {
                Ok(r) => return Ok(r),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("registry did not start")))
    }

    fn try_start(credentials: Option<(String, String)>) -> anyhow::Result<TestRegistry> {
        let dir = tempfile::Builder::new()
            .prefix("firebuild-registry-")
            .tempdir()
            .context("creating registry temp dir")?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage)?;
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            storage.display()
        );
        if let Some((user, password)) = &credentials {
            let hash = bcrypt::hash(password, 5).context("hashing test password")?;
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{user}:{hash}\n"))?;
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: firebuild-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(dir.path().join("registry.log"))?;
        let child = Command::new(BINARY)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {BINARY}"))?;
        let mut reg = TestRegistry {
            child,
            addr,
            dir,
            credentials,
        };
        reg.wait_ready()?;
        Ok(reg)
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("docker-registry exited with {status}: {}", self.log());
            }
            if let Ok(mut s) = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let req = format!("GET /v2/ HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr);
                let mut head = [0u8; 12];
                if s.write_all(req.as_bytes()).is_ok()
                    && s.read_exact(&mut head).is_ok()
                    && head.starts_with(b"HTTP/1.")
                {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "docker-registry did not answer on {} within 20 s: {}",
            self.addr,
            self.log()
        )
    }

    /// The registry's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A reference to `repo[:tag]` on this registry.
    pub fn reference(&self, repo_tag: &str) -> ImageRef {
        match format!("{}/{repo_tag}", self.host()).parse() {
            Ok(r) => r,
            Err(e) => panic!("bad test reference {repo_tag}: {e}"),
        }
    }

    /// The user and password, if started with auth.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// The registry's storage directory.
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Where the registry keeps a blob's bytes (to corrupt it in tests).
    pub fn blob_data_path(&self, digest: &Digest) -> PathBuf {
        self.storage_dir()
            .join("docker/registry/v2/blobs")
            .join(digest.algorithm().as_str())
            .join(&digest.hex()[..2])
            .join(digest.hex())
            .join("data")
    }

    /// Stops the registry now (it stays stopped; drop cleans up).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Writes a Docker `config.json` into `dir` with a base64 `auth` entry for
/// `host`. Point `RegistryConfig::docker_config_dir` at `dir`.
pub fn write_docker_config(
    dir: &Path,
    host: &str,
    user: &str,
    password: &str,
) -> anyhow::Result<()> {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let json = serde_json::json!({ "auths": { host: { "auth": auth } } });
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&json)?)?;
    Ok(())
}
