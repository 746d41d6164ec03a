//! The admin API in-process on a one-node region (router tier): keys, teams,
//! users, customers and budgets with LiteLLM's paths and bodies; roles; and the
//! LLM path authenticating the keys it creates.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod router_support;

use router_support::*;
use serde_json::{Value, json};

#[tokio::test]
async fn generated_keys_authenticate_and_follow_their_settings() {
    let n = node("").await;
    let created = ok(post(
        &n,
        "/key/generate",
        MASTER,
        json!({ "models": ["gpt"], "key_alias": "ci", "metadata": { "env": "test" } }),
    )
    .await);
    let key = created["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("sk-"));
    assert_eq!(
        created["key_name"],
        format!("sk-...{}", &key[key.len() - 4..])
    );
    assert_eq!(created["token"].as_str().unwrap().len(), 64);
    assert_eq!(created["expires"], Value::Null);

    assert_eq!(chat(&n, &key, "gpt").await.0, 200);
    let (status, body) = chat(&n, &key, "claude").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["type"], "permission_error");
    assert!(body["error"]["message"].as_str().unwrap().contains("gpt"));
    let models = ok(get(&n, "/v1/models", &key).await);
    assert_eq!(
        models["data"].as_array().unwrap().len(),
        1,
        "only the key's models are listed"
    );

    // Block → refused at once; unblock → back.
    ok(post(&n, "/key/block", MASTER, json!({ "key": key })).await);
    let (status, body) = chat(&n, &key, "gpt").await;
    assert_eq!(status, 401);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("blocked")
    );
    ok(post(&n, "/key/unblock", MASTER, json!({ "key": key })).await);
    assert_eq!(chat(&n, &key, "gpt").await.0, 200);

    // Update, info (by key or by token), list.
    ok(post(
        &n,
        "/key/update",
        MASTER,
        json!({ "key": key, "models": ["gpt", "claude"], "rpm_limit": 10 }),
    )
    .await);
    assert_eq!(chat(&n, &key, "claude").await.0, 200);
    let info = ok(get(&n, &format!("/key/info?key={key}"), MASTER).await);
    assert_eq!(info["info"]["rpm_limit"], 10);
    assert_eq!(info["info"]["key_alias"], "ci");
    let token = info["key"].as_str().unwrap().to_owned();
    assert_eq!(
        ok(get(
            &n,
            &format!("/key/info?key={token}&consistency=linearizable"),
            MASTER
        )
        .await)["key"],
        token
    );
    assert_eq!(
        ok(get(&n, "/key/info", &key).await)["key"],
        token,
        "a key may read itself"
    );
    let list = ok(get(&n, "/key/list?key_alias=ci", MASTER).await);
    assert_eq!(
        (list["keys"].clone(), list["total_count"].clone()),
        (json!([token]), json!(1))
    );

    // Regenerate: the old secret stops working, the new one works.
    let regenerated = ok(post(&n, "/key/regenerate", MASTER, json!({ "key": key })).await);
    let new_key = regenerated["key"].as_str().unwrap().to_owned();
    assert_eq!(chat(&n, &key, "gpt").await.0, 401);
    assert_eq!(chat(&n, &new_key, "gpt").await.0, 200);
    assert_eq!(regenerated["key_alias"], "ci", "settings are kept");

    // Delete → invalid.
    let deleted = ok(post(&n, "/key/delete", MASTER, json!({ "key_aliases": ["ci"] })).await);
    assert_eq!(deleted["deleted_keys"], json!(["ci"]));
    assert_eq!(chat(&n, &new_key, "gpt").await.0, 401);
    assert_eq!(
        get(&n, &format!("/key/info?key={new_key}"), MASTER).await.0,
        404
    );
}

#[tokio::test]
async fn expired_keys_are_refused() {
    let n = node("").await;
    let key = ok(post(&n, "/key/generate", MASTER, json!({ "duration": "1s" })).await)["key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(chat(&n, &key, "gpt").await.0, 200);
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let (status, body) = chat(&n, &key, "gpt").await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired")
    );
}

