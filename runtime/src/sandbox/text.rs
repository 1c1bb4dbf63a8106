//! Text a guest hands the host, made safe to print: bounded in length and
//! with control characters escaped, so a sink can neither flood the host's
//! logs nor forge a line of them.

use std::fmt::Write;

/// Longest guest string kept (error messages, rejection reasons, log
/// messages), in bytes; the rest is cut with a marker saying how much.
pub const MAX_TEXT: usize = 4 << 10;

/// `text` with control characters escaped (`\n`, `\r`, `\t`, `\u{1b}`, ...)
/// and cut to at most `max` bytes of the original, with a marker
/// `... [cut N bytes]` when it was longer.
pub fn clean(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max) + 32);
    let mut cut = text.len();
    for (i, c) in text.char_indices() {
        if i + c.len_utf8() > max {
            cut = i;
            break;
        }
        if c.is_control() {
            match c {
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                _ => {
                    let _ = write!(out, "\\u{{{:x}}}", c as u32);
                }
            }
        } else {
            out.push(c);
        }
    }
    if cut < text.len() {
        let _ = write!(out, "... [cut {} bytes]", text.len() - cut);
    }
    out
}

/// [`clean`] with the default cap.
pub fn guest(text: &str) -> String {
    clean(text, MAX_TEXT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_cannot_start_a_new_line() {
        let forged = "ok\n2026-01-01T00:00:00Z INFO sink \"payments\" committed 1000 records\r\x1b[2K";
        let clean = guest(forged);
        assert!(!clean.contains('\n') && !clean.contains('\r') && !clean.contains('\x1b'), "{clean}");
        assert_eq!(clean, "ok\\n2026-01-01T00:00:00Z INFO sink \"payments\" committed 1000 records\\r\\u{1b}[2K");
    }

    #[test]
    fn long_text_is_cut_with_a_marker_on_a_char_boundary() {
        let text = "é".repeat(3000); // 6000 bytes
        let clean = clean(&text, 4096);
        assert!(clean.ends_with("... [cut 1904 bytes]"), "{}", &clean[clean.len() - 40..]);
        assert_eq!(clean.len(), 4096 + "... [cut 1904 bytes]".len());
        assert_eq!(guest("short"), "short");
    }
}
