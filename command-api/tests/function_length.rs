//! No production function of the services is over [`LIMIT`] lines: a big `match` becomes one
//! function per command or event, a long flow a few named steps (docs/architecture.md,
//! "Shared code"). The test reads the sources of `events`, `command-api`, `projector` and
//! `query-api` (test modules excluded) and counts each function from its `fn` line to its
//! closing brace.
//!
//! A method is named with its type (`Thread::apply`). There are no exceptions: the functions
//! that were longer before the rule have all been split.

use std::collections::BTreeMap;
use std::path::Path;

/// The most lines a function may take.
const LIMIT: usize = 80;

/// The crates whose functions are held to the limit.
const CRATES: &[&str] = &["events", "command-api", "projector", "query-api"];

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

/// The line after the block that opens on line `from` (braces counted line by line).
fn block_end(lines: &[&str], from: usize) -> usize {
    let mut depth = 0_i64;
    for (i, line) in lines.iter().enumerate().skip(from) {
        depth += line.matches('{').count() as i64 - line.matches('}').count() as i64;
        if depth <= 0 && i > from {
            return i;
        }
    }
    lines.len()
}

/// The name of the function whose signature starts on `line`, if one does.
fn function_name(line: &str) -> Option<&str> {
    let mut words = line.split_whitespace().peekable();
    while let Some(word) = words.next() {
        match word {
            "pub" | "async" | "const" | "unsafe" | "extern" => continue,
            w if w.starts_with("pub(") => continue,
            "fn" => {
                let name = words.next()?;
                let end = name.find(['(', '<']).unwrap_or(name.len());
                return Some(&name[..end]);
            }
            _ => return None,
        }
    }
    None
}

/// The type an `impl` line is for (`impl<T> Trait for Type<T> {` → `Type`).
fn impl_type(line: &str) -> Option<String> {
    let rest = line.trim_start().strip_prefix("impl")?;
    if !rest.starts_with([' ', '<']) {
        return None;
    }
    let rest = match rest.split_once(" for ") {
        Some((_, target)) => target,
        None => {
            // Skip the impl's own generics: `impl<T: X> Type<T>`.
            let mut depth = 0_i32;
            let at = rest
                .char_indices()
                .find(|&(_, c)| {
                    match c {
                        '<' => depth += 1,
                        '>' => depth -= 1,
                        _ => {}
                    }
                    depth == 0 && c == ' '
                })
                .map_or(0, |(i, _)| i);
            &rest[at..]
        }
    };
    let path = rest.trim_start().split(['<', ' ', '{']).next()?;
    let name = path.rsplit("::").next()?;
    (!name.is_empty()).then(|| name.to_owned())
}

/// `(file, function) → lines` of every function over the limit; a method is named with its
/// type (`Thread::apply`), so two functions of one file never share a name.
fn long_functions(root: &Path) -> BTreeMap<(String, String), usize> {
    let mut found = BTreeMap::new();
    for krate in CRATES {
        let mut files = Vec::new();
        rust_files(&root.join(krate).join("src"), &mut files);
        for path in files {
            let name = path
                .strip_prefix(root)
                .expect("inside the workspace")
                .to_string_lossy()
                .replace('\\', "/");
            let text = std::fs::read_to_string(&path).expect("readable");
            let lines: Vec<&str> = text.lines().collect();
            // The `impl` blocks around the line being read: (last line, type).
            let mut impls: Vec<(usize, String)> = Vec::new();
            let mut i = 0;
            while i < lines.len() {
                impls.retain(|(end, _)| *end >= i);
                let line = lines[i].trim_start();
                // Test code is not production code: a test module, or one item.
                if line.starts_with("#[cfg(test)]") {
                    let item = (i + 1..lines.len())
                        .find(|&j| !lines[j].trim_start().starts_with("#["))
                        .unwrap_or(lines.len());
                    let braced = (item..lines.len())
                        .find(|&j| lines[j].contains('{') || lines[j].trim_end().ends_with(';'))
                        .unwrap_or(lines.len());
                    i = if braced < lines.len() && lines[braced].contains('{') {
                        block_end(&lines, braced) + 1
                    } else {
                        braced + 1
                    };
                    continue;
                }
                if let Some(ty) = impl_type(line) {
                    let open = (i..lines.len()).find(|&j| lines[j].contains('{'));
                    if let Some(open) = open {
                        impls.push((block_end(&lines, open), ty));
                    }
                }
                if let Some(function) = function_name(line) {
                    // The body opens where the signature ends; a declaration has none.
                    let open = (i..lines.len()).find(|&j| {
                        let l = lines[j].trim_end();
                        l.ends_with('{') || l.ends_with(';')
                    });
                    if let Some(open) = open.filter(|&j| lines[j].trim_end().ends_with('{')) {
                        let end = block_end(&lines, open);
                        let length = end - i + 1;
                        if length > LIMIT {
                            let qualified = match impls.last() {
                                Some((_, ty)) => format!("{ty}::{function}"),
                                None => function.to_owned(),
                            };
                            found.insert((name.clone(), qualified), length);
                        }
                    }
                }
                i += 1;
            }
        }
    }
    found
}

#[test]
fn no_production_function_is_over_the_limit() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let found: Vec<String> = long_functions(&root)
        .iter()
        .map(|((file, function), lines)| {
            format!("{file}: `{function}` is {lines} lines (the limit is {LIMIT}): split it")
        })
        .collect();
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn a_function_is_measured_from_its_signature_to_its_closing_brace() {
    let source = "fn short() {\n    1\n}\n";
    let lines: Vec<&str> = source.lines().collect();
    assert_eq!(function_name(lines[0]), Some("short"));
    assert_eq!(block_end(&lines, 0), 2);
    assert_eq!(
        function_name("pub(crate) async fn go<T>(x: T) {"),
        Some("go")
    );
    assert_eq!(function_name("let fn_name = 1;"), None);
    assert_eq!(impl_type("impl Thread {").as_deref(), Some("Thread"));
    assert_eq!(
        impl_type("impl<E: DomainProblem> From<CommandError<E>> for Problem {").as_deref(),
        Some("Problem")
    );
    assert_eq!(
        impl_type("impl crate::context::BoundedContext for Context {").as_deref(),
        Some("Context")
    );
    assert_eq!(
        impl_type("impl<T> Wrapper<T> {").as_deref(),
        Some("Wrapper")
    );
    assert_eq!(impl_type("implied"), None);
}
