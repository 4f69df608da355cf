use super::*;

#[test]
fn targets_parse_by_scheme() {
    assert!(matches!(
        "https://a:8443/h".parse::<Target>(),
        Ok(Target(Check::Http(_)))
    ));
    assert!(matches!(
        "tcp://[::1]:80".parse::<Target>(),
        Ok(Target(Check::Tcp(_)))
    ));
    let Ok(Target(Check::Grpc(g))) = "grpcs://10.0.0.1:50051/shop.Cart".parse::<Target>() else {
        panic!("grpc expected")
    };
    assert_eq!(
        (g.address.to_string(), g.service.as_str(), g.tls),
        ("10.0.0.1:50051".into(), "shop.Cart", true)
    );
    let Ok(Target(Check::Grpc(g))) = "grpc://h:1".parse::<Target>() else {
        panic!("grpc expected")
    };
    assert_eq!((g.service.as_str(), g.tls), ("", false));
    assert!("tcp://nohost".parse::<Target>().is_err());
    assert!("udp://a:1".parse::<Target>().is_err());
    assert!("grpc://nohost".parse::<Target>().is_err());
}

#[test]
fn grpc_addresses_take_grpc_naming_for_unix_sockets() {
    for text in ["unix:/run/app.sock", "unix:///run/app.sock"] {
        assert_eq!(
            text.parse::<GrpcAddress>(),
            Ok(GrpcAddress::Unix("/run/app.sock".into()))
        );
    }
    assert!("unix:relative.sock".parse::<GrpcAddress>().is_err());
}

#[test]
fn a_variable_in_a_host_is_expanded_and_an_ipv6_address_bracketed() {
    // Set values (an IPv4 and an IPv6 POD_IP) are tested through the binary, in tests/sidecar/cli.rs:
    // the process environment is not the test's to change.
    assert!(expand("${SIDEWATCH_TEST_SURELY_UNSET}:80")
        .unwrap_err()
        .contains("is not set"));
    assert!(expand("${bad-name}")
        .unwrap_err()
        .contains("bad variable name"));
    assert!(expand("${OPEN").unwrap_err().contains("without"));
    assert_eq!(expand("no variables").unwrap(), "no variables");
}
