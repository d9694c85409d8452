//! `ipgate admin …`: the operator's side, working on the same store as the gateway.
//!
//! Each command returns one JSON value (printed as is with `--json`) and a plain
//! rendering for people. Keys are generated here, shown once and never stored.
//!
//! This file holds the command line's shape, the errors and the dispatch; each
//! command family lives in its own file: [`users`] (`user`, `key`), [`credentials`]
//! (`credential`, `wildcard`), [`ips`] (`ip`), [`audit`] (`usage`, `audit`),
//! [`report`], [`console_link`] and [`server_key`].

mod audit;
mod console_link;
mod credentials;
mod ips;
pub mod manual;
mod report;
mod server_key;
mod table;
mod users;

pub use report::ReportCommand;
pub use users::generate_key;

use crate::config::{Config, StoreConfig};
use crate::store::{self, Actor, Change, Page, Store, StoreError, Target};
use clap::Subcommand;
use serde_json::{json, Value};

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Creates the store `store.url` names (the SQLite file, or the schema in an empty
    /// PostgreSQL database); an existing one is left as it is. Every other command
    /// refuses a missing store instead of creating an empty one.
    Init,
    /// Users own credentials.
    #[command(subcommand)]
    User(UserCommand),
    /// API keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Credentials (what a key is bound to).
    #[command(subcommand)]
    Credential(CredentialCommand),
    /// The operator-only "*" entry that admits every address (ACTIVE credentials only).
    Wildcard {
        /// Set or clear it.
        #[arg(value_enum)]
        action: WildcardAction,
        /// The credential.
        credential_id: u64,
    },
    /// A credential's permitted IPs.
    #[command(subcommand)]
    Ip(IpCommand),
    /// ACTIVE entries per credential that is not revoked: what is billed.
    Usage {
        /// Only this user's credentials.
        #[arg(long)]
        user: Option<u64>,
    },
    /// What the gateways saw: refused addresses, unused entries, a list to review.
    #[command(subcommand)]
    Report(ReportCommand),
    /// Prints the public key (PEM) of auth.response_signing_key, for key holders:
    /// bunq's SDKs verify the management API's answers with it.
    ServerPublicKey,
    /// A short-lived, single-use link that opens the console for one credential, for
    /// an owner who is locked out. Printed once; audited when minted and when used.
    ConsoleLink {
        /// The credential the link opens.
        #[arg(long = "credential")]
        credential_id: u64,
        /// How long the link works (1s to 24h).
        #[arg(long, default_value = "15m")]
        ttl: String,
        /// The gateway's public address as key holders reach it (https://gw.example),
        /// to print a whole URL instead of a path.
        #[arg(long)]
        base_url: Option<String>,
    },
    /// The audit log, newest first.
    Audit {
        /// Only changes to this credential.
        #[arg(long = "credential")]
        credential_id: Option<u64>,
        /// How many entries at most.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Adds a user and prints its id.
    Add {
        /// A name to recognise the user by (not unique, not used to log in).
        #[arg(long)]
        name: Option<String>,
    },
    /// Lists every user, newest first.
    List,
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Creates a key for a user and prints it, once. The key must be registered with
    /// POST /v1/device-server within auth.registration_window.
    Create {
        /// The user the key belongs to.
        #[arg(long)]
        user: u64,
        /// What the key is for, shown in listings.
        #[arg(long)]
        description: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum CredentialCommand {
    /// Lists a user's credentials with their status (PENDING_FIRST_USE, ACTIVE,
    /// EXPIRED: not registered in time, REVOKED).
    List {
        /// The user whose credentials to list.
        #[arg(long)]
        user: u64,
    },
    /// Revokes a credential for good.
    Revoke {
        /// The credential to revoke.
        credential_id: u64,
    },
    /// How its list is applied. `shadow`: a valid key from an address that is not
    /// ACTIVE is let through (marked `X-Ipgate-Enforcement: shadow`, counted and
    /// logged) instead of refused; see `report suggest`. `enforce`: refused again.
    Mode {
        /// The credential.
        credential_id: u64,
        /// enforce or shadow.
        #[arg(value_parser = ["enforce", "shadow"])]
        mode: String,
    },
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum WildcardAction {
    /// Admit every address.
    Set,
    /// Admit only the ACTIVE entries again.
    Clear,
}

#[derive(Debug, Subcommand)]
pub enum IpCommand {
    /// Lists every entry, ACTIVE and INACTIVE, newest first.
    List {
        /// The credential whose entries to list.
        credential_id: u64,
    },
    /// Adds an entry and prints its id.
    Add {
        /// The credential to add it to.
        credential_id: u64,
        /// One IPv4 or IPv6 address (not a network, not "*").
        ip: String,
        /// ACTIVE (admits the address) or INACTIVE.
        #[arg(long, default_value = "ACTIVE", value_parser = ["ACTIVE", "INACTIVE"])]
        status: String,
    },
    /// Changes an entry's status.
    SetStatus {
        /// The credential the entry is on.
        credential_id: u64,
        /// The entry.
        item_id: u64,
        /// ACTIVE or INACTIVE.
        #[arg(value_parser = ["ACTIVE", "INACTIVE"])]
        status: String,
    },
}

/// What a command printed, both ways.
pub struct Output {
    pub json: Value,
    pub plain: String,
}

#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Input(String),
    #[error("key generation failed: {0}")]
    Random(String),
    #[error(
        "no ipgate store at {at}: create it with `ipgate admin init` (or by starting \
         `ipgate serve`), or correct store.url in the configuration"
    )]
    NoStore { at: String },
}

impl OperatorError {
    /// A short, stable name for scripts: `not_found`, `rejected`, `input`, `store`.
    pub fn kind(&self) -> &'static str {
        match self {
            OperatorError::NotFound { .. } | OperatorError::Store(StoreError::NotFound(_)) => {
                "not_found"
            }
            OperatorError::Store(StoreError::Rejected(_)) => "rejected",
            OperatorError::Input(_) => "input",
            OperatorError::NoStore { .. } => "no_store",
            OperatorError::Store(_) | OperatorError::Random(_) => "store",
        }
    }

    /// The error as the one JSON object `--json` prints.
    pub fn to_json(&self) -> Value {
        json!({ "error": { "kind": self.kind(), "message": self.message() } })
    }

    /// What went wrong and why, in one line: a store's own words included ("store
    /// unavailable" alone tells an operator nothing).
    pub fn message(&self) -> String {
        crate::logging::error_chain_with(self)
    }
}

