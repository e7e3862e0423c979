//! Who is calling: the org and project a key is bound to.

use serde::{Deserialize, Serialize};

use crate::CoreError;

/// An org and project pair: the scope every sandbox lives in.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Tenant {
    pub org: String,
    pub project: String,
}

/// An authenticated caller: an API key bound to an org and optionally one project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub key_id: String,
    pub org: String,
    pub project: Option<String>,
}

impl Principal {
    /// The tenant this principal acts in when a route names no project.
    pub fn default_tenant(&self) -> Tenant {
        Tenant {
            org: self.org.clone(),
            project: self
                .project
                .clone()
                .unwrap_or_else(|| "default".to_string()),
        }
    }

    /// Checks that the principal may act on `org`/`project`, returning the tenant.
    pub fn authorize(&self, org: &str, project: &str) -> Result<Tenant, CoreError> {
        if self.org != org {
            return Err(CoreError::Forbidden(format!(
                "API key has no access to org {org}"
            )));
        }
        if let Some(p) = &self.project {
            if p != project {
                return Err(CoreError::Forbidden(format!(
                    "API key has no access to project {project}"
                )));
            }
        }
        Ok(Tenant {
            org: org.to_string(),
            project: project.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(org: &str, project: Option<&str>) -> Principal {
        Principal {
            key_id: "k".into(),
            org: org.into(),
            project: project.map(str::to_string),
        }
    }

    #[test]
    fn org_key_reaches_any_project_of_its_org_only() {
        let k = key("a", None);
        assert!(k.authorize("a", "p1").is_ok());
        assert!(k.authorize("a", "p2").is_ok());
        assert!(matches!(
            k.authorize("b", "p1"),
            Err(CoreError::Forbidden(_))
        ));
    }

    #[test]
    fn project_key_is_bound_to_its_project() {
        let k = key("a", Some("p1"));
        assert!(k.authorize("a", "p1").is_ok());
        assert!(matches!(
            k.authorize("a", "p2"),
            Err(CoreError::Forbidden(_))
        ));
        assert_eq!(k.default_tenant().project, "p1");
    }
}
