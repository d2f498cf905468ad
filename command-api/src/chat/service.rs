//! The chat context's application layer, for its routes and for the contexts that post in
//! threads (audio transcripts): who a caller acts as, which tenant a thread command is
//! recorded under, and the ids of new messages.

use events::access::Principal;
use events::http::Problem;
use uuid::Uuid;

use super::aggregate::ThreadError;
use super::commands::Actor;
use crate::http::error::DomainProblem;
use crate::http::idempotency::KeyedRequest;
use crate::AppState;

/// The actor a token speaks for.
pub fn actor(who: &Principal) -> Actor {
    match who {
        Principal::Admin {
            user_id, tenant_id, ..
        } => Actor::Staff {
            user_id: user_id.clone(),
            tenant_id: if who.is_super_admin() {
                None
            } else {
                tenant_id.clone()
            },
        },
        Principal::Phone { user_id, tenant_id } => Actor::Phone {
            user_id: user_id.clone(),
            tenant_id: tenant_id.clone(),
        },
        Principal::Service { name } => Actor::System {
            component: name.clone(),
        },
    }
}

/// The tenant a command on thread `id` is recorded under: the caller's own, or, for a super
/// admin or a platform component, the thread's.
pub async fn tenant_of(state: &AppState, who: &Principal, id: &str) -> Result<String, Problem> {
    match who {
        Principal::Phone { tenant_id, .. } => Ok(tenant_id.clone()),
        Principal::Admin {
            tenant_id: Some(home),
            ..
        } if !who.is_super_admin() => Ok(home.clone()),
        // A thread's tenant never changes: the bus's copy answers without a statement.
        _ => state
            .ctx
            .chat
            .threads
            .read_settled(id, |thread| thread.tenant_id().map(str::to_owned))
            .await?
            .ok_or_else(|| ThreadError::NotFound.problem()),
    }
}

/// The id a new item (message, scheduled message) of thread `thread` gets: derived from the
/// client's id when given (per author), else from the Idempotency-Key, else fresh.
pub fn item_id(
    thread: &str,
    author: &str,
    client_id: Option<&str>,
    keyed: Option<&KeyedRequest>,
) -> String {
    match (client_id, keyed) {
        (Some(c), _) => {
            let name = format!("{thread}\u{0}{author}\u{0}{c}");
            Uuid::new_v5(&Uuid::NAMESPACE_OID, name.as_bytes())
        }
        (None, Some(k)) => k.derived_id(),
        (None, None) => Uuid::now_v7(),
    }
    .to_string()
}
