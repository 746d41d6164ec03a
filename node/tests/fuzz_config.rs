//! Fuzzing the configuration parser (`config::parse_str`): YAML-ish text
//! made of the config's own keys and YAML's awkward syntax, and the example
//! configs with values, keys and bytes changed. Every outcome is a `Config`
//! or a `Config` error naming the file, the key's path and what was
//! expected — never a panic, never another kind of error.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fuzz_support;

use std::collections::BTreeMap;

use fuzz_support::{EDGE_STRINGS, check};
use meridian_node::config::parse_str;
use meridian_node::error::Error;
use proptest::prelude::*;
use proptest::sample::Index;
use serde_yaml_ng::Value as Yaml;

const FILE: &str = "fuzz.yaml";

/// The example configs the project ships, each a valid starting point.
const EXAMPLES: &[(&str, &str)] = &[
    (
        "active-active",
        include_str!("../../ops/examples/active-active.yaml"),
    ),
    (
        "active-passive",
        include_str!("../../ops/examples/active-passive.yaml"),
    ),
    (
        "residency",
        include_str!("../../ops/examples/residency.yaml"),
    ),
    (
        "production",
        include_str!("../../fixtures/litellm/production_config.yaml"),
    ),
];

/// Keys of the config, at every level, so generated text reaches the
/// parser's branches rather than the "unknown key" one.
const KEYS: &[&str] = &[
    "model_list",
    "model_name",
    "litellm_params",
    "model",
    "api_base",
    "api_key",
    "api_version",
    "rpm",
    "tpm",
    "timeout",
    "stream_timeout",
    "weight",
    "order",
    "tags",
    "region_name",
    "model_info",
    "mode",
    "id",
    "input_cost_per_token",
    "output_cost_per_token",
    "router_settings",
    "routing_strategy",
    "num_retries",
    "fallbacks",
    "cooldown_time",
    "allowed_fails",
    "retry_policy",
    "general_settings",
    "master_key",
    "max_request_size_mb",
    "maximum_spend_logs_retention_period",
    "background_health_checks",
    "health_check_interval",
    "litellm_settings",
    "request_timeout",
    "meridian",
    "node_id",
    "region",
    "host",
    "port",
    "data_dir",
    "raft_id",
    "cluster_listen",
    "peers",
    "remote_regions",
    "gossip_interval_ms",
    "enforcement",
    "strict_wait_ms",
    "shutdown_drain_seconds",
    "max_connections",
    "tls_cert",
    "tls_key",
    "cluster_tls_ca",
    "environment_variables",
    "credential_list",
    "model_env_allowlist",
];

/// Scalars and syntax YAML parsers have tripped on: special floats, other
/// bases, anchors and aliases, tags, block scalars, flow collections left
/// open, merge keys, document markers.
const SCALARS: &[&str] = &[
    "~",
    "null",
    "true",
    "no",
    "on",
    ".nan",
    ".inf",
    "-.inf",
    "0x1F",
    "0o17",
    "1e400",
    "-1",
    "0",
    "18446744073709551616",
    "3.5",
    "2001-12-14t21:59:43.10-05:00",
    "&a x",
    "*a",
    "*nope",
    "!!binary aGk=",
    "!!str 1",
    "!custom x",
    "|",
    ">-",
    "{",
    "[a, b",
    "{a: 1}",
    "[1, [2, [3]]]",
    "'quoted",
    "\"\\x\"",
    "\"\\ud800\"",
    "<<: *a",
    "? ",
    "os.environ/NOPE",
    "os.environ/",
    "openai/gpt-4o",
    "mock/chat",
    "anthropic/x",
    "azure/x",
    "http://x:1/v1",
    "127.0.0.1",
    "[::1]",
    "30d",
    "1mo",
    "latency-based-routing",
    "strict",
    "available",
];

