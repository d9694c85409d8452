//! A small checker for the subset of OpenAPI 3.0 schemas that `deploy/openapi.yaml`
//! uses: `$ref`, `type`, `nullable`, `required`, `properties`, `additionalProperties`
//! (true or false), `enum`, `items`, `minItems`, `maxItems`, `minimum`, `maximum`,
//! `pattern`, and the annotations `format`, `default`, `description`, `example`.
//!
//! It refuses (panics on) any other keyword, so the document cannot promise something
//! that is not checked.

use serde_json::{json, Value};

/// The schema keywords the checker implements; the last four only annotate.
pub const KEYWORDS: &[&str] = &[
    "$ref",
    "type",
    "nullable",
    "required",
    "properties",
    "additionalProperties",
    "enum",
    "items",
    "minItems",
    "maxItems",
    "minimum",
    "maximum",
    "pattern",
    "format",
    "default",
    "description",
    "example",
];

/// Follows a local `$ref` ("#/components/…").
pub fn resolve<'d>(doc: &'d Value, reference: &Value) -> &'d Value {
    let r = reference.as_str().expect("$ref is a string");
    let pointer = r
        .strip_prefix('#')
        .unwrap_or_else(|| panic!("only local $refs are supported: {r}"));
    doc.pointer(pointer)
        .unwrap_or_else(|| panic!("$ref {r} points at nothing"))
}

/// Follows `$ref`s until an object that is not one (for responses, request bodies).
pub fn follow<'d>(doc: &'d Value, mut v: &'d Value) -> &'d Value {
    while let Some(r) = v.get("$ref") {
        v = resolve(doc, r);
    }
    v
}

/// Every way `value` departs from `schema`, as "where: what" lines.
pub fn validate(doc: &Value, schema: &Value, value: &Value, at: &str) -> Vec<String> {
    let mut errors = Vec::new();
    check(doc, schema, value, at, &mut errors);
    errors
}

fn check(doc: &Value, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
    let s = schema
        .as_object()
        .unwrap_or_else(|| panic!("schema for {at} is not an object"));
    for k in s.keys() {
        assert!(
            KEYWORDS.contains(&k.as_str()),
            "schema keyword {k:?} (for {at}) is not implemented by this checker"
        );
    }
    if let Some(r) = s.get("$ref") {
        // OpenAPI 3.0 ignores a $ref's siblings; refuse them rather than mislead.
        assert!(
            s.keys().all(|k| k == "$ref" || k == "description"),
            "a $ref with sibling keywords (for {at}) would be ignored"
        );
        return check(doc, resolve(doc, r), value, at, errors);
    }
    if value.is_null() {
        if s.get("nullable") != Some(&Value::Bool(true)) {
            errors.push(format!("{at}: null, which the document does not allow"));
        }
        return;
    }
    let ty = s
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("schema for {at} has no type"));
    let fits = match ty {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "integer" => value.is_u64() || value.is_i64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        other => panic!("unknown type {other:?} for {at}"),
    };
    if !fits {
        errors.push(format!("{at}: {value} is not of type {ty}"));
        return;
    }
    if let Some(allowed) = s.get("enum") {
        if !allowed.as_array().unwrap().contains(value) {
            errors.push(format!("{at}: {value} is not one of {allowed}"));
        }
    }
    if let Some(p) = s.get("pattern") {
        let p = p.as_str().unwrap();
        let text = value
            .as_str()
            .unwrap_or_else(|| panic!("pattern on a non-string ({at})"));
        if !pattern::is_match(p, text) {
            errors.push(format!("{at}: {text:?} does not match {p:?}"));
        }
    }
    if let Some(min) = s.get("minimum").and_then(Value::as_f64) {
        if value.as_f64().is_some_and(|v| v < min) {
            errors.push(format!("{at}: {value} is below {min}"));
        }
    }
    if let Some(max) = s.get("maximum").and_then(Value::as_f64) {
        if value.as_f64().is_some_and(|v| v > max) {
            errors.push(format!("{at}: {value} is above {max}"));
        }
    }
    if let Some(items) = value.as_array() {
        let count = items.len() as u64;
        if let Some(min) = s.get("minItems").and_then(Value::as_u64) {
            if count < min {
                errors.push(format!("{at}: {count} items, fewer than {min}"));
            }
        }
        if let Some(max) = s.get("maxItems").and_then(Value::as_u64) {
            if count > max {
                errors.push(format!("{at}: {count} items, more than {max}"));
            }
        }
        let item_schema = s
            .get("items")
            .unwrap_or_else(|| panic!("array without items ({at})"));
        for (i, item) in items.iter().enumerate() {
            check(doc, item_schema, item, &format!("{at}[{i}]"), errors);
        }
    }
    if let Some(object) = value.as_object() {
        let empty = serde_json::Map::new();
        let properties = s
            .get("properties")
            .map(|p| p.as_object().unwrap())
            .unwrap_or(&empty);
        for name in s
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = name.as_str().unwrap();
            if !object.contains_key(name) {
                errors.push(format!("{at}: required field {name:?} is missing"));
            }
        }
        let closed = match s.get("additionalProperties") {
            None | Some(Value::Bool(true)) => false,
            Some(Value::Bool(false)) => true,
            Some(_) => panic!("schema-valued additionalProperties ({at}) is not implemented"),
        };
        for (name, v) in object {
            match properties.get(name) {
                Some(p) => check(doc, p, v, &format!("{at}.{name}"), errors),
                None if closed => errors.push(format!("{at}: field {name:?} is not documented")),
                None => {}
            }
        }
    }
}

