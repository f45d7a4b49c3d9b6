//! Time as cairn tells it: the process clock every record, snapshot and lock file uses, calendar
//! days for retention and display, and the durations configs and flags are written in.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Unix milliseconds now: [`now`].
pub fn now_ms() -> i64 {
    now().as_millis() as i64
}

/// The time since the Unix epoch by the system clock (moved by the test knob
/// `CAIRN_CLOCK_OFFSET`, [`crate::knobs`]): what every record, snapshot time and lock file of
/// this process says.
pub fn now() -> Duration {
    static OFFSET: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    let offset = *OFFSET
        .get_or_init(|| crate::knobs::get("CAIRN_CLOCK_OFFSET").and_then(|text| text.trim().parse().ok()).unwrap_or(0));
    let real = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    match offset >= 0 {
        true => real + Duration::from_secs(offset as u64),
        false => real.saturating_sub(Duration::from_secs(offset.unsigned_abs())),
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's algorithm).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// Parses `90s`, `15m`, `1h30m`, `2d`, `1w` (a bare number is seconds).
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let mut total = 0u64;
    let mut number = String::new();
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            _ => return Err(format!("bad duration {text:?}: use forms like 90s, 15m, 1h30m, 2d, 1w")),
        };
        let n: u64 = number.parse().map_err(|_| format!("bad duration {text:?}: a unit needs a number before it"))?;
        total += n * unit;
        number.clear();
    }
    if !number.is_empty() {
        total += number.parse::<u64>().map_err(|_| format!("bad duration {text:?}"))?;
    } else if total == 0 {
        return Err(format!("bad duration {text:?}"));
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("1w"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        for bad in ["", "h", "1x", "m5"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
