//! Records to rows: the insert statement and each record's Bind message.

use std::collections::BTreeMap;

use bytes::{BufMut, BytesMut};
use postgres_protocol::IsNull;
use postgres_protocol::message::frontend;
use serde_json::Value;

use crate::Mode;

/// An SQL identifier, double-quoted (a `"` inside is doubled).
pub fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `INSERT INTO table (cols) VALUES ($1, ...)`, with the `ON CONFLICT`
/// clause of an upsert.
pub fn insert_sql(
    schema: Option<&str>,
    table: &str,
    columns: &[String],
    mode: Mode,
    key: &[String],
) -> Result<String, String> {
    if columns.is_empty() {
        return Err("\"columns\" must name at least one column".into());
    }
    if let Some(dup) = columns.iter().enumerate().find_map(|(i, c)| columns[..i].contains(c).then_some(c)) {
        return Err(format!("column \"{dup}\" is listed twice in \"columns\""));
    }
    let target = match schema {
        Some(schema) => format!("{}.{}", quote(schema), quote(table)),
        None => quote(table),
    };
    let names: Vec<String> = columns.iter().map(|c| quote(c)).collect();
    let params: Vec<String> = (1..=columns.len()).map(|i| format!("${i}")).collect();
    let mut sql = format!("INSERT INTO {target} ({}) VALUES ({})", names.join(", "), params.join(", "));
    match mode {
        Mode::Insert if !key.is_empty() => {
            return Err("\"key\" is only used with \"mode\": \"upsert\"".into());
        }
        Mode::Insert => {}
        Mode::Upsert => {
            if key.is_empty() {
                return Err("\"mode\": \"upsert\" needs \"key\": the columns of a unique index".into());
            }
            if let Some(missing) = key.iter().find(|k| !columns.contains(k)) {
                return Err(format!("key column \"{missing}\" is not in \"columns\""));
            }
            let keys: Vec<String> = key.iter().map(|k| quote(k)).collect();
            let updates: Vec<String> = columns
                .iter()
                .filter(|c| !key.contains(c))
                .map(|c| format!("{q} = EXCLUDED.{q}", q = quote(c)))
                .collect();
            if updates.is_empty() {
                sql.push_str(&format!(" ON CONFLICT ({}) DO NOTHING", keys.join(", ")));
            } else {
                sql.push_str(&format!(" ON CONFLICT ({}) DO UPDATE SET {}", keys.join(", "), updates.join(", ")));
            }
        }
    }
    Ok(sql)
}

/// Where each column's value comes from: a JSON Pointer into the value.
#[derive(Debug)]
pub struct Columns {
    pointers: Vec<String>,
}

impl Columns {
    /// Each column from `fields` (a JSON Pointer) or the field of its name.
    pub fn new(columns: &[String], fields: &BTreeMap<String, String>) -> Result<Columns, String> {
        if let Some(stray) = fields.keys().find(|f| !columns.contains(f)) {
            return Err(format!("\"fields\" names column \"{stray}\", which is not in \"columns\""));
        }
        let mut pointers = Vec::with_capacity(columns.len());
        for column in columns {
            let pointer = match fields.get(column) {
                Some(p) if p.is_empty() || p.starts_with('/') => p.clone(),
                Some(p) => {
                    return Err(format!(
                        "\"fields\" for column \"{column}\" must be a JSON Pointer starting with \"/\", not \"{p}\""
                    ));
                }
                None => format!("/{}", column.replace('~', "~0").replace('/', "~1")),
            };
            pointers.push(pointer);
        }
        Ok(Columns { pointers })
    }

    /// Appends Bind (of `statement`, every parameter as text) and Execute
    /// for one record to `out`, or says why the value cannot be a row.
    pub fn encode(&self, statement: &str, value: &[u8], out: &mut BytesMut) -> Result<(), String> {
        let value: Value = serde_json::from_slice(value).map_err(|e| format!("value is not JSON: {e}"))?;
        if !value.is_object() {
            return Err(format!("value is not a JSON object but {}", kind(&value)));
        }
        let params = self.pointers.iter().map(|p| value.pointer(p));
        frontend::bind("", statement, [], params, text, [], out).map_err(|_| "cannot encode the row".to_string())?;
        frontend::execute("", 0, out).map_err(|e| format!("cannot encode the row: {e}"))
    }
}

