use std::time::Duration;

use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    parse_str(text, Path::new("/etc/sidewatch.yaml"))
}

fn file_error(text: &str) -> (usize, usize, String, String) {
    match parse(text) {
        Err(ConfigError::File {
            line,
            column,
            field,
            message,
            ..
        }) => (line, column, field, message),
        other => panic!("expected a file error, got {other:?}"),
    }
}

const GOOD: &str = "\
listen: 127.0.0.1:9200
probes:
  - name: app
    http: { url: http://127.0.0.1:8080/healthz, expect_status: [200, \"300-302\"] }
    interval: 250ms
  - name: db
    tcp: { address: \"[::1]:5432\" }
    critical: false
drain:
  delay: 2s
";

#[test]
fn a_full_file_parses_with_defaults_filled_in() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.listen, "127.0.0.1:9200".parse().unwrap());
    let app = &c.probes.0[0];
    assert_eq!(app.interval, Duration::from_millis(250));
    assert_eq!(app.timeout, Duration::from_millis(500));
    assert_eq!(app.failure_threshold, 2);
    let Check::Http(http) = &app.check else {
        panic!("http expected")
    };
    assert_eq!(
        http.expect_status,
        [StatusRange(200, 200), StatusRange(300, 302)]
    );
    let Check::Tcp(tcp) = &c.probes.0[1].check else {
        panic!("tcp expected")
    };
    assert_eq!(tcp.address.host, "::1");
    assert!(!c.probes.0[1].critical);
    assert_eq!(c.drain.delay, Duration::from_secs(2));
}

#[test]
fn the_rendered_config_parses_back_to_itself() {
    let c = parse(GOOD).unwrap();
    assert_eq!(parse(&render(&c)).unwrap(), c);
}

#[test]
fn an_empty_file_means_defaults() {
    assert_eq!(parse("").unwrap(), Config::default());
}

#[test]
fn unknown_key_names_line_column_and_field() {
    let (line, column, field, message) = file_error("drain:\n  delay: 1s\n  maxx: 3s\n");
    assert_eq!((line, column), (3, 3));
    assert_eq!(field, "drain.maxx");
    assert!(message.contains("unknown field `maxx`"), "{message}");
}

#[test]
fn wrong_type_and_bad_duration_point_at_the_value() {
    let (line, column, field, _) = file_error(
        "probes:\n  - name: app\n    tcp: {address: \"a:1\"}\n    failure_threshold: lots\n",
    );
    assert_eq!(
        (line, column, field.as_str()),
        (4, 24, "probes[0].failure_threshold")
    );
    let (line, _, field, message) = file_error(
        "probes:\n  - name: app\n    tcp: {address: \"a:1\"}\n    interval: 5 parsecs\n",
    );
    assert_eq!((line, field.as_str()), (4, "probes[0].interval"));
    assert!(
        message.contains("parsecs") || message.contains("unit"),
        "{message}"
    );
}

#[test]
fn a_huge_config_file_is_refused_unread() {
    let path = std::env::temp_dir().join(format!("sidewatch-huge-{}.yaml", std::process::id()));
    std::fs::write(&path, "#".repeat(2 * 1024 * 1024)).unwrap();
    let err = load(Some(&path), [], &Overrides::default()).unwrap_err();
    std::fs::remove_file(&path).unwrap();
    assert!(err.to_string().contains("larger than 1024 KiB"), "{err}");
}

#[test]
fn a_duration_over_a_day_is_refused_at_its_field() {
    let (line, _, field, message) = file_error("drain:\n  delay: 1s\n  max: 100y\n");
    assert_eq!((line, field.as_str()), (3, "drain.max"));
    assert!(
        message.contains("at most") || message.contains("24h"),
        "{message}"
    );
    let (_, _, field, _) = file_error("memory:\n  predict_oom_within: 18446744073709551615s\n");
    assert_eq!(field, "memory.predict_oom_within");
    assert_eq!(duration::parse("24h"), Ok(duration::MAX));
}

#[test]
fn bad_url_and_missing_check_are_refused_with_their_probe() {
    let (line, _, field, message) =
        file_error("probes:\n  - name: app\n    http: {url: \"ftp://x/\"}\n");
    assert_eq!((line, field.as_str()), (3, "probes[0].http.url"));
    assert!(message.contains("ftp://x/"), "{message}");
    let (_, _, field, message) = file_error("probes:\n  - name: app\n");
    assert_eq!(field, "probes[0]");
    assert!(message.contains("exactly one of"), "{message}");
    let (_, _, _, message) = file_error(
        "probes:\n  - {name: a, tcp: {address: \"h:1\"}}\n  - {name: a, tcp: {address: \"h:2\"}}\n",
    );
    assert!(message.contains("used twice"), "{message}");
}

