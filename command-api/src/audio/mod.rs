//! The audio context: uploaded audio files and their transcripts (AssemblyAI).

/// The audio aggregate and its rules.
pub mod aggregate;
/// The AssemblyAI client.
pub mod assemblyai;
/// HTTP: extract, call the service, answer.
pub mod http;
/// What a recording holds of the person it is about.
pub mod personal;
/// The application layer: transcription requests, checks, webhooks.
pub mod service;
/// The context's settings.
pub mod settings;
/// Uploads streamed to the blob store, checked as they arrive.
pub mod upload;
/// AssemblyAI's webhooks (their [`crate::webhooks::provider::WebhookProvider`]).
pub mod webhooks;

pub use settings::Settings;

use std::sync::Arc;

use crate::context::{BoundedContext, Setup};
use crate::store::CommandBus;
use crate::webhooks::provider::WebhookProvider;

/// What the audio context holds.
pub struct Context {
    /// Audio-file commands.
    pub files: Arc<CommandBus<aggregate::Audio>>,
    /// The AssemblyAI client, when an API key and `BACKEND_URL` are configured.
    pub assemblyai: Option<assemblyai::AssemblyAi>,
    /// Files being sent to the transcription service at once by this process: a request is
    /// claimed only with a free slot (the rest stay due), so a burst of large files shares
    /// the link a few at a time instead of all timing out together.
    pub transcription_slots: Arc<tokio::sync::Semaphore>,
    /// Audio uploads per user per hour.
    pub uploads_per_user: i64,
    /// Mebibytes of audio per user per day.
    pub mib_per_user_per_day: i64,
}

impl BoundedContext for Context {
    type Settings = Settings;

    async fn build(
        setup: &Setup<'_>,
        settings: &Self::Settings,
    ) -> Result<Self, crate::StartError> {
        let config = setup.config;
        Ok(Self {
            files: setup.bus(()),
            assemblyai: settings
                .assemblyai_account(config.public_base(), config.auth_secret().ok())
                .map(assemblyai::AssemblyAi::new),
            transcription_slots: Arc::new(tokio::sync::Semaphore::new(
                service::TRANSCRIPTION_SLOTS,
            )),
            uploads_per_user: settings.audio_uploads_per_user_per_hour,
            mib_per_user_per_day: settings.audio_upload_mib_per_user_per_day,
        })
    }

    fn routes() -> utoipa_axum::router::OpenApiRouter<crate::AppState> {
        http::router()
    }

    fn webhook_providers() -> &'static [&'static dyn WebhookProvider] {
        &[&webhooks::ASSEMBLYAI]
    }

    fn locations() -> &'static [(&'static str, &'static str)] {
        &[(events::audio::AUDIO, "/v1/audio")]
    }

    fn aggregates() -> &'static [crate::snapshots::Checked] {
        const ALL: &[crate::snapshots::Checked] =
            &[crate::snapshots::checked::<aggregate::Audio>()];
        ALL
    }
}
