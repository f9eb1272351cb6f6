//! The X-Ray SDKs' wildcard patterns: `*` matches any run of characters, `?` exactly one,
//! case-insensitively.

/// Whether `text` matches `pattern`, as the X-Ray SDKs decide it.
pub fn wildcard_match(pattern: &str, text: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    let p: Vec<char> = pattern.chars().flat_map(char::to_lowercase).collect();
    let t: Vec<char> = text.chars().flat_map(char::to_lowercase).collect();
    let (mut i, mut pi) = (0, 0);
    // Where the last `*` was, and how much of the text it has swallowed so far.
    let mut star: Option<(usize, usize)> = None;
    while i < t.len() {
        if pi < p.len() && (p[pi] == t[i] || p[pi] == '?') {
            i += 1;
            pi += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, i));
            pi += 1;
        } else if let Some((star_p, star_t)) = star {
            star = Some((star_p, star_t + 1));
            pi = star_p + 1;
            i = star_t + 1;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn patterns() {
        assert!(wildcard_match("*", ""));
        assert!(wildcard_match("", ""));
        assert!(!wildcard_match("", "a"));
        assert!(wildcard_match("/api/*", "/api/move/1"));
        assert!(wildcard_match("/API/*", "/api/x"));
        assert!(!wildcard_match("/api/*", "/health"));
        assert!(wildcard_match("GET", "get"));
        assert!(wildcard_match("?ET", "GET"));
        assert!(!wildcard_match("?ET", "ET"));
        assert!(wildcard_match("*.example.com", "api.example.com"));
        assert!(wildcard_match("a*b*c", "aXXbYYc"));
        assert!(!wildcard_match("a*b*c", "aXXbYY"));
        assert!(wildcard_match("a**", "a"));
        assert!(wildcard_match("*a*a*a", "aaaa"));
    }

    proptest! {
        #[test]
        fn star_matches_everything_and_text_matches_itself(text in "\\PC{0,30}") {
            prop_assert!(wildcard_match("*", &text));
            let literal: String = text.chars().filter(|c| *c != '*' && *c != '?').collect();
            prop_assert!(wildcard_match(&literal, &literal));
            let prefix = format!("{}*", literal.chars().take(3).collect::<String>());
            prop_assert!(wildcard_match(&prefix, &literal));
        }
    }
}
