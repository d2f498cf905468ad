//! `projector --help` lists every setting and the subcommands.

#[test]
fn help_lists_every_setting_and_subcommand() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_projector"))
        .arg("--help")
        .output()
        .expect("runs");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "[env: DATABASE_URL",
        "[env: NEON_PG_CONN",
        "[env: DB_MAX_CONNECTIONS",
        "[env: NATS_URL",
        "[env: NATS_STREAM",
        "[env: NATS_SUBJECT_PREFIX",
        "[env: PROJECTOR_MAX_DELIVER",
        "[env: PROJECTOR_BATCH",
        "[env: ALLOW_DEV_SECRETS",
        "run",
        "rebuild",
        "list",
    ] {
        assert!(help.contains(needle), "{needle} missing from:\n{help}");
    }
}

#[test]
fn rebuild_of_an_unknown_projection_says_which_exist() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_projector"))
        .args(["rebuild", "nothing"])
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no projection named \"nothing\""));
}
