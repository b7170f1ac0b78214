//! Rendering an error and its causes for people: each cause once, even when an error's
//! message already includes its source.

use std::error::Error;

/// `error: cause: deeper cause`, skipping any cause whose text the message already holds.
pub fn describe(err: &(dyn Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("reading the root: {0}")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("bad signature")]
    struct Inner;

    #[derive(Debug, thiserror::Error)]
    #[error("opening the key")]
    struct Plain(#[source] Inner);

    #[test]
    fn each_cause_once() {
        assert_eq!(describe(&Outer(Inner)), "reading the root: bad signature");
        assert_eq!(describe(&Plain(Inner)), "opening the key: bad signature");
    }
}