/// `store_error` as a missing `what` with this id, when that is what it says.
fn missing(what: &'static str, id: u64) -> impl FnOnce(StoreError) -> OperatorError {
    move |e| match e {
        StoreError::NotFound(_) => OperatorError::NotFound { what, id },
        other => OperatorError::Store(other),
    }
}

/// Longest operator name kept in the audit log.
const MAX_ACTOR: usize = 64;

/// The audit log's name for the operator running this command: `admin:NAME` for
/// `--actor NAME`, else `$SUDO_USER` (who ran sudo), else `$USER`, else plain `admin`.
pub fn operator_actor(given: Option<&str>) -> Result<Actor, OperatorError> {
    let from_env = || {
        ["SUDO_USER", "USER"]
            .into_iter()
            .filter_map(|v| std::env::var(v).ok())
            .find(|v| !v.is_empty())
    };
    let name = match given {
        Some(name) => name.to_owned(),
        None => match from_env() {
            Some(name) => name,
            None => return Ok(Actor::admin()),
        },
    };
    let fits = !name.is_empty()
        && name.len() <= MAX_ACTOR
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b));
    if !fits {
        return Err(OperatorError::Input(format!(
            "the actor {name:?} must be 1 to {MAX_ACTOR} letters, digits or . _ @ -"
        )));
    }
    Ok(Actor::operator(&name))
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// What every command works with.
struct Context<'a> {
    store: &'a dyn Store,
    config: &'a Config,
    actor: &'a Actor,
}

impl Context<'_> {
    async fn change(&self, id: u64, change: Change) -> Result<store::Changed, OperatorError> {
        let max_ips = self.config.limits.max_ips_per_credential;
        // A change that changes nothing (revoking twice, a status it already has)
        // succeeds without an audit row or a new version: the store plans nothing.
        Ok(self
            .store
            .change(Target::Id(id), change, max_ips, self.actor)
            .await
            .map_err(missing("credential", id))?
            .value)
    }

    async fn need_user(&self, id: u64) -> Result<store::User, OperatorError> {
        self.store.user(id).await.map_err(missing("user", id))
    }

    async fn need_credential(&self, id: u64) -> Result<store::Credential, OperatorError> {
        self.store
            .credential(id)
            .await
            .map_err(missing("credential", id))
    }
}

/// The store `config` names, for the operator: `sqlite /absolute/path/ipgate.db` (a
/// relative path tells nothing when the config came from elsewhere) or
/// `postgres://user@host:port/db` (never a password).
pub fn store_location(config: &StoreConfig) -> String {
    match config {
        StoreConfig::Sqlite(c) => {
            let path = std::path::absolute(&c.path).unwrap_or_else(|_| c.path.clone());
            format!("sqlite {}", path.display())
        }
        StoreConfig::Postgres(_) => config.describe(),
    }
}

