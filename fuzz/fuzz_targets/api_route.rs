//! The management API's parsers: path routing (`Route::parse`, `Api::owns`), the JSON
//! bodies and the query and address parsing in `api::wire`.
//!
//! Properties checked on every input:
//! - never panics;
//! - a path `Api::owns` turns away routes nowhere (its request goes upstream, so a
//!   route it would have matched would be an API call reaching the upstream instead);
//! - a parsed route's ids round-trip: the canonical path for them parses to the same
//!   route, and the path they were read from spells the same numbers;
//! - `parse_ip`: `*` is the wildcard refusal, a `/` is a network refusal, an accepted
//!   address is normalised and round-trips through its text;
//! - `parse_status` accepts exactly `ACTIVE` and `INACTIVE`;
//! - `parse_page`: an accepted page has 1 ≤ count ≤ 200 and not both cursors, and
//!   round-trips through the query it stands for;
//! - `registration_ips`: non-empty, no duplicates, normalised, each address either the
//!   caller's or one of the listed ones;
//! - `parse_json`: a body refused says why; an accepted one is a JSON object.
#![no_main]

use arbitrary::Arbitrary;
use ipgate::acl::normalize;
use ipgate::api::route::Route;
use ipgate::api::wire::{
    parse_ip, parse_json, parse_page, parse_status, registration_ips, BadInput, DeviceServerBody,
    NewIpBody, UpdateIpBody, MAX_COUNT,
};
use ipgate::api::Api;
use libfuzzer_sys::fuzz_target;
use std::net::IpAddr;

/// Path pieces the routes are made of, so that deep routes are reached at once.
#[derive(Arbitrary, Debug)]
enum Segment {
    V1,
    User,
    Credentials,
    Ip,
    RefusedIp,
    SuggestedIp,
    DeviceServer,
    Number(u64),
    Spelled(String),
    Empty,
}

