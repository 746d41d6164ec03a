//! LiteLLM-shaped configs (`fixtures/litellm/*.yaml`) through the public
//! loader: every file LiteLLM loads must load here too, and the leniency
//! each one exercises (YAML 1.1 numbers, stringified environment values,
//! repeated entries, empty sections, entry-level rpm/tpm, guardrails, the
//! list form of `retry_policy`) gives the values LiteLLM would act on.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use meridian_node::config::{Config, load_file, parse_str};
use meridian_node::router::ErrorClass;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/litellm")
}

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A fixture in check mode: its `os.environ/` references need not be set.
fn fixture(name: &str) -> Config {
    load_file(&fixtures().join(name), &env(&[]), true)
        .unwrap_or_else(|e| panic!("{name} does not load: {e}"))
}

fn parse(text: &str) -> meridian_node::error::Result<Config> {
    parse_str(text, "config.yaml", &env(&[]), false)
}

/// Why `path` is ignored, if it is.
fn reason<'c>(config: &'c Config, path: &str) -> Option<&'c str> {
    config
        .ignored
        .iter()
        .find(|i| i.path == path)
        .map(|i| i.reason.as_str())
}

#[test]
fn every_fixture_loads_and_reports_no_documented_key_as_unknown() {
    let mut names: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    names.sort();
    assert!(names.len() >= 10, "the corpus shrank: {names:?}");
    for path in names {
        let config = load_file(&path, &env(&[]), true)
            .unwrap_or_else(|e| panic!("{} does not load: {e}", path.display()));
        assert!(!config.deployments.is_empty(), "{}", path.display());
        let unknown: Vec<_> = config
            .ignored
            .iter()
            .filter(|i| i.reason.contains("unknown"))
            .collect();
        assert!(unknown.is_empty(), "{}: {unknown:#?}", path.display());
    }
}

#[test]
fn numbers_with_underscores_are_numbers() {
    let c = fixture("underscore_numbers.yaml");
    let (a, b) = (&c.deployments[0], &c.deployments[1]);
    assert_eq!((a.tpm, a.rpm), (Some(20_000), Some(1_000)));
    assert_eq!(a.timeout, Duration::from_secs(1_200));
    assert_eq!((b.tpm, b.rpm), (Some(2_000_000), Some(12_000)));
    // $0.000_000_15 a token, in picodollars.
    assert_eq!(b.price.unwrap().input, 150_000);
    assert_eq!(c.health_checks.interval, Duration::from_secs(3_600));
    // Quoted, or from the environment, the text is read the same way.
    let quoted =
        "model_list:\n  - model_name: a\n    litellm_params: {model: mock/chat, tpm: \"3_000\"}\n";
    assert_eq!(parse(quoted).unwrap().deployments[0].tpm, Some(3_000));
    // Underscores go between digits only.
    for bad in ["_20", "2_0e1_0", "1_x"] {
        let text = format!(
            "model_list:\n  - model_name: a\n    litellm_params: {{model: mock/chat, tpm: \"{bad}\"}}\n"
        );
        let e = parse(&text).unwrap_err().to_string();
        assert!(
            e.contains("`model_list[0].litellm_params.tpm`: a non-negative number"),
            "{bad}: {e}"
        );
    }
}

#[test]
fn environment_variables_of_any_scalar_are_strings() {
    let c = load_file(
        &fixtures().join("environment_variables.yaml"),
        &env(&[]),
        false,
    )
    .unwrap();
    let d = &c.deployments[0];
    assert_eq!(d.rpm, Some(500));
    assert_eq!(d.timeout, Duration::from_secs_f64(45.5));
    assert_eq!(
        d.api_key.as_ref().unwrap().expose(),
        "sk-env-section-example"
    );
    assert!(c.health_checks.enabled);
    assert_eq!(c.health_checks.interval, Duration::from_secs(60));

    // The string each becomes is Python's str() of it, as LiteLLM exports.
    let as_key = |value: &str| {
        let text = format!(
            "environment_variables:\n  V: {value}\ngeneral_settings:\n  master_key: os.environ/V\n"
        );
        parse(&text)
            .unwrap()
            .master_key
            .unwrap()
            .expose()
            .to_owned()
    };
    assert_eq!(as_key("1234567890123456"), "1234567890123456");
    assert_eq!(as_key("2.5"), "2.5");
    assert_eq!(as_key("true"), "True");
    assert_eq!(as_key("false"), "False");
    // A list is no environment value: reported, not exported.
    let c = parse("environment_variables:\n  L: [1, 2]\n").unwrap();
    assert!(
        reason(&c, "environment_variables.L").is_some(),
        "{:?}",
        c.ignored
    );
}

