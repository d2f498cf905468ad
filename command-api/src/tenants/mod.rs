//! The tenants bounded context: signup, approval, lifecycle, preferences and logo.

/// The tenant aggregate and its rules.
pub mod aggregate;
/// Commands on a tenant.
pub mod commands;
/// HTTP routes under `/v1/tenants`.
pub mod http;
/// The application layer: logo storage.
pub mod service;
/// What the aggregate needs from outside (slug uniqueness).
pub mod services;
/// The context's settings.
pub mod settings;
/// Value objects: names, slugs, e-mails, preferences, images.
pub mod values;

pub use settings::Settings;

use std::sync::Arc;

use crate::context::{BoundedContext, Setup};
use crate::store::CommandBus;

/// What the tenants context holds.
pub struct Context {
    /// Tenant commands.
    pub bus: Arc<CommandBus<aggregate::Tenant>>,
    /// Anonymous tenant sign-ups per client IP per hour.
    pub signups_per_ip: i64,
}

impl BoundedContext for Context {
    type Settings = Settings;

    async fn build(
        setup: &Setup<'_>,
        settings: &Self::Settings,
    ) -> Result<Self, crate::StartError> {
        let pool = setup.pool.clone();
        Ok(Self {
            bus: setup.bus(services::TenantServices {
                slugs: Arc::new(services::PgSlugRegistry { pool: pool.clone() }),
                members: Arc::new(services::PgDepartmentMembers { pool }),
            }),
            signups_per_ip: settings.signups_per_ip_per_hour,
        })
    }

    fn routes() -> utoipa_axum::router::OpenApiRouter<crate::AppState> {
        http::router()
    }

    fn locations() -> &'static [(&'static str, &'static str)] {
        &[(events::tenants::AGGREGATE_TYPE, "/v1/tenants")]
    }

    fn aggregates() -> &'static [crate::snapshots::Checked] {
        const ALL: &[crate::snapshots::Checked] =
            &[crate::snapshots::checked::<aggregate::Tenant>()];
        ALL
    }
}