#[test]
fn bad_status_ranges_are_refused() {
    for bad in ["\"399-200\"", "99", "\"2xx\""] {
        let text = format!(
            "probes:\n  - name: app\n    http: {{url: \"http://h/\", expect_status: [{bad}]}}\n"
        );
        let (_, _, field, _) = file_error(&text);
        assert!(
            field.starts_with("probes[0].http.expect_status"),
            "{bad}: {field}"
        );
    }
}

fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    vars.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn env_overrides_file_and_flags_override_env() {
    let c = parse(GOOD).unwrap();
    let c = apply_env(
        c,
        env(&[
            ("SIDEWATCH_DRAIN_DELAY", "7s"),
            ("SIDEWATCH_TARGET", "ignored: a flag"),
            ("PATH", "/bin"),
        ]),
        Overrides::env_names(),
    )
    .unwrap();
    assert_eq!(c.drain.delay, Duration::from_secs(7));
    let mut c = c;
    apply_overrides(
        &mut c,
        &Overrides {
            target: Some("tcp://127.0.0.1:9".parse().unwrap()),
            interval: Some(Duration::from_millis(100)),
            ..Overrides::default()
        },
    )
    .unwrap();
    let app = &c.probes.0[0];
    assert_eq!(app.name, "app");
    assert!(matches!(&app.check, Check::Tcp(t) if t.address.port == 9));
    assert!(c
        .probes
        .0
        .iter()
        .all(|p| p.interval == Duration::from_millis(100)));
}

#[test]
fn text_that_looks_like_a_number_is_text_where_the_setting_is_text() {
    let c = apply_env(
        Config::default(),
        env(&[
            ("SIDEWATCH_PROCESS_MATCH", "8080"),
            ("SIDEWATCH_DRAIN_DELAY", "2s"),
        ]),
        Overrides::env_names(),
    )
    .unwrap();
    assert_eq!(c.process.pattern.as_deref(), Some("8080"));
    assert_eq!(c.drain.delay, Duration::from_secs(2));
    // And a number where a number belongs stays one.
    let c = apply_env(
        Config::default(),
        env(&[("SIDEWATCH_DRAIN_PORT", "8080")]),
        Overrides::env_names(),
    )
    .unwrap();
    assert_eq!(c.drain.port, Some(8080));
}

