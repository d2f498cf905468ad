//! Value objects of chat: each `parse` is the one place its rule lives.

use events::chat::{Attachment, Channel};

/// Longest message text, in characters (Unicode scalar values), as WhatsApp allows.
pub const MAX_TEXT_CHARS: usize = 4096;
/// Longest subject line.
pub const MAX_SUBJECT_CHARS: usize = 200;
/// Most tags on a thread.
pub const MAX_TAGS: usize = 20;
/// Longest tag.
pub const MAX_TAG_CHARS: usize = 40;
/// Longest user id, department name or other id named in a command.
pub const MAX_ID_CHARS: usize = 200;
/// Longest client-supplied message id.
pub const MAX_CLIENT_ID_CHARS: usize = 100;
/// Largest attachment a message may refer to (100 MiB, the upload limit of media).
pub const MAX_ATTACHMENT_BYTES: u64 = 100 * 1024 * 1024;

/// A message text: at most 4,096 characters, no NUL or other control characters except
/// line breaks and tabs. Empty only with an attachment (checked by the aggregate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageText(String);

impl MessageText {
    /// Parses a text as written (kept verbatim: whitespace is the author's).
    pub fn parse(raw: &str) -> Option<Self> {
        let ok = raw.chars().count() <= MAX_TEXT_CHARS
            && !raw
                .chars()
                .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'));
        ok.then(|| Self(raw.to_owned()))
    }

    /// True when it holds nothing but whitespace.
    pub fn is_blank(&self) -> bool {
        self.0.trim().is_empty()
    }

    /// The text.
    pub fn into_inner(self) -> String {
        self.0
    }
}

/// Whether `id` names a contact reached on `channel` as the platform writes them: a number
/// in E.164 (`+` and up to 15 digits); on SMS also a short code (3 to 8 digits) or an
/// alphanumeric sender id (1 to 11 letters, digits, spaces and `.-&_`, at least one letter,
/// no space at either end), which carriers deliver messages from.
pub fn contact(id: &str, channel: Channel) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if id.len() <= 16 && id.starts_with('+') && digits(&id[1..]) {
        return true;
    }
    if channel != Channel::Sms {
        return false;
    }
    let short_code = (3..=8).contains(&id.len()) && digits(id);
    let sender_id = (1..=11).contains(&id.len())
        && id.trim() == id
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || " .-&_".contains(c))
        && id.chars().any(|c| c.is_ascii_alphabetic());
    short_code || sender_id
}

/// A one-line label (a subject, a tag, an id): trimmed, 1 to `max` characters, no control
/// characters.
pub fn label(raw: &str, max: usize) -> Option<String> {
    let raw = raw.trim();
    let count = raw.chars().count();
    ((1..=max).contains(&count) && !raw.chars().any(char::is_control)).then(|| raw.to_owned())
}

/// A set of tags: each a label of at most 40 characters, compared case-insensitively
/// (kept lower-cased), at most 20, returned sorted and without duplicates.
pub fn tags(raw: &[String]) -> Option<Vec<String>> {
    let mut tags = raw
        .iter()
        // Lower-cased before the length is checked: some letters grow (`İ` is two
        // characters lower-cased), and what is kept must fit.
        .map(|t| label(&t.to_lowercase(), MAX_TAG_CHARS))
        .collect::<Option<Vec<_>>>()?;
    tags.sort_unstable();
    tags.dedup();
    (tags.len() <= MAX_TAGS).then_some(tags)
}

/// A media type an attachment may carry (`type/subtype`, each a token of at most 64
/// characters, no parameters); `None` for anything else.
pub fn media_type(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let token = |p: &str| {
        !p.is_empty()
            && p.len() <= 64
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || "!#$&-^_.+".contains(c))
    };
    raw.split_once('/')
        .is_some_and(|(t, s)| token(t) && token(s))
        .then(|| raw.to_owned())
}

