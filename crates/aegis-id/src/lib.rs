//! The node identifier of an aegis mesh.
//!
//! A node ID names a node everywhere at once: it is the certificate's common
//! name and DNS SAN, the TLS server name a client expects when it dials the
//! node, part of the file names in the certificate directory, and the key of
//! the node's entry in the topology. [`NodeId`] is checked once, when it is
//! made, against the rules of all those uses, so that every layer can take a
//! `NodeId` without checking again.
//!
//! ```
//! use aegis_id::{NodeId, NodeIdError};
//!
//! let id = NodeId::new("identity-1").unwrap();
//! assert_eq!(id.as_str(), "identity-1");
//! assert!(matches!(NodeId::new("a..b"), Err(NodeIdError::EmptyLabel { .. })));
//! assert!(matches!(NodeId::new("../etc"), Err(NodeIdError::InvalidChar { ch: '/', .. })));
//! ```
#![warn(missing_docs)]

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

/// The longest node ID accepted, in bytes (the limit of a DNS name).
pub const MAX_NODE_ID_LEN: usize = 253;
/// The longest label (the part between dots) of a node ID, in bytes.
pub const MAX_LABEL_LEN: usize = 63;

/// Why a string is not a valid node ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeIdError {
    /// The ID is the empty string.
    #[error("node ID is empty")]
    Empty,
    /// The ID is longer than [`MAX_NODE_ID_LEN`] bytes.
    #[error("node ID is {len} bytes long; at most {MAX_NODE_ID_LEN} are allowed")]
    TooLong {
        /// The length of the rejected ID in bytes.
        len: usize,
    },
    /// The ID holds a character that is not a letter, digit, `-`, `_` or `.`.
    #[error(
        "node ID {id:?} has {ch:?} at byte {index}: only ASCII letters, digits, '-', '_' and '.' are allowed"
    )]
    InvalidChar {
        /// The ID as given (lossy where it is long).
        id: String,
        /// The offending character.
        ch: char,
        /// Its byte offset.
        index: usize,
    },
    /// The ID starts or ends with a dot, or holds two dots in a row (`..`).
    #[error("node ID {id:?} has an empty label (a leading, trailing or doubled '.')")]
    EmptyLabel {
        /// The ID as given.
        id: String,
    },
    /// A label is longer than [`MAX_LABEL_LEN`] bytes.
    #[error("node ID {id:?} has a label of {len} bytes; at most {MAX_LABEL_LEN} are allowed")]
    LabelTooLong {
        /// The ID as given.
        id: String,
        /// The length of the label.
        len: usize,
    },
    /// A label starts or ends with `-`, which DNS names forbid.
    #[error("node ID {id:?} has a label that starts or ends with '-'")]
    LabelHyphen {
        /// The ID as given.
        id: String,
    },
    /// The ID reads as an IP address, which would make it an IP SAN rather than a name.
    #[error("node ID {id:?} looks like an IP address; node IDs must be names")]
    LooksLikeIp {
        /// The ID as given.
        id: String,
    },
}

/// A validated node ID: non-empty, at most 253 bytes, a valid DNS name made of
/// ASCII letters, digits, `-`, `_` and `.`, and so also a safe file name
/// (no `/`, no `..`, no NUL, no spaces).
///
/// An ID has one canonical form, lowercase: DNS names (and so TLS name
/// checks) ignore case, so `Node-1` and `node-1` are one node, and
/// [`NodeId::new`] makes both `node-1`. Every layer (certificate CN and
/// file names, topology key, the ID a peer answers with) uses that form.
///
/// ```
/// use aegis_id::NodeId;
/// assert_eq!(NodeId::new("Node-1").unwrap(), NodeId::new("node-1").unwrap());
/// assert_eq!(NodeId::new("Node-1").unwrap().as_str(), "node-1");
/// ```
///
/// Cloning is cheap (a reference count).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(Arc<str>);

impl NodeId {
    /// Checks `id` and wraps it.
    ///
    /// # Errors
    /// A [`NodeIdError`] naming the first rule the ID breaks.
    pub fn new(id: impl AsRef<str>) -> Result<Self, NodeIdError> {
        let id = id.as_ref();
        validate(id)?;
        if id.bytes().any(|b| b.is_ascii_uppercase()) {
            Ok(Self(Arc::from(id.to_ascii_lowercase())))
        } else {
            Ok(Self(Arc::from(id)))
        }
    }

    /// The ID as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The canonical (lowercase) spelling of `id`, for looking a node up by a
/// string that may not be in canonical form; borrows when it already is.
/// It does not check the rules: [`NodeId::new`] does.
///
/// ```
/// assert_eq!(aegis_id::canonical("Node-1"), "node-1");
/// assert!(matches!(aegis_id::canonical("node-1"), std::borrow::Cow::Borrowed(_)));
/// ```
pub fn canonical(id: &str) -> std::borrow::Cow<'_, str> {
    if id.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(id.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(id)
    }
}

