//! Start-up while NATS is down: command-api takes commands (the store is the source of
//! truth), both services report not-ready, and once the bus comes every event waiting is
//! published and projected. A nats-server of this test, started late on a free port.

use std::time::Duration;

use crate::support::{create_tenant, eventually, free_port, TestEnv};

/// A nats-server with JetStream on `port`, its store in a directory of its own.
fn start_nats(port: u16) -> tokio::process::Child {
    let dir = std::env::temp_dir().join(format!("nats-late-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("a store directory");
    tokio::process::Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("nats-server starts (scripts/test installs it)")
}

async fn status(env: &TestEnv, url: &str) -> u16 {
    env.http
        .get(url)
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

#[tokio::test]
async fn the_services_start_without_nats_take_commands_and_catch_up_when_it_comes() {
    let env = TestEnv::new().await;
    let nats_port = free_port();
    let nats_url = format!("nats://127.0.0.1:{nats_port}");
    let mut config = env.command_config();
    config.nats_url = nats_url.clone();
    let api = env.spawn_command_api(config).await;
    let projector_port = free_port();
    let mut projector_config = env.projector_config();
    projector_config.nats_url = nats_url;
    projector_config.port = Some(projector_port);
    let projector = env.spawn_projector(projector_config);
    let projector_ready = format!("http://127.0.0.1:{projector_port}/health/ready");
    let projector_live = format!("http://127.0.0.1:{projector_port}/health/live");

    // Commands are taken while the bus is away; neither service calls itself ready.
    let (tenant, _) = create_tenant(&env, &api, "before-the-bus").await;
    eventually(
        Duration::from_secs(10),
        "the projector to listen",
        || async { (status(&env, &projector_live).await == 200).then_some(()) },
    )
    .await;
    assert_eq!(status(&env, &api.url("/health/ready")).await, 503);
    assert_eq!(status(&env, &projector_ready).await, 503);
    assert!(!projector.is_finished(), "the projector waits for the bus");

    let _nats = start_nats(nats_port);
    eventually(
        Duration::from_secs(30),
        "both services to be ready",
        || async {
            (status(&env, &api.url("/health/ready")).await == 200
                && status(&env, &projector_ready).await == 200)
                .then_some(())
        },
    )
    .await;
    // The event committed before the bus came is published and projected.
    eventually(
        Duration::from_secs(30),
        "the tenant in the read model",
        || async {
            sqlx::query_scalar::<_, i64>("SELECT version FROM tenants WHERE id::text = $1")
                .bind(&tenant)
                .fetch_optional(&env.pool)
                .await
                .expect("read model")
                .filter(|v| *v >= 1)
        },
    )
    .await;
    projector.abort();
    api.stop().await;
}

/// The bus comes back without its store (a new server, a lost volume): the stream is gone.
/// The relay makes it again and publishes what followed, and the projector follows it.
#[tokio::test]
async fn a_bus_that_lost_its_stream_gets_it_back_and_publishing_resumes() {
    let env = TestEnv::new().await;
    let nats_port = free_port();
    let nats_url = format!("nats://127.0.0.1:{nats_port}");
    let mut nats = start_nats(nats_port);
    let mut config = env.command_config();
    config.nats_url = nats_url.clone();
    let api = env.spawn_command_api(config).await;
    let mut projector_config = env.projector_config();
    projector_config.nats_url = nats_url;
    let projector = env.spawn_projector(projector_config);
    let projected = |tenant: String| {
        let env = &env;
        async move {
            eventually(Duration::from_secs(30), "the tenant projected", || async {
                sqlx::query_scalar::<_, i64>("SELECT version FROM tenants WHERE id::text = $1")
                    .bind(&tenant)
                    .fetch_optional(&env.pool)
                    .await
                    .expect("read model")
            })
            .await
        }
    };
    let (first, _) = create_tenant(&env, &api, "before-the-loss").await;
    projected(first).await;

    nats.kill().await.expect("killed");
    let _fresh = start_nats(nats_port);
    let (second, _) = create_tenant(&env, &api, "after-the-loss").await;
    projected(second).await;
    projector.abort();
    api.stop().await;
}
