//! Protection against slow and greedy clients, on real servers: requests in flight per
//! token, and header, idle and body timeouts.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{create_tenant, eventually, expect_problem, Service, TestEnv};

#[tokio::test]
async fn one_principal_cannot_hold_more_requests_in_flight_than_allowed() {
    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    let projector = env.spawn_projector(env.projector_config());
    let mut config = env.query_config();
    config.http.concurrent_requests_per_principal = 2;
    let query = env.spawn_query_api(config).await;
    let (tenant, version) = create_tenant(&env, &api, "greedy").await;
    let greedy = env.admin_of(&tenant);
    let read = |token: String, min_version: u64| {
        let request = env
            .http
            .get(query.url(&format!("/v1/tenants/{tenant}?min_version={min_version}")))
            .bearer_auth(token);
        async move { request.send().await.expect("sent") }
    };
    eventually(Duration::from_secs(20), "the tenant projected", || async {
        (read(greedy.clone(), version).await.status() == 200).then_some(())
    })
    .await;
    // Two reads that wait for a version that never comes hold both of the token's slots.
    let (a, b) = (
        tokio::spawn(read(greedy.clone(), version + 50)),
        tokio::spawn(read(greedy.clone(), version + 50)),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A third is refused at once; another token is served meanwhile.
    expect_problem(
        read(greedy.clone(), version).await,
        429,
        "too_many_concurrent_requests",
    )
    .await;
    assert_eq!(read(env.super_admin(), version).await.status(), 200);
    for held in [a, b] {
        assert_eq!(held.await.expect("joined").status(), 200);
    }
    // The slots were given back.
    assert_eq!(read(greedy, version).await.status(), 200);
    projector.abort();
    query.stop().await;
    api.stop().await;
}

/// A raw connection to `service`.
async fn connect(service: &Service) -> tokio::net::TcpStream {
    let url = service.url("");
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects")
}

/// Everything the server sends until it closes the connection (or 3 s pass: `None`).
async fn until_closed(stream: &mut tokio::net::TcpStream) -> Option<String> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut got)).await;
    match read {
        Ok(_) => Some(String::from_utf8_lossy(&got).into_owned()),
        Err(_) => None,
    }
}

#[tokio::test]
async fn a_client_that_trickles_its_headers_or_body_or_sits_idle_is_cut_off() {
    let env = TestEnv::new().await;
    let mut config = env.command_config();
    config.http.http_header_timeout_ms = 400;
    config.http.http_body_timeout_ms = 400;
    config.http.http_body_deadline_ms = 1500;
    let api = env.spawn_command_api(config).await;

    // A head that never ends: the connection is closed.
    let mut slow = connect(&api).await;
    slow.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("written");
    assert!(
        until_closed(&mut slow).await.is_some(),
        "the slow head was cut off"
    );

    // A kept-alive connection that sits idle after its answer is closed too.
    let mut idle = connect(&api).await;
    idle.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("written");
    let answered = until_closed(&mut idle).await.expect("closed after idling");
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");

    // A body that stops arriving is answered 408 and appends nothing, with or without an
    // Idempotency-Key.
    for key in ["", "Idempotency-Key: trickle-1\r\n"] {
        let before = env.event_count().await;
        let mut stalled = connect(&api).await;
        let head = format!(
            "POST /v1/tenants HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n{key}\r\n{{\"name\":",
            env.super_admin()
        );
        stalled.write_all(head.as_bytes()).await.expect("written");
        let answer = until_closed(&mut stalled).await.unwrap_or_default();
        assert!(answer.starts_with("HTTP/1.1 408"), "{key}: {answer}");
        assert!(answer.contains("request_timeout"), "{answer}");
        assert_eq!(env.event_count().await, before);
    }
    // A body trickled a byte at a time, never pausing long, is cut off at its deadline.
    let mut trickle = connect(&api).await;
    let head = format!(
        "POST /v1/tenants HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n",
        env.super_admin()
    );
    trickle.write_all(head.as_bytes()).await.expect("written");
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    while started.elapsed() < Duration::from_secs(5) {
        if trickle.write_all(b" ").await.is_err() {
            break;
        }
        let mut chunk = [0u8; 1024];
        match tokio::time::timeout(Duration::from_millis(150), trickle.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&chunk[..n]),
            Err(_) => {}
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "cut off at the deadline"
    );
    // A multipart upload that stops mid-file is answered the same, not as a server error.
    let mut upload = connect(&api).await;
    let part = "--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.ogg\"\r\n\
                Content-Type: audio/ogg\r\n\r\nOggS\x00\x02";
    let head = format!(
        "POST /v1/audio HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n{part}",
        env.phone_user("t-stalled", "phone-stalled")
    );
    upload.write_all(head.as_bytes()).await.expect("written");
    let answer = until_closed(&mut upload).await.unwrap_or_default();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    // And the server goes on serving.
    let live = env
        .http
        .get(api.url("/health/live"))
        .send()
        .await
        .expect("sent");
    assert_eq!(live.status(), 200);
    api.stop().await;
}

