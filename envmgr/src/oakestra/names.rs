//! Oakestra's job names and ours.
//!
//! Oakestra names a service `app.appns.service.servicens`: four parts, each
//! 1 to 30 ASCII letters and digits (the root's SLA check,
//! `^[a-zA-Z0-9]{1,30}$`). Our names are DNS labels `app/service`, so a job
//! maps to `app-appns/service-servicens`, lowercased. Since Oakestra's parts
//! hold no `-`, the mapping loses only the case; the exact job name is kept
//! beside the service name for everything said back to Oakestra.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use crate::model::{NameError, ServiceName};

/// An Oakestra job name with the service name it maps to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobName {
    raw: String,
    name: ServiceName,
}

impl JobName {
    /// Parses `app.appns.service.servicens`; the error says which part is
    /// wrong and what Oakestra allows.
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        let err = |rule| NameError {
            what: "Oakestra job name",
            value: raw.to_owned(),
            rule,
        };
        let parts: Vec<&str> = raw.split('.').collect();
        if parts.len() != 4 {
            return Err(err(
                "must have four parts, app.appns.service.servicens (e.g. \"demo.default.web.default\")",
            ));
        }
        let ok =
            |p: &str| (1..=30).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric());
        if !parts.iter().all(|p| ok(p)) {
            return Err(err("each part must be 1 to 30 ASCII letters or digits"));
        }
        let app = format!("{}-{}", parts[0], parts[1]).to_ascii_lowercase();
        let service = format!("{}-{}", parts[2], parts[3]).to_ascii_lowercase();
        let name = ServiceName::new(&app, &service)?;
        Ok(Self {
            raw: raw.to_owned(),
            name,
        })
    }

    /// The job name for a service name of ours that has no remembered
    /// Oakestra spelling: `a-b/c-d` gives `a.b.c.d`. `None` when the
    /// service name is not of that shape (it did not come from Oakestra).
    pub fn from_service(name: &ServiceName) -> Option<Self> {
        let (a, b) = name.app.split_once('-')?;
        let (c, d) = name.service.split_once('-')?;
        Self::parse(&format!("{a}.{b}.{c}.{d}")).ok()
    }

    /// The job name exactly as Oakestra spells it.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The service name it maps to.
    pub fn service(&self) -> &ServiceName {
        &self.name
    }
}

impl fmt::Display for JobName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// The Oakestra spelling of every job this node has heard of, shared by
/// the NodeEngine API (which learns it from deploy requests) and the table
/// protocol (which learns it from answers and says it back). Cheap to
/// clone.
#[derive(Debug, Clone, Default)]
pub struct JobBook(Arc<Mutex<BTreeMap<ServiceName, JobName>>>);

impl JobBook {
    /// Remembers a job's exact spelling.
    pub fn remember(&self, job: &JobName) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(job.service().clone(), job.clone());
    }

    /// The job a service name of ours stands for: the spelling heard, else
    /// [`JobName::from_service`]'s lowercase one.
    pub fn job_for(&self, name: &ServiceName) -> Option<JobName> {
        let known = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned();
        known.or_else(|| JobName::from_service(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_parts_map_to_app_and_service() {
        let j = JobName::parse("Demo.default.Web.prod").expect("a valid job name");
        assert_eq!(j.as_str(), "Demo.default.Web.prod");
        assert_eq!(j.service().app, "demo-default");
        assert_eq!(j.service().service, "web-prod");
        let back = JobName::from_service(j.service()).expect("maps back");
        assert_eq!(back.as_str(), "demo.default.web.prod");
        assert_eq!(back.service(), j.service());
    }

    #[test]
    fn bad_names_say_what_is_wrong() {
        for bad in [
            "a.b.c",
            "a.b.c.d.e",
            "a..c.d",
            "a-x.b.c.d",
            "a.b.c.d ",
            &"x".repeat(31),
        ] {
            let e = JobName::parse(bad).expect_err("refused");
            assert!(e.to_string().contains("Oakestra job name"), "{e}");
        }
        let not_ours = ServiceName::new("web", "api").expect("valid");
        assert!(JobName::from_service(&not_ours).is_none());
    }

    #[test]
    fn the_book_keeps_the_spelling_heard() {
        let book = JobBook::default();
        let j = JobName::parse("Demo.default.Web.prod").expect("valid");
        assert_eq!(
            book.job_for(j.service()).expect("mapped").as_str(),
            "demo.default.web.prod"
        );
        book.remember(&j);
        assert_eq!(
            book.job_for(j.service()).expect("known").as_str(),
            "Demo.default.Web.prod"
        );
    }
}
