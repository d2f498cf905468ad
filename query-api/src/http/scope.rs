//! Whose rows a staff member reads: the one rule every staff list shares.

use events::access::{Principal, Role};
use events::http::Problem;
use uuid::Uuid;

/// The tenant a staff member reads `what` of: their own (403 naming another); a super admin
/// the one named, or every tenant's (`None`); anyone else 403.
pub fn staff_scope(
    who: &Principal,
    asked: Option<Uuid>,
    what: &str,
) -> Result<Option<String>, Problem> {
    match who {
        _ if who.is_super_admin() => Ok(asked.map(|t| t.to_string())),
        Principal::Admin {
            tenant_id: Some(home),
            ..
        } => match asked {
            Some(t) if t.to_string() != *home => Err(Problem::forbidden(format!(
                "You may only read your own tenant's {what}."
            ))),
            _ => Ok(Some(home.clone())),
        },
        _ => Err(Problem::forbidden(format!(
            "Only the tenant's staff read {what}."
        ))),
    }
}

/// The tenant an administrator's list reads: a super admin any (`asked`, or all when
/// `None`), a tenant admin their own (403 when naming another). Anyone else (agents,
/// customers, services) is refused with 403: `what` names what they may not read.
pub(crate) fn admin_scope(
    who: &Principal,
    asked: Option<String>,
    what: &str,
) -> Result<Option<String>, Problem> {
    match who {
        _ if who.is_super_admin() => Ok(asked),
        Principal::Admin {
            role: Role::TenantAdmin,
            tenant_id: Some(home),
            ..
        } => match asked {
            Some(t) if &t != home => Err(Problem::forbidden(format!(
                "You may only read your own tenant's {what}."
            ))),
            _ => Ok(Some(home.clone())),
        },
        _ => Err(Problem::forbidden(format!(
            "Only administrators read {what}."
        ))),
    }
}
