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
