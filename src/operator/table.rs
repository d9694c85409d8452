//! Tables for people: `ipgate admin` without `--json`.
//!
//! Columns are aligned (comfy-table, no borders, two spaces between columns) and, when
//! stdout is a terminal, one flexible column (a description, an audit change) wraps so
//! that the table fits the terminal's width; piped output is never wrapped, so `grep`
//! and `awk` see one line per row. Times are UTC to the second: the table says so, the
//! JSON keeps bunq's format with its microseconds. Nothing here reads the store.

use crate::store::Timestamp;
use comfy_table::{presets::NOTHING, ColumnConstraint, ContentArrangement, Table as Comfy, Width};
use serde_json::Value;
use std::io::IsTerminal;

/// Spaces between two columns.
const GAP: u16 = 2;

/// The flexible column is never wrapped narrower than this.
const MIN_FLEXIBLE: usize = 20;

/// A header and rows of cells, rendered aligned.
pub(super) struct Table {
    header: &'static [&'static str],
    rows: Vec<Vec<String>>,
    /// The column that wraps when the table is wider than the terminal.
    flexible: Option<usize>,
}

impl Table {
    pub(super) fn new(header: &'static [&'static str]) -> Self {
        Self {
            header,
            rows: Vec::new(),
            flexible: None,
        }
    }

    /// `column` gives way (wraps) when the table does not fit the terminal.
    pub(super) fn flexible(mut self, column: usize) -> Self {
        self.flexible = Some(column);
        self
    }

    pub(super) fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.header.len());
        self.rows.push(cells);
    }

    /// The table for stdout: fitted to the terminal's width when stdout is one.
    pub(super) fn render(&self) -> String {
        self.render_for(terminal_width())
    }

    /// The table fitted to `width` columns, or never wrapped (`None`).
    fn render_for(&self, width: Option<u16>) -> String {
        let whole = self.laid_out(None);
        let widest = whole.lines().map(|l| l.chars().count()).max().unwrap_or(0);
        match (width, self.flexible) {
            (Some(w), Some(column)) if widest > usize::from(w) => self.laid_out(Some((w, column))),
            _ => whole,
        }
    }

    /// Every column as wide as its widest cell; or, given a width and the flexible
    /// column, that column wrapped to make the table fit.
    fn laid_out(&self, fit: Option<(u16, usize)>) -> String {
        let mut t = Comfy::new();
        t.load_preset(NOTHING);
        t.set_header(self.header.iter().copied());
        for row in &self.rows {
            t.add_row(row.iter().map(String::as_str));
        }
        let last = self.header.len().saturating_sub(1);
        for (i, column) in t.column_iter_mut().enumerate() {
            let gap = if i == last { 0 } else { GAP };
            column.set_padding((0, gap));
            let constraint = match fit {
                // Never narrower than its header or a few words (comfy-table counts
                // the padding in): a terminal too narrow for that gets a table wider
                // than itself, not one word per line.
                Some((_, flexible)) if flexible == i => {
                    let widest = self
                        .rows
                        .iter()
                        .map(|r| r[i].chars().count())
                        .max()
                        .unwrap_or(0);
                    let least = self.header[i].len().max(MIN_FLEXIBLE.min(widest));
                    ColumnConstraint::LowerBoundary(Width::Fixed(least as u16 + gap))
                }
                _ => ColumnConstraint::ContentWidth,
            };
            column.set_constraint(constraint);
        }
        match fit {
            Some((w, _)) => {
                t.set_content_arrangement(ContentArrangement::Dynamic);
                t.set_width(w);
            }
            None => {
                t.set_content_arrangement(ContentArrangement::Disabled);
            }
        }
        let text = t.to_string();
        let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
        lines.join("\n")
    }
}

/// The terminal's width, when stdout is a terminal.
fn terminal_width() -> Option<u16> {
    let out = std::io::stdout();
    if !out.is_terminal() {
        return None;
    }
    terminal_size::terminal_size_of(&out).map(|(w, _)| w.0)
}

/// A time for a table: UTC to the second, and saying so.
pub(super) fn utc(t: Timestamp) -> String {
    let full = t.to_string();
    let seconds = full.split('.').next().unwrap_or(&full);
    format!("{seconds} UTC")
}

/// An optional time for a table: `-` when there is none.
pub(super) fn utc_or_dash(t: Option<Timestamp>) -> String {
    t.map_or_else(|| "-".into(), utc)
}

