//! Names as bytes, shown as text. A Unix name is any bytes but `/` and NUL, and cairn stores
//! them as they are (store-format/tree.md); only where a name meets text (a listing, an error,
//! JSON, a path typed on the command line) does it need a form. That form is one rule, here, so
//! that what `cairn ls` prints can be given back to `restore --include` or `dump`:
//!
//! - a name that is UTF-8 without control characters, reordering marks or `\` is shown as it is;
//! - otherwise `\` becomes `\\`, a byte that is not UTF-8 `\xNN`, a tab, newline or carriage
//!   return `\t`, `\n`, `\r`, another ASCII control `\xNN`, and a C1 control (which a terminal
//!   may take as an escape sequence) or a mark that reorders text (`\u{202e}`) `\u{NN}`.
//!
//! [`unescape`] reads that form back. JSON carries the name itself where it is UTF-8, and the
//! bytes in base64 beside the shown form where it is not ([`json`]).

use std::borrow::Cow;
use std::fmt::Write as _;

/// `bytes` as text: itself, or escaped as the module says.
pub fn shown(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) if !text.chars().any(needs_escape) => Cow::Borrowed(text),
        _ => Cow::Owned(escaped(bytes)),
    }
}

/// A path of the file system as text, as [`shown`] shows a name.
pub fn shown_path(path: &std::path::Path) -> Cow<'_, str> {
    shown(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()))
}

/// A source, tag or host name typed by the user, refused if it holds a control character or a
/// reordering mark: it is shown in `status`, `log` and notifications, and one holding a newline
/// could pass for other lines there (display escapes it anyway: a manifest can come from a
/// compromised host). For clap's `value_parser`.
pub fn label(text: &str) -> Result<String, String> {
    match text.chars().find(|&c| c.is_control() || reorders(c)) {
        Some(c) => Err(format!(
            "{} holds the control character or reordering mark {:?}: give a name without one",
            shown(text.as_bytes()),
            c
        )),
        None => Ok(text.to_string()),
    }
}

fn needs_escape(c: char) -> bool {
    c == '\\' || c.is_control() || reorders(c)
}

/// The invisible marks that change the order text is shown in (bidirectional overrides and
/// isolates, the left-to-right and right-to-left marks): a name holding one can look like
/// another (`exe.txt` shown for `txt.exe`).
fn reorders(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn escaped(mut bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() + 8);
    while !bytes.is_empty() {
        let (valid, rest) = match std::str::from_utf8(bytes) {
            Ok(text) => (text, &bytes[bytes.len()..]),
            Err(e) => {
                let (valid, rest) = bytes.split_at(e.valid_up_to());
                (std::str::from_utf8(valid).expect("valid up to here"), rest)
            }
        };
        for c in valid.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\t' => out.push_str("\\t"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                c if c.is_ascii_control() => write!(out, "\\x{:02x}", c as u32).expect("a String takes it"),
                c if c.is_control() || reorders(c) => write!(out, "\\u{{{:x}}}", c as u32).expect("a String takes it"),
                c => out.push(c),
            }
        }
        // The bytes after the valid part start with one or more that are not UTF-8.
        let bad = match std::str::from_utf8(rest) {
            Ok(_) => 0,
            Err(e) => e.error_len().unwrap_or(rest.len()),
        };
        for byte in &rest[..bad] {
            write!(out, "\\x{byte:02x}").expect("a String takes it");
        }
        bytes = &rest[bad..];
    }
    out
}

/// The bytes whose [`shown`] form is `text`, if `text` is such a form with at least one escape;
/// `None` for text without escapes or with a `\` that starts none.
pub fn unescape(text: &[u8]) -> Option<Vec<u8>> {
    if !text.contains(&b'\\') {
        return None;
    }
    let mut out = Vec::with_capacity(text.len());
    let mut rest = text;
    while let Some((&byte, after)) = rest.split_first() {
        rest = after;
        if byte != b'\\' {
            out.push(byte);
            continue;
        }
        let (&kind, after) = rest.split_first()?;
        rest = after;
        match kind {
            b'\\' => out.push(b'\\'),
            b't' => out.push(b'\t'),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b'x' => {
                let hex = rest.get(..2)?;
                out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                rest = &rest[2..];
            }
            b'u' => {
                let inner = rest.strip_prefix(b"{")?;
                let end = inner.iter().position(|&b| b == b'}')?;
                let code = u32::from_str_radix(std::str::from_utf8(&inner[..end]).ok()?, 16).ok()?;
                let c = char::from_u32(code)?;
                out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                rest = &inner[end + 1..];
            }
            _ => return None,
        }
    }
    Some(out)
}

/// `bytes` as JSON carries them: the text, which is the name itself where it is UTF-8 (JSON
/// escapes what it must) and its [`shown`] form where not, and then also the bytes in base64,
/// for a `_raw` field beside it (as restic's `linktarget_raw`).
pub fn json(bytes: &[u8]) -> (Cow<'_, str>, Option<String>) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (Cow::Borrowed(text), None),
        Err(_) => (Cow::Owned(escaped(bytes)), Some(crate::base64::encode(bytes))),
    }
}

/// Serializes `bytes` as the field `key` and, where they are not UTF-8, `raw_key` ([`json`]).
pub fn serialize_field<M: serde::ser::SerializeMap>(
    map: &mut M,
    key: &'static str,
    raw_key: &'static str,
    bytes: &[u8],
) -> Result<(), M::Error> {
    let (text, raw) = json(bytes);
    map.serialize_entry(key, &text)?;
    match raw {
        Some(raw) => map.serialize_entry(raw_key, &raw),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn plain_names_are_shown_as_they_are() {
        for name in ["app.db", "日本語 notes.txt", "a b", "-x", ""] {
            assert!(matches!(shown(name.as_bytes()), Cow::Borrowed(n) if n == name));
        }
    }

    #[test]
    fn what_a_terminal_or_a_reader_would_misread_is_escaped() {
        assert_eq!(shown(b"caf\xe9.txt"), "caf\\xe9.txt");
        assert_eq!(shown(b"a\\b"), "a\\\\b");
        assert_eq!(shown(b"line\nbreak\ttab\rcr"), "line\\nbreak\\ttab\\rcr");
        assert_eq!(shown(b"\x1b[31mred"), "\\x1b[31mred");
        assert_eq!(shown("csi\u{9b}".as_bytes()), "csi\\u{9b}");
        assert_eq!(shown(b"\xff\xfe\xe2\x82"), "\\xff\\xfe\\xe2\\x82");
        assert_eq!(shown("ok é \u{7f}".as_bytes()), "ok é \\x7f");
        assert_eq!(shown("photo\u{202e}gpj.exe".as_bytes()), "photo\\u{202e}gpj.exe");
    }

    #[test]
    fn unescape_refuses_what_is_no_escape() {
        assert_eq!(unescape(b"plain"), None);
        for bad in [&b"a\\"[..], b"\\q", b"\\x4", b"\\xzz", b"\\u{110000}", b"\\u{9b", b"\\u9b"] {
            assert_eq!(unescape(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    proptest! {
        #[test]
        fn every_name_comes_back_from_its_shown_form(name in proptest::collection::vec(any::<u8>(), 0..40)) {
            let text = shown(&name);
            match &text {
                Cow::Borrowed(_) => prop_assert_eq!(text.as_bytes(), &name[..]),
                Cow::Owned(t) => prop_assert_eq!(unescape(t.as_bytes()), Some(name.clone())),
            }
            prop_assert!(!text.chars().any(|c| c.is_control() || reorders(c)));
        }
    }
}
