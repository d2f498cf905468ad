//! The identity bounded context: admin users, their logins, sessions and tokens.

/// The admin-user aggregate and its rules.
pub mod aggregate;
/// One password check at a time per admin user.
pub mod attempts;
/// `/auth/admin/*` and `/auth/introspect`.
pub mod auth;
/// The first super admin.
pub mod bootstrap;
/// `/v1/admin-users…`.
pub mod http;
/// Phone sign-in for chatbot users: the `phone_login` aggregate.
pub mod phone;
/// `/auth/phone/*`.
pub mod phone_auth;
/// Phone sign-in's application layer: codes issued and verified.
pub mod phone_signin;
/// The command side's record of phone users: numbers and profiles, out of events.
pub mod phone_users;
/// The application layer for admin users: who manages whom, placements, password resets.
pub mod service;
/// E-mail reservations and password hashes.
pub mod services;
/// Refresh-token families.
pub mod sessions;
/// The context's settings.
pub mod settings;
/// Admins' credentials: logins, refresh, password changes and resets.
pub mod signin;

pub use settings::Settings;

use std::sync::Arc;

use crate::context::{BoundedContext, Setup};
use crate::store::CommandBus;
use crate::StartError;

/// What the identity context holds.
pub struct Context {
    /// Admin-user commands.
    pub admins: Arc<CommandBus<aggregate::AdminUser>>,
    /// One password check at a time per admin user.
    pub password_attempts: attempts::PasswordAttempts,
    /// Refresh-token families.
    pub sessions: sessions::Sessions,
    /// Access-token lifetime.
    pub token_ttl: std::time::Duration,
    /// An argon2 hash checked against when a login names an unknown e-mail, so that
    /// answer takes as long as a wrong password.
    pub dummy_hash: Arc<String>,
    /// Phone sign-in commands.
    pub phone_logins: Arc<CommandBus<phone::PhoneLogin>>,
    /// Keyed hashes of phone sign-ins.
    pub phone_keys: phone::PhoneKeys,
    /// Codes a client IP may request per hour.
    pub otp_per_ip: i64,
    /// Refused admin logins per client IP per hour.
    pub login_failures_per_ip: i64,
}

impl BoundedContext for Context {
    type Settings = Settings;

    /// Also creates the bootstrap super admin, when the settings name one.
    async fn build(setup: &Setup<'_>, settings: &Self::Settings) -> Result<Self, StartError> {
        let (config, pool) = (setup.config, setup.pool);
        let admins = setup.bus(Arc::new(services::PgIdentity {
            pool: pool.clone(),
            keyring: setup.keyring.clone(),
            metrics: setup.metrics.clone(),
        }) as services::Identity);
        if let Some((email, password)) = settings.bootstrap_admin()? {
            bootstrap::ensure_super_admin(pool, &admins, email, password)
                .await
                .map_err(StartError::Bootstrap)?;
        }
        let dummy_hash = services::hash_password("not anybody's password")
            .await
            .map_err(StartError::Bootstrap)?;
        Ok(Self {
            admins,
            password_attempts: attempts::PasswordAttempts::new(pool, 4),
            sessions: sessions::Sessions::new(pool.clone(), settings.refresh_ttl()?)
                .with_limit(settings.sessions_per_user),
            token_ttl: config.token_ttl()?,
            dummy_hash: Arc::new(dummy_hash),
            phone_logins: setup.bus(()),
            phone_keys: phone::PhoneKeys::new(config.auth_secret()?),
            otp_per_ip: settings.otp_requests_per_ip_per_hour,
            login_failures_per_ip: settings.login_failures_per_ip_per_hour,
        })
    }

    fn routes() -> utoipa_axum::router::OpenApiRouter<crate::AppState> {
        http::router()
    }

    fn sign_in_routes() -> utoipa_axum::router::OpenApiRouter<crate::AppState> {
        auth::router().merge(phone_auth::router())
    }

    fn aggregates() -> &'static [crate::snapshots::Checked] {
        const ALL: &[crate::snapshots::Checked] = &[
            crate::snapshots::checked::<aggregate::AdminUser>(),
            crate::snapshots::checked::<phone::PhoneLogin>(),
        ];
        ALL
    }
}
