//! HEALTHCHECK, run inside the guest as Docker runs it: `CMD` or
//! `CMD-SHELL` (`/bin/sh -c`) with the image's environment, user and
//! working directory, every `interval` (every `start_interval` during the
//! `start_period`), each limited to `timeout`; `retries` consecutive
//! failures make the VM unhealthy, failures during the start period do not
//! count until a check has passed. The last five results are kept.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use firebuild_agent_proto::{ExecRequest, HealthReport, HealthResult, HealthStatus};
use firebuild_metadata::image::Healthcheck;

use super::{exec, Context};
use crate::log;

// Docker's defaults.
const INTERVAL: Duration = Duration::from_secs(30);
const TIMEOUT: Duration = Duration::from_secs(30);
const START_INTERVAL: Duration = Duration::from_secs(5);
const RETRIES: u32 = 3;
/// Results kept, and output kept per result, as Docker keeps them.
const KEEP: usize = 5;
const OUTPUT_LIMIT: usize = 4096;

/// A health check, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub argv: Vec<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub start_period: Duration,
    pub start_interval: Duration,
    pub retries: u32,
}

impl Config {
    /// `None` for no check (none in the image, or `NONE`).
    pub fn from_metadata(h: &Healthcheck) -> Option<Config> {
        let argv = match h.test.split_first() {
            Some((kind, rest)) if kind == "CMD" && !rest.is_empty() => rest.to_vec(),
            Some((kind, rest)) if kind == "CMD-SHELL" && !rest.is_empty() => {
                vec!["/bin/sh".into(), "-c".into(), rest.join(" ")]
            }
            _ => return None,
        };
        let d = |ns: Option<u64>, default: Duration| {
            ns.filter(|n| *n > 0).map_or(default, Duration::from_nanos)
        };
        Some(Config {
            argv,
            interval: d(h.interval_ns, INTERVAL),
            timeout: d(h.timeout_ns, TIMEOUT),
            start_period: d(h.start_period_ns, Duration::ZERO),
            start_interval: d(h.start_interval_ns, START_INTERVAL),
            retries: h.retries.filter(|r| *r > 0).unwrap_or(RETRIES),
        })
    }
}

/// The state the host reads.
pub struct Health {
    pub config: Option<Config>,
    report: Mutex<HealthReport>,
}

impl Health {
    pub fn new(h: Option<&Healthcheck>) -> Health {
        let config = h.and_then(Config::from_metadata);
        let status = if config.is_some() {
            HealthStatus::Starting
        } else {
            HealthStatus::None
        };
        Health {
            config,
            report: Mutex::new(HealthReport {
                status,
                ..Default::default()
            }),
        }
    }

    pub fn report(&self) -> HealthReport {
        self.report
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records one result; `in_start_period` while the start period runs.
    pub fn record(&self, result: HealthResult, in_start_period: bool, retries: u32) {
        let mut r = self.report.lock().unwrap_or_else(|e| e.into_inner());
        if result.exit_code == 0 {
            r.status = HealthStatus::Healthy;
            r.failing_streak = 0;
        } else if !(in_start_period && r.status == HealthStatus::Starting) {
            r.failing_streak += 1;
            if r.failing_streak >= retries {
                r.status = HealthStatus::Unhealthy;
            }
        }
        r.log.push(result);
        let extra = r.log.len().saturating_sub(KEEP);
        r.log.drain(..extra);
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Starts the checker thread when the VM has a check.
pub fn spawn_checker(ctx: &Arc<Context>) {
    let Some(config) = ctx.health.config.clone() else {
        return;
    };
    let ctx = Arc::clone(ctx);
    std::thread::spawn(move || {
        let started = Instant::now();
        loop {
            let in_start = started.elapsed() < config.start_period;
            let starting = ctx.health.report().status == HealthStatus::Starting;
            let wait = if in_start && starting {
                config.start_interval
            } else {
                config.interval
            };
            std::thread::sleep(wait);
            let result = probe(&ctx, &config);
            ctx.health.record(
                result,
                started.elapsed() < config.start_period,
                config.retries,
            );
        }
    });
}

fn probe(ctx: &Context, config: &Config) -> HealthResult {
    let start_ns = now_ns();
    let req = ExecRequest {
        argv: config.argv.clone(),
        ..Default::default()
    };
    let (exit_code, output) = match exec::prepare(ctx, &req) {
        Err(f) => (-1, f.message),
        Ok(p) => match exec::run_captured(&p, config.timeout, OUTPUT_LIMIT) {
            Ok(Some((0, out))) => (0, out),
            // Docker keeps 0 and 1 apart only: any failure is unhealthy.
            Ok(Some((_, out))) => (1, out),
            Ok(None) => (
                -1,
                format!("Health check exceeded timeout ({:?})", config.timeout),
            ),
            Err(e) => {
                log::warn(format_args!("agent: health check: {e}"));
                (-1, e)
            }
        },
    };
    HealthResult {
        start_ns,
        end_ns: now_ns(),
        exit_code,
        output,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(test: &[&str]) -> Healthcheck {
        Healthcheck {
            test: test.iter().map(|s| s.to_string()).collect(),
            interval_ns: Some(2_000_000_000),
            timeout_ns: None,
            start_period_ns: None,
            start_interval_ns: None,
            retries: Some(2),
        }
    }

    #[test]
    fn check_forms_and_defaults() {
        let c = Config::from_metadata(&check(&["CMD-SHELL", "test -f /ok"])).unwrap();
        assert_eq!(c.argv, ["/bin/sh", "-c", "test -f /ok"]);
        assert_eq!(
            (c.interval, c.timeout, c.retries),
            (Duration::from_secs(2), TIMEOUT, 2)
        );
        let c = Config::from_metadata(&check(&["CMD", "true", "x"])).unwrap();
        assert_eq!(c.argv, ["true", "x"]);
        assert_eq!(Config::from_metadata(&check(&["NONE"])), None);
        assert_eq!(Config::from_metadata(&check(&["CMD"])), None);
    }

    #[test]
    fn status_follows_dockers_rules() {
        let h = Health::new(Some(&check(&["CMD", "x"])));
        let res = |code| HealthResult {
            start_ns: 0,
            end_ns: 0,
            exit_code: code,
            output: String::new(),
        };
        assert_eq!(h.report().status, HealthStatus::Starting);
        // Failures in the start period do not count while starting.
        h.record(res(1), true, 2);
        h.record(res(1), true, 2);
        assert_eq!(
            (h.report().status, h.report().failing_streak),
            (HealthStatus::Starting, 0)
        );
        h.record(res(1), false, 2);
        assert_eq!(h.report().status, HealthStatus::Starting);
        h.record(res(1), false, 2);
        assert_eq!(
            (h.report().status, h.report().failing_streak),
            (HealthStatus::Unhealthy, 2)
        );
        h.record(res(0), false, 2);
        assert_eq!(
            (h.report().status, h.report().failing_streak),
            (HealthStatus::Healthy, 0)
        );
        for _ in 0..10 {
            h.record(res(0), false, 2);
        }
        assert_eq!(h.report().log.len(), KEEP);
        assert_eq!(Health::new(None).report().status, HealthStatus::None);
    }
}
