//! The parser against small files, one concern a test, and the production-style fixture.

use super::*;
use std::collections::BTreeSet;

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn parse(text: &str, e: &[(&str, &str)]) -> Result<Config> {
    parse_str(text, "config.yaml", &env(e), false)
}

#[test]
fn model_list_with_env_refs_defaults_and_ignored_keys() {
    let text = r#"
model_list:
  - model_name: gpt-4o
    litellm_params:
      model: openai/gpt-4o
      api_key: os.environ/OPENAI_KEY
      rpm: "60"
      timeout: 30
      organization: org-1
    model_info:
      id: dep-1
  - model_name: claude
    litellm_params:
      model: anthropic/claude-3-5-sonnet-20241022
  - model_name: azure-gpt
    litellm_params:
      model: azure/my-deployment
      api_base: https://res.openai.azure.com/
      api_version: "2024-06-01"
    model_info:
      base_model: gpt-4o-mini
  - model_name: llama
    litellm_params:
      model: ollama/llama3
  - model_name: titan
    litellm_params:
      model: bedrock/amazon.titan
router_settings:
  routing_strategy: simple-shuffle
  redis_host: localhost
general_settings:
  master_key: sk-1234
  database_url: postgres://x
"#;
    let c = parse(
        text,
        &[("OPENAI_KEY", "sk-openai"), ("ANTHROPIC_API_KEY", "sk-ant")],
    )
    .unwrap();
    assert_eq!(c.master_key.as_ref().unwrap().expose(), "sk-1234");
    assert_eq!(c.deployments.len(), 4);
    let d = &c.deployments[0];
    assert_eq!(
        (d.id.as_str(), d.provider, d.upstream_model.as_str()),
        ("dep-1", ProviderKind::OpenAi, "gpt-4o")
    );
    assert_eq!(d.api_key.as_ref().unwrap().expose(), "sk-openai");
    assert_eq!((d.rpm, d.timeout), (Some(60), Duration::from_secs(30)));
    assert_eq!(
        c.deployments[1].api_key.as_ref().unwrap().expose(),
        "sk-ant"
    );
    assert_eq!(c.deployments[1].api_base, "https://api.anthropic.com");
    let az = &c.deployments[2];
    assert_eq!(
        (az.api_base.as_str(), az.api_version.as_deref()),
        ("https://res.openai.azure.com", Some("2024-06-01"))
    );
    assert_eq!(az.price, pricing::lookup("gpt-4o-mini"));
    assert_eq!(c.deployments[3].api_base, "http://localhost:11434/v1");
    let paths: Vec<&str> = c.ignored.iter().map(|i| i.path.as_str()).collect();
    assert_eq!(
        paths,
        vec![
            "router_settings.redis_host",
            "general_settings.database_url",
            "model_list[0].litellm_params.organization",
            "model_list[4].litellm_params.model",
        ]
    );
}

