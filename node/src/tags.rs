//! Request tags: the labels a request carries for spend tracking and tag
//! budgets (LiteLLM's `tags`, `metadata.tags` and `x-litellm-tags`).
//!
//! Tags are the gateway's, not the provider's: they are taken out of the
//! body before it is forwarded (OpenAI refuses unknown top-level fields, and
//! its `metadata` holds only strings).

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// The most tags one request may carry.
pub const MAX_REQUEST_TAGS: usize = 32;
/// The longest tag name, in bytes.
pub const MAX_TAG_LEN: usize = 128;

/// The header LiteLLM clients send tags in, comma-separated.
pub const TAGS_HEADER: &str = "x-litellm-tags";

/// Checks a tag name: non-empty, at most [`MAX_TAG_LEN`] bytes, no commas
/// (the header separates tags with them), no control characters, and no
/// surrounding spaces. `param` names the field in the error.
pub fn check_name(name: &str, param: &str) -> Result<()> {
    let problem = if name.is_empty() {
        Some("must not be empty")
    } else if name.len() > MAX_TAG_LEN {
        Some("is longer than 128 bytes")
    } else if name.contains(',') {
        Some("must not contain a comma")
    } else if name.chars().any(char::is_control) {
        Some("must not contain control characters")
    } else if name.trim() != name {
        Some("must not start or end with spaces")
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(p) => Err(Error::invalid(format!("tag `{param}` {p}"), Some(param))),
    }
}

/// The tags of the `x-litellm-tags` header (empty when absent).
pub fn from_header(headers: &http::HeaderMap) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for value in headers.get_all(TAGS_HEADER) {
        let text = value.to_str().map_err(|_| {
            Error::invalid(
                format!("the {TAGS_HEADER} header must be text"),
                Some(TAGS_HEADER),
            )
        })?;
        for tag in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            check_name(tag, TAGS_HEADER)?;
            push(&mut out, tag.to_owned())?;
        }
    }
    Ok(out)
}

/// Takes the tags out of a request body's top-level `tags` and its
/// `metadata.tags` (dropping `metadata` if nothing else is left in it) and
/// adds them to `tags`.
pub fn take_from_body(extra: &mut Map<String, Value>, tags: &mut Vec<String>) -> Result<()> {
    if let Some(value) = extra.remove("tags") {
        add_list(tags, value, "tags")?;
    }
    let Some(Value::Object(metadata)) = extra.get_mut("metadata") else {
        return Ok(());
    };
    if let Some(value) = metadata.remove("tags") {
        let empty = metadata.is_empty();
        add_list(tags, value, "metadata.tags")?;
        if empty {
            extra.remove("metadata");
        }
    }
    Ok(())
}

fn add_list(tags: &mut Vec<String>, value: Value, param: &str) -> Result<()> {
    let items = match value {
        Value::Null => return Ok(()),
        Value::Array(items) => items,
        _ => {
            return Err(Error::invalid(
                format!("`{param}` must be a list of strings"),
                Some(param),
            ));
        }
    };
    for (i, item) in items.into_iter().enumerate() {
        let path = format!("{param}[{i}]");
        let Value::String(tag) = item else {
            return Err(Error::invalid(
                format!("`{path}` must be a string"),
                Some(&path),
            ));
        };
        check_name(&tag, &path)?;
        push(tags, tag)?;
    }
    Ok(())
}

fn push(tags: &mut Vec<String>, tag: String) -> Result<()> {
    if tags.contains(&tag) {
        return Ok(());
    }
    if tags.len() == MAX_REQUEST_TAGS {
        return Err(Error::invalid(
            format!("a request may carry at most {MAX_REQUEST_TAGS} tags"),
            Some("tags"),
        ));
    }
    tags.push(tag);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn tags_come_from_the_body_and_the_header_and_leave_the_body() {
        let mut headers = http::HeaderMap::new();
        headers.insert(TAGS_HEADER, "eng, team-a,,eng".parse().unwrap());
        let mut tags = from_header(&headers).unwrap();
        assert_eq!(tags, ["eng", "team-a"]);
        let mut extra = body(json!({
            "tags": ["chat", "eng"],
            "metadata": {"tags": ["ops"], "trace": "t-1"},
            "seed": 7
        }));
        take_from_body(&mut extra, &mut tags).unwrap();
        assert_eq!(tags, ["eng", "team-a", "chat", "ops"]);
        assert_eq!(
            Value::Object(extra),
            json!({"metadata": {"trace": "t-1"}, "seed": 7})
        );
        // `metadata` that held only tags is not forwarded at all.
        let mut extra = body(json!({"metadata": {"tags": ["x"]}}));
        take_from_body(&mut extra, &mut Vec::new()).unwrap();
        assert!(extra.is_empty());
    }

    #[test]
    fn bad_tags_are_refused_naming_the_field() {
        let cases = [
            (json!({"tags": "eng"}), "tags"),
            (json!({"tags": ["eng", 3]}), "tags[1]"),
            (json!({"metadata": {"tags": ["a,b"]}}), "metadata.tags[0]"),
            (json!({"tags": [""]}), "tags[0]"),
            (json!({"tags": [" eng"]}), "tags[0]"),
            (json!({"tags": ["x".repeat(129)]}), "tags[0]"),
        ];
        for (case, param) in cases {
            let err = take_from_body(&mut body(case.clone()), &mut Vec::new()).unwrap_err();
            match err {
                Error::InvalidRequest { param: Some(p), .. } => assert_eq!(p, param, "{case}"),
                other => panic!("{case}: {other:?}"),
            }
        }
        let many: Vec<String> = (0..=MAX_REQUEST_TAGS).map(|i| format!("t{i}")).collect();
        let err = take_from_body(&mut body(json!({ "tags": many })), &mut Vec::new());
        assert!(err.is_err(), "more than {MAX_REQUEST_TAGS} tags");
        let mut headers = http::HeaderMap::new();
        let long = format!("ok,{}", "x".repeat(MAX_TAG_LEN + 1));
        headers.insert(TAGS_HEADER, long.parse().unwrap());
        assert!(from_header(&headers).is_err());
    }
}
