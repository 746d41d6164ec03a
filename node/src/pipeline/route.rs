//! Stage 2, **route**: which deployment serves this attempt, and — once the
//! requested group has failed — which groups to fall back to. Before
//! admission because the chosen deployment prices the reservation; memory
//! only (the router's live state), no I/O.

use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::node::Node;
use crate::router::{Choice, ErrorClass, Member, Want};

/// A deployment of `group` for this attempt, or why there is none.
pub fn choose(node: &Node, group: &str, want: &Want<'_>, now: Instant) -> Result<Member> {
    match node.router.choose_target(group, want, now, &node.rng) {
        Choice::Chosen(m) => Ok(m),
        Choice::Unknown => Err(Error::ModelNotFound {
            model: group.to_owned(),
        }),
        Choice::Unavailable(u) => Err(Error::NoDeployments {
            model_group: group.to_owned(),
            reason: u.reason,
            retry_after: u.retry_after,
        }),
    }
}

/// The groups to try after `model` failed with `failure`: the request's own
/// `fallbacks`, or the router's for this kind of failure; only groups the
/// caller may use, at most `max_fallbacks`. None when the failure is not
/// one that falls back (the request itself is at fault).
pub fn fallbacks<'a>(
    node: &'a Node,
    model: &str,
    failure: &Error,
    requested: Option<&'a [String]>,
    may_use: impl Fn(&str) -> bool,
) -> Vec<&'a str> {
    let settings = node.router.settings();
    let class = match failure {
        Error::ModelNotFound { .. } => return Vec::new(),
        Error::NoDeployments { .. } => Some(ErrorClass::RateLimit),
        e => ErrorClass::of(e),
    };
    let Some(class) = class.filter(|c| c.falls_back()) else {
        return Vec::new();
    };
    let listed = match requested {
        Some(list) => list,
        None => settings.fallbacks.after(model, class),
    };
    listed
        .iter()
        .map(String::as_str)
        .filter(|g| *g != model && may_use(g))
        .take(settings.max_fallbacks as usize)
        .collect()
}
