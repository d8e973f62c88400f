//! Timestamps as Genesis Mesh's Python side writes and reads them. Signed documents use
//! pydantic v2's JSON form (`2026-11-22T02:10:11.101422Z`, no fraction when the
//! microseconds are zero); other fields use Python's `isoformat()` (`+00:00`). Input is
//! parsed like `datetime.fromisoformat`.

use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

/// A parsed ISO 8601 time and the zone form it was written in (pydantic keeps it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub at: OffsetDateTime,
    /// No offset was given (Python: a naive datetime).
    pub naive: bool,
}

/// Truncates to microseconds (Python's resolution).
pub fn micros(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(t.nanosecond() / 1000 * 1000).unwrap_or(t)
}

pub fn now() -> OffsetDateTime {
    micros(OffsetDateTime::now_utc())
}

fn date_time(t: OffsetDateTime) -> String {
    let us = t.nanosecond() / 1000;
    let base = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    if us == 0 {
        base
    } else {
        format!("{base}.{us:06}")
    }
}

/// `±HH:MM`, and `:SS` when the offset has seconds (as Python's `isoformat()`), so a
/// re-emitted stamp always names the instant it was parsed from.
fn offset(o: UtcOffset) -> String {
    let secs = o.whole_seconds();
    let sign = if secs < 0 { '-' } else { '+' };
    let secs = secs.abs();
    let hm = format!("{sign}{:02}:{:02}", secs / 3600, secs % 3600 / 60);
    match secs % 60 {
        0 => hm,
        s => format!("{hm}:{s:02}"),
    }
}

/// pydantic v2 JSON form of an aware UTC time: `Z`, six fraction digits only when the
/// microseconds are non-zero.
pub fn pydantic(t: OffsetDateTime) -> String {
    format!("{}Z", date_time(micros(t).to_offset(UtcOffset::UTC)))
}

/// pydantic's re-emission of a parsed stamp: UTC as `Z`, other offsets kept, naive bare.
pub fn pydantic_stamp(s: &Stamp) -> String {
    let t = micros(s.at);
    if s.naive {
        date_time(t)
    } else if t.offset().is_utc() {
        format!("{}Z", date_time(t))
    } else {
        format!("{}{}", date_time(t), offset(t.offset()))
    }
}

/// Python `datetime.isoformat()` of an aware UTC time (`+00:00`).
pub fn isoformat(t: OffsetDateTime) -> String {
    format!("{}+00:00", date_time(micros(t).to_offset(UtcOffset::UTC)))
}