#[tokio::test]
async fn a_revoked_token_holds_no_slot_of_its_user() {
    let env = TestEnv::new().await;
    let api = crate::identity::with_root(&env).await;
    let mut config = env.query_config();
    config.http.concurrent_requests_per_principal = 2;
    let query = env.spawn_query_api(config).await;
    let stolen = crate::identity::tokens(
        &env,
        &api,
        crate::identity::ROOT_EMAIL,
        crate::identity::ROOT_PASSWORD,
    )
    .await["access_token"]
        .as_str()
        .expect("token")
        .to_owned();
    let out = env
        .http
        .post(api.url("/auth/admin/logout"))
        .bearer_auth(&stolen)
        .send()
        .await
        .expect("sent");
    assert!(out.status().is_success());
    let fresh = crate::identity::root_token(&env, &api).await;
    eventually(Duration::from_secs(1), "the logout seen", || async {
        let r = env
            .http
            .get(query.url("/v1/tenants"))
            .bearer_auth(&stolen)
            .send()
            .await
            .ok()?;
        (r.status() == 401).then_some(())
    })
    .await;
    // The revoked token holds requests open by trickling their bodies...
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = connect(&query).await;
        let head = format!(
            "POST /realtime/user-auth HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {stolen}\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
        );
        stream.write_all(head.as_bytes()).await.expect("written");
        held.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // ...and the user's own, fresh token is served all the same.
    let mine = env
        .http
        .get(query.url("/v1/tenants"))
        .bearer_auth(&fresh)
        .send()
        .await
        .expect("sent");
    assert_eq!(mine.status(), 200);
    drop(held);
    query.stop().await;
    api.stop().await;
}

