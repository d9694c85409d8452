//! `ipgate admin server-public-key`: the public half of `auth.response_signing_key`,
//! which key holders give bunq's SDKs as the server key they verify the management
//! API's answers with. Reads the configuration only, never the store.

use super::{OperatorError, Output};
use crate::config::Config;
use serde_json::json;

pub(super) fn server_public_key(config: &Config) -> Result<Output, OperatorError> {
    let key = config.auth.response_signing_key.as_ref().ok_or_else(|| {
        OperatorError::Input(
            "auth.response_signing_key is not set: the management API signs nothing, so \
             there is no public key to hand out"
                .into(),
        )
    })?;
    let pem = key.public_key_pem();
    Ok(Output {
        plain: pem.trim_end().to_owned(),
        json: json!({ "public_key": pem }),
    })
}
