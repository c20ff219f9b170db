//! Role-based access control (pure). Allow-only: a caller may perform an action when a
//! role bound to one of its subjects has a rule matching the action's resource, name
//! and verb. Subjects: NODE and USER by name, GROUP (expanded, nested groups too — the
//! reference implementation never expands groups; we do), ALL; the name `*` matches any
//! authenticated caller (never an anonymous one). Wildcards: RESOURCE_ALL, VERB_ALL,
//! and `*` (or no names) in a rule's resource names.
//!
//! A [`Policy`] is compiled ([`Policy::compile`]) once per change: an index from each
//! subject to the groups listing it and the roles bound to it. Evaluation walks only
//! the groups that contain the caller, each once, so its cost is bounded by the number
//! of groups whatever their nesting or cycles.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use webmesh_api::v1::{Group, Role, RoleBinding, Rule, RuleResource, RuleVerb, SubjectType};

/// One thing a caller wants to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    pub resource: RuleResource,
    /// The object's name (empty: no particular object).
    pub name: String,
    pub verb: RuleVerb,
}

impl Action {
    pub fn new(resource: RuleResource, name: impl Into<String>, verb: RuleVerb) -> Action {
        Action {
            resource,
            name: name.into(),
            verb,
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verb = webmesh_client::names::verb_name(self.verb);
        write!(f, "{verb} {}", resource_name(self.resource))?;
        if !self.name.is_empty() {
            write!(f, " {:?}", self.name)?;
        }
        Ok(())
    }
}

pub use webmesh_client::names::resource_name;

/// Who is asking, as RBAC subjects see it. A node that authenticated as a user of its
/// own name is both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub node: bool,
    pub user: bool,
}

impl Principal {
    pub fn node(name: &str) -> Principal {
        Principal {
            name: name.into(),
            node: true,
            user: false,
        }
    }
    pub fn user(name: &str) -> Principal {
        Principal {
            name: name.into(),
            node: false,
            user: true,
        }
    }
}

/// The RBAC objects of a mesh.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub roles: BTreeMap<String, Role>,
    pub bindings: BTreeMap<String, RoleBinding>,
    pub groups: BTreeMap<String, Group>,
}

impl Policy {
    /// The policy indexed for evaluation. Done once per change of the RBAC objects;
    /// evaluation then walks only the groups that contain the caller.
    pub fn compile(&self) -> Compiled {
        let mut member_of: HashMap<Subj, Vec<String>> = HashMap::new();
        for g in self.groups.values() {
            for s in &g.subjects {
                if let Some(k) = Subj::of(s.r#type, &s.name) {
                    member_of.entry(k).or_default().push(g.name.clone());
                }
            }
        }
        let mut bound: HashMap<Subj, Vec<String>> = HashMap::new();
        for b in self.bindings.values() {
            for s in &b.subjects {
                if let Some(k) = Subj::of(s.r#type, &s.name) {
                    bound.entry(k).or_default().push(b.role.clone());
                }
            }
        }
        Compiled {
            roles: self.roles.clone(),
            member_of,
            bound,
        }
    }

    /// The roles bound to `p`, in name order.
    pub fn roles_of(&self, p: &Principal) -> Vec<Role> {
        self.compile().roles_of(p).into_iter().cloned().collect()
    }

    /// Whether `p` may perform `a`.
    pub fn allows(&self, p: &Principal, a: &Action) -> bool {
        self.compile().allows(p, a)
    }

    /// `Ok` when every action is allowed; else the first one missing.
    pub fn check<'a>(&self, p: &Principal, actions: &'a [Action]) -> Result<(), &'a Action> {
        self.compile().check(p, actions)
    }
}

/// A subject as bindings and groups name it; `*` is kept as a name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Subj {
    Node(String),
    User(String),
    All(String),
    Group(String),
}

impl Subj {
    fn of(ty: i32, name: &str) -> Option<Subj> {
        let n = name.to_string();
        match SubjectType::try_from(ty) {
            Ok(SubjectType::SubjectNode) => Some(Subj::Node(n)),
            Ok(SubjectType::SubjectUser) => Some(Subj::User(n)),
            Ok(SubjectType::SubjectAll) => Some(Subj::All(n)),
            Ok(SubjectType::SubjectGroup) => Some(Subj::Group(n)),
            _ => None,
        }
    }
}

/// A compiled policy: who is in which group, which roles are bound to whom.
#[derive(Debug, Clone, Default)]
pub struct Compiled {
    roles: BTreeMap<String, Role>,
    /// A subject → the groups that list it.
    member_of: HashMap<Subj, Vec<String>>,
    /// A subject (groups too) → the roles bound to it.
    bound: HashMap<Subj, Vec<String>>,
}

impl Compiled {
    /// The subjects `p` answers to, itself and through wildcards. Anonymous callers
    /// (neither node nor user) answer to none: `*` means every authenticated caller.
    fn leaves(p: &Principal, wildcards: bool) -> Vec<Subj> {
        let mut out = Vec::new();
        let mut names = vec![p.name.clone()];
        if wildcards {
            names.push("*".into());
        }
        for n in names {
            if p.node {
                out.push(Subj::Node(n.clone()));
            }
            if p.user {
                out.push(Subj::User(n.clone()));
            }
            if p.node || p.user {
                out.push(Subj::All(n));
            }
        }
        out
    }

