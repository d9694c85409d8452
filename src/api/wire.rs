//! The management API's request bodies and answer shapes, bunq style.
//!
//! Parsing is strict: unknown fields, a CIDR where an address belongs, `*`, an unknown
//! status are each refused with a message that says what to send instead.

use crate::acl::{normalize, ApiKey};
use crate::store::{
    insight::RefusedAddress, Credential, IpStatus, Page, PermittedIp, Suggestion, Timestamp,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::net::IpAddr;

pub const DEFAULT_COUNT: u32 = 10;
pub const MAX_COUNT: u32 = 200;

/// Why a request was refused before anything was stored.
#[derive(Debug, PartialEq, Eq)]
pub enum BadInput {
    /// 400 with this message.
    Invalid(String),
    /// 403: the wildcard is the operator's alone.
    Wildcard,
    /// 415: a write whose body is declared as something other than `application/json`.
    NotJson,
    /// 413: a body over `limits.max_body_bytes`.
    TooLarge(usize),
}

fn invalid(msg: impl Into<String>) -> BadInput {
    BadInput::Invalid(msg.into())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceServerBody {
    pub description: String,
    /// Redacted in `Debug`, wiped when the body is dropped.
    pub secret: ApiKey,
    #[serde(default)]
    pub permitted_ips: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewIpBody {
    pub ip: String,
    pub status: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateIpBody {
    pub ip: Option<String>,
    pub status: Option<String>,
}

/// A write's body is JSON: declared `application/json` (any case, parameters allowed,
/// but a `charset` only if it is UTF-8, RFC 8259), or not declared at all, which is how
/// bunq's own SDKs send it and bunq reads it. Another type or several `Content-Type`
/// lines are refused before the body is read: what a client declared as something
/// else is not guessed to be JSON.
pub fn require_json(headers: &http::HeaderMap) -> Result<(), BadInput> {
    let mut declared = headers.get_all(http::header::CONTENT_TYPE).iter();
    let value = match (declared.next(), declared.next()) {
        (None, _) => return Ok(()),
        (Some(value), None) => value,
        (Some(_), Some(_)) => return Err(BadInput::NotJson),
    };
    let mut parts = value.to_str().map_err(|_| BadInput::NotJson)?.split(';');
    let essence = parts.next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return Err(BadInput::NotJson);
    }
    for parameter in parts {
        let (name, value) = parameter.split_once('=').unwrap_or((parameter, ""));
        let value = value.trim().trim_matches('"');
        if name.trim().eq_ignore_ascii_case("charset")
            && !(value.eq_ignore_ascii_case("utf-8") || value.eq_ignore_ascii_case("utf8"))
        {
            return Err(BadInput::NotJson);
        }
    }
    Ok(())
}

pub fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, BadInput> {
    serde_json::from_slice(body).map_err(|e| invalid(format!("Malformed request body: {e}.")))
}

/// One address, as an entry holds it. `*` is the operator's; a network is not an address.
pub fn parse_ip(text: &str) -> Result<IpAddr, BadInput> {
    let text = text.trim();
    if text == "*" {
        return Err(BadInput::Wildcard);
    }
    if text.contains('/') {
        return Err(invalid(format!(
            "{text:?} is a network; a permitted IP is a single address such as 192.0.2.1."
        )));
    }
    text.parse::<IpAddr>()
        .map(normalize)
        .map_err(|_| invalid(format!("{text:?} is not a valid IPv4 or IPv6 address.")))
}

pub fn parse_status(text: &str) -> Result<IpStatus, BadInput> {
    text.parse()
        .map_err(|_| invalid(format!("Unknown status {text:?}; use ACTIVE or INACTIVE.")))
}

/// The addresses a device registration binds: each listed one, `*` or nothing meaning
/// the caller's own address. De-duplicated in order.
pub fn registration_ips(listed: &[String], caller: IpAddr) -> Result<Vec<IpAddr>, BadInput> {
    let mut out: Vec<IpAddr> = Vec::with_capacity(listed.len().max(1));
    for text in listed {
        let ip = if text.trim() == "*" {
            caller
        } else {
            parse_ip(text)?
        };
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    if out.is_empty() {
        out.push(caller);
    }
    Ok(out)
}

/// `count`, `older_id`, `newer_id` from a query string (percent- and form-decoded).
pub fn parse_page(query: Option<&str>) -> Result<Page, BadInput> {
    let mut page = Page::first(DEFAULT_COUNT);
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let number = || {
            v.trim()
                .parse::<u64>()
                .map_err(|_| invalid(format!("{k} must be a whole number, not {v:?}.")))
        };
        match k.as_ref() {
            "count" => {
                let n = number()?;
                if n == 0 || n > u64::from(MAX_COUNT) {
                    return Err(invalid(format!("count must be between 1 and {MAX_COUNT}.")));
                }
                page.count = n as u32;
            }
            "older_id" => page.older_id = Some(number()?),
            "newer_id" => page.newer_id = Some(number()?),
            _ => {} // other parameters (bunq clients send some) do not change the list
        }
    }
    if page.older_id.is_some() && page.newer_id.is_some() {
        return Err(invalid("Use older_id or newer_id, not both."));
    }
    Ok(page)
}

/// Builds the `Pagination` object for a list fetched with one row more than `page.count`
/// (so a full page says whether more exist in its direction).
pub fn pagination(base: &str, page: Page, ids: &[u64], more: bool) -> Value {
    let count = page.count;
    let url = |dir: &str, id: u64| Value::String(format!("{base}?count={count}&{dir}={id}"));
    // An empty page still has a place in the list: just below the `older_id` it was
    // asked for, so its newer and future links continue from there, not from id 0.
    let newest = ids
        .first()
        .copied()
        .or(page.older_id.map(|id| id.saturating_sub(1)));
    let oldest = ids.last().copied();
    let older_more = if page.newer_id.is_some() {
        oldest.is_some()
    } else {
        more
    };
    let newer_more = match (page.older_id, page.newer_id) {
        (Some(_), _) => true,
        (_, Some(_)) => more,
        _ => false,
    };
    let older_url = match oldest {
        Some(id) if older_more => url("older_id", id),
        _ => Value::Null,
    };
    let newer_url = match newest {
        Some(id) if newer_more => url("newer_id", id),
        _ => Value::Null,
    };
    let future_url = if newer_url.is_null() {
        url("newer_id", newest.or(page.newer_id).unwrap_or(0))
    } else {
        Value::Null
    };
    json!({ "older_url": older_url, "newer_url": newer_url, "future_url": future_url })
}

/// `CredentialPasswordIp` as bunq shows it, plus ipgate's `mode` (`enforce` or
/// `shadow`). The key is never stored, so `token_value` is always null.
#[derive(Serialize)]
pub struct CredentialView {
    id: u64,
    created: Timestamp,
    updated: Timestamp,
    status: &'static str,
    expiry_time: Option<Timestamp>,
    token_value: Option<String>,
    permitted_device: Option<Value>,
    mode: &'static str,
}

impl From<&Credential> for CredentialView {
    fn from(c: &Credential) -> Self {
        Self {
            id: c.id,
            created: c.created,
            updated: c.updated,
            status: c.status.as_str(),
            expiry_time: c.expiry_time,
            token_value: None,
            permitted_device: c
                .permitted_device
                .as_ref()
                .map(|d| json!({ "description": d.description, "ip": d.ip })),
            mode: c.mode.as_str(),
        }
    }
}

/// `PermittedIp` as bunq shows it, plus ipgate's usage: `last_seen` (the last allowed
/// request from it, `null` if none) and `requests`.
#[derive(Serialize)]
pub struct PermittedIpView {
    id: u64,
    ip: IpAddr,
    status: &'static str,
    created: Timestamp,
    updated: Timestamp,
    last_seen: Option<Timestamp>,
    requests: u64,
}

impl From<&PermittedIp> for PermittedIpView {
    fn from(p: &PermittedIp) -> Self {
        Self {
            id: p.id,
            ip: p.ip,
            status: p.status.as_str(),
            created: p.created,
            updated: p.updated,
            last_seen: p.last_seen,
            requests: p.requests,
        }
    }
}

/// `RefusedIp` (an ipgate extension): an address a valid key was refused from, the
/// stolen-key signal. `listed` is its entry's status when the address is on the list
/// now, else null.
#[derive(Serialize)]
pub struct RefusedIpView {
    ip: IpAddr,
    requests: u64,
    first_seen: Timestamp,
    last_seen: Timestamp,
    listed: Option<&'static str>,
}

impl From<&RefusedAddress> for RefusedIpView {
    fn from(r: &RefusedAddress) -> Self {
        Self {
            ip: r.ip,
            requests: r.requests,
            first_seen: r.first_seen,
            last_seen: r.last_seen,
            listed: r.listed.map(IpStatus::as_str),
        }
    }
}

/// `SuggestedIp` (an ipgate extension): an address the key was used from, with its
/// requests allowed, let through by shadow mode and refused, and its entry's status
/// when it is listed already (else null).
#[derive(Serialize)]
pub struct SuggestedIpView {
    ip: IpAddr,
    allowed: u64,
    shadow: u64,
    refused: u64,
    last_seen: Timestamp,
    listed: Option<&'static str>,
}

impl From<&Suggestion> for SuggestedIpView {
    fn from(s: &Suggestion) -> Self {
        Self {
            ip: s.ip,
            allowed: s.allowed,
            shadow: s.shadow,
            refused: s.refused,
            last_seen: s.last_seen,
            listed: s.listed.map(IpStatus::as_str),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn addresses() {
        assert_eq!(parse_ip("192.0.2.1"), Ok(ip("192.0.2.1")));
        assert_eq!(parse_ip("::ffff:192.0.2.1"), Ok(ip("192.0.2.1")));
        assert_eq!(parse_ip("2001:db8::1"), Ok(ip("2001:db8::1")));
        assert_eq!(parse_ip("*"), Err(BadInput::Wildcard));
        assert!(
            matches!(parse_ip("10.0.0.0/8"), Err(BadInput::Invalid(m)) if m.contains("network"))
        );
        assert!(matches!(parse_ip("10.0.0.256"), Err(BadInput::Invalid(_))));
        assert!(matches!(parse_ip(""), Err(BadInput::Invalid(_))));
    }

    #[test]
    fn registration_star_is_the_caller() {
        let caller = ip("198.51.100.4");
        assert_eq!(registration_ips(&[], caller), Ok(vec![caller]));
        assert_eq!(registration_ips(&["*".into()], caller), Ok(vec![caller]));
        assert_eq!(
            registration_ips(
                &["192.0.2.1".into(), "*".into(), "::ffff:192.0.2.1".into()],
                caller
            ),
            Ok(vec![ip("192.0.2.1"), caller])
        );
        assert!(registration_ips(&["10.0.0.0/24".into()], caller).is_err());
    }

    #[test]
    fn paging_parameters() {
        let p = parse_page(None).unwrap();
        assert_eq!((p.count, p.older_id, p.newer_id), (10, None, None));
        let p = parse_page(Some("count=200&older_id=5")).unwrap();
        assert_eq!((p.count, p.older_id), (200, Some(5)));
        assert!(parse_page(Some("count=201")).is_err());
        assert!(parse_page(Some("count=0")).is_err());
        assert!(parse_page(Some("count=x")).is_err());
        assert!(parse_page(Some("older_id=1&newer_id=2")).is_err());
        // Encoded as any client may encode them.
        let p = parse_page(Some("c%6Funt=5&older%5Fid=%39")).unwrap();
        assert_eq!((p.count, p.older_id), (5, Some(9)));
        assert!(parse_page(Some("count=%FF")).is_err());
    }

    #[test]
    fn pagination_urls() {
        let page = Page::first(2);
        let v = pagination("/b", page, &[9, 8], true);
        assert_eq!(v["older_url"], "/b?count=2&older_id=8");
        assert_eq!(v["newer_url"], Value::Null);
        assert_eq!(v["future_url"], "/b?count=2&newer_id=9");
        let v = pagination("/b", page, &[9], false);
        assert_eq!(v["older_url"], Value::Null);
        // Past the oldest item: the way back is towards newer items, from there.
        let past_end = Page {
            older_id: Some(3),
            ..page
        };
        let v = pagination("/b", past_end, &[], false);
        assert_eq!(v["older_url"], Value::Null);
        assert_eq!(v["newer_url"], "/b?count=2&newer_id=2");
        assert_eq!(v["future_url"], Value::Null);
    }

    #[test]
    fn writes_are_declared_json() {
        let with = |values: &[&str]| {
            let mut h = http::HeaderMap::new();
            for v in values {
                h.append(http::header::CONTENT_TYPE, v.parse().unwrap());
            }
            require_json(&h)
        };
        for ok in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            "application/json;charset=\"UTF-8\"",
            "application/json ; foo=bar",
        ] {
            assert_eq!(with(&[ok]), Ok(()), "{ok}");
        }
        for bad in [
            "text/plain",
            "application/jsonp",
            "application/json-patch+json",
            "application/x-www-form-urlencoded",
            "application/json; charset=iso-8859-1",
            "",
        ] {
            assert_eq!(with(&[bad]), Err(BadInput::NotJson), "{bad}");
        }
        // bunq's SDKs declare nothing: read as JSON.
        assert_eq!(with(&[]), Ok(()));
        assert_eq!(
            with(&["application/json", "text/plain"]),
            Err(BadInput::NotJson)
        );
    }

    #[test]
    fn a_parsed_registration_never_shows_its_secret() {
        let body = br#"{"description":"d","secret":"ipg_supersecretvalue","permitted_ips":[]}"#;
        let reg: DeviceServerBody = parse_json(body).unwrap();
        let shown = format!("{reg:?} {reg:#?}");
        assert!(!shown.contains("supersecret"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn bodies_are_strict() {
        assert!(parse_json::<NewIpBody>(br#"{"ip":"1.2.3.4","stauts":"ACTIVE"}"#).is_err());
        assert!(parse_json::<NewIpBody>(b"{").is_err());
        let b: NewIpBody = parse_json(br#"{"ip":"1.2.3.4"}"#).unwrap();
        assert_eq!(b.status, None);
    }

    // The fuzz target's parsing properties (fuzz/fuzz_targets/api_route.rs), always on.
    mod props {
        use super::*;
        use proptest::prelude::*;
        use std::net::Ipv4Addr;

        fn any_ip() -> impl Strategy<Value = IpAddr> {
            prop_oneof![
                any::<[u8; 4]>().prop_map(IpAddr::from),
                any::<[u8; 16]>().prop_map(IpAddr::from),
                any::<[u8; 4]>().prop_map(|b| IpAddr::V6(Ipv4Addr::from(b).to_ipv6_mapped())),
            ]
        }

        /// An address as a client may spell it, or text that is none.
        fn ip_text() -> impl Strategy<Value = String> {
            prop_oneof![
                (any_ip(), any::<bool>()).prop_map(|(ip, upper)| {
                    let s = format!(" {ip} ");
                    if upper {
                        s.to_uppercase()
                    } else {
                        s
                    }
                }),
                (any_ip(), 0u8..=128).prop_map(|(ip, p)| format!("{ip}/{p}")),
                Just("*".to_string()),
                "[ -~]{0,16}",
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn addresses_are_normalised_and_round_trip(text in ip_text()) {
                match parse_ip(&text) {
                    Ok(ip) => {
                        prop_assert_eq!(ip, normalize(ip));
                        prop_assert_eq!(normalize(text.trim().parse::<IpAddr>().unwrap()), ip);
                        prop_assert_eq!(parse_ip(&ip.to_string()), Ok(ip));
                    }
                    Err(BadInput::Wildcard) => prop_assert_eq!(text.trim(), "*"),
                    Err(BadInput::Invalid(m)) => prop_assert!(!m.is_empty()),
                    Err(BadInput::NotJson | BadInput::TooLarge(_)) => {
                        prop_assert!(false, "an address is never a media type or a body size")
                    }
                }
            }

            #[test]
            fn registration_binds_each_listed_address_once(
                listed in prop::collection::vec(ip_text(), 0..6),
                caller in any_ip(),
            ) {
                let caller = normalize(caller);
                match registration_ips(&listed, caller) {
                    Ok(ips) => {
                        prop_assert!(!ips.is_empty());
                        for (i, ip) in ips.iter().enumerate() {
                            prop_assert!(!ips[..i].contains(ip));
                            prop_assert_eq!(*ip, normalize(*ip));
                            prop_assert!(*ip == caller || listed.iter().any(|t| parse_ip(t) == Ok(*ip)));
                        }
                    }
                    Err(_) => prop_assert!(listed.iter().any(|t| t.trim() != "*" && parse_ip(t).is_err())),
                }
            }

            #[test]
            fn pages_are_bounded_and_round_trip(
                query in prop_oneof![
                    "[a-z_=&0-9]{0,40}",
                    (0u64..300, any::<Option<u64>>(), any::<Option<u64>>()).prop_map(|(c, o, n)| {
                        let mut q = format!("count={c}");
                        if let Some(o) = o { q += &format!("&older_id={o}"); }
                        if let Some(n) = n { q += &format!("&newer_id={n}"); }
                        q
                    }),
                ],
            ) {
                if let Ok(p) = parse_page(Some(&query)) {
                    prop_assert!((1..=MAX_COUNT).contains(&p.count));
                    prop_assert!(p.older_id.is_none() || p.newer_id.is_none());
                    let mut q = format!("count={}", p.count);
                    if let Some(o) = p.older_id { q += &format!("&older_id={o}"); }
                    if let Some(n) = p.newer_id { q += &format!("&newer_id={n}"); }
                    let again = parse_page(Some(&q)).unwrap();
                    prop_assert_eq!((again.count, again.older_id, again.newer_id), (p.count, p.older_id, p.newer_id));
                }
            }

            #[test]
            fn bodies_never_panic_and_say_why(body in prop_oneof![
                prop::collection::vec(any::<u8>(), 0..64),
                (ip_text(), prop::option::of("[A-Z]{0,9}")).prop_map(|(ip, status)| {
                    serde_json::to_vec(&json!({ "ip": ip, "status": status })).unwrap()
                }),
            ]) {
                for refused in [
                    parse_json::<NewIpBody>(&body).err(),
                    parse_json::<UpdateIpBody>(&body).err(),
                    parse_json::<DeviceServerBody>(&body).err(),
                ].into_iter().flatten() {
                    prop_assert!(matches!(refused, BadInput::Invalid(m) if m.starts_with("Malformed")));
                }
                if let Ok(b) = parse_json::<NewIpBody>(&body) {
                    if let Some(s) = b.status {
                        prop_assert!(parse_status(&s).map(|st| st.as_str() == s).unwrap_or(true));
                    }
                }
            }
        }
    }
}
