//! Checks BuildKit makes on expanded values when it dispatches an
//! instruction: STOPSIGNAL signals and EXPOSE port specs.

use serde::Serialize;

const SIGNALS: &[(&str, u8)] = &[
    ("ABRT", 6),
    ("ALRM", 14),
    ("BUS", 7),
    ("CHLD", 17),
    ("CLD", 17),
    ("CONT", 18),
    ("FPE", 8),
    ("HUP", 1),
    ("ILL", 4),
    ("INT", 2),
    ("IO", 29),
    ("IOT", 6),
    ("KILL", 9),
    ("PIPE", 13),
    ("POLL", 29),
    ("PROF", 27),
    ("PWR", 30),
    ("QUIT", 3),
    ("SEGV", 11),
    ("STKFLT", 16),
    ("STOP", 19),
    ("SYS", 31),
    ("TERM", 15),
    ("TRAP", 5),
    ("TSTP", 20),
    ("TTIN", 21),
    ("TTOU", 22),
    ("URG", 23),
    ("USR1", 10),
    ("USR2", 12),
    ("VTALRM", 26),
    ("WINCH", 28),
    ("XCPU", 24),
    ("XFSZ", 25),
];

/// A Linux signal number from `SIGTERM`, `term`, `15` or `SIGRTMIN+3`.
pub fn parse_signal(s: &str) -> Result<u8, String> {
    let bad = || format!("invalid signal {s:?} (use a name like SIGTERM or a number 1-64)");
    if let Ok(n) = s.parse::<u32>() {
        return if (1..=64).contains(&n) {
            Ok(n as u8)
        } else {
            Err(bad())
        };
    }
    let up = s.to_ascii_uppercase();
    let name = up.strip_prefix("SIG").unwrap_or(&up);
    if let Some(&(_, n)) = SIGNALS.iter().find(|(k, _)| *k == name) {
        return Ok(n);
    }
    let rt = |base: u8, rest: &str, sign: i32| -> Result<u8, String> {
        let off: i32 = if rest.is_empty() {
            0
        } else {
            rest.parse().map_err(|_| bad())?
        };
        let v = base as i32 + sign * off;
        if (34..=64).contains(&v) {
            Ok(v as u8)
        } else {
            Err(bad())
        }
    };
    if let Some(rest) = name.strip_prefix("RTMIN") {
        return match rest.strip_prefix('+') {
            Some(r) => rt(34, r, 1),
            None if rest.is_empty() => Ok(34),
            None => Err(bad()),
        };
    }
    if let Some(rest) = name.strip_prefix("RTMAX") {
        return match rest.strip_prefix('-') {
            Some(r) => rt(64, r, -1),
            None if rest.is_empty() => Ok(64),
            None => Err(bad()),
        };
    }
    Err(bad())
}

/// One EXPOSE entry: a port or range and a protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortSpec {
    pub start: u16,
    pub end: u16,
    /// `tcp` (default), `udp` or `sctp`.
    pub protocol: String,
}

impl PortSpec {
    /// `80`, `80/tcp`, `53/udp`, `8000-8010/tcp`.
    pub fn parse(s: &str) -> Result<PortSpec, String> {
        let bad = |why: &str| format!("invalid port {s:?}: {why}");
        let (ports, proto) = match s.split_once('/') {
            Some((p, proto)) => (p, proto.to_ascii_lowercase()),
            None => (s, "tcp".to_string()),
        };
        if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
            return Err(bad("the protocol must be tcp, udp or sctp"));
        }
        let num = |p: &str| -> Result<u16, String> {
            p.parse::<u16>()
                .map_err(|_| bad("ports are numbers from 0 to 65535"))
        };
        let (start, end) = match ports.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => {
                let p = num(ports)?;
                (p, p)
            }
        };
        if end < start {
            return Err(bad("the range ends before it starts"));
        }
        Ok(PortSpec {
            start,
            end,
            protocol: proto,
        })
    }

    /// The image-config keys (`80/tcp`), one per port of the range.
    pub fn keys(&self) -> Vec<String> {
        (self.start..=self.end)
            .map(|p| format!("{p}/{}", self.protocol))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals() {
        assert_eq!(parse_signal("SIGTERM"), Ok(15));
        assert_eq!(parse_signal("kill"), Ok(9));
        assert_eq!(parse_signal("SIGRTMIN+3"), Ok(37));
        assert_eq!(parse_signal("RTMAX-1"), Ok(63));
        assert_eq!(parse_signal("9"), Ok(9));
        assert!(parse_signal("0").is_err());
        assert!(parse_signal("SIGNOPE").is_err());
        assert!(parse_signal("RTMIN+40").is_err());
    }

    #[test]
    fn ports() {
        assert_eq!(PortSpec::parse("80").unwrap().keys(), vec!["80/tcp"]);
        assert_eq!(PortSpec::parse("53/UDP").unwrap().protocol, "udp");
        assert_eq!(PortSpec::parse("8000-8002/tcp").unwrap().keys().len(), 3);
        assert!(PortSpec::parse("80/icmp").is_err());
        assert!(PortSpec::parse("99999").is_err());
        assert!(PortSpec::parse("9-1").is_err());
        assert!(PortSpec::parse("http").is_err());
    }
}
