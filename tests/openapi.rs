//! `deploy/openapi.yaml` against the real gateway: every documented endpoint is called
//! for real, and every answer (status, required headers, body) is checked against the
//! document's schemas, as is every request body sent. The document cannot drift from
//! the code: a renamed or retyped field, a new status, an undocumented answer fails.
//!
//! The schema checker (`schema_check/`) is small on purpose and refuses any schema
//! keyword it does not implement, so the document cannot promise something unchecked.

mod common;
mod schema_check;

use bytes::Bytes;
use common::*;
use http::{Method, StatusCode};
use schema_check::{follow, lint, pattern, validate};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::Mutex;

const DOCUMENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/openapi.yaml");

fn document() -> Value {
    let text = std::fs::read_to_string(DOCUMENT).unwrap();
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{DOCUMENT}: {e}"))
}

// ---------------------------------------------------------------------------------------
// Calling the gateway and checking each answer against the document
// ---------------------------------------------------------------------------------------

/// What a request carries, and what the document must say about it.
enum Body {
    None,
    /// A body the document's request schema accepts.
    Valid(Value),
    /// A body the document's request schema refuses (as the gateway must).
    Invalid(Value),
    /// Bytes that are not JSON or are too large: no schema applies.
    Raw(Vec<u8>),
}

/// Checks answers against the document and remembers which documented ones were seen.
struct Checker<'g> {
    doc: Value,
    gw: &'g Gateway,
    upstream: &'g Upstream,
    seen: Mutex<BTreeSet<(String, String, String)>>,
}

impl<'g> Checker<'g> {
    fn new(gw: &'g Gateway, upstream: &'g Upstream) -> Self {
        Self {
            doc: document(),
            gw,
            upstream,
            seen: Mutex::new(BTreeSet::new()),
        }
    }

    /// Requests the upstream has received so far.
    fn upstream_received(&self) -> usize {
        self.upstream.received()
    }

    /// The documented path template that `path` is an instance of.
    fn template(&self, path: &str) -> String {
        let path = path.split('?').next().unwrap();
        let segments: Vec<&str> = path.split('/').collect();
        self.doc["paths"]
            .as_object()
            .unwrap()
            .keys()
            .find(|template| {
                let parts: Vec<&str> = template.split('/').collect();
                parts.len() == segments.len()
                    && parts
                        .iter()
                        .zip(&segments)
                        .all(|(p, s)| p == s || (p.starts_with('{') && p.ends_with('}')))
            })
            .unwrap_or_else(|| panic!("{path} is not a documented path"))
            .clone()
    }

    /// Sends one request and checks the request body and the answer.
    async fn call(
        &self,
        from: &str,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Body,
    ) -> Answer {
        self.call_with(from, method, path, key, &[], body).await
    }

    async fn call_with(
        &self,
        from: &str,
        method: Method,
        path: &str,
        key: Option<&str>,
        extra: &[(&str, &str)],
        body: Body,
    ) -> Answer {
        let template = self.template(path);
        let verb = method.as_str().to_ascii_lowercase();
        let operation = &self.doc["paths"][&template][&verb];
        let bytes = match &body {
            Body::None => Vec::new(),
            Body::Valid(v) | Body::Invalid(v) => {
                let schema = &follow(&self.doc, &operation["requestBody"])["content"]
                    ["application/json"]["schema"];
                assert!(
                    schema.is_object(),
                    "{method} {template} documents no JSON request body"
                );
                let errors = validate(&self.doc, schema, v, "request");
                match body {
                    Body::Valid(_) => assert!(
                        errors.is_empty(),
                        "{method} {template}: the document refuses a body the gateway \
                         takes: {v}\n{errors:#?}"
                    ),
                    _ => assert!(
                        !errors.is_empty(),
                        "{method} {template}: the document accepts a body the gateway \
                         refuses: {v}"
                    ),
                }
                v.to_string().into_bytes()
            }
            Body::Raw(b) => b.clone(),
        };
        let mut headers: Vec<(&str, &str)> = extra.to_vec();
        let declared = headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"));
        if !matches!(body, Body::None) && !declared {
            headers.push(("content-type", "application/json"));
        }
        if let Some(key) = key {
            headers.push((KEY_HEADER, key));
        }
        let to = self.gw.target(ip(from));
        let r = send_raw(
            ip(from),
            to,
            method.clone(),
            path,
            &headers,
            Bytes::from(bytes),
        )
        .await;
        let response = if operation.is_object() {
            &operation["responses"][r.status.as_str()]
        } else {
            // A method the path does not list: the document promises 405.
            assert_eq!(
                r.status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {template} is not documented but answered {}",
                r.text()
            );
            &self.doc["components"]["responses"]["MethodNotAllowed"]
        };
        assert!(
            response.is_object(),
            "{method} {template} answered {}, which the document does not list: {}",
            r.status,
            r.text()
        );
        self.check_answer(&format!("{method} {path}"), response, &r);
        self.seen
            .lock()
            .unwrap()
            .insert((template.clone(), verb, r.status.as_str().to_owned()));
        if method == Method::GET && operation.is_object() {
            self.head_like(from, path, &headers, &template, &r).await;
        }
        r
    }

