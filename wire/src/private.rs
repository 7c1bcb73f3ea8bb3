//! Which channels are private: only a subscribe token opens them. One list of patterns in
//! the sidecar's configuration (`[private] channels`), which every nginx worker receives
//! in a [`ToWorker::Policy`](crate::ToWorker::Policy) frame, so both sides match the same
//! names the same way.
//!
//! A pattern is one of:
//! - `lobby-vip`: that channel;
//! - `members-*`: every channel that starts with `members-` (`*` alone: every channel);
//! - `user.{sub}`: every channel that starts with `user.` and has something after it, each
//!   the user's own: `user.alice` opens only for a token whose `sub` is `alice`.

use crate::channel;

/// Most patterns a policy holds.
pub const MAX_PATTERNS: usize = 64;

/// What marks a user's own channel.
const OWNER: &str = "{sub}";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("a private channel pattern is empty")]
    Empty,
    #[error(
        "private channel pattern {0:?}: '*' or \"{{sub}}\" may only end a pattern (\"members-*\", \
         \"user.{{sub}}\")"
    )]
    Misplaced(String),
    #[error("private channel pattern {0:?}: {1}")]
    Name(String, channel::ChannelNameError),
    #[error("{0} private channel patterns; at most {MAX_PATTERNS}")]
    TooMany(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Shape {
    Exact,
    Prefix,
    Owned,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    /// The channel name, or what a matching name starts with.
    stem: String,
    shape: Shape,
}

/// The private channel patterns, checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    patterns: Vec<Pattern>,
    /// As written, for the `Policy` frame and logs.
    source: Vec<String>,
}

impl Policy {
    /// Checks each pattern; the first bad one is the error.
    pub fn parse<S: AsRef<str>>(patterns: &[S]) -> Result<Self, PatternError> {
        if patterns.len() > MAX_PATTERNS {
            return Err(PatternError::TooMany(patterns.len()));
        }
        let mut policy = Policy::default();
        for raw in patterns {
            let raw = raw.as_ref();
            policy.patterns.push(parse_one(raw)?);
            policy.source.push(raw.to_owned());
        }
        Ok(policy)
    }

    /// The patterns as written.
    pub fn patterns(&self) -> &[String] {
        &self.source
    }

    /// Whether no channel is private (the module then never asks the sidecar).
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether only a subscribe token opens `channel`.
    pub fn is_private(&self, channel: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(channel))
    }

    /// The own channel of user `sub` under the first `{sub}` pattern (`user.{sub}` →
    /// `user.<sub>`), when there is one and the name is a valid channel name.
    pub fn own_channel(&self, sub: &str) -> Option<String> {
        let stem = &self.patterns.iter().find(|p| p.shape == Shape::Owned)?.stem;
        let name = format!("{stem}{sub}");
        (!sub.is_empty() && channel::validate(name.as_bytes()).is_ok()).then_some(name)
    }

    /// The user whose own channel `channel` is (the `{sub}` part), when a `{sub}` pattern
    /// matches it.
    pub fn owner<'a>(&self, channel: &'a str) -> Option<&'a str> {
        self.patterns
            .iter()
            .filter(|p| p.shape == Shape::Owned)
            .find_map(|p| channel.strip_prefix(p.stem.as_str()))
            .filter(|rest| !rest.is_empty())
    }
}

impl Pattern {
    fn matches(&self, channel: &str) -> bool {
        match self.shape {
            Shape::Exact => channel == self.stem,
            Shape::Prefix => channel.starts_with(&self.stem),
            Shape::Owned => channel.len() > self.stem.len() && channel.starts_with(&self.stem),
        }
    }
}

fn parse_one(raw: &str) -> Result<Pattern, PatternError> {
    if raw.is_empty() {
        return Err(PatternError::Empty);
    }
    let (stem, shape) = if let Some(stem) = raw.strip_suffix(OWNER) {
        (stem, Shape::Owned)
    } else if let Some(stem) = raw.strip_suffix('*') {
        (stem, Shape::Prefix)
    } else {
        (raw, Shape::Exact)
    };
    if stem.contains('*') || stem.contains(OWNER) {
        return Err(PatternError::Misplaced(raw.to_owned()));
    }
    if !stem.is_empty() || shape == Shape::Exact {
        channel::validate(stem.as_bytes()).map_err(|e| PatternError::Name(raw.to_owned(), e))?;
    }
    Ok(Pattern {
        stem: stem.to_owned(),
        shape,
    })
}

/// Whether a subscribe token's `channels` entry opens `channel`: the same name, or a
/// `prefix*` it starts with. (A user's own channel is opened by its `sub`, see
/// [`Policy::owner`].)
pub fn grant_opens(grant: &str, channel: &str) -> bool {
    match grant.strip_suffix('*') {
        Some(prefix) => channel.starts_with(prefix),
        None => grant == channel,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_exact_prefix_and_owned_patterns() {
        let p = Policy::parse(&["vip", "members-*", "user.{sub}"]).unwrap();
        assert!(p.is_private("vip"));
        assert!(!p.is_private("vip2"));
        assert!(p.is_private("members-"));
        assert!(p.is_private("members-club"));
        assert!(p.is_private("user.alice"));
        assert!(!p.is_private("user."), "an owned channel needs an owner");
        assert!(!p.is_private("lobby"));
        assert_eq!(p.owner("user.alice"), Some("alice"));
        assert_eq!(p.owner("members-club"), None);
        assert_eq!(p.owner("user."), None);
        assert_eq!(p.patterns(), ["vip", "members-*", "user.{sub}"]);
        assert_eq!(p.own_channel("alice").as_deref(), Some("user.alice"));
        assert_eq!(p.own_channel("a:b"), None, "not a channel name");
        assert_eq!(p.own_channel(""), None);
        assert_eq!(Policy::parse(&["vip"]).unwrap().own_channel("alice"), None);
    }

    #[test]
    fn a_lone_star_makes_every_channel_private() {
        let p = Policy::parse(&["*"]).unwrap();
        assert!(p.is_private("lobby"));
        assert!(!Policy::default().is_private("lobby"));
        assert!(Policy::default().is_empty());
    }

    #[test]
    fn refuses_bad_patterns_with_the_reason() {
        assert_eq!(Policy::parse(&[""]), Err(PatternError::Empty));
        assert!(matches!(
            Policy::parse(&["a*b"]),
            Err(PatternError::Misplaced(p)) if p == "a*b"
        ));
        assert!(matches!(
            Policy::parse(&["{sub}.x"]),
            Err(PatternError::Misplaced(_))
        ));
        let err = Policy::parse(&["user:{sub}"]).unwrap_err().to_string();
        assert!(err.contains("user:{sub}") && err.contains("':'"), "{err}");
        let many: Vec<String> = (0..=MAX_PATTERNS).map(|i| format!("c{i}")).collect();
        assert_eq!(
            Policy::parse(&many),
            Err(PatternError::TooMany(MAX_PATTERNS + 1))
        );
    }

    #[test]
    fn grants_open_names_and_prefixes() {
        assert!(grant_opens("members-club", "members-club"));
        assert!(!grant_opens("members-club", "members-club2"));
        assert!(grant_opens("members-*", "members-club"));
        assert!(grant_opens("*", "anything"));
        assert!(!grant_opens("mod-*", "members-club"));
    }
}
