//! RBAC resources, verbs and subject types as people write them (`wmctl`, error
//! messages).

use webmesh_api::v1::{RuleResource, RuleVerb, SubjectType};

/// Every resource a rule may name, wildcard last.
pub const RESOURCES: [RuleResource; 9] = [
    RuleResource::ResourceVotes,
    RuleResource::ResourceRoles,
    RuleResource::ResourceRoleBindings,
    RuleResource::ResourceGroups,
    RuleResource::ResourceNetworkAcls,
    RuleResource::ResourceRoutes,
    RuleResource::ResourceDataChannels,
    RuleResource::ResourceEdges,
    RuleResource::ResourceAll,
];

pub fn resource_name(r: RuleResource) -> &'static str {
    match r {
        RuleResource::ResourceVotes => "votes",
        RuleResource::ResourceRoles => "roles",
        RuleResource::ResourceRoleBindings => "rolebindings",
        RuleResource::ResourceGroups => "groups",
        RuleResource::ResourceNetworkAcls => "networkacls",
        RuleResource::ResourceRoutes => "routes",
        RuleResource::ResourceDataChannels => "datachannels",
        RuleResource::ResourceEdges => "edges",
        RuleResource::ResourceAll => "all",
        RuleResource::ResourceUnknown => "unknown",
    }
}

pub fn resource_of(s: &str) -> Option<RuleResource> {
    RESOURCES.into_iter().find(|r| resource_name(*r) == s)
}

pub fn verb_name(v: RuleVerb) -> &'static str {
    match v {
        RuleVerb::VerbPut => "put",
        RuleVerb::VerbDelete => "delete",
        RuleVerb::VerbAll => "all",
        RuleVerb::VerbUnknown => "unknown",
    }
}

pub fn verb_of(s: &str) -> Option<RuleVerb> {
    [RuleVerb::VerbPut, RuleVerb::VerbDelete, RuleVerb::VerbAll]
        .into_iter()
        .find(|v| verb_name(*v) == s)
}

pub fn subject_type_name(t: SubjectType) -> &'static str {
    match t {
        SubjectType::SubjectNode => "node",
        SubjectType::SubjectUser => "user",
        SubjectType::SubjectGroup => "group",
        SubjectType::SubjectAll => "all",
        SubjectType::SubjectUnknown => "?",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for r in RESOURCES {
            assert_eq!(resource_of(resource_name(r)), Some(r));
        }
        for v in [RuleVerb::VerbPut, RuleVerb::VerbDelete, RuleVerb::VerbAll] {
            assert_eq!(verb_of(verb_name(v)), Some(v));
        }
        assert_eq!(resource_of("nodes"), None);
    }
}