/// The subset of ECMA-262 regular expressions that `pattern`s here use: literals, `.`,
/// classes like `[0-9a-f:]`, `\d`, escaped punctuation, groups with `|`, the
/// quantifiers `?` `*` `+` `{n}` `{n,}` `{n,m}`, and the anchors `^` `$`. Anything else
/// panics, so no pattern goes unchecked. Unanchored patterns search, as in JSON Schema.
pub mod pattern {
    enum Atom {
        Char(char),
        Any,
        Class(Vec<(char, char)>, bool),
        Group(Vec<Vec<Piece>>),
        Start,
        End,
    }

    struct Piece {
        atom: Atom,
        min: usize,
        max: usize,
    }

    pub fn is_match(pattern: &str, text: &str) -> bool {
        let p: Vec<char> = pattern.chars().collect();
        let mut pos = 0;
        let alternatives = alternatives(&p, &mut pos);
        assert_eq!(pos, p.len(), "unbalanced ')' in {pattern:?}");
        let t: Vec<char> = text.chars().collect();
        (0..=t.len()).any(|start| {
            alternatives
                .iter()
                .any(|alt| sequence(alt, &t, start, &|_| true))
        })
    }

    fn alternatives(p: &[char], pos: &mut usize) -> Vec<Vec<Piece>> {
        let mut alts = vec![Vec::new()];
        while let Some(&c) = p.get(*pos) {
            if c == ')' {
                break;
            }
            *pos += 1;
            let atom = match c {
                '|' => {
                    alts.push(Vec::new());
                    continue;
                }
                '(' => {
                    assert_ne!(p.get(*pos), Some(&'?'), "(?…) groups are not supported");
                    let inner = alternatives(p, pos);
                    assert_eq!(p.get(*pos), Some(&')'), "unclosed '('");
                    *pos += 1;
                    Atom::Group(inner)
                }
                '[' => class(p, pos),
                '\\' => match escaped(p, pos) {
                    Ok(c) => Atom::Char(c),
                    Err(range) => Atom::Class(vec![range], false),
                },
                '.' => Atom::Any,
                '^' => Atom::Start,
                '$' => Atom::End,
                '?' | '*' | '+' | '{' | ']' | '}' => panic!("{c:?} out of place in a pattern"),
                c => Atom::Char(c),
            };
            let (min, max) = quantifier(p, pos);
            if matches!(atom, Atom::Start | Atom::End) {
                assert_eq!((min, max), (1, 1), "a quantified anchor");
            }
            alts.last_mut().unwrap().push(Piece { atom, min, max });
        }
        alts
    }

    /// After a backslash: a literal punctuation character, or `\d` as a range.
    fn escaped(p: &[char], pos: &mut usize) -> Result<char, (char, char)> {
        let c = *p.get(*pos).expect("a pattern ends in '\\'");
        *pos += 1;
        match c {
            'd' => Err(('0', '9')),
            c if c.is_ascii_punctuation() => Ok(c),
            c => panic!("\\{c} is not supported in patterns"),
        }
    }

    fn class(p: &[char], pos: &mut usize) -> Atom {
        let negated = p.get(*pos) == Some(&'^');
        if negated {
            *pos += 1;
        }
        let mut ranges = Vec::new();
        loop {
            let c = *p.get(*pos).expect("unclosed '['");
            *pos += 1;
            let lo = match c {
                ']' => break,
                '\\' => match escaped(p, pos) {
                    Ok(c) => c,
                    Err(range) => {
                        ranges.push(range);
                        continue;
                    }
                },
                c => c,
            };
            if p.get(*pos) == Some(&'-') && p.get(*pos + 1).is_some_and(|&c| c != ']') {
                let hi = p[*pos + 1];
                *pos += 2;
                ranges.push((lo, hi));
            } else {
                ranges.push((lo, lo));
            }
        }
        Atom::Class(ranges, negated)
    }

