//! RFC 3339 timestamps ↔ Unix seconds, without a date-time dependency.
//!
//! Days from civil date: Howard Hinnant's `days_from_civil` algorithm
//! (<http://howardhinnant.github.io/date_algorithms.html>), exact for the proleptic Gregorian
//! calendar.

/// Parses `YYYY-MM-DDTHH:MM:SS[.frac][Z|±HH:MM]` (a space may replace `T`; no zone = UTC) into
/// Unix seconds (fractions are truncated).
///
/// ```
/// use threatrank::ingest::parse_rfc3339;
/// assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Ok(0));
/// assert_eq!(parse_rfc3339("2024-06-06T17:32:50.000Z"), Ok(1_717_695_170));
/// assert!(parse_rfc3339("2024-13-01T00:00:00Z").is_err());
/// ```
pub fn parse_rfc3339(s: &str) -> Result<i64, String> {
    let b = s.as_bytes();
    let bad = || format!("not an RFC 3339 timestamp: {:?}", truncate(s));
    if b.len() < 19 {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<i64, String> {
        let part = &b[r];
        if part.iter().all(u8::is_ascii_digit) {
            Ok(part.iter().fold(0i64, |a, d| a * 10 + i64::from(d - b'0')))
        } else {
            Err(bad())
        }
    };
    if b[4] != b'-' || b[7] != b'-' || !(b[10] == b'T' || b[10] == b' ' || b[10] == b't') {
        return Err(bad());
    }
    if b[13] != b':' || b[16] != b':' {
        return Err(bad());
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || se > 60
    {
        return Err(format!("timestamp out of range: {:?}", truncate(s)));
    }
    let mut i = 19;
    if i < b.len() && b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return Err(bad());
        }
    }
    let offset = match &b[i..] {
        [] | [b'Z'] | [b'z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let oh = num(i + 1..i + 3)?;
            let om = num(i + 4..i + 6)?;
            if oh > 23 || om > 59 {
                return Err(bad());
            }
            let off = oh * 3600 + om * 60;
            if *sign == b'+' {
                off
            } else {
                -off
            }
        }
        _ => return Err(bad()),
    };
    let days = days_from_civil(y, mo, d);
    Ok(days * 86_400 + h * 3600 + mi * 60 + se - offset)
}

/// Formats Unix seconds as `YYYY-MM-DDTHH:MM:SSZ`.
///
/// ```
/// use threatrank::ingest::format_rfc3339;
/// assert_eq!(format_rfc3339(1_717_695_170), "2024-06-06T17:32:50Z");
/// ```
pub fn format_rfc3339(t: i64) -> String {
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(40) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(y) => 29,
        _ => 28,
    }
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Civil date `(year, month, day)` of a day count since 1970-01-01 (Hinnant's
/// `civil_from_days`); `synth` formats timestamps with it without allocating.
pub(crate) fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_values() {
        // Reference values from `date -u -d ... +%s`.
        assert_eq!(parse_rfc3339("2000-02-29T12:00:00Z"), Ok(951_825_600));
        assert_eq!(parse_rfc3339("2024-06-17T08:10:30.000Z"), Ok(1_718_611_830));
        assert_eq!(
            parse_rfc3339("2024-06-17 10:10:30+02:00"),
            Ok(1_718_611_830)
        );
        assert_eq!(parse_rfc3339("2024-06-17T08:10:30"), Ok(1_718_611_830));
        assert!(parse_rfc3339("2023-02-29T00:00:00Z").is_err());
        assert!(parse_rfc3339("2024-06-17T08:10:30.Z").is_err());
        assert!(parse_rfc3339("2024-06-17T08:10:30Q").is_err());
        assert!(parse_rfc3339("yesterday").is_err());
        assert!(parse_rfc3339("２０２４-06-17T08:10:30Z").is_err());
    }

    #[test]
    fn round_trip() {
        for t in [-86_401, 0, 951_825_600, 1_718_611_830, 4_102_444_800] {
            assert_eq!(parse_rfc3339(&format_rfc3339(t)), Ok(t));
        }
    }
}
