//! The admin bearer token (`--admin-token-file`): `POST /json` and `GET /config` then
//! require `Authorization: Bearer <token>`.
//!
//! The file is read again on every such request, so a rotated Kubernetes Secret takes
//! effect at once; a read that fails keeps the last token read (and is logged by path,
//! never with the token). Only SHA-256 digests are kept and compared, in constant time over
//! the fixed-size digests, so neither the token's bytes nor its length leak through timing.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use sha2::{Digest, Sha256};

/// Longest token file read; a token is a few dozen bytes.
const MAX_TOKEN_BYTES: u64 = 4096;

/// Why the token file cannot be used at start-up.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// It cannot be read.
    #[error("cannot read --admin-token-file {path}: {source}")]
    Unreadable {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// It holds nothing but white space.
    #[error("--admin-token-file {path} is empty")]
    Empty {
        /// The file.
        path: String,
    },
}

/// The token's file and the digest of the last token read from it.
#[derive(Debug)]
pub struct AdminToken {
    path: PathBuf,
    digest: Mutex<[u8; 32]>,
}

impl AdminToken {
    /// Reads the token file; the service does not start without a usable one.
    pub fn load(path: &Path) -> Result<Self, TokenError> {
        Ok(AdminToken {
            path: path.to_owned(),
            digest: Mutex::new(read_digest(path)?),
        })
    }

    /// Whether the `Authorization` header value `presented` carries the token.
    pub fn admits(&self, presented: Option<&str>) -> bool {
        let expected = self.refresh();
        let Some(given) = presented.and_then(bearer) else {
            return false;
        };
        let given: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        // No early exit: every byte is compared whatever the first difference.
        given
            .iter()
            .zip(expected.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }

    /// The digest of the token in the file now, or of the last one read if it cannot be
    /// read.
    fn refresh(&self) -> [u8; 32] {
        let mut digest = self.digest.lock().unwrap_or_else(PoisonError::into_inner);
        match read_digest(&self.path) {
            Ok(d) => *digest = d,
            Err(e) => tracing::warn!("{e}; keeping the token read before"),
        }
        *digest
    }
}

/// The token of `Bearer <token>` (the scheme is case-insensitive, RFC 9110 §11.1).
fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn read_digest(path: &Path) -> Result<[u8; 32], TokenError> {
    Ok(Sha256::digest(read_token(path)?.as_bytes()).into())
}

/// The token a token file holds: at most `MAX_TOKEN_BYTES` read, surrounding white space
/// dropped, never empty. The service reads its `--admin-token-file` with it and
/// `explain --admin-token-file` the same file, so both see the same token.
pub(crate) fn read_token(path: &Path) -> Result<String, TokenError> {
    let shown = || path.display().to_string();
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_TOKEN_BYTES).read_to_string(&mut text))
        .map_err(|source| TokenError::Unreadable {
            path: shown(),
            source,
        })?;
    // A Secret written with `echo` ends with a newline that is not part of the token.
    let token = text.trim();
    if token.is_empty() {
        return Err(TokenError::Empty { path: shown() });
    }
    Ok(token.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_bearer_token_in_the_file_is_admitted_and_a_rotation_applies_at_once() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret\n").unwrap_or_else(|e| panic!("{e}"));
        let token = AdminToken::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(token.admits(Some("Bearer s3cret")));
        assert!(token.admits(Some("bearer s3cret")));
        for wrong in [
            None,
            Some("s3cret"),
            Some("Bearer s3cre"),
            Some("Bearer "),
            Some("Basic s3cret"),
        ] {
            assert!(!token.admits(wrong), "{wrong:?}");
        }

        std::fs::write(&path, "n3w").unwrap_or_else(|e| panic!("{e}"));
        assert!(token.admits(Some("Bearer n3w")));
        assert!(!token.admits(Some("Bearer s3cret")));

        // Unreadable now: the last token read still holds.
        std::fs::remove_file(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(token.admits(Some("Bearer n3w")));
    }

    #[test]
    fn a_missing_or_empty_file_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("token");
        assert!(matches!(
            AdminToken::load(&path),
            Err(TokenError::Unreadable { .. })
        ));
        std::fs::write(&path, " \n").unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            AdminToken::load(&path),
            Err(TokenError::Empty { .. })
        ));
    }
}
