//! The one place client commands print: a result as a table (or lines) for people, or as
//! JSON with `--json`; an error as `ferry: <message>` on stderr with exit code 1.

use serde::Serialize;
use std::fmt::Display;

/// Prints a failure as `ferry: <message>` on stderr and returns the exit code, 1.
pub fn fail(e: impl Display) -> i32 {
    eprintln!("ferry: {e}");
    1
}

/// Prints `v` as indented JSON on stdout.
pub fn print_json<T: Serialize + ?Sized>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).expect("serializable"));
}

/// Prints rows under upper-cased headers, each column padded to its widest cell and two
/// spaces apart (trailing blanks trimmed), so scripts can split on whitespace.
pub fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(&headers.iter().map(|h| h.to_uppercase()).collect::<Vec<_>>());
    for r in rows {
        line(r);
    }
}

/// The exit code of a command that printed its own output: 0, or 1 once the error is printed.
pub fn finish(r: Result<(), impl Display>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => fail(e),
    }
}

/// Prints a command's result: as JSON with `json`, else as `human` prints it; or its error.
/// Returns the exit code.
pub fn show<T: Serialize>(json: bool, r: Result<T, impl Display>, human: impl FnOnce(T)) -> i32 {
    finish(r.map(|v| if json { print_json(&v) } else { human(v) }))
}