    /// The same request as HEAD: the document's `head` operation lists the status, and
    /// the answer is GET's without the body.
    async fn head_like(
        &self,
        from: &str,
        path: &str,
        headers: &[(&str, &str)],
        template: &str,
        get: &Answer,
    ) {
        let to = self.gw.target(ip(from));
        let mut r = send_raw(ip(from), to, Method::HEAD, path, headers, Bytes::new()).await;
        // Usage is flushed every 100 ms here: a flush between the GET and the HEAD can
        // change a list's last-seen fields, and so its length. Then the pair is asked
        // again (twice more at most), and the HEAD must have the new GET's length.
        let mut length = get.body.len();
        for _ in 0..2 {
            if r.headers["content-length"] == length.to_string().as_str() {
                break;
            }
            let again = send_raw(ip(from), to, Method::GET, path, headers, Bytes::new()).await;
            r = send_raw(ip(from), to, Method::HEAD, path, headers, Bytes::new()).await;
            length = again.body.len();
        }
        assert_eq!(r.status, get.status, "HEAD {path} differs from GET");
        assert!(r.body.is_empty(), "HEAD {path} sent a body");
        assert_eq!(
            r.headers["content-type"], get.headers["content-type"],
            "HEAD {path}"
        );
        assert_eq!(
            r.headers["content-length"],
            length.to_string().as_str(),
            "HEAD {path}: Content-Length is GET's"
        );
        let status = r.status.as_str().to_owned();
        assert!(
            self.doc["paths"][template]["head"]["responses"][&status].is_object(),
            "HEAD {template} answered {status}, which the document does not list"
        );
        self.seen
            .lock()
            .unwrap()
            .insert((template.to_owned(), "head".into(), status));
    }

    /// Headers the document requires, the JSON content type and the body's schema.
    fn check_answer(&self, what: &str, response: &Value, r: &Answer) {
        let response = follow(&self.doc, response);
        if let Some(headers) = response.get("headers").and_then(Value::as_object) {
            for (name, h) in headers {
                if follow(&self.doc, h)["required"] == true {
                    assert!(
                        r.headers.contains_key(name.as_str()),
                        "{what}: documented header {name} is missing"
                    );
                }
            }
        }
        let content = response["content"].as_object().unwrap();
        assert_eq!(
            content.keys().collect::<Vec<_>>(),
            ["application/json"],
            "{what}"
        );
        assert_eq!(r.headers["content-type"], "application/json", "{what}");
        let body = r.json();
        let errors = validate(
            &self.doc,
            &content["application/json"]["schema"],
            &body,
            "body",
        );
        assert!(
            errors.is_empty(),
            "{what} ({}) does not match the document:\n{errors:#?}\n{body:#}",
            r.status
        );
    }

    /// Every documented (path, method, status) was answered for real at least once.
    fn assert_all_seen(&self) {
        let seen = self.seen.lock().unwrap();
        let mut missing = Vec::new();
        for (template, item) in self.doc["paths"].as_object().unwrap() {
            for (verb, operation) in item.as_object().unwrap() {
                let Some(responses) = operation.get("responses") else {
                    continue; // `parameters`
                };
                for status in responses.as_object().unwrap().keys() {
                    let k = (template.clone(), verb.clone(), status.clone());
                    if !seen.contains(&k) {
                        missing.push(format!("{verb} {template} {status}"));
                    }
                }
            }
        }
        assert!(
            missing.is_empty(),
            "documented but never seen: {missing:#?}"
        );
    }
}

