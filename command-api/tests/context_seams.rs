//! Contexts reach each other through services or commands, never through another context's
//! HTTP layer (its `http` or `routes` module): that is what makes a context's folder its own
//! and keeps import loops out (docs/architecture.md, "Shared code"). This test reads the
//! source tree and fails when a file reaches into another context's HTTP layer.
//!
//! `KNOWN` lists the crossings that remain from before the rule (issue 16 removes them, one
//! by one): a new crossing fails the test, and so does one that is gone but still listed,
//! so the list only ever shrinks.

use std::collections::BTreeSet;
use std::path::Path;

/// The bounded contexts of command-api (its folders that hold one).
const CONTEXTS: &[&str] = &[
    "audio",
    "chat",
    "identity",
    "payments",
    "telephony",
    "tenants",
    "webhooks",
    "whatsapp",
];

/// `file → context whose routes it reaches into`, from before the rule.
const KNOWN: &[(&str, &str)] = &[("http/idempotency.rs", "chat")];

/// Files allowed to name every context's routes: the router's assembly (the one list that
/// names every context).
const ASSEMBLY: &[&str] = &["http/mod.rs"];

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable source folder") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_context_reaches_into_another_contexts_http_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut found = BTreeSet::new();
    for path in files {
        let name = path
            .strip_prefix(&src)
            .expect("inside src")
            .to_string_lossy()
            .replace('\\', "/");
        if ASSEMBLY.contains(&name.as_str()) {
            continue;
        }
        let own = name.split('/').next().unwrap_or_default();
        let text = std::fs::read_to_string(&path).expect("readable");
        for context in CONTEXTS {
            let reaches = |layer: &str| text.contains(&format!("crate::{context}::{layer}"));
            if *context != own && (reaches("routes") || reaches("http")) {
                found.insert((name.clone(), context.to_string()));
            }
        }
    }
    let known: BTreeSet<(String, String)> = KNOWN
        .iter()
        .map(|(f, c)| (f.to_string(), c.to_string()))
        .collect();
    let new: Vec<_> = found.difference(&known).collect();
    let gone: Vec<_> = known.difference(&found).collect();
    assert!(
        new.is_empty(),
        "these files reach into another context's routes (go through its service or a \
         command): {new:?}"
    );
    assert!(
        gone.is_empty(),
        "these crossings are gone: remove them from KNOWN: {gone:?}"
    );
}
