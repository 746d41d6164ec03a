use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::config::Config;
use crate::router::settings::LatencyArgs;

fn base() -> Deployment {
    Config::embedded(&BTreeMap::<String, String>::new()).deployments[0].clone()
}

/// A deployment `id` of group `g`, changed by `f`.
fn dep(id: &str, g: &str, f: impl FnOnce(&mut Deployment)) -> Deployment {
    let mut d = base();
    d.id = id.into();
    d.model_group = g.into();
    f(&mut d);
    d
}

fn router(deployments: Vec<Deployment>, f: impl FnOnce(&mut RouterSettings)) -> ModelRouter {
    let mut s = RouterSettings::default();
    f(&mut s);
    ModelRouter::new(deployments, s, "eu-west")
}

fn chosen(c: Choice) -> Member {
    match c {
        Choice::Chosen(m) => m,
        other => panic!("expected a deployment, got {other:?}"),
    }
}

/// How often each deployment id is chosen in `n` picks.
fn shares(r: &ModelRouter, group: &str, want: &Want<'_>, n: u32) -> BTreeMap<String, u32> {
    let rng = SeededRng::from_seed(7);
    let now = Instant::now();
    let mut out = BTreeMap::new();
    for _ in 0..n {
        let m = chosen(r.choose(group, want, now, &rng));
        *out.entry(m.deployment.id.clone()).or_default() += 1;
    }
    out
}

#[test]
fn picks_only_from_the_group_and_replays_by_seed() {
    let r = router(
        vec![
            dep("a", "g", |_| {}),
            dep("b", "g", |_| {}),
            dep("x", "other", |_| {}),
        ],
        |_| {},
    );
    let draw = |seed| {
        let rng = SeededRng::from_seed(seed);
        let now = Instant::now();
        (0..32)
            .map(|_| {
                chosen(r.choose("g", &Want::default(), now, &rng))
                    .deployment
                    .id
                    .clone()
            })
            .collect::<Vec<_>>()
    };
    let a = draw(1);
    assert_eq!(a, draw(1));
    assert!(a.iter().any(|id| id == "a") && a.iter().any(|id| id == "b"));
    assert!(matches!(
        r.choose(
            "nope",
            &Want::default(),
            Instant::now(),
            &SeededRng::from_seed(1)
        ),
        Choice::Unknown
    ));
    assert_eq!(r.group_names(), vec!["g", "other"]);

    // Run-time deployments join their group, or make a new one.
    r.set_runtime(7, vec![dep("c", "added", |_| {})]);
    assert_eq!(r.runtime_generation(), 7);
    let m = chosen(r.choose(
        "added",
        &Want::default(),
        Instant::now(),
        &SeededRng::from_seed(1),
    ));
    assert_eq!(m.deployment.id, "c");
    assert_eq!(r.group_names(), vec!["added", "g", "other"]);
}

#[test]
fn simple_shuffle_weighs_by_weight_then_rpm() {
    let r = router(
        vec![
            dep("heavy", "g", |d| d.weight = Some(9.0)),
            dep("light", "g", |d| d.weight = Some(1.0)),
        ],
        |_| {},
    );
    let s = shares(&r, "g", &Want::default(), 10_000);
    assert!((8_800..=9_200).contains(&s["heavy"]), "{s:?}");

    let r = router(
        vec![
            dep("big", "g", |d| d.rpm = Some(300)),
            dep("small", "g", |d| d.rpm = Some(100)),
        ],
        |_| {},
    );
    let s = shares(&r, "g", &Want::default(), 10_000);
    assert!((7_200..=7_800).contains(&s["big"]), "{s:?}");

    // Without weights: uniform.
    let r = router(vec![dep("a", "g", |_| {}), dep("b", "g", |_| {})], |_| {});
    let s = shares(&r, "g", &Want::default(), 10_000);
    assert!((4_700..=5_300).contains(&s["a"]), "{s:?}");
}

#[tokio::test(start_paused = true)]
async fn lower_order_first_and_the_next_tier_only_when_it_cools_down() {
    let r = router(
        vec![
            dep("primary", "g", |d| d.order = Some(1)),
            dep("secondary", "g", |d| d.order = Some(2)),
            dep("unordered", "g", |_| {}),
        ],
        |_| {},
    );
    let s = shares(&r, "g", &Want::default(), 100);
    assert_eq!(s.get("primary"), Some(&100));
    let primary = r.by_id("primary").unwrap();
    let now = Instant::now();
    assert!(r.failed(&primary, ErrorClass::RateLimit, now, "429"));
    let s = shares(&r, "g", &Want::default(), 100);
    assert_eq!(s.get("secondary"), Some(&100));
    // Cooldown over (5 s default): back to the primary.
    tokio::time::advance(Duration::from_secs(6)).await;
    let s = shares(&r, "g", &Want::default(), 10);
    assert_eq!(s.get("primary"), Some(&10));
}

