//! What can be asked of a thread. Fields are raw: the aggregate parses them, so every rule
//! is decided (and tested) in one place. Every command says who asks and when, so rules
//! that depend on time (the edit window, due times) are decided on the command's clock.

use chrono::{DateTime, Utc};
use events::chat::{Attachment, Channel, Party};

/// Who issues a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// A tenant's staff member; `tenant_id` is `None` for a platform super admin, who may
    /// act on every tenant's threads.
    Staff {
        /// Admin user id.
        user_id: String,
        /// Home tenant.
        tenant_id: Option<String>,
    },
    /// A chatbot user signed in by phone.
    Phone {
        /// Phone user id.
        user_id: String,
        /// The tenant whose chatbot they use.
        tenant_id: String,
    },
    /// The platform (the scheduler delivering a due message).
    System {
        /// The component.
        component: String,
    },
}

/// What an open thread is taken from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Release {
    /// Its agent, who can no longer take conversations; its department stays.
    Agent(String),
    /// Its department, which was removed; its agent stays.
    Department(String),
}

/// A command on one thread.
#[derive(Debug, Clone, PartialEq)]
pub struct ThreadCommand {
    /// The thread (the aggregate does not know its own id; it reads its older messages by it).
    pub thread_id: String,
    /// Who asks.
    pub actor: Actor,
    /// When (the server's clock at the edge).
    pub at: DateTime<Utc>,
    /// What.
    pub action: Action,
}

/// What a command asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Open the thread.
    Open {
        /// The tenant it belongs to (a phone user's or a staff member's own tenant; a super
        /// admin names it).
        tenant_id: String,
        /// Where the customer talks.
        channel: Channel,
        /// The customer, when staff open a thread for one.
        customer: Option<Party>,
        /// A subject line.
        subject: Option<String>,
        /// Initial tags.
        tags: Vec<String>,
        /// Whether the bot answers (default: on).
        bot_enabled: Option<bool>,
    },
    /// Add a participant.
    AddParticipant {
        /// Who.
        participant: Party,
    },
    /// Assign to an agent and/or department (`None` clears).
    Assign {
        /// The agent.
        agent_id: Option<String>,
        /// The department.
        department: Option<String>,
    },
    /// Take the thread from an agent or a department that went away (the platform's
    /// reassignment worker): nothing happens unless the thread is open and still theirs.
    Release {
        /// Whom it is taken from.
        what: Release,
    },
    /// Switch the bot on or off.
    SwitchBot {
        /// On or off.
        enabled: bool,
    },
    /// Close the thread.
    Close,
    /// Reopen a closed thread.
    Reopen,
    /// Replace the tags.
    SetTags {
        /// The whole new set.
        tags: Vec<String>,
    },
    /// The platform delivers a message the thread's customer sent through its channel (an
    /// inbound SMS); it is authored by the customer. Platform only.
    Receive {
        /// The id the message gets (derived from the provider's message id, so a repeat
        /// names the same message).
        message_id: String,
        /// The text.
        text: String,
        /// The sender, as the channel names them: delivered only into a thread of that
        /// channel whose customer they are.
        from: Party,
        /// The channel it came through.
        channel: Channel,
        /// A file that came with it (an MMS's media), already in the tenant's blob store.
        attachment: Option<Attachment>,
    },
    /// Send a message.
    Send {
        /// The id the message gets (the route derives it from the client's id when given,
        /// so a retry names the same message).
        message_id: String,
        /// The client's id for de-duplication.
        client_message_id: Option<String>,
        /// The text.
        text: String,
        /// An attachment.
        attachment: Option<Attachment>,
    },
    /// Edit a message's text.
    Edit {
        /// Which message.
        message_id: String,
        /// The new text.
        text: String,
    },
    /// Delete a message.
    Delete {
        /// Which message.
        message_id: String,
    },
    /// Record that the actor has read up to message `number`.
    MarkRead {
        /// The last message read.
        number: u64,
    },
    /// Schedule a message.
    Schedule {
        /// Its id.
        scheduled_id: String,
        /// The text.
        text: String,
        /// An attachment.
        attachment: Option<Attachment>,
        /// When to deliver it.
        due_at: DateTime<Utc>,
    },
    /// Move a scheduled message.
    Reschedule {
        /// Which.
        scheduled_id: String,
        /// The new due time.
        due_at: DateTime<Utc>,
    },
    /// Cancel a scheduled message.
    CancelScheduled {
        /// Which.
        scheduled_id: String,
    },
    /// Deliver a due scheduled message (the scheduler's command).
    DeliverScheduled {
        /// Which.
        scheduled_id: String,
        /// The id the delivered message gets.
        message_id: String,
    },
    /// Give up delivering a scheduled message whose delivery kept failing (the scheduler's
    /// command).
    FailScheduled {
        /// Which.
        scheduled_id: String,
        /// Why, for people.
        reason: String,
    },
}