#[tokio::test]
async fn admin_calls_need_a_valid_key_and_the_right_role() {
    let n = node("").await;
    assert_eq!(
        call(&n, "POST", "/key/generate", None, Some(json!({})))
            .await
            .0,
        401
    );
    assert_eq!(
        post(&n, "/key/generate", "sk-wrong", json!({})).await.0,
        401
    );

    // A user with the default role gets a key with /user/new.
    let alice = ok(post(
        &n,
        "/user/new",
        MASTER,
        json!({ "user_id": "alice", "user_email": "a@example.com" }),
    )
    .await);
    let alice_key = alice["key"].as_str().unwrap().to_owned();
    assert_eq!(alice["user_role"], "internal_user");
    let bob_key = ok(post(&n, "/user/new", MASTER, json!({ "user_id": "bob" })).await)["key"]
        .as_str()
        .unwrap()
        .to_owned();

    // Internal users manage their own keys only.
    let own = ok(post(
        &n,
        "/key/generate",
        &alice_key,
        json!({ "models": ["gpt"] }),
    )
    .await);
    assert_eq!(own["user_id"], "alice");
    let (status, body) = post(&n, "/key/generate", &alice_key, json!({ "user_id": "bob" })).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("only admins may create keys for other users")
    );
    let (status, body) = get(&n, &format!("/key/info?key={bob_key}"), &alice_key).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("user `alice` has role internal_user")
    );
    let (status, body) = post(&n, "/team/new", &alice_key, json!({ "team_alias": "x" })).await;
    assert_eq!(status, 403);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("requires the master key or the proxy_admin role")
    );
    assert_eq!(get(&n, "/user/list", &alice_key).await.0, 403);
    assert_eq!(
        get(&n, "/user/info", &alice_key).await.0,
        200,
        "a user may read itself"
    );
    let mine = ok(get(&n, "/key/list", &alice_key).await);
    assert_eq!(
        mine["total_count"], 2,
        "alice sees her two keys only: {mine}"
    );

    // Viewers read, never write; proxy admins do everything.
    let viewer = ok(post(
        &n,
        "/user/new",
        MASTER,
        json!({ "user_id": "v", "user_role": "proxy_admin_viewer" }),
    )
    .await)["key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(get(&n, "/user/list", &viewer).await.0, 200);
    assert_eq!(get(&n, "/key/list", &viewer).await.1["total_count"], 4);
    assert_eq!(post(&n, "/key/generate", &viewer, json!({})).await.0, 403);
    let admin = ok(post(
        &n,
        "/user/new",
        MASTER,
        json!({ "user_id": "root", "user_role": "proxy_admin" }),
    )
    .await)["key"]
        .as_str()
        .unwrap()
        .to_owned();
    ok(post(&n, "/team/new", &admin, json!({ "team_id": "t1" })).await);
    ok(post(&n, "/key/block", &admin, json!({ "key": bob_key })).await);
}

