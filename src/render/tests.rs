//! Unit tests of the pure parts of `render`; the rendered files themselves are run by a real
//! Envoy in `integration-tests/tests/gateway.rs`.

use super::*;

#[test]
fn host_port_parses_names_and_addresses() {
    let hp = HostPort::parse("keycloak.example:5314").unwrap();
    assert_eq!((hp.host.as_str(), hp.port), ("keycloak.example", 5314));
    assert!(!hp.is_ip());
    let v6 = HostPort::parse("[::1]:8081").unwrap();
    assert_eq!((v6.host.as_str(), v6.port), ("::1", 8081));
    assert!(v6.is_ip());
    assert_eq!(v6.to_string(), "[::1]:8081");
    for bad in ["nohost", ":80", "host:0", "host:99999", "host:x"] {
        assert!(HostPort::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn lua_settings_are_rewritten_and_nothing_else() {
    let lua = consumer_lua(&[Source::Jwt, Source::Basic], &JwtMode::Ignore, 512);
    assert!(lua.contains("\nlocal SOURCES = \"basic,jwt\"\n"), "{lua}");
    assert!(lua.contains("\nlocal JWT_MODE = \"ignore\"\n"), "{lua}");
    assert!(lua.contains("\nlocal MAX_FORM_BYTES = 512\n"));
    // Every other line is the file's own.
    let changed = lua
        .lines()
        .zip(CONSUMER_ID_LUA.lines())
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(changed, 3);
    assert_eq!(lua.lines().count(), CONSUMER_ID_LUA.lines().count());
}

#[test]
fn durations_print_as_envoy_reads_them() {
    assert_eq!(duration(Duration::from_millis(20)), "0.020s");
    assert_eq!(duration(Duration::from_millis(1500)), "1.500s");
}

#[test]
fn yaml_keeps_the_lua_script_verbatim() {
    let doc = json!({ "code": CONSUMER_ID_LUA, "n": 1 });
    let text = to_yaml("head", &[doc]).unwrap();
    assert!(text.starts_with("# head\n"));
    let back: Value = serde_saphyr::from_str(&text).unwrap();
    assert_eq!(back["code"].as_str(), Some(CONSUMER_ID_LUA));
}

#[test]
fn lua_strings_are_escaped() {
    assert_eq!(lua_string("a\"b\\\n"), "\"a\\\"b\\\\\\10\"");
}
