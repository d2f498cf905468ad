//! What a conversation holds of its contact, sealed for them (docs/privacy.md): their
//! WhatsApp id (their number), the profile name WhatsApp reports, what they write and what
//! is written to them. The aggregate decides on plain text; its events are sealed on their
//! way to the store ([`seal`]), and the few decisions that compare with a past message's
//! content open it first ([`open_outbound`]).

use events::personal::{is_sealed, ERASED};
use events::whatsapp::{ConversationEvent, Outbound};
use uuid::Uuid;

use super::aggregate::{ConversationError, ConversationServices};

/// A personal text of `content`, each in turn: a text's body, a file's caption, file name and
/// link, a template's parameters (its name and language are the tenant's, not the contact's).
fn texts_mut(content: &mut Outbound) -> Vec<&mut String> {
    match content {
        Outbound::Text { body, .. } => vec![body],
        Outbound::Media {
            link,
            caption,
            filename,
            ..
        } => std::iter::once(link)
            .chain(caption.as_mut())
            .chain(filename.as_mut())
            .collect(),
        Outbound::File {
            caption, filename, ..
        } => caption.iter_mut().chain(filename.as_mut()).collect(),
        Outbound::Template { parameters, .. } => parameters.iter_mut().collect(),
    }
}

/// Whether any personal text of `content` is sealed.
pub fn outbound_sealed(content: &Outbound) -> bool {
    texts_mut(&mut content.clone())
        .into_iter()
        .any(|t| is_sealed(t))
}

/// Whether `content` (opened) reads `[erased]`: its contact was erased.
pub fn outbound_erased(content: &Outbound) -> bool {
    texts_mut(&mut content.clone())
        .into_iter()
        .any(|t| t == ERASED)
}

/// `content` with every personal text `[erased]` (its kind, file and template name kept):
/// what is recorded of a reply that was never sent because its contact was erased.
pub fn withheld(content: &Outbound) -> Outbound {
    let mut withheld = content.clone();
    for text in texts_mut(&mut withheld) {
        *text = ERASED.to_owned();
    }
    withheld
}

/// `content` with its personal texts opened (`[erased]` once the contact's keys are gone).
pub async fn open_outbound(
    content: &Outbound,
    services: &ConversationServices,
) -> Result<Outbound, ConversationError> {
    let mut opened = content.clone();
    for text in texts_mut(&mut opened) {
        *text = services
            .open(text)
            .await
            .map_err(ConversationError::Unavailable)?;
    }
    Ok(opened)
}

/// `events` with every personal field sealed for the conversation's contact `subject` of
/// `tenant_id`. Empty texts stay empty (they say nothing).
pub async fn seal(
    events: Vec<ConversationEvent>,
    tenant_id: &str,
    subject: Option<Uuid>,
    services: &ConversationServices,
) -> Result<Vec<ConversationEvent>, ConversationError> {
    use ConversationEvent as E;
    let personal = |e: &ConversationEvent| {
        matches!(
            e,
            E::Started { .. }
                | E::MessageReceived { .. }
                | E::MessageQueued { .. }
                | E::MessageRevised { .. }
        )
    };
    if !events.iter().any(personal) {
        return Ok(events);
    }
    let subject = subject.ok_or(ConversationError::ContactErased)?;
    let sealer = Sealer {
        tenant_id,
        subject,
        services,
    };
    let mut sealed = Vec::with_capacity(events.len());
    for mut event in events {
        match &mut event {
            E::Started { wa_id, .. } => sealer.text(wa_id).await?,
            E::MessageReceived {
                profile_name,
                content,
                text,
                ..
            } => {
                if let Some(name) = profile_name {
                    sealer.text(name).await?;
                }
                sealer.text(text).await?;
                // The provider's object, sealed whole as its JSON text: every value in it
                // (a location's coordinates as much as a caption) is the contact's.
                if !content.is_null() {
                    let mut json = content.to_string();
                    sealer.text(&mut json).await?;
                    if is_sealed(&json) {
                        *content = serde_json::Value::String(json);
                    }
                }
            }
            E::MessageQueued { content, .. } | E::MessageRevised { content, .. } => {
                for text in texts_mut(content) {
                    sealer.text(text).await?;
                }
            }
            _ => {}
        }
        sealed.push(event);
    }
    Ok(sealed)
}

/// Seals texts for one contact.
struct Sealer<'a> {
    /// The tenant.
    tenant_id: &'a str,
    /// The contact.
    subject: Uuid,
    /// The keys.
    services: &'a ConversationServices,
}

impl Sealer<'_> {
    /// Seals `text` in place (an empty text says nothing: it stays). Whatever it looks
    /// like: the events it is in were decided from plain text.
    async fn text(&self, text: &mut String) -> Result<(), ConversationError> {
        if text.is_empty() {
            return Ok(());
        }
        *text = self
            .services
            .seal(self.tenant_id, self.subject, text)
            .await?;
        Ok(())
    }
}
