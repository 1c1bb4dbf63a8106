//! Templates that name a destination per record: `user:{key}`,
//! `events/{partition}`, `orders/{/customer/id}`.

use serde_json::Value;

use crate::Record;

/// A parsed template: literal text with placeholders `{key}` (the record's
/// key), `{topic}`, `{partition}`, `{lane}`, `{offset}` and JSON Pointers
/// into the value (`{/user/id}`); `{{` and `}}` are literal braces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(Vec<Part>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    /// The record's key (UTF-8).
    Key,
    Topic,
    Partition,
    Lane,
    Offset,
    /// A JSON Pointer into the value; strings are used as they are, other
    /// values as their JSON text.
    Field(String),
}

impl Template {
    /// Parses `text`; `{{` and `}}` are literal braces.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(c) = rest.chars().next() {
            if rest.starts_with("{{") || rest.starts_with("}}") {
                literal.push(c);
                rest = &rest[2..];
                continue;
            }
            if c == '}' {
                return Err(format!("template \"{text}\" has a '}}' without its '{{' (write '}}}}' for a brace)"));
            }
            if c != '{' {
                literal.push(c);
                rest = &rest[c.len_utf8()..];
                continue;
            }
            let Some(end) = rest.find('}') else {
                return Err(format!("template \"{text}\" has a '{{' without its '}}'"));
            };
            let name = &rest[1..end];
            let part = match name {
                "key" => Part::Key,
                "topic" => Part::Topic,
                "partition" => Part::Partition,
                "lane" => Part::Lane,
                "offset" => Part::Offset,
                pointer if pointer.starts_with('/') => Part::Field(pointer.to_string()),
                other => {
                    return Err(format!(
                        "template \"{text}\" names {{{other}}}; use {{key}}, {{topic}}, {{partition}}, {{lane}}, \
                         {{offset}} or a JSON Pointer such as {{/id}}"
                    ));
                }
            };
            if !literal.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut literal)));
            }
            parts.push(part);
            rest = &rest[end + 1..];
        }
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        Ok(Template(parts))
    }

    /// Whether the template names `{partition}`.
    pub fn names_partition(&self) -> bool {
        self.0.contains(&Part::Partition)
    }

    /// Whether the template names `{lane}`.
    pub fn names_lane(&self) -> bool {
        self.0.contains(&Part::Lane)
    }

    /// Whether the template reads the value (a JSON Pointer).
    pub fn reads_value(&self) -> bool {
        self.0.iter().any(|p| matches!(p, Part::Field(_)))
    }

    /// Whether the template is the same for every record of an instance.
    pub fn is_per_instance(&self) -> bool {
        self.0.iter().all(|p| matches!(p, Part::Text(_) | Part::Topic | Part::Partition | Part::Lane))
    }

    /// The template filled in for `record` (`value` is its parsed value, if
    /// the template reads it), or why it cannot be.
    pub fn expand(
        &self,
        record: &Record<'_>,
        lane: u32,
        value: Option<&Value>,
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        for part in &self.0 {
            match part {
                Part::Text(text) => out.extend_from_slice(text.as_bytes()),
                Part::Key => match record.key() {
                    Some(key) => out.extend_from_slice(key),
                    None => return Err("the record has no key, which the template names".into()),
                },
                Part::Topic => out.extend_from_slice(record.topic().as_bytes()),
                Part::Partition => out.extend_from_slice(record.partition().to_string().as_bytes()),
                Part::Lane => out.extend_from_slice(lane.to_string().as_bytes()),
                Part::Offset => out.extend_from_slice(record.offset().to_string().as_bytes()),
                Part::Field(pointer) => match value.and_then(|v| v.pointer(pointer)) {
                    None | Some(Value::Null) => {
                        return Err(format!("the value has no field {pointer}, which the template names"));
                    }
                    Some(Value::String(s)) => out.extend_from_slice(s.as_bytes()),
                    Some(other) => out.extend_from_slice(other.to_string().as_bytes()),
                },
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::batch;

    #[test]
    fn expands_every_placeholder() {
        let template = Template::parse("a:{key}:{topic}:{partition}:{lane}:{offset}:{/user/id}:{/n}:{{x}}").unwrap();
        let b = batch("t", 3, &[(9, Some(b"k1"), br#"{"user":{"id":"u7"},"n":1.5}"#)]);
        let record = b.records().next().unwrap().unwrap();
        let value: Value = record.json().unwrap();
        let mut out = Vec::new();
        template.expand(&record, 2, Some(&value), &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "a:k1:t:3:2:9:u7:1.5:{x}");
        assert!(template.names_partition() && template.names_lane() && template.reads_value());
        assert!(!template.is_per_instance());
        assert!(Template::parse("s:{partition}").unwrap().is_per_instance());
    }

    #[test]
    fn says_what_is_missing() {
        let b = batch("t", 0, &[(1, None, br#"{"a":null}"#)]);
        let record = b.records().next().unwrap().unwrap();
        let value: Value = record.json().unwrap();
        let mut out = Vec::new();
        let expand = |t: &str, out: &mut Vec<u8>| Template::parse(t).unwrap().expand(&record, 0, Some(&value), out);
        assert_eq!(expand("{key}", &mut out), Err("the record has no key, which the template names".into()));
        assert_eq!(expand("{/a}", &mut out), Err("the value has no field /a, which the template names".into()));
        assert_eq!(
            Template::parse("x{id}").unwrap_err(),
            "template \"x{id}\" names {id}; use {key}, {topic}, {partition}, {lane}, {offset} or a JSON Pointer such \
             as {/id}"
        );
        assert_eq!(Template::parse("x{key").unwrap_err(), "template \"x{key\" has a '{' without its '}'");
        assert_eq!(
            Template::parse("x}").unwrap_err(),
            "template \"x}\" has a '}' without its '{' (write '}}' for a brace)"
        );
    }
}
