//! `GET /spend/logs`: per-request spend rows from every node of this region.
//! Rows live on the node that served the request; the node asked gathers
//! them from its region's members (as Raft knows them) over their HTTP APIs,
//! forwarding the caller's own credentials, and merges them newest first.
//! A member that does not answer within the deadline is named in the
//! `x-meridian-spend-logs-missing` header, not silently dropped.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};
use serde::Deserialize;
use serde_json::Value;

use crate::api::ApiError;
use crate::api::extract::Auth;
use crate::auth::Principal;
use crate::error::{Error, Result};
use crate::node::Node;
use crate::secret::Secret;
use crate::spendlog::{Filter, SpendRow};
use crate::upstream::{UpstreamRequest, read_body, send};

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
    /// `node`: this node's rows only (what the fan-out asks each member for).
    scope: Option<String>,
}

pub async fn logs(
    State(node): State<Arc<Node>>,
    Auth(p): Auth,
    headers: HeaderMap,
    Query(q): Query<SpendQuery>,
) -> std::result::Result<Response, ApiError> {
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let filter = filter_for(&p, &q)?;
    let mut rows = node.spend_log.query(&filter, limit);
    let mut missing = Vec::new();
    if q.scope.as_deref() != Some("node") {
        let query = forwarded_query(&q, &filter, limit);
        let me = node.metadata.node_id();
        let members = node.metadata.status().members;
        let asks = members
            .iter()
            .filter(|m| m.node_id != me && !m.api_url.is_empty())
            .map(|m| ask(&node, &m.api_url, &query, &headers));
        for (member, answer) in members
            .iter()
            .filter(|m| m.node_id != me && !m.api_url.is_empty())
            .zip(futures_util::future::join_all(asks).await)
        {
            match answer {
                Ok(theirs) => rows.extend(theirs),
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
                super::describe(p)
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

/// The query each member is asked: the same filter (the key as its hash),
/// for that member's rows only.
fn forwarded_query(q: &SpendQuery, f: &Filter, limit: usize) -> String {
    let mut parts = vec![format!("scope=node&limit={limit}")];
    let mut add = |name: &str, value: &Option<String>| {
        if let Some(v) = value {
            parts.push(format!("{name}={}", encode(v)));
        }
    };
    add("api_key", &f.api_key);
    add("team_id", &q.team_id);
    add("user_id", &q.user_id);
    add("end_user", &q.end_user);
    add("request_id", &q.request_id);
    add("start_date", &q.start_date);
    add("end_date", &q.end_date);
    parts.join("&")
}

fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn ask(
    node: &Node,
    api_url: &str,
    query: &str,
    headers: &HeaderMap,
) -> Result<Vec<SpendRow>> {
    let mut forward = HeaderMap::new();
    for name in ["authorization", "x-api-key", "api-key"] {
        if let Some(v) = headers.get(name) {
            forward.insert(name, v.clone());
        }
    }
    let req = UpstreamRequest {
        method: Method::GET,
        url: format!("{}/spend/logs?{query}", api_url.trim_end_matches('/')),
        headers: forward,
        body: Bytes::new(),
    };
    let what = format!("region member {api_url}");
    let resp = send(node.upstream.as_ref(), req, &what, FAN_OUT_DEADLINE).await?;
    let status = resp.status;
    let body = read_body(resp.body, &what, FAN_OUT_DEADLINE).await?;
    if !status.is_success() {
        return Err(Error::protocol(&what, format!("answered {status}")));
    }
    let rows: Vec<Value> = serde_json::from_slice(&body)
        .map_err(|e| Error::protocol(&what, format!("not a list of rows: {e}")))?;
    Ok(rows
        .into_iter()
        .filter_map(|r| serde_json::from_value(r).ok())
        .collect())
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