/// An attachment reference: a blob key of 1–512 characters without control characters,
/// `..` segments or a leading `/`; a `type/subtype` media type; a size of 1 byte to 100 MiB;
/// a file name of 1–255 characters, kept trimmed.
pub fn attachment(mut raw: Attachment) -> Option<Attachment> {
    let key_ok = label(&raw.object_key, 512).is_some_and(|k| k == raw.object_key)
        && !raw.object_key.starts_with('/')
        && !raw.object_key.split('/').any(|s| s == ".." || s.is_empty());
    let type_ok = media_type(&raw.content_type).is_some_and(|t| t == raw.content_type);
    let name = raw.name.as_deref().map(|n| label(n, 255));
    let name_ok = name.as_ref().is_none_or(Option::is_some);
    raw.name = name.flatten();
    let size_ok = (1..=MAX_ATTACHMENT_BYTES).contains(&raw.size_bytes);
    (key_ok && type_ok && name_ok && size_ok).then_some(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_contact_is_a_number_or_on_sms_a_short_code_or_sender_id() {
        assert!(contact("+15551230001", Channel::Whatsapp));
        assert!(contact("+15551230001", Channel::Sms));
        for sms_only in ["72345", "ACME Bank", "Bank-1"] {
            assert!(contact(sms_only, Channel::Sms), "{sms_only}");
            assert!(!contact(sms_only, Channel::Whatsapp), "{sms_only}");
        }
        for never in [
            "",
            "12",
            "123456789",
            "+1555abc",
            "twelve chars",
            " ACME",
            "who?",
            "12345678901",
        ] {
            assert!(!contact(never, Channel::Sms), "{never}");
        }
    }

    #[test]
    fn message_text_allows_4096_characters_and_line_breaks_only() {
        assert!(MessageText::parse(&"é".repeat(4096)).is_some());
        assert!(MessageText::parse(&"é".repeat(4097)).is_none());
        assert!(MessageText::parse("two\nlines\tand a tab").is_some());
        assert!(MessageText::parse("nul\0").is_none());
        assert!(MessageText::parse("bell\u{7}").is_none());
        assert!(MessageText::parse("  ").is_some_and(|t| t.is_blank()));
    }

    #[test]
    fn tags_are_lower_cased_sorted_unique_and_bounded() {
        let raw = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            tags(&raw(&["VIP", "billing", "vip "])),
            Some(vec!["billing".to_owned(), "vip".to_owned()])
        );
        assert_eq!(tags(&raw(&[""])), None);
        assert_eq!(tags(&raw(&[&"x".repeat(41)])), None);
        let many: Vec<String> = (0..21).map(|i| format!("t{i}")).collect();
        assert_eq!(tags(&many), None);
        // Forty characters that lower-case to eighty are too long.
        assert_eq!(tags(&raw(&[&"İ".repeat(40)])), None);
        assert!(tags(&raw(&[&"İ".repeat(20)])).is_some());
    }

    #[test]
    fn attachments_need_a_plain_key_a_media_type_and_a_size() {
        let good = Attachment {
            object_key: "tenants/t1/media/a.png".into(),
            content_type: "image/png".into(),
            name: Some("a.png".into()),
            size_bytes: 10,
        };
        assert!(attachment(good.clone()).is_some());
        for bad in [
            Attachment {
                object_key: "../etc/passwd".into(),
                ..good.clone()
            },
            Attachment {
                object_key: "/abs".into(),
                ..good.clone()
            },
            Attachment {
                content_type: "png".into(),
                ..good.clone()
            },
            Attachment {
                size_bytes: 0,
                ..good.clone()
            },
            Attachment {
                size_bytes: MAX_ATTACHMENT_BYTES + 1,
                ..good.clone()
            },
            Attachment {
                name: Some(format!("{}x", " ".repeat(300))).map(|n| n + &"y".repeat(255)),
                ..good.clone()
            },
        ] {
            assert!(attachment(bad).is_none());
        }
        // A name is kept as its trimmed self, so what is stored is what was checked.
        let padded = Attachment {
            name: Some(format!("{}a.png ", " ".repeat(300))),
            ..good.clone()
        };
        assert_eq!(
            attachment(padded).and_then(|a| a.name).as_deref(),
            Some("a.png")
        );
    }
}
