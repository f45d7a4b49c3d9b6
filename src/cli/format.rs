//! Human-readable figures for terminal output.

/// Bytes with a binary unit: `1.4 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `n` and its noun, which agree: `1 snapshot`, `2 snapshots`, `0 entries` (`noun` singular).
pub fn count(n: impl Into<u64>, noun: &str) -> String {
    let n = n.into();
    match (n, noun.strip_suffix('y')) {
        (1, _) => format!("1 {noun}"),
        (_, Some(stem)) if !stem.ends_with(['a', 'e', 'o', 'u']) => format!("{n} {stem}ies"),
        _ => format!("{n} {noun}s"),
    }
}

/// A Unix time as `YYYY-MM-DD HH:MM:SS` (UTC).
pub fn utc(secs: i64) -> String {
    let rest = secs.rem_euclid(86_400);
    let (year, month, day) = cairn::clock::civil_from_days(secs.div_euclid(86_400));
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}", rest / 3600, rest / 60 % 60, rest % 60)
}

#[cfg(test)]
mod tests {
    #[test]
    fn figures() {
        assert_eq!(super::bytes(512), "512 B");
        assert_eq!(super::bytes(1536), "1.5 KiB");
        assert_eq!(super::count(1u64, "snapshot"), "1 snapshot");
        assert_eq!(super::count(0u64, "snapshot"), "0 snapshots");
        assert_eq!(super::count(2u64, "entry"), "2 entries");
        assert_eq!(super::count(1u64, "entry"), "1 entry");
        assert_eq!(super::count(3u64, "key"), "3 keys");
        assert_eq!(super::utc(0), "1970-01-01 00:00:00");
        assert_eq!(super::utc(1_795_000_000), "2026-11-18 11:06:40");
    }
}