#[tokio::test]
async fn team_admins_manage_their_team() {
    let n = node("").await;
    let lead = ok(post(&n, "/user/new", MASTER, json!({ "user_id": "lead" })).await)["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let dev = ok(post(&n, "/user/new", MASTER, json!({ "user_id": "dev" })).await)["key"]
        .as_str()
        .unwrap()
        .to_owned();
    ok(post(&n, "/team/new", MASTER, json!({ "team_id": "ml", "models": ["gpt"], "members_with_roles": [{ "role": "admin", "user_id": "lead" }] })).await);
    ok(post(
        &n,
        "/team/member_add",
        &lead,
        json!({ "team_id": "ml", "member": { "role": "user", "user_id": "dev" } }),
    )
    .await);
    assert_eq!(
        post(
            &n,
            "/team/member_add",
            &dev,
            json!({ "team_id": "ml", "member": { "user_id": "x" } })
        )
        .await
        .0,
        403
    );

    // A member makes a key in the team (a team admin makes keys only for
    // itself); the team's models bound it.
    assert_eq!(
        post(
            &n,
            "/key/generate",
            &lead,
            json!({ "team_id": "ml", "user_id": "dev" })
        )
        .await
        .0,
        403
    );
    let team_key = ok(post(&n, "/key/generate", &dev, json!({ "team_id": "ml" })).await)["key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(chat(&n, &team_key, "gpt").await.0, 200);
    assert_eq!(
        chat(&n, &team_key, "claude").await.0,
        403,
        "the team's model list applies to its keys"
    );
    assert_eq!(
        post(&n, "/key/generate", &dev, json!({ "team_id": "nope" }))
            .await
            .0,
        403,
        "a team it is not in (whether it exists is not said)"
    );
    ok(post(&n, "/team/new", MASTER, json!({ "team_id": "elsewhere" })).await);
    assert_eq!(
        post(&n, "/key/generate", &dev, json!({ "team_id": "elsewhere" }))
            .await
            .0,
        403,
        "a team it is not a member of"
    );

    let info = ok(get(&n, "/team/info?team_id=ml", &dev).await);
    assert_eq!(
        info["team_info"]["members"],
        json!({ "lead": "admin", "dev": "user" })
    );
    assert_eq!(info["keys"].as_array().unwrap().len(), 1);

    // Blocking the team refuses its keys.
    ok(post(&n, "/team/block", MASTER, json!({ "team_id": "ml" })).await);
    let (status, body) = chat(&n, &team_key, "gpt").await;
    assert_eq!(status, 401);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("team `ml` is blocked")
    );
    ok(post(&n, "/team/unblock", MASTER, json!({ "team_id": "ml" })).await);
    ok(post(
        &n,
        "/team/member_delete",
        &lead,
        json!({ "team_id": "ml", "user_id": "dev" }),
    )
    .await);
    assert_eq!(
        ok(get(&n, "/team/list", MASTER).await)
            .as_array()
            .unwrap()
            .len(),
        2
    );
    ok(post(&n, "/team/delete", MASTER, json!({ "team_ids": ["ml"] })).await);
    assert_eq!(
        chat(&n, &team_key, "gpt").await.0,
        401,
        "a key whose team is gone is refused"
    );
}

#[tokio::test]
async fn customers_budgets_and_status() {
    let n = node("").await;
    ok(post(&n, "/budget/new", MASTER, json!({ "budget_id": "small", "max_budget": 5.0, "budget_duration": "1mo", "rpm_limit": 60 })).await);
    assert_eq!(
        ok(post(&n, "/budget/info", MASTER, json!({ "budgets": ["small"] })).await)[0]["max_budget"],
        5.0
    );
    ok(post(
        &n,
        "/budget/update",
        MASTER,
        json!({ "budget_id": "small", "max_budget": 7.5 }),
    )
    .await);
    ok(post(
        &n,
        "/customer/new",
        MASTER,
        json!({ "user_id": "acme", "budget_id": "small", "alias": "ACME" }),
    )
    .await);
    ok(post(
        &n,
        "/customer/block",
        MASTER,
        json!({ "user_ids": ["acme"] }),
    )
    .await);
    let c = ok(get(&n, "/customer/info?end_user_id=acme", MASTER).await);
    assert_eq!(
        (c["blocked"].as_bool(), c["alias"].as_str()),
        (Some(true), Some("ACME"))
    );
    ok(post(
        &n,
        "/customer/delete",
        MASTER,
        json!({ "user_ids": ["acme"] }),
    )
    .await);
    assert_eq!(
        get(&n, "/customer/info?end_user_id=acme", MASTER).await.0,
        404
    );
    ok(post(&n, "/budget/delete", MASTER, json!({ "id": "small" })).await);

    let status = ok(get(&n, "/cluster/status", MASTER).await);
    assert_eq!(
        (status["state"].as_str(), status["leader"].as_u64()),
        (Some("leader"), Some(1))
    );
    assert_eq!(status["members"].as_array().unwrap().len(), 1);
    assert_eq!(status["region"], "local");
}

#[tokio::test]
async fn malformed_admin_bodies_name_the_field() {
    let n = node("").await;
    let cases = [
        ("/key/generate", json!({ "rpm_limit": "ten" }), "rpm_limit"),
        ("/key/generate", json!({ "models": "gpt" }), "models"),
        ("/key/generate", json!({ "colour": "red" }), "colour"),
        (
            "/key/generate",
            json!({ "duration": "forever" }),
            "duration",
        ),
        (
            "/key/generate",
            json!({ "budget_duration": "monthly" }),
            "budget_duration",
        ),
        ("/key/generate", json!({ "team_id": "ghost" }), "team_id"),
        (
            "/key/generate",
            json!({ "enforcement": "sometimes" }),
            "enforcement",
        ),
        (
            "/team/new",
            json!({ "members_with_roles": [{ "role": "owner", "user_id": "a" }] }),
            "members_with_roles[0].role",
        ),
        (
            "/user/new",
            json!({ "user_role": "superuser" }),
            "user_role",
        ),
        ("/team/delete", json!({ "team_ids": "t1" }), "team_ids"),
        ("/key/update", json!({ "rpm_limit": 3 }), "key"),
        ("/customer/new", json!({ "alias": "x" }), "user_id"),
    ];
    for (path, body, param) in cases {
        let (status, reply) = post(&n, path, MASTER, body.clone()).await;
        assert_eq!(status, 400, "{path} {body}: {reply}");
        assert_eq!(reply["error"]["param"], param, "{path} {body}: {reply}");
        assert_eq!(reply["error"]["type"], "invalid_request_error");
    }
    let (status, reply) = call(&n, "POST", "/key/generate", Some(MASTER), None).await;
    assert_eq!(status, 400, "{reply}");
    // Nothing was created by any of them.
    assert_eq!(ok(get(&n, "/key/list", MASTER).await)["total_count"], 0);
    assert_eq!(
        post(&n, "/team/new", MASTER, json!({ "team_id": "dup" }))
            .await
            .0,
        200
    );
    let (status, reply) = post(&n, "/team/new", MASTER, json!({ "team_id": "dup" })).await;
    assert_eq!(status, 400, "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already exists")
    );
}

