//! Scalars as LiteLLM reads them: `os.environ/VAR` resolved, numbers also
//! written as strings, every error naming the key's path.

use std::time::Duration;

use serde_json::{Map, Value};

use super::{CREDENTIAL_PARAMS, Parser};
use crate::config::Ignored;
use crate::error::Result;

impl Parser<'_> {
    /// A mapping; a key written with nothing under it (or only comments,
    /// which YAML reads as null) is an empty one, as LiteLLM takes it.
    pub(super) fn mapping(&self, value: &Value, path: &str) -> Result<Map<String, Value>> {
        match value {
            Value::Null => Ok(Map::new()),
            Value::Object(map) => Ok(map.clone()),
            other => Err(self.err(path, format!("a mapping, found {}", kind(other)))),
        }
    }

    /// A list; null is an empty one (see [`Self::mapping`]).
    pub(super) fn list<'v>(&self, value: &'v Value, path: &str, of: &str) -> Result<&'v [Value]> {
        match value {
            Value::Null => Ok(&[]),
            Value::Array(items) => Ok(items),
            other => Err(self.err(path, format!("a list of {of}, found {}", kind(other)))),
        }
    }

    /// A string, with `os.environ/VAR` resolved. `Ok(None)` if absent, null, or
    /// (in check mode) an unset variable.
    pub(super) fn string(&mut self, value: Option<&Value>, path: &str) -> Result<Option<String>> {
        let raw = match value {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::String(s)) => s,
            Some(other) => {
                return Err(self.err(path, format!("a string, found {} (quote it)", kind(other))));
            }
        };
        let Some(var) = raw.strip_prefix("os.environ/") else {
            return Ok(Some(raw.clone()));
        };
        if let Some(allowed) = self.runtime_env {
            let field = path.rsplit('.').next().unwrap_or(path);
            if !CREDENTIAL_PARAMS.contains(&field) {
                return Err(self.err(
                    path,
                    format!(
                        "a literal value: in a model added at run time, os.environ/ is accepted only in credential fields ({})",
                        CREDENTIAL_PARAMS.join(", ")
                    ),
                ));
            }
            let Some(bound) = allowed.get(var) else {
                return Err(self.err(
                    path,
                    format!("a variable listed in meridian.model_env_allowlist; `{var}` is not"),
                ));
            };
            self.env_bound.push((var.to_owned(), bound.clone()));
        }
        if let Some(v) = self.overlay.get(var).cloned().or_else(|| self.env.var(var)) {
            return Ok(Some(v));
        }
        if self.check {
            self.unset_env.push(Ignored {
                path: path.to_owned(),
                reason: format!(
                    "environment variable {var} is not set here; `serve` fails unless it is"
                ),
            });
            // Keep the reference itself, so required fields stay present and
            // the rest of the file is still checked.
            return Ok(Some(raw.clone()));
        }
        Err(self.err(
            path,
            format!("environment variable {var} to be set (referenced as os.environ/{var})"),
        ))
    }

    pub(super) fn required_string(&mut self, value: Option<&Value>, path: &str) -> Result<String> {
        match self.string(value, path)? {
            Some(s) if !s.trim().is_empty() => Ok(s),
            _ => Err(self.err(path, "a non-empty string")),
        }
    }

    /// A number, also accepted as a numeric string (what `os.environ/` yields)
    /// and with `_` between digits ([`yaml11_number`]).
    pub(super) fn number(&mut self, value: Option<&Value>, path: &str) -> Result<Option<f64>> {
        let n = match value {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Number(n)) => n.as_f64(),
            Some(Value::String(_)) => match self.string(value, path)? {
                Some(s) if is_unresolved(&s) => return Ok(None),
                None => return Ok(None),
                Some(s) => yaml11_number(&s),
            },
            Some(_) => None,
        };
        match n {
            Some(n) if n.is_finite() && n >= 0.0 => Ok(Some(n)),
            _ => Err(self.err(path, "a non-negative number")),
        }
    }

    pub(super) fn integer(&mut self, value: Option<&Value>, path: &str) -> Result<Option<u64>> {
        match self.number(value, path)? {
            None => Ok(None),
            Some(n) if n.fract() == 0.0 && (0.0..=u64::MAX as f64).contains(&n) => {
                Ok(Some(n as u64))
            }
            Some(_) => Err(self.err(path, "a whole number, not negative")),
        }
    }

    pub(super) fn seconds(
        &mut self,
        value: Option<&Value>,
        path: &str,
    ) -> Result<Option<Duration>> {
        match self.number(value, path)? {
            None => Ok(None),
            Some(s) if s > 0.0 && s < 1e9 => Ok(Some(Duration::from_secs_f64(s))),
            Some(_) => Err(self.err(path, "a positive number of seconds")),
        }
    }

    pub(super) fn boolean(&mut self, value: Option<&Value>, path: &str) -> Result<Option<bool>> {
        match value {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::String(_)) => match self.string(value, path)? {
                Some(s) if is_unresolved(&s) => Ok(None),
                None => Ok(None),
                Some(s) => Ok(Some(is_truthy(&s))),
            },
            Some(other) => Err(self.err(path, format!("true or false, found {}", kind(other)))),
        }
    }

    /// A count that fits `u32`.
    pub(super) fn count(&mut self, v: &Value, path: &str) -> Result<Option<u32>> {
        match self.integer(Some(v), path)? {
            None => Ok(None),
            Some(n) => u32::try_from(n)
                .map(Some)
                .map_err(|_| self.err(path, "a whole number below 4294967296")),
        }
    }

    /// Seconds, zero allowed.
    pub(super) fn wait(&mut self, v: &Value, path: &str) -> Result<Option<Duration>> {
        match self.number(Some(v), path)? {
            None => Ok(None),
            Some(s) if s < 1e9 => Ok(Some(Duration::from_secs_f64(s))),
            Some(_) => Err(self.err(path, "a number of seconds")),
        }
    }

    /// A whole number in `[min, max]`.
    pub(super) fn bounded(&mut self, value: &Value, path: &str, min: u64, max: u64) -> Result<u64> {
        match self.integer(Some(value), path)? {
            Some(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(self.err(path, format!("a whole number from {min} to {max}"))),
        }
    }

    pub(super) fn string_list(&mut self, value: &Value, path: &str) -> Result<Vec<String>> {
        let items = self.list(value, path, "strings")?;
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            if let Some(s) = self.string(Some(item), &format!("{path}[{i}]"))? {
                out.push(s);
            }
        }
        Ok(out)
    }
}

