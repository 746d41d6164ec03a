//! Secrets stay secret: a node started with known secrets (master key, salt
//! key, cluster secret, provider keys from the config and from the admin
//! API, environment values allow-listed and not) is driven through every
//! kind of route and error, and none of those secrets ever appears in an
//! answer (body or header), in the node's log, or in its data directory
//! (but the `master_key` file a generated key is kept in, here absent).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod process_support;

use meridian_loadtest::fake_upstream::FakeUpstream;
use process_support::Server;
use serde_json::{Value, json};

const SALT: &str = "salt-7c1e0f5b2a9d4e36";
const CLUSTER_SECRET: &str = "cluster-secret-91d2e4f7a8b3";
const PROVIDER_IN_CONFIG: &str = "sk-provider-config-5e8a1c2f9b";
const PROVIDER_IN_ENV: &str = "sk-provider-env-3b7d9a0e4c";
const PROVIDER_AT_RUNTIME: &str = "sk-provider-runtime-8f2c6d1a0e";
const ALLOWED_ENV_VALUE: &str = "sk-allowed-env-4a9c2e7b1d";
const PRIVATE_ENV_VALUE: &str = "private-env-value-6d3f8b2a5c";
const AWS_SECRET: &str = "aws-secret-2e9f7c4a1b8d";

