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
//!
//! What every *reader* can decode is narrower: `serde_json` refuses a document nested more
//! than 128 arrays or objects deep, and the envelope the relay publishes nests an event's
//! payload three levels further down. A stored event nested past that stops whoever reads
//! it (docs/architecture.md, "Limits on what is stored"). So bodies the APIs accept are
//! held to [`MAX_REQUEST_DEPTH`] ([`nesting_exceeds`] checks the raw bytes before anything
//! is parsed), and every event is held to [`MAX_EVENT_DEPTH`] and [`MAX_EVENT_BYTES`] at
//! the append ([`depth`]), whatever command produced it.

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

/// How deeply a JSON body an API accepts may nest arrays and objects (422 `json_too_deep`
/// beyond). Generous for any real document, and far enough below [`MAX_EVENT_DEPTH`] that the
/// event carrying a body's value stays readable.
pub const MAX_REQUEST_DEPTH: usize = 32;

/// How deeply a stored event's payload may nest: with the envelope around it, well inside the
/// 128 levels every `serde_json` reader decodes.
pub const MAX_EVENT_DEPTH: usize = 64;

/// The largest event (payload and metadata as JSON text) the store accepts: with its envelope
/// it stays under the bus's default message limit of 1 MiB, with room to spare.
pub const MAX_EVENT_BYTES: usize = 512 * 1024;

/// The nesting depth of `value`: 0 for a scalar, 1 for a flat array or object, and one more
/// for each level inside. Recursive, which is safe for any `Value` `serde_json` built (it
/// refuses documents past 128 levels).
pub fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => 0,
    }
}

/// The length of `value` written as compact JSON text, counted as it is written rather than
/// built (every append measures its events: no copy of each is made for that).
pub fn encoded_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a `Value` into a sink that never fails cannot fail.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// Whether the JSON text `bytes` opens more than `max` arrays or objects inside each other,
/// found in one pass over the bytes without parsing them (brackets inside strings do not
/// count). Text that is not JSON is only judged by its brackets: parsing it fails later.
pub fn nesting_exceeds(bytes: &[u8], max: usize) -> bool {
    let (mut level, mut in_string, mut escaped) = (0usize, false, false);
    for &b in bytes {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                level += 1;
                if level > max {
                    return true;
                }
            }
            b']' | b'}' => level = level.saturating_sub(1),
            _ => {}
        }
    }
    false
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

    fn nested(levels: usize) -> String {
        format!("{}1{}", "[".repeat(levels), "]".repeat(levels))
    }

    #[test]
    fn depth_counts_arrays_and_objects_inside_each_other() {
        assert_eq!(depth(&json!("x")), 0);
        assert_eq!(depth(&json!({})), 1);
        assert_eq!(depth(&json!({"a": [1, {"b": []}], "c": 2})), 4);
        let deep: Value = serde_json::from_str(&nested(100)).expect("nested");
        assert_eq!(depth(&deep), 100);
    }

    #[test]
    fn the_encoded_length_is_that_of_the_compact_text() {
        let doc = json!({"a": [1, "é", {"b": null}], "c": "x".repeat(1000)});
        assert_eq!(
            encoded_len(&doc),
            serde_json::to_vec(&doc).expect("encodes").len()
        );
    }

    #[test]
    fn nesting_is_measured_on_the_raw_text() {
        assert!(!nesting_exceeds(nested(32).as_bytes(), 32));
        assert!(nesting_exceeds(nested(33).as_bytes(), 32));
        let objects = format!("{}{}", r#"{"a":"#.repeat(40), "}".repeat(40));
        assert!(nesting_exceeds(objects.as_bytes(), 32));
        // Siblings do not add up: only what is inside what.
        let wide = format!("[{}]", vec!["[[1]]"; 100].join(","));
        assert!(!nesting_exceeds(wide.as_bytes(), 3));
        assert!(nesting_exceeds(wide.as_bytes(), 2));
    }

    #[test]
    fn brackets_inside_strings_do_not_count() {
        let text = format!(
            r#"{{"a": "{}", "b": "\"{}"}}"#,
            "[".repeat(100),
            "{".repeat(100)
        );
        assert!(!nesting_exceeds(text.as_bytes(), 1));
        assert!(nesting_exceeds(text.as_bytes(), 0));
    }

    #[test]
    fn a_bare_string_with_nul_is_found_at_the_root() {
        assert_eq!(first_nul(&json!("\u{0}")).as_deref(), Some(""));
    }
}