fn arb_line() -> impl Strategy<Value = String> {
    let indent = prop_oneof![4 => (0usize..5).prop_map(|n| n * 2), 1 => 0usize..9];
    let scalar = prop_oneof![
        4 => prop::sample::select(SCALARS).prop_map(String::from),
        1 => prop::sample::select(EDGE_STRINGS).prop_map(String::from),
        1 => "\\PC{0,12}",
    ];
    let line = prop_oneof![
        4 => (prop::sample::select(KEYS), prop::option::of(scalar.clone()))
            .prop_map(|(k, v)| match v {
                Some(v) => format!("{k}: {v}"),
                None => format!("{k}:"),
            }),
        2 => scalar.clone().prop_map(|v| format!("- {v}")),
        1 => (prop::sample::select(KEYS), scalar).prop_map(|(k, v)| format!("- {k}: {v}")),
        1 => prop::sample::select(vec!["---", "...", "%YAML 1.2", "# comment", ""])
            .prop_map(String::from),
        1 => "(?s).{0,16}",
    ];
    (indent, line).prop_map(|(n, l)| format!("{}{l}", " ".repeat(n)))
}

/// The only acceptable failure: a `Config` error naming this file, a path
/// and what was expected.
fn assert_config_outcome(result: Result<impl Sized, Error>) -> Result<(), TestCaseError> {
    match result {
        Ok(_) => Ok(()),
        Err(Error::Config {
            file,
            path,
            expected,
        }) => {
            prop_assert_eq!(file.as_str(), FILE);
            prop_assert!(!path.is_empty() && !expected.is_empty());
            Ok(())
        }
        Err(other) => {
            prop_assert!(false, "not a Config error: {other:?}");
            Ok(())
        }
    }
}

/// The environment the examples' comments ask for: every `os.environ/`
/// they name is set, so an error comes from the change, not from a missing
/// variable.
fn env() -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for (_, text) in EXAMPLES {
        for var in text.split("os.environ/").skip(1) {
            let name: String = var
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let value = match name.as_str() {
                "MERIDIAN_REGION" => "us-east",
                n if n.contains("API_BASE") => "http://upstream.invalid/v1",
                _ => "sk-fuzz-value",
            };
            env.insert(name, value.to_owned());
        }
    }
    env
}

/// Both modes: `check` collects unset variables, `serve` refuses them.
fn parse_both(text: &str) -> Result<(), TestCaseError> {
    let env = env();
    assert_config_outcome(parse_str(text, FILE, &env, true))?;
    assert_config_outcome(parse_str(
        text,
        FILE,
        &BTreeMap::<String, String>::new(),
        false,
    ))?;
    assert_config_outcome(parse_str(text, FILE, &env, false))
}

/// The starting points are valid, so a property's failure is its change's.
#[test]
fn the_examples_parse() {
    for (name, text) in EXAMPLES {
        let parsed = parse_str(text, FILE, &env(), false);
        assert!(parsed.is_ok(), "{name}: {:?}", parsed.err());
    }
}

#[test]
fn yaml_ish_text_is_a_config_or_a_config_error() {
    check(256, prop::collection::vec(arb_line(), 0..24), |lines| {
        parse_both(&lines.join("\n"))
    });
}

/// One change to an example's YAML tree.
#[derive(Clone, Debug)]
enum Change {
    Replace(Index, String),
    Remove(Index),
    Insert(Index, &'static str, String),
}

fn arb_change() -> impl Strategy<Value = Change> {
    let value = prop_oneof![
        3 => prop::sample::select(SCALARS).prop_map(String::from),
        1 => prop::sample::select(EDGE_STRINGS).prop_map(String::from),
        1 => "\\PC{0,12}",
    ];
    prop_oneof![
        3 => (any::<Index>(), value.clone()).prop_map(|(i, v)| Change::Replace(i, v)),
        1 => any::<Index>().prop_map(Change::Remove),
        2 => (any::<Index>(), prop::sample::select(KEYS), value)
            .prop_map(|(i, k, v)| Change::Insert(i, k, v)),
    ]
}

/// Every node of `v` as a path of mapping keys and sequence positions.
fn nodes(v: &Yaml, here: &mut Vec<Yaml>, out: &mut Vec<Vec<Yaml>>) {
    out.push(here.clone());
    match v {
        Yaml::Mapping(m) => {
            for (k, child) in m {
                here.push(k.clone());
                nodes(child, here, out);
                here.pop();
            }
        }
        Yaml::Sequence(s) => {
            for (n, child) in s.iter().enumerate() {
                here.push(Yaml::from(n as u64));
                nodes(child, here, out);
                here.pop();
            }
        }
        _ => {}
    }
}

fn node_at<'v>(mut v: &'v mut Yaml, path: &[Yaml]) -> &'v mut Yaml {
    for step in path {
        v = match v {
            Yaml::Mapping(m) => m.get_mut(step).unwrap(),
            Yaml::Sequence(s) => &mut s[step.as_u64().unwrap() as usize],
            _ => unreachable!("paths come from the same tree"),
        };
    }
    v
}

