//! The ways an ordinary key or a team admin could become more than it is,
//! each tried against a running `meridian` process and refused; and the
//! limits of what such callers may change (`docs/security.md`, "Fields").

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod process_support;

use process_support::Server;
use serde_json::{Value, json};

/// Two deployments of `geo`, one in the EU, one in the US.
const GEO: &str = "  - model_name: geo\n    litellm_params: {model: mock/chat, region_name: eu-west-1}\n    model_info: {id: geo-eu}\n  - model_name: geo\n    litellm_params: {model: mock/chat, region_name: us-east-1}\n    model_info: {id: geo-us}\n  - model_name: other\n    litellm_params: {model: mock/chat}\n";

/// A user of `role` (created by the master key) and a key of theirs.
async fn user(s: &Server, id: &str, role: &str, extra: Value) -> String {
    let mut body = json!({ "user_id": id, "user_role": role });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    s.admin("/user/new", body).await["key"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn token(s: &Server, key: &str) -> String {
    s.call("GET", &format!("/key/info?key={key}"), &s.master, None)
        .await
        .1["key"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn chat(model: &str) -> Value {
    json!({ "model": model, "messages": [{ "role": "user", "content": "hi" }] })
}

async fn status(s: &Server, path: &str, key: &str, body: Value) -> (u16, Value) {
    s.call("POST", path, key, Some(body)).await
}

#[tokio::test]
async fn an_ordinary_key_cannot_make_itself_an_admin() {
    let s = Server::start("").await;
    user(&s, "root", "proxy_admin", json!({})).await;
    let mine = user(&s, "dev", "internal_user", json!({})).await;
    // Naming an admin as the key's owner.
    let (code, body) = status(
        &s,
        "/key/update",
        &mine,
        json!({ "key": mine, "user_id": "root" }),
    )
    .await;
    assert_eq!(code, 403, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("user_id"),
        "{body}"
    );
    // ... or minting a key owned by the admin.
    let (code, body) = status(&s, "/key/generate", &mine, json!({ "user_id": "root" })).await;
    assert_eq!(code, 403, "{body}");
    // Still an internal user: admin routes stay closed.
    assert_eq!(
        status(&s, "/user/new", &mine, json!({ "user_id": "x" }))
            .await
            .0,
        403
    );
    let info = s
        .call("GET", &format!("/key/info?key={mine}"), &s.master, None)
        .await
        .1;
    assert_eq!(info["info"]["user_id"], "dev");
}

#[tokio::test]
async fn a_team_admin_makes_keys_only_for_itself_and_regenerates_none_of_its_members() {
    let s = Server::start(GEO).await;
    let lead = user(&s, "lead", "internal_user", json!({})).await;
    user(&s, "member", "internal_user", json!({})).await;
    user(&s, "root", "proxy_admin", json!({})).await;
    user(&s, "outsider", "internal_user", json!({})).await;
    s.admin(
        "/team/new",
        json!({ "team_id": "t", "max_budget": 10.0, "models": ["other"], "members_with_roles": [
            { "user_id": "lead", "role": "admin" },
            { "user_id": "member", "role": "user" },
            { "user_id": "root", "role": "user" },
        ] }),
    )
    .await;
    // A key in anyone else's name would spend their budget and count
    // against their keys: a member, an outsider, an admin in the team.
    for owner in ["member", "outsider", "root"] {
        let (code, body) = status(
            &s,
            "/key/generate",
            &lead,
            json!({ "user_id": owner, "team_id": "t", "key_type": "llm_api" }),
        )
        .await;
        assert_eq!(code, 403, "{owner}: {body}");
    }
    // Its own key in the team: fine.
    assert_eq!(
        status(&s, "/key/generate", &lead, json!({ "team_id": "t" }))
            .await
            .0,
        200
    );
    // Regenerating: the admin's key in the team, a member's full key and a
    // member's LLM-only key would each hand over someone else's rights or
    // budget; the team's key of no user would not.
    let made = |body: Value| {
        let s = &s;
        async move {
            s.admin("/key/generate", body).await["key"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let root_in_team = made(json!({ "user_id": "root", "team_id": "t" })).await;
    let member_full = made(json!({ "user_id": "member", "team_id": "t" })).await;
    let member_llm =
        made(json!({ "user_id": "member", "team_id": "t", "key_type": "llm_api" })).await;
    let nobodys = made(json!({ "team_id": "t" })).await;
    for key in [&root_in_team, &member_full, &member_llm] {
        let (code, body) = status(&s, "/key/regenerate", &lead, json!({ "key": key })).await;
        assert_eq!(code, 403, "{body}");
    }
    assert_eq!(
        status(&s, "/key/regenerate", &lead, json!({ "key": nobodys }))
            .await
            .0,
        200
    );
    // Nor can it manage the admin's key at all.
    let (code, _) = status(&s, "/key/block", &lead, json!({ "key": root_in_team })).await;
    assert_eq!(code, 403);
}

#[tokio::test]
async fn a_team_admin_cannot_lift_an_admins_block_or_raise_its_team() {
    let s = Server::start(GEO).await;
    let lead = user(&s, "lead", "internal_user", json!({})).await;
    user(&s, "member", "internal_user", json!({})).await;
    s.admin("/tag/new", json!({ "name": "billing" })).await;
    s.admin(
        "/team/new",
        json!({ "team_id": "t", "max_budget": 10.0, "rpm_limit": 100, "models": ["geo"], "tags": ["billing"],
                "metadata": { "allowed_regions": ["eu"] },
                "members_with_roles": [{ "user_id": "lead", "role": "admin" }, { "user_id": "member", "role": "user" }] }),
    )
    .await;
    let key = s
        .admin(
            "/key/generate",
            json!({ "user_id": "member", "team_id": "t", "key_type": "llm_api" }),
        )
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    // An admin's block holds against the team admin.
    s.admin("/key/block", json!({ "key": key })).await;
    let (code, body) = status(&s, "/key/unblock", &lead, json!({ "key": key })).await;
    assert_eq!(code, 403, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("blocked by an admin")
    );
    assert_eq!(
        status(&s, "/v1/chat/completions", &key, chat("geo"))
            .await
            .0,
        401
    );
    // Its own block it may lift.
    s.admin("/key/unblock", json!({ "key": key })).await;
    assert_eq!(
        status(&s, "/key/block", &lead, json!({ "key": key }))
            .await
            .0,
        200
    );
    assert_eq!(
        status(&s, "/key/unblock", &lead, json!({ "key": key }))
            .await
            .0,
        200
    );
    assert_eq!(
        status(&s, "/v1/chat/completions", &key, chat("geo"))
            .await
            .0,
        200
    );

    // Its team's budget, limits, models, tags, residency and block are admins'.
    for patch in [
        json!({ "max_budget": 1000.0 }),
        json!({ "rpm_limit": 100000 }),
        json!({ "models": [] }),
        json!({ "tags": [] }),
        json!({ "blocked": false }),
        json!({ "metadata": { "allowed_regions": ["eu", "us"] } }),
        json!({ "metadata": {} }),
    ] {
        let mut body = patch.clone();
        body["team_id"] = json!("t");
        let (code, reply) = status(&s, "/team/update", &lead, body).await;
        assert_eq!(code, 403, "{patch}: {reply}");
    }
    let (code, _) = status(&s, "/team/unblock", &lead, json!({ "team_id": "t" })).await;
    assert_eq!(code, 403);
    let fine = status(&s, "/team/update", &lead, json!({ "team_id": "t", "team_alias": "ML", "metadata": { "allowed_regions": ["eu"], "owner": "ml" } })).await;
    assert_eq!(fine.0, 200, "{}", fine.1);
    let team = s
        .call("GET", "/team/info?team_id=t", &s.master, None)
        .await
        .1;
    assert_eq!(team["team_info"]["max_budget"], 10.0);
}

#[tokio::test]
async fn owners_may_only_tighten_their_keys() {
    let s = Server::start("").await;
    let mine = user(&s, "dev", "internal_user", json!({})).await;
    s.admin("/tag/new", json!({ "name": "cost-center" })).await;
    s.admin(
        "/team/new",
        json!({ "team_id": "t", "max_budget": 5.0, "rpm_limit": 60, "members_with_roles": [{ "user_id": "dev", "role": "user" }] }),
    )
    .await;
    // Above the team's limits on a new key: refused; within: fine.
    let over = status(
        &s,
        "/key/generate",
        &mine,
        json!({ "team_id": "t", "max_budget": 50.0 }),
    )
    .await;
    assert_eq!(over.0, 403, "{}", over.1);
    let key = s
        .call("POST", "/key/generate", &mine, Some(json!({ "team_id": "t", "max_budget": 2.0, "rpm_limit": 30, "models": ["gpt"], "tags": ["cost-center"], "duration": "1h", "metadata": { "allowed_regions": ["eu-west"] } })))
        .await;
    assert_eq!(key.0, 200, "{}", key.1);
    let key = key.1["key"].as_str().unwrap().to_owned();
    for (patch, why) in [
        (json!({ "max_budget": 3.0 }), "raise a budget"),
        (json!({ "max_budget": null }), "remove a budget"),
        (json!({ "rpm_limit": 60 }), "raise a rate limit"),
        (json!({ "models": [] }), "widen models to all"),
        (json!({ "models": ["gpt", "other"] }), "add a model"),
        (json!({ "tags": [] }), "drop a tag its spend counts against"),
        (json!({ "duration": "30d" }), "push expiry back"),
        (
            json!({ "metadata": { "allowed_regions": ["eu"] } }),
            "widen residency",
        ),
        (json!({ "metadata": {} }), "remove residency"),
        (json!({ "budget_id": "x" }), "attach a budget template"),
        (json!({ "enforcement": "available" }), "change enforcement"),
        (json!({ "allowed_routes": ["/key/list"] }), "change routes"),
        (json!({ "team_id": null }), "leave the team"),
        (json!({ "blocked": true }), "touch the block"),
    ] {
        let mut body = patch.clone();
        body["key"] = json!(key);
        let (code, reply) = status(&s, "/key/update", &mine, body).await;
        assert_eq!(code, 403, "{why}: {reply}");
    }
    for patch in [
        json!({ "max_budget": 1.0, "rpm_limit": 10 }),
        json!({ "models": ["gpt"], "key_alias": "mine" }),
        json!({ "metadata": { "allowed_regions": ["eu-west-1"], "note": "x" } }),
        json!({ "duration": "10m" }),
    ] {
        let mut body = patch.clone();
        body["key"] = json!(key);
        let (code, reply) = status(&s, "/key/update", &mine, body).await;
        assert_eq!(code, 200, "{patch}: {reply}");
    }
    // A per-model budget's period is part of it: $1 a month is not $1 a second.
    let budgeted = s
        .admin(
            "/key/generate",
            json!({ "user_id": "dev", "model_max_budget": { "gpt": { "budget_limit": 1.0, "time_period": "30d" } } }),
        )
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    for period in [json!("1s"), json!(null)] {
        let (code, reply) = status(
            &s,
            "/key/update",
            &mine,
            json!({ "key": budgeted, "model_max_budget": { "gpt": { "budget_limit": 1.0, "time_period": period } } }),
        )
        .await;
        assert_eq!(code, 403, "{period}: {reply}");
    }
    let lower = status(
        &s,
        "/key/update",
        &mine,
        json!({ "key": budgeted, "model_max_budget": { "gpt": { "budget_limit": 0.5, "time_period": "30d" } } }),
    )
    .await;
    assert_eq!(lower.0, 200, "{}", lower.1);
}

#[tokio::test]
async fn a_users_models_a_deleted_user_and_a_blocked_customer_hold() {
    let s = Server::start(GEO).await;
    let narrow = user(&s, "narrow", "internal_user", json!({ "models": ["gpt"] })).await;
    assert_eq!(
        status(&s, "/v1/chat/completions", &narrow, chat("gpt"))
            .await
            .0,
        200
    );
    let (code, body) = status(&s, "/v1/chat/completions", &narrow, chat("other")).await;
    assert_eq!(code, 403, "the user's own models list applies: {body}");
    // A key the user minted cannot escape the user's list either.
    let own = s
        .call(
            "POST",
            "/key/generate",
            &narrow,
            Some(json!({ "models": ["other"] })),
        )
        .await
        .1["key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        status(&s, "/v1/chat/completions", &own, chat("other"))
            .await
            .0,
        403
    );

    let gone = user(&s, "gone", "internal_user", json!({})).await;
    s.admin("/user/delete", json!({ "user_ids": ["gone"] }))
        .await;
    let (code, body) = status(&s, "/v1/chat/completions", &gone, chat("gpt")).await;
    assert_eq!(code, 401, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no longer exists")
    );
    assert_eq!(status(&s, "/key/generate", &gone, json!({})).await.0, 401);

    s.admin("/customer/new", json!({ "user_id": "acme" })).await;
    s.admin("/customer/block", json!({ "user_ids": ["acme"] }))
        .await;
    let mut for_acme = chat("gpt");
    for_acme["user"] = json!("acme");
    let (code, body) = status(&s, "/v1/chat/completions", &narrow, for_acme.clone()).await;
    assert_eq!(code, 403, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("acme"));
    s.admin("/customer/unblock", json!({ "user_ids": ["acme"] }))
        .await;
    assert_eq!(
        status(&s, "/v1/chat/completions", &narrow, for_acme)
            .await
            .0,
        200
    );
    let mut long = chat("gpt");
    long["user"] = json!("u".repeat(300));
    assert_eq!(
        status(&s, "/v1/chat/completions", &narrow, long).await.0,
        400
    );
}

#[tokio::test]
async fn a_keys_metadata_cannot_widen_its_teams_residency() {
    let s = Server::start(GEO).await;
    s.admin(
        "/team/new",
        json!({ "team_id": "eu-team", "metadata": { "allowed_regions": ["eu"] } }),
    )
    .await;
    let in_team = |meta: Value| json!({ "team_id": "eu-team", "metadata": meta });
    // The key names the US only: nothing lies in both policies.
    let us = s
        .admin(
            "/key/generate",
            in_team(json!({ "allowed_regions": ["us"] })),
        )
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let (code, body) = status(&s, "/v1/chat/completions", &us, chat("geo")).await;
    assert_eq!(code, 400, "{body}");
    // The key names both: the team's EU still holds.
    let both = s
        .admin(
            "/key/generate",
            in_team(json!({ "allowed_regions": ["us", "eu"] })),
        )
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    for _ in 0..8 {
        let reply = s
            .http
            .post(format!("{}/v1/chat/completions", s.base))
            .bearer_auth(&both)
            .header("content-type", "application/json")
            .body(chat("geo").to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 200);
        let id = reply.headers()["x-meridian-model-id"]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(id, "geo-eu");
    }
    let _ = token(&s, &both).await;
}

#[tokio::test]
async fn numbers_from_requests_never_overflow_or_go_negative() {
    let s = Server::start("").await;
    for body in [
        json!({ "max_budget": -1.0 }),
        json!({ "max_budget": "1e400" }),
        json!({ "model_max_budget": { "gpt": { "budget_limit": -5.0 } } }),
        json!({ "rpm_limit": -1 }),
        json!({ "duration": "99999999999999999999d" }),
        json!({ "duration": "18446744073709551615s" }),
        json!({ "metadata": { "blob": "x".repeat(20_000) } }),
        json!({ "key_alias": "a".repeat(2_000) }),
        json!({ "tags": ["no-such-tag"] }),
    ] {
        let (code, reply) = status(&s, "/key/generate", &s.master, body.clone()).await;
        assert!(code == 400 || code == 200, "{body}: {code} {reply}");
        if body.get("duration").is_none() || body["duration"] == "99999999999999999999d" {
            assert_eq!(code, 400, "{body}: {reply}");
        }
    }
    for page in ["18446744073709551615", "0", "-1", "x"] {
        let (code, _) = s
            .call(
                "GET",
                &format!("/key/list?page={page}&size=100"),
                &s.master,
                None,
            )
            .await;
        assert!(code == 200 || code == 400, "page {page}: {code}");
    }
    let (code, _) = s
        .call(
            "GET",
            "/user/list?page=18446744073709551615&page_size=100",
            &s.master,
            None,
        )
        .await;
    assert_eq!(code, 200);
}
