//! Checks raw JSON text before anything parses or stores it: nesting depth and NUL characters.
//!
//! One pass over the bytes of every request body, with the path of the offending value, so
//! that a body too deep to read back, or a text field no backend can store (PostgreSQL refuses
//! NUL in `text`), is a 422 on both backends before any work is done. Opaque JSON values
//! (`payload`, `result`) are stored as JSON text, where a NUL stays the escape `\u0000`, so
//! they may hold one. Text that is not well-formed JSON is left to the parser (a 400).

use crate::error::{Error, Result};

/// One open container and where in it the scanner is.
enum Frame {
    /// An object; the key of the value being read, once known.
    Object(Option<String>),
    /// An array; the index of the value being read.
    Array(usize),
}

/// Keys whose values are opaque JSON, stored as JSON text (escapes and all).
const OPAQUE_KEYS: [&str; 2] = ["payload", "result"];

/// Whether the value being read lies inside an opaque JSON value.
fn in_opaque(stack: &[Frame]) -> bool {
    stack.iter().any(|f| matches!(f, Frame::Object(Some(k)) if OPAQUE_KEYS.contains(&k.as_str())))
}

/// Renders a path the way field paths are written elsewhere: `jobs[3].payload.a`.
fn path_of(stack: &[Frame], leaf_key: Option<&str>) -> String {
    let mut out = String::new();
    let push_key = |out: &mut String, k: &str| {
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(k);
    };
    for f in stack {
        match f {
            Frame::Object(Some(k)) => push_key(&mut out, k),
            Frame::Object(None) => {}
            Frame::Array(i) => out.push_str(&format!("[{i}]")),
        }
    }
    if let Some(k) = leaf_key {
        push_key(&mut out, k);
    }
    if out.is_empty() { "body".into() } else { out }
}

/// Reads the string starting after its opening quote at `i`; returns the index after the
/// closing quote, whether it holds a NUL, and its text (only for object keys, to name paths).
fn read_string(b: &[u8], mut i: usize, keep: bool) -> Option<(usize, bool, String)> {
    let mut nul = false;
    let mut text = Vec::new();
    while i < b.len() {
        match b[i] {
            b'"' => return Some((i + 1, nul, String::from_utf8_lossy(&text).into_owned())),
            b'\\' => {
                let esc = *b.get(i + 1)?;
                if esc == b'u' {
                    let hex = std::str::from_utf8(b.get(i + 2..i + 6)?).ok()?;
                    let code = u32::from_str_radix(hex, 16).ok()?;
                    nul |= code == 0;
                    if keep && code == 0 {
                        text.extend(b"\\u0000"); // shown, not embedded, in a field name
                    } else if keep {
                        text.extend(char::from_u32(code).unwrap_or('\u{fffd}').to_string().bytes());
                    }
                    i += 6;
                } else {
                    if keep {
                        text.push(esc);
                    }
                    i += 2;
                }
            }
            0 => {
                nul = true;
                i += 1;
            }
            c => {
                if keep {
                    text.push(c);
                }
                i += 1;
            }
        }
    }
    None
}

/// Checks that `body` nests at most `max_depth` containers deep and holds no NUL character in
/// any string or key outside opaque JSON values. Malformed JSON passes (the parser reports it with its position).
pub fn check(body: &[u8], max_depth: usize) -> Result<()> {
    let mut stack: Vec<Frame> = Vec::new();
    // Inside an object, whether the next string is a key.
    let mut expect_key = false;
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            open @ (b'{' | b'[') => {
                if stack.len() >= max_depth {
                    return Err(Error::invalid(
                        path_of(&stack, None),
                        format!("JSON nested deeper than {max_depth} levels (limits.max_json_depth)"),
                    ));
                }
                stack.push(if open == b'{' { Frame::Object(None) } else { Frame::Array(0) });
                expect_key = open == b'{';
                i += 1;
            }
            b'}' | b']' => {
                stack.pop();
                expect_key = false;
                i += 1;
            }
            b',' => {
                match stack.last_mut() {
                    Some(Frame::Array(n)) => *n += 1,
                    Some(Frame::Object(k)) => {
                        *k = None;
                        expect_key = true;
                    }
                    None => return Ok(()),
                }
                i += 1;
            }
            b':' => {
                expect_key = false;
                i += 1;
            }
            b'"' => {
                let is_key = expect_key;
                let Some((next, nul, text)) = read_string(body, i + 1, is_key) else { return Ok(()) };
                if nul && !in_opaque(&stack) {
                    let leaf = is_key.then_some(text.as_str());
                    return Err(Error::invalid(
                        path_of(&stack, leaf),
                        "text must not contain NUL characters (\\u0000)",
                    ));
                }
                if is_key && let Some(Frame::Object(k)) = stack.last_mut() {
                    *k = Some(text);
                }
                i = next;
            }
            _ => i += 1,
        }
    }
    Ok(())
}

/// Whether a decoded string holds a NUL, for text that arrives outside a JSON body.
pub fn has_nul(text: &str) -> bool {
    text.contains('\0')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(body: &str, depth: usize) -> Option<String> {
        check(body.as_bytes(), depth).err().map(|e| e.field.unwrap())
    }

    #[test]
    fn depth_is_counted_in_containers_and_named() {
        assert_eq!(field("[[[]]]", 3), None);
        assert_eq!(field("[[[[]]]]", 3).as_deref(), Some("[0][0][0]"));
        assert_eq!(field(r#"{"a":{"b":[1,{"c":{}}]}}"#, 4).as_deref(), Some("a.b[1].c"));
        assert_eq!(field(r#"{"a":"[[[[[[","b":1}"#, 1), None, "brackets in strings do not count");
        let deep = "[".repeat(100_000);
        assert_eq!(field(&deep, 64).as_deref(), Some("[0]".repeat(64).as_str()));
    }

    #[test]
    fn nul_is_found_in_values_and_keys_but_not_in_escaped_backslashes() {
        assert_eq!(
            field(r#"{"jobs":[{"q":1},{"unique_key":"a\u0000b"}]}"#, 64).as_deref(),
            Some("jobs[1].unique_key")
        );
        assert_eq!(field(r#"{"meta":{"k\u0000":1}}"#, 64).as_deref(), Some("meta.k\\u0000"));
        assert_eq!(field(r#"{"tags":["a","\u0000"]}"#, 64).as_deref(), Some("tags[1]"));
        // Opaque JSON is stored as JSON text, where the escape stays an escape.
        assert_eq!(field(r#"{"payload":{"k\u0000":"\u0000"},"result":"\u0000"}"#, 64), None);
        assert_eq!(field(r#"{"job":{"payload":["\u0000"]},"name":"\u0000"}"#, 64).as_deref(), Some("name"));
        assert_eq!(field(r#"{"reason":"\\u0000"}"#, 64), None, "an escaped backslash, then text");
        assert_eq!(field(r#"{"reason":"\u00000"}"#, 64).as_deref(), Some("reason"));
        assert_eq!(field(r#""\u0000""#, 64).as_deref(), Some("body"));
        assert_eq!(field(r#"{"a":"\u0001"}"#, 64), None);
    }

    #[test]
    fn malformed_text_is_left_to_the_parser() {
        assert!(check(br#"{"a":"\u00"#, 64).is_ok());
        assert!(check(b"{\"a\":\"unterminated", 64).is_ok());
        assert!(check(b"]]]}}}", 64).is_ok());
    }
}