#[test]
fn this_nodes_region_is_preferred_within_a_tier() {
    let r = router(
        vec![
            dep("us", "g", |d| d.region_name = Some("us-east-1".into())),
            dep("eu", "g", |d| d.region_name = Some("eu-west-1".into())),
        ],
        |_| {},
    );
    assert_eq!(shares(&r, "g", &Want::default(), 50).get("eu"), Some(&50));
    // Order beats locality: active-passive across regions.
    let r = router(
        vec![
            dep("us", "g", |d| {
                d.region_name = Some("us-east-1".into());
                d.order = Some(1);
            }),
            dep("eu", "g", |d| {
                d.region_name = Some("eu-west-1".into());
                d.order = Some(2);
            }),
        ],
        |_| {},
    );
    assert_eq!(shares(&r, "g", &Want::default(), 50).get("us"), Some(&50));
}

#[tokio::test(start_paused = true)]
async fn residency_is_never_relaxed_not_even_when_its_deployments_cool_down() {
    let r = router(
        vec![
            dep("us", "g", |d| d.region_name = Some("us-east-1".into())),
            dep("eu", "g", |d| d.region_name = Some("eu-central-1".into())),
            dep("nowhere", "g", |_| {}),
        ],
        |_| {},
    );
    let eu = ["eu".to_owned()];
    let want = Want {
        residency: Some(&eu),
        ..Want::default()
    };
    assert_eq!(shares(&r, "g", &want, 50).get("eu"), Some(&50));
    let now = Instant::now();
    r.failed(&r.by_id("eu").unwrap(), ErrorClass::RateLimit, now, "429");
    match r.choose("g", &want, now, &SeededRng::from_seed(1)) {
        Choice::Unavailable(u) => assert!(u.retry_after.is_some(), "{u:?}"),
        other => panic!("{other:?}"),
    }
    let apac = ["ap".to_owned()];
    let want = Want {
        residency: Some(&apac),
        ..Want::default()
    };
    match r.choose("g", &want, now, &SeededRng::from_seed(1)) {
        Choice::Unavailable(u) => assert_eq!(u.retry_after, None),
        other => panic!("{other:?}"),
    }
    // A fallback naming a deployment id is held to the policy too.
    assert!(matches!(
        r.choose_target(
            "us",
            &Want {
                residency: Some(&eu),
                ..Want::default()
            },
            now,
            &SeededRng::from_seed(1)
        ),
        Choice::Unavailable(_)
    ));
    assert!(region_within("eu-west-1", "eu") && !region_within("europe-west4", "eu"));
    assert!(region_within("EU-West-1", "eu-west-1") && !region_within("eu", "eu-west-1"));
    assert!(!region_within("eu-", "eu-west") && region_within("eu", "eu"));
}

#[test]
fn tag_filtering_routes_by_tags_and_untagged_requests_to_default() {
    let r = router(
        vec![
            dep("free", "g", |d| d.tags = vec!["free".into()]),
            dep("paid", "g", |d| d.tags = vec!["paid".into(), "fast".into()]),
            dep("default", "g", |d| d.tags = vec!["default".into()]),
        ],
        |s| s.enable_tag_filtering = true,
    );
    let tags = |t: &'static [&'static str]| t.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let paid = tags(&["paid"]);
    let want = Want {
        tags: &paid,
        ..Want::default()
    };
    assert_eq!(shares(&r, "g", &want, 20).get("paid"), Some(&20));
    assert_eq!(
        shares(&r, "g", &Want::default(), 20).get("default"),
        Some(&20)
    );
    let unknown = tags(&["gold"]);
    let want = Want {
        tags: &unknown,
        ..Want::default()
    };
    assert_eq!(shares(&r, "g", &want, 20).get("default"), Some(&20));

    let r = router(
        vec![
            dep("free", "g", |d| d.tags = vec!["free".into()]),
            dep("paid", "g", |d| d.tags = vec!["paid".into(), "fast".into()]),
        ],
        |s| {
            s.enable_tag_filtering = true;
            s.tag_filtering_match_any = false;
        },
    );
    let both = tags(&["paid", "fast"]);
    assert_eq!(
        shares(
            &r,
            "g",
            &Want {
                tags: &both,
                ..Want::default()
            },
            20
        )
        .get("paid"),
        Some(&20)
    );
    let mixed = tags(&["free", "fast"]);
    assert!(matches!(
        r.choose(
            "g",
            &Want {
                tags: &mixed,
                ..Want::default()
            },
            Instant::now(),
            &SeededRng::from_seed(1)
        ),
        Choice::Unavailable(Unavailable {
            retry_after: None,
            ..
        })
    ));
}