/// A scalar as YAML reads it (`.nan` a float, `~` null, `{` an error: then
/// kept as a string).
fn scalar(text: &str) -> Yaml {
    serde_yaml_ng::from_str(text).unwrap_or_else(|_| Yaml::String(text.to_owned()))
}

fn apply(tree: &mut Yaml, change: &Change) {
    let mut all = Vec::new();
    nodes(tree, &mut Vec::new(), &mut all);
    match change {
        Change::Replace(i, v) => *node_at(tree, i.get::<Vec<Yaml>>(&all)) = scalar(v),
        Change::Remove(i) => {
            let path = i.get::<Vec<Yaml>>(&all).clone();
            if let Some((last, parent)) = path.split_last() {
                match node_at(tree, parent) {
                    Yaml::Mapping(m) => drop(m.remove(last)),
                    Yaml::Sequence(s) => drop(s.remove(last.as_u64().unwrap() as usize)),
                    _ => {}
                }
            }
        }
        Change::Insert(i, k, v) => match node_at(tree, i.get::<Vec<Yaml>>(&all)) {
            Yaml::Mapping(m) => drop(m.insert(Yaml::from(*k), scalar(v))),
            Yaml::Sequence(s) => s.push(scalar(v)),
            _ => {}
        },
    }
}

#[test]
fn examples_with_changed_values_are_a_config_or_a_config_error() {
    let cases = (
        prop::sample::select(EXAMPLES),
        prop::collection::vec(arb_change(), 1..4),
    );
    check(256, cases, |((_, text), changes)| {
        let mut tree: Yaml = serde_yaml_ng::from_str(text).unwrap();
        for c in &changes {
            apply(&mut tree, c);
        }
        parse_both(&serde_yaml_ng::to_string(&tree).unwrap())
    });
}

/// Byte-level damage: a slice of the text removed, or bytes of YAML syntax
/// spliced in, wherever they land (mid-key, mid-indentation).
#[test]
fn examples_with_damaged_bytes_are_a_config_or_a_config_error() {
    let splice = prop_oneof![
        prop::sample::select(SCALARS).prop_map(String::from),
        prop::sample::select(vec![
            "\n", "\t", " ", ":", "- ", "\n  ", "\r\n", "\u{feff}", "#"
        ])
        .prop_map(String::from),
    ];
    let cases = (
        prop::sample::select(EXAMPLES),
        any::<Index>(),
        0usize..40,
        splice,
    );
    check(256, cases, |((_, text), at, cut, insert)| {
        let mut bytes = text.as_bytes().to_vec();
        let start = at.index(bytes.len());
        let end = (start + cut).min(bytes.len());
        bytes.splice(start..end, insert.bytes());
        // `parse_str` takes text; damage that breaks UTF-8 is the reader's
        // problem, not the parser's.
        match String::from_utf8(bytes) {
            Ok(text) => parse_both(&text),
            Err(_) => Ok(()),
        }
    });
}

/// YAML's known denial-of-service shapes end in an error, promptly: aliases
/// that expand exponentially, and nesting far past any recursion limit.
#[test]
fn yaml_bombs_are_a_config_error() {
    let mut laughs = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for (prev, name) in ('a'..='h').zip('b'..='i') {
        let refs = vec![format!("*{prev}"); 9].join(",");
        laughs += &format!("{name}: &{name} [{refs}]\n");
    }
    laughs += "model_list: *i\n";
    let deep = format!("model_list: {}{}", "[".repeat(10_000), "]".repeat(10_000));
    let deep_block: String = (0..2_000)
        .map(|n| format!("{}- \n", "  ".repeat(n)))
        .collect();
    for text in [laughs, deep, deep_block] {
        let env = BTreeMap::<String, String>::new();
        let result = parse_str(&text, FILE, &env, true);
        assert!(
            matches!(result, Err(Error::Config { .. })),
            "{:?}",
            result.map(|_| ())
        );
    }
}
