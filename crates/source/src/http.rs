//! HTTP(S) fetching with ureq (blocking, no async runtime needed).

use crate::error::SourceError;
use std::io::Read;
use std::time::Duration;

#[derive(Clone)]
pub(crate) struct HttpClient {
    agent: ureq::Agent,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpClient")
    }
}

impl HttpClient {
    pub(crate) fn new(connect_timeout: Duration) -> Self {
        let config = ureq::Agent::config_builder()
            .timeout_connect(Some(connect_timeout))
            .http_status_as_error(false)
            .user_agent("firebuild")
            .build();
        HttpClient {
            agent: ureq::Agent::new_with_config(config),
        }
    }

    /// GET `url`; any status other than 2xx is an error naming the URL
    /// and the status.
    pub(crate) fn get_reader(&self, url: &str) -> Result<Box<dyn Read + Send>, SourceError> {
        tracing::debug!(url, "GET");
        let resp = self.agent.get(url).call().map_err(|e| SourceError::Http {
            url: url.into(),
            message: e.to_string(),
        })?;
        let status = resp.status();
        if !status.is_success() {
            return Err(SourceError::HttpStatus {
                url: url.into(),
                status: status.as_u16(),
                reason: status
                    .canonical_reason()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default(),
            });
        }
        Ok(Box::new(resp.into_body().into_reader()))
    }

    pub(crate) fn get_string(&self, url: &str) -> Result<String, SourceError> {
        let mut r = self.get_reader(url)?;
        let mut s = String::new();
        r.read_to_string(&mut s).map_err(|e| SourceError::Http {
            url: url.into(),
            message: format!("reading the body: {e}"),
        })?;
        Ok(s)
    }
}
