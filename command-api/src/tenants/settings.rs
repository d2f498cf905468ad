//! The tenants context's settings.

/// Default of [`Settings::signups_per_ip_per_hour`].
const SIGNUPS_PER_IP_PER_HOUR: i64 = 5;

/// The tenants context's settings.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
#[group(skip)]
pub struct Settings {
    /// Anonymous tenant sign-ups a client IP may make per hour (`/v1/tenants/signup`).
    #[arg(long, env = "SIGNUPS_PER_IP_PER_HOUR", default_value_t = SIGNUPS_PER_IP_PER_HOUR)]
    pub signups_per_ip_per_hour: i64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            signups_per_ip_per_hour: SIGNUPS_PER_IP_PER_HOUR,
        }
    }
}