impl Segment {
    fn text(&self) -> String {
        match self {
            Segment::V1 => "v1".into(),
            Segment::User => "user".into(),
            Segment::Credentials => "credential-password-ip".into(),
            Segment::Ip => "ip".into(),
            Segment::RefusedIp => "refused-ip".into(),
            Segment::SuggestedIp => "suggested-ip".into(),
            Segment::DeviceServer => "device-server".into(),
            Segment::Number(n) => n.to_string(),
            Segment::Spelled(s) => s.clone(),
            Segment::Empty => String::new(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Path {
    Raw(String),
    /// Text, then `/`-led segments, then 0 to 2 slashes.
    Segments(String, Vec<Segment>, u8),
}

impl Path {
    fn text(&self) -> String {
        match self {
            Path::Raw(s) => s.clone(),
            Path::Segments(prefix, segments, trailing) => {
                let mut s = prefix.clone();
                for seg in segments {
                    s.push('/');
                    s.push_str(&seg.text());
                }
                s.push_str(&"/".repeat(usize::from(*trailing % 3)));
                s
            }
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Body {
    Raw(Vec<u8>),
    DeviceServer {
        description: String,
        secret: String,
        permitted_ips: Option<Vec<String>>,
    },
    NewIp {
        ip: String,
        status: Option<String>,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    path: Path,
    body: Body,
    query: Option<String>,
    page: (u32, Option<u64>, Option<u64>),
    caller: [u8; 16],
}

fn canonical(route: &Route) -> Option<String> {
    let cpi = "credential-password-ip";
    Some(match route {
        Route::DeviceServer => "/v1/device-server".into(),
        Route::Credentials { user } => format!("/v1/user/{user}/{cpi}"),
        Route::Credential { user, credential } => format!("/v1/user/{user}/{cpi}/{credential}"),
        Route::Ips { user, credential } => format!("/v1/user/{user}/{cpi}/{credential}/ip"),
        Route::Ip {
            user,
            credential,
            item,
        } => format!("/v1/user/{user}/{cpi}/{credential}/ip/{item}"),
        Route::RefusedIps { user, credential } => {
            format!("/v1/user/{user}/{cpi}/{credential}/refused-ip")
        }
        Route::SuggestedIps { user, credential } => {
            format!("/v1/user/{user}/{cpi}/{credential}/suggested-ip")
        }
        Route::NotFound => return None,
    })
}

fn ids(route: &Route) -> Vec<u64> {
    match *route {
        Route::Credentials { user } => vec![user],
        Route::Credential { user, credential }
        | Route::Ips { user, credential }
        | Route::RefusedIps { user, credential }
        | Route::SuggestedIps { user, credential } => vec![user, credential],
        Route::Ip {
            user,
            credential,
            item,
        } => vec![user, credential, item],
        Route::DeviceServer | Route::NotFound => vec![],
    }
}

fn check_path(path: &str) {
    let route = Route::parse(path);
    let owned = Api::owns(path);
    if !owned {
        assert_eq!(route, Route::NotFound, "{path:?} is routed but not owned");
    }
    if let Some(canon) = canonical(&route) {
        assert!(owned);
        assert_eq!(Route::parse(&canon), route, "{canon:?} does not round-trip");
        assert!(Api::owns(&canon));
        // The numbers were read from the path's own segments, in order.
        let numbers: Vec<u64> = path
            .split('/')
            .filter_map(|s| s.parse::<u64>().ok())
            .collect();
        assert_eq!(numbers, ids(&route), "{path:?} ids");
    }
}

fn check_ip(text: &str) {
    match parse_ip(text) {
        Ok(ip) => {
            assert_eq!(ip, normalize(ip));
            assert!(!text.contains('/'));
            assert_eq!(normalize(text.trim().parse::<IpAddr>().unwrap()), ip);
            assert_eq!(
                parse_ip(&ip.to_string()),
                Ok(ip),
                "{ip} does not round-trip"
            );
        }
        Err(BadInput::Wildcard) => assert_eq!(text.trim(), "*"),
        Err(BadInput::Invalid(msg)) => {
            assert!(!msg.is_empty());
            assert_ne!(text.trim(), "*");
        }
        Err(BadInput::NotJson | BadInput::TooLarge(_)) => {
            panic!("an address is never a media type or a body size")
        }
    }
}

fn check_status(text: &str) {
    match parse_status(text) {
        Ok(s) => assert_eq!(s.as_str(), text),
        Err(e) => assert!(matches!(e, BadInput::Invalid(m) if !m.is_empty())),
    }
}

fn check_page(query: Option<&str>) {
    let Ok(page) = parse_page(query) else {
        return;
    };
    assert!((1..=MAX_COUNT).contains(&page.count));
    assert!(page.older_id.is_none() || page.newer_id.is_none());
    let mut q = format!("count={}", page.count);
    if let Some(id) = page.older_id {
        q.push_str(&format!("&older_id={id}"));
    }
    if let Some(id) = page.newer_id {
        q.push_str(&format!("&newer_id={id}"));
    }
    let again = parse_page(Some(&q)).unwrap();
    assert_eq!(
        (again.count, again.older_id, again.newer_id),
        (page.count, page.older_id, page.newer_id)
    );
}

fn check_registration(listed: &[String], caller: IpAddr) {
    let Ok(ips) = registration_ips(listed, caller) else {
        assert!(listed
            .iter()
            .any(|t| t.trim() != "*" && parse_ip(t).is_err()));
        return;
    };
    assert!(!ips.is_empty());
    assert!(ips.len() <= listed.len().max(1));
    for (i, ip) in ips.iter().enumerate() {
        assert!(!ips[..i].contains(ip), "{ip} twice");
        assert_eq!(*ip, normalize(*ip));
        assert!(*ip == caller || listed.iter().any(|t| parse_ip(t) == Ok(*ip)));
    }
}

fuzz_target!(|input: Input| {
    let path = input.path.text();
    check_path(&path);

    check_page(input.query.as_deref());
    let (count, older, newer) = input.page;
    let mut q = format!("count={count}");
    if let Some(id) = older {
        q.push_str(&format!("&older_id={id}"));
    }
    if let Some(id) = newer {
        q.push_str(&format!("&newer_id={id}"));
    }
    check_page(Some(&q));

    let caller = normalize(IpAddr::from(input.caller));
    let bytes = match &input.body {
        Body::Raw(b) => b.clone(),
        Body::DeviceServer {
            description,
            secret,
            permitted_ips,
        } => {
            let mut v = serde_json::json!({ "description": description, "secret": secret });
            if let Some(ips) = permitted_ips {
                v["permitted_ips"] = serde_json::json!(ips);
            }
            serde_json::to_vec(&v).unwrap()
        }
        Body::NewIp { ip, status } => {
            serde_json::to_vec(&serde_json::json!({ "ip": ip, "status": status })).unwrap()
        }
    };
    let is_object =
        serde_json::from_slice::<serde_json::Value>(&bytes).is_ok_and(|v| v.is_object());

    match parse_json::<DeviceServerBody>(&bytes) {
        Ok(b) => {
            assert!(is_object);
            check_registration(&b.permitted_ips, caller);
            for ip in &b.permitted_ips {
                check_ip(ip);
            }
        }
        Err(e) => assert!(matches!(e, BadInput::Invalid(m) if m.starts_with("Malformed"))),
    }
    match parse_json::<NewIpBody>(&bytes) {
        Ok(b) => {
            assert!(is_object);
            check_ip(&b.ip);
            if let Some(s) = &b.status {
                check_status(s);
            }
        }
        Err(e) => assert!(matches!(e, BadInput::Invalid(m) if m.starts_with("Malformed"))),
    }
    match parse_json::<UpdateIpBody>(&bytes) {
        Ok(b) => {
            assert!(is_object);
            if let Some(ip) = &b.ip {
                check_ip(ip);
            }
            if let Some(s) = &b.status {
                check_status(s);
            }
        }
        Err(e) => assert!(matches!(e, BadInput::Invalid(m) if m.starts_with("Malformed"))),
    }
    if let Body::Raw(b) = &input.body {
        // The same bytes as one address or status, as a query string.
        let text = String::from_utf8_lossy(b);
        check_ip(&text);
        check_status(&text);
        check_page(Some(&text));
    }
});