/// A JSON value as a text-format parameter.
fn text(value: Option<&Value>, out: &mut BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
    match value {
        None | Some(Value::Null) => return Ok(IsNull::Yes),
        Some(Value::String(s)) => out.put_slice(s.as_bytes()),
        Some(Value::Bool(b)) => out.put_slice(if *b { b"true" } else { b"false" }),
        Some(Value::Number(n)) => out.put_slice(n.to_string().as_bytes()),
        Some(other) => serde_json::to_writer(out.writer(), other)?,
    }
    Ok(IsNull::No)
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn builds_insert_and_upsert_statements() {
        let check = |schema, mode, key: &[&str], expected: Result<&str, &str>| {
            let got = insert_sql(schema, "Orders", &cols(&["id", "total", "a\"b"]), mode, &cols(key));
            assert_eq!(got.as_deref(), expected.map_err(str::to_string).as_deref());
        };
        check(None, Mode::Insert, &[], Ok(r#"INSERT INTO "Orders" ("id", "total", "a""b") VALUES ($1, $2, $3)"#));
        check(
            Some("s"),
            Mode::Upsert,
            &["id"],
            Ok(
                r#"INSERT INTO "s"."Orders" ("id", "total", "a""b") VALUES ($1, $2, $3) ON CONFLICT ("id") DO UPDATE SET "total" = EXCLUDED."total", "a""b" = EXCLUDED."a""b""#,
            ),
        );
        check(
            None,
            Mode::Upsert,
            &["id", "total", "a\"b"],
            Ok(
                r#"INSERT INTO "Orders" ("id", "total", "a""b") VALUES ($1, $2, $3) ON CONFLICT ("id", "total", "a""b") DO NOTHING"#,
            ),
        );
        check(None, Mode::Upsert, &[], Err("\"mode\": \"upsert\" needs \"key\": the columns of a unique index"));
        check(None, Mode::Upsert, &["nope"], Err("key column \"nope\" is not in \"columns\""));
        check(None, Mode::Insert, &["id"], Err("\"key\" is only used with \"mode\": \"upsert\""));
        assert_eq!(
            insert_sql(None, "t", &cols(&["a", "a"]), Mode::Insert, &[]),
            Err("column \"a\" is listed twice in \"columns\"".into())
        );
    }

    /// The parameters of an encoded Bind message, as text.
    fn params(out: &[u8]) -> Vec<Option<String>> {
        assert_eq!(out[0], b'B');
        let mut at = 5;
        for _ in 0..2 {
            at += out[at..].iter().position(|&b| b == 0).unwrap() + 1;
        }
        let formats = u16::from_be_bytes([out[at], out[at + 1]]) as usize;
        at += 2 + 2 * formats;
        let count = u16::from_be_bytes([out[at], out[at + 1]]) as usize;
        at += 2;
        let mut values = Vec::new();
        for _ in 0..count {
            let len = i32::from_be_bytes(out[at..at + 4].try_into().unwrap());
            at += 4;
            if len < 0 {
                values.push(None);
            } else {
                values.push(Some(String::from_utf8(out[at..at + len as usize].to_vec()).unwrap()));
                at += len as usize;
            }
        }
        values
    }

    #[test]
    fn maps_json_fields_to_text_parameters() {
        let fields = BTreeMap::from([("who".to_string(), "/customer/name".to_string())]);
        let columns = Columns::new(&cols(&["id", "who", "ok", "tags", "missing", "n", "a/b"]), &fields).unwrap();
        let mut out = BytesMut::new();
        let value = br#"{"id":7,"customer":{"name":"Zo\u00eb"},"ok":true,"tags":["x",1],"n":null,"a/b":1.5}"#;
        columns.encode("s", value, &mut out).unwrap();
        let some = |s: &str| Some(s.to_string());
        assert_eq!(
            params(&out),
            vec![some("7"), some("Zoë"), some("true"), some(r#"["x",1]"#), None, None, some("1.5")]
        );
        // Bind, then Execute of the unnamed portal.
        let bind_len = u32::from_be_bytes(out[1..5].try_into().unwrap()) as usize;
        assert_eq!(&out[1 + bind_len..], b"E\0\0\0\x09\0\0\0\0\0");
    }

    #[test]
    fn refuses_values_that_are_not_objects_and_bad_pointers() {
        let columns = Columns::new(&cols(&["id"]), &BTreeMap::new()).unwrap();
        let mut out = BytesMut::new();
        assert_eq!(columns.encode("s", b"[1]", &mut out), Err("value is not a JSON object but an array".into()));
        assert!(columns.encode("s", b"{", &mut out).unwrap_err().starts_with("value is not JSON: EOF"));
        let bad = BTreeMap::from([("id".to_string(), "id".to_string())]);
        assert_eq!(
            Columns::new(&cols(&["id"]), &bad).unwrap_err(),
            "\"fields\" for column \"id\" must be a JSON Pointer starting with \"/\", not \"id\""
        );
        let stray = BTreeMap::from([("x".to_string(), "/x".to_string())]);
        assert_eq!(
            Columns::new(&cols(&["id"]), &stray).unwrap_err(),
            "\"fields\" names column \"x\", which is not in \"columns\""
        );
    }
}
