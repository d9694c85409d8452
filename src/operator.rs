//! `ipgate admin …`: the operator's side, working on the same store as the gateway.
//!
//! Each command returns one JSON value (printed as is with `--json`) and a plain
//! rendering for people. Keys are generated here, shown once and never stored.

use crate::acl::{ApiKey, KEY_PREFIX};
use crate::config::Config;
use crate::store::{
    self, Actor, Change, IpStatus, NewCredential, Page, StoreError, Target, Timestamp,
};
use clap::Subcommand;
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::net::IpAddr;

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Users own credentials.
    #[command(subcommand)]
    User(UserCommand),
    /// API keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Credentials (what a key is bound to).
    #[command(subcommand)]
    Credential(CredentialCommand),
    /// The operator-only "*" entry that admits every address.
    Wildcard {
        #[arg(value_enum)]
        action: WildcardAction,
        credential_id: u64,
    },
    /// A credential's permitted IPs.
    #[command(subcommand)]
    Ip(IpCommand),
    /// ACTIVE entries per credential: what is billed.
    Usage {
        #[arg(long)]
        user: Option<u64>,
    },
    /// The audit log, newest first.
    Audit {
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
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Creates a key for a user and prints it, once. The key must be registered with
    /// POST /v1/device-server within auth.registration_window.
    Create {
        #[arg(long)]
        user: u64,
        #[arg(long)]
        description: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum CredentialCommand {
    /// Lists a user's credentials.
    List {
        #[arg(long)]
        user: u64,
    },
    /// Revokes a credential for good.
    Revoke { credential_id: u64 },
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum WildcardAction {
    Set,
    Clear,
}

#[derive(Debug, Subcommand)]
pub enum IpCommand {
    /// Lists every entry, ACTIVE and INACTIVE.
    List { credential_id: u64 },
    /// Adds an entry and prints its id.
    Add {
        credential_id: u64,
        ip: String,
        #[arg(long, default_value = "ACTIVE")]
        status: String,
    },
    /// Changes an entry's status.
    SetStatus {
        credential_id: u64,
        item_id: u64,
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
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Input(String),
    #[error("key generation failed: {0}")]
    Random(String),
}

/// Characters of a key after its prefix: base62, so a double click selects it whole.
const KEY_ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// 43 base62 characters carry 256.03 bits; with the prefix a key is 47 bytes, which
/// SHA-256 hashes in one block (a 64-character hex key took two).
const KEY_CHARS: usize = 43;

/// 256 bits from the OS, base62, behind the recognisable prefix. Each character is
/// drawn uniformly: bytes of 248 and above (248 = 4 x 62) are thrown away, not folded.
pub fn generate_key() -> Result<ApiKey, OperatorError> {
    let mut key = String::with_capacity(KEY_PREFIX.len() + KEY_CHARS);
    key.push_str(KEY_PREFIX);
    let mut drawn = 0;
    while drawn < KEY_CHARS {
        let mut bytes = [0u8; 64];
        getrandom::fill(&mut bytes).map_err(|e| OperatorError::Random(e.to_string()))?;
        for b in bytes
            .into_iter()
            .filter(|b| *b < 248)
            .take(KEY_CHARS - drawn)
        {
            key.push(char::from(KEY_ALPHABET[usize::from(b % 62)]));
            drawn += 1;
        }
    }
    Ok(ApiKey::new(key))
}

fn parse_status(s: &str) -> Result<IpStatus, OperatorError> {
    s.parse().map_err(OperatorError::Input)
}

fn parse_ip(s: &str) -> Result<IpAddr, OperatorError> {
    if s.trim() == "*" {
        return Err(OperatorError::Input(
            "\"*\" is not an address; use `ipgate admin wildcard set CREDENTIAL_ID`".into(),
        ));
    }
    s.trim()
        .parse()
        .map_err(|_| OperatorError::Input(format!("{s:?} is not a single IPv4 or IPv6 address")))
}

/// The entry an entry change was about.
fn entry_of(changed: store::Changed) -> Result<store::PermittedIp, OperatorError> {
    changed
        .entry
        .ok_or(OperatorError::Store(StoreError::NotFound("permitted IP")))
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

pub async fn run(command: AdminCommand, config: &Config) -> Result<Output, OperatorError> {
    let store = store::open(&config.store)?;
    let store = store.as_ref();
    let admin = Actor::admin();
    let max_ips = config.limits.max_ips_per_credential;
    let change = |id: u64, change: Change| store.change(Target::Id(id), change, max_ips, &admin);
    Ok(match command {
        AdminCommand::User(UserCommand::Add { name }) => {
            let user = store.add_user(name, &admin).await?.value;
            Output {
                plain: user.id.to_string(),
                json: to_value(&user),
            }
        }
        AdminCommand::Key(KeyCommand::Create { user, description }) => {
            store.user(user).await?;
            let key = generate_key()?;
            let expiry = Timestamp::now().plus(config.auth.registration_window);
            let credential = store
                .create_credential(
                    NewCredential {
                        user_id: user,
                        key: key.hash(),
                        description,
                        expiry,
                    },
                    &admin,
                )
                .await?
                .value;
            Output {
                plain: key.expose().to_owned(),
                json: json!({
                    "credential_id": credential.id,
                    "user_id": credential.user_id,
                    "key": key.expose(),
                    "expiry_time": credential.expiry_time,
                }),
            }
        }
        AdminCommand::Credential(CredentialCommand::List { user }) => {
            store.user(user).await?;
            let list = store.credentials(user, Page::all()).await?;
            let mut plain = String::from("ID\tSTATUS\tWILDCARD\tEXPIRY\tDEVICE\tDESCRIPTION");
            for c in &list {
                write!(
                    plain,
                    "\n{}\t{}\t{}\t{}\t{}\t{}",
                    c.id,
                    c.status,
                    if c.wildcard { "*" } else { "-" },
                    c.expiry_time.map_or("-".into(), |t| t.to_string()),
                    c.permitted_device
                        .as_ref()
                        .map_or("-".into(), |d| format!("{} ({})", d.description, d.ip)),
                    c.description.as_deref().unwrap_or("-"),
                )
                .expect("write to String");
            }
            Output {
                plain,
                json: to_value(&list),
            }
        }
        AdminCommand::Credential(CredentialCommand::Revoke { credential_id }) => {
            let c = change(credential_id, Change::Revoke)
                .await?
                .value
                .credential;
            Output {
                plain: format!("credential {} is {}", c.id, c.status),
                json: to_value(&c),
            }
        }
        AdminCommand::Wildcard {
            action,
            credential_id,
        } => {
            let on = matches!(action, WildcardAction::Set);
            let c = change(credential_id, Change::Wildcard(on))
                .await?
                .value
                .credential;
            Output {
                plain: format!(
                    "credential {}: wildcard {}",
                    c.id,
                    if c.wildcard {
                        "set (every address admitted)"
                    } else {
                        "cleared"
                    }
                ),
                json: to_value(&c),
            }
        }
        AdminCommand::Ip(IpCommand::List { credential_id }) => {
            let c = store.credential(credential_id).await?;
            let list = store.ips(credential_id, Page::all()).await?;
            let mut plain = String::from("ID\tIP\tSTATUS\tCREATED\tUPDATED");
            if c.wildcard {
                plain.push_str("\n-\t*\tACTIVE\t-\t- (operator wildcard)");
            }
            for p in &list {
                write!(
                    plain,
                    "\n{}\t{}\t{}\t{}\t{}",
                    p.id, p.ip, p.status, p.created, p.updated
                )
                .expect("write to String");
            }
            Output {
                plain,
                json: json!({ "credential_id": c.id, "wildcard": c.wildcard, "ips": list }),
            }
        }
        AdminCommand::Ip(IpCommand::Add {
            credential_id,
            ip,
            status,
        }) => {
            let add = Change::AddIp {
                ip: parse_ip(&ip)?,
                status: parse_status(&status)?,
            };
            let entry = entry_of(change(credential_id, add).await?.value)?;
            Output {
                plain: entry.id.to_string(),
                json: to_value(&entry),
            }
        }
        AdminCommand::Ip(IpCommand::SetStatus {
            credential_id,
            item_id,
            status,
        }) => {
            let set = Change::SetIpStatus {
                item: item_id,
                status: parse_status(&status)?,
            };
            let entry = entry_of(change(credential_id, set).await?.value)?;
            Output {
                plain: format!("entry {} ({}) is {}", entry.id, entry.ip, entry.status),
                json: to_value(&entry),
            }
        }
        AdminCommand::Usage { user } => {
            let list = store.usage(user).await?;
            let mut plain = String::from("CREDENTIAL\tUSER\tSTATUS\tWILDCARD\tACTIVE_IPS");
            for u in &list {
                write!(
                    plain,
                    "\n{}\t{}\t{}\t{}\t{}",
                    u.credential_id,
                    u.user_id,
                    u.status,
                    if u.wildcard { "*" } else { "-" },
                    u.active_ips
                )
                .expect("write to String");
            }
            Output {
                plain,
                json: to_value(&list),
            }
        }
        AdminCommand::Audit {
            credential_id,
            limit,
        } => {
            let list = store.audit(credential_id, Page::first(limit)).await?;
            let mut plain = String::from("ID\tAT\tACTOR\tFROM\tCREDENTIAL\tACTION\tBEFORE\tAFTER");
            for a in &list {
                write!(
                    plain,
                    "\n{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    a.id,
                    a.at,
                    a.actor,
                    a.actor_ip.as_deref().unwrap_or("-"),
                    a.credential_id.map_or("-".into(), |c| c.to_string()),
                    a.action,
                    a.before.as_ref().map_or("-".into(), Value::to_string),
                    a.after.as_ref().map_or("-".into(), Value::to_string),
                )
                .expect("write to String");
            }
            Output {
                plain,
                json: to_value(&list),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_prefixed_random_and_long() {
        let a = generate_key().unwrap();
        let b = generate_key().unwrap();
        assert!(a.expose().starts_with("ipg_"));
        assert_eq!(a.expose().len(), 4 + KEY_CHARS);
        assert!(a.expose().len() <= 55, "more than one SHA-256 block");
        assert!(a.expose()[4..].bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }

    #[test]
    fn wildcard_is_not_an_address() {
        assert!(parse_ip("*").is_err());
        assert!(parse_ip("10.0.0.0/8").is_err());
        assert!(parse_ip("::1").is_ok());
    }
}