/// A registered key holder: user, credential, key, address.
struct Caller {
    /// `user`, `cred` and the paths built from them.
    paths: ApiPaths,
    key: String,
    from: &'static str,
}

impl std::ops::Deref for Caller {
    type Target = ApiPaths;

    fn deref(&self) -> &ApiPaths {
        &self.paths
    }
}

fn id_of(r: &Answer) -> u64 {
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.json()["Response"][0]["Id"]["id"].as_u64().unwrap()
}

// ---------------------------------------------------------------------------------------
// The document on its own
// ---------------------------------------------------------------------------------------

#[test]
fn the_document_describes_this_api_and_its_auth_header() {
    let doc = document();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.0."));

    let scheme = &doc["components"]["securitySchemes"]["ClientAuthentication"];
    assert_eq!(scheme["type"], "apiKey");
    assert_eq!(scheme["in"], "header");
    assert_eq!(scheme["name"], "X-Bunq-Client-Authentication");
    assert_eq!(doc["security"], json!([{"ClientAuthentication": []}]));

    let mut operations = BTreeSet::new();
    for (template, item) in doc["paths"].as_object().unwrap() {
        let declared: BTreeSet<String> = item["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| follow(&doc, p))
            .filter(|p| p["in"] == "path")
            .map(|p| format!("{{{}}}", p["name"].as_str().unwrap()))
            .collect();
        let in_path: BTreeSet<String> = template
            .split('/')
            .filter(|s| s.starts_with('{'))
            .map(str::to_owned)
            .collect();
        assert_eq!(declared, in_path, "{template}: path parameters");
        for (verb, op) in item.as_object().unwrap() {
            if verb == "parameters" {
                continue;
            }
            operations.insert(format!("{} {template}", verb.to_uppercase()));
            for p in op["parameters"].as_array().into_iter().flatten() {
                lint(
                    &doc,
                    &follow(&doc, p)["schema"],
                    &format!("{verb} {template} param"),
                );
            }
            if let Some(body) = op.get("requestBody") {
                let body = follow(&doc, body);
                assert_eq!(body["required"], true, "{verb} {template}");
                lint(&doc, &body["content"]["application/json"]["schema"], verb);
            }
            for (status, r) in op["responses"].as_object().unwrap() {
                let r = follow(&doc, r);
                assert!(r["description"].is_string(), "{verb} {template} {status}");
                lint(&doc, &r["content"]["application/json"]["schema"], status);
            }
        }
    }
    let c = "/v1/user/{user_id}/credential-password-ip";
    let expected: BTreeSet<String> = [
        "POST /v1/device-server".to_owned(),
        format!("GET {c}"),
        format!("HEAD {c}"),
        format!("GET {c}/{{credential_id}}"),
        format!("HEAD {c}/{{credential_id}}"),
        format!("GET {c}/{{credential_id}}/ip"),
        format!("HEAD {c}/{{credential_id}}/ip"),
        format!("POST {c}/{{credential_id}}/ip"),
        format!("GET {c}/{{credential_id}}/ip/{{item_id}}"),
        format!("HEAD {c}/{{credential_id}}/ip/{{item_id}}"),
        format!("PUT {c}/{{credential_id}}/ip/{{item_id}}"),
        format!("DELETE {c}/{{credential_id}}/ip/{{item_id}}"),
        format!("GET {c}/{{credential_id}}/refused-ip"),
        format!("HEAD {c}/{{credential_id}}/refused-ip"),
        format!("GET {c}/{{credential_id}}/suggested-ip"),
        format!("HEAD {c}/{{credential_id}}/suggested-ip"),
    ]
    .into();
    assert_eq!(operations, expected);
    // Registration is the one call without the header: the key is its body.
    assert_eq!(
        doc["paths"]["/v1/device-server"]["post"]["security"],
        json!([])
    );

    for (name, schema) in doc["components"]["schemas"].as_object().unwrap() {
        lint(&doc, schema, name);
    }
}

#[test]
fn the_pattern_subset_matches_like_a_regex() {
    let time = document()["components"]["schemas"]["Timestamp"]["pattern"]
        .as_str()
        .unwrap()
        .to_owned();
    let url = "^a(/[0-9]+/ip)?\\?x=[0-9]+&(older|newer)_id=1$";
    for (p, text, expected) in [
        (time.as_str(), "2025-01-31 14:05:09.123456", true),
        (time.as_str(), "2025-01-31T14:05:09.123456", false),
        (time.as_str(), "2025-01-31 14:05:09.12345", false),
        (time.as_str(), "2025-01-31 14:05:09.1234567", false),
        (time.as_str(), " 2025-01-31 14:05:09.123456", false),
        (url, "a?x=10&newer_id=1", true),
        (url, "a/3/ip?x=1&older_id=1", true),
        (url, "a/3/ip?x=1&other_id=1", false),
        (url, "a/ip?x=1&older_id=1", false),
        ("b+c", "aabbbcd", true),
        ("^b+c", "abc", false),
        ("^[^0-9]{2,3}$", "abc", true),
        ("^[^0-9]{2,3}$", "abcd", false),
        ("^[^0-9]{2,3}$", "a1", false),
        ("^\\d{1,}x*$", "12xx", true),
        ("^.$", "", false),
    ] {
        assert_eq!(pattern::is_match(p, text), expected, "{p:?} on {text:?}");
    }
}

// ---------------------------------------------------------------------------------------
// Real answers against the document
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn every_documented_answer_is_what_the_gateway_sends() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        &Settings::new(&upstream.url())
            // A trusted proxy that sends garbage leaves the client address unknown.
            .set("client_ip.trusted_proxies", "[\"127.0.0.5/32\"]")
            .set("limits.max_ips_per_credential", "3")
            .set("limits.max_body_bytes", "1024")
            // The insight extensions' lists fill within the test.
            .set("insight.flush_interval", "\"100ms\""),
    );
    gw.wait_ready().await;
    let check = Checker::new(&gw, &upstream);

    let me = registration(&check, &gw).await;
    let (bob_user, bob_cred, bob_key) = gw.registered_key(&["127.0.0.3"]).await;
    let bob = Caller {
        paths: ApiPaths {
            user: bob_user,
            cred: bob_cred,
        },
        key: bob_key,
        from: "127.0.0.3",
    };
    let item = writing(&check, &me, &bob).await;
    reading(&check, &me, &bob, item).await;
    insight(&check, &me, &bob).await;
    other_caller(&check, &me, &bob, item).await;
    store_down(&check, &gw, &me, item).await;

    check.assert_all_seen();
}