/// Text someone else wrote (a registration's description, a name), as a table cell:
/// control characters (newlines, tabs, terminal escapes) are shown escaped, so that no
/// stored text can forge a row or drive the operator's terminal.
pub(super) fn shown(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Fields of an audited object that say nothing about the change itself.
const NOISE: &[&str] = &["updated", "created", "id"];

/// Fields shown for an object that was created (a full record is `--json`'s).
const SHOWN_ON_CREATE: &[&str] = &["ip", "status", "name", "user_id"];

/// An audit row's before and after, in a few words: `status ACTIVE→INACTIVE` for a
/// change, `ip 192.0.2.1, status ACTIVE` for something new. The full JSON is
/// `audit --json`'s.
pub(super) fn change_summary(before: Option<&Value>, after: Option<&Value>) -> String {
    let parts: Vec<String> = match (before, after) {
        (Some(Value::Object(b)), Some(Value::Object(a))) => a
            .iter()
            .filter(|(k, v)| !NOISE.contains(&k.as_str()) && b.get(*k) != Some(*v))
            .map(|(k, v)| {
                let was = b.get(k).map_or_else(|| "-".into(), brief);
                format!("{k} {was}→{}", brief(v))
            })
            .collect(),
        (None, Some(Value::Object(a))) => SHOWN_ON_CREATE
            .iter()
            .filter_map(|k| a.get(*k).filter(|v| !v.is_null()).map(|v| (k, v)))
            .map(|(k, v)| format!("{k} {}", brief(v)))
            .collect(),
        (Some(_), None) => vec!["removed".into()],
        (None, None) => Vec::new(),
        (b, a) => vec![format!(
            "{}→{}",
            b.map_or_else(|| "-".into(), brief),
            a.map_or_else(|| "-".into(), brief)
        )],
    };
    if parts.is_empty() {
        "-".into()
    } else {
        shown(&parts.join(", "))
    }
}

/// A JSON value in a word or two: strings bare, objects as their values.
fn brief(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Object(o) => o.values().map(brief).collect::<Vec<_>>().join(" "),
        Value::Array(a) => a.iter().map(brief).collect::<Vec<_>>().join(" "),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn table() -> Table {
        let mut t = Table::new(&["ID", "NAME", "DESCRIPTION"]).flexible(2);
        t.row(vec!["1".into(), "a".into(), "short".into()]);
        t.row(vec![
            "1234".into(),
            "alice".into(),
            "a description far longer than the terminal it is shown on".into(),
        ]);
        t
    }

    #[test]
    fn columns_are_aligned_without_tabs_or_trailing_spaces() {
        let text = table().render_for(None);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[0], "ID    NAME   DESCRIPTION");
        assert_eq!(lines[1], "1     a      short");
        assert!(lines[2].starts_with("1234  alice  a description far"));
        assert!(!text.contains('\t'));
        assert!(lines.iter().all(|l| l.trim_end() == *l));
    }

    #[test]
    fn a_terminal_narrower_than_the_table_wraps_the_flexible_column_only() {
        let text = table().render_for(Some(40));
        assert!(text.lines().all(|l| l.chars().count() <= 40), "{text}");
        assert!(text.lines().count() > 3, "wrapped: {text}");
        assert!(text.contains("1234  alice  "), "{text}");
        assert!(text.starts_with("ID    NAME   DESCRIPTION\n"), "{text}");
        // Too narrow even for that: the flexible column keeps a readable width.
        let narrow = table().render_for(Some(15));
        assert!(narrow.starts_with("ID    NAME   DESCRIPTION\n"), "{narrow}");
        assert!(narrow
            .lines()
            .all(|l| l.chars().count() <= 13 + MIN_FLEXIBLE));
        let wide = table().render_for(Some(200));
        assert_eq!(wide, table().render_for(None));
        // A flexible column of short cells keeps their width when another overflows.
        let mut t = table();
        t.flexible = Some(1);
        assert!(t
            .render_for(Some(40))
            .starts_with("ID    NAME   DESCRIPTION\n"));
    }

    #[test]
    fn times_say_utc() {
        assert_eq!(
            utc(Timestamp(1_700_000_000_123_456)),
            "2023-11-14 22:13:20 UTC"
        );
        assert_eq!(utc_or_dash(None), "-");
    }

    #[test]
    fn audit_changes_are_summarised() {
        let before = json!({"id": 1, "ip": "192.0.2.1", "status": "ACTIVE", "updated": "x"});
        let after = json!({"id": 1, "ip": "192.0.2.1", "status": "INACTIVE", "updated": "y"});
        assert_eq!(
            change_summary(Some(&before), Some(&after)),
            "status ACTIVE→INACTIVE"
        );
        assert_eq!(
            change_summary(None, Some(&before)),
            "ip 192.0.2.1, status ACTIVE"
        );
        let registered = json!({"status": "ACTIVE",
            "permitted_device": {"description": "laptop\n", "ip": "127.0.0.1"}});
        let pending = json!({"status": "PENDING_FIRST_USE", "permitted_device": null});
        assert_eq!(
            change_summary(Some(&pending), Some(&registered)),
            "permitted_device -→laptop\\n 127.0.0.1, status PENDING_FIRST_USE→ACTIVE"
        );
        assert_eq!(change_summary(None, None), "-");
    }

    #[test]
    fn stored_text_cannot_forge_rows_or_escape_codes() {
        assert_eq!(shown("laptop"), "laptop");
        assert_eq!(shown("a\tb\nc\u{1b}[31m"), "a\\tb\\nc\\u{1b}[31m");
        assert_eq!(shown("café"), "café");
    }
}
