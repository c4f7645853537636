//! What crossed the stand-in's socket, and the request log file through
//! which a stand-in running as another process shows it to the test.

use std::path::Path;

use serde_json::{json, Value};

use super::StandInError;

/// One exchange as it crossed the socket.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub content_type: Option<String>,
    pub host: Option<String>,
    pub body: Vec<u8>,
    pub status: u16,
    pub answer: Vec<u8>,
}

impl Recorded {
    /// `{method, path, body, status, answer}`: the body as JSON (null when
    /// it is not JSON), the answer as text.
    pub fn to_json(&self) -> Value {
        json!({
            "method": self.method,
            "path": self.path,
            "body": serde_json::from_slice::<Value>(&self.body).unwrap_or(Value::Null),
            "status": self.status,
            "answer": String::from_utf8_lossy(&self.answer),
        })
    }
}

/// Writes `records` as a JSON array, atomically (a reader never sees half).
pub(super) fn write_request_log(path: &Path, records: &[Recorded]) -> Result<(), StandInError> {
    let entries: Vec<Value> = records.iter().map(Recorded::to_json).collect();
    let tmp = path.with_extension("tmp");
    let io = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| StandInError::Io { what, path, source }
    };
    std::fs::write(&tmp, Value::Array(entries).to_string()).map_err(io("write", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("rename to", path))
}

/// The exchanges a stand-in with [`super::Options::request_log`] recorded
/// (see [`Recorded::to_json`]); none when it has not written the file yet.
pub fn read_request_log(path: &Path) -> Result<Vec<Value>, StandInError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(StandInError::Io {
                what: "read",
                path: path.to_path_buf(),
                source,
            })
        }
    };
    serde_json::from_slice(&bytes).map_err(|e| StandInError::Io {
        what: "parse the request log",
        path: path.to_path_buf(),
        source: e.into(),
    })
}
