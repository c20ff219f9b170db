//! Which plugin does which duty, from the capabilities each one reports in `GetInfo`.
//! Pure: at most one AUTH, one IPAMV4 and one IPAMV6; any number of STORE and WATCH.

use webmesh_api::v1::PluginCapability;

/// The duties of the node's plugins, by plugin name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routes {
    pub auth: Option<String>,
    pub ipam_v4: Option<String>,
    pub ipam_v6: Option<String>,
    pub store: Vec<String>,
    pub watch: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error(
        "plugins {first:?} and {second:?} both provide {capability}; a node takes at most \
         one, so remove one of them"
    )]
    Duplicate {
        capability: &'static str,
        first: String,
        second: String,
    },
    #[error("plugin {plugin:?} reports no capability the node knows ({raw:?})")]
    NoCapability { plugin: String, raw: Vec<i32> },
}

/// Routes `plugins` (name, raw capability values) in the order given.
pub fn route(plugins: &[(String, Vec<i32>)]) -> Result<Routes, RouteError> {
    let mut r = Routes::default();
    for (name, caps) in plugins {
        let mut known = 0;
        for &raw in caps {
            let slot = match PluginCapability::try_from(raw) {
                Ok(PluginCapability::Auth) => Some((&mut r.auth, "AUTH")),
                Ok(PluginCapability::Ipamv4) => Some((&mut r.ipam_v4, "IPAMV4")),
                Ok(PluginCapability::Ipamv6) => Some((&mut r.ipam_v6, "IPAMV6")),
                Ok(PluginCapability::Store) => {
                    known += 1;
                    if !r.store.contains(name) {
                        r.store.push(name.clone());
                    }
                    None
                }
                Ok(PluginCapability::Watch) => {
                    known += 1;
                    if !r.watch.contains(name) {
                        r.watch.push(name.clone());
                    }
                    None
                }
                Ok(PluginCapability::Unknown) | Err(_) => continue,
            };
            if let Some((slot, capability)) = slot {
                known += 1;
                match slot {
                    Some(first) if first != name => {
                        return Err(RouteError::Duplicate {
                            capability,
                            first: first.clone(),
                            second: name.clone(),
                        });
                    }
                    _ => *slot = Some(name.clone()),
                }
            }
        }
        if known == 0 {
            return Err(RouteError::NoCapability {
                plugin: name.clone(),
                raw: caps.clone(),
            });
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use PluginCapability as C;

    fn p(name: &str, caps: &[C]) -> (String, Vec<i32>) {
        (name.into(), caps.iter().map(|c| *c as i32).collect())
    }

    #[test]
    fn duties_go_to_the_plugins_that_offer_them() {
        let r = route(&[
            p("basic", &[C::Auth]),
            p("ipam", &[C::Ipamv4, C::Ipamv6]),
            p("sql", &[C::Store, C::Watch]),
            p("hook", &[C::Watch]),
        ])
        .unwrap();
        assert_eq!(r.auth.as_deref(), Some("basic"));
        assert_eq!(r.ipam_v4.as_deref(), Some("ipam"));
        assert_eq!(r.ipam_v6.as_deref(), Some("ipam"));
        assert_eq!(r.store, vec!["sql"]);
        assert_eq!(r.watch, vec!["sql", "hook"]);
    }

    #[test]
    fn a_second_auth_or_ipam_is_refused_naming_both() {
        let e = route(&[p("a1", &[C::Auth]), p("a2", &[C::Auth, C::Watch])]).unwrap_err();
        assert_eq!(
            e,
            RouteError::Duplicate {
                capability: "AUTH",
                first: "a1".into(),
                second: "a2".into()
            }
        );
        assert!(
            e.to_string()
                .contains("\"a1\" and \"a2\" both provide AUTH")
        );
        let e = route(&[p("v4", &[C::Ipamv4]), p("both", &[C::Ipamv4, C::Ipamv6])]).unwrap_err();
        assert!(matches!(
            e,
            RouteError::Duplicate {
                capability: "IPAMV4",
                ..
            }
        ));
        // One v4 and one v6 plugin side by side are fine.
        let r = route(&[p("v4", &[C::Ipamv4]), p("v6", &[C::Ipamv6])]).unwrap();
        assert_eq!(
            (r.ipam_v4.unwrap(), r.ipam_v6.unwrap()),
            ("v4".into(), "v6".into())
        );
    }

    #[test]
    fn a_plugin_without_known_capabilities_is_an_error() {
        let e = route(&[("odd".into(), vec![0, 42])]).unwrap_err();
        assert!(matches!(e, RouteError::NoCapability { .. }));
        // Repeated capabilities of one plugin are harmless.
        let r = route(&[p("x", &[C::Auth, C::Auth, C::Store, C::Store])]).unwrap();
        assert_eq!(r.store, vec!["x"]);
    }
}
