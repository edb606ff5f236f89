//! `--deadline`: a duration from now (`90s`, `30m`, `2h`, `1d`, `1h30m`) or an RFC 3339 time.

use chrono::{DateTime, Duration, Utc};

/// The deadline `s` names, relative to `now`. Refuses a time that is not in the future, with a
/// message that says what was given and what is accepted.
pub fn parse(s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let s = s.trim();
    let at = match parse_relative(s) {
        Some(Ok(d)) => now + d,
        Some(Err(e)) => return Err(e),
        None => DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| {
                format!(
                    "deadline {s:?} is neither a duration from now (30m, 2h, 1d, 1h30m) nor an RFC 3339 time (2030-01-31T18:00:00Z)"
                )
            })?,
    };
    if at <= now {
        return Err(format!(
            "deadline {} is in the past (now is {}); give a later time or a duration such as 2h",
            at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ));
    }
    Ok(at)
}

/// `Some` when `s` looks like a duration (digits followed by s/m/h/d, repeated), `None` when it
/// does not (then it may be a time).
fn parse_relative(s: &str) -> Option<Result<Duration, String>> {
    if s.is_empty() || !s.as_bytes()[0].is_ascii_digit() || s.contains(['-', ':', 'T']) {
        return None;
    }
    let mut total: i64 = 0;
    let mut digits = String::new();
    let mut any = false;
    for ch in s.chars() {
        if ch.is_ascii_digit() {
            digits.push(ch);
            continue;
        }
        let unit: i64 = match ch {
            's' => 1,
            'm' => 60,
            'h' => 3_600,
            'd' => 86_400,
            _ => {
                return Some(Err(format!(
                    "deadline {s:?}: unknown unit {ch:?} (use s, m, h or d, e.g. 30m or 2h)"
                )));
            }
        };
        let Ok(n) = digits.parse::<i64>() else {
            return Some(Err(format!(
                "deadline {s:?}: a number must come before each unit"
            )));
        };
        digits.clear();
        let Some(t) = n.checked_mul(unit).and_then(|v| total.checked_add(v)) else {
            return Some(Err(format!("deadline {s:?} is too far ahead")));
        };
        total = t;
        any = true;
    }
    if !digits.is_empty() || !any {
        return Some(Err(format!(
            "deadline {s:?}: give a unit after the number (s, m, h or d, e.g. 30m or 2h)"
        )));
    }
    if total > 365 * 86_400 {
        return Some(Err(format!("deadline {s:?} is too far ahead")));
    }
    Some(Ok(Duration::seconds(total)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        "2030-01-01T00:00:00Z".parse().unwrap()
    }

    #[test]
    fn durations() {
        assert_eq!(parse("30m", now()).unwrap(), now() + Duration::minutes(30));
        assert_eq!(parse("2h", now()).unwrap(), now() + Duration::hours(2));
        assert_eq!(parse("1d", now()).unwrap(), now() + Duration::days(1));
        assert_eq!(parse("90s", now()).unwrap(), now() + Duration::seconds(90));
        assert_eq!(
            parse("1h30m", now()).unwrap(),
            now() + Duration::minutes(90)
        );
        assert_eq!(parse(" 2h ", now()).unwrap(), now() + Duration::hours(2));
    }

    #[test]
    fn rfc3339() {
        assert_eq!(
            parse("2030-01-02T03:04:05Z", now()).unwrap(),
            "2030-01-02T03:04:05Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert_eq!(
            parse("2030-01-02T03:04:05+02:00", now()).unwrap(),
            "2030-01-02T01:04:05Z".parse::<DateTime<Utc>>().unwrap()
        );
    }

    #[test]
    fn refusals_say_why() {
        assert!(
            parse("2020-01-01T00:00:00Z", now())
                .unwrap_err()
                .contains("in the past")
        );
        assert!(parse("0m", now()).unwrap_err().contains("in the past"));
        assert!(parse("2w", now()).unwrap_err().contains("unknown unit"));
        assert!(parse("15", now()).unwrap_err().contains("give a unit"));
        assert!(parse("tomorrow", now()).unwrap_err().contains("RFC 3339"));
        assert!(parse("", now()).unwrap_err().contains("RFC 3339"));
        assert!(
            parse("99999999999999d", now())
                .unwrap_err()
                .contains("too far")
        );
    }
}
