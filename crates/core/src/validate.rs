//! Field rules shared by both API dialects.

use crate::CoreError;

/// A DNS-1123 label: 1..=63 of `[a-z0-9-]`, starting and ending alphanumeric.
pub fn dns1123_label(field: &str, s: &str) -> Result<(), CoreError> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(CoreError::invalid(
            field,
            "must be a DNS-1123 label: 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit",
        ))
    }
}

/// An environment variable name: `[A-Za-z_][A-Za-z0-9_]*`, at most 256 bytes.
pub fn env_name(field: &str, s: &str) -> Result<(), CoreError> {
    let mut bytes = s.bytes();
    let ok = s.len() <= 256
        && matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(CoreError::invalid(
            field,
            "must match [A-Za-z_][A-Za-z0-9_]* (at most 256 characters)",
        ))
    }
}

/// Checks that `v` lies in `[min, max]` and is a whole multiple of `step` (from `min`'s grid
/// at 0), with a tolerance for binary floating point.
pub fn ranged_multiple(
    field: &str,
    v: f64,
    min: f64,
    max: f64,
    step: f64,
) -> Result<(), CoreError> {
    if !v.is_finite() || v < min || v > max {
        return Err(CoreError::invalid(
            field,
            format!("must be between {min} and {max}"),
        ));
    }
    let q = v / step;
    if (q - q.round()).abs() > 1e-9 {
        return Err(CoreError::invalid(
            field,
            format!("must be a multiple of {step}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        for ok in ["a", "a-b", "abc123", "0", &"a".repeat(63)] {
            assert!(dns1123_label("name", ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"a".repeat(64), "é"] {
            assert!(dns1123_label("name", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn env_names() {
        assert!(env_name("env", "PATH").is_ok());
        assert!(env_name("env", "_x1").is_ok());
        assert!(env_name("env", "1X").is_err());
        assert!(env_name("env", "A=B").is_err());
        assert!(env_name("env", "").is_err());
    }

    #[test]
    fn multiples() {
        assert!(ranged_multiple("cpu", 0.5, 0.5, 8.0, 0.5).is_ok());
        assert!(ranged_multiple("cpu", 1.5, 0.5, 8.0, 0.5).is_ok());
        assert!(ranged_multiple("cpu", 0.7, 0.5, 8.0, 0.5).is_err());
        assert!(ranged_multiple("cpu", 8.5, 0.5, 8.0, 0.5).is_err());
        assert!(ranged_multiple("cpu", f64::NAN, 0.5, 8.0, 0.5).is_err());
        assert!(ranged_multiple("disk_gb", 30.0, 10.0, 100.0, 10.0).is_ok());
        assert!(ranged_multiple("disk_gb", 25.0, 10.0, 100.0, 10.0).is_err());
    }
}
