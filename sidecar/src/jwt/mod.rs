//! JSON Web Tokens, shared by the roles: the keys ([`keys`]), checking publisher tokens
//! ([`verify`]), and minting tokens ([`mint`]: the `token` subcommand, demo tokens).

pub mod config;
pub mod keys;
pub mod mint;
pub mod verify;

pub use keys::{
    warn_boxed, warn_example_key, warn_no_exp, KeyFamily, KeySetupError, LoadedKey,
    EXAMPLE_PUBLIC_KEY,
};
/// The scope a Bearer admin token must carry (checked by [`crate::admin::auth`], minted by
/// [`mint`]).
pub const ADMIN_SCOPE: &str = "chatup:admin";

pub use verify::{describe, json_kind, precheck, AuthError, Identity, Verifier};

/// Tells an operator's (admin) Bearer token from any other, for shared endpoints that show
/// operators more than the public (the dispatcher's user lists of private channels). The
/// admin role's verifier implements it; `server.rs` hands it over.
pub trait OperatorTokens: Send + Sync + 'static {
    /// Whether `token` is a valid admin token.
    fn is_operator(&self, token: &str) -> bool;
}
