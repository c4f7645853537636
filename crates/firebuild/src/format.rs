//! Small helpers for human-readable output.

/// Bytes as a short human size: `512B`, `1.5KiB`, `20.0MiB`.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

/// Seconds since the epoch as an RFC 3339 UTC timestamp.
pub fn timestamp(unix_seconds: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix_seconds)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix_seconds.to_string())
}

/// Unix nanoseconds as an RFC 3339 UTC timestamp.
fn timestamp_ns(ns: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ns.to_string())
}

/// A health report as `docker inspect` shows `State.Health`.
pub fn docker_health(h: &firebuild_agent_proto::HealthReport) -> serde_json::Value {
    serde_json::json!({
        "Status": h.status.as_str(),
        "FailingStreak": h.failing_streak,
        "Log": h.log.iter().map(|r| serde_json::json!({
            "Start": timestamp_ns(r.start_ns),
            "End": timestamp_ns(r.end_ns),
            "ExitCode": r.exit_code,
            "Output": r.output,
        })).collect::<Vec<_>>(),
    })
}

/// Prints rows as left-aligned columns separated by two spaces.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_and_times() {
        assert_eq!(super::size(512), "512B");
        assert_eq!(super::size(1536), "1.5KiB");
        assert_eq!(super::size(20 * 1024 * 1024), "20.0MiB");
        assert_eq!(super::timestamp(0), "1970-01-01T00:00:00Z");
    }
}
