//! Phone sign-in for chatbot users: the `phone_login` aggregate decides every rule about
//! one-time codes — 5 minutes of validity, 5 tries, a 60 s cooldown between codes, at most 5
//! codes an hour — from its own events. The code itself is never stored: only its keyed
//! hash, in the event that issued it.

use chrono::{DateTime, Duration, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use events::identity::{PhoneLoginEvent, PHONE_LOGIN};
use serde::{Deserialize, Serialize};

/// How long a code works.
pub const CODE_TTL: Duration = Duration::minutes(5);
/// Tries per code.
pub const ATTEMPTS: u32 = 5;
/// Shortest wait between two codes for one phone.
pub const COOLDOWN: Duration = Duration::seconds(60);
/// Codes per phone per hour.
pub const CODES_PER_HOUR: usize = 5;

/// A phone number in E.164: `+` and 8 to 15 digits, the first not 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhoneNumber(String);

impl PhoneNumber {
    /// Parses a number written with spaces, dots, dashes or brackets, starting with `+` or
    /// the international prefix `00`. Numbers without a country code are refused rather
    /// than guessed.
    pub fn parse(raw: &str) -> Option<Self> {
        let compact: String = raw
            .trim()
            .chars()
            .filter(|c| !matches!(c, ' ' | '.' | '-' | '(' | ')'))
            .collect();
        let digits = compact
            .strip_prefix('+')
            .or_else(|| compact.strip_prefix("00"))?;
        let ok = (8..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0');
        ok.then(|| Self(format!("+{digits}")))
    }

    /// The E.164 form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

pub use events::identity::PhoneKeys;

/// Compares two hashes in constant time.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// A command on one phone sign-in.
#[derive(Debug, Clone, PartialEq)]
pub enum PhoneLoginCommand {
    /// Issue a code (generated and hashed at the edge, which sends it).
    RequestCode {
        /// Keyed hash of the new code.
        code_hash: String,
        /// The edge's clock.
        at: DateTime<Utc>,
    },
    /// Record a profile change (made in `phone_users`).
    RecordProfileChange {
        /// The fields that changed.
        fields: Vec<String>,
    },
    /// Link anonymous sessions to the signed-in user.
    LinkAnonymous {
        /// Their ids (1–50, each 1–128 visible ASCII characters).
        anonymous_ids: Vec<String>,
        /// Those the platform issued as anonymous sessions and the caller proved it held:
        /// only these are linked (anyone could name another's id).
        issued: std::collections::BTreeSet<String>,
    },
    /// Try a code.
    Verify {
        /// Keyed hash of the code given.
        code_hash: String,
        /// The phone user this sign-in is for.
        user_id: String,
        /// The edge's clock.
        at: DateTime<Utc>,
    },
}

/// The current code.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Challenge {
    code_hash: String,
    expires_at: DateTime<Utc>,
    attempts_left: u32,
}

/// The state the rules need.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PhoneLogin {
    /// Codes issued in the last hour.
    issued: Vec<DateTime<Utc>>,
    /// The code that may still be tried.
    current: Option<Challenge>,
    /// Signed in at least once.
    verified: bool,
    /// Anonymous sessions already linked.
    linked: Vec<String>,
}

/// Why a phone-login command was refused. Each variant's doc names its HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneLoginError {
    /// 429 with `Retry-After`: too soon after the last code, or too many codes this hour.
    #[error("too many codes requested; retry in {retry_after} s")]
    TooManyCodes {
        /// Seconds until a code may be requested.
        retry_after: i64,
    },
    /// 401: no code may be tried (none issued, expired, or out of tries).
    #[error("the code is invalid or has expired")]
    NoCode,
    /// 404: the phone user never signed in.
    #[error("the phone user has never signed in")]
    NotSignedIn,
    /// 422: anonymous ids must be 1–50 ids of 1–128 visible ASCII characters.
    #[error("anonymous_ids must be 1 to 50 ids of 1 to 128 visible ASCII characters")]
    InvalidAnonymousIds,
}

