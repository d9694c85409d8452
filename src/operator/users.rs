//! `user add`, `user list` and `key create`: users, and their keys, generated here,
//! shown once and never stored.

use super::table::{shown, utc, Table};
use super::{to_value, Context, OperatorError, Output};
use crate::acl::{ApiKey, KEY_PREFIX};
use crate::store::{NewCredential, Page, Timestamp};
use serde_json::json;

pub(super) async fn user_add(
    cx: &Context<'_>,
    name: Option<String>,
) -> Result<Output, OperatorError> {
    let user = cx.store.add_user(name, cx.actor).await?.value;
    Ok(Output {
        plain: user.id.to_string(),
        json: to_value(&user),
    })
}

pub(super) async fn user_list(cx: &Context<'_>) -> Result<Output, OperatorError> {
    let list = cx.store.users(Page::all()).await?;
    let mut t = Table::new(&["ID", "NAME", "CREATED"]).flexible(1);
    for u in &list {
        t.row(vec![
            u.id.to_string(),
            shown(u.name.as_deref().unwrap_or("-")),
            utc(u.created),
        ]);
    }
    Ok(Output {
        plain: t.render(),
        json: to_value(&list),
    })
}

pub(super) async fn key_create(
    cx: &Context<'_>,
    user: u64,
    description: Option<String>,
) -> Result<Output, OperatorError> {
    cx.need_user(user).await?;
    let key = generate_key()?;
    let expiry = Timestamp::now().plus(cx.config.auth.registration_window);
    let new = NewCredential {
        user_id: user,
        key: key.hash(),
        description,
        expiry,
    };
    let credential = cx.store.create_credential(new, cx.actor).await?.value;
    Ok(Output {
        plain: key.expose().to_owned(),
        json: json!({
            "credential_id": credential.id,
            "user_id": credential.user_id,
            "key": key.expose(),
            "expiry_time": credential.expiry_time,
        }),
    })
}

/// Characters of a key after its prefix: base62, so a double click selects it whole.
pub(super) const KEY_ALPHABET: &[u8; 62] =
    b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// 43 base62 characters carry 256.03 bits; with the prefix a key is 47 bytes, which
/// SHA-256 hashes in one block (a 64-character hex key took two).
pub(super) const KEY_CHARS: usize = 43;

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
}
