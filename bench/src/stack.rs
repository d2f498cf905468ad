//! The three services as child processes on a database and a stream of their own.
//!
//! A stack is what a workload runs against: `Stack::start` creates a fresh database
//! `bench_<id>`, starts command-api (which migrates it and creates the stream), the projector
//! and query-api on free ports, and waits until all three answer `/health/ready`. The chaos
//! harness kills and restarts single services through it; `teardown` stops everything and
//! drops the database and the stream.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use events::access::{Role, TokenKeys};
use sqlx::{Connection, PgConnection};

use crate::Error;

/// One of the three services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    /// The write side (and the relay).
    CommandApi,
    /// The read-model builder.
    Projector,
    /// The read side.
    QueryApi,
}

impl Service {
    /// All three, in start order.
    pub const ALL: [Service; 3] = [Service::CommandApi, Service::Projector, Service::QueryApi];

    /// The binary's name.
    pub fn binary(self) -> &'static str {
        match self {
            Service::CommandApi => "command-api",
            Service::Projector => "projector",
            Service::QueryApi => "query-api",
        }
    }
}

/// Where the stack finds its binaries and servers.
#[derive(Debug, Clone)]
pub struct StackConfig {
    /// Folder holding `command-api`, `projector` and `query-api`.
    pub bin_dir: PathBuf,
    /// A PostgreSQL URL whose user may create databases (its database part is replaced).
    pub admin_url: String,
    /// The NATS server.
    pub nats_url: String,
    /// Folder for the services' logs and blobs.
    pub work_dir: PathBuf,
    /// Extra environment for every service (e.g. `RELAY_POLL_MS`).
    pub env: Vec<(String, String)>,
}

/// The signing secret the stack's services share with the harness, which mints its own tokens.
pub const SECRET: &str = "bench-secret-not-for-production";

/// A running stack.
pub struct Stack {
    /// `bench_<id>`: the database name; also the stream name's and subject prefix's root.
    pub name: String,
    /// The stack's database.
    pub database_url: String,
    /// The NATS server.
    pub nats_url: String,
    /// The JetStream stream.
    pub stream: String,
    /// The subject prefix.
    pub prefix: String,
    /// command-api's base URL.
    pub command_url: String,
    /// query-api's base URL.
    pub query_url: String,
    /// Mints tokens the services accept.
    pub keys: TokenKeys,
    config: StackConfig,
    command_port: u16,
    query_port: u16,
    /// The projector's health port.
    projector_port: u16,
    children: HashMap<Service, Child>,
}

/// `url` with its database replaced by `database`.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    // postgres://user@host:port/db — the database is what follows the third slash.
    let root = match base.match_indices('/').nth(2) {
        Some((i, _)) => &base[..i],
        None => base,
    };
    format!("{root}/{database}{query}")
}

/// A port nobody listens on right now, drawn at random below the kernel's ephemeral range
/// (32768 and up): a port `bind(0)` hands out and takes back is often handed out again next,
/// so the three ports of one stack, or the stacks of two tests started together, could be
/// given the same one.
pub fn free_port() -> Result<u16, Error> {
    let mut last = None;
    for _ in 0..200 {
        let port = 20_000 + (uuid::Uuid::new_v4().as_u128() % 12_000) as u16;
        match std::net::TcpListener::bind(("127.0.0.1", port)) {
            Ok(_) => return Ok(port),
            Err(e) => last = Some(e),
        }
    }
    Err(last
        .map(Error::from)
        .unwrap_or_else(|| std::io::Error::other("no free port").into()))
}

/// The folder of the running executable's sibling binaries: `target/<profile>` for `bench`
/// itself, and for a test binary in `target/<profile>/deps` its parent.
pub fn default_bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.parent().map(Path::to_path_buf).unwrap_or(dir)
    } else {
        dir
    }
}

