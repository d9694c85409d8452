//! The file as written: a TOML document read leniently, with the line of every value.
//!
//! Nothing here knows what a key means. It answers "what is at `server.listen`, and on
//! which line", notes a value of the wrong type or a key nobody asked for, and carries
//! on: validation ([`super::validate`]) reads every key it knows, and then the problems
//! of the whole file are listed together, syntax errors included.

use super::Problem;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// The parsed file. Syntax errors are in the [`Reader`] that [`parse`] returns with it.
pub(super) struct Document<'t> {
    root: DeTable<'t>,
}

/// Reads values out of a document's sections and notes every problem on the way.
pub(super) struct Reader<'t> {
    text: &'t str,
    problems: Vec<Problem>,
}

/// A value read from the file, the key it was read at, and its line (`None`: not in the
/// file, so the default).
#[derive(Clone, Debug)]
pub(super) struct Field<T> {
    pub value: T,
    pub key: String,
    pub line: Option<usize>,
}

/// One table of the document (`[server]`, or an inline one such as `server.tls`).
pub(super) struct Section<'d, 't> {
    path: String,
    table: Option<&'d DeTable<'t>>,
}

/// Parses `text`, recovering from syntax errors as far as TOML allows: each one is a
/// problem, and what did parse is still validated.
pub(super) fn parse(text: &str) -> (Document<'_>, Reader<'_>) {
    let (root, errors) = DeTable::parse_recoverable(text);
    let mut reader = Reader {
        text,
        problems: Vec::new(),
    };
    for mut e in errors {
        let line = e.span().map(|s| reader.line_of(s.start));
        e.set_input(Some(text));
        reader.problems.push(Problem {
            line,
            key: String::new(),
            message: redact_userinfo(e.to_string().trim_end()),
        });
    }
    let doc = Document {
        root: root.into_inner(),
    };
    (doc, reader)
}

impl<'t> Document<'t> {
    /// The top level; any key but `sections` there is a problem.
    pub fn root<'d>(&'d self, reader: &mut Reader<'_>, sections: &[&str]) -> Section<'d, 't> {
        let section = Section {
            path: String::new(),
            table: Some(&self.root),
        };
        reader.unknown_keys(&section, sections);
        section
    }
}

impl<'t> Reader<'t> {
    /// Every problem found, in the order of the file's lines (file-wide ones last).
    pub fn into_problems(mut self) -> Vec<Problem> {
        self.problems.sort_by(|a, b| {
            (a.line.is_none(), a.line, &a.key).cmp(&(b.line.is_none(), b.line, &b.key))
        });
        self.problems
    }

