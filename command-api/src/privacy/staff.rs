//! The store's transform of staff e-mails (docs/privacy.md, "The existing store"): the login
//! e-mail an admin user's `Created` event holds, sealed for them (under their home tenant,
//! `platform` for a super admin) as the identity context now seals it; and the admin-user
//! snapshots that keep it take it as their event now holds it.

use events::identity::PLATFORM_TENANT;
use events::keyring::{Keyring, Subject, SubjectKind};
use serde_json::Value;
use sqlx::PgPool;

use super::store::{
    adopt_sealed, in_clear, seal_text, write_changed, Pages, TransformError, Transformed,
};

/// Seals the staff e-mails still in clear, `batch` events per transaction.
pub(super) async fn seal_staff(
    pool: &PgPool,
    keyring: &Keyring,
    batch: i64,
    done: &mut Transformed,
) -> Result<(), TransformError> {
    let mut pages = Pages::new(pool, &["admin_user"], &["Created"], batch);
    while let Some(rows) = pages.next().await? {
        let mut changed = Vec::new();
        for mut row in rows {
            let created = &row.payload["Created"];
            let Some(email) = created["email"].as_str().and_then(|e| in_clear(Some(e))) else {
                continue;
            };
            let Ok(id) = uuid::Uuid::try_parse(&row.aggregate_id) else {
                continue;
            };
            let subject = Subject {
                id,
                kind: SubjectKind::AdminUser,
                tenant_id: created["tenant_id"].as_str().unwrap_or(PLATFORM_TENANT),
            };
            if let Some(sealed) = seal_text(keyring, subject, email, done).await? {
                row.payload["Created"]["email"] = Value::String(sealed);
                changed.push(row);
            }
        }
        write_changed(pool, changed, done, "staff e-mails").await?;
    }
    // An admin user's snapshot keeps their e-mail (their profile).
    done.snapshots += adopt_sealed(
        pool,
        "admin_user",
        &["email"],
        "Created",
        &["Created", "email"],
    )
    .await?;
    Ok(())
}
