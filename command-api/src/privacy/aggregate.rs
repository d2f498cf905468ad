//! The data-subject aggregate (id = the subject's UUID): whether the subject was erased.
//! Erasing twice appends nothing the second time.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use events::privacy::{SubjectEvent, DATA_SUBJECT};
use serde::{Deserialize, Serialize};

/// A command on a data subject.
#[derive(Debug, Clone, PartialEq)]
pub enum SubjectCommand {
    /// Erase the subject of `tenant_id`.
    Erase {
        /// The subject's tenant.
        tenant_id: String,
        /// Its kind.
        kind: String,
        /// Who asks.
        by: String,
        /// When.
        at: DateTime<Utc>,
    },
}

/// Why a data-subject command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    /// 404: the subject was erased as another tenant's (a subject belongs to one tenant).
    #[error("data subject not found")]
    NotFound,
}

/// A data subject (also the snapshot form).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DataSubject {
    /// The tenant it was erased for, once erased.
    erased_for: Option<String>,
}

impl Aggregate for DataSubject {
    const TYPE: &'static str = DATA_SUBJECT;
    type Command = SubjectCommand;
    type Event = SubjectEvent;
    type Error = SubjectError;
    type Services = ();

    async fn handle(
        &mut self,
        command: SubjectCommand,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), SubjectError> {
        let SubjectCommand::Erase {
            tenant_id,
            kind,
            by,
            at,
        } = command;
        match &self.erased_for {
            Some(tenant) if *tenant == tenant_id => Ok(()),
            Some(_) => Err(SubjectError::NotFound),
            None => {
                let event = SubjectEvent::Erased {
                    tenant_id,
                    kind,
                    by,
                    at,
                };
                sink.write(event, self).await;
                Ok(())
            }
        }
    }

    fn apply(&mut self, event: SubjectEvent) {
        match event {
            SubjectEvent::Erased { tenant_id, .. } => self.erased_for = Some(tenant_id),
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use cqrs_es::test::TestFramework;

    use super::*;

    fn at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 7, 12, 0, 0)
            .single()
            .unwrap_or_default()
    }

    fn erase(tenant: &str) -> SubjectCommand {
        SubjectCommand::Erase {
            tenant_id: tenant.into(),
            kind: "phone_user".into(),
            by: "admin-1".into(),
            at: at(),
        }
    }

    fn erased(tenant: &str) -> SubjectEvent {
        SubjectEvent::Erased {
            tenant_id: tenant.into(),
            kind: "phone_user".into(),
            by: "admin-1".into(),
            at: at(),
        }
    }

    #[tokio::test]
    async fn erase_a_subject_records_the_erasure() {
        TestFramework::<DataSubject>::with(())
            .given_no_previous_events()
            .when_async(erase("t1"))
            .await
            .then_expect_events(vec![erased("t1")]);
    }

    #[tokio::test]
    async fn erase_an_erased_subject_appends_nothing() {
        TestFramework::<DataSubject>::with(())
            .given(vec![erased("t1")])
            .when_async(erase("t1"))
            .await
            .then_expect_events(vec![]);
    }

    #[tokio::test]
    async fn erase_a_subject_erased_for_another_tenant_is_not_found() {
        TestFramework::<DataSubject>::with(())
            .given(vec![erased("t1")])
            .when_async(erase("t2"))
            .await
            .then_expect_error(SubjectError::NotFound);
    }
}
