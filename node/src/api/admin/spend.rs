//! `GET /spend/logs`: per-request spend rows from every node of this region.
//! Rows live on the node that served the request; the node asked gathers
//! them from its region's members (as Raft knows them) over the inter-node
//! link (`spend_rpc.rs`) with the filter already narrowed to what the caller
//! may see — the caller's credentials never leave this node — and merges
//! them newest first. A member that does not answer within the deadline is
//! named in the `x-meridian-spend-logs-missing` header, not silently dropped.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use http::HeaderValue;
use serde::Deserialize;

use crate::api::ApiError;
use crate::api::extract::Auth;
use crate::auth::Principal;
use crate::error::{Error, Result};
use crate::node::Node;
use crate::secret::Secret;
use crate::spendlog::Filter;

const FAN_OUT_DEADLINE: Duration = Duration::from_secs(3);
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

#[derive(Debug, Default, Deserialize)]
pub struct SpendQuery {
    /// A virtual key (`sk-...`) or its SHA-256 hex.
    api_key: Option<String>,
    team_id: Option<String>,
    user_id: Option<String>,
    end_user: Option<String>,
    request_id: Option<String>,
    /// `YYYY-MM-DD` (UTC), inclusive.
    start_date: Option<String>,
    /// `YYYY-MM-DD` (UTC), inclusive.
    end_date: Option<String>,
    limit: Option<usize>,
    /// `node`: this node's rows only.
    scope: Option<String>,
}

pub async fn logs(
    State(node): State<Arc<Node>>,
    Auth(p): Auth,
    Query(q): Query<SpendQuery>,
) -> std::result::Result<Response, ApiError> {
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let filter = filter_for(&p, &q)?;
    // Whoever sees only its own key's rows has fewer of them read for it.
    let max_scanned = if p.may_read_all() {
        crate::spendlog::MAX_SCANNED
    } else {
        crate::spendlog::MAX_SCANNED_OWN
    };
    let mut rows = node
        .spend_log
        .query_bounded(&filter, limit, max_scanned)
        .await;
    let mut missing = Vec::new();
    if let Some(peers) = node
        .spend_peers
        .as_ref()
        .filter(|_| q.scope.as_deref() != Some("node"))
    {
        let me = node.metadata.node_id();
        let members: Vec<_> = node
            .metadata
            .status()
            .members
            .into_iter()
            .filter(|m| m.node_id != me && !m.raft_addr.is_empty())
            .collect();
        let asks = members.iter().map(|m| {
            peers.ask(
                &m.raft_addr,
                &filter,
                (limit, max_scanned),
                FAN_OUT_DEADLINE,
            )
        });
        for (member, answer) in members
            .iter()
            .zip(futures_util::future::join_all(asks).await)
        {
            match answer {
                // A member's rows are checked again: only rows the caller
                // may see reach it, whatever a peer sent.
                Ok(theirs) => rows.extend(theirs.into_iter().filter(|r| filter.matches(r))),
                Err(e) => {
                    tracing::warn!(member = member.node_id, error = %e, "spend logs: a member did not answer");
                    missing.push(member.node_id.to_string());
                }
            }
        }
        rows.sort_by(|a, b| (b.end_time, &b.request_id).cmp(&(a.end_time, &a.request_id)));
        rows.truncate(limit);
    }
    let mut response = Json(rows).into_response();
    if !missing.is_empty()
        && let Ok(v) = HeaderValue::from_str(&missing.join(","))
    {
        response
            .headers_mut()
            .insert("x-meridian-spend-logs-missing", v);
    }
    Ok(response)
}

/// The caller's filter, narrowed to what it may see: admins and viewers see
/// every row; anyone else only the rows of their own key.
fn filter_for(p: &Principal, q: &SpendQuery) -> Result<Filter> {
    let api_key = q.api_key.as_deref().map(|k| {
        if k.len() == 64 && k.bytes().all(|b| b.is_ascii_hexdigit()) {
            k.to_ascii_lowercase()
        } else {
            hex::encode(Secret::new(k).sha256())
        }
    });
    let mut filter = Filter {
        api_key,
        team_id: q.team_id.clone(),
        user_id: q.user_id.clone(),
        end_user: q.end_user.clone(),
        request_id: q.request_id.clone(),
        start_ms: q
            .start_date
            .as_deref()
            .map(|d| day_ms(d, "start_date"))
            .transpose()?,
        end_ms: q
            .end_date
            .as_deref()
            .map(|d| day_ms(d, "end_date").map(|ms| ms + 86_400_000))
            .transpose()?,
    };
    if !p.may_read_all() {
        let own = p.caller().map(|c| c.key.token.clone()).unwrap_or_default();
        if filter.api_key.as_ref().is_some_and(|k| *k != own) {
            return Err(Error::Forbidden(format!(
                "spend logs of other keys are visible to proxy admins only; {}",
                super::policy::describe(p)
            )));
        }
        filter.api_key = Some(own);
    }
    Ok(filter)
}

/// `YYYY-MM-DD` → Unix milliseconds of its midnight (UTC).
fn day_ms(text: &str, field: &str) -> Result<u64> {
    let bad = || {
        Error::invalid(
            format!("`{field}` must be a date like 2026-11-22"),
            Some(field),
        )
    };
    let mut parts = text.split('-');
    let (Some(y), Some(m), Some(d), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let (y, m, d): (u64, u64, u64) = (
        y.parse().map_err(|_| bad())?,
        m.parse().map_err(|_| bad())?,
        d.parse().map_err(|_| bad())?,
    );
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return Err(bad());
    }
    Ok(meridian_replication::crdt::days_from_civil(y, m, d) * 86_400_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_midnights() {
        assert_eq!(day_ms("1970-01-02", "d").unwrap(), 86_400_000);
        assert_eq!(day_ms("2024-03-01", "d").unwrap(), 1_709_251_200_000);
        for bad in [
            "2024-13-01",
            "2024-1",
            "x-1-1",
            "2024-01-01-01",
            "1969-12-31",
        ] {
            assert!(day_ms(bad, "d").is_err(), "{bad}");
        }
    }
}
