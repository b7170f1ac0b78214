//! Server-side HTML for the console: escaping, the page frame (navigation by role, the
//! sign-out form), times, byte sizes. Every value that did not come from this file goes
//! through [`esc`]; there is no inline script or style, so the CSP can forbid both.

use std::fmt::Write;

use crate::tokens::TokenRole;

/// Escapes text for HTML element content and double-quoted attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a path segment or query value.
pub fn url_part(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A Unix time as `YYYY-MM-DD HH:MM:SS UTC`, in a `<time>` element.
pub fn time(unix: i64) -> String {
    let iso = otter_keys::time::UtcTime::from_unix(unix).to_string();
    let shown = iso.replace('T', " ").replace('Z', " UTC");
    format!("<time datetime=\"{}\">{}</time>", esc(&iso), esc(&shown))
}

/// An optional time, "never" when absent.
pub fn time_or_never(unix: Option<i64>) -> String {
    unix.map_or_else(|| "<span class=\"muted\">never</span>".into(), time)
}

/// How long ago `then` was, from `now`, in words ("3 min ago").
pub fn ago(then: i64, now: i64) -> String {
    let d = now.saturating_sub(then);
    match d {
        i64::MIN..=-1 => "in the future".into(),
        0..=59 => format!("{d} s ago"),
        60..=3599 => format!("{} min ago", d / 60),
        3600..=86_399 => format!("{} h ago", d / 3600),
        _ => format!("{} d ago", d / 86_400),
    }
}

/// Bytes in a human unit.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A console page: which nav entry is current, which roles each entry needs.
pub struct Nav {
    /// Path under the console.
    pub path: &'static str,
    /// Label.
    pub label: &'static str,
    /// Roles that see it.
    pub roles: &'static [TokenRole],
}

/// Who is signed in, for the page frame.
pub struct Who<'a> {
    /// The token's label.
    pub label: &'a str,
    /// Its role.
    pub role: TokenRole,
    /// The session's CSRF token, for the sign-out form.
    pub csrf: &'a str,
    /// Open (unacknowledged) alerts (shown on the Security entry).
    pub alerts: u64,
}

/// A hidden CSRF field.
pub fn csrf_field(csrf: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(csrf)
    )
}

/// The whole page: head, header with navigation (only entries `who`'s role may open) and
/// sign-out, then `body` (already HTML).
pub fn page(title: &str, current: &str, who: Option<&Who>, nav: &[Nav], body: &str) -> String {
    let mut h = String::with_capacity(body.len() + 2048);
    let _ = write!(
        h,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"referrer\" content=\"no-referrer\">\
         <title>{} · Otter console</title>\
         <link rel=\"stylesheet\" href=\"/console/static/console.css\"></head><body>\
         <a class=\"skip\" href=\"#main\">Skip to content</a><header class=\"top\">\
         <a class=\"brand\" href=\"/console/\">Otter console</a>",
        esc(title)
    );
    if let Some(w) = who {
        h.push_str("<nav aria-label=\"Sections\"><ul>");
        for n in nav.iter().filter(|n| n.roles.contains(&w.role)) {
            let cur = if n.path == current {
                " aria-current=\"page\""
            } else {
                ""
            };
            let badge = if n.path == "/security" && w.alerts > 0 {
                format!(
                    " <span class=\"badge alert\" id=\"alert-count\" title=\"open alerts\">{}</span>",
                    w.alerts
                )
            } else {
                String::new()
            };
            let _ = write!(
                h,
                "<li><a href=\"/console{}\"{cur}>{}{badge}</a></li>",
                n.path,
                esc(n.label)
            );
        }
        let _ = write!(
            h,
            "</ul></nav><div class=\"who\"><span class=\"identity\">{} <span class=\"role role-{}\">{}</span></span>\
             <form method=\"post\" action=\"/console/logout\" class=\"inline\">{}\
             <button type=\"submit\" id=\"sign-out\">Sign out</button></form></div>",
            esc(w.label),
            w.role,
            w.role,
            csrf_field(w.csrf)
        );
    }
    let _ = write!(
        h,
        "</header><main id=\"main\" tabindex=\"-1\"><h1>{}</h1>{body}</main></body></html>",
        esc(title)
    );
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_is_escaped() {
        assert_eq!(
            esc("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
        assert_eq!(url_part("a b/c?d=é"), "a%20b%2Fc%3Fd%3D%C3%A9");
    }

    #[test]
    fn times_and_sizes_read_well() {
        assert!(time(0).contains(">1970-01-01 00:00:00 UTC<"));
        assert_eq!(ago(100, 130), "30 s ago");
        assert_eq!(ago(0, 7200), "2 h ago");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
    }

    #[test]
    fn the_frame_shows_only_allowed_sections() {
        let nav = [
            Nav {
                path: "/fleet",
                label: "Fleet",
                roles: &[TokenRole::Admin],
            },
            Nav {
                path: "/backups",
                label: "Backups",
                roles: &[TokenRole::Admin, TokenRole::Restorer],
            },
        ];
        let who = Who {
            label: "<me>",
            role: TokenRole::Restorer,
            csrf: "c0ffee",
            alerts: 0,
        };
        let p = page("Backups", "/backups", Some(&who), &nav, "<p>x</p>");
        assert!(p.contains("href=\"/console/backups\" aria-current=\"page\""));
        assert!(!p.contains("/console/fleet"));
        assert!(p.contains("&lt;me&gt;"));
        assert!(p.contains("name=\"csrf\" value=\"c0ffee\""));
        assert!(!p.contains("<script"));
    }
}