#[tokio::test]
async fn the_admin_api_can_be_disabled() {
    let n = node("meridian:\n  disable_admin_endpoints: true\n").await;
    let (status, body) = post(&n, "/key/generate", MASTER, json!({})).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("admin endpoints are disabled")
    );
    assert_eq!(chat(&n, MASTER, "gpt").await.0, 200, "the LLM API stays up");
}

#[tokio::test]
async fn run_time_models_are_region_scoped_and_keep_their_keys_sealed() {
    let n = node("").await;
    let added = ok(post(&n, "/model/new", MASTER, json!({
        "model_name": "added", "litellm_params": { "model": "mock/chat", "api_key": "sk-provider-secret", "rpm": 10 }
    })).await);
    assert_eq!(added["has_api_key"], true);
    assert_eq!(
        added["scope"],
        json!({ "kind": "regions", "regions": ["local"] }),
        "scoped to this region by default"
    );
    assert!(!added.to_string().contains("sk-provider-secret"));
    let id = added["model_id"].as_str().unwrap().to_owned();
    let stored = n.metadata.read(|s| s.model(&id).cloned()).unwrap();
    let sealed = stored.sealed_params["api_key"].clone();
    assert!(
        !sealed.contains("sk-provider-secret")
            && !serde_json::to_string(&*stored)
                .unwrap()
                .contains("sk-provider-secret")
    );
    assert_eq!(
        n.sealer.open(&sealed).unwrap().expose(),
        "sk-provider-secret"
    );

    assert_eq!(chat(&n, MASTER, "added").await.0, 200);
    let info = ok(get(&n, "/v1/model/info", MASTER).await);
    let entry = info["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model_info"]["id"] == id)
        .unwrap()
        .clone();
    assert_eq!(
        (
            entry["model_name"].as_str(),
            entry["model_info"]["db_model"].as_bool()
        ),
        (Some("added"), Some(true))
    );
    assert!(!info.to_string().contains("sk-provider-secret"));

    // Another region's model is not served here.
    ok(post(&n, "/model/new", MASTER, json!({
        "model_name": "eu-only", "litellm_params": { "model": "mock/chat" }, "model_info": { "id": "eu-1" }, "regions": ["eu-west"]
    })).await);
    assert_eq!(chat(&n, MASTER, "eu-only").await.0, 400);
    ok(post(
        &n,
        "/model/update",
        MASTER,
        json!({ "model_id": "eu-1", "regions": "*" }),
    )
    .await);
    assert_eq!(
        chat(&n, MASTER, "eu-only").await.0,
        200,
        "scoped wider, it serves here too"
    );

    ok(post(
        &n,
        "/model/update",
        MASTER,
        json!({ "model_id": id, "litellm_params": { "rpm": 20 } }),
    )
    .await);
    let sealed_after = n
        .metadata
        .read(|s| s.model(&id).unwrap().sealed_params.get("api_key").cloned());
    assert_eq!(
        sealed_after.as_deref(),
        Some(sealed.as_str()),
        "an update without a key keeps the sealed one"
    );
    ok(post(&n, "/model/delete", MASTER, json!({ "id": id })).await);
    assert_eq!(chat(&n, MASTER, "added").await.0, 400);

    let (status, body) = post(
        &n,
        "/model/new",
        MASTER,
        json!({ "model_name": "x", "litellm_params": { "model": "mock/chat", "rpm": "lots" } }),
    )
    .await;
    assert_eq!(
        (status, body["error"]["param"].as_str()),
        (400, Some("litellm_params.rpm")),
        "{body}"
    );
    let (status, body) = post(
        &n,
        "/model/new",
        MASTER,
        json!({ "model_name": "x", "litellm_params": { "model": "bedrock/titan" } }),
    )
    .await;
    assert_eq!(
        (status, body["error"]["param"].as_str()),
        (400, Some("litellm_params.model")),
        "{body}"
    );
}