/// An `os.environ/` reference left in place by check mode.
pub(super) fn is_unresolved(v: &str) -> bool {
    v.starts_with("os.environ/")
}

/// A number as PyYAML (YAML 1.1, what LiteLLM reads its file with) reads
/// it: `_` may stand between digits (`tpm: 20_000`, `max_budget: 1_000.5`).
/// The YAML 1.2 parser here leaves such a scalar a string, so it is read
/// again from the text. The exponent takes no `_`, as in YAML 1.1.
pub(super) fn yaml11_number(text: &str) -> Option<f64> {
    let text = text.trim();
    if !text.contains('_') {
        return text.parse().ok();
    }
    let unsigned = text.strip_prefix(['+', '-']).unwrap_or(text);
    let (mantissa, exponent) =
        unsigned.split_at(unsigned.find(['e', 'E']).unwrap_or(unsigned.len()));
    let well_formed = mantissa.starts_with(|c: char| c.is_ascii_digit())
        && mantissa
            .chars()
            .all(|c| c.is_ascii_digit() || c == '_' || c == '.')
        && !exponent.contains('_');
    if !well_formed {
        return None;
    }
    text.replace('_', "").parse().ok()
}

pub(super) fn is_truthy(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "yes" | "on"
    )
}

pub(super) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}
