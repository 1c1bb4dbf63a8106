//! RESP2, the Redis protocol: commands as arrays of bulk strings, and an
//! incremental reply parser.

use std::fmt;

/// Appends a command (an array of bulk strings) to `out`.
pub fn command(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.push(b'*');
    out.extend_from_slice(args.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    for arg in args {
        out.push(b'$');
        out.extend_from_slice(arg.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// A reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Simple(String),
    /// `-ERR ...`: the server refused the command.
    Error(String),
    /// `:1`
    Integer(i64),
    /// `$3\r\nabc` (`None` for the null bulk string).
    Bulk(Option<Vec<u8>>),
    /// `*2\r\n...` (`None` for the null array).
    Array(Option<Vec<Reply>>),
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reply::Simple(s) => write!(f, "{s}"),
            Reply::Error(e) => write!(f, "{e}"),
            Reply::Integer(n) => write!(f, "{n}"),
            Reply::Bulk(Some(b)) => write!(f, "{}", String::from_utf8_lossy(b)),
            Reply::Bulk(None) | Reply::Array(None) => write!(f, "(nil)"),
            Reply::Array(Some(items)) => write!(f, "({} items)", items.len()),
        }
    }
}

/// Nesting deeper than this is refused (no command this sink sends gets
/// more than one level back).
const MAX_DEPTH: usize = 8;

/// Parses one reply from the front of `buf`: `Ok(None)` if more bytes are
/// needed, else the reply and how many bytes it took.
pub fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, String> {
    parse_at(buf, 0, 0)
}

fn line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let end = buf.get(at..)?.windows(2).position(|w| w == b"\r\n")?;
    Some((&buf[at..at + end], at + end + 2))
}

fn number(text: &[u8]) -> Result<i64, String> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("the server sent {:?} where a number belongs", String::from_utf8_lossy(text)))
}

/// The reply that starts at `at`, and where it ends.
fn parse_at(buf: &[u8], at: usize, depth: usize) -> Result<Option<(Reply, usize)>, String> {
    if depth > MAX_DEPTH {
        return Err(format!("the server sent a reply nested deeper than {MAX_DEPTH} levels"));
    }
    let Some(&kind) = buf.get(at) else { return Ok(None) };
    let Some((text, next)) = line(buf, at + 1) else { return Ok(None) };
    let string = || String::from_utf8_lossy(text).into_owned();
    let reply = match kind {
        b'+' => (Reply::Simple(string()), next),
        b'-' => (Reply::Error(string()), next),
        b':' => (Reply::Integer(number(text)?), next),
        b'$' => match number(text)? {
            -1 => (Reply::Bulk(None), next),
            n if n < 0 => return Err(format!("the server sent a bulk string of length {n}")),
            n => {
                let end = next + n as usize;
                if buf.len() < end + 2 {
                    return Ok(None);
                }
                if &buf[end..end + 2] != b"\r\n" {
                    return Err("the server sent a bulk string without its line end".into());
                }
                (Reply::Bulk(Some(buf[next..end].to_vec())), end + 2)
            }
        },
        b'*' => match number(text)? {
            -1 => (Reply::Array(None), next),
            n if n < 0 => return Err(format!("the server sent an array of length {n}")),
            n => {
                let mut items = Vec::with_capacity((n as usize).min(1024));
                let mut at = next;
                for _ in 0..n {
                    let Some((item, after)) = parse_at(buf, at, depth + 1)? else { return Ok(None) };
                    items.push(item);
                    at = after;
                }
                (Reply::Array(Some(items)), at)
            }
        },
        other => return Err(format!("the server sent a reply of unknown type {:?}", other as char)),
    };
    Ok(Some(reply))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_commands_as_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        command(&mut out, &[b"SET", b"k", b"a\r\nb", b""]);
        assert_eq!(out, b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$4\r\na\r\nb\r\n$0\r\n\r\n");
    }

    #[test]
    fn parses_every_reply_kind_and_waits_for_more_at_every_cut() {
        let text: &[u8] = b"+OK\r\n-ERR no\r\n:42\r\n$5\r\nab\r\nc\r\n$-1\r\n*2\r\n$1\r\nx\r\n*1\r\n:-3\r\n*-1\r\n";
        let expected = vec![
            Reply::Simple("OK".into()),
            Reply::Error("ERR no".into()),
            Reply::Integer(42),
            Reply::Bulk(Some(b"ab\r\nc".to_vec())),
            Reply::Bulk(None),
            Reply::Array(Some(vec![Reply::Bulk(Some(b"x".to_vec())), Reply::Array(Some(vec![Reply::Integer(-3)]))])),
            Reply::Array(None),
        ];
        let mut got = Vec::new();
        let mut at = 0;
        while let Some((reply, used)) = parse(&text[at..]).unwrap() {
            got.push(reply);
            at += used;
        }
        assert_eq!(at, text.len());
        assert_eq!(got, expected);
        // Every proper prefix of one reply is incomplete, never an error.
        let mut start = 0;
        for reply in &expected {
            let (_, used) = parse(&text[start..]).unwrap().unwrap();
            for cut in start..start + used {
                assert_eq!(parse(&text[start..cut]), Ok(None), "{reply:?} cut at {cut}");
            }
            start += used;
        }
    }

    #[test]
    fn refuses_malformed_replies() {
        assert_eq!(parse(b"?x\r\n"), Err("the server sent a reply of unknown type '?'".into()));
        assert_eq!(parse(b":x\r\n"), Err("the server sent \"x\" where a number belongs".into()));
        assert_eq!(parse(b"$-2\r\n"), Err("the server sent a bulk string of length -2".into()));
        assert_eq!(parse(b"$1\r\nab\r\n"), Err("the server sent a bulk string without its line end".into()));
        let deep = "*1\r\n".repeat(10) + ":1\r\n";
        assert_eq!(parse(deep.as_bytes()), Err("the server sent a reply nested deeper than 8 levels".into()));
    }
}