    /// 1-based line of a byte offset.
    fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    }

    fn line_of_span<T>(&self, v: &Spanned<T>) -> usize {
        self.line_of(v.span().start)
    }

    /// Notes a problem with a value read from the file (or with its default).
    pub fn problem<T>(&mut self, field: &Field<T>, message: impl Into<String>) {
        self.problems.push(Problem {
            line: field.line,
            key: field.key.clone(),
            message: message.into(),
        });
    }

    /// The table at `name` in `parent`; a value that is not a table is a problem, and
    /// so is any key in it but `keys`.
    pub fn section<'d, 's>(
        &mut self,
        parent: &Section<'d, 's>,
        name: &str,
        keys: &[&str],
    ) -> Section<'d, 's> {
        let path = parent.child(name);
        let table = match parent.get(name) {
            None => None,
            Some(v) => match v.get_ref() {
                DeValue::Table(t) => Some(t),
                other => {
                    let line = self.line_of_span(v);
                    self.problems.push(Problem {
                        line: Some(line),
                        key: path.clone(),
                        message: format!("expected a table, found {}", a(other.type_str())),
                    });
                    None
                }
            },
        };
        let section = Section { path, table };
        self.unknown_keys(&section, keys);
        section
    }

    fn unknown_keys(&mut self, section: &Section<'_, '_>, keys: &[&str]) {
        let Some(table) = section.table else {
            return;
        };
        for (k, _) in table.iter() {
            let name: &str = k.get_ref();
            if !keys.contains(&name) {
                let line = self.line_of_span(k);
                self.problems.push(Problem {
                    line: Some(line),
                    key: section.child(name),
                    message: format!("unknown key; expected one of: {}", keys.join(", ")),
                });
            }
        }
    }

    fn field<'d, 's>(
        &self,
        section: &Section<'d, 's>,
        key: &str,
    ) -> (Field<()>, Option<&'d Spanned<DeValue<'s>>>) {
        let v = section.get(key);
        let field = Field {
            value: (),
            key: section.child(key),
            line: v.map(|v| self.line_of_span(v)),
        };
        (field, v)
    }

    fn wrong_type<T>(
        &mut self,
        field: Field<()>,
        want: &str,
        found: &DeValue<'_>,
        default: T,
    ) -> Field<T> {
        self.problem(
            &field,
            format!("expected {want}, found {}", a(found.type_str())),
        );
        field.with(default)
    }

    /// A string, or `default` when the key is absent.
    pub fn string(&mut self, section: &Section<'_, '_>, key: &str, default: &str) -> Field<String> {
        let Field { value, key, line } = self.optional_string(section, key);
        Field {
            value: value.unwrap_or_else(|| default.to_owned()),
            key,
            line,
        }
    }

    pub fn optional_string(
        &mut self,
        section: &Section<'_, '_>,
        key: &str,
    ) -> Field<Option<String>> {
        let (field, v) = self.field(section, key);
        match v.map(Spanned::get_ref) {
            None => field.with(None),
            Some(DeValue::String(s)) => field.with(Some(s.to_string())),
            Some(other) => self.wrong_type(field, "a string", other, None),
        }
    }

    pub fn boolean(&mut self, section: &Section<'_, '_>, key: &str, default: bool) -> Field<bool> {
        let (field, v) = self.field(section, key);
        match v.map(Spanned::get_ref) {
            None => field.with(default),
            Some(DeValue::Boolean(b)) => field.with(*b),
            Some(other) => self.wrong_type(field, "true or false", other, default),
        }
    }

    /// A whole number from 0 to `max`.
    pub fn number(
        &mut self,
        section: &Section<'_, '_>,
        key: &str,
        default: u64,
        max: u64,
    ) -> Field<u64> {
        let (field, v) = self.field(section, key);
        match v.map(Spanned::get_ref) {
            None => field.with(default),
            Some(DeValue::Integer(i)) => match i64::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) if n >= 0 && n as u64 <= max => field.with(n as u64),
                Ok(n) => {
                    self.problem(&field, format!("{n} is out of range; expected 0 to {max}"));
                    field.with(default)
                }
                Err(_) => {
                    self.problem(&field, format!("out of range; expected 0 to {max}"));
                    field.with(default)
                }
            },
            Some(other) => self.wrong_type(field, "a whole number", other, default),
        }
    }

    /// A list of strings; each element keeps its own key (`key[i]`) and line.
    pub fn strings(&mut self, section: &Section<'_, '_>, key: &str) -> Field<Vec<Field<String>>> {
        let (field, v) = self.field(section, key);
        let Some(v) = v else {
            return field.with(Vec::new());
        };
        let DeValue::Array(items) = v.get_ref() else {
            return self.wrong_type(field, "a list of strings", v.get_ref(), Vec::new());
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let element = Field {
                value: (),
                key: format!("{}[{i}]", field.key),
                line: Some(self.line_of_span(item)),
            };
            match item.get_ref() {
                DeValue::String(s) => out.push(element.with(s.to_string())),
                other => {
                    self.wrong_type(element, "a string", other, ());
                }
            }
        }
        field.with(out)
    }
}

impl<'d, 't> Section<'d, 't> {
    /// Whether the file has this key at all (for optional tables).
    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    fn get(&self, key: &str) -> Option<&'d Spanned<DeValue<'t>>> {
        let table = self.table?;
        table
            .iter()
            .find(|(k, _)| k.get_ref() == key)
            .map(|(_, v)| v)
    }

    fn child(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }
}

impl Field<()> {
    fn with<T>(self, value: T) -> Field<T> {
        Field {
            value,
            key: self.key,
            line: self.line,
        }
    }
}

/// "a string", "an integer", … for messages.
fn a(type_name: &str) -> String {
    let article = if type_name.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    format!("{article} {type_name}")
}

/// Hides the password of any `scheme://user:password@host` in text shown back to the
/// operator (a syntax error quotes the line it is on, and that may be `store.url`).
pub(super) fn redact_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let authority_end = tail
            .find(|c: char| {
                c == '/' || c == '?' || c == '#' || c.is_whitespace() || c == '"' || c == '\''
            })
            .unwrap_or(tail.len());
        let authority = &tail[..authority_end];
        match authority.rfind('@') {
            Some(userinfo_end) => {
                let userinfo = &authority[..userinfo_end];
                match userinfo.split_once(':') {
                    Some((user, _)) => {
                        out.push_str(user);
                        out.push_str(":****");
                    }
                    None => out.push_str(userinfo),
                }
                out.push_str(&authority[userinfo_end..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[authority_end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden_in_quoted_lines() {
        assert_eq!(
            redact_userinfo("url = postgres://gw:s3cret@db:5432/x?sslmode=require"),
            "url = postgres://gw:****@db:5432/x?sslmode=require"
        );
        assert_eq!(
            redact_userinfo("postgres://gw@db/x and http://h:1/"),
            "postgres://gw@db/x and http://h:1/"
        );
    }
}