impl PhoneLogin {
    /// A code issued, unless the cooldown since the last one or the hourly count says wait.
    fn code(
        &self,
        code_hash: String,
        at: DateTime<Utc>,
    ) -> Result<PhoneLoginEvent, PhoneLoginError> {
        let recent: Vec<&DateTime<Utc>> = self
            .issued
            .iter()
            .filter(|t| **t > at - Duration::hours(1))
            .collect();
        let cooldown_ends = recent.iter().map(|t| **t + COOLDOWN).max();
        let hour_frees = (recent.len() >= CODES_PER_HOUR)
            .then(|| recent.iter().map(|t| **t + Duration::hours(1)).min())
            .flatten();
        let wait_until = [cooldown_ends, hour_frees]
            .into_iter()
            .flatten()
            .filter(|t| *t > at)
            .max();
        if let Some(until) = wait_until {
            return Err(PhoneLoginError::TooManyCodes {
                retry_after: (until - at).num_seconds().max(1),
            });
        }
        Ok(PhoneLoginEvent::CodeIssued {
            code_hash,
            at,
            expires_at: at + CODE_TTL,
        })
    }

    /// Anonymous sessions the signed-in user proves they held, linked once each (`None`
    /// when every one was linked before).
    fn link(
        &self,
        anonymous_ids: Vec<String>,
        issued: &std::collections::BTreeSet<String>,
    ) -> Result<Option<PhoneLoginEvent>, PhoneLoginError> {
        if !self.verified {
            return Err(PhoneLoginError::NotSignedIn);
        }
        let valid = (1..=50).contains(&anonymous_ids.len())
            && anonymous_ids.iter().all(|id| {
                (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic())
            });
        if !valid {
            return Err(PhoneLoginError::InvalidAnonymousIds);
        }
        // Linking is idempotent: only ids not linked before are recorded.
        let mut new: Vec<String> = anonymous_ids
            .into_iter()
            .filter(|id| issued.contains(id) && !self.linked.contains(id))
            .collect();
        new.sort();
        new.dedup();
        if new.is_empty() {
            return Ok(None);
        }
        Ok(Some(PhoneLoginEvent::AnonymousLinked {
            anonymous_ids: new,
        }))
    }
}

impl Aggregate for PhoneLogin {
    const TYPE: &'static str = PHONE_LOGIN;
    type Command = PhoneLoginCommand;
    type Event = PhoneLoginEvent;
    type Error = PhoneLoginError;
    type Services = ();