#[test]
fn router_settings_and_deployment_routing_keys_are_parsed() {
    use crate::router::settings::{ErrorClass, Strategy};
    let text = r#"
model_list:
  - model_name: gpt
    litellm_params:
      model: openai/gpt-4o
      priority: 2
      aws_region_name: eu-west-1
      cooldown_time: 12
    model_info:
      allowed_fails: 7
      health_check_model: gpt-4o-mini
      health_check_timeout: 3
      disable_background_health_check: true
router_settings:
  routing_strategy: latency-based-routing
  routing_strategy_args: {ttl: 60, lowest_latency_buffer: 0.3}
  num_retries: 1
  retry_after: 0
  allowed_fails: 2
  cooldown_time: 9
  retry_policy: {RateLimitErrorRetries: 4}
  allowed_fails_policy: {TimeoutErrorAllowedFails: 5}
  fallbacks: [{gpt: [claude]}, {"*": [small]}]
  context_window_fallbacks: [{gpt: [gpt-long]}]
  max_fallbacks: 2
  enable_tag_filtering: true
  enable_pre_call_checks: true
litellm_settings:
  content_policy_fallbacks: [{gpt: [lenient]}]
general_settings:
  background_health_checks: true
  health_check_interval: 30
"#;
    let c = parse(text, &[]).unwrap();
    assert!(c.ignored.is_empty(), "{:?}", c.ignored);
    let r = &c.router;
    assert_eq!(r.strategy, Strategy::LatencyBased);
    assert_eq!(
        (r.latency.ttl, r.latency.buffer),
        (Duration::from_secs(60), 0.3)
    );
    assert_eq!(
        (r.num_retries, r.retry_after, r.allowed_fails),
        (1, Duration::ZERO, 2)
    );
    assert_eq!(r.cooldown_time, Duration::from_secs(9));
    assert_eq!(r.retries_for(ErrorClass::RateLimit), 4);
    assert_eq!(r.allowed_fails_for(ErrorClass::Timeout, None), 5);
    assert_eq!(
        r.fallbacks.after("gpt", ErrorClass::InternalServer),
        ["claude"]
    );
    assert_eq!(
        r.fallbacks.after("other", ErrorClass::InternalServer),
        ["small"]
    );
    assert_eq!(
        r.fallbacks.after("gpt", ErrorClass::ContextWindowExceeded),
        ["gpt-long"]
    );
    assert_eq!(
        r.fallbacks.after("gpt", ErrorClass::ContentPolicyViolation),
        ["lenient"]
    );
    assert_eq!(r.max_fallbacks, 2);
    assert!(r.enable_tag_filtering && r.tag_filtering_match_any);
    assert!(c.health_checks.enabled);
    assert_eq!(c.health_checks.interval, Duration::from_secs(30));
    let d = &c.deployments[0];
    assert_eq!(
        (d.order, d.region_name.as_deref()),
        (Some(2), Some("eu-west-1"))
    );
    assert_eq!(
        (d.cooldown_time, d.allowed_fails),
        (Some(Duration::from_secs(12)), Some(7))
    );
    assert_eq!(d.health.model.as_deref(), Some("gpt-4o-mini"));
    assert_eq!(d.health.timeout, Some(Duration::from_secs(3)));
    assert!(d.health.disabled);

    let bad = |yaml: &str| parse(yaml, &[]).unwrap_err().to_string();
    assert!(
        bad("router_settings:\n  routing_strategy: fastest\n").contains("one of simple-shuffle")
    );
    assert!(bad("router_settings:\n  retry_policy: {Oops: 1}\n").contains("RateLimitErrorRetries"));
    assert!(bad("router_settings:\n  fallbacks: 3\n").contains("router_settings.fallbacks"));
    assert!(bad("router_settings:\n  num_retries: -1\n").contains("num_retries"));
}

#[test]
fn errors_name_file_path_and_expectation() {
    let e = parse("model_list:\n  - model_name: x\n    litellm_params:\n      model: openai/x\n      rpm: lots\n", &[])
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "config.yaml: `model_list[0].litellm_params.rpm`: a non-negative number"
    );
    let e = parse("model_list:\n  - model_name: x\n    litellm_params:\n      model: openai/x\n      api_key: os.environ/NOPE\n", &[])
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("`model_list[0].litellm_params.api_key`: environment variable NOPE")
    );
    let e = parse("meridian:\n  regoin: eu\n", &[]).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("config.yaml: `meridian.regoin`: one of the keys")
    );
    let e = parse("model_list: {}\n", &[]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "config.yaml: `model_list`: a list of models, found a mapping"
    );
    assert!(
        parse("model_list: [\n", &[])
            .unwrap_err()
            .to_string()
            .contains("valid YAML")
    );
}

#[test]
fn check_mode_reports_unset_variables() {
    let text = "model_list:\n  - model_name: x\n    litellm_params:\n      model: openai/x\n      api_key: os.environ/NOPE\n";
    let c = parse_str(text, "c.yaml", &env(&[]), true).unwrap();
    assert!(c.ignored.is_empty());
    assert_eq!(c.unset_env[0].path, "model_list[0].litellm_params.api_key");
    assert!(c.unset_env[0].reason.contains("NOPE is not set"));
}