#[test]
fn bad_or_unknown_env_is_named() {
    let err = apply_env(
        Config::default(),
        env(&[("SIDEWATCH_DRAIN_DELAY", "soon")]),
        Overrides::env_names(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("environment variable SIDEWATCH_DRAIN_DELAY"),
        "{err}"
    );
    let err = apply_env(
        Config::default(),
        env(&[("SIDEWATCH_DRAIN_DELAYY", "1s")]),
        Overrides::env_names(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("unknown setting") && err.contains("SIDEWATCH_DRAIN_DELAY"),
        "{err}"
    );
}

#[test]
fn none_turns_memory_off_in_the_file_as_on_the_command_line() {
    let c = parse("memory: {cgroup: none}\n").unwrap();
    assert_eq!(c.memory.cgroup, CgroupSetting::None);
    let (plan, why) = crate::memory::plan(&c.memory, Some("app"), None).unwrap();
    assert!(plan.is_none(), "{why}");
    let mut c = Config::default();
    let flags = Overrides {
        cgroup: Some("none".parse().unwrap()),
        ..Overrides::default()
    };
    apply_overrides(&mut c, &flags).unwrap();
    assert_eq!(c.memory.source, MemorySource::None);
    assert!(
        render(&c).contains("\"cgroup\": \"none\""),
        "{}",
        render(&c)
    );
}

#[test]
fn the_node_source_and_its_agent_parse_with_defaults() {
    use crate::memory::config::NodeAgent;
    let c = parse("memory: {source: node}\n").unwrap();
    assert_eq!(c.memory.source, MemorySource::Node);
    assert_eq!(c.memory.node.agent, NodeAgent::Auto);
    assert_eq!(
        c.memory.node.token_file,
        Path::new("/var/run/secrets/sidewatch.io/node/token")
    );
    let c = parse(
        "memory:\n  source: node\n  node:\n    agent: http://[fd00::1]:9000\n    token_file: /t\n",
    )
    .unwrap();
    assert_eq!(
        c.memory.node.agent,
        NodeAgent::Http("[fd00::1]:9000".into())
    );
    assert_eq!(c.memory.node.token_file, Path::new("/t"));
    // Without a port, the agent's own.
    let c = parse("memory: {node: {agent: \"http://node-a\"}}\n").unwrap();
    assert_eq!(c.memory.node.agent.to_string(), "http://node-a:9465");
    assert_eq!(parse(&render(&c)).unwrap(), c);
}

#[test]
fn a_bad_node_agent_is_named_with_its_line_and_field() {
    for (agent, says) in [
        ("https://10.0.0.1:9465", "not http"),
        ("http://10.0.0.1:9465/v1/memory", "path"),
        ("10.0.0.1:9465", "not http"),
        ("http://u:p@10.0.0.1:9465", "user info"),
    ] {
        let (line, _, field, message) = file_error(&format!(
            "memory:\n  source: node\n  node:\n    agent: {agent}\n"
        ));
        assert_eq!((line, field.as_str()), (4, "memory.node.agent"), "{agent}");
        assert!(message.contains(says), "{agent}: {message}");
    }
    let (line, _, field, _) = file_error("memory:\n  node:\n    token: /t\n");
    assert_eq!((line, field.as_str()), (3, "memory.node.token"));
}

#[test]
fn the_node_source_is_set_by_the_environment() {
    let env = [
        ("SIDEWATCH_MEMORY_SOURCE", "node"),
        (
            "SIDEWATCH_MEMORY_NODE",
            "{agent: \"http://127.0.0.1:9000\"}",
        ),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()));
    let c = load(None, env, &Overrides::default()).unwrap();
    assert_eq!(c.memory.source, MemorySource::Node);
    assert_eq!(c.memory.node.agent.to_string(), "http://127.0.0.1:9000");
    assert_eq!(
        c.memory.node.token_file,
        crate::memory::config::NodeConfig::default().token_file
    );
}

#[test]
fn the_section_is_off_by_default_and_set_by_file_env_and_flag_in_that_order() {
    let off = load(
        None,
        env(&[("SIDEWATCH_TARGET", "x")]),
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(off.agent, crate::config::AgentConfig::default());
    let file = std::env::temp_dir().join(format!("sidewatch-agent-{}.yaml", std::process::id()));
    std::fs::write(
        &file,
        "drain: {port: 8080}\nagent: {listen: '127.0.0.1:9466', overload_weight: 50%, slow_start: 30s}\n",
    )
    .unwrap();
    let c = load(Some(&file), env(&[]), &Overrides::default()).unwrap();
    assert_eq!(c.agent.listen, Some("127.0.0.1:9466".parse().unwrap()));
    assert_eq!(c.agent.overload_weight, Some(crate::config::Weight(50)));
    assert_eq!(c.agent.slow_start, Some(Duration::from_secs(30)));
    let env = env(&[
        ("SIDEWATCH_AGENT_LISTEN", "[::]:9467"),
        ("SIDEWATCH_AGENT_OVERLOAD_WEIGHT", "25%"),
        ("SIDEWATCH_AGENT_SLOW_START", "10s"),
    ]);
    let c = load(Some(&file), env.clone(), &Overrides::default()).unwrap();
    assert_eq!(c.agent.listen, Some("[::]:9467".parse().unwrap()));
    assert_eq!(c.agent.overload_weight, Some(crate::config::Weight(25)));
    assert_eq!(c.agent.slow_start, Some(Duration::from_secs(10)));
    let flag = Overrides {
        agent_listen: Some("127.0.0.1:1".parse().unwrap()),
        ..Overrides::default()
    };
    let c = load(Some(&file), env, &flag).unwrap();
    assert_eq!(c.agent.listen, Some("127.0.0.1:1".parse().unwrap()));
    let _ = std::fs::remove_file(file);
}

#[test]
fn a_bad_value_is_named_with_its_line_field_or_variable() {
    let text = "listen: 127.0.0.1:9102\nagent:\n  listen: '[::]:9466'\n  overload_weight: 0%\n";
    match parse_str(text, Path::new("/etc/sw.yaml")) {
        Err(ConfigError::File {
            line,
            field,
            message,
            ..
        }) => {
            assert_eq!(
                (line, field.as_str()),
                (4, "agent.overload_weight"),
                "{message}"
            );
            assert!(message.contains("1% to 100%"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let err = load(
        None,
        env(&[("SIDEWATCH_AGENT_SLOW_START", "soon")]),
        &Overrides::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("SIDEWATCH_AGENT_SLOW_START"), "{err}");
    // The overload judge needs an app port: a TCP probe's, or drain.port.
    let err = load(
        None,
        env(&[
            ("SIDEWATCH_AGENT_LISTEN", "[::]:9466"),
            ("SIDEWATCH_AGENT_OVERLOAD_WEIGHT", "50%"),
        ]),
        &Overrides::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("agent.overload_weight"), "{err}");
}