#[test]
fn a_repeated_entry_is_two_deployments_with_their_own_ids() {
    let a = fixture("duplicate_entries.yaml");
    let b = fixture("duplicate_entries.yaml");
    let ids: Vec<&str> = a.deployments.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids.len(), 3);
    assert_ne!(ids[0], ids[1]);
    assert_eq!(ids[1], format!("{}-2", ids[0]));
    let again: Vec<&str> = b.deployments.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, again, "ids are deterministic");

    // A third copy takes the next free suffix.
    let entry = "  - model_name: a\n    litellm_params: {model: mock/chat}\n";
    let c = parse(&format!("model_list:\n{entry}{entry}{entry}")).unwrap();
    let h = &c.deployments[0].id;
    assert_eq!(c.deployments[2].id, format!("{h}-3"));

    // An id the file sets twice is an error, naming the field it set.
    let twice = "model_list:\n  - model_name: a\n    litellm_params: {model: mock/chat}\n    model_info: {id: x}\n  - model_name: b\n    litellm_params: {model: mock/chat}\n    model_info: {id: x}\n";
    assert_eq!(
        parse(twice).unwrap_err().to_string(),
        "config.yaml: `model_list[1].model_info.id`: a unique id; model_list[0] has the same one"
    );
    // An entry whose generated id meets an id the file set is given
    // another; no `model_info.id` of its own is blamed.
    let generated = c.deployments[0].id.clone();
    let text = format!(
        "model_list:\n  - model_name: b\n    litellm_params: {{model: mock/chat}}\n    model_info: {{id: {generated}}}\n{entry}"
    );
    let c = parse(&text).unwrap();
    assert_eq!(c.deployments[1].id, format!("{generated}-2"));
}

#[test]
fn a_section_with_nothing_under_it_is_empty() {
    let c = fixture("empty_sections.yaml");
    assert_eq!(c.deployments.len(), 1);
    assert!(c.master_key.is_none());
    for section in [
        "model_list",
        "litellm_settings",
        "router_settings",
        "general_settings",
        "environment_variables",
        "meridian",
        "credential_list",
        "guardrails",
    ] {
        let c = parse(&format!("{section}:\n  # nothing here yet\n"))
            .unwrap_or_else(|e| panic!("{section}: {e}"));
        assert!(c.deployments.is_empty());
    }
}

#[test]
fn rpm_and_tpm_beside_model_name_are_the_deployments_own() {
    let c = fixture("top_level_rpm_tpm.yaml");
    let d = &c.deployments;
    assert_eq!((d[0].tpm, d[0].rpm), (Some(100_000), Some(1_000)));
    assert_eq!((d[1].tpm, d[1].rpm), (Some(90_000), Some(900)));
    // Both set: the entry's own wins, and the other is reported.
    assert_eq!(d[2].rpm, Some(300));
    assert!(
        reason(&c, "model_list[2].litellm_params.rpm")
            .unwrap()
            .contains("`model_list[2].rpm` is set too, and wins"),
        "{:?}",
        c.ignored
    );
    assert!(reason(&c, "model_list[0].tpm").is_none());
    let e = parse(
        "model_list:\n  - model_name: a\n    litellm_params: {model: mock/chat}\n    rpm: lots\n",
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("`model_list[0].rpm`: a non-negative number")
    );
}

#[test]
fn guardrails_are_reported_as_unsupported() {
    let c = fixture("guardrails.yaml");
    let why = reason(&c, "guardrails").unwrap();
    assert!(why.contains("not supported"), "{why}");
    assert!(!why.contains("unknown"), "{why}");
}

#[test]
fn retry_policy_as_a_list_of_statuses() {
    let c = fixture("retry_policy_list.yaml");
    let r = &c.router;
    assert_eq!(
        r.retries_for(ErrorClass::RateLimit),
        5,
        "429 → RateLimitError"
    );
    assert_eq!(
        r.retries_for(ErrorClass::InternalServer),
        2,
        "503 → InternalServerError"
    );
    assert_eq!(
        r.retries_for(ErrorClass::Timeout),
        3,
        "num_retries elsewhere"
    );
    assert_eq!(r.retry_after, Duration::from_secs(5));
    for i in 0..3 {
        let why = reason(
            &c,
            &format!("router_settings.retry_policy[{i}].retry_after"),
        )
        .unwrap_or_else(|| panic!("[{i}].retry_after not reported: {:?}", c.ignored));
        assert!(why.contains("a delay per status is not supported"), "{why}");
    }

    // Two statuses of one class with different counts: the first holds.
    let text = "router_settings:\n  retry_policy:\n    - {status_code: 500, num_retries: 1}\n    - {status_code: 502, num_retries: 4}\n    - {status_code: 401, num_retries: 0}\n";
    let c = parse(text).unwrap();
    assert_eq!(c.router.retries_for(ErrorClass::InternalServer), 1);
    assert_eq!(c.router.retries_for(ErrorClass::Authentication), 0);
    assert!(
        reason(&c, "router_settings.retry_policy[1].num_retries")
            .unwrap()
            .contains("router_settings.retry_policy[0].num_retries already sets")
    );
    // A status that is no failure is an error with its path.
    let e = parse("router_settings:\n  retry_policy:\n    - {status_code: 200}\n").unwrap_err();
    assert!(
        e.to_string()
            .contains("`router_settings.retry_policy[0].status_code`: an upstream error status"),
        "{e}"
    );
}