#[test]
fn a_production_litellm_config_loads_and_reports_what_it_ignores() {
    let text = include_str!("../../../../fixtures/litellm/production_config.yaml");
    let c = parse_str(text, "production_config.yaml", &env(&[]), true).unwrap();
    let groups: BTreeSet<&str> = c
        .deployments
        .iter()
        .map(|d| d.model_group.as_str())
        .collect();
    assert_eq!(
        groups.into_iter().collect::<Vec<_>>(),
        vec![
            "claude-sonnet",
            "gpt-4o",
            "gpt-4o-mini",
            "llama-3.3-70b",
            "qwen-local",
            "text-embedding-3-small"
        ]
    );
    let reason = |path: &str| {
        c.ignored
            .iter()
            .find(|i| i.path == path)
            .map(|i| i.reason.clone())
    };
    assert!(
        reason("model_list[4].litellm_params.model")
            .unwrap()
            .contains("`bedrock` is not supported")
    );
    assert!(
        reason("model_list[8].model_info.mode")
            .unwrap()
            .contains("image_generation")
    );
    assert!(
        reason("router_settings.redis_host")
            .unwrap()
            .contains("no Redis")
    );
    assert!(
        reason("general_settings.database_url")
            .unwrap()
            .contains("no external database")
    );
    // `prometheus` is what Meridian does anyway; other callbacks are not.
    assert!(reason("litellm_settings.callbacks").is_none());
    assert!(reason("litellm_settings.success_callback").is_some());
    assert_eq!(c.max_request_bytes, 16 * 1024 * 1024);
    assert_eq!(c.unset_env.len(), 8, "{:#?}", c.unset_env);
    let local = c
        .deployments
        .iter()
        .find(|d| d.model_group == "qwen-local")
        .unwrap();
    assert_eq!(local.price.unwrap().input, 100_000);
    assert_eq!(
        local.timeout,
        Duration::from_secs(120),
        "router_settings.timeout is the default"
    );
}

#[test]
fn meridian_section_and_env_overrides() {
    let text = "meridian:\n  node_id: eu-1\n  region: eu-west\n  host: 0.0.0.0\n  port: 8080\n  data_dir: /var/lib/meridian\ngeneral_settings:\n  master_key: from-file\nenvironment_variables:\n  X: y\n";
    let c = parse(
        text,
        &[
            ("LITELLM_MASTER_KEY", "from-env"),
            ("DISABLE_ADMIN_ENDPOINTS", "True"),
        ],
    )
    .unwrap();
    assert_eq!(c.node.node_id, "eu-1");
    assert_eq!(c.node.listen, "0.0.0.0:8080".parse().unwrap());
    assert_eq!(c.master_key.unwrap().expose(), "from-env");
    assert!(c.disable.admin && !c.disable.llm_api);
}

#[test]
fn ids_are_stable_hashes_and_must_be_unique() {
    let one = "model_list:\n  - model_name: a\n    litellm_params:\n      model: mock/chat\n";
    let a = parse(one, &[]).unwrap();
    let b = parse(one, &[]).unwrap();
    assert_eq!(a.deployments[0].id, b.deployments[0].id);
    assert_eq!(a.deployments[0].id.len(), 32);
    let twice = "model_list:\n  - model_name: a\n    litellm_params: {model: mock/chat}\n    model_info: {id: x}\n  - model_name: b\n    litellm_params: {model: mock/chat}\n    model_info: {id: x}\n";
    assert!(
        parse(twice, &[])
            .unwrap_err()
            .to_string()
            .contains("`model_list[1].model_info.id`: a unique id")
    );
}

#[test]
fn the_shutdown_drain_is_configurable_and_bounded() {
    let base = "model_list: []\n";
    assert_eq!(
        parse(base, &[]).unwrap().shutdown_drain,
        crate::runtime::DRAIN_DEADLINE
    );
    let set = parse(
        &format!("{base}meridian:\n  shutdown_drain_seconds: 5\n"),
        &[],
    )
    .unwrap();
    assert_eq!(set.shutdown_drain, std::time::Duration::from_secs(5));
    let e = parse(
        &format!("{base}meridian:\n  shutdown_drain_seconds: 4000\n"),
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("meridian.shutdown_drain_seconds"), "{e}");
}
