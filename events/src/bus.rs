//! Connecting to NATS as a service's own user. `NATS_URL` may carry the user and password
//! (`nats://projector:secret@nats:4222`, as nats/nats-server-auth.conf expects one user per
//! service); the client library does not read credentials from the URL, so they are taken
//! out here and given to it as such.

/// A NATS URL split into the address the client dials and the credentials in it.
#[derive(Clone, PartialEq, Eq)]
pub struct NatsUrl {
    /// The URL without credentials.
    pub address: String,
    /// The user, if the URL names one.
    pub user: Option<String>,
    /// The password, if the URL carries one.
    pub password: Option<String>,
}

impl std::fmt::Debug for NatsUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsUrl")
            .field("address", &self.address)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl NatsUrl {
    /// Splits `url` (percent-escapes in the credentials decoded).
    pub fn parse(url: &str) -> Self {
        let (scheme, rest) = url.split_once("://").unwrap_or(("nats", url));
        let authority_end = rest.find('/').unwrap_or(rest.len());
        let Some(at) = rest[..authority_end].rfind('@') else {
            return Self {
                address: url.to_owned(),
                user: None,
                password: None,
            };
        };
        let (credentials, host) = (&rest[..at], &rest[at + 1..]);
        let (user, password) = match credentials.split_once(':') {
            Some((u, p)) => (u, Some(p)),
            None => (credentials, None),
        };
        Self {
            address: format!("{scheme}://{host}"),
            user: Some(decode(user)).filter(|u| !u.is_empty()),
            password: password.map(decode),
        }
    }

    /// Whether a service may use it: outside development (`allow_dev`) the bus must be
    /// authenticated, with a password that is not weak ([`crate::access::weak_secret`]).
    pub fn check(&self, allow_dev: bool) -> Result<(), String> {
        if allow_dev {
            return Ok(());
        }
        match (&self.user, &self.password) {
            (Some(_), Some(password)) => match crate::access::weak_secret(password) {
                Some(why) => Err(format!(
                    "the NATS password in NATS_URL is {why}: set a random value of 32 or more \
                     characters (ALLOW_DEV_SECRETS=true accepts it on a development machine)"
                )),
                None => Ok(()),
            },
            _ => Err(
                "NATS_URL names no user and password: the bus must be authenticated \
                      (nats/nats-server-auth.conf; ALLOW_DEV_SECRETS=true accepts an open one \
                      on a development machine)"
                    .to_owned(),
            ),
        }
    }

    /// Client options carrying the credentials, and the address to dial with them. A user
    /// gets replies on inboxes of its own (`_INBOX_{user}.…`), which only it may subscribe
    /// to: with the shared `_INBOX.>`, one user could read the replies another asked for
    /// (the projector's pulls carry every event).
    pub fn options(&self) -> (async_nats::ConnectOptions, &str) {
        let options = match (&self.user, &self.password) {
            (Some(user), Some(password)) => {
                async_nats::ConnectOptions::with_user_and_password(user.clone(), password.clone())
                    .custom_inbox_prefix(inbox_prefix(user))
            }
            _ => async_nats::ConnectOptions::new(),
        };
        (options, &self.address)
    }

    /// Connects with the credentials.
    pub async fn connect(&self) -> Result<async_nats::Client, async_nats::ConnectError> {
        let (options, address) = self.options();
        options.connect(address).await
    }

    /// A client that connects in the background and keeps trying until the server answers:
    /// a service starts while the bus is down (PostgreSQL is the source of truth), reports
    /// not-ready until the connection is up, and reconnects whenever it drops.
    pub async fn connect_in_background(
        &self,
    ) -> Result<async_nats::Client, async_nats::ConnectError> {
        let (options, address) = self.options();
        options.retry_on_initial_connect().connect(address).await
    }
}

/// The inbox prefix of `user` (nats/nats-server-auth.conf lets each user subscribe to its
/// own only).
pub fn inbox_prefix(user: &str) -> String {
    format!("_INBOX_{user}")
}

/// Decodes `%XX` escapes (a password may hold `@`, `:` or `/`).
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Some(b) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::NatsUrl;

    #[test]
    fn credentials_are_taken_out_of_the_url() {
        let url = NatsUrl::parse("nats://projector:s%40cret%3A1@nats:4222");
        assert_eq!(url.address, "nats://nats:4222");
        assert_eq!(url.user.as_deref(), Some("projector"));
        assert_eq!(url.password.as_deref(), Some("s@cret:1"));
        let plain = NatsUrl::parse("nats://127.0.0.1:4222");
        assert_eq!(plain.address, "nats://127.0.0.1:4222");
        assert_eq!(plain.user, None);
        assert!(!format!("{url:?}").contains("cret"), "never printed");
    }

    #[test]
    fn outside_development_the_bus_must_be_authenticated_with_a_strong_password() {
        assert!(NatsUrl::parse("nats://nats:4222").check(false).is_err());
        assert!(NatsUrl::parse("nats://q:short@nats:4222")
            .check(false)
            .is_err());
        assert!(
            NatsUrl::parse("nats://q:dev-nats-password-change-me-please-now@n:4222")
                .check(false)
                .is_err()
        );
        let strong = "nats://q:Zq7w9rT2mK4pX8vB1nC6yH3jL5sD0fGa@nats:4222";
        assert!(NatsUrl::parse(strong).check(false).is_ok());
        assert!(NatsUrl::parse("nats://nats:4222").check(true).is_ok());
    }
}