/// A field of exactly `width` ASCII digits (Python's `fromisoformat` takes no other
/// width), so no value can be out of its type's range.
fn digits(s: &str, width: usize) -> Option<u16> {
    (s.len() == width && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

fn two(s: &str) -> Option<u8> {
    digits(s, 2).and_then(|n| u8::try_from(n).ok())
}

/// Parses like Python 3.11+'s `datetime.fromisoformat`: `YYYY-MM-DD[T| ]HH:MM[:SS[.f+]]`
/// with an optional `Z` or `±HH:MM[:SS]` (strictly within a day either way, like
/// Python's `timezone`). Every field has its fixed number of digits; a value out of range
/// is refused, never wrapped. A date alone is midnight.
pub fn parse(s: &str) -> Option<Stamp> {
    let s = s.trim();
    if s.len() < 10 || !s.is_ascii() {
        return None;
    }
    let (date, rest) = s.split_at(10);
    let mut d = date.split('-');
    let (y, m, day) = (digits(d.next()?, 4)?, two(d.next()?)?, two(d.next()?)?);
    if d.next().is_some() {
        return None;
    }
    let date = Date::from_calendar_date(i32::from(y), Month::try_from(m).ok()?, day).ok()?;
    let mut time = Time::MIDNIGHT;
    let mut zone: Option<UtcOffset> = None;
    if !rest.is_empty() {
        let rest = rest.strip_prefix(['T', ' '])?;
        let (clock, tz) = match rest.find(['Z', 'z', '+', '-']) {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let (hms, frac) = clock.split_once('.').map_or((clock, None), |(a, b)| (a, Some(b)));
        let mut parts = hms.split(':');
        let h = two(parts.next()?)?;
        let mi = two(parts.next()?)?;
        let sec = match parts.next() {
            Some(p) => two(p)?,
            None => 0,
        };
        if parts.next().is_some() {
            return None;
        }
        let us = match frac {
            None => 0,
            Some(f) if !f.is_empty() && f.len() <= 9 && f.bytes().all(|b| b.is_ascii_digit()) => {
                let padded = format!("{f:0<6}");
                padded[..6].parse().ok()?
            }
            Some(_) => return None,
        };
        time = Time::from_hms_micro(h, mi, sec, us).ok()?;
        if !tz.is_empty() {
            zone = Some(if tz.eq_ignore_ascii_case("z") {
                UtcOffset::UTC
            } else {
                let sign: i32 = if tz.starts_with('-') { -1 } else { 1 };
                let mut p = tz[1..].split(':');
                let oh = i32::from(two(p.next()?)?);
                let om = i32::from(two(p.next()?)?);
                let os = match p.next() {
                    Some(p) => i32::from(two(p)?),
                    None => 0,
                };
                if p.next().is_some() {
                    return None;
                }
                // At most 99 * 3600 + 99 * 60 + 99: no overflow.
                let secs = oh * 3600 + om * 60 + os;
                if secs >= 24 * 3600 {
                    return None;
                }
                UtcOffset::from_whole_seconds(sign * secs).ok()?
            });
        }
    }
    let local = PrimitiveDateTime::new(date, time);
    Some(Stamp {
        at: local.assume_offset(zone.unwrap_or(UtcOffset::UTC)),
        naive: zone.is_none(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pydantic_form_drops_zero_microseconds_and_uses_z() {
        let t = parse("2026-11-22T02:10:11.101422+00:00").expect("parse");
        assert_eq!(pydantic(t.at), "2026-11-22T02:10:11.101422Z");
        let whole = parse("2026-11-22T02:10:11.000000Z").expect("parse");
        assert_eq!(pydantic(whole.at), "2026-11-22T02:10:11Z");
        assert_eq!(
            pydantic_stamp(&parse("2026-11-22T02:10:11.5Z").expect("p")),
            "2026-11-22T02:10:11.500000Z"
        );
        assert_eq!(
            pydantic_stamp(&parse("2026-11-22T03:10:11+01:00").expect("p")),
            "2026-11-22T03:10:11+01:00"
        );
        assert_eq!(pydantic_stamp(&parse("2026-11-22T02:10:11").expect("p")), "2026-11-22T02:10:11");
        assert_eq!(isoformat(t.at), "2026-11-22T02:10:11.101422+00:00");
    }

    #[test]
    fn parses_what_fromisoformat_parses() {
        let a = parse("2026-11-22T02:10:10.378857+00:00").expect("a");
        let b = parse("2026-11-22T02:10:10.378857Z").expect("b");
        assert_eq!(a.at, b.at);
        let c = parse("2026-11-22T03:10:10.378857+01:00").expect("c");
        assert_eq!(a.at, c.at);
        assert!(parse("2026-11-22T02:10:10.123Z").is_some());
        assert!(parse("2026-11-22").is_some());
        for bad in [
            "yesterday",
            "2026-13-01T00:00:00Z",
            "2026-11-22T25:00:00Z",
            "2026-11-22T02:10:10.Z",
            "",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }

    /// An offset's seconds were dropped on re-emission (another instant; the `mesh_json`
    /// fuzz target finds it at once in the unfixed code), and out-of-range fields wrapped (`T256:00` read as midnight) or
    /// overflowed (`+99999999:00`, a panic) instead of being refused.
    #[test]
    fn offsets_keep_their_seconds_and_out_of_range_fields_are_refused() {
        let s = parse("2026-11-22T03:10:11+01:00:30").expect("seconds in the offset");
        assert_eq!(pydantic_stamp(&s), "2026-11-22T03:10:11+01:00:30");
        assert_eq!(parse(&pydantic_stamp(&s)).expect("again"), s);
        let neg = parse("2026-11-22T03:10:11-00:00:30").expect("negative");
        assert_eq!(pydantic_stamp(&neg), "2026-11-22T03:10:11-00:00:30");
        // Python accepts two-digit minutes past 59 in an offset, within a day.
        assert_eq!(parse("2026-11-22T03:10:11+00:60").expect("p").at.offset().whole_seconds(), 3600);
        for bad in [
            "2026-11-22T256:00",
            "2026-11-22T03:256:00",
            "2026-11-22T03:10:256",
            "2026-1-257",
            "2026-11-22T3:10:11Z",
            "2026-11-22T03:10:11+99999999:00",
            "2026-11-22T03:10:11+01:4294967296",
            "2026-11-22T03:10:11+24:00",
            "2026-11-22T03:10:11-23:59:60",
            "2026-11-22T03:10:11+01:00:00:00",
            "2026-11-22T03:10:11+1:00",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
        assert!(parse("2026-11-22T03:10:11+23:59:59").is_some());
    }
}
