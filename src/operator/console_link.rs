//! `ipgate admin console-link`: a short-lived, single-use link that opens the console
//! for one credential, for an owner who is locked out (a new address). The token is
//! printed once; the store keeps only its SHA-256. Minting is audited
//! (`console_link.mint`), and so is its use (`console_link.use`).

use super::{missing, Context, OperatorError, Output};
use crate::store::{console_link::token_hash, NewConsoleLink, Timestamp};
use base64::Engine;
use serde_json::json;
use std::time::Duration;

/// The shortest and longest a link may live.
const MIN_TTL: Duration = Duration::from_secs(1);
const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

pub(super) async fn console_link(
    cx: &Context<'_>,
    credential_id: u64,
    ttl: &str,
    base_url: Option<&str>,
) -> Result<Output, OperatorError> {
    let ttl = crate::config::parse_duration(ttl)
        .ok()
        .filter(|t| (MIN_TTL..=MAX_TTL).contains(t))
        .ok_or_else(|| {
            OperatorError::Input(format!(
                "--ttl {ttl:?} must be a duration from 1s to 24h, such as 15m"
            ))
        })?;
    if !cx.config.console.enabled {
        return Err(OperatorError::Input(
            "the console is off (console.enabled = false): a link would open nothing".into(),
        ));
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| OperatorError::Random(e.to_string()))?;
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let expires = Timestamp::now().plus(ttl);
    cx.store
        .mint_console_link(
            NewConsoleLink {
                credential_id,
                token_hash: token_hash(&token),
                expires,
            },
            cx.actor,
        )
        .await
        .map_err(missing("credential", credential_id))?;
    let path = format!("{}link/{token}", cx.config.console.path);
    let url = base_url.map(|b| format!("{}{path}", b.trim_end_matches('/')));
    let shown = url.clone().unwrap_or_else(|| path.clone());
    Ok(Output {
        plain: format!(
            "{shown}\nopens the console for credential {credential_id} once, until {expires} UTC \
             (prefix the path with the gateway's public address, or pass --base-url)"
        ),
        json: json!({
            "credential_id": credential_id,
            "path": path,
            "url": url,
            "expires": expires.to_string(),
        }),
    })
}
