//! Periods: every node computes the same period index for the same instant, so
//! a budget or a rate window resets exactly on its boundary, everywhere, with no
//! reset job — the next period is simply another counter.
//!
//! Periods are aligned to the Unix epoch (UTC): `30d` periods start every 30
//! days from 1970-01-01, `1mo` at midnight UTC on the first of each month. An
//! entity's period therefore does not depend on when it was created, and a
//! changed `budget_duration` starts counting in a fresh family of counters.

use std::fmt;
use std::str::FromStr;

/// Rate limits count per minute.
pub const RATE_WINDOW_MS: u64 = 60_000;

/// A `budget_duration`: a fixed length, or whole calendar months.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PeriodSpec {
    Millis(u64),
    Months(u32),
}

impl FromStr for PeriodSpec {
    type Err = String;

    /// LiteLLM's durations: `30s`, `30m`, `30h`, `30d`, `2w`, `1mo`, `1y`
    /// (a year is 12 calendar months).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("`{text}` has no unit (use s, m, h, d, w, mo or y)"))?;
        let (digits, unit) = text.split_at(split);
        let count: u64 = digits
            .parse()
            .map_err(|_| format!("`{text}` must start with a whole number"))?;
        if count == 0 {
            return Err(format!("`{text}` must be longer than zero"));
        }
        let unit_ms: u64 = match unit {
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 7 * 86_400_000,
            "mo" | "y" => {
                let per = if unit == "y" { 12 } else { 1 };
                let months = count
                    .checked_mul(per)
                    .and_then(|m| u32::try_from(m).ok())
                    .ok_or_else(|| format!("`{text}` is too long"))?;
                return Ok(PeriodSpec::Months(months));
            }
            _ => {
                return Err(format!(
                    "`{text}`: unknown unit `{unit}` (use s, m, h, d, w, mo or y)"
                ));
            }
        };
        count
            .checked_mul(unit_ms)
            .map(PeriodSpec::Millis)
            .ok_or_else(|| format!("`{text}` is too long"))
    }
}

impl fmt::Display for PeriodSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeriodSpec::Millis(ms) if ms % 86_400_000 == 0 => write!(f, "{}d", ms / 86_400_000),
            PeriodSpec::Millis(ms) if ms % 3_600_000 == 0 => write!(f, "{}h", ms / 3_600_000),
            PeriodSpec::Millis(ms) if ms % 60_000 == 0 => write!(f, "{}m", ms / 60_000),
            PeriodSpec::Millis(ms) if ms % 1_000 == 0 => write!(f, "{}s", ms / 1_000),
            PeriodSpec::Millis(ms) => write!(f, "{ms}ms"),
            PeriodSpec::Months(m) => write!(f, "{m}mo"),
        }
    }
}

/// How a counter family is split in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Window {
    /// One counter forever (`max_budget` without `budget_duration`).
    Lifetime,
    /// 60-second rate windows, read with [`sliding_estimate`].
    Rate,
    /// Budget periods of a `budget_duration`.
    Budget(PeriodSpec),
}

impl Window {
    /// The period that contains `t_ms` (Unix milliseconds).
    pub fn index(&self, t_ms: u64) -> u64 {
        match self {
            Window::Lifetime => 0,
            Window::Rate => t_ms / RATE_WINDOW_MS,
            Window::Budget(PeriodSpec::Millis(len)) => t_ms / (*len).max(1),
            Window::Budget(PeriodSpec::Months(n)) => month_of(t_ms) / u64::from((*n).max(1)),
        }
    }

    /// When period `index` starts (Unix milliseconds).
    pub fn start(&self, index: u64) -> u64 {
        match self {
            Window::Lifetime => 0,
            Window::Rate => index.saturating_mul(RATE_WINDOW_MS),
            Window::Budget(PeriodSpec::Millis(len)) => index.saturating_mul(*len),
            Window::Budget(PeriodSpec::Months(n)) => {
                month_start(index.saturating_mul(u64::from(*n)))
            }
        }
    }

    /// When period `index` ends (exclusive); `None` for a lifetime counter.
    pub fn end(&self, index: u64) -> Option<u64> {
        match self {
            Window::Lifetime => None,
            _ => Some(self.start(index.saturating_add(1))),
        }
    }
}

