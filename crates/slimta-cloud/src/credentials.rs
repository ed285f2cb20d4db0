//! Secrets for the remote services, from a small TOML file or the
//! environment, never logged.
//!
//! Decision: one file format for every store and notifier (a flat table
//! of strings: `access_key_id`, `secret_access_key` for S3 and SQS;
//! whatever a Swift or Zaqar backend reads for itself), so an operator
//! keeps one file per deployment. The file must not be readable by group
//! or others (like an SSH key); a wider mode is refused.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::Path;

/// A secret string whose `Debug` shows nothing of it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, to hand to a client library.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// The string entries of a credentials file.
///
/// # Errors
///
/// When it cannot be read, is readable by group or others, or is not a
/// TOML table of strings.
pub fn read_file(path: &Path) -> io::Result<BTreeMap<String, Secret>> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is readable by group or others (mode {:o}); chmod 600 it",
                path.display(),
                mode & 0o777
            ),
        ));
    }
    let text = std::fs::read_to_string(path)?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        // The parser's message quotes the offending line, which may hold a
        // secret: only its position is reported.
        let at = e
            .span()
            .map(|s| format!(" at byte {}", s.start))
            .unwrap_or_default();
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not valid TOML{at}", path.display()),
        )
    })?;
    let mut out = BTreeMap::new();
    for (key, value) in table {
        let toml::Value::String(value) = value else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: `{key}` must be a string", path.display()),
            ));
        };
        out.insert(key, Secret(value));
    }
    Ok(out)
}

/// Static AWS keys (S3 and SQS).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AwsKeys {
    /// `access_key_id` / `AWS_ACCESS_KEY_ID`.
    pub access_key_id: String,
    /// `secret_access_key` / `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: Secret,
    /// `session_token` / `AWS_SESSION_TOKEN`, if any.
    pub session_token: Option<Secret>,
}

impl AwsKeys {
    /// From the credentials file if given, else from `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`.
    ///
    /// # Errors
    ///
    /// When the file cannot be read or a key is missing.
    pub fn load(file: Option<&Path>) -> io::Result<Self> {
        let missing = |what: &str| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no {what} (credentials_file or the environment)"),
            )
        };
        if let Some(path) = file {
            let mut entries = read_file(path)?;
            return Ok(Self {
                access_key_id: entries
                    .remove("access_key_id")
                    .ok_or_else(|| missing("access_key_id"))?
                    .0,
                secret_access_key: entries
                    .remove("secret_access_key")
                    .ok_or_else(|| missing("secret_access_key"))?,
                session_token: entries.remove("session_token"),
            });
        }
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Ok(Self {
            access_key_id: var("AWS_ACCESS_KEY_ID").ok_or_else(|| missing("AWS_ACCESS_KEY_ID"))?,
            secret_access_key: Secret(
                var("AWS_SECRET_ACCESS_KEY").ok_or_else(|| missing("AWS_SECRET_ACCESS_KEY"))?,
            ),
            session_token: var("AWS_SESSION_TOKEN").map(Secret),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn reads_keys_and_refuses_a_wide_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cloud.toml");
        std::fs::write(
            &path,
            "access_key_id = \"AK\"\nsecret_access_key = \"very-secret\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = AwsKeys::load(Some(&path)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let keys = AwsKeys::load(Some(&path)).unwrap();
        assert_eq!(keys.access_key_id, "AK");
        assert_eq!(keys.secret_access_key.expose(), "very-secret");
        assert!(!format!("{keys:?}").contains("very-secret"));
    }

    #[test]
    fn a_bad_file_does_not_echo_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cloud.toml");
        std::fs::write(&path, "secret_access_key = very-secret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = read_file(&path).unwrap_err();
        assert!(!e.to_string().contains("very-secret"), "{e}");
    }
}
