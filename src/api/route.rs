//! Which operation a path names, and which methods it answers.

use http::Method;

/// A parsed route: which operation, on which ids.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    DeviceServer,
    Credentials {
        user: u64,
    },
    Credential {
        user: u64,
        credential: u64,
    },
    Ips {
        user: u64,
        credential: u64,
    },
    Ip {
        user: u64,
        credential: u64,
        item: u64,
    },
    /// ipgate extension: the addresses the credential's key was refused from.
    RefusedIps {
        user: u64,
        credential: u64,
    },
    /// ipgate extension: the addresses the key was used from, as a list to review.
    SuggestedIps {
        user: u64,
        credential: u64,
    },
    NotFound,
}

impl Route {
    pub fn parse(path: &str) -> Route {
        Route::parse_with(path, |s| s.parse::<u64>().ok())
    }

    /// The methods a path's shape answers, whatever its ids say: a path shaped like a
    /// route but with an id that is no number (`…/ip/-1`) still answers a method no
    /// such route takes with 405, as the API description says; the others get 404.
    pub fn shape_allows(path: &str) -> &'static str {
        Route::parse_with(path, |s| (!s.is_empty()).then_some(0)).allowed()
    }

    fn parse_with(path: &str, id: impl Fn(&str) -> Option<u64>) -> Route {
        // What precedes the first `/` is not a segment; without this, "x/v1/…" would
        // route although `Api::owns` sends it upstream.
        if !path.starts_with('/') {
            return Route::NotFound;
        }
        let parts: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
        match parts.as_slice() {
            ["v1", "device-server"] => Route::DeviceServer,
            ["v1", "user", u, "credential-password-ip", rest @ ..] => {
                let Some(user) = id(u) else {
                    return Route::NotFound;
                };
                match rest {
                    [] => Route::Credentials { user },
                    [c] => id(c).map_or(Route::NotFound, |credential| Route::Credential {
                        user,
                        credential,
                    }),
                    [c, "ip"] => id(c).map_or(Route::NotFound, |credential| Route::Ips {
                        user,
                        credential,
                    }),
                    [c, "refused-ip"] => id(c).map_or(Route::NotFound, |credential| {
                        Route::RefusedIps { user, credential }
                    }),
                    [c, "suggested-ip"] => id(c).map_or(Route::NotFound, |credential| {
                        Route::SuggestedIps { user, credential }
                    }),
                    [c, "ip", i] => match (id(c), id(i)) {
                        (Some(credential), Some(item)) => Route::Ip {
                            user,
                            credential,
                            item,
                        },
                        _ => Route::NotFound,
                    },
                    _ => Route::NotFound,
                }
            }
            _ => Route::NotFound,
        }
    }

    /// The user whose data the route names, if it names one.
    pub(super) fn user(&self) -> Option<u64> {
        match *self {
            Route::Credentials { user }
            | Route::Credential { user, .. }
            | Route::Ips { user, .. }
            | Route::Ip { user, .. }
            | Route::RefusedIps { user, .. }
            | Route::SuggestedIps { user, .. } => Some(user),
            Route::DeviceServer | Route::NotFound => None,
        }
    }

    /// The credential the route names, if it names one.
    pub(super) fn credential(&self) -> Option<u64> {
        match *self {
            Route::Credential { credential, .. }
            | Route::Ips { credential, .. }
            | Route::Ip { credential, .. }
            | Route::RefusedIps { credential, .. }
            | Route::SuggestedIps { credential, .. } => Some(credential),
            Route::DeviceServer | Route::Credentials { .. } | Route::NotFound => None,
        }
    }

    /// The methods a route answers, for 405 and `Allow`. HEAD wherever GET is.
    pub(super) fn allowed(&self) -> &'static str {
        match self {
            Route::DeviceServer => "POST",
            Route::Credentials { .. }
            | Route::Credential { .. }
            | Route::RefusedIps { .. }
            | Route::SuggestedIps { .. } => "GET, HEAD",
            Route::Ips { .. } => "GET, HEAD, POST",
            Route::Ip { .. } => "GET, HEAD, PUT",
            Route::NotFound => "",
        }
    }

    /// Metric label; HEAD counts as the GET it reads like.
    pub(super) fn operation(&self, method: &Method) -> &'static str {
        match (self, *method == Method::GET || *method == Method::HEAD) {
            (Route::DeviceServer, _) => "device_server",
            (Route::Credentials { .. }, _) => "list_credentials",
            (Route::Credential { .. }, _) => "get_credential",
            (Route::Ips { .. }, true) => "list_ips",
            (Route::Ips { .. }, false) => "add_ip",
            (Route::Ip { .. }, true) => "get_ip",
            (Route::Ip { .. }, false) => "update_ip",
            (Route::RefusedIps { .. }, _) => "list_refused_ips",
            (Route::SuggestedIps { .. }, _) => "list_suggested_ips",
            (Route::NotFound, _) => "not_found",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(Route::parse("/v1/device-server"), Route::DeviceServer);
        assert_eq!(
            Route::parse("/v1/user/3/credential-password-ip"),
            Route::Credentials { user: 3 }
        );
        assert_eq!(
            Route::parse("/v1/user/3/credential-password-ip/4/ip/5"),
            Route::Ip {
                user: 3,
                credential: 4,
                item: 5
            }
        );
        assert_eq!(
            Route::parse("/v1/user/x/credential-password-ip"),
            Route::NotFound
        );
        assert_eq!(Route::parse("/v1/user/3/other"), Route::NotFound);
        assert_eq!(
            Route::parse("/v1/user/3/credential-password-ip/4/refused-ip"),
            Route::RefusedIps {
                user: 3,
                credential: 4
            }
        );
        assert_eq!(
            Route::parse("/v1/user/3/credential-password-ip/4/suggested-ip/").allowed(),
            "GET, HEAD"
        );
        assert_eq!(
            Route::parse("/v1/user/3/credential-password-ip/4/ip").allowed(),
            "GET, HEAD, POST"
        );
        assert_eq!(
            Route::parse("/v1/user/3/credential-password-ip/4/ip").operation(&Method::HEAD),
            "list_ips",
            "HEAD reads, never writes"
        );
    }

    #[test]
    fn every_operation_label_is_registered_up_front() {
        let ids = "/v1/user/3/credential-password-ip";
        for path in [
            "/v1/device-server".to_owned(),
            ids.to_owned(),
            format!("{ids}/4"),
            format!("{ids}/4/ip"),
            format!("{ids}/4/ip/5"),
            format!("{ids}/4/refused-ip"),
            format!("{ids}/4/suggested-ip"),
            "/v1/nothing".to_owned(),
        ] {
            for method in [Method::GET, Method::HEAD, Method::POST, Method::PUT] {
                let label = Route::parse(&path).operation(&method);
                assert!(
                    crate::metrics::API_OPERATIONS.contains(&label),
                    "{label} is not in metrics::API_OPERATIONS"
                );
            }
        }
    }

    #[test]
    fn a_malformed_id_keeps_the_shape_of_its_route() {
        let entry = "/v1/user/3/credential-password-ip/4/ip/-1";
        assert_eq!(Route::parse(entry), Route::NotFound);
        assert_eq!(Route::shape_allows(entry), "GET, HEAD, PUT");
        assert_eq!(
            Route::shape_allows("/v1/user/x/credential-password-ip"),
            "GET, HEAD"
        );
        assert_eq!(Route::shape_allows("/v1/user/3/other"), "");
    }

    /// Found by fuzzing (`fuzz/fuzz_targets/api_route.rs`): a path that does not start
    /// with `/` routed as though it did, while `Api::owns` turned it away.
    #[test]
    fn fuzz_regression_path_without_leading_slash() {
        for path in [
            "}/v1/device-server",
            "x/v1/user/3/credential-password-ip",
            "v1/device-server",
            "",
        ] {
            assert_eq!(Route::parse(path), Route::NotFound, "{path:?}");
            assert!(!crate::api::Api::owns(path), "{path:?}");
        }
    }

    // The fuzz target's routing properties (fuzz/fuzz_targets/api_route.rs), always on.
    mod props {
        use super::*;
        use crate::api::Api;
        use proptest::prelude::*;

        fn segment() -> impl Strategy<Value = String> {
            prop_oneof![
                prop::sample::select(vec![
                    "v1",
                    "user",
                    "credential-password-ip",
                    "ip",
                    "device-server",
                    "refused-ip",
                    "suggested-ip",
                    "",
                    "+1",
                    "01",
                ])
                .prop_map(String::from),
                any::<u64>().prop_map(|n| n.to_string()),
                "[ -~]{0,6}",
            ]
        }

        fn path() -> impl Strategy<Value = String> {
            (
                "[ -~]{0,2}",
                prop::collection::vec(segment(), 0..7),
                0usize..3,
            )
                .prop_map(|(prefix, segments, trailing)| {
                    let mut p = prefix;
                    for s in segments {
                        p.push('/');
                        p.push_str(&s);
                    }
                    p + &"/".repeat(trailing)
                })
        }

        fn canonical(route: &Route) -> Option<String> {
            let cpi = "credential-password-ip";
            Some(match route {
                Route::DeviceServer => "/v1/device-server".into(),
                Route::Credentials { user } => format!("/v1/user/{user}/{cpi}"),
                Route::Credential { user, credential } => {
                    format!("/v1/user/{user}/{cpi}/{credential}")
                }
                Route::Ips { user, credential } => format!("/v1/user/{user}/{cpi}/{credential}/ip"),
                Route::Ip {
                    user,
                    credential,
                    item,
                } => format!("/v1/user/{user}/{cpi}/{credential}/ip/{item}"),
                Route::RefusedIps { user, credential } => {
                    format!("/v1/user/{user}/{cpi}/{credential}/refused-ip")
                }
                Route::SuggestedIps { user, credential } => {
                    format!("/v1/user/{user}/{cpi}/{credential}/suggested-ip")
                }
                Route::NotFound => return None,
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn routed_paths_are_owned_and_ids_round_trip(path in path()) {
                let route = Route::parse(&path);
                if !Api::owns(&path) {
                    prop_assert_eq!(&route, &Route::NotFound);
                }
                if let Some(canon) = canonical(&route) {
                    prop_assert!(Api::owns(&canon));
                    prop_assert_eq!(Route::parse(&canon), route);
                }
            }
        }
    }
}
