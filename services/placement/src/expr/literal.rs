//! Readings of a literal beyond its text: a number, a version (dot-separated components,
//! compared component-wise) or a date (a second, or a whole day for a bare date, in UTC).

use super::Moment;
use std::cmp::Ordering;

/// An optional sign, digits, and optionally a fraction: the strings that compare
/// numerically.
pub(super) fn parse_number(text: &str) -> Option<f64> {
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
    let (whole, fraction) = match unsigned.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (unsigned, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || fraction.is_some_and(|f| !digits(f)) {
        return None;
    }
    text.parse().ok()
}

pub(super) fn parse_integer(text: &str) -> Option<i64> {
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
    if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// `1.14.5` (an optional leading `v`) as its components.
pub(super) fn parse_version(text: &str) -> Option<Vec<u64>> {
    version_components(text).collect()
}

fn version_components(text: &str) -> impl Iterator<Item = Option<u64>> + '_ {
    let text = text.strip_prefix(['v', 'V']).unwrap_or(text);
    text.split('.').map(|part| {
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            None
        } else {
            part.parse().ok()
        }
    })
}

/// Compares an instance's version string with a parsed version, missing components being
/// 0; None if the instance's version is not a version.
pub(super) fn compare_version(instance: &str, value: &[u64]) -> Option<Ordering> {
    let mut ours = version_components(instance);
    let mut theirs = value.iter().copied();
    let mut ordering = Ordering::Equal;
    loop {
        let (a, b) = match (ours.next(), theirs.next()) {
            (None, None) => return Some(ordering),
            (Some(a), b) => (a?, b.unwrap_or(0)),
            (None, Some(b)) => (0, b),
        };
        if ordering == Ordering::Equal {
            ordering = a.cmp(&b);
        }
    }
}

/// `YYYY-MM-DD` (the whole day) or `YYYY-MM-DDTHH:MM:SS[.fff][Z|±HH:MM]` (one second; UTC
/// without an offset).
pub(super) fn parse_date(text: &str) -> Option<Moment> {
    let bytes = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = bytes.get(range)?;
        if part.iter().all(u8::is_ascii_digit) {
            std::str::from_utf8(part).ok()?.parse().ok()
        } else {
            None
        }
    };
    if bytes.len() < 10 || bytes[4] != b'-' || bytes[7] != b'-' {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    let midnight = days_from_civil(year, month, day) * 86_400;
    if bytes.len() == 10 {
        return Some(Moment {
            start: midnight,
            end: midnight + 86_400,
        });
    }
    if !bytes[10].eq_ignore_ascii_case(&b'T')
        || bytes.get(13) != Some(&b':')
        || bytes.get(16) != Some(&b':')
    {
        return None;
    }
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut rest = &text[19..];
    if let Some(fraction) = rest.strip_prefix('.') {
        let len = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if len == 0 {
            return None;
        }
        rest = &fraction[len..];
    }
    let offset = match rest.as_bytes() {
        [] => 0,
        [z] if z.eq_ignore_ascii_case(&b'Z') => 0,
        [sign @ (b'+' | b'-'), ..] => {
            let zone = &rest.as_bytes()[1..];
            let (h, m) = match zone {
                [h1, h2, b':', m1, m2] | [h1, h2, m1, m2] => {
                    let two = |a: u8, b: u8| -> Option<i64> {
                        (a.is_ascii_digit() && b.is_ascii_digit())
                            .then(|| i64::from(a - b'0') * 10 + i64::from(b - b'0'))
                    };
                    (two(*h1, *h2)?, two(*m1, *m2)?)
                }
                _ => return None,
            };
            if h > 23 || m > 59 {
                return None;
            }
            let seconds = h * 3600 + m * 60;
            if *sign == b'+' {
                seconds
            } else {
                -seconds
            }
        }
        _ => return None,
    };
    let start = midnight + hour * 3600 + minute * 60 + second - offset;
    Some(Moment {
        start,
        end: start + 1,
    })
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let shifted_month = (month + 9) % 12;
    let day_of_year = (153 * shifted_month + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}
