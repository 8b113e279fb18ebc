//! What a caller may see: the one home of member scoping. Members see their own group's things
//! and nothing of another group's, not even that it exists (404, never 403); staff,
//! technicians and admins see everything.

use crate::auth::Caller;
use crate::state::AppState;
use crate::ApiError;
use inventory::{Image, Machine, Role};

/// Which member groups' resources a caller may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupScope<'a> {
    /// Staff, technicians and admins: every group's, and what no group holds.
    All,
    /// A member: only this group's.
    Group(&'a str),
    /// A member whose user belongs to no group: no group's.
    Nothing,
}

impl Caller {
    /// The caller's scope; every visibility rule starts here.
    pub fn group_scope(&self) -> GroupScope<'_> {
        match (self.role(), self.0.member_group.as_deref()) {
            (Role::Member, Some(g)) => GroupScope::Group(g),
            (Role::Member, None) => GroupScope::Nothing,
            _ => GroupScope::All,
        }
    }
}

impl<'a> GroupScope<'a> {
    /// Whether a resource held by `group` (None: held by no group) is visible.
    pub fn sees(self, group: Option<&str>) -> bool {
        match self {
            GroupScope::All => true,
            GroupScope::Group(own) => group == Some(own),
            GroupScope::Nothing => false,
        }
    }

    /// The group filter of a list the caller asked to narrow to `requested`: `None` when the
    /// answer is the empty list (a member asking for another group, or a member without one),
    /// else the filter to apply.
    pub fn narrow(self, requested: Option<String>) -> Option<Option<String>> {
        match self {
            GroupScope::All => Some(requested),
            GroupScope::Group(own) => match requested {
                Some(g) if g != own => None,
                _ => Some(Some(own.to_string())),
            },
            GroupScope::Nothing => None,
        }
    }
}

/// A machine the caller may see, or 404 (never 403: a member must not learn it exists).
pub async fn visible_machine(st: &AppState, c: &Caller, name: &str) -> Result<Machine, ApiError> {
    let m = st.inv.machine(name).await?;
    if c.group_scope().sees(m.member_group.as_deref()) {
        Ok(m)
    } else {
        Err(ApiError::not_found(format!("machine '{name}' not found")))
    }
}

/// Splits `NAME[:VERSION]`.
pub fn split_image_reference(reference: &str) -> (&str, Option<&str>) {
    match reference.split_once(':') {
        Some((n, v)) => (n, Some(v)),
        None => (reference, None),
    }
}

/// An image the caller may see (public, or owned by a group the caller sees), or 404.
pub async fn visible_image(st: &AppState, c: &Caller, reference: &str) -> Result<Image, ApiError> {
    let (name, version) = split_image_reference(reference);
    let img = st.inv.image(name, version).await?;
    if img.owner_group.is_none() || c.group_scope().sees(img.owner_group.as_deref()) {
        Ok(img)
    } else {
        Err(ApiError::not_found(format!(
            "image '{reference}' not found"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::GroupScope::{self, *};

    #[test]
    fn members_see_only_their_group() {
        assert!(All.sees(None) && All.sees(Some("a")));
        assert!(Group("a").sees(Some("a")));
        assert!(!Group("a").sees(Some("b")) && !Group("a").sees(None));
        assert!(!Nothing.sees(Some("a")) && !Nothing.sees(None));
    }

    #[test]
    fn narrowing_a_list() {
        let n = |s: GroupScope, r: Option<&str>| s.narrow(r.map(str::to_string));
        assert_eq!(n(All, None), Some(None));
        assert_eq!(n(All, Some("b")), Some(Some("b".into())));
        assert_eq!(n(Group("a"), None), Some(Some("a".into())));
        assert_eq!(n(Group("a"), Some("a")), Some(Some("a".into())));
        assert_eq!(n(Group("a"), Some("b")), None);
        assert_eq!(n(Nothing, None), None);
        assert_eq!(n(Nothing, Some("a")), None);
    }
}
