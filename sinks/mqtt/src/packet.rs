//! MQTT 3.1.1 control packets: the few a publisher sends (CONNECT,
//! PUBLISH, PINGREQ, DISCONNECT) and reads (CONNACK, PUBACK, PINGRESP).

/// The largest remaining length the protocol can express (256 MiB - 1).
pub const MAX_REMAINING: usize = 268_435_455;

/// Appends the variable-length "remaining length".
fn remaining(out: &mut Vec<u8>, mut len: usize) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
}

/// Appends a UTF-8 string or binary field with its 16-bit length.
fn field(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// What CONNECT carries.
pub struct Connect<'a> {
    /// Client identifier.
    pub client_id: &'a str,
    /// User name, if any.
    pub username: Option<&'a str>,
    /// Password, if any (needs a user name in 3.1.1).
    pub password: Option<&'a str>,
    /// Keep-alive in seconds (0: off).
    pub keep_alive: u16,
}

/// Appends a CONNECT packet with a clean session.
pub fn connect(out: &mut Vec<u8>, c: &Connect<'_>) {
    let mut body = Vec::new();
    field(&mut body, b"MQTT");
    body.push(4); // protocol level 3.1.1
    let mut flags = 0x02; // clean session
    if c.username.is_some() {
        flags |= 0x80;
    }
    if c.password.is_some() {
        flags |= 0x40;
    }
    body.push(flags);
    body.extend_from_slice(&c.keep_alive.to_be_bytes());
    field(&mut body, c.client_id.as_bytes());
    if let Some(user) = c.username {
        field(&mut body, user.as_bytes());
    }
    if let Some(password) = c.password {
        field(&mut body, password.as_bytes());
    }
    out.push(0x10);
    remaining(out, body.len());
    out.extend_from_slice(&body);
}

/// Why a topic or payload cannot be published.
pub fn check_topic(topic: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(topic).map_err(|_| "the topic is not UTF-8".to_string())?;
    if text.is_empty() {
        return Err("the topic is empty".into());
    }
    if topic.len() > u16::MAX as usize {
        return Err(format!("the topic is {} bytes, over MQTT's limit of 65535", topic.len()));
    }
    if let Some(c) = text.chars().find(|c| matches!(c, '+' | '#' | '\0')) {
        return Err(format!("the topic {text:?} holds {c:?}, which a published topic must not"));
    }
    Ok(())
}

/// The size of a PUBLISH's remaining length for this topic and payload.
pub fn publish_len(topic: &[u8], payload: &[u8], qos: u8) -> usize {
    2 + topic.len() + if qos > 0 { 2 } else { 0 } + payload.len()
}

/// Appends a PUBLISH packet (`packet_id` is used at QoS 1 only). The topic
/// must have passed [`check_topic`] and the size [`publish_len`] must be at
/// most [`MAX_REMAINING`].
pub fn publish(out: &mut Vec<u8>, topic: &[u8], payload: &[u8], qos: u8, retain: bool, packet_id: u16) {
    out.push(0x30 | (qos << 1) | u8::from(retain));
    remaining(out, publish_len(topic, payload, qos));
    field(out, topic);
    if qos > 0 {
        out.extend_from_slice(&packet_id.to_be_bytes());
    }
    out.extend_from_slice(payload);
}

/// PINGREQ.
pub const PINGREQ: [u8; 2] = [0xC0, 0x00];
/// DISCONNECT.
pub const DISCONNECT: [u8; 2] = [0xE0, 0x00];

/// A packet the broker sends a publisher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// CONNACK with its return code (0: accepted).
    ConnAck(u8),
    /// PUBACK of a packet identifier.
    PubAck(u16),
    /// PINGRESP.
    PingResp,
    /// Any other packet (type, body length), skipped.
    Other(u8, usize),
}

/// Parses one packet from the front of `buf`: `Ok(None)` if more bytes
/// are needed, else the packet and how many bytes it took.
pub fn parse(buf: &[u8]) -> Result<Option<(Incoming, usize)>, String> {
    let Some(&first) = buf.first() else { return Ok(None) };
    let mut len = 0usize;
    let mut at = 1;
    loop {
        let Some(&byte) = buf.get(at) else { return Ok(None) };
        len |= usize::from(byte & 0x7f) << (7 * (at - 1));
        at += 1;
        if byte & 0x80 == 0 {
            break;
        }
        if at > 4 {
            return Err("the broker sent a packet with a malformed remaining length".into());
        }
    }
    if buf.len() < at + len {
        return Ok(None);
    }
    let body = &buf[at..at + len];
    let packet = match (first >> 4, len) {
        (2, 2) => Incoming::ConnAck(body[1]),
        (4, 2) => Incoming::PubAck(u16::from_be_bytes([body[0], body[1]])),
        (13, 0) => Incoming::PingResp,
        (2 | 4 | 13, _) => {
            return Err(format!("the broker sent a packet of type {} with a body of {len} bytes", first >> 4));
        }
        (kind, _) => Incoming::Other(kind, len),
    };
    Ok(Some((packet, at + len)))
}

