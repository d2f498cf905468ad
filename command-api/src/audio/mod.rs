//! The audio context: uploaded audio files and their transcripts (AssemblyAI).

/// The audio aggregate and its rules.
pub mod aggregate;
/// The AssemblyAI client.
pub mod assemblyai;
/// HTTP routes under `/v1/audio`, and the processing of AssemblyAI's webhooks.
pub mod routes;
/// AssemblyAI's webhooks (their [`crate::webhooks::provider::WebhookProvider`]).
pub mod webhooks;