    fn quantifier(p: &[char], pos: &mut usize) -> (usize, usize) {
        let q = match p.get(*pos) {
            Some('?') => (0, 1),
            Some('*') => (0, usize::MAX),
            Some('+') => (1, usize::MAX),
            Some('{') => {
                let close = p[*pos..]
                    .iter()
                    .position(|&c| c == '}')
                    .expect("unclosed '{'");
                let inside: String = p[*pos + 1..*pos + close].iter().collect();
                let number = |s: &str| s.parse::<usize>().expect("a number in {…}");
                *pos += close;
                match inside.split_once(',') {
                    None => (number(&inside), number(&inside)),
                    Some((lo, "")) => (number(lo), usize::MAX),
                    Some((lo, hi)) => (number(lo), number(hi)),
                }
            }
            _ => return (1, 1),
        };
        *pos += 1;
        assert!(
            !matches!(p.get(*pos), Some('?' | '*' | '+' | '{')),
            "lazy or stacked quantifiers are not supported"
        );
        q
    }

    /// Matches `pieces` at `i`, then whatever `then` needs of the rest of the text.
    fn sequence(pieces: &[Piece], t: &[char], i: usize, then: &dyn Fn(usize) -> bool) -> bool {
        let Some((first, rest)) = pieces.split_first() else {
            return then(i);
        };
        match first.atom {
            Atom::Start => i == 0 && sequence(rest, t, i, then),
            Atom::End => i == t.len() && sequence(rest, t, i, then),
            _ => repeat(first, 0, rest, t, i, then),
        }
    }

    /// Greedy: one more `piece` if allowed, else (or on failure) the rest.
    fn repeat(
        piece: &Piece,
        done: usize,
        rest: &[Piece],
        t: &[char],
        i: usize,
        then: &dyn Fn(usize) -> bool,
    ) -> bool {
        let more = done < piece.max
            && one(&piece.atom, t, i, &|j| {
                j != i && repeat(piece, done + 1, rest, t, j, then)
            });
        more || (done >= piece.min && sequence(rest, t, i, then))
    }

    fn one(atom: &Atom, t: &[char], i: usize, then: &dyn Fn(usize) -> bool) -> bool {
        match atom {
            Atom::Char(c) => t.get(i) == Some(c) && then(i + 1),
            Atom::Any => i < t.len() && then(i + 1),
            Atom::Class(ranges, negated) => {
                t.get(i).is_some_and(|c| {
                    ranges.iter().any(|(lo, hi)| (lo..=hi).contains(&c)) != *negated
                }) && then(i + 1)
            }
            Atom::Group(alts) => alts.iter().any(|alt| sequence(alt, t, i, then)),
            Atom::Start | Atom::End => unreachable!("anchors are matched in sequence"),
        }
    }
}

/// Walks a schema, checking its keywords, $refs and patterns are ones the checker
/// implements, and that `required` names documented properties.
pub fn lint(doc: &Value, schema: &Value, at: &str) {
    let s = schema
        .as_object()
        .unwrap_or_else(|| panic!("{at}: schema is not an object"));
    for k in s.keys() {
        assert!(KEYWORDS.contains(&k.as_str()), "{at}: keyword {k:?}");
    }
    if let Some(r) = s.get("$ref") {
        resolve(doc, r);
        return;
    }
    assert!(s.contains_key("type"), "{at}: no type");
    if let Some(p) = s.get("pattern") {
        pattern::is_match(p.as_str().unwrap(), ""); // panics on what it cannot check
    }
    if let Some(items) = s.get("items") {
        lint(doc, items, &format!("{at}[]"));
    }
    if let Some(props) = s.get("properties").and_then(Value::as_object) {
        for (name, p) in props {
            lint(doc, p, &format!("{at}.{name}"));
        }
        for name in s
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            assert!(
                props.contains_key(name.as_str().unwrap()),
                "{at}: required {name} is not a property"
            );
        }
    }
    if s.get("type") == Some(&json!("object")) {
        assert_eq!(
            s.get("additionalProperties"),
            Some(&json!(false)),
            "{at}: every object this API sends or takes is closed"
        );
    }
}
