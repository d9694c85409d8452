//! `Config::parse` over well-formed TOML built from the real sections and keys with
//! arbitrary values: it reaches validation far more often than raw text does. The
//! properties are `ipgate_fuzz::check_config`'s.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

const KEYS: [(&str, &[&str]); 10] = [
    (
        "server",
        &[
            "listen",
            "admin_listen",
            "workers",
            "shutdown_grace",
            "header_read_timeout",
            "proxy_protocol",
            "proxy_protocol_local",
            "tls",
        ],
    ),
    (
        "upstream",
        &[
            "url",
            "connect_timeout",
            "timeout",
            "ca_file",
            "host",
            "send_forwarded",
            "send_real_ip",
            "protocol",
            "tunnel_idle_timeout",
        ],
    ),
    (
        "auth",
        &[
            "header",
            "registration_window",
            "forward_key",
            "response_signing_key",
        ],
    ),
    ("client_ip", &["trusted_proxies", "header"]),
    ("store", &["url", "read_url"]),
    (
        "refresh",
        &["interval", "max_staleness", "notify", "hint_spacing"],
    ),
    ("limits", &["max_ips_per_credential", "max_body_bytes"]),
    ("log", &["format", "level"]),
    ("insight", &["record_usage", "flush_interval"]),
    ("console", &["enabled", "path"]),
];

/// Values that are near a boundary of some key's validation.
const STRINGS: [&str; 40] = [
    "",
    "0s",
    "1s",
    "1ms",
    "1ns",
    "4h",
    "10 s",
    "1y",
    "18446744073709551615s",
    "99999999999999999999999h",
    "127.0.0.1:0",
    "[::1]:8080",
    "0.0.0.0:65535",
    "localhost:80",
    "http://127.0.0.1:3000",
    "https://upstream.example:443/",
    "http://h/path",
    "ftp://x",
    "http://",
    "sqlite://",
    "sqlite://ipgate.db",
    "sqlite:///abs/ipgate.db",
    "postgres://u@h/db",
    "10.0.0.0/8",
    "::/0",
    "1.2.3.4",
    "2001:db8::/129",
    "::ffff:10.0.0.0/104",
    "Authorization",
    "X-Bunq-Client-Authentication",
    "bad header",
    "forwarded",
    "X-Forwarded-For",
    "plain",
    "json",
    "info",
    "warn,ipgate::access=info",
    "[{a=b}]=trace",
    "cert.pem",
    "*",
];

#[derive(Arbitrary, Debug)]
enum Str {
    Known(u8),
    Any(String),
}

impl Str {
    fn text(&self) -> &str {
        match self {
            Str::Known(i) => STRINGS[usize::from(*i) % STRINGS.len()],
            Str::Any(s) => s,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Value {
    Str(Str),
    Int(i64),
    Bool(bool),
    Float(f64),
    Array(Vec<Str>),
    Table(Vec<(Key, Str)>),
}

#[derive(Arbitrary, Debug)]
enum Key {
    Known(u8),
    Any(String),
}

fn quote(s: &str) -> String {
    // A JSON string is a TOML basic string, but for DEL, which TOML wants escaped.
    serde_json::to_string(s)
        .unwrap()
        .replace('\u{7f}', "\\u007f")
}

fn key_text(key: &Key, known: &[&str]) -> String {
    match key {
        Key::Known(i) => known[usize::from(*i) % known.len()].to_string(),
        Key::Any(s) => quote(s),
    }
}

impl Value {
    fn render(&self) -> String {
        match self {
            Value::Str(s) => quote(s.text()),
            Value::Int(i) => i.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Float(f) if f.is_nan() => "nan".into(),
            Value::Float(f) => format!("{f:?}"),
            Value::Array(items) => {
                let items: Vec<String> = items.iter().map(|s| quote(s.text())).collect();
                format!("[{}]", items.join(", "))
            }
            Value::Table(pairs) => {
                let pairs: Vec<String> = pairs
                    .iter()
                    .map(|(k, v)| {
                        format!("{} = {}", key_text(k, &["cert", "key"]), quote(v.text()))
                    })
                    .collect();
                format!("{{ {} }}", pairs.join(", "))
            }
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Setting {
    section: u8,
    key: Key,
    value: Value,
}

fuzz_target!(|settings: Vec<Setting>| {
    let mut sections: Vec<Vec<String>> = vec![Vec::new(); KEYS.len()];
    for s in &settings {
        let i = usize::from(s.section) % KEYS.len();
        let line = format!("{} = {}", key_text(&s.key, KEYS[i].1), s.value.render());
        sections[i].push(line);
    }
    let mut text = String::new();
    for (i, lines) in sections.iter().enumerate() {
        if !lines.is_empty() {
            text.push_str(&format!("[{}]\n{}\n", KEYS[i].0, lines.join("\n")));
        }
    }
    ipgate_fuzz::check_config(&text);
});