#[tokio::test(start_paused = true)]
async fn every_deployment_cooling_down_says_when_to_come_back() {
    let r = router(
        vec![
            dep("a", "g", |d| {
                d.cooldown_time = Some(Duration::from_secs(30))
            }),
            dep("b", "g", |_| {}),
        ],
        |_| {},
    );
    let now = Instant::now();
    // A 401 and a 404 each cool their deployment down at once.
    let (a, b) = (r.by_id("a").unwrap(), r.by_id("b").unwrap());
    assert!(r.failed(&a, ErrorClass::Authentication, now, "401"));
    assert!(r.failed(&b, ErrorClass::NotFound, now, "404"));
    match r.choose("g", &Want::default(), now, &SeededRng::from_seed(1)) {
        Choice::Unavailable(u) => assert_eq!(u.retry_after, Some(Duration::from_secs(5))),
        other => panic!("{other:?}"),
    }
    // Bad requests are the caller's fault: they never cool a deployment down.
    let r = router(vec![dep("a", "g", |_| {})], |_| {});
    let a = r.by_id("a").unwrap();
    for _ in 0..10 {
        assert!(!r.failed(&a, ErrorClass::BadRequest, now, "400"));
    }
    // Unless the policy counts them; disable_cooldowns wins over all.
    let r = router(vec![dep("a", "g", |_| {})], |s| {
        s.allowed_fails_policy.set(ErrorClass::BadRequest, 1)
    });
    let a = r.by_id("a").unwrap();
    assert!(!r.failed(&a, ErrorClass::BadRequest, now, "400"));
    assert!(r.failed(&a, ErrorClass::BadRequest, now, "400"));
    let r = router(vec![dep("a", "g", |_| {})], |s| s.disable_cooldowns = true);
    assert!(!r.failed(&r.by_id("a").unwrap(), ErrorClass::RateLimit, now, "429"));
}

#[tokio::test(start_paused = true)]
async fn least_busy_latency_usage_and_cost_strategies() {
    let group = || {
        vec![
            dep("a", "g", |_| {}),
            dep("b", "g", |_| {}),
            dep("c", "g", |_| {}),
        ]
    };
    let now = Instant::now();

    let r = router(group(), |s| s.strategy = Strategy::LeastBusy);
    let (a, b) = (r.by_id("a").unwrap(), r.by_id("b").unwrap());
    let _busy = (a.live.start(0, 0), b.live.start(0, 0), b.live.start(0, 0));
    assert_eq!(shares(&r, "g", &Want::default(), 20).get("c"), Some(&20));

    let r = router(group(), |s| {
        s.strategy = Strategy::LatencyBased;
        s.latency = LatencyArgs {
            ttl: Duration::from_secs(60),
            buffer: 0.5,
        };
    });
    let ms = Duration::from_millis;
    r.by_id("a").unwrap().live.succeeded(now, ms(100));
    r.by_id("b").unwrap().live.succeeded(now, ms(140));
    // c has no sample yet: it is tried first.
    assert_eq!(shares(&r, "g", &Want::default(), 5).get("c"), Some(&5));
    r.by_id("c").unwrap().live.succeeded(now, ms(400));
    // a and b are within 50 % of the fastest and share; c is not.
    let s = shares(&r, "g", &Want::default(), 1000);
    assert!(
        !s.contains_key("c") && s["a"] > 400 && s["b"] > 400,
        "{s:?}"
    );

    let r = router(
        vec![
            dep("a", "g", |d| d.rpm = Some(2)),
            dep("b", "g", |d| d.tpm = Some(1000)),
        ],
        |s| s.strategy = Strategy::UsageBased,
    );
    let (a, b) = (r.by_id("a").unwrap(), r.by_id("b").unwrap());
    drop((a.live.start(0, 10), b.live.start(0, 500)));
    assert_eq!(shares(&r, "g", &Want::default(), 1).get("a"), Some(&1));
    drop(a.live.start(0, 10));
    // a is at its rpm: b, though it has used more tokens.
    let want = Want {
        tokens: 400,
        ..Want::default()
    };
    assert_eq!(shares(&r, "g", &want, 3).get("b"), Some(&3));
    let want = Want {
        tokens: 600,
        ..Want::default()
    };
    assert!(matches!(
        r.choose("g", &want, now, &SeededRng::from_seed(1)),
        Choice::Unavailable(_)
    ));

    let price = |i, o| crate::pricing::Price::from_usd_per_token(i, o);
    let r = router(
        vec![
            dep("cheap", "g", |d| d.price = price(1e-6, 2e-6)),
            dep("dear", "g", |d| d.price = price(5e-6, 15e-6)),
            dep("unpriced", "g", |d| d.price = None),
        ],
        |s| s.strategy = Strategy::CostBased,
    );
    assert_eq!(
        shares(&r, "g", &Want::default(), 20).get("cheap"),
        Some(&20)
    );
}
