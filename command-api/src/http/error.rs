//! Maps command failures onto problem+json answers.

use axum::http::StatusCode;
use events::http::Problem;

use crate::store::CommandError;
use crate::tenants::aggregate::TenantError;

/// A domain error that knows its HTTP answer.
pub trait DomainProblem: std::error::Error {
    /// The problem to answer with.
    fn problem(&self) -> Problem;
}

impl DomainProblem for TenantError {
    fn problem(&self) -> Problem {
        use TenantError as E;
        let detail = self.to_string();
        match self {
            E::NotFound => Problem::not_found(detail),
            E::AlreadyExists => Problem::new(StatusCode::CONFLICT, "already_exists", detail),
            E::SlugTaken => Problem::new(StatusCode::CONFLICT, "slug_taken", detail),
            E::InvalidName => Problem::unprocessable("invalid_name", detail),
            E::InvalidSlug => Problem::unprocessable("invalid_slug", detail),
            E::InvalidEmail => Problem::unprocessable("invalid_email", detail),
            E::AlreadyApproved => Problem::unprocessable("already_approved", detail),
            E::NotPending => Problem::unprocessable("not_pending", detail),
            E::Suspended => Problem::unprocessable("tenant_suspended", detail),
            E::NotSuspended => Problem::unprocessable("not_suspended", detail),
            E::NotActive => Problem::unprocessable("not_active", detail),
            E::Rejected => Problem::unprocessable("tenant_rejected", detail),
            E::PreferencesNotObject => Problem::unprocessable("preferences_not_object", detail),
            E::PreferencesTooLarge => Problem::unprocessable("preferences_too_large", detail),
            E::PreferencesInvalid => Problem::unprocessable("preferences_invalid", detail),
            E::InvalidReason => Problem::unprocessable("invalid_reason", detail),
            E::InvalidLogo => Problem::unprocessable("invalid_logo", detail),
            E::InvalidDepartment => Problem::unprocessable("invalid_department", detail),
            E::DepartmentExists => Problem::new(StatusCode::CONFLICT, "department_exists", detail),
            E::NoSuchDepartment => Problem::not_found(detail),
            E::DepartmentInUse(_) => Problem::unprocessable("department_in_use", detail),
            E::Unavailable(cause) => Problem::unavailable(cause),
        }
    }
}

impl DomainProblem for crate::identity::aggregate::AdminUserError {
    fn problem(&self) -> Problem {
        use crate::identity::aggregate::AdminUserError as E;
        let detail = self.to_string();
        match self {
            E::NotFound => Problem::not_found(detail),
            E::AlreadyExists => Problem::new(StatusCode::CONFLICT, "already_exists", detail),
            E::EmailTaken => Problem::new(StatusCode::CONFLICT, "email_taken", detail),
            E::InvalidEmail => Problem::unprocessable("invalid_email", detail),
            E::WeakPassword => Problem::unprocessable("weak_password", detail),
            E::InvalidDepartment => Problem::unprocessable("invalid_department", detail),
            E::TenantRequired => Problem::unprocessable("tenant_required", detail),
            E::Inactive => Problem::unprocessable("user_inactive", detail),
            E::SelfDeactivation => Problem::unprocessable("cannot_deactivate_self", detail),
            E::LastSuperAdmin => Problem::unprocessable("last_super_admin", detail),
            E::Active => Problem::unprocessable("user_active", detail),
            E::WrongPassword => Problem::forbidden(detail),
            E::Locked => Problem::new(StatusCode::FORBIDDEN, "account_locked", detail),
            E::Unavailable(cause) => Problem::unavailable(cause),
        }
    }
}

impl DomainProblem for crate::identity::phone::PhoneLoginError {
    fn problem(&self) -> Problem {
        use crate::identity::phone::PhoneLoginError as E;
        match self {
            E::TooManyCodes { retry_after } => Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                self.to_string(),
            )
            .with_header(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_str(&retry_after.to_string())
                    .unwrap_or(axum::http::HeaderValue::from_static("60")),
            ),
            E::NoCode => Problem::new(StatusCode::UNAUTHORIZED, "invalid_code", self.to_string()),
            E::NotSignedIn => Problem::not_found(self.to_string()),
            E::InvalidAnonymousIds => {
                Problem::unprocessable("invalid_anonymous_ids", self.to_string())
            }
        }
    }
}

impl<E: DomainProblem> From<CommandError<E>> for Problem {
    fn from(e: CommandError<E>) -> Self {
        match e {
            CommandError::Rejected(e) => e.problem(),
            CommandError::VersionConflict { .. } => {
                Problem::new(StatusCode::CONFLICT, "version_conflict", e.to_string())
            }
            CommandError::Contention => {
                Problem::new(StatusCode::CONFLICT, "contention", e.to_string()).with_header(
                    axum::http::header::RETRY_AFTER,
                    axum::http::HeaderValue::from_static("1"),
                )
            }
            CommandError::Unavailable(cause) => Problem::unavailable(&cause),
            CommandError::Broken(incident) => Problem::incident(incident.code, incident.id),
        }
    }
}