#[tokio::test]
async fn what_a_non_admin_can_make_the_metadata_hold_is_bounded() {
    let n = node("").await;
    let mine = ok(post(&n, "/user/new", MASTER, json!({ "user_id": "busy" })).await)["key"]
        .as_str()
        .unwrap()
        .to_owned();
    // Edits of one key: refused once its history is full; an admin may
    // still change it.
    let key = ok(post(&n, "/key/generate", &mine, json!({})).await)["key"]
        .as_str()
        .unwrap()
        .to_owned();
    // Metadata that does not compress: 8 KiB of distinct hex per edit.
    let noise = |i: u64| {
        (0..512u64)
            .map(|j| {
                format!(
                    "{:016x}",
                    (i * 1000 + j).wrapping_mul(0x9e37_79b9_7f4a_7c15)
                )
            })
            .collect::<String>()
    };
    let mut edits = 0u64;
    let refused = loop {
        let (status, body) = post(
            &n,
            "/key/update",
            &mine,
            json!({ "key": key, "metadata": { "blob": noise(edits) } }),
        )
        .await;
        if status != 200 {
            break (status, body);
        }
        edits += 1;
        assert!(edits < 100, "the history never filled");
    };
    assert_eq!(refused.0, 403, "{}", refused.1);
    assert!(
        refused.1["error"]["message"]
            .as_str()
            .unwrap()
            .contains("changed too many times")
    );
    // Hex carries 4 bits a byte: each edit adds about 4 KiB of history.
    assert!((8..=24).contains(&edits), "{edits} edits of 8 KiB");
    ok(post(
        &n,
        "/key/update",
        MASTER,
        json!({ "key": key, "key_alias": "by-admin" }),
    )
    .await);

    // Keys a user makes: at most 100 an hour on a node (each leaves a
    // document every region keeps, deleted or not) ...
    let mut made = 1; // the one edited above
    loop {
        let (status, body) = post(&n, "/key/generate", &mine, json!({})).await;
        if status != 200 {
            assert_eq!(status, 403, "{body}");
            assert!(body.to_string().contains("this hour"), "{body}");
            break;
        }
        made += 1;
        assert!(made <= 100, "more than 100 keys in an hour");
    }
    assert_eq!(made, 100);
    // ... and at most 1000 in all: with 998 more made by an admin, the
    // user's own next key is refused.
    let owned = 2 + 99; // from /user/new, and the 100 made above
    for _ in owned..1000 {
        ok(post(&n, "/key/generate", MASTER, json!({ "user_id": "busy" })).await);
    }
    let (status, body) = post(&n, "/key/generate", &mine, json!({})).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.to_string().contains("1000 keys"), "{body}");
    // A team admin adds only users that exist.
    ok(post(&n, "/team/new", MASTER, json!({ "team_id": "busy-team", "members_with_roles": [{ "user_id": "busy", "role": "admin" }] })).await);
    let (status, body) = post(
        &n,
        "/team/member_add",
        &mine,
        json!({ "team_id": "busy-team", "member": { "user_id": "ghost", "role": "user" } }),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    ok(post(&n, "/key/generate", MASTER, json!({ "user_id": "busy" })).await);
}
