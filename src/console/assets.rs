//! The page, its script and its style, compiled into the binary: the console works
//! offline and loads nothing from another origin.
//!
//! The page is rendered per request from a template: it carries the console's path and
//! the name of the key header (both reloadable settings), never any data.

use crate::config::AuthConfig;

/// The page's one script: plain JavaScript, no build step.
pub const SCRIPT: &str = include_str!("assets/console.js");
/// The page's style.
pub const STYLE: &str = include_str!("assets/console.css");
const PAGE: &str = include_str!("assets/index.html");
const LINK: &str = include_str!("assets/link.html");

/// The page for `path`, telling the script which header carries the key. Both values
/// are validated to hold no character HTML would read (`console.path`: letters,
/// digits, `-`, `_`, `/`; a header name: an HTTP token), and are escaped anyway.
pub fn render_page(path: &str, auth: &AuthConfig) -> String {
    PAGE.replace("{{PATH}}", &escape(path))
        .replace("{{KEY_HEADER}}", &escape(auth.header.as_str()))
        .replace("{{BEARER}}", if auth.bearer { "true" } else { "false" })
}

/// The page that spends a console link with one POST (a GET must not spend it: mail
/// scanners and link previews fetch links). The token is shown only as a form field.
pub fn render_link(path: &str, token: &str) -> String {
    LINK.replace("{{PATH}}", &escape(path))
        .replace("{{TOKEN}}", &escape(token))
}

/// Escapes text for an HTML attribute or element.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_has_no_inline_script_and_names_its_assets_by_path() {
        let auth = AuthConfig {
            header: http::HeaderName::from_static("x-bunq-client-authentication"),
            bearer: false,
            registration_window: std::time::Duration::from_secs(1),
            forward_key: false,
            response_signing_key: None,
        };
        let page = render_page("/ipgate/console/", &auth);
        assert!(!page.contains("{{"), "a placeholder was left: {page}");
        assert!(page.contains("src=\"/ipgate/console/console.js\""));
        assert!(page.contains("data-key-header=\"x-bunq-client-authentication\""));
        // Every <script> has a src and no body: the CSP allows no inline script.
        for part in page.split("<script").skip(1) {
            let (tag, rest) = part.split_once('>').unwrap();
            assert!(tag.contains(" src="), "inline script: {part}");
            assert!(rest.starts_with("</script>"), "inline script: {part}");
        }
        // No inline event handler (` onclick=`, …) either.
        for (i, _) in page.match_indices(" on") {
            let name: String = page[i + 1..]
                .chars()
                .take_while(|c| c.is_ascii_alphabetic())
                .collect();
            assert!(
                !page[i + 1 + name.len()..].starts_with('='),
                "inline handler {name}"
            );
        }
        assert!(!page.contains("style="), "no inline style");
        assert!(!page.contains("http://") && !page.contains("https://"));
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
