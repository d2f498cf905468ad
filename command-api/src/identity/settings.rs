//! The identity context's settings.

use crate::config::ConfigError;

/// Default of [`Settings::refresh_token_expires_in`].
const REFRESH_TOKEN_EXPIRES_IN: &str = "30d";
/// Default of [`Settings::sessions_per_user`].
const SESSIONS_PER_USER: i64 = 20;
/// Default of [`Settings::otp_requests_per_ip_per_hour`].
const OTP_REQUESTS_PER_IP_PER_HOUR: i64 = 20;
/// Default of [`Settings::login_failures_per_ip_per_hour`].
const LOGIN_FAILURES_PER_IP_PER_HOUR: i64 = 100;

/// The identity context's settings.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
#[group(skip)]
pub struct Settings {
    /// Lifetime of refresh tokens.
    #[arg(long, env = "REFRESH_TOKEN_EXPIRES_IN", default_value = REFRESH_TOKEN_EXPIRES_IN)]
    pub refresh_token_expires_in: String,
    /// Sessions one admin user may hold at once: a new sign-in beyond it ends the user's
    /// least recently used session.
    #[arg(long, env = "SESSIONS_PER_USER", default_value_t = SESSIONS_PER_USER)]
    pub sessions_per_user: i64,
    /// On start, create this super admin if no admin user has this e-mail.
    #[arg(long, env = "ADMIN_BOOTSTRAP_EMAIL")]
    pub admin_bootstrap_email: Option<String>,
    /// Password of the bootstrap super admin.
    #[arg(long, env = "ADMIN_BOOTSTRAP_PASSWORD", hide_env_values = true)]
    pub admin_bootstrap_password: Option<String>,
    /// Codes a client IP may request per hour (`/auth/phone/request`).
    #[arg(
        long,
        env = "OTP_REQUESTS_PER_IP_PER_HOUR",
        default_value_t = OTP_REQUESTS_PER_IP_PER_HOUR
    )]
    pub otp_requests_per_ip_per_hour: i64,
    /// Refused admin logins a client IP may have per hour (`/auth/admin/login`); beyond, its
    /// logins answer 429 until the hour ends, and add nothing to anyone's history.
    #[arg(
        long,
        env = "LOGIN_FAILURES_PER_IP_PER_HOUR",
        default_value_t = LOGIN_FAILURES_PER_IP_PER_HOUR
    )]
    pub login_failures_per_ip_per_hour: i64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            refresh_token_expires_in: REFRESH_TOKEN_EXPIRES_IN.to_owned(),
            sessions_per_user: SESSIONS_PER_USER,
            admin_bootstrap_email: None,
            admin_bootstrap_password: None,
            otp_requests_per_ip_per_hour: OTP_REQUESTS_PER_IP_PER_HOUR,
            login_failures_per_ip_per_hour: LOGIN_FAILURES_PER_IP_PER_HOUR,
        }
    }
}

impl Settings {
    /// Refresh-token lifetime.
    pub fn refresh_ttl(&self) -> Result<std::time::Duration, ConfigError> {
        crate::values::parse_duration(&self.refresh_token_expires_in)
            .ok_or(ConfigError::BadDuration("REFRESH_TOKEN_EXPIRES_IN"))
    }

    /// The bootstrap super admin, if configured.
    pub fn bootstrap_admin(&self) -> Result<Option<(&str, &str)>, ConfigError> {
        match (
            self.admin_bootstrap_email.as_deref(),
            self.admin_bootstrap_password.as_deref(),
        ) {
            (Some(e), Some(p)) if !e.is_empty() => Ok(Some((e, p))),
            (None, None) => Ok(None),
            _ => Err(ConfigError::HalfBootstrap),
        }
    }
}
