//! Contexts reach each other through services or commands, never through another context's
//! HTTP layer (its `http` or `routes` module): that is what makes a context's folder its own
//! and keeps import loops out (docs/architecture.md, "Shared code"). This test reads the
//! source tree and fails when a file reaches into another context's HTTP layer.

use std::collections::BTreeSet;
use std::path::Path;

/// The bounded contexts of command-api, as `lib.rs` lists them in `contexts!`.
fn contexts(src: &Path) -> Vec<String> {
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("readable lib.rs");
    let list = lib
        .split_once("context::contexts! {")
        .and_then(|(_, rest)| rest.split_once('}'))
        .map(|(list, _)| list)
        .expect("lib.rs lists the contexts in `contexts!`");
    list.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("//"))
        .map(|l| l.trim_end_matches(',').to_owned())
        .collect()
}

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
    let contexts = contexts(&src);
    assert!(contexts.len() >= 8, "the list was read: {contexts:?}");
    let mut found = BTreeSet::new();
    for path in files {
        let name = path
            .strip_prefix(&src)
            .expect("inside src")
            .to_string_lossy()
            .replace('\\', "/");
        let own = name.split('/').next().unwrap_or_default();
        let text = std::fs::read_to_string(&path).expect("readable");
        for context in &contexts {
            let reaches = |layer: &str| text.contains(&format!("crate::{context}::{layer}"));
            if *context != own && (reaches("routes") || reaches("http")) {
                found.insert((name.clone(), context.to_string()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "these files reach into another context's HTTP layer (go through its service or a \
         command): {found:?}"
    );
}

/// A context's route modules (the files that declare its `router()`) extract, call the
/// context's service, and answer: they run no SQL and touch no blob store themselves.
#[test]
fn route_modules_leave_storage_to_the_application_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut checked = Vec::new();
    let mut found = BTreeSet::new();
    for context in contexts(&src) {
        let mut files = Vec::new();
        rust_files(&src.join(&context), &mut files);
        for path in files {
            let text = std::fs::read_to_string(&path).expect("readable");
            if !text.contains("pub fn router()") {
                continue;
            }
            let name = path
                .strip_prefix(&src)
                .expect("inside src")
                .to_string_lossy()
                .replace('\\', "/");
            for reach in ["sqlx::", ".blobs"] {
                if text.contains(reach) {
                    found.insert((name.clone(), reach));
                }
            }
            checked.push(name);
        }
    }
    assert!(
        checked.len() >= 9,
        "the route modules were found: {checked:?}"
    );
    assert!(
        found.is_empty(),
        "these route modules reach storage themselves (move it into the context's service): \
         {found:?}"
    );
}

/// The contexts a crate's `lib.rs` registers in `contexts!`.
fn registered(krate: &Path) -> Vec<String> {
    contexts(&krate.join("src"))
}

/// Every context module of a crate (a folder of `src` or a file whose code implements
/// `BoundedContext for Context`) is registered, and every registered one exists: a module
/// declared and left out of the list would compile and never be built, routed or run.
#[test]
fn every_context_module_is_registered_in_its_crate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for krate in ["command-api", "projector", "query-api"] {
        let krate = root.join(krate);
        let list: BTreeSet<String> = registered(&krate).into_iter().collect();
        let mut modules = BTreeSet::new();
        for entry in std::fs::read_dir(krate.join("src")).expect("src") {
            let path = entry.expect("entry").path();
            let (name, file) = if path.is_dir() {
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
                (name, path.join("mod.rs"))
            } else {
                let name = path.file_stem().map(|n| n.to_string_lossy().into_owned());
                (name, path.clone())
            };
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            if text.contains("BoundedContext for Context") {
                modules.insert(name.expect("a module name"));
            }
        }
        assert_eq!(
            modules,
            list,
            "{}: the context modules and the contexts! list differ",
            krate.display()
        );
    }
}

/// Every route of both APIs is registered through `utoipa_axum::routes!`, which takes its
/// path and method from the handler's `#[utoipa::path]`: so every route is in the generated
/// `/openapi.json`. A route added with axum's own `.route(…)` (or `route_service`, `nest`)
/// would be served and missing from the document; this test fails on one. Unit tests
/// (after `#[cfg(test)]`) may build routers of their own.
#[test]
fn every_route_is_registered_where_the_document_sees_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for krate in ["command-api", "query-api"] {
        rust_files(&root.join(krate).join("src"), &mut files);
    }
    let mut undocumented = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("readable source");
        let production = text.split("#[cfg(test)]").next().unwrap_or_default();
        for (n, line) in production.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            if [".route(", ".route_service(", ".nest(", ".nest_service("]
                .iter()
                .any(|call| code.contains(call))
            {
                undocumented.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        undocumented.is_empty(),
        "routes registered outside `routes!` (not in /openapi.json):\n{}",
        undocumented.join("\n")
    );
}
