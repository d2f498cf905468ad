//! Subjects are `{prefix}.{tenant_id}.{aggregate_type}.{event_type}`; the prefix is `events`
//! in production and unique per test run, so test streams never overlap.

/// The default subject prefix and stream name of the platform.
pub const DEFAULT_PREFIX: &str = "events";
/// The default JetStream stream that holds every committed event.
pub const DEFAULT_STREAM: &str = "EVENTS";

/// The subject an event is published on.
pub fn event_subject(
    prefix: &str,
    tenant_id: &str,
    aggregate_type: &str,
    event_type: &str,
) -> String {
    format!(
        "{prefix}.{}.{}.{}",
        token(tenant_id),
        token(aggregate_type),
        token(event_type)
    )
}

/// A filter matching every event of one aggregate type, for any tenant.
pub fn aggregate_filter(prefix: &str, aggregate_type: &str) -> String {
    format!("{prefix}.*.{}.>", token(aggregate_type))
}

/// The JetStream de-duplication id: one per committed event, stable across re-publishes.
pub fn message_id(aggregate_type: &str, aggregate_id: &str, sequence: u64) -> String {
    format!("{aggregate_type}:{aggregate_id}:{sequence}")
}

/// Subject tokens may not contain `.`, `*`, `>` or whitespace; ids and type names never
/// should, but a stray one must not change which subscribers see the event.
fn token(raw: &str) -> String {
    if raw.is_empty() {
        return "_".to_owned();
    }
    raw.chars()
        .map(|c| match c {
            '.' | '*' | '>' => '_',
            c if c.is_whitespace() => '_',
            c => c,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_has_four_tokens_after_prefix() {
        assert_eq!(
            event_subject("events", "t1", "tenant", "Renamed"),
            "events.t1.tenant.Renamed"
        );
    }

    #[test]
    fn subject_tokens_cannot_be_widened_by_wildcards() {
        assert_eq!(
            event_subject("events", "a.b", "x*", "y >"),
            "events.a_b.x_.y__"
        );
        assert_eq!(event_subject("events", "", "t", "e"), "events._.t.e");
    }

    #[test]
    fn message_id_names_aggregate_and_sequence() {
        assert_eq!(message_id("tenant", "abc", 7), "tenant:abc:7");
    }
}