/// CONNACK's return code in words.
pub fn connack_reason(code: u8) -> &'static str {
    match code {
        1 => "unacceptable protocol version",
        2 => "client identifier rejected",
        3 => "server unavailable",
        4 => "bad user name or password",
        5 => "not authorized",
        _ => "unknown return code",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_connect_and_publish_as_the_spec_shows() {
        let mut out = Vec::new();
        connect(&mut out, &Connect { client_id: "c1", username: Some("u"), password: Some("pw"), keep_alive: 60 });
        assert_eq!(
            out,
            [&[0x10, 21, 0, 4][..], b"MQTT", &[4, 0xC2, 0, 60, 0, 2], b"c1", &[0, 1], b"u", &[0, 2], b"pw"].concat()
        );
        let mut out = Vec::new();
        publish(&mut out, b"a/b", b"hi", 1, true, 0x0102);
        assert_eq!(out, [&[0x33, 9, 0, 3][..], b"a/b", &[1, 2], b"hi"].concat());
        let mut out = Vec::new();
        publish(&mut out, b"t", b"x", 0, false, 7);
        assert_eq!(out, [&[0x30, 4, 0, 1][..], b"t", b"x"].concat());
    }

    #[test]
    fn encodes_remaining_lengths_at_every_boundary() {
        for (len, bytes) in [
            (0, vec![0x00]),
            (127, vec![0x7f]),
            (128, vec![0x80, 0x01]),
            (16_383, vec![0xff, 0x7f]),
            (16_384, vec![0x80, 0x80, 0x01]),
            (2_097_152, vec![0x80, 0x80, 0x80, 0x01]),
            (MAX_REMAINING, vec![0xff, 0xff, 0xff, 0x7f]),
        ] {
            let mut out = Vec::new();
            remaining(&mut out, len);
            assert_eq!(out, bytes, "{len}");
            // And the parser reads it back (as the length of an unknown packet).
            let mut packet = vec![0x50];
            packet.extend_from_slice(&out);
            let expected = if len == 0 { Some((Incoming::Other(5, 0), 2)) } else { None };
            assert_eq!(parse(&packet), Ok(expected), "{len}: the body is missing");
        }
        let mut big = vec![0x30];
        remaining(&mut big, 200);
        big.extend(std::iter::repeat_n(0, 200));
        assert_eq!(parse(&big), Ok(Some((Incoming::Other(3, 200), 203))));
    }

    #[test]
    fn parses_acks_and_waits_for_more_at_every_cut() {
        let bytes = [0x20, 2, 0, 0, 0x40, 2, 0x12, 0x34, 0xD0, 0];
        let expected = [(Incoming::ConnAck(0), 4), (Incoming::PubAck(0x1234), 4), (Incoming::PingResp, 2)];
        let mut at = 0;
        for (packet, used) in expected {
            for cut in at..at + used {
                assert_eq!(parse(&bytes[at..cut]), Ok(None));
            }
            assert_eq!(parse(&bytes[at..]), Ok(Some((packet, used))));
            at += used;
        }
        assert_eq!(parse(&[0x40, 3, 0, 1, 2]), Err("the broker sent a packet of type 4 with a body of 3 bytes".into()));
        assert_eq!(
            parse(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01]),
            Err("the broker sent a packet with a malformed remaining length".into())
        );
    }

    #[test]
    fn refuses_topics_a_publisher_must_not_use() {
        assert_eq!(check_topic(b"a/b c"), Ok(()));
        assert_eq!(check_topic(b""), Err("the topic is empty".into()));
        assert_eq!(
            check_topic(b"a/+/b"),
            Err("the topic \"a/+/b\" holds '+', which a published topic must not".into())
        );
        assert_eq!(check_topic(b"a/#"), Err("the topic \"a/#\" holds '#', which a published topic must not".into()));
        assert_eq!(check_topic(b"\xff"), Err("the topic is not UTF-8".into()));
    }
}
