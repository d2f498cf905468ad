//! The dev inbox's settings.

/// The dev inbox's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
#[group(skip)]
pub struct Settings {
    /// Serve `/v1/dev/inbox` (captured outbound messages, which may hold one-time codes).
    #[arg(long, env = "DEV_INBOX_ENABLED", default_value_t = false, action = clap::ArgAction::Set)]
    pub dev_inbox_enabled: bool,
}
