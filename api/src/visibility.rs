//! What a caller may see: the one home of member scoping. Members see their own group's things
//! and nothing of another group's, not even that it exists (404, never 403); staff,
//! technicians and admins see everything.

use crate::auth::{Caller, Gate, PathGate};
use crate::state::AppState;
use crate::ApiError;
use inventory::{AuditOutcome, Image, Machine, NewAuditEvent, Role};

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

impl Caller {
    /// Whether the caller sees BMC addresses, users and errors: staff, technicians and
    /// admins do, members never.
    pub fn sees_bmc_details(&self) -> bool {
        self.role() != Role::Member
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

/// Records a cross-tenant lookup (answered 404) as a `denied` event, so probing another
/// group's names leaves a trail. `kind` is the resource kind (`machine`, `image`, `job`).
pub async fn audit_hidden(st: &AppState, c: &Caller, kind: &str, target: &str) {
    let ev = NewAuditEvent::ok(c.name(), &format!("{kind}.lookup"), kind, target)
        .outcome(AuditOutcome::Denied)
        .group(c.0.member_group.clone())
        .detail(
            serde_json::json!({"answered": "not_found", "reason": "outside the caller's group"}),
        );
    if let Err(e) = st.inv.record(ev).await {
        tracing::warn!(error = %e, "could not audit a cross-tenant lookup");
    }
}

/// A machine the caller may see, or 404 (never 403: a member must not learn it exists).
pub async fn visible_machine(st: &AppState, c: &Caller, name: &str) -> Result<Machine, ApiError> {
    let m = st.inv.machine(name).await?;
    if c.group_scope().sees(m.member_group.as_deref()) {
        Ok(m)
    } else {
        audit_hidden(st, c, "machine", name).await;
        Err(ApiError::not_found(format!("machine '{name}' not found")))
    }
}

/// An image reference: `[GROUP/]NAME[:VERSION]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageReference<'a> {
    /// The owning group named with the reference; None: resolved in the caller's scope.
    pub group: Option<&'a str>,
    /// Name.
    pub name: &'a str,
    /// Version; None: the newest.
    pub version: Option<&'a str>,
}

/// Splits `[GROUP/]NAME[:VERSION]`.
pub fn split_image_reference(reference: &str) -> ImageReference<'_> {
    let (group, rest) = match reference.split_once('/') {
        Some((g, r)) => (Some(g), r),
        None => (None, reference),
    };
    let (name, version) = match rest.split_once(':') {
        Some((n, v)) => (n, Some(v)),
        None => (rest, None),
    };
    ImageReference {
        group,
        name,
        version,
    }
}

/// The image `reference` names for this caller, or 404. `group` is the API's `group`
/// parameter (the same as a `GROUP/` prefix). A member resolves a bare name in their group,
/// then among the public images; staff, technicians and admins resolve a bare name among the
/// public images only, and a group's image only when the group is named, so a member's
/// private image never shadows a public one for anybody else.
pub async fn visible_image(
    st: &AppState,
    c: &Caller,
    reference: &str,
    group: Option<&str>,
) -> Result<Image, ApiError> {
    let r = split_image_reference(reference);
    let named = match (r.group, group) {
        (Some(a), Some(b)) if a != b => {
            return Err(ApiError::invalid(
                "group",
                format!("the reference names group '{a}' and the group parameter '{b}'"),
            ))
        }
        (a, b) => a.or(b),
    };
    let not_found = || ApiError::not_found(format!("image '{reference}' not found"));
    let found = match (c.group_scope(), named) {
        (GroupScope::All, owner) => st.inv.image(owner, r.name, r.version).await,
        (GroupScope::Group(own), Some(g)) if g == own => {
            st.inv.image(Some(own), r.name, r.version).await
        }
        (GroupScope::Group(own), None) => match st.inv.image(Some(own), r.name, r.version).await {
            Err(inventory::Error::NotFound { .. }) => st.inv.image(None, r.name, r.version).await,
            other => other,
        },
        (GroupScope::Nothing, None) => st.inv.image(None, r.name, r.version).await,
        (GroupScope::Group(_) | GroupScope::Nothing, Some(_)) => {
            audit_hidden(st, c, "image", reference).await;
            return Err(not_found());
        }
    };
    match found {
        Ok(img) => Ok(img),
        Err(inventory::Error::NotFound { .. }) => Err(not_found()),
        Err(e) => Err(e.into()),
    }
}

/// Whether `img` may be deployed on `m`: a group's private image only on that group's
/// machines (a public image anywhere).
pub fn deployable_on(img: &Image, m: &Machine) -> bool {
    img.owner_group.is_none() || img.owner_group == m.member_group
}

/// The path's machine, visible to the caller, who has one of `G`'s roles: checked before the
/// body is read (`GatedPath<OnMachine<G>>`).
pub struct OnMachine<G>(std::marker::PhantomData<fn() -> G>);

impl<G: Gate + 'static> PathGate for OnMachine<G> {
    type Resource = Machine;
    async fn check<'a>(
        st: &'a AppState,
        c: &'a Caller,
        name: &'a str,
    ) -> Result<Machine, ApiError> {
        let m = visible_machine(st, c, name).await?;
        c.require(st, G::ROLES, G::ACTION, name).await?;
        Ok(m)
    }
}

/// The path's member group, visible to the caller (a foreign one is 404, audited), who has
/// one of `G`'s roles: checked before the body is read (`GatedPath<OnGroup<G>>`).
pub struct OnGroup<G>(std::marker::PhantomData<fn() -> G>);

impl<G: Gate + 'static> PathGate for OnGroup<G> {
    type Resource = ();
    async fn check<'a>(st: &'a AppState, c: &'a Caller, name: &'a str) -> Result<(), ApiError> {
        if !c.group_scope().sees(Some(name)) {
            audit_hidden(st, c, "group", name).await;
            return Err(ApiError::not_found(format!("group '{name}' not found")));
        }
        c.require(st, G::ROLES, G::ACTION, name).await
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
    fn image_references() {
        let r = super::split_image_reference;
        let t = |g, n, v| super::ImageReference {
            group: g,
            name: n,
            version: v,
        };
        assert_eq!(r("a"), t(None, "a", None));
        assert_eq!(r("a:2"), t(None, "a", Some("2")));
        assert_eq!(r("g/a"), t(Some("g"), "a", None));
        assert_eq!(r("g/a:2"), t(Some("g"), "a", Some("2")));
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
