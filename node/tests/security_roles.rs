//! Every admin route × every role, from the role table of
//! `docs/security.md`, against a running `meridian` process: for each cell,
//! the caller's own target, a target of a team it administers, and another
//! team's target, each made fresh. A cell that allows a target must not be
//! answered 401/403; a cell that does not must be answered 403. The table
//! must also name every admin route the code serves.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod process_support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use process_support::Server;
use serde_json::{Value, json};

const ROLES: [&str; 7] = [
    "master",
    "proxy_admin",
    "proxy_admin_viewer",
    "team_admin",
    "internal_user",
    "internal_user_viewer",
    "no_user",
];

/// The role table: route → role → cell.
fn table() -> BTreeMap<String, BTreeMap<String, String>> {
    let doc = include_str!("../../docs/security.md");
    let section = doc
        .split("## Role table")
        .nth(1)
        .expect("docs/security.md has a `## Role table` section");
    let mut rows = BTreeMap::new();
    let mut header: Vec<String> = Vec::new();
    for line in section.lines().take_while(|l| !l.starts_with("## ")) {
        let cells: Vec<String> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(|c| c.trim().trim_matches('`').to_owned())
            .collect();
        if !line.trim_start().starts_with('|') || cells.iter().all(|c| c.starts_with("---")) {
            continue;
        }
        if cells[0] == "route" {
            header = cells;
            continue;
        }
        let by_role = header[1..]
            .iter()
            .cloned()
            .zip(cells[1..].iter().cloned())
            .collect();
        rows.insert(cells[0].clone(), by_role);
    }
    assert_eq!(
        header[1..].to_vec(),
        ROLES.map(str::to_owned).to_vec(),
        "the table's columns are the roles"
    );
    rows
}

/// The admin routes the code serves, read from where they are declared.
fn served_routes() -> Vec<String> {
    let code = include_str!("../src/api/admin/mod.rs");
    let mut out = Vec::new();
    for line in code.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix(".route(\"") else {
            continue;
        };
        let (path, handler) = rest.split_once("\", ").unwrap();
        let method = if handler.starts_with("get(") {
            "GET"
        } else {
            "POST"
        };
        out.push(format!("{method} {path}"));
    }
    out.push("GET /health".into());
    out
}

#[test]
fn the_table_names_every_admin_route() {
    let table = table();
    let missing: Vec<String> = served_routes()
        .into_iter()
        // Aliases answer exactly as the route they alias.
        .filter(|r| !matches!(r.as_str(), "GET /v1/model/info" | "GET /model/info"))
        .filter(|r| !r.starts_with("POST /key/{key}/regenerate"))
        .filter(|r| !table.contains_key(r))
        .collect();
    assert!(
        missing.is_empty(),
        "routes missing from docs/security.md: {missing:?}"
    );
    for (route, cells) in &table {
        for (role, cell) in cells {
            assert!(
                ["all", "team", "own", "self", "—"].contains(&cell.as_str()),
                "{route} / {role}: unknown cell `{cell}`"
            );
        }
    }
}

/// Which of a role's targets a probe aims at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    /// The caller's own: its user's key, its user, a team it belongs to.
    Own,
    /// A team the caller administers (for other roles: a team it is in).
    Team,
    /// Another team's, another user's.
    Other,
}

/// Whether `cell` allows `target` for `role`. For team routes, a team the
/// caller administers is also a team it is a member of (`own`).
fn allowed(cell: &str, target: Target, role: &str, route: &str) -> bool {
    let team_route = route.contains("/team/");
    match cell {
        "all" => true,
        "team" => target != Target::Other,
        "own" if team_route => {
            target == Target::Own || (target == Target::Team && role == "team_admin")
        }
        "own" | "self" => target == Target::Own,
        _ => false,
    }
}

/// The fixed cast: a user (and key) per role, two teams.
struct Cast {
    keys: BTreeMap<&'static str, String>,
    /// The token of each role's key.
    tokens: BTreeMap<&'static str, String>,
    /// A key of another team's user, no role's own.
    stranger_token: String,
}

fn user_of(role: &str) -> Option<&'static str> {
    match role {
        "proxy_admin" => Some("u-admin"),
        "proxy_admin_viewer" => Some("u-admin-viewer"),
        "team_admin" => Some("u-lead"),
        "internal_user" => Some("u-dev"),
        "internal_user_viewer" => Some("u-viewer"),
        _ => None,
    }
}