impl DomainProblem for crate::chat::aggregate::ThreadError {
    fn problem(&self) -> Problem {
        use crate::chat::aggregate::ThreadError as E;
        let detail = self.to_string();
        let unprocessable = |code| Problem::unprocessable(code, detail.clone());
        match self {
            E::NotFound => Problem::not_found(detail),
            E::AlreadyExists => Problem::new(StatusCode::CONFLICT, "already_exists", detail),
            E::Forbidden(why) => Problem::forbidden(*why),
            E::ChannelNotAllowed => unprocessable("channel_not_allowed"),
            E::NotTheSendersThread => {
                Problem::new(StatusCode::CONFLICT, "not_the_senders_thread", detail)
            }
            E::InvalidSubject => unprocessable("invalid_subject"),
            E::InvalidTags => unprocessable("invalid_tags"),
            E::TextTooLong => unprocessable("message_too_long"),
            E::InvalidText => unprocessable("invalid_text"),
            E::EmptyMessage => unprocessable("empty_message"),
            E::InvalidAttachment => unprocessable("invalid_attachment"),
            E::InvalidClientMessageId => unprocessable("invalid_client_message_id"),
            E::UnknownCustomer => unprocessable("unknown_customer"),
            E::UnknownAgent => unprocessable("unknown_agent"),
            E::AgentUnavailable => unprocessable("agent_unavailable"),
            E::UnknownDepartment => unprocessable("unknown_department"),
            E::InvalidParticipant => unprocessable("invalid_participant"),
            E::MessageNotFound => Problem::new(StatusCode::NOT_FOUND, "message_not_found", detail),
            E::UnknownMessageNumber => unprocessable("unknown_message_number"),
            E::NotAuthor => Problem::new(StatusCode::FORBIDDEN, "not_author", detail),
            E::EditWindowClosed => unprocessable("edit_window_closed"),
            E::MessageDeleted => unprocessable("message_deleted"),
            E::DueInPast => unprocessable("due_in_past"),
            E::DueTooFar => unprocessable("due_too_far"),
            E::ScheduledNotFound => {
                Problem::new(StatusCode::NOT_FOUND, "scheduled_message_not_found", detail)
            }
            E::ScheduleNotPending => unprocessable("schedule_not_pending"),
            E::NotDue => Problem::new(StatusCode::CONFLICT, "not_due", detail),
            E::Unavailable(cause) => Problem::unavailable(cause),
        }
    }
}

impl DomainProblem for crate::payments::catalog::CatalogError {
    fn problem(&self) -> Problem {
        use crate::payments::catalog::CatalogError as E;
        let detail = self.to_string();
        let code = match self {
            E::InvalidId => "invalid_item_id",
            E::InvalidName => "invalid_name",
            E::InvalidRate => "invalid_rate",
            E::InvalidPrice => "invalid_price",
            E::InvalidCurrency => "invalid_currency",
            E::UnknownTax => "unknown_tax",
        };
        Problem::unprocessable(code, detail)
    }
}

impl DomainProblem for crate::payments::aggregate::PaymentError {
    fn problem(&self) -> Problem {
        use crate::payments::aggregate::PaymentError as E;
        let detail = self.to_string();
        let unprocessable = |code| Problem::unprocessable(code, detail.clone());
        match self {
            E::NotFound => Problem::not_found(detail),
            E::AlreadyExists => Problem::new(StatusCode::CONFLICT, "already_exists", detail),
            E::LinkExists => Problem::new(StatusCode::CONFLICT, "link_exists", detail),
            E::InvalidCurrency => unprocessable("invalid_currency"),
            E::InvalidLines => unprocessable("invalid_lines"),
            E::UnknownProduct => unprocessable("unknown_product"),
            E::InactiveProduct => unprocessable("inactive_product"),
            E::CurrencyMismatch => unprocessable("currency_mismatch"),
            E::InvalidAmount => unprocessable("invalid_amount"),
            E::InvalidCustomerReference => unprocessable("invalid_customer_reference"),
            E::InvalidDescription => unprocessable("invalid_description"),
            E::NotAwaitingLink => unprocessable("not_awaiting_link"),
            E::NotCancellable => unprocessable("not_cancellable"),
            E::InvalidReason => unprocessable("invalid_reason"),
        }
    }
}

impl DomainProblem for crate::webhooks::aggregate::WebhookError {
    fn problem(&self) -> Problem {
        match self {
            crate::webhooks::aggregate::WebhookError::NotFound => {
                Problem::not_found(self.to_string())
            }
        }
    }
}

impl DomainProblem for crate::telephony::aggregate::PhoneNumberError {
    fn problem(&self) -> Problem {
        use crate::telephony::aggregate::PhoneNumberError as E;
        match self {
            E::Taken => Problem::new(StatusCode::CONFLICT, "number_taken", self.to_string()),
            E::NotFound => Problem::not_found(self.to_string()),
        }
    }
}

impl DomainProblem for crate::audio::aggregate::AudioError {
    fn problem(&self) -> Problem {
        use crate::audio::aggregate::AudioError as E;
        match self {
            E::NotFound => Problem::not_found(self.to_string()),
            E::AlreadyExists => {
                Problem::new(StatusCode::CONFLICT, "already_exists", self.to_string())
            }
            E::AlreadyTranscribed => Problem::new(
                StatusCode::CONFLICT,
                "already_transcribed",
                self.to_string(),
            ),
        }
    }
}
