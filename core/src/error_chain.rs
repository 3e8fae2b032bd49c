//! One way to print an error for an operator: the error and each of its sources, `a: b: c`.
//! The library crates keep causes as `#[source]` and never repeat them in a message, so this is
//! what turns them into one log field or one line on stderr.

/// `error` with its sources, `a: b: c`.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut cur = error.source();
    while let Some(e) = cur {
        out.push_str(": ");
        out.push_str(&e.to_string());
        cur = e.source();
    }
    out
}