/// The request rate over the last minute, estimated from the current window
/// and the previous one weighted by how much of it still lies within the last
/// 60 s: `current + previous × (1 − elapsed / 60 s)`, rounded up so the
/// estimate never undercounts.
pub fn sliding_estimate(current: u64, previous: u64, now_ms: u64) -> u64 {
    let elapsed = now_ms % RATE_WINDOW_MS;
    let weighted = u128::from(previous) * u128::from(RATE_WINDOW_MS - elapsed);
    let carried = weighted.div_ceil(u128::from(RATE_WINDOW_MS));
    current.saturating_add(u64::try_from(carried).unwrap_or(u64::MAX))
}

const DAY_MS: u64 = 86_400_000;

/// Months since 1970-01 (UTC) of an instant.
fn month_of(t_ms: u64) -> u64 {
    let (year, month, _) = civil_from_days(t_ms / DAY_MS);
    (year - 1970) * 12 + (month - 1)
}

/// Unix milliseconds of midnight UTC on the first day of month `m` since 1970-01.
fn month_start(m: u64) -> u64 {
    // Beyond year 9999 nothing is meaningful; a malformed id must not overflow.
    let m = m.min(12 * 8030);
    let year = 1970 + m / 12;
    let month = m % 12 + 1;
    days_from_civil(year, month, 1).saturating_mul(DAY_MS)
}

/// Days since 1970-01-01 → (year, month 1..=12, day 1..=31), proleptic
/// Gregorian (H. Hinnant's algorithm, restricted to dates from 1970).
pub fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Days since 1970-01-01 of a date (proleptic Gregorian, from 1970).
pub fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).saturating_sub(719_468)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn durations_parse_like_litellm() {
        assert_eq!("30s".parse(), Ok(PeriodSpec::Millis(30_000)));
        assert_eq!("30m".parse(), Ok(PeriodSpec::Millis(1_800_000)));
        assert_eq!("30h".parse(), Ok(PeriodSpec::Millis(108_000_000)));
        assert_eq!("30d".parse(), Ok(PeriodSpec::Millis(2_592_000_000)));
        assert_eq!("1mo".parse(), Ok(PeriodSpec::Months(1)));
        assert_eq!("1y".parse(), Ok(PeriodSpec::Months(12)));
        for bad in ["", "30", "0d", "d", "3x", "-1d", "99999999999999999999d"] {
            assert!(bad.parse::<PeriodSpec>().is_err(), "{bad:?} parsed");
        }
        assert_eq!(PeriodSpec::Months(1).to_string(), "1mo");
        assert_eq!(PeriodSpec::Millis(2_592_000_000).to_string(), "30d");
    }

    #[test]
    fn a_period_starts_exactly_on_its_boundary() {
        let w = Window::Budget(PeriodSpec::Millis(30_000));
        assert_eq!(w.index(29_999), 0);
        assert_eq!(w.index(30_000), 1);
        assert_eq!((w.start(1), w.end(1)), (30_000, Some(60_000)));
        assert_eq!(Window::Lifetime.end(0), None);
    }

    #[test]
    fn calendar_months_have_their_real_lengths() {
        let w = Window::Budget(PeriodSpec::Months(1));
        // 2024-02-01T00:00:00Z and 2024-03-01T00:00:00Z (a leap February).
        let feb = 1_706_745_600_000;
        let mar = 1_709_251_200_000;
        let i = w.index(feb);
        assert_eq!(w.start(i), feb);
        assert_eq!(w.end(i), Some(mar));
        assert_eq!(w.index(mar - 1), i);
        assert_eq!(w.index(mar), i + 1);
        // 2026-12-31T23:59:59.999Z is in December, the next instant in January.
        let new_year = 1_798_761_600_000;
        assert_eq!(w.index(new_year) - w.index(new_year - 1), 1);
        assert_eq!(w.start(w.index(new_year)), new_year);
    }

    #[test]
    fn the_sliding_estimate_weights_the_previous_window() {
        assert_eq!(sliding_estimate(0, 60, 0), 60);
        assert_eq!(sliding_estimate(10, 60, 30_000), 40);
        assert_eq!(sliding_estimate(10, 60, 59_999), 11);
        assert_eq!(sliding_estimate(10, 0, 59_999), 10);
    }

    proptest! {
        #[test]
        fn every_instant_lies_in_its_period(t in 0u64..4_102_444_800_000, len in 1u64..10_000_000_000, months in 1u32..30) {
            for w in [Window::Rate, Window::Budget(PeriodSpec::Millis(len)), Window::Budget(PeriodSpec::Months(months))] {
                let i = w.index(t);
                prop_assert!(w.start(i) <= t, "{w:?} start {} > {t}", w.start(i));
                prop_assert!(w.end(i).is_some_and(|e| t < e), "{w:?} end {:?} <= {t}", w.end(i));
            }
        }
    }
}
