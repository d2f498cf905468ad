//! `command-api --help` lists every setting with its environment variable.

#[test]
fn help_lists_every_setting() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_command-api"))
        .arg("--help")
        .output()
        .expect("runs");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for setting in [
        "DATABASE_URL",
        "NEON_PG_CONN",
        "DB_MAX_CONNECTIONS",
        "NATS_URL",
        "NATS_STREAM",
        "NATS_SUBJECT_PREFIX",
        "NEST_AUTH_SECRET",
        "NEXTAUTH_SECRET",
        "HOST",
        "PORT",
        "RELAY_ENABLED",
        "RELAY_BATCH",
        "SNAPSHOT_EVERY",
        "BLOB_DIR",
        "MAX_BODY_BYTES",
        "RELAY_POLL_MS",
        "AUTH_TOKEN_EXPIRES_IN",
        "REFRESH_TOKEN_EXPIRES_IN",
        "ADMIN_BOOTSTRAP_EMAIL",
        "ADMIN_BOOTSTRAP_PASSWORD",
        "OTP_REQUESTS_PER_IP_PER_HOUR",
        "TRUST_FORWARDED_FOR",
        "TRUSTED_PROXY_HOPS",
        "SIGNUPS_PER_IP_PER_HOUR",
        "ALLOW_DEV_SECRETS",
        "AUDIO_UPLOADS_PER_USER_PER_HOUR",
    ] {
        assert!(
            help.contains(&format!("[env: {setting}")),
            "{setting} missing from:\n{help}"
        );
    }
    assert!(help.contains("admin"), "the admin subcommand is listed");
    assert!(
        help.contains("snapshots"),
        "the snapshots subcommand is listed"
    );
}

#[test]
fn start_without_a_database_fails_with_a_clear_message() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_command-api"))
        .env_clear()
        .env("NEST_AUTH_SECRET", "s")
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("set DATABASE_URL (or NEON_PG_CONN)"));
}

#[test]
fn start_with_a_published_or_short_secret_is_refused_outside_development() {
    let start = |envs: &[(&str, &str)]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_command-api"));
        command.env_clear().env(
            "DATABASE_URL",
            "postgres://nobody@127.0.0.1:1/none?connect_timeout=1&sslmode=nonsense",
        );
        for (k, v) in envs {
            command.env(k, v);
        }
        let out = command.output().expect("runs");
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let refused = start(&[("NEST_AUTH_SECRET", "dev-secret-change-me")]);
    assert!(
        refused.contains("NEST_AUTH_SECRET (or NEXTAUTH_SECRET) is a published default"),
        "{refused}"
    );
    let long = "k3Jx9vQ2mW8pL5tR7yB1nC4hF6dS0aZe";
    let weak_key = start(&[
        ("NEST_AUTH_SECRET", long),
        ("CREDENTIALS_KEY", "dev-credentials-key-change-me"),
    ]);
    assert!(
        weak_key.contains("CREDENTIALS_KEY is a published default"),
        "{weak_key}"
    );
    // An open bus, or a weak password on it, is refused too.
    let open_bus = start(&[("NEST_AUTH_SECRET", long)]);
    assert!(open_bus.contains("NATS_URL names no user"), "{open_bus}");
    let weak_bus = start(&[
        ("NEST_AUTH_SECRET", long),
        ("NATS_URL", "nats://command-api:short@127.0.0.1:4222"),
    ]);
    assert!(
        weak_bus.contains("NATS password in NATS_URL is"),
        "{weak_bus}"
    );
    assert!(
        !weak_bus.contains(":short@"),
        "the password is never printed: {weak_bus}"
    );
    // Strong secrets, or development allowed: it gets as far as the unreachable database.
    let bus = "nats://command-api:Qm4vT8xK2pR7wZ1nB5cJ9hL3sD6fGyA0@127.0.0.1:4222";
    for envs in [
        vec![("NEST_AUTH_SECRET", long), ("NATS_URL", bus)],
        vec![("NEST_AUTH_SECRET", "s"), ("ALLOW_DEV_SECRETS", "true")],
    ] {
        let out = start(&envs);
        assert!(!out.contains("secret") || out.contains("database"), "{out}");
        assert!(out.contains("database"), "{out}");
    }
}