/// Checks `id` against the node ID rules without allocating when it is valid.
///
/// # Errors
/// A [`NodeIdError`] naming the first rule the ID breaks.
pub fn validate(id: &str) -> Result<(), NodeIdError> {
    if id.is_empty() {
        return Err(NodeIdError::Empty);
    }
    if id.len() > MAX_NODE_ID_LEN {
        return Err(NodeIdError::TooLong { len: id.len() });
    }
    let owned = || id.to_owned();
    if let Some((index, ch)) = id
        .char_indices()
        .find(|&(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(NodeIdError::InvalidChar {
            id: owned(),
            ch,
            index,
        });
    }
    for label in id.split('.') {
        if label.is_empty() {
            return Err(NodeIdError::EmptyLabel { id: owned() });
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(NodeIdError::LabelTooLong {
                id: owned(),
                len: label.len(),
            });
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(NodeIdError::LabelHyphen { id: owned() });
        }
    }
    // A dotted-decimal string is an IPv4 address to every TLS stack; as an
    // ID it would be written as an IP SAN and never match a DNS name.
    if id.parse::<std::net::IpAddr>().is_ok()
        || id.split('.').all(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(NodeIdError::LooksLikeIp { id: owned() });
    }
    Ok(())
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl AsRef<str> for NodeId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for NodeId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for NodeId {
    type Err = NodeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for NodeId {
    type Error = NodeIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl TryFrom<&str> for NodeId {
    type Error = NodeIdError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl PartialEq<str> for NodeId {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for NodeId {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for NodeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for NodeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        NodeId::new(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_ordinary_ids() {
        for id in ["node-1", "identity_v1", "a", "svc.eu-west.node7", "N0DE"] {
            assert!(NodeId::new(id).is_ok(), "{id}");
        }
    }

    #[test]
    fn one_canonical_form_whatever_the_case() {
        // DNS names, and so the TLS name check, ignore case: `UPPER` and
        // `upper` must be one node everywhere, not two.
        let upper = NodeId::new("UPPER").unwrap();
        let lower = NodeId::new("upper").unwrap();
        assert_eq!(upper, lower);
        assert_eq!(upper.as_str(), "upper");
        assert_eq!(
            NodeId::new("Svc.EU-West.Node7").unwrap().as_str(),
            "svc.eu-west.node7"
        );
    }

    #[test]
    fn names_the_rule_broken() {
        assert_eq!(NodeId::new(""), Err(NodeIdError::Empty));
        assert_eq!(
            NodeId::new("a".repeat(254)),
            Err(NodeIdError::TooLong { len: 254 })
        );
        assert!(matches!(
            NodeId::new("a/b"),
            Err(NodeIdError::InvalidChar {
                ch: '/',
                index: 1,
                ..
            })
        ));
        assert!(matches!(
            NodeId::new("a b"),
            Err(NodeIdError::InvalidChar { ch: ' ', .. })
        ));
        assert!(matches!(
            NodeId::new("a\0b"),
            Err(NodeIdError::InvalidChar { ch: '\0', .. })
        ));
        assert!(matches!(
            NodeId::new(".."),
            Err(NodeIdError::EmptyLabel { .. })
        ));
        assert!(matches!(
            NodeId::new("a..b"),
            Err(NodeIdError::EmptyLabel { .. })
        ));
        assert!(matches!(
            NodeId::new(".a"),
            Err(NodeIdError::EmptyLabel { .. })
        ));
        assert!(matches!(
            NodeId::new("x".repeat(64)),
            Err(NodeIdError::LabelTooLong { len: 64, .. })
        ));
        assert!(matches!(
            NodeId::new("-a"),
            Err(NodeIdError::LabelHyphen { .. })
        ));
        assert!(matches!(
            NodeId::new("127.0.0.1"),
            Err(NodeIdError::LooksLikeIp { .. })
        ));
        assert!(matches!(
            NodeId::new("::1"),
            Err(NodeIdError::InvalidChar { .. })
        ));
        assert!(matches!(
            NodeId::new("42"),
            Err(NodeIdError::LooksLikeIp { .. })
        ));
    }

    #[test]
    fn max_length_id_is_accepted() {
        let label = "a".repeat(63);
        let id = [label.as_str(); 4].join(".");
        let id = &id[..MAX_NODE_ID_LEN];
        assert!(NodeId::new(id).is_ok(), "{}", id.len());
    }

    proptest! {
        #[test]
        fn never_panics_and_valid_ids_are_safe_file_names(s in "\\PC{0,300}") {
            if let Ok(id) = NodeId::new(&s) {
                prop_assert!(!id.as_str().contains('/'));
                prop_assert!(!id.as_str().contains(".."));
                prop_assert!(!id.as_str().contains(' '));
                prop_assert!(id.as_str().len() <= MAX_NODE_ID_LEN);
            }
        }
    }
}