    /// Every subject key reachable from `start` through group membership: a
    /// breadth-first walk that visits each group once, cycles or not.
    fn reach(&self, start: Vec<Subj>) -> Vec<Subj> {
        let mut seen: HashSet<String> = HashSet::new();
        let mut out = start.clone();
        let mut frontier = start;
        while let Some(k) = frontier.pop() {
            for g in self.member_of.get(&k).into_iter().flatten() {
                if seen.insert(g.clone()) {
                    out.push(Subj::Group(g.clone()));
                    frontier.push(Subj::Group(g.clone()));
                }
            }
        }
        out
    }

    fn roles_from(&self, keys: &[Subj]) -> Vec<&Role> {
        let names: BTreeSet<&str> = keys
            .iter()
            .flat_map(|k| self.bound.get(k).into_iter().flatten())
            .map(String::as_str)
            .collect();
        names
            .into_iter()
            .filter_map(|n| self.roles.get(n))
            .collect()
    }

    /// The roles bound to `p`, in name order.
    pub fn roles_of(&self, p: &Principal) -> Vec<&Role> {
        self.roles_from(&self.reach(Self::leaves(p, true)))
    }

    /// Whether a binding or group names `p` itself (not only through `*`): a name the
    /// mesh has given rights to.
    pub fn names(&self, p: &Principal) -> bool {
        !self
            .roles_from(&self.reach(Self::leaves(p, false)))
            .is_empty()
    }

    /// Whether `p` may perform `a`.
    pub fn allows(&self, p: &Principal, a: &Action) -> bool {
        self.roles_of(p)
            .iter()
            .any(|role| role.rules.iter().any(|r| rule_matches(r, a)))
    }

    /// `Ok` when every action is allowed; else the first one missing.
    pub fn check<'a>(&self, p: &Principal, actions: &'a [Action]) -> Result<(), &'a Action> {
        let roles = self.roles_of(p);
        for a in actions {
            if !roles
                .iter()
                .any(|role| role.rules.iter().any(|r| rule_matches(r, a)))
            {
                return Err(a);
            }
        }
        Ok(())
    }

    /// Escalation (Kubernetes' rule): `p` may grant `rule` only if it holds every
    /// permission the rule grants, wildcards included. `Err` names the first one missing.
    pub fn covers(&self, p: &Principal, rule: &Rule) -> Result<(), Action> {
        let held: Vec<&Rule> = self
            .roles_of(p)
            .into_iter()
            .flat_map(|r| r.rules.iter())
            .collect();
        let wild = rule.resource_names.is_empty() || rule.resource_names.iter().any(|n| n == "*");
        for &res in &rule.resources {
            for &verb in &rule.verbs {
                let names: Vec<Option<&str>> = if wild {
                    vec![None]
                } else {
                    rule.resource_names
                        .iter()
                        .map(|n| Some(n.as_str()))
                        .collect()
                };
                for name in names {
                    if !held.iter().any(|h| grants(h, res, verb, name)) {
                        return Err(Action {
                            resource: RuleResource::try_from(res)
                                .unwrap_or(RuleResource::ResourceUnknown),
                            name: name.unwrap_or("*").to_string(),
                            verb: RuleVerb::try_from(verb).unwrap_or(RuleVerb::VerbUnknown),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// The roles a subject of group `group` gets: those bound to it and to every group
    /// that contains it.
    pub fn roles_through_group(&self, group: &str) -> Vec<&Role> {
        self.roles_from(&self.reach(vec![Subj::Group(group.to_string())]))
    }

    pub fn role(&self, name: &str) -> Option<&Role> {
        self.roles.get(name)
    }
}

/// Whether held rule `h` grants `verb` on `res` for `name` (`None`: every name). A
/// wildcard is granted only by the same wildcard.
fn grants(h: &Rule, res: i32, verb: i32, name: Option<&str>) -> bool {
    let all_res = RuleResource::ResourceAll as i32;
    let all_verb = RuleVerb::VerbAll as i32;
    let res_ok = h.resources.contains(&all_res) || (res != all_res && h.resources.contains(&res));
    let verb_ok = h.verbs.contains(&all_verb) || (verb != all_verb && h.verbs.contains(&verb));
    let any_name = h.resource_names.is_empty() || h.resource_names.iter().any(|n| n == "*");
    let name_ok = match name {
        None => any_name,
        Some(n) => any_name || h.resource_names.iter().any(|x| x == n),
    };
    res_ok && verb_ok && name_ok
}

fn rule_matches(r: &Rule, a: &Action) -> bool {
    let resource = r
        .resources
        .iter()
        .any(|&x| x == a.resource as i32 || x == RuleResource::ResourceAll as i32);
    let verb = r
        .verbs
        .iter()
        .any(|&x| x == a.verb as i32 || x == RuleVerb::VerbAll as i32);
    let name = r.resource_names.is_empty()
        || r.resource_names
            .iter()
            .any(|n| n == "*" || (!a.name.is_empty() && *n == a.name));
    resource && verb && name
}

#[cfg(test)]
mod tests;