static FRESH: AtomicU64 = AtomicU64::new(0);

fn fresh(prefix: &str) -> String {
    format!("{prefix}-{}", FRESH.fetch_add(1, Ordering::Relaxed))
}

async fn cast(s: &Server) -> Cast {
    let roles = [
        ("u-admin", "proxy_admin"),
        ("u-admin-viewer", "proxy_admin_viewer"),
        ("u-lead", "internal_user"),
        ("u-dev", "internal_user"),
        ("u-viewer", "internal_user_viewer"),
        ("u-member", "internal_user"),
        ("u-stranger", "internal_user"),
    ];
    for (user, role) in roles {
        s.admin(
            "/user/new",
            json!({ "user_id": user, "user_role": role, "auto_create_key": false }),
        )
        .await;
    }
    s.admin(
        "/team/new",
        json!({ "team_id": "t-mine", "members_with_roles": [
            { "user_id": "u-lead", "role": "admin" },
            { "user_id": "u-dev", "role": "user" },
            { "user_id": "u-viewer", "role": "user" },
            { "user_id": "u-member", "role": "user" },
        ] }),
    )
    .await;
    s.admin(
        "/team/new",
        json!({ "team_id": "t-other", "members_with_roles": [{ "user_id": "u-stranger", "role": "admin" }] }),
    )
    .await;
    let mut keys = BTreeMap::new();
    let mut tokens = BTreeMap::new();
    for role in ROLES {
        let key = match (role, user_of(role)) {
            ("master", _) => s.master.clone(),
            (_, Some(user)) => {
                let team = matches!(
                    role,
                    "team_admin" | "internal_user" | "internal_user_viewer"
                )
                .then_some("t-mine");
                let created = s
                    .admin("/key/generate", json!({ "user_id": user, "team_id": team }))
                    .await;
                created["key"].as_str().unwrap().to_owned()
            }
            _ => s.admin("/key/generate", json!({})).await["key"]
                .as_str()
                .unwrap()
                .to_owned(),
        };
        if role != "master" {
            let info = s.call("GET", "/key/info", &key, None).await;
            tokens.insert(role, info.1["key"].as_str().unwrap().to_owned());
        }
        keys.insert(role, key);
    }
    let stranger = s
        .admin(
            "/key/generate",
            json!({ "user_id": "u-stranger", "team_id": "t-other" }),
        )
        .await;
    let stranger_token = stranger["token"].as_str().unwrap().to_owned();
    Cast {
        keys,
        tokens,
        stranger_token,
    }
}

/// A fresh key for `target` of `role`: (key, token).
async fn key_target(
    s: &Server,
    c: &Cast,
    role: &str,
    target: Target,
    read: bool,
) -> (String, String) {
    let body = match (target, user_of(role)) {
        // A key of no user owns only itself (and is not spent on writes).
        (Target::Own, None) if role == "no_user" && read => {
            return (c.keys["no_user"].clone(), c.tokens["no_user"].clone());
        }
        (Target::Own, None) => json!({}),
        (Target::Own, Some(user)) => {
            let team = matches!(
                role,
                "team_admin" | "internal_user" | "internal_user_viewer"
            )
            .then_some("t-mine");
            json!({ "user_id": user, "team_id": team })
        }
        (Target::Team, _) => {
            json!({ "user_id": "u-member", "team_id": "t-mine", "key_type": "llm_api" })
        }
        (Target::Other, _) => json!({ "user_id": "u-stranger", "team_id": "t-other" }),
    };
    let key = s.admin("/key/generate", body).await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let token = s
        .call("GET", &format!("/key/info?key={key}"), &s.master, None)
        .await
        .1["key"]
        .as_str()
        .unwrap()
        .to_owned();
    (key, token)
}

/// A fresh team for `target` of `role`: Own, the caller in it (as admin if
/// it is the team admin); Team, the team admin as its admin (no one else
/// administers a team); Other, not the caller. `u-member` always.
async fn team_target(s: &Server, role: &str, target: Target) -> String {
    let id = fresh("t");
    let mut members = vec![json!({ "user_id": "u-member", "role": "user" })];
    match (user_of(role), target) {
        (Some(user), Target::Own) => {
            let as_role = if role == "team_admin" {
                "admin"
            } else {
                "user"
            };
            members.push(json!({ "user_id": user, "role": as_role }));
        }
        // A team it administers: only a team admin has one.
        (Some(user), Target::Team) if role == "team_admin" => {
            members.push(json!({ "user_id": user, "role": "admin" }));
        }
        _ => {}
    }
    s.admin(
        "/team/new",
        json!({ "team_id": id, "members_with_roles": members }),
    )
    .await;
    id
}

