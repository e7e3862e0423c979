//! Egress policy of sandboxd: one [`Policy`] model the NeevCloud `egress` object and the Leap0
//! `network_policy` both translate into ([`policy`]), and its enforcement at the host side of
//! each sandbox's veth in nftables ([`nft`]), where the sandbox cannot change it.

pub mod dns;
pub mod nft;
pub mod node;
pub mod policy;
pub mod secrets;
pub mod tls;

pub use node::Node;

static DOMAINS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this process runs the resolver and proxy that enforce domain rules.
pub fn domains_enforced() -> bool {
    DOMAINS.load(std::sync::atomic::Ordering::Relaxed)
}

static TRANSFORMS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the proxy terminates TLS and applies transforms.
pub fn transforms_enforced() -> bool {
    TRANSFORMS.load(std::sync::atomic::Ordering::Relaxed)
}

pub use policy::{CidrRule, DomainPattern, DomainRule, Net4, Policy, Proto, Transform};

/// A policy that cannot be translated or applied. The text is for the log and for 400s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PolicyError(pub String);