#[tokio::test]
async fn requests_without_a_token_are_counted_by_client_address() {
    let env = TestEnv::new().await;
    let mut config = env.command_config();
    config.http.concurrent_requests_per_address = 2;
    let api = env.spawn_command_api(config).await;
    // Two anonymous sign-ups whose bodies never finish hold this address's slots...
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = connect(&api).await;
        stream
            .write_all(
                b"POST /v1/tenants/signup HTTP/1.1\r\nHost: x\r\n\
                  Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
            )
            .await
            .expect("written");
        held.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // ...so a third waits its turn, while a signed-in user is served.
    let third = env
        .http
        .post(api.url("/v1/tenants/signup"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .expect("sent");
    expect_problem(third, 429, "too_many_concurrent_requests").await;
    let signed_in = env
        .http
        .get(api.url("/auth/admin/profile"))
        .bearer_auth(env.super_admin())
        .send()
        .await
        .expect("sent");
    assert_ne!(signed_in.status(), 429);
    drop(held);
    api.stop().await;
}

#[tokio::test]
async fn a_key_without_a_token_is_honoured_only_on_sign_up_and_with_a_small_body() {
    let env = TestEnv::new().await;
    let mut config = env.command_config();
    config.ctx.tenants.signups_per_ip_per_hour = 1;
    let api = env.spawn_command_api(config).await;
    let keys = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM idempotency_keys")
            .fetch_one(&env.pool)
            .await
            .expect("count")
    };
    // On a route that needs a token, a stranger's key and megabytes are not this layer's to
    // keep: the route refuses, nothing is recorded.
    for n in 0..3 {
        let refused = env
            .http
            .post(api.url("/v1/admin-users"))
            .header("idempotency-key", format!("stranger-{n}"))
            .header("content-type", "application/json")
            .body(vec![b' '; 2 * 1024 * 1024])
            .send()
            .await
            .expect("sent");
        expect_problem(refused, 401, "unauthenticated").await;
    }
    assert_eq!(keys().await, 0, "no record of a stranger's key");

    // A sign-up is for anyone: its key replays the first answer...
    let signup = || {
        env.http
            .post(api.url("/v1/tenants/signup"))
            .header("idempotency-key", "my-sign-up")
            .json(&crate::support::tenant_body("keyed-signup"))
            .send()
    };
    let first = signup().await.expect("sent");
    assert_eq!(first.status(), 201);
    let first: serde_json::Value = first.json().await.expect("json");
    let again = signup().await.expect("sent");
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(
        again.json::<serde_json::Value>().await.expect("json"),
        first
    );
    // ...but its body must be small.
    let large = env
        .http
        .post(api.url("/v1/tenants/signup"))
        .header("idempotency-key", "a-large-sign-up")
        .header("content-type", "application/json")
        .body(vec![b' '; 100 * 1024])
        .send()
        .await
        .expect("sent");
    expect_problem(large, 413, "payload_too_large").await;
    // Refusals are not kept for a caller without a token: a flood of keyed sign-ups past
    // the per-address limit leaves no row.
    for n in 0..10 {
        let refused = env
            .http
            .post(api.url("/v1/tenants/signup"))
            .header("idempotency-key", format!("flood-{n}"))
            .json(&crate::support::tenant_body(&format!("flood{n}")))
            .send()
            .await
            .expect("sent");
        expect_problem(refused, 429, "rate_limited").await;
    }
    assert_eq!(keys().await, 1, "the one sign-up's key");
    api.stop().await;
}

/// `count` tenant creations sent while `tenant_slugs` is locked (a creation reserves its slug
/// there first), once at least `waiting` of them wait on the lock: the transaction holding
/// the lock, and the creations' answers to come.
async fn creations_held_on_a_lock(
    env: &TestEnv,
    api: &Service,
    prefix: &str,
    count: usize,
    waiting: i64,
) -> (
    sqlx::Transaction<'static, sqlx::Postgres>,
    Vec<tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>>,
) {
    let mut holder = env.pool.begin().await.expect("tx");
    sqlx::query("LOCK TABLE tenant_slugs IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *holder)
        .await
        .expect("locked");
    let creations: Vec<_> = (0..count)
        .map(|i| {
            let request = env
                .http
                .post(api.url("/v1/tenants"))
                .bearer_auth(env.super_admin())
                .json(&crate::support::tenant_body(&format!("{prefix}-{i}")));
            tokio::spawn(async move { request.send().await })
        })
        .collect();
    eventually(
        Duration::from_secs(10),
        "creations to wait on the lock",
        || async {
            let waiting_now: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(&env.pool)
            .await
            .expect("activity");
            (waiting_now >= waiting).then_some(())
        },
    )
    .await;
    (holder, creations)
}

/// A table locked elsewhere (a long migration, an operator's transaction) once made every
/// command of the process wait: two dozen sign-ups queued on it filled the pool, and an
/// unrelated command got 503 half a minute later. Now one route cannot take every
/// connection: the others keep working while the lock is held, and the requests beyond the
/// route's budget are answered 503 `route_busy` with `Retry-After` (a statement also gives up
/// waiting for a lock after `DB_LOCK_TIMEOUT_MS`).
#[tokio::test]
async fn one_locked_table_does_not_starve_the_other_commands() {
    let env = TestEnv::new().await;
    let mut config = env.command_config();
    // Longer than the pool waits for a connection (30 s): only the route's budget keeps
    // connections for the other routes here.
    config.db_lock_timeout_ms = 60_000;
    config.db_statement_timeout_ms = 60_000;
    let api = env.spawn_command_api(config).await;
    let (tenant, _) = create_tenant(&env, &api, "unrelated").await;
    let customer = env.phone_user(&tenant, "phone-unrelated");
    let (holder, creations) = creations_held_on_a_lock(&env, &api, "queued", 24, 2).await;
    // Longer than the revocation follower's one second of grace: its heartbeats too still
    // find a connection.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // While the lock is held, an unrelated command goes through.
    let opened = env
        .http
        .post(api.url("/v1/chat/threads"))
        .bearer_auth(&customer)
        .json(&serde_json::json!({}))
        .send()
        .await
        .expect("sent");
    assert_eq!(opened.status(), 201, "another route keeps its connections");
    holder.rollback().await.expect("released");
    // The creations then go through, or, had they waited too long for their turn, say when
    // to retry.
    for creation in creations {
        let answer = creation.await.expect("joined").expect("answered");
        if answer.status() == 503 {
            assert!(
                answer.headers().contains_key("retry-after"),
                "a retryable answer says when"
            );
        } else {
            assert_eq!(answer.status(), 201);
        }
    }
    api.stop().await;
}

/// A statement gives up waiting for a lock held elsewhere after `DB_LOCK_TIMEOUT_MS`: the
/// command answers 503 with `Retry-After` instead of holding its connection until the lock
/// goes, and succeeds when retried after it went.
#[tokio::test]
async fn a_command_waiting_on_a_lock_gives_up_and_says_when_to_retry() {
    let env = TestEnv::new().await;
    let mut config = env.command_config();
    config.db_lock_timeout_ms = 500;
    let api = env.spawn_command_api(config).await;
    let mut holder = env.pool.begin().await.expect("tx");
    sqlx::query("LOCK TABLE tenant_slugs IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *holder)
        .await
        .expect("locked");
    let create = || {
        env.http
            .post(api.url("/v1/tenants"))
            .bearer_auth(env.super_admin())
            .header("idempotency-key", "while-locked")
            .json(&crate::support::tenant_body("while-locked"))
            .send()
    };
    let refused = create().await.expect("sent");
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    holder.rollback().await.expect("released");
    assert_eq!(create().await.expect("sent").status(), 201);
    api.stop().await;
}

/// Admission control: a process takes `COMMANDS_IN_FLIGHT` commands at once. With them all
/// waiting (here on a locked table), the next command is answered 503 `overloaded` with
/// `Retry-After` at once, whatever its route, while reads still answer; once the waiting
/// commands finish, commands are taken again.
#[tokio::test]
async fn commands_beyond_the_process_bound_are_refused_at_once_and_reads_still_answer() {
    let env = TestEnv::new().await;
    let mut config = env.command_config();
    config.commands_in_flight = Some(3);
    // The creations wait on the lock for as long as the test holds it.
    config.db_lock_timeout_ms = 60_000;
    config.db_statement_timeout_ms = 60_000;
    let api = env.spawn_command_api(config).await;
    let (tenant, _) = create_tenant(&env, &api, "admitted").await;
    let customer = env.phone_user(&tenant, "phone-admitted");
    let (holder, creations) = creations_held_on_a_lock(&env, &api, "admitted", 3, 3).await;
    let open = || {
        env.http
            .post(api.url("/v1/chat/threads"))
            .bearer_auth(&customer)
            .json(&serde_json::json!({}))
            .send()
    };
    let started = std::time::Instant::now();
    let refused = open().await.expect("sent");
    assert_eq!(refused.headers()["retry-after"], "1");
    expect_problem(refused, 503, "overloaded").await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused at once, not after the route's 10 s wait"
    );
    let live = env
        .http
        .get(api.url("/health/live"))
        .send()
        .await
        .expect("sent");
    assert_eq!(live.status(), 200, "reads are not counted");
    holder.rollback().await.expect("released");
    for creation in creations {
        let answer = creation.await.expect("joined").expect("answered");
        assert_eq!(answer.status(), 201);
    }
    assert_eq!(open().await.expect("sent").status(), 201, "taken again");
    api.stop().await;
}
