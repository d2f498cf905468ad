//! Bad input: schemathesis against both APIs' `/openapi.json`, with a valid super-admin token.
//!
//! Two checks: `not_a_server_error` (no 5xx, whatever the input) and
//! `response_schema_conformance` (every answer matches the documented schema). Schemathesis
//! is a Python tool; it is installed, pinned, into a virtual environment of the harness's own
//! on first use.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::Serialize;

use crate::stack::{Stack, StackConfig};
use crate::Error;

/// The schemathesis release the harness installs.
pub const SCHEMATHESIS: &str = "schemathesis==4.32.5";

/// What schemathesis found on one API.
#[derive(Debug, Serialize)]
pub struct FuzzResult {
    /// `command-api` or `query-api`.
    pub api: String,
    /// Whether every check passed.
    pub passed: bool,
    /// Operations schemathesis generated requests for.
    pub operations: Vec<String>,
    /// The summary schemathesis printed.
    pub summary: String,
}

/// How a fuzz run goes.
#[derive(Debug, Clone)]
pub struct FuzzOptions {
    /// The stack to start.
    pub stack: StackConfig,
    /// Test cases per operation.
    pub max_examples: u32,
    /// Seed, for a run that can be repeated.
    pub seed: u64,
    /// Paths left out (the bounded run in the test suite leaves out `/v1/stream`: every case
    /// of an endless SSE stream waits for schemathesis's read timeout).
    pub exclude_paths: Vec<String>,
}

/// `<work_dir>/schemathesis/bin/schemathesis`, installed if absent.
pub async fn install(work_dir: &Path) -> Result<PathBuf, Error> {
    let venv = work_dir.join("schemathesis");
    let bin = venv.join("bin").join("schemathesis");
    if bin.exists() {
        return Ok(bin);
    }
    std::fs::create_dir_all(work_dir)?;
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let status = tokio::process::Command::new(&python)
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .await
        .map_err(|e| format!("{python} does not run ({e}); set PYTHON"))?;
    if !status.success() {
        return Err(format!("{python} -m venv: {status}").into());
    }
    let status = tokio::process::Command::new(venv.join("bin").join("pip"))
        .args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            SCHEMATHESIS,
        ])
        .status()
        .await?;
    if !status.success() {
        return Err(format!("pip install {SCHEMATHESIS}: {status}").into());
    }
    Ok(bin)
}

/// Starts a stack, seeds a tenant, and runs schemathesis against both APIs.
pub async fn run(options: &FuzzOptions) -> Result<Vec<FuzzResult>, Error> {
    let work_dir = options.stack.work_dir.clone();
    let schemathesis = install(&work_dir).await?;
    // Providers the APIs ask synchronously (the WhatsApp Cloud API checks credentials when a
    // session connects) are a local stand-in that refuses every credential: an unreachable
    // provider is a 503, which is right in production but not what fuzzing looks for.
    let provider = refusing_provider().await?;
    let mut config = options.stack.clone();
    config
        .env
        .push(("WHATSAPP_API_URL".into(), format!("http://{provider}")));
    let stack = Stack::start(config).await?;
    let result = fuzz_stack(&stack, &schemathesis, options).await;
    stack.teardown().await?;
    result
}

/// A local HTTP server answering every request 401 with a Graph API error (an invalid
/// access token), for as long as the process runs: its address.
async fn refusing_provider() -> Result<std::net::SocketAddr, Error> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0u8; 8192];
                let _ = socket.read(&mut request).await;
                let body = r#"{"error":{"message":"Invalid OAuth access token","type":"OAuthException","code":190}}"#;
                let answer = format!(
                    "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    Ok(addr)
}

async fn fuzz_stack(
    stack: &Stack,
    schemathesis: &Path,
    options: &FuzzOptions,
) -> Result<Vec<FuzzResult>, Error> {
    let token = stack.super_admin();
    // Something to find: a tenant, so reads of existing resources are exercised too.
    let api = crate::workloads::Api::new(&stack.command_url, &stack.query_url, token.clone(), 1);
    api.create_tenant("fuzz-seed").await?;
    let mut results = Vec::new();
    for (name, base) in [
        ("command-api", &stack.command_url),
        ("query-api", &stack.query_url),
    ] {
        let report_path = options
            .stack
            .work_dir
            .join(&stack.name)
            .join(format!("{name}-schemathesis.json"));
        let output = tokio::process::Command::new(schemathesis)
            .arg("run")
            .arg(format!("{base}/openapi.json"))
            .args(["--checks", "not_a_server_error,response_schema_conformance"])
            .args(["--header", &format!("Authorization: Bearer {token}")])
            .args(["--max-examples", &options.max_examples.to_string()])
            .args(["--seed", &options.seed.to_string()])
            .args(["--suppress-health-check", "all"])
            // One worker: with two, schemathesis compiles code in two threads at once, which
            // trips a CPython 3.11 bug ("SystemError: AST constructor recursion depth
            // mismatch", fixed in later 3.11 releases) and ends the run with a "Runtime Error"
            // that says nothing about the APIs. One worker also makes a seeded run repeatable.
            .args(["--workers", "1"])
            .args(
                options
                    .exclude_paths
                    .iter()
                    .flat_map(|p| ["--exclude-path", p.as_str()]),
            )
            .args(["--report", "json", "--report-json-path"])
            .arg(&report_path)
            .env("NO_COLOR", "1")
            // It keeps a cache folder in its working directory: not in the repository.
            .current_dir(&options.stack.work_dir)
            .stdin(Stdio::null())
            .output()
            .await?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let operations = std::fs::read_to_string(&report_path)
            .ok()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            .map(|json| operations_of(&json))
            .unwrap_or_default();
        results.push(FuzzResult {
            api: name.to_owned(),
            passed: output.status.success(),
            operations,
            summary: summary_of(&stdout),
        });
    }
    Ok(results)
}

/// The operations schemathesis tested, from its JSON report (`valid_rates` is keyed by
/// operation; failures name theirs too).
fn operations_of(json: &serde_json::Value) -> Vec<String> {
    let mut found: Vec<String> = json["valid_rates"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    if let Some(failures) = json["failures"].as_array() {
        found.extend(
            failures
                .iter()
                .filter_map(|f| f["label"].as_str().or(f["operation"].as_str()))
                .map(str::to_owned),
        );
    }
    found.sort();
    found.dedup();
    found
}

/// The end of schemathesis's output, from its summary on.
fn summary_of(stdout: &str) -> String {
    // From the first section that explains a failure (schemathesis prints errors and
    // failures before its summary), else the summary.
    let start = ["ERRORS", "FAILURES", "SUMMARY"]
        .iter()
        .filter_map(|section| stdout.find(section))
        .min()
        .unwrap_or(stdout.len().saturating_sub(4_000));
    let start = (0..=start)
        .rev()
        .find(|i| stdout.is_char_boundary(*i))
        .unwrap_or(0);
    stdout[start..].to_owned()
}

#[cfg(test)]
mod tests {
    use super::summary_of;

    #[test]
    fn the_summary_starts_at_the_section_that_explains_a_failure() {
        let out = "progress\n=== ERRORS ===\nRuntime Error: timeout\n=== SUMMARY ===\n1 error";
        assert!(summary_of(out).starts_with("ERRORS"));
        assert!(summary_of("noise\n=== SUMMARY ===\nok").starts_with("SUMMARY"));
    }
}