    async fn handle(
        &mut self,
        command: PhoneLoginCommand,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), PhoneLoginError> {
        let event = match command {
            PhoneLoginCommand::RequestCode { code_hash, at } => self.code(code_hash, at)?,
            PhoneLoginCommand::RecordProfileChange { fields } => {
                if !self.verified {
                    return Err(PhoneLoginError::NotSignedIn);
                }
                if fields.is_empty() {
                    return Ok(());
                }
                PhoneLoginEvent::ProfileUpdated { fields }
            }
            PhoneLoginCommand::LinkAnonymous {
                anonymous_ids,
                issued,
            } => match self.link(anonymous_ids, &issued)? {
                Some(event) => event,
                // Linking is idempotent: nothing new, nothing recorded.
                None => return Ok(()),
            },
            PhoneLoginCommand::Verify {
                code_hash,
                user_id,
                at,
            } => {
                let Some(challenge) = self
                    .current
                    .as_ref()
                    .filter(|c| at < c.expires_at && c.attempts_left > 0)
                else {
                    return Err(PhoneLoginError::NoCode);
                };
                if same(&challenge.code_hash, &code_hash) {
                    PhoneLoginEvent::CodeVerified { user_id, at }
                } else {
                    PhoneLoginEvent::CodeRejected {
                        at,
                        attempts_left: challenge.attempts_left - 1,
                    }
                }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: PhoneLoginEvent) {
        match event {
            PhoneLoginEvent::CodeIssued {
                code_hash,
                at,
                expires_at,
            } => {
                self.issued.retain(|t| *t > at - Duration::hours(1));
                self.issued.push(at);
                self.current = Some(Challenge {
                    code_hash,
                    expires_at,
                    attempts_left: ATTEMPTS,
                });
            }
            PhoneLoginEvent::CodeRejected { attempts_left, .. } => {
                if let Some(c) = self.current.as_mut() {
                    c.attempts_left = attempts_left;
                }
            }
            // A code works once.
            PhoneLoginEvent::CodeVerified { .. } => {
                self.current = None;
                self.verified = true;
            }
            PhoneLoginEvent::ProfileUpdated { .. } => {}
            PhoneLoginEvent::AnonymousLinked { anonymous_ids } => self.linked.extend(anonymous_ids),
        }
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;

    use super::*;

    fn at(second: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(1_800_000_000 + second, 0).unwrap_or_default()
    }

    fn issued(second: i64, hash: &str) -> PhoneLoginEvent {
        PhoneLoginEvent::CodeIssued {
            code_hash: hash.into(),
            at: at(second),
            expires_at: at(second) + CODE_TTL,
        }
    }

    fn request(second: i64) -> PhoneLoginCommand {
        PhoneLoginCommand::RequestCode {
            code_hash: "h".into(),
            at: at(second),
        }
    }

    fn verify(hash: &str, second: i64) -> PhoneLoginCommand {
        PhoneLoginCommand::Verify {
            code_hash: hash.into(),
            user_id: "u".into(),
            at: at(second),
        }
    }

    fn given(events: Vec<PhoneLoginEvent>) -> cqrs_es::test::AggregateTestExecutor<PhoneLogin> {
        TestFramework::<PhoneLogin>::with(()).given(events)
    }

    #[tokio::test]
    async fn request_code_issues_one_valid_for_five_minutes() {
        given(vec![])
            .when_async(request(0))
            .await
            .then_expect_events(vec![issued(0, "h")]);
    }

    #[tokio::test]
    async fn request_code_within_the_cooldown_is_refused_with_the_wait() {
        given(vec![issued(0, "a")])
            .when_async(request(45))
            .await
            .then_expect_error(PhoneLoginError::TooManyCodes { retry_after: 15 });
        given(vec![issued(0, "a")])
            .when_async(request(60))
            .await
            .then_expect_events(vec![issued(60, "h")]);
    }

    #[tokio::test]
    async fn request_code_sixth_in_an_hour_is_refused_until_the_first_ages_out() {
        let five = (0..5).map(|i| issued(i * 120, "a")).collect::<Vec<_>>();
        given(five.clone())
            .when_async(request(700))
            .await
            .then_expect_error(PhoneLoginError::TooManyCodes { retry_after: 2900 });
        given(five)
            .when_async(request(3600))
            .await
            .then_expect_events(vec![issued(3600, "h")]);
    }

    #[tokio::test]
    async fn verify_with_the_right_code_signs_in_once() {
        given(vec![issued(0, "good")])
            .when_async(verify("good", 10))
            .await
            .then_expect_events(vec![PhoneLoginEvent::CodeVerified {
                user_id: "u".into(),
                at: at(10),
            }]);
        given(vec![
            issued(0, "good"),
            PhoneLoginEvent::CodeVerified {
                user_id: "u".into(),
                at: at(10),
            },
        ])
        .when_async(verify("good", 20))
        .await
        .then_expect_error(PhoneLoginError::NoCode);
    }

    #[tokio::test]
    async fn verify_with_a_wrong_code_counts_down_the_tries() {
        given(vec![issued(0, "good")])
            .when_async(verify("bad", 10))
            .await
            .then_expect_events(vec![PhoneLoginEvent::CodeRejected {
                at: at(10),
                attempts_left: 4,
            }]);
    }

    #[tokio::test]
    async fn verify_after_five_wrong_codes_is_refused_even_with_the_right_one() {
        let mut events = vec![issued(0, "good")];
        events.extend((0..5u32).map(|i| PhoneLoginEvent::CodeRejected {
            at: at(i64::from(i)),
            attempts_left: 4 - i,
        }));
        given(events)
            .when_async(verify("good", 10))
            .await
            .then_expect_error(PhoneLoginError::NoCode);
    }

    #[tokio::test]
    async fn verify_after_five_minutes_is_refused() {
        given(vec![issued(0, "good")])
            .when_async(verify("good", 300))
            .await
            .then_expect_error(PhoneLoginError::NoCode);
        given(vec![])
            .when_async(verify("good", 0))
            .await
            .then_expect_error(PhoneLoginError::NoCode);
    }

    #[tokio::test]
    async fn a_new_code_replaces_the_old_one() {
        given(vec![issued(0, "old"), issued(60, "new")])
            .when_async(verify("old", 70))
            .await
            .then_expect_events(vec![PhoneLoginEvent::CodeRejected {
                at: at(70),
                attempts_left: 4,
            }]);
    }

    fn verified() -> PhoneLoginEvent {
        PhoneLoginEvent::CodeVerified {
            user_id: "u".into(),
            at: at(10),
        }
    }

    #[tokio::test]
    async fn profile_changes_and_links_need_a_signed_in_user() {
        let fields = PhoneLoginCommand::RecordProfileChange {
            fields: vec!["locale".into()],
        };
        given(vec![issued(0, "h")])
            .when_async(fields.clone())
            .await
            .then_expect_error(PhoneLoginError::NotSignedIn);
        given(vec![issued(0, "h"), verified()])
            .when_async(fields)
            .await
            .then_expect_events(vec![PhoneLoginEvent::ProfileUpdated {
                fields: vec!["locale".into()],
            }]);
    }

    #[tokio::test]
    async fn link_anonymous_records_only_new_ids() {
        let link = |ids: &[&str]| PhoneLoginCommand::LinkAnonymous {
            anonymous_ids: ids.iter().map(|s| (*s).to_owned()).collect(),
            issued: ids.iter().map(|s| (*s).to_owned()).collect(),
        };
        let linked = PhoneLoginEvent::AnonymousLinked {
            anonymous_ids: vec!["a1".into()],
        };
        given(vec![issued(0, "h"), verified(), linked.clone()])
            .when_async(link(&["a1", "b2", "b2"]))
            .await
            .then_expect_events(vec![PhoneLoginEvent::AnonymousLinked {
                anonymous_ids: vec!["b2".into()],
            }]);
        given(vec![issued(0, "h"), verified(), linked])
            .when_async(link(&["a1"]))
            .await
            .then_expect_events(vec![]);
        given(vec![issued(0, "h"), verified()])
            .when_async(link(&[]))
            .await
            .then_expect_error(PhoneLoginError::InvalidAnonymousIds);
        // An id the platform did not issue to the caller is never linked.
        given(vec![issued(0, "h"), verified()])
            .when_async(PhoneLoginCommand::LinkAnonymous {
                anonymous_ids: vec!["someone-elses".into()],
                issued: Default::default(),
            })
            .await
            .then_expect_events(vec![]);
        given(vec![issued(0, "h"), verified()])
            .when_async(link(&["has space"]))
            .await
            .then_expect_error(PhoneLoginError::InvalidAnonymousIds);
    }

    #[test]
    fn phone_numbers_are_normalised_to_e164() {
        for (raw, e164) in [
            ("+33 6 12 34 56 78", "+33612345678"),
            ("0033-6.12.34.56.78", "+33612345678"),
            ("+1 (415) 555-0100", "+14155550100"),
        ] {
            assert_eq!(
                PhoneNumber::parse(raw).map(|p| p.0),
                Some(e164.to_owned()),
                "{raw}"
            );
        }
        for bad in [
            "0612345678",
            "+0612345678",
            "+33 6 12 AB 56 78",
            "+1234567",
            "+1234567890123456",
            "",
            "phone",
        ] {
            assert_eq!(PhoneNumber::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn keyed_ids_are_stable_and_reveal_nothing() {
        let keys = PhoneKeys::new("secret");
        let phone = PhoneNumber::parse("+33612345678").expect("valid");
        assert_eq!(
            keys.login_id("t1", phone.as_str()),
            keys.login_id("t1", phone.as_str())
        );
        assert_ne!(
            keys.login_id("t1", phone.as_str()),
            keys.login_id("t2", phone.as_str())
        );
        assert!(!keys.login_id("t1", phone.as_str()).contains("612345678"));
        assert_ne!(
            PhoneKeys::new("other").login_id("t1", phone.as_str()),
            keys.login_id("t1", phone.as_str())
        );
        assert!(uuid::Uuid::parse_str(&keys.user_id("t1", phone.as_str())).is_ok());
        assert_ne!(keys.code_hash("l", "123456"), keys.code_hash("l", "123457"));
    }
}