/// One probe: the request for `route` aimed at `target`, and whether the
/// answer is judged by "is the target listed" instead of by status.
enum Probe {
    Call(&'static str, String, Option<Value>),
    /// A listing: GET path, and the id that must (or must not) be listed.
    Lists(String, String),
}

async fn probe(s: &Server, c: &Cast, route: &str, role: &str, target: Target) -> Option<Probe> {
    let (method, path) = route.split_once(' ').unwrap();
    let owned_kind = route.contains("/team/") || route.contains("/user/");
    if owned_kind && target == Target::Own && role == "no_user" {
        // A key of no user belongs to no team and is no user.
        return None;
    }
    let post = |body: Value| Probe::Call("POST", path.to_owned(), Some(body));
    let get = |p: String| Probe::Call("GET", p, None);
    Some(match route {
        "POST /key/generate" => post(match target {
            Target::Own => json!({}),
            Target::Team => json!({ "user_id": "u-member", "team_id": "t-mine" }),
            Target::Other => json!({ "user_id": "u-stranger", "team_id": "t-other" }),
        }),
        "POST /key/update"
        | "POST /key/regenerate"
        | "POST /key/block"
        | "POST /key/unblock"
        | "GET /key/info"
        | "POST /key/delete"
        | "GET /key/list" => {
            let (_, token) = key_target(s, c, role, target, method == "GET").await;
            if route == "POST /key/unblock" {
                // Blocked by its team's admin when it is in that team, else
                // by an admin (whose block only an admin lifts).
                let blocker = if target == Target::Other {
                    &s.master
                } else {
                    &c.keys["team_admin"]
                };
                let (status, body) = s
                    .call("POST", "/key/block", blocker, Some(json!({ "key": token })))
                    .await;
                if status != 200 {
                    // The team admin cannot block a key of its own user's
                    // other team: an admin blocks it.
                    let _ = body;
                    s.admin("/key/block", json!({ "key": token })).await;
                }
            }
            match route {
                "POST /key/update" => post(json!({ "key": token, "key_alias": fresh("alias") })),
                "POST /key/delete" => post(json!({ "keys": [token] })),
                "GET /key/info" => get(format!("/key/info?key={token}")),
                "GET /key/list" => Probe::Lists("/key/list?size=100".into(), token),
                _ => post(json!({ "key": token })),
            }
        }
        "GET /team/list" => {
            let team = team_target(s, role, target).await;
            Probe::Lists("/team/list".into(), team)
        }
        r if r.starts_with("POST /team/") || r == "GET /team/info" => {
            if r == "POST /team/new" {
                return (target == Target::Other).then(|| post(json!({ "team_id": fresh("t") })));
            }
            let team = team_target(s, role, target).await;
            match r {
                "GET /team/info" => get(format!("/team/info?team_id={team}")),
                "POST /team/update" => {
                    post(json!({ "team_id": team, "team_alias": fresh("alias") }))
                }
                "POST /team/delete" => post(json!({ "team_ids": [team] })),
                "POST /team/member_add" => {
                    let user = fresh("u");
                    s.admin(
                        "/user/new",
                        json!({ "user_id": user, "auto_create_key": false }),
                    )
                    .await;
                    post(json!({ "team_id": team, "member": { "user_id": user, "role": "user" } }))
                }
                "POST /team/member_delete" => {
                    post(json!({ "team_id": team, "user_id": "u-member" }))
                }
                _ => post(json!({ "team_id": team })),
            }
        }
        "GET /user/info" => get(format!(
            "/user/info?user_id={}",
            match target {
                Target::Own => user_of(role).unwrap_or("u-stranger"),
                Target::Team => "u-member",
                Target::Other => "u-stranger",
            }
        )),
        // Routes with no owner: one target, another's.
        _ if target != Target::Other => return None,
        "POST /user/new" => post(json!({ "user_id": fresh("u"), "auto_create_key": false })),
        "POST /user/update" | "POST /user/delete" => {
            let user = fresh("u");
            s.admin(
                "/user/new",
                json!({ "user_id": user, "auto_create_key": false }),
            )
            .await;
            if route.ends_with("update") {
                post(json!({ "user_id": user, "user_alias": "x" }))
            } else {
                post(json!({ "user_ids": [user] }))
            }
        }
        "GET /user/list" => get("/user/list".into()),
        r if r.starts_with("POST /customer/") || r == "GET /customer/info" => {
            let id = fresh("c");
            s.admin("/customer/new", json!({ "user_id": id })).await;
            match r {
                "POST /customer/new" => post(json!({ "user_id": fresh("c") })),
                "POST /customer/update" => post(json!({ "user_id": id, "alias": "x" })),
                "GET /customer/info" => get(format!("/customer/info?end_user_id={id}")),
                _ => post(json!({ "user_ids": [id] })),
            }
        }
        r if r.contains("/tag/") => {
            let name = fresh("tag");
            s.admin("/tag/new", json!({ "name": name })).await;
            match r {
                "POST /tag/new" => post(json!({ "name": fresh("tag") })),
                "POST /tag/update" => post(json!({ "name": name, "description": "x" })),
                "POST /tag/delete" => post(json!({ "name": name })),
                "POST /tag/info" => post(json!({ "names": [name] })),
                _ => get("/tag/list".into()),
            }
        }
        r if r.contains("/budget/") => {
            let id = fresh("b");
            s.admin("/budget/new", json!({ "budget_id": id, "max_budget": 1.0 }))
                .await;
            match r {
                "POST /budget/new" => post(json!({ "budget_id": fresh("b") })),
                "POST /budget/update" => post(json!({ "budget_id": id, "max_budget": 2.0 })),
                "POST /budget/delete" => post(json!({ "id": id })),
                _ => post(json!({ "budgets": [id] })),
            }
        }
        r if r.starts_with("POST /model/") => {
            let id = fresh("m");
            s.admin(
                "/model/new",
                json!({ "model_name": "probe", "litellm_params": { "model": "mock/chat" }, "model_info": { "id": id } }),
            )
            .await;
            match r {
                "POST /model/new" => post(
                    json!({ "model_name": "probe", "litellm_params": { "model": "mock/chat" } }),
                ),
                "POST /model/update" => {
                    post(json!({ "model_id": id, "litellm_params": { "rpm": 5 } }))
                }
                _ => post(json!({ "id": id })),
            }
        }
        "GET /spend/logs" => get(format!("/spend/logs?api_key={}", c.stranger_token)),
        // A valid caller gets past authorization to the 400 of raft_id 0:
        // nothing is changed.
        "POST /cluster/add_node" => {
            post(json!({ "raft_id": 0, "cluster_addr": "x:1", "api_url": "http://x" }))
        }
        "POST /cluster/remove_node" => post(json!({ "raft_id": 0 })),
        "GET /cluster/status" | "GET /health" => get(path.to_owned()),
        other => panic!("no probe for {other} ({method})"),
    })
}

#[tokio::test]
async fn every_cell_of_the_role_table_holds() {
    let s = Server::start("").await;
    let c = cast(&s).await;
    let mut wrong = Vec::new();
    let mut tried = 0;
    for (route, cells) in table() {
        for role in ROLES {
            let cell = &cells[role];
            for target in [Target::Own, Target::Team, Target::Other] {
                let Some(p) = probe(&s, &c, &route, role, target).await else {
                    continue;
                };
                tried += 1;
                let expect = allowed(cell, target, role, &route);
                let key = &c.keys[role];
                let (ok, said) = match p {
                    Probe::Call(method, path, body) => {
                        let (status, body) = s.call(method, &path, key, body).await;
                        let ok = if expect {
                            !matches!(status, 401 | 403)
                        } else {
                            status == 403
                        };
                        (ok, format!("{status} {body}"))
                    }
                    Probe::Lists(path, id) => {
                        let (status, body) = s.call("GET", &path, key, None).await;
                        let listed =
                            status == 200 && body.to_string().contains(&format!("\"{id}\""));
                        let ok = if cell == "—" {
                            status == 403
                        } else {
                            listed == expect
                        };
                        (ok, format!("{status}, listed: {listed}"))
                    }
                };
                if !ok {
                    wrong.push(format!(
                        "{route} as {role} on {target:?} (cell `{cell}`, expected {}): {}",
                        if expect { "allowed" } else { "refused" },
                        said.chars().take(300).collect::<String>()
                    ));
                }
            }
        }
    }
    assert!(tried > 250, "only {tried} probes ran");
    assert!(
        wrong.is_empty(),
        "{} of {tried} probes disagree with docs/security.md:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}
