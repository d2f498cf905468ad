//! What PostgreSQL's `jsonb` can store.
//!
//! `jsonb` holds any JSON document except one whose text contains the NUL character
//! (`\u0000`): PostgreSQL refuses it with `unsupported Unicode escape sequence`. Every other
//! string Rust can hold is valid UTF-8 and stores fine, and `serde_json` writes no numbers
//! `jsonb` cannot read (a non-finite float becomes `null`). So a document is storable exactly
//! when no key and no string in it contains NUL, which is what [`first_nul`] looks for.
//!
//! Events, their metadata and aggregate snapshots are all `jsonb` columns: a NUL anywhere in
//! them makes the append fail, and fail the same way on every retry.

use serde_json::Value;

/// The JSON Pointer (RFC 6901) of the first key or string in `value` holding a NUL, or
/// `None` when `jsonb` can store `value`.
pub fn first_nul(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => s.contains('\0').then(String::new),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| first_nul(item).map(|rest| format!("/{i}{rest}"))),
        Value::Object(map) => map.iter().find_map(|(key, item)| {
            let here = || format!("/{}", pointer_token(key));
            if key.contains('\0') {
                Some(here())
            } else {
                first_nul(item).map(|rest| format!("{}{rest}", here()))
            }
        }),
        Value::Null | Value::Bool(_) | Value::Number(_) => None,
    }
}

/// Whether `jsonb` would refuse `value`.
pub fn holds_nul(value: &Value) -> bool {
    first_nul(value).is_some()
}

/// A key as a JSON Pointer token, with the NUL shown as `\0` so the path can be logged.
fn pointer_token(key: &str) -> String {
    key.replace('~', "~0")
        .replace('/', "~1")
        .replace('\0', "\\0")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn storable_documents_have_no_nul() {
        let doc = json!({"a": [1, "b", {"c": null, "d": true}], "e": 1.5, "f~/g": "ok"});
        assert_eq!(first_nul(&doc), None);
        assert!(!holds_nul(&doc));
    }

    #[test]
    fn a_nul_in_a_nested_string_is_found_with_its_path() {
        let doc = json!({"a": [1, {"b": "x\u{0}y"}]});
        assert_eq!(first_nul(&doc).as_deref(), Some("/a/1/b"));
    }

    #[test]
    fn a_nul_in_a_key_is_found_and_shown_escaped() {
        let doc = json!({"client_ids": {"author\u{0}client": "m1"}});
        assert_eq!(
            first_nul(&doc).as_deref(),
            Some("/client_ids/author\\0client")
        );
    }

    #[test]
    fn pointer_tokens_escape_tilde_and_slash() {
        let doc = json!({"a/b": {"c~d": "\u{0}"}});
        assert_eq!(first_nul(&doc).as_deref(), Some("/a~1b/c~0d"));
    }

    #[test]
    fn a_bare_string_with_nul_is_found_at_the_root() {
        assert_eq!(first_nul(&json!("\u{0}")).as_deref(), Some(""));
    }
}