/// POST /v1/device-server: 200, 400, 403. Returns the registered caller.
async fn registration(check: &Checker<'_>, gw: &Gateway) -> Caller {
    let (user, cred, key) = gw.new_key();
    let post = |from: &'static str, body: Body| async move {
        check
            .call(from, Method::POST, "/v1/device-server", None, body)
            .await
    };
    // 400: unknown field, missing field (the document refuses them too), a network,
    // and an unknown secret (which the document cannot know).
    let r = post(
        "127.0.0.2",
        Body::Invalid(json!({"description": "d", "secret": key, "device": "x"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = post("127.0.0.2", Body::Invalid(json!({"secret": key}))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = post(
        "127.0.0.2",
        Body::Invalid(json!({"description": "d", "secret": key, "permitted_ips": "*"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = post(
        "127.0.0.2",
        Body::Valid(json!({"description": "d", "secret": key, "permitted_ips": ["10.0.0.0/8"]})),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = post(
        "127.0.0.2",
        Body::Valid(json!({"description": "d", "secret": "ipg_not_a_key"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = post("127.0.0.2", Body::Raw(b"{\"description\":".to_vec())).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // 413: a body over limits.max_body_bytes.
    let r = post("127.0.0.2", Body::Raw(vec![b' '; 2000])).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    // 415: a body not declared as JSON.
    let r = check
        .call_with(
            "127.0.0.2",
            Method::POST,
            "/v1/device-server",
            None,
            &[("content-type", "text/plain")],
            Body::Raw(
                json!({"description": "d", "secret": key})
                    .to_string()
                    .into_bytes(),
            ),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // 403: the caller's address cannot be established.
    let r = check
        .call_with(
            "127.0.0.5",
            Method::POST,
            "/v1/device-server",
            None,
            &[("x-forwarded-for", "not-an-address")],
            Body::Valid(json!({"description": "d", "secret": key})),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    // 200, with every field the document allows.
    let r = post(
        "127.0.0.2",
        Body::Valid(json!({
            "description": "openapi test",
            "secret": key,
            "permitted_ips": ["127.0.0.2", "*", "::ffff:127.0.0.4"],
        })),
    )
    .await;
    assert_eq!(id_of(&r), cred);
    // Once only: 400.
    let r = post(
        "127.0.0.2",
        Body::Valid(json!({"description": "again", "secret": key, "permitted_ips": []})),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // Undocumented method: 405 as the document says for those.
    let r = check
        .call(
            "127.0.0.2",
            Method::GET,
            "/v1/device-server",
            None,
            Body::None,
        )
        .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);

    Caller {
        paths: ApiPaths { user, cred },
        key,
        from: "127.0.0.2",
    }
}

/// POST …/ip and PUT …/ip/{item_id}, success and refusals. Returns an INACTIVE entry.
async fn writing(check: &Checker<'_>, me: &Caller, bob: &Caller) -> u64 {
    let key = Some(me.key.as_str());
    let post = |body: Body| async move {
        check
            .call(me.from, Method::POST, &me.ips(), key, body)
            .await
    };
    // 200: with and without status. Two ACTIVE addresses from registration, + one.
    let parked = id_of(
        &post(Body::Valid(
            json!({"ip": "127.0.0.6", "status": "INACTIVE"}),
        ))
        .await,
    );
    id_of(&post(Body::Valid(json!({"ip": "2001:db8::7"}))).await);
    // 400: schema-level (unknown field, wrong type, missing ip, unknown status) …
    for body in [
        json!({"ip": "127.0.0.8", "stauts": "ACTIVE"}),
        json!({"ip": 8}),
        json!({"status": "ACTIVE"}),
        json!({"ip": "127.0.0.8", "status": "ENABLED"}),
    ] {
        let r = post(Body::Invalid(body)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
    }
    // … and rules the schema cannot express: network, bad address, duplicate, limit.
    for body in [
        json!({"ip": "127.0.0.0/24"}),
        json!({"ip": "127.0.0.300"}),
        json!({"ip": "::ffff:127.0.0.2"}),
        json!({"ip": "127.0.0.8"}),
    ] {
        let r = post(Body::Valid(body)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
    }
    let r = post(Body::Raw(b"{\"ip\":".to_vec())).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // 413: a body over limits.max_body_bytes.
    let r = post(Body::Raw(vec![b' '; 2000])).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    // 415: a body not declared as JSON.
    let plain = [("content-type", "text/plain")];
    let r = check
        .call_with(
            me.from,
            Method::POST,
            &me.ips(),
            key,
            &plain,
            Body::Raw(b"{\"ip\":\"127.0.0.8\"}".to_vec()),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // 403: the wildcard; another user.
    let r = post(Body::Valid(json!({"ip": "*"}))).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = check
        .call(
            me.from,
            Method::POST,
            &bob.ips(),
            key,
            Body::Valid(json!({"ip": "127.0.0.9"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // 404: another user's credential under my user.
    let theirs = format!("{}/{}/ip", me.credentials(), bob.cred);
    let r = check
        .call(
            me.from,
            Method::POST,
            &theirs,
            key,
            Body::Valid(json!({"ip": "127.0.0.9"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // 401: no key.
    let r = check
        .call(
            me.from,
            Method::POST,
            &me.ips(),
            None,
            Body::Valid(json!({"ip": "127.0.0.9"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    let put = |path: String, body: Body| async move {
        check.call(me.from, Method::PUT, &path, key, body).await
    };
    // 200: with the entry's own address (status alone is the 503 case below).
    let r = put(
        me.entry(parked),
        Body::Valid(json!({"ip": "127.0.0.6", "status": "INACTIVE"})),
    )
    .await;
    assert_eq!(id_of(&r), parked);
    // 400: past the limit of 3 ACTIVE; another address; then schema-level: no status,
    // unknown status, unknown field; malformed.
    let r = put(me.entry(parked), Body::Valid(json!({"status": "ACTIVE"}))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = put(
        me.entry(parked),
        Body::Valid(json!({"ip": "127.0.0.7", "status": "INACTIVE"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    for body in [
        json!({"ip": "127.0.0.6"}),
        json!({"status": "GONE"}),
        json!({"status": "ACTIVE", "note": "x"}),
    ] {
        let r = put(me.entry(parked), Body::Invalid(body)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
    }
    let r = put(me.entry(parked), Body::Raw(b"[".to_vec())).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = put(me.entry(parked), Body::Raw(vec![b' '; 2000])).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    let r = check
        .call_with(
            me.from,
            Method::PUT,
            &me.entry(parked),
            key,
            &plain,
            Body::Raw(b"{\"status\":\"ACTIVE\"}".to_vec()),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // 403: the wildcard; another user. 404: a missing entry. 401: no key.
    let r = put(
        me.entry(parked),
        Body::Valid(json!({"ip": "*", "status": "ACTIVE"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = put(bob.entry(1), Body::Valid(json!({"status": "INACTIVE"}))).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = put(
        me.entry(999_999),
        Body::Valid(json!({"status": "INACTIVE"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = check
        .call(
            me.from,
            Method::PUT,
            &me.entry(parked),
            None,
            Body::Valid(json!({"status": "INACTIVE"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // DELETE is documented as refused; POST on a list that only reads is not documented.
    let r = check
        .call(me.from, Method::DELETE, &me.entry(parked), key, Body::None)
        .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    let r = check
        .call(
            me.from,
            Method::POST,
            &me.credentials(),
            key,
            Body::Raw(b"{}".to_vec()),
        )
        .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    parked
}

/// The four GET routes: 200 (lists, pages, single objects), 400, 401, 403, 404.
async fn reading(check: &Checker<'_>, me: &Caller, bob: &Caller, item: u64) {
    let get = |path: String, key: Option<&str>, from: &'static str| {
        let key = key.map(str::to_owned);
        async move {
            check
                .call(from, Method::GET, &path, key.as_deref(), Body::None)
                .await
        }
    };
    let mine = Some(me.key.as_str());
    // A second credential, still pending: its status, expiry and device differ.
    let (pending, _) = check.gw.key_for(me.user);

    for path in [
        me.credentials(),
        format!("{}?count=1", me.credentials()),
        format!("{}?count=1&older_id={}", me.credentials(), pending),
        format!("{}?newer_id={}", me.credentials(), me.cred),
        me.credential(),
        format!("{}/{pending}", me.credentials()),
        me.ips(),
        format!("{}?count=2", me.ips()),
        format!("{}?count=2&older_id={item}", me.ips()),
        format!("{}?count=1&newer_id={item}", me.ips()),
        format!("{}?newer_id=999999", me.ips()),
        me.entry(item),
    ] {
        let r = get(path.clone(), mine, me.from).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text());
        // Follow every link the page offers; each is a documented answer too.
        let links = r.json()["Pagination"].clone();
        for url in links.as_object().into_iter().flat_map(|p| p.values()) {
            if let Some(url) = url.as_str() {
                let r = get(url.to_owned(), mine, me.from).await;
                assert_eq!(r.status, StatusCode::OK, "{url}");
            }
        }
    }
    for path in [
        format!("{}?count=201", me.credentials()),
        format!("{}?count=0", me.ips()),
        format!("{}?older_id=1&newer_id=2", me.ips()),
    ] {
        assert_eq!(
            get(path, mine, me.from).await.status,
            StatusCode::BAD_REQUEST
        );
    }
    let all_gets = [me.credentials(), me.credential(), me.ips(), me.entry(item)];
    for path in &all_gets {
        let r = get(path.clone(), None, me.from).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        let r = get(path.clone(), mine, "127.0.0.9").await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
    }
    for path in [bob.credentials(), bob.credential(), bob.ips(), bob.entry(1)] {
        assert_eq!(get(path, mine, me.from).await.status, StatusCode::FORBIDDEN);
    }
    let theirs = format!("{}/{}", me.credentials(), bob.cred);
    for path in [
        theirs.clone(),
        format!("{theirs}/ip"),
        format!("{theirs}/ip/1"),
        me.entry(999_999),
    ] {
        assert_eq!(get(path, mine, me.from).await.status, StatusCode::NOT_FOUND);
    }
    // A path of this API that names no route is the gateway's 404, never forwarded,
    // with a key or without.
    let received = check.upstream_received();
    for path in [
        "/v1/user/abc/credential-password-ip".to_owned(),
        format!("{}/abc", me.credentials()),
        format!("{}/x", me.ips()),
    ] {
        for key in [mine, None] {
            let r = get(path.clone(), key, me.from).await;
            assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
        }
    }
    assert_eq!(
        check.upstream_received(),
        received,
        "a malformed API path was forwarded"
    );
}

/// The ipgate extensions: refused addresses and the suggestion, filled by real traffic.
async fn insight(check: &Checker<'_>, me: &Caller, bob: &Caller) {
    let key = Some(me.key.as_str());
    // My key from an address not on my list: refused, and remembered, newest first
    // (127.0.0.9 was refused before, while reading).
    let r = check.gw.get(ip("127.0.0.10"), "/anything", key).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let r = check
            .call(me.from, Method::GET, &me.refused(), key, Body::None)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let listed = r.json()["Response"].as_array().unwrap().clone();
        if listed.iter().any(|r| r["RefusedIp"]["ip"] == "127.0.0.10") {
            assert_eq!(listed[0]["RefusedIp"]["ip"], "127.0.0.10", "newest first");
            assert_eq!(listed[0]["RefusedIp"]["listed"], Value::Null);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no refused address");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let r = check
        .call(me.from, Method::GET, &me.suggested(), key, Body::None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let suggested = r.json()["Response"].clone();
    assert!(
        suggested
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["SuggestedIp"]["ip"] == "127.0.0.10" && s["SuggestedIp"]["refused"] == 1),
        "{suggested}"
    );
    for path in [me.refused(), me.suggested()] {
        let r = check
            .call(me.from, Method::GET, &path, None, Body::None)
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        let r = check
            .call("127.0.0.9", Method::GET, &path, key, Body::None)
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
    }
    for path in [bob.refused(), bob.suggested()] {
        let r = check
            .call(me.from, Method::GET, &path, key, Body::None)
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
    }
    let theirs = ApiPaths {
        user: me.user,
        cred: bob.cred,
    };
    for path in [theirs.refused(), theirs.suggested()] {
        let r = check
            .call(me.from, Method::GET, &path, key, Body::None)
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
    }
}

/// A second user sees his own data, and nothing of mine.
async fn other_caller(check: &Checker<'_>, me: &Caller, bob: &Caller, item: u64) {
    let r = check
        .call(
            bob.from,
            Method::GET,
            &bob.ips(),
            Some(&bob.key),
            Body::None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    // Bob cannot see my entry, even by its id under his credential.
    let r = check
        .call(
            bob.from,
            Method::GET,
            &bob.entry(item),
            Some(&bob.key),
            Body::None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // My key from bob's address: the same 403 as any refusal.
    let r = check
        .call(bob.from, Method::GET, &me.ips(), Some(&me.key), Body::None)
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

/// With the store gone every operation answers 503 with the error shape.
async fn store_down(check: &Checker<'_>, gw: &Gateway, me: &Caller, item: u64) {
    let (_, _, fresh) = gw.new_key();
    let db = gw.dir.path().join("ipgate.db");
    let away = gw.dir.path().join("away.db");
    std::fs::rename(&db, &away).unwrap();

    let key = Some(me.key.as_str());
    let calls = [
        (
            Method::POST,
            "/v1/device-server".to_owned(),
            None,
            Body::Valid(json!({"description": "d", "secret": fresh})),
        ),
        (Method::GET, me.credentials(), key, Body::None),
        (Method::GET, me.credential(), key, Body::None),
        (Method::GET, me.ips(), key, Body::None),
        (
            Method::POST,
            me.ips(),
            key,
            Body::Valid(json!({"ip": "127.0.0.9"})),
        ),
        (Method::GET, me.entry(item), key, Body::None),
        (Method::GET, me.refused(), key, Body::None),
        (Method::GET, me.suggested(), key, Body::None),
        (
            Method::PUT,
            me.entry(item),
            key,
            Body::Valid(json!({"status": "INACTIVE"})),
        ),
    ];
    for (method, path, key, body) in calls {
        let r = check.call(me.from, method.clone(), &path, key, body).await;
        assert_eq!(
            r.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{method} {path}: {}",
            r.text()
        );
    }
    std::fs::rename(&away, &db).unwrap();
}

// ---------------------------------------------------------------------------------------
// The check really catches drift
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_document_that_drifted_from_the_code_fails_the_check() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&Settings::new(&upstream.url()));
    gw.wait_ready().await;
    let (user, cred, key) = gw.registered_key(&["127.0.0.2"]).await;
    let me = Caller {
        paths: ApiPaths { user, cred },
        key,
        from: "127.0.0.2",
    };
    gw.admin(&[
        "ip",
        "add",
        &cred.to_string(),
        "127.0.0.3",
        "--status",
        "INACTIVE",
    ]);
    let get = |path: String| {
        let me = &me;
        let gw = &gw;
        async move { gw.get(ip(me.from), &path, Some(&me.key)).await.json() }
    };
    let credential = get(me.credential()).await;
    let entries = get(me.ips()).await;
    let error = get(me.entry(999_999)).await;

    let doc = document();
    let schema = |name: &str| json!({ "$ref": format!("#/components/schemas/{name}") });
    let bodies = [
        ("CredentialPasswordIpOne", &credential),
        ("PermittedIpList", &entries),
        ("Error", &error),
    ];
    for (name, body) in bodies {
        let errors = validate(&doc, &schema(name), body, "body");
        assert!(errors.is_empty(), "{name}: {errors:#?}");
    }

    // Each edit below is a drift between document and code; each must be caught.
    type Edit = fn(&mut Value);
    let drifts: [(&str, Edit); 8] = [
        ("a renamed field", |d| {
            let c = &mut d["components"]["schemas"]["CredentialPasswordIp"];
            let p = c["properties"].as_object_mut().unwrap();
            let v = p.remove("token_value").unwrap();
            p.insert("token".into(), v);
            c["required"] = json!([
                "id",
                "created",
                "updated",
                "status",
                "expiry_time",
                "token",
                "permitted_device"
            ]);
        }),
        ("a field the code does not send", |d| {
            d["components"]["schemas"]["PermittedIp"]["required"]
                .as_array_mut()
                .unwrap()
                .push(json!("credential_id"));
            d["components"]["schemas"]["PermittedIp"]["properties"]["credential_id"] =
                json!({"type": "integer"});
        }),
        ("an id documented as a string", |d| {
            d["components"]["schemas"]["PermittedIp"]["properties"]["id"] =
                json!({"type": "string"});
        }),
        ("a status the code uses left out", |d| {
            d["components"]["schemas"]["IpStatus"]["enum"] = json!(["ACTIVE"]);
        }),
        ("another time format", |d| {
            d["components"]["schemas"]["Timestamp"]["pattern"] =
                json!("^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$");
        }),
        ("null where the code sends null", |d| {
            d["components"]["schemas"]["NullableTimestamp"]
                .as_object_mut()
                .unwrap()
                .remove("nullable");
        }),
        ("the error shape renamed", |d| {
            let e = &mut d["components"]["schemas"]["Error"]["properties"]["Error"]["items"];
            e["required"] = json!(["error_description", "error_message_translated"]);
        }),
        ("a pagination link left out", |d| {
            d["components"]["schemas"]["Pagination"]["properties"]
                .as_object_mut()
                .unwrap()
                .remove("future_url");
            d["components"]["schemas"]["Pagination"]["required"] =
                json!(["older_url", "newer_url"]);
        }),
    ];
    for (what, edit) in drifts {
        let mut drifted = doc.clone();
        edit(&mut drifted);
        let caught = bodies
            .iter()
            .any(|(name, body)| !validate(&drifted, &schema(name), body, "body").is_empty());
        assert!(caught, "{what} was not caught");
    }
}