/// Runs one command as `actor` (the audit log's name for the operator). Only `init`
/// may create the store; every other command on a missing one fails with
/// [`OperatorError::NoStore`].
pub async fn run(
    command: AdminCommand,
    config: &Config,
    actor: &Actor,
) -> Result<Output, OperatorError> {
    // Needs no store: a gateway's key can be handed out while its database is down.
    if let AdminCommand::ServerPublicKey = command {
        return server_key::server_public_key(config);
    }
    let no_store = |e| match e {
        OperatorError::Store(StoreError::Missing(_)) => OperatorError::NoStore {
            at: store_location(&config.store),
        },
        e => e,
    };
    if let AdminCommand::Init = command {
        return init(config).await.map_err(no_store);
    }
    let store = store::open_existing(&config.store)?;
    let cx = Context {
        store: store.as_ref(),
        config,
        actor,
    };
    dispatch(&cx, command).await.map_err(no_store)
}

/// `admin init`: whether the store was there is found out without creating it; only
/// then is it opened to be created.
async fn init(config: &Config) -> Result<Output, OperatorError> {
    let at = store_location(&config.store);
    let created = match store::open_existing(&config.store)?
        .users(Page::first(1))
        .await
    {
        Ok(_) => false,
        Err(StoreError::Missing(_)) => {
            store::open(&config.store)?.users(Page::first(1)).await?;
            true
        }
        Err(e) => return Err(e.into()),
    };
    let plain = if created {
        format!("created the store {at}")
    } else {
        format!("the store {at} exists already (brought up to date)")
    };
    Ok(Output {
        plain,
        json: json!({ "store": at, "created": created }),
    })
}

async fn dispatch(cx: &Context<'_>, command: AdminCommand) -> Result<Output, OperatorError> {
    match command {
        AdminCommand::Init => init(cx.config).await,
        AdminCommand::User(UserCommand::Add { name }) => users::user_add(cx, name).await,
        AdminCommand::User(UserCommand::List) => users::user_list(cx).await,
        AdminCommand::Key(KeyCommand::Create { user, description }) => {
            users::key_create(cx, user, description).await
        }
        AdminCommand::Credential(CredentialCommand::List { user }) => {
            credentials::credential_list(cx, user).await
        }
        AdminCommand::Credential(CredentialCommand::Revoke { credential_id }) => {
            credentials::credential_revoke(cx, credential_id).await
        }
        AdminCommand::Credential(CredentialCommand::Mode {
            credential_id,
            mode,
        }) => credentials::credential_mode(cx, credential_id, &mode).await,
        AdminCommand::Report(command) => report::run(cx, command).await,
        AdminCommand::Wildcard {
            action,
            credential_id,
        } => credentials::wildcard(cx, action, credential_id).await,
        AdminCommand::Ip(IpCommand::List { credential_id }) => {
            ips::ip_list(cx, credential_id).await
        }
        AdminCommand::Ip(IpCommand::Add {
            credential_id,
            ip,
            status,
        }) => ips::ip_add(cx, credential_id, &ip, &status).await,
        AdminCommand::Ip(IpCommand::SetStatus {
            credential_id,
            item_id,
            status,
        }) => ips::ip_set_status(cx, credential_id, item_id, &status).await,
        AdminCommand::Usage { user } => audit::usage(cx, user).await,
        AdminCommand::Audit {
            credential_id,
            limit,
        } => audit::audit(cx, credential_id, limit).await,
        AdminCommand::ServerPublicKey => server_key::server_public_key(cx.config),
        AdminCommand::ConsoleLink {
            credential_id,
            ttl,
            base_url,
        } => console_link::console_link(cx, credential_id, &ttl, base_url.as_deref()).await,
    }
}

fn or_dash(v: Option<impl std::fmt::Display>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operator_is_named_in_the_audit_log() {
        assert_eq!(operator_actor(Some("alice")).unwrap().who, "admin:alice");
        assert_eq!(
            operator_actor(Some("ops.bot@x")).unwrap().who,
            "admin:ops.bot@x"
        );
        for bad in ["", "a b", "x\ny", &"a".repeat(MAX_ACTOR + 1)] {
            assert!(operator_actor(Some(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn errors_as_json_name_their_kind() {
        let e = OperatorError::NotFound {
            what: "user",
            id: 999,
        };
        assert_eq!(
            e.to_json(),
            json!({"error": {"kind": "not_found", "message": "user 999 not found"}})
        );
    }
}