#[tokio::test]
async fn no_secret_reaches_an_answer_a_log_or_a_file() {
    let fake = FakeUpstream::start(true).await.unwrap();
    let extra = format!(
        "  - model_name: configured\n    litellm_params: {{model: openai/gpt-4o, api_base: \"{}\", api_key: os.environ/PROVIDER_KEY}}\n\
         meridian:\n  model_env_allowlist: {{ALLOWED_PROVIDER_KEY: \"{}\", OPENAI_API_KEY: null}}\n",
        fake.base_url(),
        fake.base_url()
    );
    let env = [
        ("MERIDIAN_SALT_KEY", SALT),
        ("MERIDIAN_CLUSTER_SECRET", CLUSTER_SECRET),
        ("PROVIDER_KEY", PROVIDER_IN_ENV),
        ("OPENAI_API_KEY", PROVIDER_IN_CONFIG),
        ("ALLOWED_PROVIDER_KEY", ALLOWED_ENV_VALUE),
        ("PRIVATE_THING", PRIVATE_ENV_VALUE),
    ];
    let s = Server::start_with(&extra, &env).await;
    let mut answers: Vec<String> = Vec::new();
    let mut record = |what: &str, status: u16, body: &Value| {
        answers.push(format!("{what} {status} {body}"));
    };

    // A run-time model with a literal key and an AWS secret (both sealed),
    // one naming an allowed variable, and attempts to read others.
    let base = fake.base_url();
    for (name, params) in [
        (
            "literal",
            json!({ "model": "openai/gpt-4o", "api_base": base, "api_key": PROVIDER_AT_RUNTIME, "aws_secret_access_key": AWS_SECRET }),
        ),
        (
            "allowed",
            json!({ "model": "openai/gpt-4o", "api_base": base, "api_key": "os.environ/ALLOWED_PROVIDER_KEY" }),
        ),
        (
            "private",
            json!({ "model": "openai/gpt-4o", "api_base": base, "api_key": "os.environ/PRIVATE_THING" }),
        ),
        (
            "in-base",
            json!({ "model": "openai/gpt-4o", "api_base": "os.environ/PRIVATE_THING" }),
        ),
        ("in-model", json!({ "model": "os.environ/PRIVATE_THING" })),
        (
            "implicit",
            json!({ "model": "openai/gpt-4o", "api_base": base }),
        ),
        // An allowed variable sent anywhere but where the operator allowed.
        (
            "allowed-elsewhere",
            json!({ "model": "openai/gpt-4o", "api_base": "http://127.0.0.1:9/v1", "api_key": "os.environ/ALLOWED_PROVIDER_KEY" }),
        ),
        (
            "master",
            json!({ "model": "openai/gpt-4o", "api_base": base, "api_key": "os.environ/MERIDIAN_MASTER_KEY" }),
        ),
    ] {
        let (status, body) = s
            .call("POST", "/model/new", &s.master, Some(json!({ "model_name": name, "litellm_params": params, "model_info": { "id": name } })))
            .await;
        record(name, status, &body);
        let expect_ok = matches!(name, "literal" | "allowed" | "implicit");
        assert_eq!(status == 200, expect_ok, "{name}: {status} {body}");
    }
    // A run-time model without a key does not inherit OPENAI_API_KEY: the
    // fake upstream is told what arrived.
    let key = s.admin("/key/generate", json!({})).await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    for model in ["configured", "literal", "allowed", "implicit"] {
        let (status, body) = s
            .call(
                "POST",
                "/v1/chat/completions",
                &key,
                Some(json!({ "model": model, "messages": [{ "role": "user", "content": "hi" }] })),
            )
            .await;
        record(model, status, &body);
    }
    // Moving a model elsewhere needs its key again.
    let (status, body) = s
        .call("POST", "/model/update", &s.master, Some(json!({ "model_id": "literal", "litellm_params": { "api_base": "http://127.0.0.1:9/v1" } })))
        .await;
    record("move", status, &body);
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("api_key"), "{body}");

    // Every read route, as the master key and as a plain key, and a few
    // errors.
    for path in [
        "/model/info",
        "/v1/model/info",
        "/v1/models",
        "/key/list?return_full_object=true",
        "/user/list",
        "/team/list",
        "/tag/list",
        "/cluster/status",
        "/health",
        "/health/readiness",
        "/health/liveliness",
        "/spend/logs",
        "/key/info",
        "/nope",
    ] {
        for k in [s.master.as_str(), key.as_str(), "sk-wrong-key-000000"] {
            let (status, body) = s.call("GET", path, k, None).await;
            record(path, status, &body);
        }
    }
    for (path, body) in [
        ("/key/generate", json!({ "max_budget": -1 })),
        ("/team/new", json!({ "metadata": "x" })),
        ("/v1/chat/completions", json!({ "model": "configured" })),
        (
            "/model/update",
            json!({ "model_id": "literal", "litellm_params": { "rpm": "x" } }),
        ),
    ] {
        let (status, reply) = s.call("POST", path, &s.master, Some(body)).await;
        record(path, status, &reply);
    }
    let raw = reqwest::Client::new()
        .get(format!("{}/health/readiness", s.base))
        .send()
        .await
        .unwrap();
    let headers = format!("{:?}", raw.headers());
    record("readiness headers", raw.status().as_u16(), &json!(headers));

    // What the fake upstream was sent: the configured model's key, the
    // sealed run-time key, the allowed variable — and no key at all for the
    // model that named none.
    let sent: Vec<Option<String>> = fake
        .take_requests()
        .iter()
        .map(|r| r.headers.get("authorization").map(|v| v.to_owned()))
        .collect();
    assert!(
        sent.contains(&Some(format!("Bearer {PROVIDER_IN_ENV}"))),
        "{sent:?}"
    );
    assert!(
        sent.contains(&Some(format!("Bearer {PROVIDER_AT_RUNTIME}"))),
        "{sent:?}"
    );
    assert!(
        sent.contains(&Some(format!("Bearer {ALLOWED_ENV_VALUE}"))),
        "{sent:?}"
    );
    assert!(
        !sent.contains(&Some(format!("Bearer {PROVIDER_IN_CONFIG}"))),
        "a run-time model must not inherit OPENAI_API_KEY: {sent:?}"
    );

    let secrets = [
        s.master.as_str(),
        SALT,
        CLUSTER_SECRET,
        PROVIDER_IN_CONFIG,
        PROVIDER_IN_ENV,
        PROVIDER_AT_RUNTIME,
        ALLOWED_ENV_VALUE,
        PRIVATE_ENV_VALUE,
        AWS_SECRET,
    ];
    let answers = answers.join("\n");
    let log = s.log();
    assert!(!log.is_empty());
    let files = data_files(&s.dir.path().join("data"));
    assert!(!files.is_empty());
    for secret in secrets {
        assert!(
            !answers.contains(secret),
            "an answer carries {secret}:\n{answers}"
        );
        assert!(!log.contains(secret), "the log carries {secret}");
        for (path, bytes) in &files {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{} carries {secret}",
                path.display()
            );
        }
    }
}

/// Every file under `dir`, with its bytes; each must be its owner's only.
fn data_files(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::metadata(&path).unwrap();
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = meta.permissions().mode() & 0o777;
                let want = if meta.is_dir() { 0o700 } else { 0o600 };
                assert_eq!(mode & !want, 0, "{} is {mode:o}", path.display());
            }
            if meta.is_dir() {
                stack.push(path);
            } else {
                out.push((path.clone(), std::fs::read(&path).unwrap()));
            }
        }
    }
    out
}