impl Stack {
    /// Creates the database and starts the three services.
    pub async fn start(config: StackConfig) -> Result<Self, Error> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let name = format!("bench_{}", &id[..12]);
        let mut admin = PgConnection::connect(&config.admin_url).await?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await?;
        std::fs::create_dir_all(config.work_dir.join(&name))?;
        let mut stack = Stack {
            database_url: with_database(&config.admin_url, &name),
            nats_url: config.nats_url.clone(),
            stream: name.to_uppercase(),
            prefix: name.clone(),
            command_port: free_port()?,
            query_port: free_port()?,
            projector_port: free_port()?,
            command_url: String::new(),
            query_url: String::new(),
            keys: TokenKeys::new(SECRET),
            name,
            config,
            children: HashMap::new(),
        };
        stack.command_url = format!("http://127.0.0.1:{}", stack.command_port);
        stack.query_url = format!("http://127.0.0.1:{}", stack.query_port);
        stack.spawn(Service::CommandApi)?;
        // command-api migrates and creates the stream before it listens.
        stack
            .wait_ready(Service::CommandApi, Duration::from_secs(60))
            .await?;
        stack.spawn(Service::Projector)?;
        stack.spawn(Service::QueryApi)?;
        stack
            .wait_ready(Service::QueryApi, Duration::from_secs(60))
            .await?;
        stack
            .wait_ready(Service::Projector, Duration::from_secs(60))
            .await?;
        Ok(stack)
    }

    /// A super-admin token valid for a day.
    pub fn super_admin(&self) -> String {
        self.keys
            .admin_token("bench-super-admin", None, Role::SuperAdmin, 86_400)
    }

    /// Starts `service` (again).
    pub fn spawn(&mut self, service: Service) -> Result<(), Error> {
        let dir = self.config.work_dir.join(&self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{}.log", service.binary())))?;
        let mut command = Command::new(self.config.bin_dir.join(service.binary()));
        command
            .env_clear()
            .env("DATABASE_URL", &self.database_url)
            .env("NATS_URL", &self.nats_url)
            .env("NATS_STREAM", &self.stream)
            .env("NATS_SUBJECT_PREFIX", &self.prefix)
            .env("NEST_AUTH_SECRET", SECRET)
            .env("ALLOW_DEV_SECRETS", "true")
            .env("HOST", "127.0.0.1")
            .env("PORT", self.command_port.to_string())
            .env("QUERY_PORT", self.query_port.to_string())
            .env("PROJECTOR_PORT", self.projector_port.to_string())
            .env(
                "COMMAND_API_URL",
                format!("http://127.0.0.1:{}", self.command_port),
            )
            .env("REALTIME_SUBJECT_PREFIX", format!("rt{}", self.prefix))
            .env("BLOB_DIR", dir.join("blobs"))
            .env("RUST_LOG", "warn")
            // The load generator's one token stands for many users: the per-token cap on
            // requests in flight would otherwise meter the generator, not the service.
            .env("CONCURRENT_REQUESTS_PER_PRINCIPAL", "100000")
            .env("CONCURRENT_REQUESTS_PER_ADDRESS", "100000")
            .envs(self.config.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log);
        if service == Service::Projector {
            command.arg("run");
        }
        let child = command.spawn().map_err(|e| {
            format!(
                "{} in {} does not start ({e}); build it first",
                service.binary(),
                self.config.bin_dir.display()
            )
        })?;
        self.children.insert(service, child);
        Ok(())
    }

    /// Kills `service` with SIGKILL, as a crash would, and reaps it.
    pub fn kill(&mut self, service: Service) {
        if let Some(mut child) = self.children.remove(&service) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether `service` is still running (false when it exited by itself).
    pub fn running(&mut self, service: Service) -> bool {
        self.children
            .get_mut(&service)
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The service's resident set size in bytes (Linux), while it runs.
    pub fn rss_bytes(&self, service: Service) -> Option<u64> {
        let pid = self.children.get(&service)?.id();
        rss_of(pid)
    }

    /// Waits until a service answers `/health/ready`.
    pub async fn wait_ready(&mut self, service: Service, within: Duration) -> Result<(), Error> {
        let url = match service {
            Service::CommandApi => format!("{}/health/ready", self.command_url),
            Service::QueryApi => format!("{}/health/ready", self.query_url),
            Service::Projector => {
                format!("http://127.0.0.1:{}/health/ready", self.projector_port)
            }
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + within;
        loop {
            if let Ok(r) = client.get(&url).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if !self.running(service) {
                return Err(format!(
                    "{} exited; see {}",
                    service.binary(),
                    self.log_path(service).display()
                )
                .into());
            }
            if Instant::now() >= deadline {
                return Err(format!("{} not ready within {within:?}", service.binary()).into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Where `service` writes its log.
    pub fn log_path(&self, service: Service) -> PathBuf {
        self.config
            .work_dir
            .join(&self.name)
            .join(format!("{}.log", service.binary()))
    }

    /// Stops every service and drops the database and the stream.
    pub async fn teardown(mut self) -> Result<(), Error> {
        for service in Service::ALL {
            self.kill(service);
        }
        if let Ok(client) = async_nats::connect(&self.nats_url).await {
            let _ = async_nats::jetstream::new(client)
                .delete_stream(&self.stream)
                .await;
        }
        let mut admin = PgConnection::connect(&self.config.admin_url).await?;
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut admin)
        .await?;
        let _ = std::fs::remove_dir_all(self.config.work_dir.join(&self.name).join("blobs"));
        Ok(())
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for (_, mut child) in self.children.drain() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Resident set size of a process, from `/proc/{pid}/status`.
pub fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_of_a_url_is_replaced() {
        assert_eq!(
            with_database("postgres://root@127.0.0.1:5432/postgres", "bench_x"),
            "postgres://root@127.0.0.1:5432/bench_x"
        );
        assert_eq!(
            with_database("postgres://root@127.0.0.1:5432", "bench_x"),
            "postgres://root@127.0.0.1:5432/bench_x"
        );
        assert_eq!(
            with_database("postgres://u:p@h/db?sslmode=disable", "b"),
            "postgres://u:p@h/b?sslmode=disable"
        );
    }
}
