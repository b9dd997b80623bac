//! UTC calendar arithmetic for daily and monthly windows (no time zone data,
//! no clock: times are passed in).

use super::DAY_MS;

/// Civil date (year, month 1-12, day 1-31) of a day number since 1970-01-01
/// (Howard Hinnant's algorithm).
pub(super) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Day number of a civil date (the inverse of [`civil_from_days`]).
pub(super) fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `year × 12 + month - 1` of a Unix ms time (UTC).
pub fn month_index(ms: u64) -> u64 {
    let (y, m, _) = civil_from_days((ms / DAY_MS) as i64);
    (y * 12 + i64::from(m) - 1) as u64
}

/// `YYYY-MM-DD` of a Unix ms time (UTC).
pub fn date_string(ms: u64) -> String {
    let (y, m, d) = civil_from_days((ms / DAY_MS) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Unix ms of the start of a `YYYY-MM-DD` day (UTC); `None` unless it is a
/// real date from 1970 on.
pub fn day_start_ms(date: &str) -> Option<u64> {
    let b = date.as_bytes();
    let digits = |r: std::ops::Range<usize>| {
        b.get(r.clone())
            .filter(|d| d.iter().all(u8::is_ascii_digit))
            .and_then(|_| date[r].parse::<u32>().ok())
    };
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, m, d) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let days = days_from_civil(i64::from(y), m, d);
    // Round-trips only for a real date (no 2026-02-30).
    (days >= 0 && (1..=12).contains(&m) && civil_from_days(days) == (i64::from(y), m, d))
        .then(|| days as u64 * DAY_MS)
}

/// Unix ms of the next UTC midnight.
pub(super) fn next_day_ms(ms: u64) -> u64 {
    (ms / DAY_MS + 1) * DAY_MS
}

/// Unix ms of the first instant of the next UTC month.
pub(super) fn next_month_ms(ms: u64) -> u64 {
    let (y, m, _) = civil_from_days((ms / DAY_MS) as i64);
    let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    days_from_civil(y, m, 1) as u64 * DAY_MS
}
