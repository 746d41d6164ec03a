//! Why a request was refused (which limit, how much is used, when to retry)
//! and the headroom an admitted request is told about (rate-limit headers).

use crate::pricing::Cost;

/// Which limit refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitKind {
    Requests,
    Tokens,
    Parallel,
    Budget,
}

/// A refusal, with what the 429 says and its headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exceeded {
    pub kind: LimitKind,
    /// `key sk-...abcd`, `team t-1`, `user u-1`, `customer c-1`.
    pub subject: String,
    pub limit: u64,
    pub used: u64,
    pub retry_after_s: Option<u64>,
    pub headroom: Headroom,
    /// Under a `strict` limit refused while headroom may remain elsewhere:
    /// where it is, or why it could not be had.
    pub strict: Option<String>,
}

impl Exceeded {
    pub fn message(&self) -> String {
        let retry = self
            .retry_after_s
            .map(|s| format!(" Retry after {s}s."))
            .unwrap_or_default();
        let strict = self
            .strict
            .as_ref()
            .map(|note| format!(" {note}"))
            .unwrap_or_default();
        match self.kind {
            LimitKind::Requests => format!(
                "Rate limit exceeded for {}: {} of {} requests per minute used.{strict}{retry}",
                self.subject, self.used, self.limit
            ),
            LimitKind::Tokens => format!(
                "Rate limit exceeded for {}: {} of {} tokens per minute used (this request reserves its prompt and max_tokens).{strict}{retry}",
                self.subject, self.used, self.limit
            ),
            LimitKind::Parallel => format!(
                "Rate limit exceeded for {}: {} of {} parallel requests in flight.{strict}",
                self.subject, self.used, self.limit
            ),
            LimitKind::Budget => format!(
                "Budget exceeded for {}: spend ${} of max_budget ${} (this request reserves its worst-case cost).{strict}{retry}",
                self.subject,
                Cost(u128::from(self.used)),
                Cost(u128::from(self.limit))
            ),
        }
    }
}

/// The tightest request and token limits that applied, for the
/// `x-ratelimit-*` headers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Headroom {
    pub requests: Option<(u64, u64)>,
    pub tokens: Option<(u64, u64)>,
    /// Seconds until the current rate window ends.
    pub reset_s: u64,
}

impl Headroom {
    pub(super) fn note(slot: &mut Option<(u64, u64)>, limit: u64, remaining: u64) {
        if slot.is_none_or(|(_, r)| remaining < r) {
            *slot = Some((limit, remaining));
        }
    }
}
