//! Which operation a path names, and which methods it answers.

use http::Method;

/// A parsed route: which operation, on which ids.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Route {
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
    NotFound,
}

impl Route {
    pub(super) fn parse(path: &str) -> Route {
        let parts: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
        let id = |s: &str| s.parse::<u64>().ok();
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

    /// The methods a route answers, for 405 and `Allow`. HEAD wherever GET is.
    pub(super) fn allowed(&self) -> &'static str {
        match self {
            Route::DeviceServer => "POST",
            Route::Credentials { .. } | Route::Credential { .. } => "GET, HEAD",
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
}
