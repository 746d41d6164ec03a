//! `/cluster/*`: a region's membership, through any of its nodes.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde_json::{Map, Value, json};

use super::entities::Reply;
use super::policy;
use super::{object, string_field};
use crate::api::extract::{Auth, JsonBody};
use crate::error::{Error, Result};
use crate::node::Node;

pub async fn cluster_status(State(node): State<Arc<Node>>, Auth(p): Auth) -> Reply {
    policy::reader(&p, "reading cluster status")?;
    let status = node.metadata.status();
    let mut out = serde_json::to_value(&status).unwrap_or(Value::Null);
    out["region"] = json!(node.region);
    out["node"] = json!(node.node_id);
    Ok(Json(out))
}

/// `POST /cluster/add_node {raft_id, cluster_addr, api_url}`: the node joins
/// as a learner, catches up, then becomes a voter. On a follower the change
/// goes to the leader over the region's own authenticated link; the caller's
/// credentials are never sent anywhere.
pub async fn cluster_add_node(
    State(node): State<Arc<Node>>,
    Auth(p): Auth,
    JsonBody(body): JsonBody<Value>,
) -> Reply {
    policy::admin(&p, "adding a node")?;
    let fields = object(body)?;
    let raft_id = positive_id(&fields)?;
    let member = meridian_consensus::raft::Member {
        raft_addr: peer_address(&string_field(&fields, "cluster_addr")?)?,
        api_url: api_url(&string_field(&fields, "api_url")?)?,
    };
    node.metadata
        .add_node(raft_id, member)
        .await
        .map_err(Error::from)?;
    Ok(Json(json!({ "status": node.metadata.status() })))
}

/// `POST /cluster/remove_node {raft_id}`.
pub async fn cluster_remove_node(
    State(node): State<Arc<Node>>,
    Auth(p): Auth,
    JsonBody(body): JsonBody<Value>,
) -> Reply {
    policy::admin(&p, "removing a node")?;
    let raft_id = positive_id(&object(body)?)?;
    node.metadata
        .remove_node(raft_id)
        .await
        .map_err(Error::from)?;
    Ok(Json(json!({ "status": node.metadata.status() })))
}

fn positive_id(fields: &Map<String, Value>) -> Result<u64> {
    fields
        .get("raft_id")
        .and_then(Value::as_u64)
        .filter(|n| *n > 0)
        .ok_or_else(|| Error::invalid("`raft_id` must be a positive whole number", Some("raft_id")))
}

/// `host:port`: a host name (letters, digits, '-', '.') or an IP address,
/// and a port — nothing else ends up in the region's membership.
fn peer_address(text: &str) -> Result<String> {
    let bad = || {
        Error::invalid(
            format!(
                "`cluster_addr` must be host:port, such as 10.0.0.5:7000; got `{}`",
                text.chars().take(100).collect::<String>()
            ),
            Some("cluster_addr"),
        )
    };
    if text.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(text.to_owned());
    }
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if !host_ok || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(bad());
    }
    Ok(text.to_owned())
}

/// `http(s)://host[:port]`, without a path, a query or credentials.
fn api_url(text: &str) -> Result<String> {
    let url = text.trim_end_matches('/');
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    let ok = rest.is_some_and(|r| {
        !r.is_empty() && !r.contains(['/', '?', '#', '@']) && peer_address_like(r)
    });
    if ok {
        Ok(url.to_owned())
    } else {
        Err(Error::invalid(
            "`api_url` must be http:// or https:// with a host and optional port, no path",
            Some("api_url"),
        ))
    }
}

fn peer_address_like(authority: &str) -> bool {
    peer_address(authority).is_ok()
        || (!authority.is_empty()
            && authority
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn membership_addresses_are_checked() {
        assert!(peer_address("10.0.0.5:7000").is_ok());
        assert!(peer_address("node-1.us-east.internal:7000").is_ok());
        for bad in [
            "x", "10.0.0.5", "a b:1", "h:0", "h:99999", "user@h:1", "h:1/x",
        ] {
            assert!(peer_address(bad).is_err(), "{bad}");
        }
        assert_eq!(
            api_url("http://10.0.0.5:4000/").unwrap(),
            "http://10.0.0.5:4000"
        );
        assert!(api_url("https://gw.example.com").is_ok());
        for bad in [
            "ftp://x",
            "http://",
            "http://x/path",
            "http://u:p@x",
            "http://x?q",
            "x:1",
        ] {
            assert!(api_url(bad).is_err(), "{bad}");
        }
    }
}
