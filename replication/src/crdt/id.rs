//! Which counter: `(scope, entity, metric, window, period)`, with a compact,
//! stable byte form used as the storage key and on the wire.

use std::sync::Arc;

use super::period::{PeriodSpec, Window};

/// What a counter is attached to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Scope {
    Key = 1,
    Team = 2,
    User = 3,
    Customer = 4,
    Tag = 5,
    /// A key on one model group (`model_rpm_limit`, `model_max_budget`):
    /// entity `"<key hash>/<model group>"`.
    KeyModel = 6,
    /// One model group for everyone (deployment-level `rpm`/`tpm`).
    Model = 7,
}

/// What is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Metric {
    /// Picodollars (integers: never floats in a CRDT).
    Spend = 1,
    Requests = 2,
    Tokens = 3,
    /// Requests admitted and not yet settled (`max_parallel_requests`).
    Parallel = 4,
    /// Rights to the counter of the same id with `Spend` (and so on) under a
    /// `strict` limit: in each node's own slot, `p` is what the issuer has
    /// granted it and `n` what it gave back (see `escrow`).
    SpendRights = 5,
    RequestRights = 6,
    TokenRights = 7,
    ParallelRights = 8,
}

impl Metric {
    /// The metric holding the rights to this one under a `strict` limit.
    pub fn rights(self) -> Option<Metric> {
        match self {
            Metric::Spend => Some(Metric::SpendRights),
            Metric::Requests => Some(Metric::RequestRights),
            Metric::Tokens => Some(Metric::TokenRights),
            Metric::Parallel => Some(Metric::ParallelRights),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CounterId {
    pub scope: Scope,
    pub entity: Arc<str>,
    pub metric: Metric,
    pub window: Window,
    pub period: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed counter id: {0}")]
pub struct DecodeError(&'static str);

const FORMAT: u8 = 1;

impl CounterId {
    /// `format | scope | metric | window (tag + argument) | period | entity`,
    /// integers big-endian so ids of one entity sort by period.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24 + self.entity.len());
        out.extend([FORMAT, self.scope as u8, self.metric as u8]);
        match self.window {
            Window::Lifetime => out.push(0),
            Window::Rate => out.push(1),
            Window::Budget(PeriodSpec::Millis(ms)) => {
                out.push(2);
                out.extend(ms.to_be_bytes());
            }
            Window::Budget(PeriodSpec::Months(m)) => {
                out.push(3);
                out.extend(m.to_be_bytes());
            }
        }
        out.extend(self.period.to_be_bytes());
        out.extend(self.entity.as_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader(bytes);
        if r.byte()? != FORMAT {
            return Err(DecodeError("unknown format"));
        }
        let scope = match r.byte()? {
            1 => Scope::Key,
            2 => Scope::Team,
            3 => Scope::User,
            4 => Scope::Customer,
            5 => Scope::Tag,
            6 => Scope::KeyModel,
            7 => Scope::Model,
            _ => return Err(DecodeError("unknown scope")),
        };
        let metric = match r.byte()? {
            1 => Metric::Spend,
            2 => Metric::Requests,
            3 => Metric::Tokens,
            4 => Metric::Parallel,
            5 => Metric::SpendRights,
            6 => Metric::RequestRights,
            7 => Metric::TokenRights,
            8 => Metric::ParallelRights,
            _ => return Err(DecodeError("unknown metric")),
        };
        let window = match r.byte()? {
            0 => Window::Lifetime,
            1 => Window::Rate,
            2 => Window::Budget(PeriodSpec::Millis(u64::from_be_bytes(r.array()?))),
            3 => Window::Budget(PeriodSpec::Months(u32::from_be_bytes(r.array()?))),
            _ => return Err(DecodeError("unknown window")),
        };
        let period = u64::from_be_bytes(r.array()?);
        let entity = std::str::from_utf8(r.0).map_err(|_| DecodeError("entity is not UTF-8"))?;
        Ok(Self {
            scope,
            entity: entity.into(),
            metric,
            window,
            period,
        })
    }

    /// The same counter with `metric` instead.
    pub fn with_metric(&self, metric: Metric) -> Self {
        Self {
            metric,
            ..self.clone()
        }
    }

    /// When this counter stops mattering: the end of its period (rate windows
    /// are still read one window later). `None`: never.
    pub fn ends_at(&self) -> Option<u64> {
        let end = self.window.end(self.period)?;
        Some(match self.window {
            Window::Rate => end.saturating_add(super::RATE_WINDOW_MS),
            _ => end,
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, DecodeError> {
        let (&b, rest) = self.0.split_first().ok_or(DecodeError("truncated"))?;
        self.0 = rest;
        Ok(b)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or(DecodeError("truncated"))?;
        self.0 = rest;
        Ok(*head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_refuse_garbage() {
        for window in [
            Window::Lifetime,
            Window::Rate,
            Window::Budget(PeriodSpec::Millis(30_000)),
            Window::Budget(PeriodSpec::Months(1)),
        ] {
            let id = CounterId {
                scope: Scope::KeyModel,
                entity: "ab12/gpt-4o".into(),
                metric: Metric::Tokens,
                window,
                period: 29_000_000,
            };
            assert_eq!(CounterId::decode(&id.encode()), Ok(id));
        }
        assert!(CounterId::decode(&[]).is_err());
        assert!(CounterId::decode(&[1, 1, 1, 2, 0]).is_err());
        assert!(CounterId::decode(&[9, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(CounterId::decode(&[1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff]).is_err());
    }
}
